"""One path: the same request gives the same results, field by field, on every surface.

The library (``retrieve``, ``retrieve_batch``, ``as_retriever``, ``as_query_engine``), the CLI
(``query --json``), ``serve``'s ``/v1/query`` and ``/v1/query/batch`` (through its batch workers)
and ``RemotePipeline`` all run a query through :mod:`gl_retrieval.retrieval.flow`. This test runs
the same queries, in every mode, with and without filters, with and without a reranker, through
each of them and compares every field of every result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import load_config
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import running_server

QUERIES = [
    "how are documents split into pieces?",
    "which model reads the query and passage together?",
    "share one index between processes",
]
FILTERS: list[Any] = [None, ["year>=2020"], ["topic in dense,storage,rerank,ingest"]]
EXACT = ("id", "doc_id", "text", "score_kind", "retrieval_kind", "rerank_stand_in", "metadata")
CLOSE = ("score", "retrieval_score", "rerank_score")

CORPUS = [
    *SMALL_CORPUS,
    {
        "_id": "rrf",
        "title": "Fusion",
        "text": "Reciprocal rank fusion merges ranked lists from BM25 and dense retrieval.",
        "metadata": {"topic": "dense", "year": 2009},
    },
    {
        "_id": "serve",
        "title": "Serving",
        "text": "One warm HTTP service batches queries from many processes and clients.",
        "metadata": {"topic": "storage", "year": 2024},
    },
]


def _same(where: str, got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [g["id"] for g in got] == [w["id"] for w in want], where
    for g, w in zip(got, want, strict=True):
        for key in EXACT:
            assert g[key] == w[key], f"{where}: {key} of {w['id']}"
        for key in CLOSE:
            if w[key] is None:
                assert g[key] is None, f"{where}: {key} of {w['id']}"
            else:
                assert g[key] == pytest.approx(w[key], abs=1e-4), f"{where}: {key} of {w['id']}"


@pytest.fixture(
    scope="module",
    params=[
        ("dense", False),
        ("bm25", False),
        ("hybrid", False),
        ("dense", True),
        ("hybrid", "blend"),  # reranker.first_stage_weight: the score blend, same path
    ],
    ids=lambda p: f"{p[0]}{'+rerank' if p[1] else ''}{'+blend' if p[1] == 'blend' else ''}",
)
def setup(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_cross_encoder: Path,
    minilm_embedder: Any,
) -> Iterator[tuple[RetrievalPipeline, Path, Any]]:
    mode, rerank = request.param
    tmp = tmp_path_factory.mktemp(f"one-path-{mode}")
    raw: dict[str, Any] = {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 5, "mode": mode},
        "storage": {"persist_dir": str(tmp / "index")},
        "sources": [{"path": str(write_corpus(tmp / "corpus.jsonl", CORPUS))}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        "serve": {"max_queue_wait_ms": None, "reload_interval_s": 60},
    }
    if rerank:
        raw["reranker"] = {"model": str(tiny_cross_encoder), "top_n": 3}
        if rerank == "blend":
            raw["reranker"]["first_stage_weight"] = 0.5
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_config(path)
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder)
    pipe.index(show_progress=False)
    with running_server(cfg) as server:
        yield pipe, path, server


@pytest.mark.parametrize("filters", FILTERS, ids=["no-filter", "year", "topic-in"])
def test_every_surface_gives_the_same_results(
    setup: tuple[RetrievalPipeline, Path, Any], filters: Any
) -> None:
    from gl_retrieval.cli import app
    from gl_retrieval.serve.client import RemotePipeline

    pipe, path, server = setup
    want = [[h.to_dict() for h in pipe.retrieve(q, filters=filters)] for q in QUERIES]
    assert all(want), "every query finds something"
    kinds = {h["score_kind"] for hits in want for h in hits}
    assert None not in kinds

    batch = pipe.retrieve_batch(QUERIES, filters=filters)
    retriever = pipe.as_retriever(filters=filters)
    engine = pipe.as_query_engine(filters=filters)
    remote = RemotePipeline(server.url)
    remote_batch = remote.retrieve_batch(QUERIES, filters=filters)
    flags = [x for f in filters or [] for x in ("--filter", f)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        body: dict[str, Any] = {} if filters is None else {"filters": filters}
        served_batch = client.post("/v1/query/batch", json={"queries": QUERIES, **body})
        assert served_batch.status_code == 200, served_batch.text
        for i, q in enumerate(QUERIES):
            _same("retrieve_batch", [h.to_dict() for h in batch[i]], want[i])
            _same("as_retriever", [h.to_dict() for h in retriever.retrieve(q)], want[i])
            _same("query engine", [h.to_dict() for h in engine.query(q).source_nodes], want[i])
            cli = CliRunner().invoke(app, ["query", str(path), q, "--json", *flags])
            assert cli.exit_code == 0, cli.output
            _same("query --json", json.loads(cli.stdout)["results"], want[i])
            served = client.post("/v1/query", json={"query": q, **body})
            assert served.status_code == 200, served.text
            _same("/v1/query", served.json()["results"], want[i])
            _same("/v1/query/batch", served_batch.json()["results"][i]["results"], want[i])
            _same(
                "RemotePipeline.retrieve",
                [h.to_dict() for h in remote.retrieve(q, filters=filters)],
                want[i],
            )
            _same("RemotePipeline.retrieve_batch", [h.to_dict() for h in remote_batch[i]], want[i])


def test_one_fault_one_exception_on_every_surface(
    setup: tuple[RetrievalPipeline, Path, Any],
) -> None:
    """A bad query or depth is a QueryError in the library, exit 2 in the CLI and a 422 from
    serve; an unknown filter key is a FilterError, exit 2 and 422."""
    from gl_retrieval import FilterError, QueryError
    from gl_retrieval.cli import app

    pipe, path, server = setup
    for bad in ({"query": "   "}, {"query": "ok", "top_k": 0}, {"query": "ok", "top_n": 0}):
        kwargs = {k: v for k, v in bad.items() if k != "query"}
        with pytest.raises(QueryError):
            pipe.retrieve(bad["query"], **kwargs)
        r = httpx.post(f"{server.url}/v1/query", json=bad, timeout=30)
        assert r.status_code == 422, r.text
    with pytest.raises(QueryError):
        pipe.retrieve_batch("not a list")
    with pytest.raises(FilterError):
        pipe.retrieve("ok", filters=["nokey=1"])
    r = httpx.post(f"{server.url}/v1/query", json={"query": "ok", "filters": ["nokey=1"]})
    assert r.status_code == 422 and "nokey" in r.text
    cli = CliRunner().invoke(app, ["query", str(path), "ok", "--filter", "nokey=1", "--json"])
    assert cli.exit_code == 2 and "nokey" in cli.output
