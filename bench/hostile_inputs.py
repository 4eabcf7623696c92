"""Hostile config inputs: `gl-retrieval validate` on main (or any checkout) vs this tree.

    PYTHONPATH=. python bench/hostile_inputs.py --baseline /work/main

Each input runs in a fresh process per checkout, with a wall-time limit; the table gives wall
time, peak RSS (from wait4) and the exit code, and the JSON goes to bench/results/.

    PYTHONPATH=. python bench/hostile_inputs.py --ingest 2 20 200 --baseline /tmp/wt

indexes one text file of each size (MB, made-up words: the tokenizer's worst case) with the
packaged MiniLM's real tokenizer and a stand-in for its forward pass (the memory under test is
the ingest path's, not the model's), and reports peak RSS per checkout, the load average and
the CPU model. Each run is capped at ``--max-gb`` of address space and ``--limit-s`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def make_inputs(tmp: Path) -> dict[str, Path]:
    out = {}
    out["billion-laughs (1 KB)"] = tmp / "laughs.yaml"
    out["billion-laughs (1 KB)"].write_text(laughs())
    out["300 MB config (sparse)"] = tmp / "huge.yaml"
    with out["300 MB config (sparse)"].open("wb") as f:
        f.truncate(300 * 1024 * 1024)
    out["'[' x 100,000"] = tmp / "flow.yaml"
    out["'[' x 100,000"].write_text("a: " + "[" * 100_000 + "\n")
    out["60,000 keys (0.5 MB)"] = tmp / "keys.yaml"
    out["60,000 keys (0.5 MB)"].write_text("".join(f"k{i}: {i}\n" for i in range(60_000)))
    out["deep block nesting"] = tmp / "deep.yaml"
    out["deep block nesting"].write_text("a:\n" + "".join("  " * i + "k:\n" for i in range(1, 900)))
    out["ok config"] = tmp / "ok.yaml"
    out["ok config"].write_text("embedder: {model: 'packaged:all-MiniLM-L6-v2'}\n")
    return out


def run(checkout: Path, config: Path, limit_s: float) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    # -c, not -m, and run from the config's folder: the current directory must not shadow
    # the checkout on sys.path.
    code = "import sys; from gl_retrieval.cli import app; sys.argv[0] = 'gl-retrieval'; app()"
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-c", code]
    cmd += ["validate", str(config)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        timed_out = True
    seconds = time.perf_counter() - t0
    lines = err.decode("utf-8", "replace").strip().splitlines()
    rss = [int(x.split()[1]) for x in lines if x.startswith("MAXRSS_KB ")]
    lines = [x for x in lines if not x.startswith(("MAXRSS_KB ", "Command "))]
    return {
        "seconds": round(seconds, 2),
        "rss_mb": round(rss[0] / 1024, 1) if rss else None,
        "exit": None if timed_out else proc.returncode,
        "timed_out": timed_out,
        "last_line": (lines[-1][:160] if lines else ""),
    }


_INGEST = r"""
import json, os, random, resource, sys, time
from pathlib import Path
import numpy as np
from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder
def encode(self, texts, *, show_progress):
    out = np.zeros((len(texts), 384), np.float32); out[:, 0] = 1.0; return out
SentenceTransformerEmbedder._encode = encode
from gl_retrieval import RetrievalPipeline
src, work = Path(sys.argv[1]), Path(sys.argv[2])
cfg = {"embedder": {"model": "packaged:all-MiniLM-L6-v2", "backend": "torch"},
       "storage": {"persist_dir": str(work)},
       "sources": [{"path": str(src)}], "chunking": {"chunk_size": 254, "chunk_overlap": 32}}
pipe = RetrievalPipeline.from_config(cfg)
pipe.embedder.warmup(); pipe.embedder.dimension
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter(); s = pipe.index(rebuild=True)
print("RESULT", json.dumps({"base_mb": round(base), "chunks": s.chunks_embedded,
                            "index_s": round(time.perf_counter() - t, 1)}))
