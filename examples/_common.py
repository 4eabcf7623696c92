"""What the example scripts share: command-line options, config loading, output helpers.

Not part of the library: copy what you need. The interesting code is in the scripts themselves.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.mock import MockLLM

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


class StandInLLM(MockLLM):
    """A stand-in for a real LLM, for running offline: it writes one fixed, labelled text.

    It reads nothing and knows nothing: every answer starts ``[stand-in LLM: <reason>]`` and
    says that nothing was generated, so the retrieved sources printed with it are the only real
    output. It streams that text word by word, like a real LLM, so the streaming code paths
    run. One courtesy to chat engines: asked to rewrite a follow-up as a standalone question
    (the condense step of ``chat_mode="condense_plus_context"``), it returns the follow-up
    unchanged, so retrieval still gets the user's words. Deterministic, offline, no model.

    Example:
        >>> llm = StandInLLM(reason="no Ollama reachable")
        >>> llm.complete("Question: what is BM25?").text.startswith("[stand-in LLM: no Ollama")
        True
    """

    reason: str = "no LLM configured"

    def __init__(self, reason: str = "no LLM configured") -> None:
        super().__init__()
        self.reason = reason

    @classmethod
    def class_name(cls) -> str:
        return "StandInLLM"

    def text_for(self, prompt: str) -> str:
        """What the stand-in writes for ``prompt``."""
        follow_up = re.search(r"Follow Up Input:(.*)\n\s*Standalone question:\s*$", prompt)
        if follow_up:  # a chat engine's condense step: keep the user's question
            return follow_up.group(1).strip()
        return (
            f"[stand-in LLM: {self.reason}] Nothing was generated: this is a fixed text, not "
            "an answer. The retrieved sources below are real; start an LLM (e.g. `ollama "
            "serve`, `ollama pull llama3.2`) and use a config with an `llm` section for answers."
        )

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.text_for(prompt))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        text = self.text_for(prompt)

        def words() -> CompletionResponseGen:
            so_far = ""
            for word in re.findall(r"\S+\s*", text):
                so_far += word
                yield CompletionResponse(text=so_far, delta=word)

        return words()
