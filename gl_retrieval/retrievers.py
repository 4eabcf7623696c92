"""First-stage retrievers over a loaded index, plus the two-stage retriever apps hold.

``mode: dense`` searches the vector store. (``bm25`` and ``hybrid`` add a lexical side.)
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from gl_retrieval.config import RetrieverConfig
from gl_retrieval.errors import ConfigError
from gl_retrieval.rerankers import CrossEncoderReranker
from gl_retrieval.results import RankedNode
from gl_retrieval.storage import IndexHandle

__all__ = ["TwoStageRetriever", "build_first_stage"]


def build_first_stage(
    handle: IndexHandle,
    cfg: RetrieverConfig,
    *,
    top_k: int,
    filters: MetadataFilters | None = None,
) -> BaseRetriever:
    """The configured first-stage retriever over ``handle`` (dense, bm25 or hybrid)."""
    if cfg.mode != "dense":
        raise ConfigError(f"retriever.mode {cfg.mode!r} is not available in this build")
    return handle.index.as_retriever(similarity_top_k=top_k, filters=filters)


class TwoStageRetriever(BaseRetriever):
    """Retrieve ``top_k`` candidates, then (optionally) rerank them down to ``top_n``.

    Returns :class:`RankedNode` objects that keep both scores. A LlamaIndex ``BaseRetriever``,
    so it drops into any query engine.
    """

    def __init__(
        self,
        first_stage: BaseRetriever,
        *,
        reranker: CrossEncoderReranker | None = None,
        top_n: int | None = None,
    ) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._first = first_stage
        self._reranker = reranker
        self._top_n = top_n

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits: list[Any] = [RankedNode.from_retrieved(h) for h in self._first.retrieve(query_bundle)]
        if self._reranker is not None:
            return list(self._reranker.rerank(hits, query_bundle.query_str, top_n=self._top_n))
        return hits[: self._top_n] if self._top_n is not None else hits
