"""Retrieval: filters, the dense / BM25 / hybrid first stage, the cross-encoder rerank, and the
two-stage flow that joins them.

Takes a loaded index (an ``IndexHandle`` and its ``Storage``), query vectors from the embedder
and the ``retriever`` and ``reranker`` config; hands on ranked :class:`RankedNode` results that
keep both scores. :mod:`.flow` is the one path every surface runs a query through.
"""

from __future__ import annotations

from gl_retrieval.retrieval.filters import parse_filters
from gl_retrieval.retrieval.flow import SearchRequest, TwoStage, TwoStageRetriever, check_request
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, build_reranker
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.retrieval.retrievers import FirstStageRetriever, first_stage

__all__ = [
    "CrossEncoderReranker",
    "FirstStageRetriever",
    "RankedNode",
    "SearchRequest",
    "TwoStage",
    "TwoStageRetriever",
    "build_reranker",
    "check_request",
    "first_stage",
    "parse_filters",
]
