"""Dev-set evaluation during fine-tuning, with the project's own metrics and fusion.

Each evaluation embeds the index's chunks with the model being trained (the stored vectors
belong to the base model) and ranks them for every dev query exactly as the configured first
stage does: ``dense`` is cosine over all chunks; ``hybrid`` fuses the dense and BM25 candidate
lists (``candidate_k`` each) with the configured fusion (``convex_fuse`` or ``rrf_fuse`` from
:mod:`gl_retrieval.retrieval.retrievers`). Documents are scored at their best
chunk's rank and measured with :func:`gl_retrieval.eval.metrics.evaluate`: nDCG@10, MRR@10,
Recall@100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gl_retrieval.config import RetrieverConfig
from gl_retrieval.eval.metrics import doc_level_ranking, evaluate
from gl_retrieval.retrieval.retrievers import convex_fuse, rrf_fuse
from gl_retrieval.train.corpus import Corpus
from gl_retrieval.train.data import TrainingData

__all__ = ["DEV_METRICS", "DEV_MODES", "dev_metrics"]

DEV_METRICS: tuple[str, ...] = ("nDCG@10", "MRR@10", "Recall@100")
DEV_MODES: tuple[str, ...] = ("dense", "hybrid")
EVAL_DEPTH = 100


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.size)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def dev_metrics(
    query_vectors: np.ndarray,
    chunk_vectors: np.ndarray,
    dev: TrainingData,
    corpus: Corpus,
    retriever: RetrieverConfig,
    *,
    modes: Sequence[str] = DEV_MODES,
) -> dict[str, dict[str, float]]:
    """Metrics per mode for ``dev`` (query vectors in ``dev.queries`` order).

    Args:
        query_vectors: One unit vector per dev query (query prefix applied).
        chunk_vectors: One unit vector per corpus chunk (document prefix applied), index order.
        dev: The dev set; its ``qrels`` are the judgments.
        corpus: The index's chunks and BM25 side.
        retriever: The configured retriever (fusion settings, ``candidate_k``).
        modes: ``dense`` and/or ``hybrid``.
    """
    qids = list(dev.queries)
    texts = [dev.queries[q] for q in qids]
    sims = query_vectors @ chunk_vectors.T
    depth = max(EVAL_DEPTH, retriever.candidate_k or max(EVAL_DEPTH, 100))
    runs: dict[str, dict[str, list[str]]] = {m: {} for m in modes}
    for i, qid in enumerate(qids):
        order = _top(sims[i], depth)
        if "dense" in runs:
            runs["dense"][qid] = doc_level_ranking(
                (corpus.doc_of[r], float(sims[i, r])) for r in order[:EVAL_DEPTH]
            )
        if "hybrid" in runs:
            if corpus.lexical is None:
                raise ValueError("hybrid dev evaluation needs the corpus's BM25 side")
            dense = [(corpus.chunk_ids[r], float(sims[i, r])) for r in order]
            lexical = corpus.lexical.top_k(texts[i], k=depth)
            if retriever.fusion == "rrf":
                fused = rrf_fuse([dense, lexical], k=retriever.rrf_k)
            else:
                fused = convex_fuse(
                    dense, lexical, alpha=retriever.alpha, normalization=retriever.normalization
                )
            row_of = corpus.row_of
            runs["hybrid"][qid] = doc_level_ranking(
                (corpus.doc_of[row_of[nid]], s) for nid, s in fused[:EVAL_DEPTH]
            )
    return {m: evaluate(run, dev.qrels, metrics=DEV_METRICS) for m, run in runs.items()}