"""


def make_text_file(path: Path, mb: float) -> None:
    rnd = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rnd.choices(letters, k=rnd.randint(2, 9))) for _ in range(5000)]
    target, size = int(mb * 1024 * 1024), 0
    with path.open("w") as out:
        while size < target:
            para = (
                " ".join(
                    " ".join(rnd.choices(words, k=rnd.randint(6, 20))).capitalize() + "."
                    for _ in range(rnd.randint(2, 6))
                )
                + "\n\n"
            )
            out.write(para)
            size += len(para)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run_ingest(checkout: Path, src: Path, work: Path, limit_s: float, max_gb: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _INGEST, str(src), str(work)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=checkout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # Watch the RSS and stop the run at the cap (the machine is shared).
    peak_kb, capped, timed_out = 0, False, False
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        capped = peak_kb > max_gb * 2**20
        timed_out = time.perf_counter() - t0 > limit_s
        if capped or timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    out, _ = proc.communicate()
    rss = [peak_kb]
    res = [x for x in out.decode().splitlines() if x.startswith("RESULT ")]
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(rss[0] / 1024) if rss else None,
        "exit": None if timed_out else proc.returncode,
        "timed_out": timed_out,
        "capped": capped,
        **(json.loads(res[0].split(" ", 1)[1]) if res else {}),
    }


def main_ingest(sizes: list[float], baseline: Path, limit_s: float, max_gb: float) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for mb in sizes:
            src = Path(d) / f"src-{mb}"
            src.mkdir()
            make_text_file(src / "big.txt", mb)
            row: dict[str, object] = {"mb": mb}
            for label, checkout in (("baseline", baseline), ("this", ROOT)):
                work = Path(d) / f"idx-{mb}-{label}"
                row[label] = run_ingest(checkout, src, work, limit_s, max_gb)
                print(mb, label, row[label], flush=True)
            rows.append(row)
            shutil.rmtree(src)
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; CPU: {cpu_model()}")
    print(f"| file | {baseline} | this branch |")
    print("|---|---|---|")
    for row in rows:
        cells = []
        for label in ("baseline", "this"):
            r = row[label]
            assert isinstance(r, dict)
            end = "timeout" if r["timed_out"] else f"exit {r['exit']}"
            if r["capped"]:
                end = f"stopped at the {max_gb:g} GB cap"
            chunks = r.get("chunks", "?")
            peak = r["peak_rss_mb"]
            cells.append(f"{peak} MB peak RSS, {chunks} chunks, {r['seconds']} s, {end}")
        print(f"| {row['mb']} MB | {cells[0]} | {cells[1]} |")
    out = ROOT / "bench" / "results" / "hostile_ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_average": load, "cpu": cpu_model(), "rows": rows}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, default=Path("/work/main"))
    ap.add_argument("--limit-s", type=float, default=30.0)
    ap.add_argument("--ingest", type=float, nargs="*", help="file sizes in MB: the ingest bench")
    ap.add_argument("--max-gb", type=float, default=4.0, help="address-space cap per ingest run")
    args = ap.parse_args()
    if args.ingest:
        main_ingest(args.ingest, args.baseline, max(args.limit_s, 600.0), args.max_gb)
        return

    results = []
    with tempfile.TemporaryDirectory() as d:
        inputs = make_inputs(Path(d))
        for name, path in inputs.items():
            row: dict[str, object] = {"input": name}
            for label, checkout in (("baseline", args.baseline), ("this", ROOT)):
                row[label] = run(checkout, path, args.limit_s)
            results.append(row)
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"| input | {args.baseline} | this branch |")
    print("|---|---|---|")
    for row in results:
        cells = []
        for label in ("baseline", "this"):
            r = row[label]
            assert isinstance(r, dict)
            code = "timeout" if r["timed_out"] else f"exit {r['exit']}"
            rss = "? MB (killed)" if r["rss_mb"] is None else f"{r['rss_mb']} MB"
            cells.append(f"{r['seconds']} s, {rss}, {code}")
        print(f"| {row['input']} | {cells[0]} | {cells[1]} |")
    for row in results:
        for label in ("baseline", "this"):
            r = row[label]
            assert isinstance(r, dict)
            print(f"  {row['input']} [{label}]: {r['last_line']}")
    out = ROOT / "bench" / "results" / "hostile_inputs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_average": load, "rows": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
