"""First-stage retrievers over a loaded index, plus the two-stage retriever apps hold.

``mode: dense`` searches the vector store; ``bm25`` scores the chunks' words
(:mod:`gl_retrieval.retrieval.lexical`); ``hybrid`` runs both and fuses the two lists without
any LLM: reciprocal rank fusion (:func:`rrf_fuse`) or a convex combination of normalised scores
(:func:`convex_fuse`). Metadata filters apply in every mode before the top k is taken.

Example:
    >>> rrf_fuse([[("a", 0.9), ("b", 0.5)], [("b", 12.0), ("c", 3.0)]], k=60)[0][0]
    'b'
    >>> dense, bm25 = [("a", 0.9), ("b", 0.8), ("d", 0.1)], [("b", 12.0), ("c", 3.0)]
    >>> [item for item, _ in convex_fuse(dense, bm25, alpha=0.5)]
    ['b', 'a', 'd', 'c']
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, ObjectType, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery

from gl_retrieval.config import RetrieverConfig
from gl_retrieval.errors import ConfigError
from gl_retrieval.retrieval.filters import check_filters, matches, metadata_schema, parse_filters
from gl_retrieval.retrieval.lexical import chunk_metadata, iter_chunks, lexical_index
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.storage import IndexHandle
from gl_retrieval.storage.embedded import EmbeddedVectorStore

__all__ = [
    "BM25Retriever",
    "HybridRetriever",
    "TwoStageRetriever",
    "build_first_stage",
    "convex_fuse",
    "dense_search",
    "index_schema",
    "normalize_scores",
    "rrf_fuse",
]

#: ``(id, score)`` pairs, best first.
Scored = Sequence[tuple[str, float]]
Normalization = Literal["minmax", "zscore"]

_MASK_CACHE_SIZE = 32
_mask_lock = threading.Lock()


# -- fusion (pure functions on ranked lists) --------------------------------------------------


def rrf_fuse(
    rankings: Sequence[Scored], *, k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: ``score(d) = sum_i w_i / (k + rank_i(d))``, ranks from 1.

    Args:
        rankings: One list per retriever, best first (scores are ignored).
        k: Damping constant; larger flattens the contribution of top ranks.
        weights: Per-list weights; default 1 each.

    Returns:
        ``(id, fused score)``, best first; ties keep first-appearance order.

    Example:
        >>> fused = rrf_fuse([[("a", 1.0), ("b", 0.5)], [("b", 3.0)]], k=1)
        >>> [(item, round(score, 3)) for item, score in fused]
        [('b', 0.833), ('a', 0.5)]
    """
    if k <= 0:
        raise ConfigError(f"rrf k must be > 0, but got {k}")
    w = [1.0] * len(rankings) if weights is None else list(weights)
    if len(w) != len(rankings):
        raise ConfigError(f"got {len(w)} weights for {len(rankings)} rankings")
    fused: dict[str, float] = {}
    for weight, ranking in zip(w, rankings, strict=True):
        for rank, (item, _) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])


def normalize_scores(scores: np.ndarray, method: Normalization = "minmax") -> np.ndarray:
    """Put one retriever's candidate scores on a common scale.

    ``minmax`` maps the list to [0, 1] (all equal: all 1); ``zscore`` subtracts the mean and
    divides by the standard deviation (all equal: all 0).

    Example:
        >>> normalize_scores(np.array([2.0, 4.0, 3.0])).tolist()
        [0.0, 1.0, 0.5]
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    if method == "minmax":
        lo, hi = float(s.min()), float(s.max())
        return np.ones_like(s) if hi - lo <= 1e-12 else (s - lo) / (hi - lo)
    if method == "zscore":
        sd = float(s.std())
        return np.zeros_like(s) if sd <= 1e-12 else (s - float(s.mean())) / sd
    raise ConfigError(f"unknown normalization {method!r}; use 'minmax' or 'zscore'")


def convex_fuse(
    dense: Scored,
    lexical: Scored,
    *,
    alpha: float,
    normalization: Normalization = "minmax",
) -> list[tuple[str, float]]:
    """Convex combination ``alpha * dense + (1 - alpha) * lexical`` of normalised scores.

    Each list is normalised over its own candidates (:func:`normalize_scores`). A candidate
    missing from one list gets that list's lowest normalised score (0 for ``minmax``): it ranked
    below everything that list returned.

    Example:
        >>> fused = convex_fuse([("a", 0.8), ("b", 0.6)], [("b", 9.0), ("c", 1.0)], alpha=0.7)
        >>> [(item, round(score, 3)) for item, score in fused]
        [('a', 0.7), ('b', 0.3), ('c', 0.0)]
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be within [0, 1], but got {alpha}")
    parts: list[dict[str, float]] = []
    floors: list[float] = []
    for ranking in (dense, lexical):
        normed = normalize_scores(np.array([s for _, s in ranking]), normalization)
        parts.append({item: float(v) for (item, _), v in zip(ranking, normed, strict=True)})
        floors.append(float(normed.min()) if normed.size else 0.0)
    order = list(dict.fromkeys([i for i, _ in dense] + [i for i, _ in lexical]))
    fused = {
        item: alpha * parts[0].get(item, floors[0]) + (1 - alpha) * parts[1].get(item, floors[1])
        for item in order
    }
    return sorted(fused.items(), key=lambda kv: -kv[1])


