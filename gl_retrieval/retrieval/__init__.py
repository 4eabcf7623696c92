"""Retrieval: filters, the dense / BM25 / hybrid first stage, and the cross-encoder rerank.

Takes a loaded index (an ``IndexHandle`` from storage), the query embedder and the ``retriever``
and ``reranker`` config; hands on ranked :class:`RankedNode` results that keep both scores.
"""

from __future__ import annotations

from gl_retrieval.retrieval.filters import parse_filters
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, build_reranker
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.retrieval.retrievers import TwoStageRetriever, build_first_stage

__all__ = [
    "CrossEncoderReranker",
    "RankedNode",
    "TwoStageRetriever",
    "build_first_stage",
    "build_reranker",
    "parse_filters",
]
