"""`gl-retrieval serve` over real HTTP on a loopback port, with real peer clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import SlowEmbedder, running_server

KEY = "s3cret-test-key-9f2c"
AUTH = {"Authorization": f"Bearer {KEY}"}

EXTRA = [
    {"_id": f"doc{i}", "text": t, "metadata": {"topic": "misc", "year": 2000 + i}}
    for i, t in enumerate(
        [
            "Reciprocal rank fusion merges ranked lists without scores.",
            "HNSW graphs give approximate nearest neighbour search.",
            "Prometheus scrapes metrics over HTTP in a text format.",
            "Uvicorn is an ASGI server for Python web apps.",
            "Micro-batching merges concurrent requests into one model call.",
            "A bearer token authorizes HTTP requests when compared in constant time.",
            "Generations are switched atomically with a CURRENT pointer file.",
        ]
    )
]
CORPUS = SMALL_CORPUS + EXTRA

QUERIES = [
    "which model reads query and passage together to rerank?",
    "term frequency lexical ranking",
    "share one index between many processes",
    "split long documents into chunks",
    "merge ranked lists",
    "approximate nearest neighbours",
    "metrics scraping",
    "ASGI server",
    "batch concurrent requests",
    "atomic switch of index",
]


def _cfg(tmp: Path, cross_encoder: Path | None, **serve: Any) -> dict[str, Any]:
    corpus = write_corpus(tmp / "corpus.jsonl", CORPUS)
    cfg: dict[str, Any] = {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 6, "mode": "hybrid"},
        "storage": {"persist_dir": str(tmp / "index")},
        "sources": [{"path": str(corpus)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        # Correctness tests: no wait-based shedding (test_serve_admission.py covers it).
        "serve": {
            "api_key": KEY,
            "reload_interval_s": 0.3,
            "queue_size": 128,
            "max_queue_wait_ms": None,
            **serve,
        },
    }
    if cross_encoder is not None:
        cfg["reranker"] = {"model": str(cross_encoder), "top_n": 4}
    return cfg


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_cross_encoder: Path, minilm_embedder: Any
) -> Iterator[tuple[Any, RetrievalPipeline, dict[str, Any]]]:
    """One server (hybrid + cross-encoder, api key) for most tests, and an in-process twin."""
    tmp = tmp_path_factory.mktemp("serve")
    raw = _cfg(tmp, tiny_cross_encoder)
    cfg = parse_config(raw)
    local = RetrievalPipeline(cfg, embedder=minilm_embedder)
    local.index()
    with running_server(cfg) as server:
        yield server, local, raw


def _same(remote: list[dict[str, Any]], local: list[Any]) -> None:
    assert [r["id"] for r in remote] == [h.node.node_id for h in local]
    for r, h in zip(remote, local, strict=True):
        assert r["score"] == pytest.approx(h.score, abs=1e-4)
        assert r["retrieval_score"] == pytest.approx(h.retrieval_score, abs=1e-4)


@pytest.mark.parametrize("rerank", [False, True])
def test_dense_searches_in_the_batch_and_one_bad_filter_fails_only_its_request(
    tmp_path: Path, tiny_cross_encoder: Path, minilm_embedder: Any, rerank: bool
) -> None:
    """Dense mode searches inside the model worker's batch (``RetrievalService.retrieve_many``):
    concurrent requests with different filters each get their in-process answer, and a filter
    the index cannot take gives that request its 422 and no other."""
    raw = _cfg(tmp_path, tiny_cross_encoder if rerank else None)
    raw["retriever"] = {"top_k": 6, "mode": "dense"}
    cfg = parse_config(raw)
    local = RetrievalPipeline(cfg, embedder=minilm_embedder)
    local.index()
    filters: list[Any] = [None, ["year>=2019"], {"year": {">": 2000}}]
    cases = [(QUERIES[i % len(QUERIES)], filters[i % 3]) for i in range(30)]
    bad = {"query": QUERIES[0], "filters": {"year": {"<": "soon"}}}

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=AUTH, timeout=60) as c:
            bodies = [{"query": q, "filters": f, "top_n": 3} for q, f in cases] + [bad]
            return await asyncio.gather(*(c.post(url + "/v1/query", json=b) for b in bodies))

    with running_server(cfg, pipeline=local) as server:
        responses = asyncio.run(fire(server.url))
    assert [r.status_code for r in responses] == [200] * len(cases) + [422]
    for (q, f), r in zip(cases, responses, strict=False):
        _same(r.json()["results"], local.retrieve(q, filters=f, top_n=3))


def test_query_has_the_cli_json_shape_and_equals_in_process(served: Any) -> None:
    server, local, _ = served
    r = httpx.post(
        server.url + "/v1/query",
        json={"query": QUERIES[0], "filters": ["year>=2019"], "top_n": 3},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"query", "filters", "results"}
    assert body["filters"] == ["year>=2019"]
    assert set(body["results"][0]) == {
        "id",
        "doc_id",
        "text",
        "score",
        "retrieval_score",
        "rerank_score",
        "retrieval_kind",
        "score_kind",
        "rerank_stand_in",
        "metadata",
    }
    _same(body["results"], local.retrieve(QUERIES[0], filters=["year>=2019"], top_n=3))
    batch = httpx.post(
        server.url + "/v1/query/batch",
        json={"queries": QUERIES[:3], "filters": {"year": {">": 2000}}},
        headers=AUTH,
    ).json()
    assert [b["query"] for b in batch["results"]] == QUERIES[:3]
    for q, b in zip(QUERIES[:3], batch["results"], strict=True):
        _same(b["results"], local.retrieve(q, filters={"year": {">": 2000}}))


def test_hundred_concurrent_requests_each_equal_in_process(served: Any) -> None:
    server, local, _ = served
    cases = [(QUERIES[i % len(QUERIES)], (i % 3) + 2) for i in range(100)]

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(headers=AUTH, limits=limits, timeout=60) as c:
            return await asyncio.gather(
                *(c.post(server.url + "/v1/query", json={"query": q, "top_n": n}) for q, n in cases)
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 100
    expected = {(q, n): local.retrieve(q, top_n=n) for q, n in set(cases)}
    for (q, n), r in zip(cases, responses, strict=True):
        _same(r.json()["results"], expected[(q, n)])
    metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert 'gl_retrieval_requests_total{route="/v1/query",status="200"}' in metrics
    assert "gl_retrieval_batch_size_bucket" in metrics
    assert "gl_retrieval_model_load_seconds" in metrics
    assert 'gl_retrieval_generation{generation="gen-' in metrics


def test_remote_pipeline_returns_the_same_ranked_nodes(served: Any) -> None:
    from llama_index.core.base.base_retriever import BaseRetriever

    from gl_retrieval import RankedNode, RemotePipeline

    server, local, _ = served
    remote = RemotePipeline(server.url, api_key=KEY)
    hits = remote.retrieve(QUERIES[1], top_n=3)
    want = local.retrieve(QUERIES[1], top_n=3)
    assert all(isinstance(h, RankedNode) for h in hits)
    assert [h.doc_id for h in hits] == [h.doc_id for h in want]
    assert [h.node.get_content() for h in hits] == [h.node.get_content() for h in want]
    assert hits[0].node.metadata == want[0].node.metadata
    batch = remote.retrieve_batch(QUERIES[:2], top_n=2)
    assert [[h.node.node_id for h in b] for b in batch] == [
        [h.node.node_id for h in local.retrieve(q, top_n=2)] for q in QUERIES[:2]
    ]
    retriever = remote.as_retriever(top_n=2)
    assert isinstance(retriever, BaseRetriever)
    assert [h.node.node_id for h in retriever.retrieve(QUERIES[2])] == [
        h.node.node_id for h in local.retrieve(QUERIES[2], top_n=2)
    ]
    async_hits = asyncio.run(remote.aretrieve(QUERIES[1], top_n=3))
    assert [h.node.node_id for h in async_hits] == [h.node.node_id for h in hits]
    assert remote.info()["generation"] == local.generation or remote.info()["generation"]
    assert KEY not in repr(remote)


def test_openai_client_embeddings(served: Any, minilm_embedder: Any) -> None:
    openai = pytest.importorskip("openai")
    server, _, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    texts = ["BM25 is lexical.", "Dense vectors."]
    out = client.embeddings.create(model="minilm", input=texts)  # base64 on the wire
    assert out.model == "minilm" and len(out.data) == 2
    got = np.array([d.embedding for d in out.data])
    want = minilm_embedder.embed_documents(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    one = client.embeddings.create(
        model="m", input="a query", encoding_format="float", extra_body={"input_type": "query"}
    )
    np.testing.assert_allclose(
        one.data[0].embedding, minilm_embedder.embed_queries(["a query"])[0], atol=1e-5
    )


def test_llamaindex_tei_embedder_and_reranker(served: Any, minilm_embedder: Any) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    server, local, _ = served
    emb = TextEmbeddingsInference(model_name="minilm", base_url=server.url, auth_token=KEY)
    vec = emb.get_text_embedding("Dense retrieval embeds queries.")
    np.testing.assert_allclose(
        vec, minilm_embedder.embed_documents(["Dense retrieval embeds queries."])[0], atol=1e-5
    )
    assert len(asyncio.run(emb.aget_text_embedding_batch(["a", "b"]))) == 2
    rr = TextEmbeddingInference(base_url=server.url, top_n=2, auth_token=f"Bearer {KEY}")
    texts = [d["text"] for d in CORPUS[:5]]
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in texts]
    top = rr.postprocess_nodes(nodes, QueryBundle("what reranks candidates?"))
    want = local.reranker.scorer("what reranks candidates?", texts)
    best = sorted(range(5), key=lambda i: -want[i])[:2]
    assert [n.node.text for n in top] == [texts[i] for i in best]
    assert top[0].score == pytest.approx(float(want[best[0]]), abs=1e-4)


def test_tei_embed_truncate_and_normalize_follow_tei(served: Any) -> None:
    server, local, _ = served
    long_text = "retrieval " * 350  # 350 tokens: over MiniLM's 256, under max_query_chars
    post = lambda body: httpx.post(server.url + "/embed", json=body, headers=AUTH)  # noqa: E731
    r = post({"inputs": [long_text], "truncate": False})
    assert r.status_code == 413 and r.json()["error"]["type"] == "validation"
    assert "tokens; the model takes" in r.json()["error"]["message"]
    # truncate: true, or omitted (as TEI with --auto-truncate), cuts the input to the model.
    for body in ({"inputs": [long_text], "truncate": True}, {"inputs": [long_text]}):
        r = post(body)
        assert r.status_code == 200 and len(r.json()[0]) == local.embedder.dimension
    assert post({"inputs": ["short"], "truncate": False}).status_code == 200
    r = post({"inputs": ["short"], "normalize": False})
    assert r.status_code == 422 and "embedder.normalize" in r.json()["error"]["message"]


def test_auth_refuses_missing_and_wrong_keys_and_never_logs_them(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, _, _ = served
    caplog.set_level(logging.DEBUG)
    body = {"query": "bm25"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(server.url + "/v1/query", json=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "unauthorized"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/docs").status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.get(server.url + "/docs", headers=AUTH).status_code == 200
    assert httpx.post(server.url + "/v1/query", json=body, headers=AUTH).status_code == 200
    assert KEY not in caplog.text


def test_limits_and_bad_input_give_json_errors_without_tracebacks(served: Any) -> None:
    server, _, _ = served
    url = server.url

    def post(path: str, **kw: Any) -> httpx.Response:
        r = httpx.post(url + path, headers={**AUTH, **kw.pop("headers", {})}, **kw)
        assert "Traceback" not in r.text
        return r

    r = post("/v1/query", content=b"x" * 1_000_001, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "serve.max_body_bytes" in r.json()["error"]["message"]
    r = post("/v1/query", json={"query": "q" * 5000})
    assert r.status_code == 422 and "serve.max_query_chars" in r.json()["error"]["message"]
    r = post("/v1/query/batch", json={"queries": ["q"] * 300})
    assert r.status_code == 413 and "serve.max_batch_items" in r.json()["error"]["message"]
    bad = [
        post("/v1/query", content=b"{not json", headers={"Content-Type": "application/json"}),
        post("/v1/query", json={"query": 3}),
        post("/v1/query", json={"query": "  "}),
        post("/v1/query", json={"query": "x", "top_k": 0}),
        post("/v1/query", json={"query": "x", "nope": 1}),
        post("/v1/query", json={"query": "x", "filters": ["year ~ 3"]}),
        post("/v1/query", json={"query": "x", "filters": {"year": {"<": "soon"}}}),
        post("/v1/query/batch", json={"queries": []}),
        post("/v1/embeddings", json={"input": [1, 2]}),
        post("/v1/embeddings", json={"input": "x", "dimensions": 7}),
    ]
    assert [r.status_code for r in bad] == [422] * len(bad), [r.text for r in bad]
    assert all(set(r.json()) == {"error"} for r in bad)
    r = post("/v1/ask", json={"question": "why?"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "llm_not_configured"
    r = httpx.get(url + "/v1/nowhere", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    assert httpx.get(url + "/healthz").status_code == 200


def test_info_and_index_job(served: Any) -> None:
    server, _, _ = served
    info = httpx.get(server.url + "/v1/info", headers=AUTH).json()
    assert info["documents"] == len(CORPUS) and info["generation"].startswith("gen-")
    # backend auto resolved (pinned to torch for the suite by conftest), and why
    assert info["backends"]["reranker"]["backend"] == "torch"
    assert info["backends"]["reranker"]["reason"] == "GL_RETRIEVAL_AUTO_BACKEND=torch"
    assert set(info["backends"]["embedder"]) >= {"backend", "precision", "tier", "cpu_model"}
    start = httpx.post(server.url + "/v1/index", json={}, headers=AUTH)
    assert start.status_code == 202
    job = start.json()
    again = httpx.post(server.url + "/v1/index", json={}, headers=AUTH)
    assert again.status_code in (202, 409)  # 409 unless the no-op job already finished
    for _ in range(200):
        state = httpx.get(server.url + f"/v1/index/{job['id']}", headers=AUTH).json()
        if state["state"] != "running":
            break
        asyncio.run(asyncio.sleep(0.05))
    assert state["state"] == "succeeded", state
    assert state["summary"]["documents"]["unchanged"] == len(CORPUS)
    assert httpx.get(server.url + "/v1/index/nope", headers=AUTH).status_code == 404


def test_overload_gives_503_timeouts_give_504_and_the_server_stays_healthy(
    tmp_path: Path, minilm_embedder: Any
) -> None:
    raw = _cfg(tmp_path, None, queue_size=2, request_timeout_s=5.0)
    raw["retriever"] = {"top_k": 4, "mode": "dense"}
    cfg = parse_config(raw)
    slow = SlowEmbedder(minilm_embedder, delay_s=0.4)
    pipe = RetrievalPipeline(cfg, embedder=slow)
    pipe.index()

    async def fire(url: str, n: int) -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
            tasks = [
                asyncio.create_task(c.post(url + "/v1/query", json={"query": f"q{i}"}))
                for i in range(n)
            ]
            await asyncio.sleep(0.1)  # the first batch is running now
            t0 = asyncio.get_running_loop().time()
            health = await c.get(url + "/healthz")
            took = asyncio.get_running_loop().time() - t0
            assert health.status_code == 200
            return list(await asyncio.gather(*tasks)), took

    with running_server(cfg, pipeline=pipe) as server:
        responses, health_s = asyncio.run(fire(server.url, 10))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes, codes
        assert set(codes) <= {200, 503}
        rejected = [r for r in responses if r.status_code == 503]
        assert rejected[0].headers["Retry-After"] == "1"
        assert rejected[0].json()["error"]["type"] == "overloaded"
        assert health_s < 0.3  # the event loop is free while the model works
        ok = httpx.post(server.url + "/v1/query", json={"query": "bm25"}, headers=AUTH)
        assert ok.status_code == 200

    raw["serve"]["request_timeout_s"] = 0.1
    with running_server(parse_config(raw), pipeline=pipe) as server:
        r = httpx.post(server.url + "/v1/query", json={"query": "bm25"}, headers=AUTH)
        assert r.status_code == 504 and "serve.request_timeout_s" in r.text
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_non_loopback_bind_needs_a_key_or_insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    from gl_retrieval.errors import ConfigError
    from gl_retrieval.serve.server import API_KEY_ENV, api_key_for, check_bind

    with pytest.raises(ConfigError, match="--insecure"):
        check_bind("0.0.0.0", api_key=None, insecure=False)
    check_bind("0.0.0.0", api_key=None, insecure=True)
    check_bind("0.0.0.0", api_key="k", insecure=False)
    check_bind("127.0.0.1", api_key=None, insecure=False)
    check_bind("::1", api_key=None, insecure=False)
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert api_key_for(parse_config({}).serve or _default_serve()) == "from-env"


def _default_serve() -> Any:
    from gl_retrieval.config import ServeConfig

    return ServeConfig()


def test_readyz_waits_for_an_index_that_a_job_then_builds(
    tmp_path: Path, minilm_embedder: Any
) -> None:
    raw = _cfg(tmp_path, None)
    raw["serve"].pop("api_key")
    pipe = RetrievalPipeline(parse_config(raw), embedder=minilm_embedder)
    with running_server(parse_config(raw), pipeline=pipe) as server:
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        r = httpx.post(server.url + "/v1/query", json={"query": "bm25"})
        assert r.status_code == 503 and "gl-retrieval index" in r.json()["error"]["message"]
        job = httpx.post(server.url + "/v1/index", json={"prune": True}).json()
        for _ in range(600):
            state = httpx.get(server.url + f"/v1/index/{job['id']}").json()
            if state["state"] != "running":
                break
            asyncio.run(asyncio.sleep(0.05))
        assert state["state"] == "succeeded", state
        assert state["summary"]["documents"]["added"] == len(CORPUS)
        assert httpx.get(server.url + "/readyz").status_code == 200
        r = httpx.post(server.url + "/v1/query", json={"query": "term frequency lexical"})
        assert r.status_code == 200 and r.json()["results"][0]["doc_id"] == "bm25"


def test_serve_is_an_optional_extra_and_import_stays_light(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess
    import sys

    from gl_retrieval.errors import MissingDependencyError
    from tests.conftest import ROOT

    code = (
        "import sys, gl_retrieval, gl_retrieval.serve;"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'httpx', 'torch', 'prometheus_client')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "gl_retrieval.serve.app", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gl-retrieval\[serve\]'"):
        import gl_retrieval.serve.app  # noqa: F401
