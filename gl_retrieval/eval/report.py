"""The result types of an evaluation run: plain data that the runner fills and the plot reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvalReport", "RunResult"]


@dataclass
class RunResult:
    """The scores of one retriever mode at one stage (``retrieval`` or ``rerank``)."""

    name: str
    mode: str
    stage: str
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    recall_curve: dict[int, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "stage": self.stage,
            "settings": self.settings,
            "metrics": self.metrics,
            "latency_ms": self.latency_ms,
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
        """One markdown table: a row per mode and stage, metrics and latency as columns."""
        metric_names = list(self.runs[0].metrics) if self.runs else []
        head = ["run", *metric_names, "p50 ms", "p95 ms"]
        lines = [
            f"### {self.dataset} ({self.split}, {self.queries} queries, top_k={self.top_k})",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        for r in self.runs:
            cells = [r.name, *(f"{r.metrics[m]:.4f}" for m in metric_names)]
            cells += [f"{r.latency_ms['p50']:.1f}", f"{r.latency_ms['p95']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Gains: {self.gains}."] + [f"{n}" for n in self.notes]
        return "\n".join(lines) + "\n"
