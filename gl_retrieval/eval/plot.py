"""Plots of evaluation reports: nDCG@10 bars, quality against CPU cost per query (each mode's
first stage and its reranked run side by side), and recall@k curves, one PNG (matplotlib, Agg).

Uses matplotlib's object API (``Figure`` + the Agg canvas), so it never touches pyplot's global
state or the process's backend setting.

Example:
    >>> from gl_retrieval.eval.plot import plot_reports
    >>> plot_reports([report], "out/report.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gl_retrieval._deps import require

if TYPE_CHECKING:
    from gl_retrieval.eval.report import EvalReport, RunResult

__all__ = ["plot_reports"]


def plot_reports(
    reports: Sequence[EvalReport], path: str | os.PathLike[str], *, metric: str = "nDCG@10"
) -> Path:
    """Draw ``metric`` per run (grouped by dataset), ``metric`` against the CPU milliseconds per
    query up to each stage (an arrow from a mode's first stage to its reranked run), and each
    dataset's recall@k curves.

    Args:
        reports: One report per dataset; their runs should share names to group well.
        path: Where to write the PNG.
        metric: The metric of the bar chart.

    Returns:
        The path written.

    Raises:
        MissingDependencyError: matplotlib is not installed (``pip install 'gl-retrieval[plot]'``).
    """
    require("matplotlib", extra="plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r.name for rep in reports for r in rep.runs))
    n_cols = 2 + len(reports)
    fig = Figure(figsize=(4.2 * n_cols, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_cols, squeeze=False)[0]

    bars = axes[0]
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs, ys = [], []
        for i, rep in enumerate(reports):
            run = next((r for r in rep.runs if r.name == name), None)
            if run is not None and metric in run.metrics:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(run.metrics[metric])
        drawn = bars.bar(xs, ys, width=width, label=name)
        bars.bar_label(drawn, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    bars.set_xticks(range(len(reports)), [rep.dataset for rep in reports])
    bars.set_ylabel(metric)
    bars.set_title(f"{metric} by retriever")
    top = max((r.metrics.get(metric, 0.0) for rep in reports for r in rep.runs), default=1.0)
    bars.set_ylim(0, min(1.0, top * 1.25) or 1.0)
    bars.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2)

    _cost_panel(axes[1], reports, metric)

    for ax, rep in zip(axes[2:], reports, strict=True):
        for run in rep.runs:
            ks = sorted(run.recall_curve)
            ax.plot(ks, [run.recall_curve[k] for k in ks], marker="o", markersize=3, label=run.name)
        ax.set_xscale("log")
        ax.set_xlabel("k (documents)")
        ax.set_ylabel("recall@k")
        ax.set_ylim(0, 1)
        ax.set_title(f"{rep.dataset}: recall@k")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def _cost_panel(ax: Any, reports: Sequence[EvalReport], metric: str) -> None:
    """``metric`` against process CPU ms per query up to each stage; first stage -> reranked."""
    markers = "osD^v<>"
    for i, rep in enumerate(reports):
        for r in rep.runs:
            if "mean" not in r.stage_cpu_ms or metric not in r.metrics:
                continue
            x = _cumulative_cpu(rep, r)
            ax.scatter([x], [r.metrics[metric]], marker=markers[i % len(markers)], s=18)
            ax.annotate(f"{r.name} ({rep.dataset})", (x, r.metrics[metric]), fontsize=6)
        for first, reranked in rep.stage_pairs():
            if metric in first.metrics and "mean" in reranked.stage_cpu_ms:
                ax.annotate(
                    "",
                    xy=(_cumulative_cpu(rep, reranked), reranked.metrics[metric]),
                    xytext=(_cumulative_cpu(rep, first), first.metrics[metric]),
                    arrowprops={"arrowstyle": "->", "alpha": 0.5},
                )
    ax.set_xscale("log")
    ax.set_xlabel("CPU ms per query (process time, up to the stage)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs cost: first stage -> rerank")
    ax.grid(True, alpha=0.3)


def _cumulative_cpu(rep: EvalReport, run: RunResult) -> float:
    """CPU ms per query of ``run``'s stage plus, for a rerank run, its first stage's."""
    total = run.stage_cpu_ms["mean"]
    if run.stage == "rerank":
        first = next((f for f, r in rep.stage_pairs() if r is run), None)
        if first is not None and "mean" in first.stage_cpu_ms:
            total += first.stage_cpu_ms["mean"]
    return max(total, 1e-3)  # a log axis