# -- retrievers -------------------------------------------------------------------------------


def index_schema(handle: IndexHandle) -> Mapping[str, frozenset[str]]:
    """Which kinds of value each metadata key holds in the index (cached on the handle)."""
    schema = handle.extras.get("gl_metadata_schema")
    if schema is None:
        schema = metadata_schema(chunk_metadata(handle).values())
        handle.extras["gl_metadata_schema"] = schema
    return schema


def _allowed_mask(handle: IndexHandle, node_ids: Sequence[str], filters: MetadataFilters) -> Any:
    cache: dict[str, np.ndarray] = handle.extras.setdefault("gl_filter_masks", {})
    key = filters.model_dump_json()
    mask = cache.get(key)
    if mask is None:
        meta = chunk_metadata(handle)
        mask = np.fromiter(
            (matches(meta.get(nid, {}), filters) for nid in node_ids),
            dtype=bool,
            count=len(node_ids),
        )
        if len(cache) >= _MASK_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = mask
    return mask


class BM25Retriever(BaseRetriever):
    """BM25 over the index's chunks; filters mask the scores before the top k is taken.

    Example:
        >>> retriever = BM25Retriever(handle, top_k=10)  # doctest: +SKIP
        >>> retriever.retrieve("term frequency")[0].node.node_id  # doctest: +SKIP
    """

    def __init__(
        self, handle: IndexHandle, *, top_k: int, filters: MetadataFilters | None = None
    ) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        if top_k <= 0:
            raise ConfigError(f"top_k must be > 0, but got {top_k}")
        self._handle = handle
        self._top_k = top_k
        self._filters = filters

    @property
    def handle(self) -> IndexHandle:
        """The index this retriever reads."""
        return self._handle

    def scored(self, query: str) -> list[tuple[str, float]]:
        """``(node id, BM25 score)``, best first, without loading the nodes."""
        lexical = lexical_index(self._handle)
        mask = None
        if self._filters is not None:
            mask = _allowed_mask(self._handle, lexical.node_ids, self._filters)
        return lexical.top_k(query, k=self._top_k, mask=mask)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.scored(query_bundle.query_str)
        nodes = iter_chunks(self._handle, [nid for nid, _ in hits])
        return [NodeWithScore(node=n, score=s) for n, (_, s) in zip(nodes, hits, strict=True)]


class HybridRetriever(BaseRetriever):
    """Dense and BM25 candidates (``candidate_k`` each), fused; returns the best ``top_k``.

    No LLM is involved (unlike LlamaIndex's ``QueryFusionRetriever``, which by default asks one
    to write extra queries). Pass a ``QueryBundle`` with a precomputed ``embedding`` to skip
    embedding the query again.
    """

    def __init__(
        self,
        dense: BaseRetriever,
        lexical: BM25Retriever,
        *,
        top_k: int,
        fusion: Literal["rrf", "convex"] = "convex",
        alpha: float = 0.5,
        normalization: Normalization = "minmax",
        rrf_k: int = 60,
    ) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._dense = dense
        self._lexical = lexical
        self._top_k = top_k
        self._fusion = fusion
        self._alpha = alpha
        self._normalization = normalization
        self._rrf_k = rrf_k

    def fuse(self, dense: Scored, lexical: Scored) -> list[tuple[str, float]]:
        """Fuse two ``(id, score)`` lists with this retriever's settings (top ``top_k``)."""
        if self._fusion == "rrf":
            fused = rrf_fuse([dense, lexical], k=self._rrf_k)
        else:
            fused = convex_fuse(
                dense, lexical, alpha=self._alpha, normalization=self._normalization
            )
        return fused[: self._top_k]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        dense_hits = self._dense.retrieve(query_bundle)
        lexical_scored = self._lexical.scored(query_bundle.query_str)
        nodes = {h.node.node_id: h.node for h in dense_hits}
        fused = self.fuse(
            [(h.node.node_id, float(h.score or 0.0)) for h in dense_hits], lexical_scored
        )
        missing = [nid for nid, _ in fused if nid not in nodes]
        nodes.update((n.node_id, n) for n in iter_chunks(self._lexical.handle, missing))
        return [NodeWithScore(node=nodes[nid], score=score) for nid, score in fused]


