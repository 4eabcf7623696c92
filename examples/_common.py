"""What the example scripts share: command-line options, config loading, output helpers.

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
        help="write the index here instead of where the config says",
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
    return cfg


def snippet(text: str, width: int = 100) -> str:
    """One line of ``text``, cut to ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def result_line(rank: int, hit: Any, width: int = 80) -> str:
    """One result with its scores labelled: ``rerank 4.210 (cosine 0.612)`` after a trained
    reranker, ``cosine 0.612`` alone when there is none or it is the offline stand-in."""
    scores = f"{hit.score_kind or 'score'} {hit.score:.3f}"
    if hit.score_kind == "rerank":
        scores += f" ({hit.retrieval_kind} {hit.retrieval_score:.3f})"
    return f"  {rank}. {scores}  {hit.doc_id}: {snippet(hit.node.get_content(), width)}"


def ranking_note(hits: Any) -> str:
    """How ``hits`` were ordered, honestly: reranked, or kept in retrieval order."""
    if any(h.rerank_stand_in for h in hits):
        return "(kept in retrieval order: the offline reranker is a stand-in with random weights)"
    if any(h.rerank_score is not None for h in hits):
        return "(reranked by the cross-encoder)"
    return "(retrieval order; no reranker)"
