"""Evaluation: IR metrics, the BEIR runner over a pipeline, and report plots.

Takes a BEIR-layout dataset and a pipeline (or its config); hands on an :class:`EvalReport`
(nDCG@10, MRR@10, recall@k and latency per retrieval mode) and its markdown / JSON / PNG forms.
"""

from __future__ import annotations

from gl_retrieval.eval.metrics import evaluate, load_beir
from gl_retrieval.eval.report import EvalReport, RunResult
from gl_retrieval.eval.runner import evaluate_pipeline, parse_modes, write_report

__all__ = [
    "EvalReport",
    "RunResult",
    "evaluate",
    "evaluate_pipeline",
    "load_beir",
    "parse_modes",
    "write_report",
]
