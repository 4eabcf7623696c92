"""The rerank cache: hits skip the model, edits miss, the bound holds, results do not change,
and the counts reach the library, ``/metrics`` and ``/v1/info``."""

from __future__ import annotations

import asyncio
import gc
import threading
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import RerankerConfig, parse_config
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, PairScorer, build_reranker
from gl_retrieval.retrieval.score_cache import ENTRY_BYTES, ScoreCache, entries_for
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import running_server

QUERIES = [
    "which model reads query and passage together to rerank?",
    "term frequency lexical ranking",
    "share one index between many processes",
    "split long documents into chunks",
]


class Counting:
    """A deterministic scorer that records every pair the 'model' is asked to score."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []
        self.lock = threading.Lock()

    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        with self.lock:
            self.calls.append(list(pairs))
        return [float(len(set(q.split()) & set(p.split()))) + len(p) / 1000 for q, p in pairs]

    @property
    def pairs_scored(self) -> int:
        return sum(len(c) for c in self.calls)


def counting_reranker(**settings: Any) -> tuple[CrossEncoderReranker, Counting]:
    c = Counting()
    scorer = PairScorer(c.predict, identity="counting")
    return CrossEncoderReranker(model="unused", scorer=scorer, **settings), c


def _config(tmp: Path, reranker: dict[str, Any]) -> dict[str, Any]:
    corpus = write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS)
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 5, "mode": "hybrid"},
        "storage": {"persist_dir": str(tmp / "index")},
        "sources": [{"path": str(corpus)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        "reranker": {"top_n": 3, "backend": "torch", **reranker},
    }


# -- the cache itself ----------------------------------------------------------------------------


def test_lru_bound_evicts_least_recently_used_and_counts() -> None:
    cache = ScoreCache(max_entries=3)
    keys = cache.keys("m", [("q", f"p{i}") for i in range(5)])
    cache.put_many(keys[:3], [0.0, 1.0, 2.0])
    assert cache.get_many([keys[0]]) == [0.0]  # p0 is now the most recently used
    cache.put_many(keys[3:], [3.0, 4.0])  # evicts p1, p2
    assert cache.get_many(keys) == [0.0, None, None, 3.0, 4.0]
    s = cache.stats()
    assert (s.entries, s.evictions, s.hits, s.misses) == (3, 2, 4, 2)
    assert s.bytes == 3 * ENTRY_BYTES and s.max_bytes == 3 * ENTRY_BYTES


def test_keys_separate_identity_query_and_passage() -> None:
    k = ScoreCache.keys
    base = k("model-a", [("ab", "c")])[0]
    assert k("model-a", [("ab", "c")])[0] == base
    assert base not in (
        k("model-b", [("ab", "c")])[0],  # another model or precision
        k("model-a", [("a", "bc")])[0],  # the same characters split differently
        k("model-a", [("ab", "c ")])[0],  # one character of the passage changed
    )


def test_an_entry_takes_no_more_than_it_is_counted_at() -> None:
    n = 20_000
    cache = ScoreCache(max_entries=n)
    keys = cache.keys("m", [("q", f"passage {i}") for i in range(n)])
    gc.collect()
    tracemalloc.start()
    try:
        cache.put_many(keys, [float(i) / 7 for i in range(n)])
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used / n <= ENTRY_BYTES


def test_size_from_config_and_zero_turns_it_off() -> None:
    assert entries_for(max_mb=16, max_entries=None) == 16 * (1 << 20) // ENTRY_BYTES
    assert entries_for(max_mb=16, max_entries=10) == 10
    off = build_reranker(
        RerankerConfig(model="m", cache_mb=0), scorer=lambda q, ps: [1.0] * len(ps)
    )
    assert off.cache_stats().enabled is False
    rr, model = counting_reranker(cache_entries=0)
    rr.score_pairs([("q", "a")])
    rr.score_pairs([("q", "a")])
    assert model.pairs_scored == 2 and rr.cache_stats().hits == 0
    cfg = RerankerConfig(model="m", cache_mb=2.5, cache_entries=100)
    assert RerankerConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(ValueError, match="cache_mb"):
        RerankerConfig(model="m", cache_mb=-1)


# -- the reranker --------------------------------------------------------------------------------


def test_repeat_is_a_full_hit_and_only_misses_reach_the_model() -> None:
    rr, model = counting_reranker()
    first = rr.score_pairs([("q", "a"), ("q", "b"), ("q", "a")])
    assert model.calls == [[("q", "a"), ("q", "b")]]  # a duplicate pair is scored once
    assert rr.score_pairs([("q", "b"), ("q", "a")]) == [first[1], first[0]]
    assert len(model.calls) == 1  # full hit: no model call at all
    rr.score_pairs([("q", "a"), ("q", "c")])
    assert model.calls[-1] == [("q", "c")]
    s = rr.cache_stats()
    assert (s.hits, s.misses, s.entries) == (3, 4, 3)
    assert rr.score_pairs([("q", "c")], cache=False) == rr.score_pairs([("q", "c")])
    assert model.calls[-1] == [("q", "c")] and len(model.calls) == 3  # cache=False: the model


def test_a_real_cross_encoder_is_not_called_on_a_full_hit(
    tiny_cross_encoder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentence_transformers import CrossEncoder

    calls: list[int] = []
    predict = CrossEncoder.predict

    def counted(self: Any, sentences: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(sentences))
        return predict(self, sentences, *args, **kwargs)

    monkeypatch.setattr(CrossEncoder, "predict", counted)
    cfg = RerankerConfig(model=str(tiny_cross_encoder), device="cpu", backend="torch")
    rr = build_reranker(cfg)
    rr.warmup()
    calls.clear()
    pairs = [("apples", "apples and pears"), ("apples", "only pears"), ("pears", "x y")]
    cold = rr.score_pairs(pairs)
    assert calls == [3]
    assert rr.score_pairs(pairs) == cold
    assert calls == [3]
    assert "torch|" in rr.scorer.identity and "fp32" in rr.scorer.identity


def test_rerank_and_postprocess_go_through_the_cache() -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    rr, model = counting_reranker(top_n=2)
    nodes = [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=f"apples {i}"), score=1.0) for i in range(3)
    ]
    a = rr.rerank(nodes, "apples")
    b = rr.postprocess_nodes(nodes, query_bundle=QueryBundle("apples"))
    assert len(model.calls) == 1
    assert [n.to_dict() for n in a] == [n.to_dict() for n in b]  # type: ignore[attr-defined]


# -- through the pipeline -------------------------------------------------------------------------


def _all_fields(results: Sequence[Sequence[Any]]) -> list[list[dict[str, Any]]]:
    return [[r.to_dict() for r in hits] for hits in results]


@pytest.mark.parametrize("stand_in", [False, True])
def test_results_are_identical_with_the_cache_on_and_off(
    tmp_path: Path, minilm_embedder: Any, stand_in: bool
) -> None:
    from gl_retrieval.models.stand_in import make_tiny_cross_encoder

    model = make_tiny_cross_encoder(tmp_path / "ce", stand_in=stand_in)
    on = RetrievalPipeline(
        parse_config(_config(tmp_path, {"model": str(model)})), embedder=minilm_embedder
    )
    on.index()
    off = RetrievalPipeline(
        parse_config(_config(tmp_path, {"model": str(model), "cache_mb": 0})),
        embedder=minilm_embedder,
    )

    def surfaces(pipe: RetrievalPipeline) -> list[Any]:
        return [
            _all_fields(pipe.retrieve_batch(QUERIES)),
            _all_fields([pipe.retrieve(q) for q in QUERIES]),
            _all_fields([pipe.as_retriever().retrieve(q) for q in QUERIES]),  # LlamaIndex
        ]

    want = surfaces(off)
    assert all(r["rerank_stand_in"] is stand_in for hits in want[0] for r in hits)
    assert surfaces(on) == want  # cold, then warm (the same queries again)
    assert surfaces(on) == want  # warm: every pair a hit
    s = on.reranker.cache_stats()  # type: ignore[union-attr]
    pairs = len(QUERIES) * len(SMALL_CORPUS)  # top_k 5 of 5 one-chunk documents
    assert s.misses == pairs and s.hits == 5 * pairs  # six passes, the first one cold
    assert off.reranker.cache_stats().hits == 0  # type: ignore[union-attr]


def test_an_edited_document_is_never_served_a_stale_score(
    tmp_path: Path, minilm_embedder: Any
) -> None:
    rr, model = counting_reranker(top_n=3)
    cfg = parse_config(_config(tmp_path, {"model": "unused"}))
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder, reranker=rr)
    pipe.index()
    query = "what does a cross-encoder output when it reranks candidates"
    before = {h.node.node_id: h for h in pipe.retrieve(query)}
    pipe.retrieve(query)
    scored = model.pairs_scored
    assert rr.cache_stats().hits > 0

    docs = [dict(d) for d in SMALL_CORPUS]
    ce = next(d for d in docs if d["_id"] == "ce")
    ce["text"] = ce["text"].replace("one relevance score", "one relevance score per candidate")
    write_corpus(tmp_path / "corpus.jsonl", docs)
    pipe.index()
    after = {h.node.node_id: h for h in pipe.retrieve(query)}

    edited = [nid for nid, h in after.items() if "per candidate" in h.node.get_content()]
    assert edited and edited[0] in before  # same node id, new text
    new_pairs = model.calls[-1]
    assert model.pairs_scored > scored
    assert [p for _, p in new_pairs] == [
        rr.passages([after[edited[0]]])[0]
    ]  # only the edited passage went to the model again
    want = model.predict([(query, rr.passages([after[edited[0]]])[0])])[0]
    assert after[edited[0]].rerank_score == want != before[edited[0]].rerank_score


# -- serve ---------------------------------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_serve_repeats_skip_the_batcher_and_report_hits(
    tmp_path: Path, tiny_cross_encoder: Path, minilm_embedder: Any
) -> None:
    raw = _config(tmp_path, {"model": str(tiny_cross_encoder)})
    raw["serve"] = {"max_queue_wait_ms": None}
    cfg = parse_config(raw)
    local = RetrievalPipeline(cfg, embedder=minilm_embedder)
    local.index()

    async def fire(c: httpx.AsyncClient, url: str) -> list[httpx.Response]:
        return await asyncio.gather(
            *(c.post(url + "/v1/query", json={"query": q}) for q in QUERIES * 2)
        )

    with running_server(cfg, pipeline=local) as server:
        url = server.url
        with httpx.Client(timeout=60) as c:
            first = c.post(url + "/v1/query/batch", json={"queries": QUERIES}).json()
            m1 = c.get(url + "/metrics").text
            again = c.post(url + "/v1/query/batch", json={"queries": QUERIES}).json()
            m2 = c.get(url + "/metrics").text
            rerank_calls = 'gl_retrieval_batch_size_count{stage="rerank"}'
            assert _metric(m2, rerank_calls) == _metric(m1, rerank_calls)  # no model call
            assert again == first
            hits, misses = (
                _metric(m2, f"gl_retrieval_rerank_cache_{k}_total") for k in ("hits", "misses")
            )
            assert misses == _metric(m1, "gl_retrieval_rerank_cache_misses_total") > 0
            assert hits == misses  # the second batch found every pair
            assert _metric(m2, "gl_retrieval_rerank_cache_entries") == misses
            info = c.get(url + "/v1/info").json()["rerank_cache"]
            assert info["hits"] == hits and info["enabled"] is True and info["hit_rate"] == 0.5

        async def concurrent() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as ac:
                return await fire(ac, url)

        responses = asyncio.run(concurrent())
        assert [r.status_code for r in responses] == [200] * len(QUERIES) * 2
        for q, r in zip(QUERIES * 2, responses, strict=True):
            want = first["results"][QUERIES.index(q)]["results"]
            assert r.json()["results"] == want
