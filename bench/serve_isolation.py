"""Issue 24 items 1 and 3: honest clients beside a bad-text sender, and a heavy burst.

Run from the tree under test (an in-process server on a loopback port, packaged MiniLM, dense):

    python bench/serve_isolation.py WORKDIR 1            # 16 honest + one bad query / 50 ms, 5 s
    python bench/serve_isolation.py WORKDIR 3 8 32       # 8 concurrent /v1/embeddings of 32 texts

It prints one JSON line (docs/hostile-inputs.md#heavy-requests-and-bad-texts has a run).
"""

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, os.getcwd())
import contextlib

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.serve_helpers import running_server


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


tmp = Path(sys.argv[1])
tmp.mkdir(parents=True, exist_ok=True)
corpus = write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS)
cfg = parse_config(
    {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 3, "mode": "dense"},
        "storage": {"persist_dir": str(tmp / "index")},
        "sources": [{"path": str(corpus)}],
    }
)
pipe = RetrievalPipeline(cfg)
pipe.index()
BAD = json.dumps({"query": "\ud800 wing"}).encode()
WORDS = ("retrieval index vector dense sparse query rerank model token chunk " * 30).split()[:300]
TEXT = " ".join(WORDS)


async def item1(url):
    stop = time.monotonic() + 5.0
    codes = []

    async def honest(c, i):
        while time.monotonic() < stop:
            try:
                r = await c.post(url + "/v1/query", json={"query": f"vector index {i}"})
                codes.append(r.status_code)
            except httpx.HTTPError:
                codes.append(-1)

    async def bad(c):
        while time.monotonic() < stop:
            with contextlib.suppress(httpx.HTTPError):
                await c.post(
                    url + "/v1/query", content=BAD, headers={"content-type": "application/json"}
                )
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=30) as c:
        await asyncio.gather(bad(c), *(honest(c, i) for i in range(16)))
    fail = sum(1 for x in codes if x != 200)
    return {
        "honest_requests": len(codes),
        "honest_failed": fail,
        "fail_rate": round(fail / max(1, len(codes)), 3),
    }


async def item3(url, n_heavy, n_texts):
    lat, heavy = [], []
    async with httpx.AsyncClient(timeout=60) as c:
        for i in range(20):
            await c.post(url + "/v1/query", json={"query": f"warm {i}"})
        base = rss_mb()
        done = asyncio.Event()
        peak = [base]

        async def light():
            while not done.is_set():
                t0 = time.perf_counter()
                r = await c.post(url + "/v1/query", json={"query": "what is a vector index"})
                lat.append((r.status_code, time.perf_counter() - t0))
                peak[0] = max(peak[0], rss_mb())
                await asyncio.sleep(0.05)

        async def one():
            t0 = time.perf_counter()
            r = await c.post(url + "/v1/embeddings", json={"input": [TEXT] * n_texts})
            heavy.append(
                (r.status_code, round(time.perf_counter() - t0, 2), r.headers.get("retry-after"))
            )

        lt = asyncio.ensure_future(light())
        await asyncio.sleep(0.3)
        await asyncio.gather(*(one() for _ in range(n_heavy)))
        done.set()
        await lt
        await asyncio.sleep(2)
        after = rss_mb()
    ok = sorted(dt for s, dt in lat if s == 200)
    codes = {}
    for s, _dt, _ra in heavy:
        codes[s] = codes.get(s, 0) + 1
    return {
        "heavy_codes": codes,
        "heavy_503_max_s": max([dt for s, dt, _ in heavy if s == 503], default=None),
        "heavy_200_max_s": max([dt for s, dt, _ in heavy if s == 200], default=None),
        "retry_after": sorted({ra for s, _, ra in heavy if ra}),
        "light_n": len(lat),
        "light_non200": sum(1 for s, _ in lat if s != 200),
        "light_p50_s": round(ok[len(ok) // 2], 3) if ok else None,
        "light_max_s": round(ok[-1], 3) if ok else None,
        "rss_before_mb": round(base),
        "rss_peak_mb": round(peak[0]),
        "rss_after_mb": round(after),
    }


which = sys.argv[2]
with running_server(cfg, pipeline=pipe) as server:
    if which == "1":
        print(json.dumps(asyncio.run(item1(server.url))))
    else:
        print(json.dumps(asyncio.run(item3(server.url, int(sys.argv[3]), int(sys.argv[4])))))
