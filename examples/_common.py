"""What the example scripts share: command-line options, config loading, quiet model loading.

Not part of the library: copy what you need. The interesting code is in the scripts themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gl_retrieval import PipelineConfig, load_config
from gl_retrieval.config import EmbeddedStorageConfig

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"

#: The offline configs point ``reranker.model`` at a directory with this name. It holds a tiny,
#: randomly initialised cross-encoder (meaningless scores) that the scripts create on first use,
#: because no trained cross-encoder can be downloaded offline. Production configs name
#: ``BAAI/bge-reranker-base`` instead, and nothing is created.
OFFLINE_RERANKER = "tiny-cross-encoder"


def parser(description: str, *, default_config: str) -> argparse.ArgumentParser:
    """The options every example takes: --config, --json, --index-dir."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--config",
        type=Path,
        default=CONFIGS / default_config,
        help=f"pipeline YAML (default: configs/{default_config}, offline)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--index-dir",
        type=Path,
        default=None,
        help="write the index (and the offline reranker stand-in) here instead of where the "
        "config says",
    )
    return p


def load_example_config(path: Path, *, index_dir: Path | None) -> PipelineConfig:
    """Load ``path``; with ``index_dir``, move everything the example writes under it."""
    cfg = load_config(path)
    if index_dir is not None and isinstance(cfg.storage, EmbeddedStorageConfig):
        storage = cfg.storage.model_copy(
            update={"persist_dir": index_dir / cfg.storage.persist_dir.name}
        )
        cfg = cfg.model_copy(update={"storage": storage})
        if cfg.reranker is not None and Path(cfg.reranker.model).name == OFFLINE_RERANKER:
            reranker = cfg.reranker.model_copy(update={"model": str(index_dir / OFFLINE_RERANKER)})
            cfg = cfg.model_copy(update={"reranker": reranker})
    _ensure_offline_reranker(cfg)
    return cfg


def _ensure_offline_reranker(cfg: PipelineConfig) -> None:
    if cfg.reranker is None or Path(cfg.reranker.model).name != OFFLINE_RERANKER:
        return
    from gl_retrieval.testing import make_tiny_cross_encoder

    make_tiny_cross_encoder(cfg.reranker.model)


def snippet(text: str, width: int = 100) -> str:
    """One line of ``text``, cut to ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
