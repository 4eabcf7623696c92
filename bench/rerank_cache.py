"""The rerank cache: the same queries twice through the pipeline, cache off vs on, in one run.

A MiniLM-L-6-shaped cross-encoder (the packaged all-MiniLM-L6-v2 encoder weights with a fresh
1-label head: a real model's size and score spread) reranks the dense top ``--top-k`` of the
first ``--docs`` SciFact documents for the first ``--queries`` SciFact train queries. Each query
goes through ``pipe.retrieve`` alone, as an app's request does. Four passes over the same
queries, interleaved off / on so the box's drift hits both:

1. cache off, pass 1;   2. cache on, pass 1 (cold: every pair a miss);
3. cache off, pass 2;   4. cache on, pass 2 (warm: every pair a hit).

With ``--serve``, the same four passes go over HTTP to two ``gl-retrieval serve`` servers in this
process (batching on, one client, fresh caches), one per setting, both up at once.

Reported per pass: CPU seconds per query (``time.process_time``: what the query cost the box,
whatever else runs on it), wall p50 and p90, and the cache's hits and misses; the ratios are
taken against cache-off in the same run. It also checks that every field of every result is
the same with the cache on and off. Threads are pinned (``--threads``, default 1). Writes
``bench/results/rerank_cache.json`` with the CPU model, its flags and the load average.

Usage::

    python bench/rerank_cache.py                      # 20 queries, top 20, 1,000 docs
    python bench/rerank_cache.py --queries 40 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GL_SHARED_DATA", ROOT.parent / "shared" / "data"))
if not DATA.exists():
    DATA = Path("/work/shared/data")
RESULTS = ROOT / "bench" / "results" / "rerank_cache.json"
MINILM = "packaged:all-MiniLM-L6-v2"
sys.path.insert(0, str(ROOT))


def cpu_info() -> dict[str, Any]:
    """CPU model, cores and the vector flags that matter, as the library reads them."""
    from gl_retrieval.models.backend_choice import detect_cpu

    return detect_cpu().to_dict()


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_cross_encoder(path: Path) -> Path:
    """MiniLM's encoder weights with a fresh 1-label head (seeded), saved with its tokenizer."""
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    from gl_retrieval.models import resolve_model_path
    from gl_retrieval.models.stand_in import TOKENIZER_FILES

    src = Path(resolve_model_path(MINILM))
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(str(src), num_labels=1)
    model.save_pretrained(str(path))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            (path / name).write_bytes((src / name).read_bytes())
    return path


def scifact_queries(n: int) -> list[str]:
    from gl_retrieval.eval.metrics import load_beir

    ds = load_beir(DATA / "scifact", split="train")
    return [ds.queries[q] for q in list(ds.queries)[:n]]


def config(work: Path, model: Path, *, top_k: int, threads: int, cache_mb: float) -> Any:
    from gl_retrieval.config import parse_config

    return parse_config(
        {
            "embedder": {"provider": "huggingface", "model": MINILM, "backend": "torch"},
            "retriever": {"top_k": top_k, "mode": "dense"},
            "storage": {"persist_dir": str(work / "index")},
            "sources": [{"path": str(work / "corpus.jsonl")}],
            "reranker": {
                "model": str(model),
                "top_n": 10,
                "backend": "torch",
                "device": "cpu",
                "cache_mb": cache_mb,
            },
            "runtime": {"threads": threads},
        }
    )


def one_pass(pipe: Any, queries: list[str]) -> tuple[dict[str, Any], list[Any]]:
    cpu, wall, results = [], [], []
    before = pipe.reranker.cache_stats()
    for q in queries:
        t0, c0 = time.perf_counter(), time.process_time()
        hits = pipe.retrieve(q)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
        results.append([h.to_dict() for h in hits])
    after = pipe.reranker.cache_stats()
    wall_ms = sorted(w * 1000 for w in wall)
    row = {
        "cpu_s_per_query": round(statistics.fmean(cpu), 4),
        "wall_p50_ms": round(statistics.median(wall_ms), 1),
        "wall_p90_ms": round(wall_ms[min(len(wall_ms) - 1, int(0.9 * len(wall_ms)))], 1),
        "hits": after.hits - before.hits,
        "misses": after.misses - before.misses,
        "load": load(),
    }
    return row, results


