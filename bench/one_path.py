"""What one path cost or bought: `serve` and in-process retrieval, before and after, in one run.

The "before" is another revision of this repository (default: the commit before the one-path
change, 48a4e38), checked out into ``bench/results/before-<rev>`` with ``git worktree``; the
"after" is this working tree. Both run ``bench/serve.py``'s own server (``--server a``: serve
with batching, the dense pipeline on the first ``--docs`` SciFact documents) and its load
generator, each version on an index it built itself. The cells are interleaved (before, after,
after, before, ...) with both servers up, so the VM's drift hits both alike; the ratio reported
is after / before, the median over the pairs. In-process ``pipe.retrieve`` p50 is measured the
same way.

Usage::

    python bench/one_path.py --docs 1000 --duration 3 --pairs 4

Writes ``bench/results/one_path.json`` and prints a markdown table with the CPU model and flags
and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED = Path(os.environ.get("GL_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "bench"))

import serve as serve_bench  # noqa: E402  (bench/serve.py: its load generator and cells)


def cpu_info() -> dict[str, Any]:
    """CPU model, cores and the vector flags that matter, as the library reads them."""
    from gl_retrieval.models.backend_choice import detect_cpu

    return detect_cpu().to_dict()


def worktree(rev: str) -> Path:
    """A checkout of ``rev`` (made once) beside the results."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    path = RESULTS / f"before-{sha}"
    if not (path / "bench" / "serve.py").exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha], check=True
        )
    return path


def _env(tree: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(tree),
        "GL_SHARED_DATA": str(SHARED),
        "TOKENIZERS_PARALLELISM": "false",
    }


def _call(tree: Path, code: str) -> str:
    """Run ``code`` with ``tree``'s bench/serve.py loaded as ``m`` and its gl_retrieval first."""
    prog = (
        "import runpy, sys; sys.argv = ['serve.py']; "
        f"m = runpy.run_path({str(tree / 'bench' / 'serve.py')!r}); {code}"
    )
    out = subprocess.run(
        [sys.executable, "-c", prog],
        env=_env(tree),
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


@contextlib.contextmanager
def server(tree: Path) -> Iterator[str]:
    port = serve_bench._free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--server", "a", "--pipeline", "dense", "--port", str(port), "--threads", "auto"]
    proc = subprocess.Popen(
        [sys.executable, str(tree / "bench" / "serve.py"), *args],
        env=_env(tree),
        cwd=tree,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        serve_bench._wait_ready(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="48a4e38", help="the revision to compare against")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--clients", default="1,16")
    args = ap.parse_args()
    trees = {"before": worktree(args.before), "after": ROOT}
    report: dict[str, Any] = {
        "before_rev": args.before,
        "cpu": cpu_info(),
        "docs": args.docs,
        "duration_s": args.duration,
        "loadavg_start": os.getloadavg(),
        "where": {},
        "in_process_p50_ms": {"before": [], "after": []},
        "cells": [],
    }
    for name, tree in trees.items():
        where = _call(tree, "import gl_retrieval; print(gl_retrieval.__file__)").strip()
        report["where"][name] = where
        if not where.startswith(str(tree)):
            raise SystemExit(f"{name}: gl_retrieval came from {where}, not {tree}")
        _call(tree, f"m['prepare']({args.docs})")
    for i in range(args.pairs):
        for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
            p50 = float(
                _call(
                    trees[name], "print(m['in_process_p50']('dense', m['_queries'](), 30, 'auto'))"
                )
            )
            report["in_process_p50_ms"][name].append(p50)
    with server(trees["before"]) as url_before, server(trees["after"]) as url_after:
        urls = {"before": url_before, "after": url_after}
        for clients in (int(c) for c in args.clients.split(",")):
            for i in range(args.pairs):
                order = ("before", "after") if i % 2 == 0 else ("after", "before")
                got = {
                    n: serve_bench._cell(urls[n], clients, args.duration, "aiohttp") for n in order
                }
                cell = {
                    "clients": clients,
                    **{f"{n}_{k}": got[n][k] for n in got for k in ("req_s", "p50_ms", "p99_ms")},
                    "ratio": got["after"]["req_s"] / max(got["before"]["req_s"], 1e-9),
                    "loadavg": os.getloadavg()[0],
                }
                report["cells"].append(cell)
                print(json.dumps(cell), flush=True)
    report["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "one_path.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    cpu = report["cpu"]
    lines = [
        f"CPU: {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['flags']) or 'no AVX2'}); "
        f"load average {report['loadavg_start'][0]:.1f} at the start, "
        f"{report['loadavg_end'][0]:.1f} at the end; before = {report['before_rev']}.",
        "",
        "| measure | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]
    ip = report["in_process_p50_ms"]
    b, a = statistics.median(ip["before"]), statistics.median(ip["after"])
    lines.append(f"| in-process `retrieve` p50 (ms, median) | {b:.1f} | {a:.1f} | {a / b:.2f}x |")
    for clients in sorted({c["clients"] for c in report["cells"]}):
        cells = [c for c in report["cells"] if c["clients"] == clients]
        for key, label in (("req_s", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")):
            b = statistics.median(c[f"before_{key}"] for c in cells)
            a = statistics.median(c[f"after_{key}"] for c in cells)
            lines.append(
                f"| serve, {clients} clients, {label} (median) | {b:.1f} | {a:.1f} | {a / b:.2f}x |"
            )
        ratios = sorted(c["ratio"] for c in cells)
        lines.append(
            f"| serve, {clients} clients, req/s ratio per pair | | | "
            f"median {statistics.median(ratios):.2f}x ({ratios[0]:.2f}–{ratios[-1]:.2f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
