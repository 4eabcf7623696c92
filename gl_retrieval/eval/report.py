"""The result types of an evaluation run: plain data that the runner fills and the plot reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvalReport", "RunResult"]


@dataclass
class RunResult:
    """The scores of one retriever mode at one stage (``retrieval`` or ``rerank``).

    Attributes:
        latency_ms: p50/p95 of the path up to and including this stage (for ``rerank``: query
            embedding, search and rerank).
        stage_latency_ms: p50/p95 of this stage alone (``retrieval``: query embedding and
            search; ``rerank``: the cross-encoder and the ordering).
        stage_cpu_ms: Process CPU milliseconds per query of this stage alone: mean, p50, p95.
    """

    name: str
    mode: str
    stage: str
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    recall_curve: dict[int, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    stage_latency_ms: dict[str, float] = field(default_factory=dict)
    stage_cpu_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "stage": self.stage,
            "settings": self.settings,
            "metrics": self.metrics,
            "latency_ms": self.latency_ms,
            "stage_latency_ms": self.stage_latency_ms,
            "stage_cpu_ms": self.stage_cpu_ms,
            "recall_curve": {str(k): v for k, v in self.recall_curve.items()},
        }


@dataclass
class EvalReport:
    """What :func:`evaluate_pipeline` measured. ``primary`` is the first mode's final stage."""

    dataset: str
    split: str
    queries: int
    gains: str
    top_k: int
    runs: list[RunResult]
    notes: list[str] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> RunResult:
        """The run the top-level ``metrics`` report: the first mode, after reranking if any."""
        first_mode = self.runs[0].name.split(" + ")[0]
        same = [r for r in self.runs if r.name.split(" + ")[0] == first_mode]
        return same[-1]

    def to_dict(self) -> dict[str, Any]:
        """The `eval --json` shape: the primary run at the top, every run under ``runs``."""
        p = self.primary
        return {
            "dataset": self.dataset,
            "split": self.split,
            "queries": self.queries,
            "metrics": p.metrics,
            "latency_ms": p.latency_ms,
            "mode": p.name,
            "top_k": self.top_k,
            "gains": self.gains,
            "runs": [r.to_dict() for r in self.runs],
            "index": self.index,
            "notes": self.notes,
        }

    def markdown(self) -> str:
        """A markdown table with a row per mode and stage (metrics, latency, this stage's
        latency and CPU per query), then, when a reranker ran, the two stages side by side."""
        metric_names = list(self.runs[0].metrics) if self.runs else []
        head = ["run", *metric_names, "p50 ms", "p95 ms", "stage p50 ms", "stage CPU ms/q"]
        lines = [
            f"### {self.dataset} ({self.split}, {self.queries} queries, top_k={self.top_k})",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        for r in self.runs:
            cells = [r.name, *(f"{r.metrics[m]:.4f}" for m in metric_names)]
            cells += [f"{r.latency_ms['p50']:.1f}", f"{r.latency_ms['p95']:.1f}"]
            cells += [_ms(r.stage_latency_ms, "p50"), _ms(r.stage_cpu_ms, "mean")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += self._side_by_side(metric_names)
        lines += ["", f"Gains: {self.gains}."] + [f"{n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def stage_pairs(self) -> list[tuple[RunResult, RunResult]]:
        """``(first stage, + rerank)`` run pairs of the same mode, in report order."""
        first = {r.name: r for r in self.runs if r.stage == "retrieval"}
        return [
            (first[r.name.split(" + ")[0]], r)
            for r in self.runs
            if r.stage == "rerank" and r.name.split(" + ")[0] in first
        ]

    def _side_by_side(self, metric_names: list[str]) -> list[str]:
        pairs = self.stage_pairs()
        if not pairs:
            return []
        head = ["mode"]
        for m in metric_names:
            head += [f"{m} first", f"{m} reranked"]
        head += [
            "first stage CPU ms/q",
            "rerank CPU ms/q",
            "first stage p50 ms",
            "rerank p50 ms",
        ]
        lines = [
            "",
            "Stages side by side (CPU: process CPU time per query of each stage alone):",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        for first, reranked in pairs:
            cells = [first.name]
            for m in metric_names:
                delta = reranked.metrics[m] - first.metrics[m]
                cells += [f"{first.metrics[m]:.4f}", f"{reranked.metrics[m]:.4f} ({delta:+.4f})"]
            cells += [
                _ms(first.stage_cpu_ms, "mean"),
                _ms(reranked.stage_cpu_ms, "mean"),
                _ms(first.stage_latency_ms, "p50"),
                _ms(reranked.stage_latency_ms, "p50"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return lines


def _ms(values: dict[str, float], key: str) -> str:
    return f"{values[key]:.1f}" if key in values else "-"
