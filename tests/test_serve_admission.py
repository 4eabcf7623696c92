"""Admission by predicted queue wait: overload is refused at the door, latency stays bounded."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from gl_retrieval.serve.admission import Admission
from gl_retrieval.serve.batching import Overloaded
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import SlowEmbedder, running_server


def test_the_rate_is_per_busy_second_so_idle_time_and_batching_do_not_fool_it() -> None:
    a = Admission(queue_size=100, max_wait_s=0.5)
    assert a.rate() is None and a.predicted_wait_s() == 0.0
    # Batches of 4 requests answered together every 0.4 s, with 10 s idle in between.
    t = 0.0
    for _ in range(3):
        for _ in range(4):
            a.enter(now=t)
        for _ in range(4):
            a.leave(now=t + 0.4)
        t += 10.4
    assert a.rate() == pytest.approx(11 / 0.8)  # 11 completions after the first, in 0.8 busy s
    assert a.predicted_wait_s(in_flight=4) == pytest.approx(4 / (11 / 0.8))
    assert a.predicted_wait_s() == 0.0  # an idle server always admits
    a.enter(now=t)


def test_requests_that_would_wait_over_the_budget_are_refused_with_retry_after() -> None:
    a = Admission(queue_size=100, max_wait_s=0.5)
    for i in range(2):  # alone, 0.25 s each: 4 per second
        a.enter(now=0.25 * i)
        a.leave(now=0.25 * (i + 1))
    admitted = 0
    with pytest.raises(Overloaded) as info:
        for _ in range(10):
            a.enter()
            admitted += 1
    # 0, 1 and 2 ahead wait 0, 0.25 and 0.5 s; a fourth would wait 0.75 s.
    assert admitted == 3
    assert "serve.max_queue_wait_ms = 500" in str(info.value)
    assert info.value.retry_after_s >= 1.0


def test_queue_size_stays_a_hard_cap_and_none_turns_the_wait_bound_off() -> None:
    a = Admission(queue_size=2, max_wait_s=None)
    for i in range(2):  # very slow: the wait bound would refuse, but it is off
        a.enter(now=100.0 * i)
        a.leave(now=100.0 * (i + 1))
    a.enter()
    a.enter()
    with pytest.raises(Overloaded, match=r"serve\.queue_size = 2"):
        a.enter()


def test_overload_is_refused_at_once_and_answered_requests_stay_within_the_budget(
    tmp_path: Path, minilm_embedder: Any
) -> None:
    """A model that does one request per 0.2 s, a 0.5 s budget and 16 clients at once: the
    excess gets 503 immediately, and no answered request waits multiple seconds."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", SMALL_CORPUS)
    cfg = parse_config(
        {
            "embedder": {"provider": "huggingface", "model": MINILM},
            "retriever": {"top_k": 3, "mode": "dense"},
            "storage": {"persist_dir": str(tmp_path / "index")},
            "sources": [{"path": str(corpus)}],
            "serve": {"max_batch_size": 1, "max_queue_wait_ms": 500, "queue_size": 64},
        }
    )
    pipe = RetrievalPipeline(cfg, embedder=SlowEmbedder(minilm_embedder, delay_s=0.2))
    pipe.index()

    async def fire(url: str) -> list[tuple[int, float, str]]:
        async with httpx.AsyncClient(timeout=30) as c:
            for i in range(3):  # teach it the rate
                assert (await c.post(url + "/v1/query", json={"query": f"w{i}"})).status_code == 200

            async def one(i: int) -> tuple[int, float, str]:
                t0 = time.perf_counter()
                r = await c.post(url + "/v1/query", json={"query": f"q{i}"})
                return r.status_code, time.perf_counter() - t0, r.text

            return list(await asyncio.gather(*(one(i) for i in range(16))))

    with running_server(cfg, pipeline=pipe) as server:
        got = asyncio.run(fire(server.url))
        ok = [dt for code, dt, _ in got if code == 200]
        refused = [(dt, text) for code, dt, text in got if code == 503]
        assert set(code for code, _, _ in got) <= {200, 503}
        assert ok and refused, [c for c, _, _ in got]
        assert len(ok) <= 6  # about 0.5 s / 0.2 s ahead, plus the one being served
        assert max(ok) < 2.5  # bounded: without the budget the last would wait 16 x 0.2 s
        assert all(dt < 1.0 for dt, _ in refused)  # refused at the door, not after a wait
        assert "serve.max_queue_wait_ms" in refused[0][1]
        metrics = httpx.get(server.url + "/metrics").text
        assert "gl_retrieval_predicted_wait_seconds" in metrics
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_the_docstring_examples_of_admission_and_batching_hold() -> None:
    import doctest

    import gl_retrieval.serve.admission as admission
    import gl_retrieval.serve.batching as batching

    for mod in (admission, batching):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def test_split_by_length_keeps_every_index_once_and_groups_similar_lengths() -> None:
    import random

    from gl_retrieval.serve.batching import split_by_length

    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(40)]
    groups = split_by_length(lengths, call_cost=32)
    assert sorted(i for g in groups for i in g) == list(range(40))
    assert 1 < len(groups) < 40
    spans = [(min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in groups]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # runs, in order
    assert split_by_length([], call_cost=32) == []


def test_batcher_workers_run_batches_side_by_side_and_all_stop_on_close() -> None:
    import threading

    from gl_retrieval.serve.batching import MicroBatcher

    both = threading.Barrier(2, timeout=10)  # passes only if two batches run at once
    seen: list[str] = []

    def fn(xs: list[int]) -> list[int]:
        seen.append(threading.current_thread().name)
        both.wait()
        return [x * 2 for x in xs]

    b = MicroBatcher(fn, name="pair", max_cost=1, max_wait_s=0, workers=2)

    async def main() -> list[int]:
        return list(await asyncio.gather(b.submit(1), b.submit(2)))

    assert asyncio.run(main()) == [2, 4]
    assert sorted(seen) == ["gl-batch-pair-0", "gl-batch-pair-1"]
    b.close()
    for t in b._threads:
        t.join(timeout=5)
        assert not t.is_alive()


def test_embed_workers_auto_is_two_only_for_an_unpadded_torch_embedder_without_reranker(
    tiny_cross_encoder: Path,
) -> None:
    from gl_retrieval.serve.service import embed_workers_for

    def cfg(**over: Any) -> Any:
        base: dict[str, Any] = {"embedder": {"model": MINILM}}
        for key, value in over.items():
            base[key] = {**base.get(key, {}), **value}
        return parse_config(base)

    assert embed_workers_for(cfg(), cores=2) == 2
    assert embed_workers_for(cfg(), cores=1) == 1
    assert embed_workers_for(cfg(embedder={"unpad": False}), cores=2) == 1
    assert embed_workers_for(cfg(embedder={"backend": "onnx"}), cores=2) == 1
    assert embed_workers_for(cfg(reranker={"model": str(tiny_cross_encoder)}), cores=2) == 1
    assert embed_workers_for(cfg(serve={"batching": False}), cores=2) == 1
    assert embed_workers_for(cfg(serve={"embed_workers": 3}), cores=2) == 3
    with pytest.raises(Exception, match="embed_workers"):
        cfg(serve={"embed_workers": 0})


def test_a_padded_embedder_runs_one_worker_whatever_the_config_asks(tmp_path: Path) -> None:
    from gl_retrieval.serve.service import RetrievalService

    corpus = write_corpus(tmp_path / "c.jsonl", SMALL_CORPUS)
    base = {
        "embedder": {"model": MINILM, "unpad": False},
        "storage": {"persist_dir": str(tmp_path / "idx")},
        "sources": [{"path": str(corpus)}],
    }
    cfg = parse_config({**base, "serve": {"embed_workers": 2}})
    service = RetrievalService(RetrievalPipeline(cfg), cfg.serve).start()
    try:
        assert service.embed_workers == 1
    finally:
        service.close()
    cfg = parse_config({**base, "embedder": {"model": MINILM}, "serve": {"embed_workers": 2}})
    service = RetrievalService(RetrievalPipeline(cfg), cfg.serve).start()
    try:
        assert service.embed_workers == 2
    finally:
        service.close()


def test_several_workers_split_a_burst_into_fair_shares() -> None:
    from gl_retrieval.serve.batching import MIN_SHARE, MicroBatcher

    def burst(workers: int, n: int) -> list[int]:
        sizes: list[int] = []
        b = MicroBatcher(
            lambda xs: (sizes.append(len(xs)), xs)[1],
            name="burst",
            max_cost=64,
            max_wait_s=0.5,  # generous: a loaded CI box must still see the whole burst
            pending=lambda: n,
            workers=workers,
        )

        async def main() -> list[int]:
            return list(await asyncio.gather(*(b.submit(i) for i in range(n))))

        try:
            assert asyncio.run(main()) == list(range(n))
        finally:
            b.close()
        assert sum(sizes) == n
        return sizes

    # Two workers take at most half of the 32 in flight each; one worker takes them all.
    assert max(burst(2, 32)) <= 16
    assert burst(1, 32) == [32]
    # The share never drops below MIN_SHARE, so a small burst is not cut into tiny batches.
    b = MicroBatcher(lambda xs: xs, name="share", max_cost=64, pending=lambda: 6, workers=2)
    try:
        assert b._share() == MIN_SHARE
    finally:
        b.close()
