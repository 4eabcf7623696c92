"""Fine-tuning: adapt the embedder (or the reranker) to an app's own corpus.

Takes a config whose index exists, and (query, positive[, negative]) training data whose ids
resolve through that index; hands on a sentence-transformers model directory, ``training.json``
and a report (see :mod:`gl_retrieval.train.trainer`). Dev selection uses the project's own
:mod:`gl_retrieval.eval` metrics; no test split is ever read.

Example:
    >>> from gl_retrieval.train import FinetuneOptions, finetune
    >>> finetune("app.yaml", train="train.jsonl", output="runs/ft")  # doctest: +SKIP
"""

from __future__ import annotations

from gl_retrieval.errors import TrainingDataError, TrainingError
from gl_retrieval.train.options import FinetuneOptions
from gl_retrieval.train.trainer import FinetuneResult, finetune

__all__ = ["FinetuneOptions", "FinetuneResult", "TrainingDataError", "TrainingError", "finetune"]
