"""Slow bodies against honest queries: `serve` (default serve settings, packaged MiniLM) while N
connections send their POST body one byte every few seconds, reconnecting whenever answered.

    PYTHONPATH=. python bench/slow_bodies.py --baseline /tmp/old-checkout

Each checkout runs in its own process (the baseline with its own tree first on the path), one
after the other; the table gives the honest ``/v1/query`` success rate and latency while the
trickling connections hold on, and what the tricklers were answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    {"_id": f"d{i}", "text": f"Document {i} talks about topic {i % 7} and lexical ranking."}
    for i in range(200)
]


def measure(*, conns: int, every_s: float, seconds: float, honest: int) -> dict[str, Any]:
    import httpx

    from gl_retrieval import RetrievalPipeline
    from gl_retrieval.config import parse_config
    from gl_retrieval.serve.server import create_server

    tmp = Path(tempfile.mkdtemp(prefix="slow-bodies-"))
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    cfg = parse_config(
        {
            "embedder": {"model": "packaged:all-MiniLM-L6-v2"},
            "retriever": {"top_k": 5, "mode": "dense"},
            "storage": {"persist_dir": str(tmp / "index")},
            "sources": [{"path": str(corpus)}],
        }
    )
    pipe = RetrievalPipeline(cfg)
    pipe.index()
    server = create_server(cfg, port=0, pipeline=pipe, log_level="error")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    trickle_answers: dict[str, int] = {}
    header = (
        b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )

    async def trickler(stop: float) -> None:
        while time.monotonic() < stop:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(header)

            async def drip(w: Any = writer) -> None:
                with contextlib.suppress(OSError):
                    while True:
                        await w.drain()
                        await asyncio.sleep(every_s)
                        w.write(b" ")

            dripping = asyncio.create_task(drip())
            try:
                head = await asyncio.wait_for(reader.read(12), stop - time.monotonic())
                word = head.decode(errors="replace")[9:12] or "closed"
            except (asyncio.TimeoutError, OSError):
                word = "held"
            trickle_answers[word] = trickle_answers.get(word, 0) + 1
            dripping.cancel()
            writer.close()

    async def client(stop: float, out: list[tuple[int, float]]) -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post(url + "/v1/query", json={"query": "lexical ranking"})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                out.append((code, time.perf_counter() - t0))
                await asyncio.sleep(0.05)

    async def run() -> list[tuple[int, float]]:
        stop = time.monotonic() + seconds
        tricklers = [asyncio.create_task(trickler(stop)) for _ in range(conns)]
        await asyncio.sleep(1.0)  # every trickler has sent its headers
        out: list[tuple[int, float]] = []
        await asyncio.gather(*(client(stop, out) for _ in range(honest)))
        await asyncio.gather(*tricklers)
        return out

    results = asyncio.run(run())
    import gl_retrieval

    server.should_exit = True
    thread.join(timeout=30)
    ok = sorted(t for code, t in results if code == 200)
    codes: dict[str, int] = {}
    for code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {
        "honest_requests": len(results),
        "success_rate": len(ok) / max(1, len(results)),
        "codes": codes,
        "p50_ms": 1000 * ok[len(ok) // 2] if ok else None,
        "p95_ms": 1000 * ok[int(len(ok) * 0.95)] if ok else None,
        "tricklers_answered": trickle_answers,
        "code": str(Path(gl_retrieval.__file__).parents[1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", type=Path, help="checkout to compare against")
    ap.add_argument("--conns", type=int, default=40)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between body bytes")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--honest", type=int, default=2, help="honest clients, sequential each")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(
            json.dumps(measure(conns=a.conns, every_s=a.every, seconds=a.seconds, honest=a.honest))
        )
        return
    args = ["--one", "--conns", str(a.conns), "--every", str(a.every)]
    args += ["--seconds", str(a.seconds), "--honest", str(a.honest)]
    runs = [("baseline", a.baseline)] if a.baseline else []
    runs.append(("this tree", ROOT))
    print(f"load average before: {os.getloadavg()}")
    for name, tree in runs:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        print(name, out.stdout.strip().splitlines()[-1])
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
