"""Run `gl-retrieval eval` for dense, BM25, RRF hybrid and tuned hybrid on the shared datasets.

Usage (from the project root)::

    python bench/benchmark_modes.py [--data ../shared/data] [--plot docs/benchmarks.png]

Uses ``bench/configs/<name>.yaml`` (packaged all-MiniLM-L6-v2, library defaults, index under
``bench/results/index/``, shared with ``bench/tune_hybrid.py``), evaluates every mode on one
index per dataset, prints the markdown table for docs/benchmarks.md, writes each report under
``bench/results/benchmarks/<name>/`` and the combined plot to ``--plot``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from gl_retrieval.eval.plot import plot_reports  # noqa: E402
from gl_retrieval.eval.runner import EvalReport, evaluate_pipeline, write_report  # noqa: E402

DATASETS = {"scifact": "train", "cranfield": "test", "cisi": "test"}
MODES = "dense,bm25,hybrid:rrf,hybrid:convex"
LABELS = {
    "dense": "dense",
    "bm25": "BM25",
    "hybrid:rrf": "hybrid RRF (k=60)",
    "hybrid:convex": "hybrid tuned (convex)",
}


def table(reports: Sequence[EvalReport]) -> str:
    """One markdown table: a row per dataset and run, the four metrics and latency."""
    lines = [
        "| dataset | run | nDCG@10 | MRR@10 | Recall@10 | Recall@100 | p50 ms | p95 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rep in reports:
        for r in rep.runs:
            m, lat = r.metrics, r.latency_ms
            lines.append(
                f"| {rep.dataset} | {LABELS.get(r.name, r.name)} | {m['nDCG@10']:.4f} | "
                f"{m['MRR@10']:.4f} | {m['Recall@10']:.4f} | {m['Recall@100']:.4f} | "
                f"{lat['p50']:.1f} | {lat['p95']:.1f} |"
            )
    return "\n".join(lines)


def latency_table(names: Sequence[str], data: Path, *, n: int = 100) -> str:
    """p50/p95 of the full single-query path per dataset and mode, as `eval` measures it."""
    from gl_retrieval.eval.metrics import load_beir
    from gl_retrieval.eval.runner import _time_single_queries, parse_modes
    from gl_retrieval.pipeline import RetrievalPipeline

    lines = ["| dataset | run | p50 ms | p95 ms |", "|---|---|---:|---:|"]
    for name in names:
        pipe = RetrievalPipeline.from_config(ROOT / "bench" / "configs" / f"{name}.yaml").warmup()
        texts = list(load_beir(data / name, split=DATASETS[name], gains="auto").queries.values())
        for mode, cfg in parse_modes(MODES, pipe.config.retriever):
            stages = pipe.stages(retriever=cfg)
            embed = pipe.embedder.embed_queries
            _time_single_queries(stages, embed, texts[:1], k=100)  # warm caches (BM25, nodes)
            ms, _ = _time_single_queries(stages, embed, texts[:n], k=100)
            p50, p95 = np.percentile(ms, [50, 95])
            lines.append(f"| {name} | {LABELS[mode]} | {p50:.1f} | {p95:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "benchmarks")
    ap.add_argument(
        "--plot", type=Path, default=None, help="combined PNG, e.g. docs/benchmarks.png"
    )
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (1 avoids thread contention on a busy shared machine)",
    )
    ap.add_argument(
        "--latency-only",
        action="store_true",
        help="only time the single-query path of each mode (first 100 queries)",
    )
    args = ap.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if args.latency_only:
        print(latency_table(names, args.data))
        return 0

    reports = []
    for name in names:
        report = evaluate_pipeline(
            ROOT / "bench" / "configs" / f"{name}.yaml",
            args.data / name,
            split=DATASETS[name],
            modes=MODES,
            progress=lambda msg, n=name: print(f"{n}: {msg}", file=sys.stderr, flush=True),
        )
        write_report(report, args.out / name)
        reports.append(report)
    print(table(reports))
    for rep in reports:
        print(f"\n{rep.dataset}: gains: {rep.gains}. " + " ".join(rep.notes))
    if args.plot is not None:
        print(f"wrote {plot_reports(reports, args.plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