def build_first_stage(
    handle: IndexHandle,
    cfg: RetrieverConfig,
    *,
    top_k: int,
    filters: Any = None,
) -> BaseRetriever:
    """The configured first-stage retriever over ``handle`` (dense, bm25 or hybrid).

    Args:
        handle: The loaded index.
        cfg: The retriever section of the config.
        top_k: How many chunks to return.
        filters: Anything :func:`gl_retrieval.retrieval.filters.parse_filters` accepts; checked
            against the index's metadata, applied before ``top_k`` is taken in every mode.

    Raises:
        FilterError: a filter is malformed or cannot match the index's metadata by type.

    Example:
        >>> first = build_first_stage(handle, cfg.retriever, top_k=10)  # doctest: +SKIP
    """
    parsed = _checked_filters(handle, filters, top_k=top_k)
    if cfg.mode == "dense":
        return handle.index.as_retriever(similarity_top_k=top_k, filters=parsed)
    if cfg.mode == "bm25":
        return BM25Retriever(handle, top_k=top_k, filters=parsed)
    if cfg.mode == "hybrid":
        depth = max(top_k, cfg.candidate_k or max(top_k, 100))
        return HybridRetriever(
            handle.index.as_retriever(similarity_top_k=depth, filters=parsed),
            BM25Retriever(handle, top_k=depth, filters=parsed),
            top_k=top_k,
            fusion=cfg.fusion,
            alpha=cfg.alpha,
            normalization=cfg.normalization,
            rrf_k=cfg.rrf_k,
        )
    raise ConfigError(f"unknown retriever.mode {cfg.mode!r}; use dense, bm25 or hybrid")


def _checked_filters(handle: IndexHandle, filters: Any, *, top_k: int) -> MetadataFilters | None:
    if top_k <= 0:
        raise ConfigError(f"top_k must be > 0, but got {top_k}")
    parsed = parse_filters(filters)
    if parsed is not None:
        check_filters(parsed, index_schema(handle))
    return parsed


def dense_search(
    handle: IndexHandle, embedding: Any, *, top_k: int, filters: Any = None
) -> list[NodeWithScore] | None:
    """The dense first stage for a query vector, without LlamaIndex's retriever around it.

    It is what ``build_first_stage(handle, cfg, ...)`` in dense mode retrieves for the same
    vector: the same store query and the same hits in the same order. It skips the retriever's
    instrumentation, callbacks and debug logging, about 0.6 ms a query, which ``serve``
    spends on every request. On the embedded store the nodes are shared between calls
    (``query(shared_nodes=True)``): read them, do not modify them. Where the result needs the
    retriever's machinery (a store that keeps its text in the docstore, non-text nodes), it
    returns None: use the retriever.

    Example:
        >>> hits = dense_search(handle, vector, top_k=10)  # doctest: +SKIP
    """
    parsed = _checked_filters(handle, filters, top_k=top_k)
    index = handle.index
    store = index.vector_store
    if not store.stores_text:
        return None
    vec = embedding.tolist() if isinstance(embedding, np.ndarray) else [float(x) for x in embedding]
    query = VectorStoreQuery(
        query_embedding=vec,
        similarity_top_k=top_k,
        node_ids=list(index.index_struct.nodes_dict.values()),  # as as_retriever() passes
        filters=parsed,
    )
    if isinstance(store, EmbeddedVectorStore):
        result = store.query(query, shared_nodes=True)
    else:
        result = store.query(query)
    nodes = result.nodes
    if nodes is None or any(n.get_type() != ObjectType.TEXT for n in nodes):
        return None
    sims = result.similarities
    hits, seen = [], set()
    for i, node in enumerate(nodes):
        if node.node_id not in seen:  # BaseRetriever drops repeated ids
            seen.add(node.node_id)
            hits.append(NodeWithScore(node=node, score=None if sims is None else sims[i]))
    return hits


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
        retrieval_kind: str | None = None,
    ) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._first = first_stage
        self._reranker = reranker
        self._top_n = top_n
        self._kind = retrieval_kind

    @property
    def reranker(self) -> CrossEncoderReranker | None:
        """The second stage, or None."""
        return self._reranker

    @property
    def first_stage(self) -> BaseRetriever:
        """The first-stage retriever (dense, bm25 or hybrid)."""
        return self._first

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits: list[Any] = [
            RankedNode.from_retrieved(h, kind=self._kind)
            for h in self._first.retrieve(query_bundle)
        ]
        if self._reranker is not None:
            return list(self._reranker.rerank(hits, query_bundle.query_str, top_n=self._top_n))
        return hits[: self._top_n] if self._top_n is not None else hits

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # Embedding, search and rerank are CPU/GPU work: run them in a worker thread, so the
        # event loop stays free and gathered queries overlap.
        return await asyncio.to_thread(self._retrieve, query_bundle)
