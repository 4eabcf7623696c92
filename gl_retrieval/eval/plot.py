"""Plots of evaluation reports: nDCG@10 bars and recall@k curves, one PNG (matplotlib, Agg).

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
from typing import TYPE_CHECKING

from gl_retrieval._deps import require

if TYPE_CHECKING:
    from gl_retrieval.eval.report import EvalReport

__all__ = ["plot_reports"]


def plot_reports(
    reports: Sequence[EvalReport], path: str | os.PathLike[str], *, metric: str = "nDCG@10"
) -> Path:
    """Draw ``metric`` per run (grouped by dataset) and each dataset's recall@k curves.

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
    n_cols = 1 + len(reports)
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

    for ax, rep in zip(axes[1:], reports, strict=True):
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
