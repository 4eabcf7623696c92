"""`gl-retrieval demo`: a bundled corpus, the packaged MiniLM, a few queries, offline.

:func:`run_demo` is the job (it returns a report), :func:`demo` the command that prints it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

from gl_retrieval.cli.errors import handle_errors
from gl_retrieval.cli.output import JsonOpt, print_json, snippet
from gl_retrieval.config import parse_config
from gl_retrieval.models import quiet_model_loading

__all__ = ["demo", "demo_config", "run_demo"]


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


@handle_errors
def demo(
    persist_dir: Annotated[
        Path, typer.Option(help="The directory where the demo index is kept.")
    ] = Path(".gl_index/demo"),
    as_json: JsonOpt = False,
) -> None:
    """Index a small bundled corpus with the packaged MiniLM and answer a few queries, offline."""
    quiet_model_loading()
    report = run_demo(persist_dir=persist_dir, show_progress=not as_json)
    if as_json:
        print_json(report)
        return
    from gl_retrieval.retrieval.results import SCORE_KINDS

    typer.echo(report["summary"])
    kinds: list[str] = []
    for q in report["queries"]:
        typer.echo(f"\n? {q['query']}")
        for i, r in enumerate(q["results"], 1):
            kind = r.get("score_kind") or "score"
            kinds += [kind] if kind not in kinds else []
            typer.echo(f"  {i}. {kind} {r['score']:.3f}  [{r['doc_id']}] {snippet(r['text'], 100)}")
    for kind in kinds:
        if kind in SCORE_KINDS:
            typer.echo(f"\nscore {kind}: {SCORE_KINDS[kind]}")
