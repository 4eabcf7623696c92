"""Throughput and latency of `gl-retrieval serve` against a naive FastAPI wrapper.

One run, everything in ratios against baselines measured in the same run:

* servers: (a) our server with batching on; (b) our server with batching off (one encode per
  request); (c) a naive FastAPI app whose route calls ``pipe.retrieve`` per request;
* pipelines: ``dense`` (packaged MiniLM, top 10) and ``ce`` (top 20 + a random-weight
  cross-encoder of bge-reranker-base's size: BertForSequenceClassification, hidden 768,
  12 layers, num_labels 1, saved with the MiniLM tokenizer);
* 1, 4, 16 and 64 concurrent clients from a separate load-generator process (aiohttp, or
  httpx), a few seconds per cell; req/s, p50/p99 of answered requests, and 503s;
* in-process ``pipe.retrieve`` p50 (one thread) as the 1-client target;
* the headline ratio, (a)/(c) at 16 clients dense, once more from ``--pairs`` interleaved
  cells with both servers up (the median), since this VM's speed drifts between the sweep's
  (a) and (c) cells.

Each server runs in its own process with ``torch.set_num_threads(--threads)``; the corpus is
the first ``--docs`` documents of the shared SciFact corpus (indexed once, dense mode).

Usage::

    python bench/serve.py --docs 1000 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCIFACT = Path(os.environ.get("GL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "scifact"
WORK = RESULTS / "serve_work"
CLIENTS = (1, 4, 16, 64)
SERVERS = ("a", "b", "c")
SERVER_NAMES = {"a": "batching on", "b": "batching off", "c": "naive FastAPI"}
QUEUE_SIZE = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _int_or_auto(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _config(pipeline: str, *, batching: bool, threads: str = "auto") -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "embedder": {
            "provider": "huggingface",
            "model": "packaged:all-MiniLM-L6-v2",
            "backend": os.environ.get("GL_BENCH_BACKEND", "torch"),
            "unpad": os.environ.get("GL_BENCH_UNPAD", "1") == "1",
        },
        "retriever": {"top_k": 10 if pipeline == "dense" else 20, "mode": "dense"},
        "storage": {"persist_dir": str(WORK / "index")},
        "sources": [{"path": str(WORK / "corpus.jsonl")}],
        "serve": {
            "batching": batching,
            "max_batch_size": int(os.environ.get("GL_BENCH_MAX_BATCH", "32")),
            "max_wait_ms": float(os.environ.get("GL_BENCH_MAX_WAIT_MS", "2")),
            "embed_workers": _int_or_auto(os.environ.get("GL_BENCH_EMBED_WORKERS", "auto")),
            "queue_size": QUEUE_SIZE,
            "request_timeout_s": 60,
        },
    }
    if pipeline == "ce":
        cfg["reranker"] = {"model": str(WORK / "bge-base-sized"), "top_n": 5, "max_length": 256}
    if threads != "auto":
        cfg["runtime"] = {"threads": int(threads)}
    return cfg


def _queries(n: int = 200) -> list[str]:
    lines = (SCIFACT / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


# -- setup (main process) --------------------------------------------------------------------------


def prepare(docs: int) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    corpus = WORK / "corpus.jsonl"
    if not corpus.exists():
        with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as f:
            corpus.write_text("".join(next(f) for _ in range(docs)), encoding="utf-8")
    ce = WORK / "bge-base-sized"
    if not (ce / "config.json").exists():
        import shutil

        import torch
        import transformers

        from gl_retrieval.models import resolve_model_path
        from gl_retrieval.models.stand_in import TOKENIZER_FILES

        tok = Path(resolve_model_path("packaged:all-MiniLM-L6-v2"))
        vocab = sum(1 for _ in (tok / "vocab.txt").open(encoding="utf-8"))
        torch.manual_seed(0)
        bert_cfg = transformers.BertConfig(
            vocab_size=vocab,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            num_labels=1,
        )
        transformers.BertForSequenceClassification(bert_cfg).save_pretrained(ce)
        for name in TOKENIZER_FILES:
            if (tok / name).exists():
                shutil.copy(tok / name, ce / name)
    from gl_retrieval import RetrievalPipeline

    RetrievalPipeline.from_config(_config("dense", batching=True)).index()


def in_process_p50(pipeline: str, queries: list[str], n: int, threads: str) -> float:
    from gl_retrieval import RetrievalPipeline

    pipe = RetrievalPipeline.from_config(_config(pipeline, batching=True, threads=threads))
    pipe.warmup()
    for q in queries[:3]:
        pipe.retrieve(q)
    times = []
    for q in queries[:n]:
        t0 = time.perf_counter()
        pipe.retrieve(q)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


# -- servers (child processes) ---------------------------------------------------------------------


def run_server(kind: str, pipeline: str, port: int, threads: str) -> None:
    from gl_retrieval.config import parse_config

    cfg = parse_config(_config(pipeline, batching=kind == "a", threads=threads))
    if kind in ("a", "b"):
        from gl_retrieval.serve.server import create_server

        create_server(cfg, port=port, log_level="warning").run()
        return
    import uvicorn
    from fastapi import FastAPI

    from gl_retrieval import RetrievalPipeline

    pipe = RetrievalPipeline(cfg).warmup()
    app = FastAPI()

    @app.post("/v1/query")
    def query(q: NaiveQuery) -> Any:  # a sync route: Starlette runs it in its thread pool
        return {"query": q.query, "results": [r.to_dict() for r in pipe.retrieve(q.query)]}

    @app.get("/readyz")
    def ready() -> Any:
        return {"status": "ready"}

    @app.get("/v1/info")
    def info() -> Any:
        import torch

        return {"serve": {"threads": torch.get_num_threads()}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class NaiveQuery(BaseModel):
    query: str


# -- load generator (child process) ----------------------------------------------------------------


async def _load(
    url: str, clients: int, duration: float, warmup: float, kind: str = "aiohttp"
) -> dict[str, Any]:
    """Closed-loop clients for ``duration`` seconds (after ``warmup``).

    ``aiohttp`` by default: its C HTTP parser costs a fraction of httpx's pure-Python h11, which
    at 64 clients used 0.85 of this box's 2 cores by itself and so measured its own queueing;
    ``--client httpx`` keeps the old generator for comparison.
    """
    import resource

    queries = _queries()
    lat: list[float] = []
    all_lat: list[float] = []
    codes: dict[int, int] = {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    t_measure, t_end = start + warmup, start + warmup + duration

    async def worker(i: int, post: Any) -> None:
        j = i
        while True:
            now = time.perf_counter()
            if now >= t_end:
                return
            q = queries[j % len(queries)]
            j += clients
            t0 = time.perf_counter()
            code, retry_after = await post(json.dumps({"query": q}).encode())
            dt = time.perf_counter() - t0
            if t0 >= t_measure:
                codes[code] = codes.get(code, 0) + 1
                all_lat.append(dt)
                if code == 200:
                    lat.append(dt)
            if code == 503:
                await asyncio.sleep(retry_after)  # what a polite client does with Retry-After

    headers = {"Content-Type": "application/json"}
    if kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:

            async def post_httpx(body: bytes) -> tuple[int, float]:
                try:
                    r = await client.post(url + "/v1/query", content=body, headers=headers)
                except httpx.HTTPError:
                    return -1, 0.0
                return r.status_code, float(r.headers.get("Retry-After", "1"))

            await asyncio.gather(*(worker(i, post_httpx) for i in range(clients)))
    else:
        import aiohttp

        conn = aiohttp.TCPConnector(limit=clients + 4)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

            async def post_aiohttp(body: bytes) -> tuple[int, float]:
                try:
                    async with session.post(url + "/v1/query", data=body, headers=headers) as r:
                        await r.read()
                        return r.status, float(r.headers.get("Retry-After", "1"))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return -1, 0.0

            await asyncio.gather(*(worker(i, post_aiohttp) for i in range(clients)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    wall = time.perf_counter() - start

    def pct(xs: list[float], p: float) -> float | None:
        if not xs:
            return None
        xs = sorted(xs)
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000

    return {
        "clients": clients,
        "ok": codes.get(200, 0),
        "rejected_503": codes.get(503, 0),
        "errors": sum(v for k, v in codes.items() if k not in (200, 503)),
        "codes": {str(k): v for k, v in codes.items()},
        "req_s": codes.get(200, 0) / duration,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "p99_all_ms": pct(all_lat, 99),
        "client": kind,
        "client_cores": round(client_cpu / wall, 2),
    }


def run_load(url: str, clients: int, duration: float, warmup: float, kind: str) -> None:
    print(json.dumps(asyncio.run(_load(url, clients, duration, warmup, kind))))


# -- orchestration ---------------------------------------------------------------------------------


def _child(args: list[str], threads: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    if threads != "auto":  # else each server applies the library's rule (runtime.threads auto)
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    return subprocess.Popen(
        [sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    prepare(args.docs)
    queries = _queries()
    pipelines = args.pipelines.split(",")
    report: dict[str, Any] = {
        "docs": args.docs,
        "duration_s": args.duration,
        "ce_duration_s": args.ce_duration,
        "threads": args.threads,
        "queue_size": QUEUE_SIZE,
        "server_threads": {},
        "embed_workers": {},
        "client": args.client,
        "backend": args.backend,
        "max_batch_size": args.max_batch_size,
        "in_process_p50_ms": {},
        "cells": [],
        "loadavg_before": os.getloadavg(),
    }
    for p in pipelines:
        report["in_process_p50_ms"][p] = in_process_p50(
            p, queries, 30 if p == "dense" else 8, args.threads
        )
        print(f"in-process retrieve p50 [{p}]: {report['in_process_p50_ms'][p]:.1f} ms", flush=True)
    for p in pipelines:
        duration = args.ce_duration if p == "ce" else args.duration
        clients = [int(x) for x in args.ce_clients.split(",")] if p == "ce" else CLIENTS
        for kind in SERVERS:
            with _server(kind, p, args.threads) as url:
                import httpx

                info = httpx.get(url + "/v1/info", timeout=10).json()
                report["server_threads"][f"{p}/{kind}"] = info["serve"]["threads"]
                report["embed_workers"][f"{p}/{kind}"] = info["serve"].get("embed_workers", 1)
                for c in clients:
                    cell = {"pipeline": p, "server": kind, **_cell(url, c, duration, args.client)}
                    report["cells"].append(cell)
                    print(json.dumps(cell), flush=True)
    if "dense" in pipelines and args.pairs:
        report["pairs"] = paired_ratio(args)
    report["loadavg_after"] = os.getloadavg()
    return report


@contextlib.contextmanager
def _server(kind: str, pipeline: str, threads: str) -> Iterator[str]:
    """One server process, ready; SIGTERM (drain) on exit."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _child(
        [*("--server", kind, "--pipeline", pipeline, "--port", str(port)), *("--threads", threads)],
        threads,
    )
    try:
        _wait_ready(url, server)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _cell(url: str, clients: int, duration: float, client: str) -> dict[str, Any]:
    """One load-generator run against ``url``, with the load average at its end."""
    load = _child(
        [
            *("--load", url, "--clients", str(clients)),
            *("--duration", str(duration), "--client", client),
        ],
        "1",
    )
    out, _ = load.communicate(timeout=duration * 10 + 120)
    return {**json.loads(out.strip().splitlines()[-1]), "loadavg": os.getloadavg()[0]}


