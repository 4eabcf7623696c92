"""No client can hurt another (issue 24): a bad text is refused at the edge and never fails its
batch, and heavy requests are admitted by their cost so light queries keep flowing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from gl_retrieval.serve.batching import MicroBatcher
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import running_server

BAD = "\ud800 wing"  # a lone surrogate: valid JSON ("\\ud800"), but no UTF-8 text


def _raw(value: Any) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: the surrogate travels as \ud800


def _post(c: httpx.Client, url: str, body: Any) -> httpx.Response:
    return c.post(url, content=_raw(body), headers={"content-type": "application/json"})


# -- the batcher: a failing merged batch fails only the item that fails alone -------------------


def test_a_failing_batch_is_split_until_only_the_bad_item_gets_the_error() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def fn(xs: list[Any]) -> list[Any]:
        gate.wait(5)  # let every submission queue up, so they share one batch
        calls.append(len(xs))
        if any(x == "bad" for x in xs):
            raise TypeError("TextEncodeInput must be Union[...]")  # what the tokenizer raises
        return [x * 2 for x in xs]

    b = MicroBatcher(fn, name="t", max_cost=64, max_wait_s=0.05)

    async def main() -> list[Any]:
        payloads = [f"q{i}" for i in range(15)]
        payloads[5:5] = ["bad"]
        payloads.append("bad")
        tasks = [asyncio.ensure_future(b.submit(p)) for p in payloads]
        await asyncio.sleep(0.1)
        gate.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        got = asyncio.run(main())
    finally:
        b.close()
    errors = [g for g in got if isinstance(g, BaseException)]
    assert len(errors) == 2 and all(isinstance(e, TypeError) for e in errors), got
    assert [g for g in got if not isinstance(g, BaseException)] == [f"q{i}" * 2 for i in range(15)]
    assert len(calls) <= 2 * 17  # halves, not a call per item and retry


# -- the service: lone surrogates are refused at the edge, naming the field -------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, minilm_embedder: Any) -> Any:
    tmp = tmp_path_factory.mktemp("iso")
    corpus = write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS)
    cfg = parse_config(
        {
            "embedder": {"provider": "huggingface", "model": MINILM},
            "retriever": {"top_k": 3, "mode": "dense"},
            "storage": {"persist_dir": str(tmp / "index")},
            "sources": [{"path": str(corpus)}],
        }
    )
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder)
    pipe.index()
    with running_server(cfg, pipeline=pipe) as server:
        yield server


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/query", {"query": BAD}, "query"),
        ("/v1/query/batch", {"queries": ["fine", BAD]}, "queries.1"),
        ("/v1/embeddings", {"input": ["fine", "ok", "x", BAD]}, "input.3"),
        ("/v1/embeddings", {"input": BAD}, "input"),
        ("/embed", {"inputs": [BAD]}, "inputs.0"),
        ("/v1/ask", {"question": BAD}, "question"),
        ("/v1/query", {"query": "fine", "filters": {"topic": BAD}}, "filters.topic"),
    ],
)
def test_a_lone_surrogate_is_refused_with_422_naming_the_field(
    served: Any, route: str, body: Any, field: str
) -> None:
    with httpx.Client(timeout=30) as c:
        r = _post(c, served.url + route, body)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert field in message and "lone surrogate" in message, message


def test_honest_clients_never_fail_beside_a_bad_text_sender(served: Any) -> None:
    """16 honest clients and one sending a lone surrogate every 10 ms: every honest request
    succeeds (before: 41% failed with 500s and resets, the batch's error handed to all)."""
    stop = time.monotonic() + 2.0
    codes: list[int] = []
    bad_codes: list[int] = []

    async def honest(c: httpx.AsyncClient, i: int) -> None:
        while time.monotonic() < stop:
            r = await c.post(served.url + "/v1/query", json={"query": f"vector index {i}"})
            codes.append(r.status_code)

    async def bad(c: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            r = await c.post(
                served.url + "/v1/embeddings",
                content=_raw({"input": ["fine", BAD], "input_type": "query"}),
                headers={"content-type": "application/json"},
            )
            bad_codes.append(r.status_code)
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            await asyncio.gather(bad(c), *(honest(c, i) for i in range(16)))

    asyncio.run(main())
    assert codes and set(codes) == {200}, {k: codes.count(k) for k in set(codes)}
    assert bad_codes and set(bad_codes) == {422}


# -- heavy requests are admitted by their cost: fast 503s, and light queries keep flowing -------

LONG = " ".join(["retrieval index vector dense sparse query rerank model token chunk"] * 30)


def test_a_burst_of_heavy_embeddings_gets_fast_503s_while_light_queries_flow(served: Any) -> None:
    """6 concurrent /v1/embeddings of 16 x 300-word texts (the issue's 32 x 256, scaled to a
    test): one is admitted, the rest get 503 + Retry-After at once, and a light query stream
    alongside keeps answering 200 within the wait budget. Before: every heavy request was
    admitted, and the light queries waited behind them all (or got 504)."""
    light: list[tuple[int, float]] = []
    heavy: list[tuple[int, float, str | None]] = []

    async def main() -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            for i in range(20):  # teach it the light rate
                await c.post(served.url + "/v1/query", json={"query": f"warm {i}"})
            done = asyncio.Event()

            async def light_stream() -> None:
                while not done.is_set():
                    t0 = time.perf_counter()
                    r = await c.post(served.url + "/v1/query", json={"query": "a vector index"})
                    light.append((r.status_code, time.perf_counter() - t0))
                    await asyncio.sleep(0.05)

            async def one() -> None:
                t0 = time.perf_counter()
                r = await c.post(served.url + "/v1/embeddings", json={"input": [LONG] * 16})
                heavy.append(
                    (r.status_code, time.perf_counter() - t0, r.headers.get("retry-after"))
                )

            stream = asyncio.ensure_future(light_stream())
            await asyncio.sleep(0.2)
            await asyncio.gather(*(one() for _ in range(6)))
            done.set()
            await stream

    asyncio.run(main())
    codes = sorted(code for code, _, _ in heavy)
    assert codes.count(200) >= 1 and codes.count(503) >= 4, codes
    refused = [(dt, ra) for code, dt, ra in heavy if code == 503]
    assert all(dt < 1.0 and ra is not None and int(ra) >= 1 for dt, ra in refused), refused
    assert light and {code for code, _ in light} == {200}, light
    assert max(dt for _, dt in light) < 2.0, sorted(dt for _, dt in light)[-5:]
