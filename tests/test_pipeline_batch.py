"""retrieve_batch == retrieve per query; async paths overlap; refresh() swaps generations."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gl_retrieval import RetrievalPipeline

QUERIES = [
    "which model reads query and passage together to rerank?",
    "term frequency lexical ranking",
    "share one index between many processes",
    "split long documents into chunks",
]


def _same(a: list[Any], b: list[Any]) -> None:
    assert [h.node.node_id for h in a] == [h.node.node_id for h in b]
    for x, y in zip(a, b, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-5)
        if x.retrieval_score is not None:
            assert x.retrieval_score == pytest.approx(y.retrieval_score, abs=1e-5)


@pytest.fixture()
def indexed(small_config: dict[str, Any], minilm_embedder: Any) -> RetrievalPipeline:
    pipe = RetrievalPipeline.from_config(small_config, embedder=minilm_embedder)
    pipe.index()
    return pipe


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_retrieve_batch_equals_retrieve(
    small_config: dict[str, Any], minilm_embedder: Any, mode: str, monkeypatch: Any
) -> None:
    cfg = {**small_config, "retriever": {"top_k": 5, "mode": mode}}
    pipe = RetrievalPipeline.from_config(cfg, embedder=minilm_embedder)
    pipe.index()
    calls: list[int] = []
    orig = type(minilm_embedder).embed_queries

    def spy(self: Any, texts: Any) -> Any:
        calls.append(len(texts))
        return orig(self, texts)

    monkeypatch.setattr(type(minilm_embedder), "embed_queries", spy)
    batch = pipe.retrieve_batch(QUERIES, top_n=3)
    assert calls == [len(QUERIES)]  # one embed call for all queries
    for q, hits in zip(QUERIES, batch, strict=True):
        _same(hits, pipe.retrieve(q, top_n=3))


def test_retrieve_batch_with_cross_encoder_scores_all_pairs_at_once(
    small_config: dict[str, Any], minilm_embedder: Any, tiny_cross_encoder: Path
) -> None:
    cfg = {**small_config, "reranker": {"model": str(tiny_cross_encoder), "top_n": 3}}
    pipe = RetrievalPipeline.from_config(cfg, embedder=minilm_embedder)
    pipe.index()
    batch = pipe.retrieve_batch(QUERIES, filters={"year": {">": 2000}})
    for q, hits in zip(QUERIES, batch, strict=True):
        single = pipe.retrieve(q, filters={"year": {">": 2000}})
        _same(hits, single)
        assert all(h.rerank_score is not None for h in hits)
        assert all(h.node.metadata["year"] > 2000 for h in hits)
    assert pipe.retrieve_batch([]) == []
    with pytest.raises(ValueError, match="non-empty"):
        pipe.retrieve_batch(["ok", " "])


def test_gathered_async_queries_overlap(
    indexed: RetrievalPipeline, minilm_embedder: Any, monkeypatch: Any
) -> None:
    orig = type(minilm_embedder).embed_queries

    def slow(self: Any, texts: Any) -> Any:
        time.sleep(0.3)  # a slow model call that releases the GIL, as torch does
        return orig(self, texts)

    indexed.retrieve(QUERIES[0])  # load the index first
    monkeypatch.setattr(type(minilm_embedder), "embed_queries", slow)

    async def three() -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(indexed.aretrieve(q) for q in QUERIES[:3]))
        return list(out), time.perf_counter() - t0

    results, took = asyncio.run(three())
    assert took < 0.75, f"3 gathered 0.3 s queries took {took:.2f}s: they ran one after another"
    assert results[0][0].doc_id == "ce"

    async def engine() -> Any:
        retriever = indexed.as_retriever(top_k=3)
        t0 = time.perf_counter()
        out = await asyncio.gather(*(retriever.aretrieve(q) for q in QUERIES[:3]))
        resp = await indexed.aquery(QUERIES[0])
        return out, resp, time.perf_counter() - t0

    out, resp, took = asyncio.run(engine())
    assert took < 1.05 and len(out[0]) == 3
    assert resp.response.startswith("Retrieval only")  # retrieval-only: the sources, printed
    assert resp.source_nodes[0].node.ref_doc_id == "ce"


def test_refresh_swaps_in_a_new_generation(
    indexed: RetrievalPipeline, small_config: dict[str, Any], tmp_path: Path, minilm_embedder: Any
) -> None:
    indexed.retrieve(QUERIES[0])
    before = indexed.generation
    assert before is not None and indexed.committed_generation() == before
    assert indexed.refresh() is False
    writer = RetrievalPipeline.from_config(small_config, embedder=minilm_embedder)
    extra = [{"_id": "zebra", "text": "Zebras are striped animals of the African savanna."}]
    writer.index_documents([*_docs(small_config), *_doc_objs(extra)])
    assert indexed.committed_generation() != before
    assert indexed.refresh() is True
    assert indexed.generation == indexed.committed_generation()
    assert indexed.retrieve("striped animals in Africa")[0].doc_id == "zebra"


def _doc_objs(rows: list[dict[str, Any]]) -> list[Any]:
    from gl_retrieval.ingest.sources import Document

    return [Document(r["_id"], r["text"]) for r in rows]


def _docs(cfg: dict[str, Any]) -> list[Any]:
    import json

    rows = [json.loads(line) for line in Path(cfg["sources"][0]["path"]).read_text().splitlines()]
    return _doc_objs(rows)


@pytest.fixture()
def dense(small_config: dict[str, Any], minilm_embedder: Any) -> RetrievalPipeline:
    cfg = {**small_config, "retriever": {"top_k": 5, "mode": "dense"}}
    pipe = RetrievalPipeline.from_config(cfg, embedder=minilm_embedder)
    pipe.index()
    return pipe


@pytest.mark.parametrize("filters", [None, {"topic": "storage"}, ["year>=2021"]])
def test_the_dense_first_stage_equals_the_llamaindex_retriever(
    dense: RetrievalPipeline, filters: Any
) -> None:
    """The one dense first stage (the storage's vector search) gives LlamaIndex's own
    ``VectorIndexRetriever`` hits, in order, with the same scores and nodes, filters included."""
    from llama_index.core.schema import QueryBundle

    from gl_retrieval.retrieval.filters import parse_filters

    stages = dense.stages()
    vecs = dense.embedder.embed_queries(QUERIES)
    for q, v in zip(QUERIES, vecs, strict=True):
        ours = dense.retrieve_candidates(q, embedding=v, filters=filters, top_k=4)
        stock = stages.handle.index.as_retriever(
            similarity_top_k=4, filters=parse_filters(filters)
        ).retrieve(QueryBundle(query_str=q, embedding=v.tolist()))
        assert ours
        assert [(h.node.node_id, h.node.get_content()) for h in ours] == [
            (h.node.node_id, h.node.get_content()) for h in stock
        ]
        assert [h.score for h in ours] == [h.score for h in stock]


def test_shared_nodes_are_shared_and_the_default_nodes_are_not(
    dense: RetrievalPipeline,
) -> None:
    """serve asks for shared nodes (decoded once, read-only); every other caller gets nodes
    of its own, which it may modify."""
    v = dense.embedder.embed_queries(QUERIES[:1])
    req = dense.request(QUERIES[:1])
    shared = dense.stages(shared_nodes=True)
    a, b = shared.candidates(req, v)[0], shared.candidates(req, v)[0]
    assert a[0].node is b[0].node
    c = dense.retrieve_candidates(QUERIES[0], embedding=v[0])
    d = dense.retrieve_candidates(QUERIES[0], embedding=v[0])
    assert c[0].node is not d[0].node
    c[0].node.metadata["touched"] = True
    assert "touched" not in shared.candidates(req, v)[0][0].node.metadata