def paired_ratio(args: argparse.Namespace, clients: int = 16) -> dict[str, Any]:
    """The headline (a)/(c) ratio from interleaved cells, both servers up at once.

    This VM's speed drifts by 2x from minute to minute (neighbours on the shared cores), so
    one (a) cell and one (c) cell a minute apart can compare two different machines. Here each
    pair runs back to back, the order alternating (a c, c a, ...), and the ratio reported is
    the median over the pairs; the idle server meanwhile only polls for a new generation.
    """
    pairs = []
    with _server("a", "dense", args.threads) as url_a, _server("c", "dense", args.threads) as url_c:
        for i in range(args.pairs):
            order = [("a", url_a), ("c", url_c)][:: 1 if i % 2 == 0 else -1]
            got = {k: _cell(u, clients, args.duration, args.client) for k, u in order}
            pair = {
                "a_req_s": got["a"]["req_s"],
                "c_req_s": got["c"]["req_s"],
                "ratio": got["a"]["req_s"] / max(got["c"]["req_s"], 1e-9),
                "loadavg": got[order[-1][0]]["loadavg"],
            }
            pairs.append(pair)
            print(json.dumps({"pair": i + 1, **pair}), flush=True)
    return {
        "clients": clients,
        "pairs": pairs,
        "median_ratio": statistics.median(p["ratio"] for p in pairs),
        "min_ratio": min(p["ratio"] for p in pairs),
        "max_ratio": max(p["ratio"] for p in pairs),
    }


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"SciFact first {report['docs']} docs, {report['duration_s']} s per cell, "
        f"torch threads per server {report.get('server_threads') or report['threads']}, "
        f"embed workers {report.get('embed_workers') or '-'}, "
        f"serve.queue_size = {report['queue_size']}, serve.max_queue_wait_ms 500; "
        f"load average before {report['loadavg_before'][0]:.1f}, after "
        f"{report['loadavg_after'][0]:.1f}.",
        "",
        "| pipeline | server | clients | req/s | p50 ms | p99 ms | 503s | client cores "
        "| load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cells"]:
        lines.append(
            f"| {c['pipeline']} | ({c['server']}) {SERVER_NAMES[c['server']]} | {c['clients']} "
            f"| {c['req_s']:.1f} | {_fmt(c['p50_ms'])} | {_fmt(c['p99_ms'])} "
            f"| {c['rejected_503']} | {c.get('client_cores', '–')} | {c['loadavg']:.1f} |"
        )
    lines.append("")
    for p, ms in report["in_process_p50_ms"].items():
        lines.append(f"- in-process `retrieve` p50 [{p}]: {ms:.1f} ms")
    for line in targets(report):
        lines.append(f"- {line}")
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[str]:
    def cell(p: str, s: str, c: int) -> dict[str, Any] | None:
        return next(
            (x for x in report["cells"] if (x["pipeline"], x["server"], x["clients"]) == (p, s, c)),
            None,
        )

    out = []
    a16, c16 = cell("dense", "a", 16), cell("dense", "c", 16)
    if a16 and c16 and c16["req_s"]:
        ratio = a16["req_s"] / c16["req_s"]
        out.append(f"dense, 16 clients, the sweep's cells: (a)/(c) throughput = {ratio:.2f}x")
    if report.get("pairs"):
        pr = report["pairs"]
        each = ", ".join(f"{x['a_req_s']:.0f}/{x['c_req_s']:.0f}" for x in pr["pairs"])
        out.append(
            f"dense, {pr['clients']} clients, {len(pr['pairs'])} interleaved pairs (a/c req/s: "
            f"{each}): (a)/(c) median {pr['median_ratio']:.2f}x, range "
            f"{pr['min_ratio']:.2f}-{pr['max_ratio']:.2f}x (target >= 3x)"
        )
    a1 = cell("dense", "a", 1)
    if a1 and a1["p50_ms"] is not None:
        base = report["in_process_p50_ms"].get("dense")
        out.append(
            f"dense, 1 client: (a) p50 {a1['p50_ms']:.1f} ms vs in-process {base:.1f} ms "
            f"+ 5 ms (target: (a) <= {base + 5:.1f})"
        )
    for p in report["in_process_p50_ms"]:
        a64 = cell(p, "a", 64)
        if a64:
            out.append(
                f"{p}, 64 clients: (a) answered {a64['ok']}, refused {a64['rejected_503']} "
                f"with 503, p99 of answered {_fmt(a64['p99_ms'])} ms"
            )
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pipelines = list(report["in_process_p50_ms"])
    fig, axes = plt.subplots(1, len(pipelines), figsize=(6 * len(pipelines), 4), squeeze=False)
    for ax, p in zip(axes[0], pipelines, strict=True):
        for s in SERVERS:
            cells = [c for c in report["cells"] if c["pipeline"] == p and c["server"] == s]
            xs = [c["clients"] for c in cells if c["p50_ms"] is not None]
            ax.plot(
                xs,
                [c["p50_ms"] for c in cells if c["p50_ms"] is not None],
                "o-",
                label=f"({s}) {SERVER_NAMES[s]} p50",
            )
            ax.plot(
                xs,
                [c["p99_ms"] for c in cells if c["p50_ms"] is not None],
                "x--",
                label=f"({s}) p99",
                alpha=0.6,
            )
        ax.axhline(report["in_process_p50_ms"][p], color="grey", lw=0.8, label="in-process p50")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("latency of answered requests (ms)")
        ax.set_title(f"{p} pipeline")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument(
        "--ce-duration",
        type=float,
        default=20.0,
        help="seconds per cell for the cross-encoder pipeline (seconds per query on a CPU)",
    )
    ap.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    ap.add_argument("--backend", default="torch", help="embedder.backend of every server")
    ap.add_argument("--max-batch-size", type=int, default=32, help="serve.max_batch_size")
    ap.add_argument("--ce-clients", default="1,4,16,64", help="client counts for the ce cells")
    ap.add_argument(
        "--threads",
        default="auto",
        help="torch threads of every server; auto: each applies the library's rule "
        "(serve with batching: the cores, up to 4, split between its embed workers; "
        "otherwise half the cores)",
    )
    ap.add_argument(
        "--pairs",
        type=int,
        default=5,
        help="interleaved (a)/(c) 16-client cell pairs for the headline ratio; 0: none",
    )
    ap.add_argument("--pipelines", default="dense,ce")
    ap.add_argument("--plot", type=Path, default=RESULTS / "serve.png")
    ap.add_argument("--server")
    ap.add_argument("--pipeline")
    ap.add_argument("--port", type=int)
    ap.add_argument("--load")
    ap.add_argument("--clients", type=int)
    args = ap.parse_args()
    # The servers and the in-process baseline read these through _config (children inherit them).
    os.environ.setdefault("GL_BENCH_BACKEND", args.backend)
    os.environ.setdefault("GL_BENCH_MAX_BATCH", str(args.max_batch_size))
    if args.server:
        run_server(args.server, args.pipeline, args.port, args.threads)
        return
    if args.load:
        run_load(args.load, args.clients, args.duration, args.warmup, args.client)
        return
    report = orchestrate(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(report, indent=2))
    plot(report, args.plot)
    print()
    print(markdown(report))
    print(f"\nwrote {RESULTS / 'serve.json'} and {args.plot}")


if __name__ == "__main__":
    main()