def serve_passes(
    pipes: dict[str, Any], queries: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
    """The four passes over HTTP, one server per pipeline (``off`` / ``on``), both up; the
    rows and each pass's JSON results."""
    import socket
    import threading

    import httpx

    from gl_retrieval.serve.server import create_server

    servers, urls = {}, {}
    for name, pipe in pipes.items():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = create_server(pipe.config, port=port, pipeline=pipe, log_level="warning")
        threading.Thread(target=server.run, daemon=True).start()
        servers[name], urls[name] = server, f"http://127.0.0.1:{port}"
    rows: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[Any]] = {}
    try:
        with httpx.Client(timeout=600) as client:
            for url in urls.values():
                for _ in range(600):
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(url + "/readyz").status_code == 200:
                            break
                    time.sleep(0.1)
            for label, name in (
                ("serve: off, pass 1", "off"),
                ("serve: on, pass 1 (cold)", "on"),
                ("serve: off, pass 2", "off"),
                ("serve: on, pass 2 (warm)", "on"),
            ):
                before = pipes[name].reranker.cache_stats()
                cpu, wall, answers[label] = [], [], []
                for q in queries:
                    t0, c0 = time.perf_counter(), time.process_time()
                    r = client.post(urls[name] + "/v1/query", json={"query": q})
                    r.raise_for_status()
                    answers[label].append(r.json()["results"])
                    cpu.append(time.process_time() - c0)
                    wall.append(time.perf_counter() - t0)
                after = pipes[name].reranker.cache_stats()
                wall_ms = sorted(w * 1000 for w in wall)
                rows[label] = {
                    "cpu_s_per_query": round(statistics.fmean(cpu), 4),
                    "wall_p50_ms": round(statistics.median(wall_ms), 1),
                    "wall_p90_ms": round(
                        wall_ms[min(len(wall_ms) - 1, int(0.9 * len(wall_ms)))], 1
                    ),
                    "hits": after.hits - before.hits,
                    "misses": after.misses - before.misses,
                    "load": load(),
                }
                print(label, rows[label], flush=True)
    finally:
        for server in servers.values():
            server.should_exit = True
    return rows, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--serve", action="store_true", help="also the four passes through serve")
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from gl_retrieval import RetrievalPipeline
    from gl_retrieval.retrieval.score_cache import ScoreCache

    work = args.work or Path(tempfile.mkdtemp(prefix="gl-rerank-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    queries = scifact_queries(args.queries)
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        lines = [next(f) for _ in range(args.docs)]
    (work / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    model = make_cross_encoder(work / "ce-minilm-fresh-head")

    info = {"cpu": cpu_info(), "load_start": load(), "args": {**vars(args), "work": str(work)}}
    print(f"CPU: {info['cpu']['model']} {info['cpu']['flags']}; load {info['load_start']}")
    off = RetrievalPipeline(config(work, model, top_k=args.top_k, threads=args.threads, cache_mb=0))
    t0 = time.perf_counter()
    off.index()
    print(f"indexed {args.docs} docs in {time.perf_counter() - t0:.0f}s")
    on = RetrievalPipeline(
        config(work, model, top_k=args.top_k, threads=args.threads, cache_mb=16),
        embedder=off.embedder,
    )
    for p in (off, on):
        p.warmup()
        p.retrieve("warm-up query about cells")  # its pairs never recur
    on_stats0 = on.reranker.cache_stats()  # type: ignore[union-attr]
    print(f"warm-up cached {on_stats0.entries} pairs")

    rows: dict[str, dict[str, Any]] = {}
    results: dict[str, list[Any]] = {}
    for name, pipe in (
        ("off, pass 1", off),
        ("on, pass 1 (cold)", on),
        ("off, pass 2", off),
        ("on, pass 2 (warm)", on),
    ):
        rows[name], results[name] = one_pass(pipe, queries)
        print(name, rows[name], flush=True)

    # What the cache adds to a miss: keying and looking up one query's pairs (no model).
    rr = on.reranker
    pairs = on.stages().pairs(on.request([queries[0]]), [on.retrieve(queries[0], top_n=args.top_k)])
    probe = ScoreCache(max_entries=len(pairs))
    reps = 200
    c0 = time.process_time()
    for _ in range(reps):
        probe.get_many(probe.keys(rr.scorer.identity, pairs))  # type: ignore[union-attr]
    lookup_us = (time.process_time() - c0) / reps * 1e6
    print(f"keying + looking up {len(pairs)} pairs: {lookup_us:.0f} us CPU")

    if args.serve:
        fresh = {
            name: RetrievalPipeline(
                config(work, model, top_k=args.top_k, threads=args.threads, cache_mb=mb),
                embedder=off.embedder,
            )
            for name, mb in (("off", 0), ("on", 16))
        }
        serve_rows, answers = serve_passes(fresh, queries)
        rows.update(serve_rows)
        serve_identical = all(a == answers["serve: off, pass 1"] for a in answers.values())

    for prefix in ("", "serve: "):
        base = rows.get(f"{prefix}off, pass 2")
        for name, row in rows.items():
            if base is None or name.startswith("serve: ") != bool(prefix):
                continue
            row["cpu_vs_off"] = round(row["cpu_s_per_query"] / base["cpu_s_per_query"], 4)
            row["wall_p50_vs_off"] = round(row["wall_p50_ms"] / base["wall_p50_ms"], 4)
    identical = all(results[k] == results["off, pass 1"] for k in results)
    if args.serve:
        identical = identical and serve_identical
    out = {
        **info,
        "rows": rows,
        "identical_results_on_off": identical,
        "lookup_us_per_query": round(lookup_us, 1),
        "cache_stats_end": on.reranker.cache_stats().to_dict(),  # type: ignore[union-attr]
        "load_end": load(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")

    print(
        f"\n{args.queries} SciFact queries x top {args.top_k} pairs, MiniLM-L-6-sized "
        f"cross-encoder, torch fp32, {args.threads} thread(s); {info['cpu']['model']} "
        f"({', '.join(info['cpu']['flags'])}); load {info['load_start']} -> {out['load_end']}\n"
    )
    print("| pass | CPU s / query | vs cache off | wall p50 ms | p90 ms | hits | misses |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['cpu_s_per_query']:.4f} | {r['cpu_vs_off']:.3f}x | "
            f"{r['wall_p50_ms']:.1f} | {r['wall_p90_ms']:.1f} | {r['hits']} | {r['misses']} |"
        )
    print(f"\nresults identical with the cache on and off (every field, per surface): {identical}")
    print(
        f"the cache's own cost on a miss (keys + lookup of {len(pairs)} pairs): {lookup_us:.0f} us"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
