"""The `gl-retrieval demo` job: a bundled corpus, the packaged MiniLM, a few queries, offline."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from gl_retrieval.config import parse_config

__all__ = ["demo_config", "run_demo"]


def _data(name: str) -> Path:
    return Path(str(resources.files("gl_retrieval") / "data" / name))


def demo_config(persist_dir: Path) -> dict[str, Any]:
    """The demo's config as a mapping (same schema as a YAML file)."""
    return {
        "embedder": {"provider": "huggingface", "model": "packaged:all-MiniLM-L6-v2"},
        "retriever": {"top_k": 10},
        "storage": {"persist_dir": str(persist_dir)},
        "sources": [{"path": str(_data("demo_corpus.jsonl"))}],
        "chunking": {"chunk_size": 200, "chunk_overlap": 20},
    }


def run_demo(*, persist_dir: Path, show_progress: bool = False, top_n: int = 3) -> dict[str, Any]:
    """Index the bundled corpus (only what changed) and run the bundled queries.

    Returns:
        ``{"summary": str, "index": {...}, "queries": [{"query", "expected", "results"}]}``
    """
    from gl_retrieval.pipeline import RetrievalPipeline

    cfg = parse_config(demo_config(Path(persist_dir).resolve()), source="<demo>")
    pipe = RetrievalPipeline(cfg)
    summary = pipe.index(show_progress=show_progress)
    queries = json.loads(_data("demo_queries.json").read_text(encoding="utf-8"))
    out = []
    hits_at_1 = 0
    for q in queries:
        results = pipe.retrieve(q["query"], top_n=top_n)
        hits_at_1 += bool(results) and results[0].doc_id == q.get("expected_id")
        out.append(
            {
                "query": q["query"],
                "expected": q.get("expected_id"),
                "results": [r.to_dict() for r in results],
            }
        )
    line = f"demo index at {persist_dir}: {summary.line()}; {hits_at_1}/{len(queries)} queries "
    line += "found their expected document first"
    return {"summary": line, "index": summary.to_dict(), "queries": out}
