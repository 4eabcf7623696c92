"""Hostile config inputs: `gl-retrieval validate` on main (or any checkout) vs this tree.

    PYTHONPATH=. python bench/hostile_inputs.py --baseline /work/main

Each input runs in a fresh process per checkout, with a wall-time limit; the table gives wall
time, peak RSS (from wait4) and the exit code, and the JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", type=Path, default=Path("/work/main"))
    ap.add_argument("--limit-s", type=float, default=30.0)
    args = ap.parse_args()

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
