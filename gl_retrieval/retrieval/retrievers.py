"""The first stage over a loaded index, written once (:func:`first_stage`), and its fusions.

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

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery

from gl_retrieval.config import RetrieverConfig
from gl_retrieval.errors import ConfigError, EmbeddingError, IndexDamagedError
from gl_retrieval.retrieval.filters import metadata_schema
from gl_retrieval.retrieval.lexical import chunk_metadata, iter_chunks, lexical_index
from gl_retrieval.retrieval.results import RankedNode, retrieval_kind
from gl_retrieval.storage import IndexHandle, Storage

__all__ = [
    "FirstStageRetriever",
    "bm25_hits",
    "bm25_scored",
    "check_finite",
    "convex_fuse",
    "dense_hits",
    "first_stage",
    "fuse_hits",
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


def _allowed_mask(
    storage: Storage, handle: IndexHandle, node_ids: Sequence[str], filters: MetadataFilters
) -> Any:
    cache: dict[str, np.ndarray] = handle.extras.setdefault("gl_filter_masks", {})
    key = repr(filters)  # not model_dump_json(): that writes True as 1
    mask = cache.get(key)
    if mask is None:
        # The storage's one filter evaluator (the one its dense search uses) decides here too,
        # so every mode keeps the same chunks.
        mask = storage.filter_mask(handle, filters, node_ids=node_ids)
        if len(cache) >= _MASK_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = mask
    return mask


def bm25_scored(
    storage: Storage,
    handle: IndexHandle,
    query: str,
    *,
    top_k: int,
    filters: MetadataFilters | None,
) -> list[tuple[str, float]]:
    """``(node id, BM25 score)`` for one query, best first, filters applied before the top
    ``top_k``; no node is loaded."""
    lexical = lexical_index(handle)
    mask = None if filters is None else _allowed_mask(storage, handle, lexical.node_ids, filters)
    return lexical.top_k(query, k=top_k, mask=mask)


def bm25_hits(
    storage: Storage,
    handle: IndexHandle,
    query: str,
    *,
    top_k: int,
    filters: MetadataFilters | None,
) -> list[NodeWithScore]:
    """The BM25 first stage for one query: the chunks' words, filters before the top ``top_k``."""
    hits = bm25_scored(storage, handle, query, top_k=top_k, filters=filters)
    nodes = iter_chunks(handle, [nid for nid, _ in hits])
    return [NodeWithScore(node=n, score=s) for n, (_, s) in zip(nodes, hits, strict=True)]


def dense_hits(
    storage: Storage,
    handle: IndexHandle,
    embedding: Sequence[float] | np.ndarray,
    *,
    top_k: int,
    filters: MetadataFilters | None,
    shared_nodes: bool = False,
) -> list[NodeWithScore]:
    """The dense first stage for one query vector: the storage's vector search, top ``top_k``.

    The same hits, in the same order and with the same scores, as LlamaIndex's
    ``index.as_retriever(similarity_top_k=top_k, filters=filters)`` (a test holds that), without
    its instrumentation (about 0.6 ms a query). With ``shared_nodes`` the embedded store hands
    out nodes decoded once and shared between calls (``serve`` reads them and never modifies
    them); without, each call gets nodes of its own that the caller may modify.

    Example:
        >>> hits = dense_hits(storage, handle, vector, top_k=10, filters=None)  # doctest: +SKIP
    """
    index = handle.index
    vec = embedding.tolist() if isinstance(embedding, np.ndarray) else [float(x) for x in embedding]
    if not all(map(math.isfinite, vec)):
        raise EmbeddingError(
            "the embedder returned a query vector holding NaN or infinity: its weights or its "
            "runtime are broken (check the model files, or load the model again)"
        )
    query = VectorStoreQuery(
        query_embedding=vec,
        similarity_top_k=top_k,
        node_ids=list(index.index_struct.nodes_dict.values()),  # as as_retriever() passes
        filters=filters,
    )
    result = storage.search(handle, query, shared_nodes=shared_nodes)
    sims = result.similarities
    hits, seen = [], set()
    for i, node in enumerate(result.nodes or ()):
        if node.node_id not in seen:  # BaseRetriever drops repeated ids
            seen.add(node.node_id)
            hits.append(NodeWithScore(node=node, score=None if sims is None else sims[i]))
    check_finite(handle, hits)
    return hits


def check_finite(handle: IndexHandle, hits: Sequence[NodeWithScore]) -> None:
    """Raise :class:`IndexDamagedError` when a hit's score is NaN or infinite.

    A finite query vector scored against intact vectors is finite, so a non-finite score means
    the stored vectors are damaged (overwritten in place, a bad disk): the first stage checks
    every hit, so no surface ever returns such a score (JSON cannot even carry it).
    """
    for h in hits:
        if h.score is not None and not math.isfinite(h.score):
            raise IndexDamagedError(
                f"index generation {handle.generation} gave the non-finite score {h.score} "
                f"to chunk {h.node.node_id!r}: its stored vectors are damaged. Run `gl-retrieval "
                "verify CONFIG` to find the damaged file and how to recover (an intact older "
                "generation, or `gl-retrieval index CONFIG --rebuild`)",
                problem="a non-finite similarity score",
                generation=handle.generation,
            )


def first_stage(
    storage: Storage,
    handle: IndexHandle,
    cfg: RetrieverConfig,
    queries: Sequence[str],
    *,
    vectors: Sequence[Any] | None,
    top_k: int,
    filters: MetadataFilters | None,
    shared_nodes: bool = False,
) -> list[list[RankedNode]]:
    """The configured first stage (dense, bm25 or hybrid) for each query: ``top_k`` candidates.

    The one implementation of the first stage: the library, the CLI, ``serve``, the LlamaIndex
    retrievers and the evaluation all call it. Inputs are trusted (checked at the entry:
    :func:`gl_retrieval.retrieval.flow.check_request`).

    Args:
        storage: The storage ``handle`` came from (its vector search).
        handle: The loaded index.
        cfg: The retriever settings (mode, fusion).
        queries: The query texts.
        vectors: One query vector per query (``embed_queries``), or None in ``bm25`` mode.
        top_k: Candidates per query.
        filters: Parsed filters, applied before ``top_k`` is taken in every mode.
        shared_nodes: Nodes may be shared between calls (read-only); see :func:`dense_hits`.

    Returns:
        One list of :class:`RankedNode` per query, best first, each naming its score's kind.
    """
    kind = retrieval_kind(cfg.mode, fusion=cfg.fusion, normalization=cfg.normalization)
    # Hybrid fuses deeper lists than it returns: candidate_k from each side.
    depth = top_k if cfg.mode != "hybrid" else max(top_k, cfg.candidate_k or max(top_k, 100))
    out: list[list[RankedNode]] = []
    for i, query in enumerate(queries):
        dense: list[NodeWithScore] = []
        if cfg.mode != "bm25":
            dense = dense_hits(
                storage,
                handle,
                vectors[i],  # type: ignore[index]
                top_k=depth,
                filters=filters,
                shared_nodes=shared_nodes,
            )
        if cfg.mode == "dense":
            hits = dense
        elif cfg.mode == "bm25":
            hits = bm25_hits(storage, handle, query, top_k=top_k, filters=filters)
        else:
            lexical = bm25_scored(storage, handle, query, top_k=depth, filters=filters)
            hits = fuse_hits(handle, cfg, dense, lexical, top_k=top_k)
            check_finite(handle, hits)  # the dense side was checked; this is the fused score
        out.append([RankedNode.from_retrieved(h, kind=kind) for h in hits])
    return out


def fuse_hits(
    handle: IndexHandle,
    cfg: RetrieverConfig,
    dense: Sequence[NodeWithScore],
    lexical: Scored,
    *,
    top_k: int,
) -> list[NodeWithScore]:
    """Hybrid fusion of dense hits and BM25 ``(id, score)`` pairs as ``cfg`` says, top ``top_k``."""
    nodes = {h.node.node_id: h.node for h in dense}
    scored = [(h.node.node_id, float(h.score or 0.0)) for h in dense]
    if cfg.fusion == "rrf":
        fused = rrf_fuse([scored, lexical], k=cfg.rrf_k)
    else:
        fused = convex_fuse(scored, lexical, alpha=cfg.alpha, normalization=cfg.normalization)
    fused = fused[:top_k]
    missing = [nid for nid, _ in fused if nid not in nodes]
    nodes.update((n.node_id, n) for n in iter_chunks(handle, missing))
    return [NodeWithScore(node=nodes[nid], score=score) for nid, score in fused]


class FirstStageRetriever(BaseRetriever):
    """The configured first stage as a LlamaIndex ``BaseRetriever`` (one query a call).

    Pass a ``QueryBundle`` with an ``embedding`` to skip embedding the query again.

    Example:
        >>> first = pipe.first_stage_retriever(top_k=10)  # doctest: +SKIP
        >>> first.retrieve("term frequency")[0].retrieval_kind  # doctest: +SKIP
        'cosine'
    """

    def __init__(
        self,
        storage: Storage,
        handle: IndexHandle,
        cfg: RetrieverConfig,
        *,
        embed_query: Any,
        top_k: int,
        filters: MetadataFilters | None = None,
    ) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._args = (storage, handle, cfg)
        self._embed_query = embed_query
        self._top_k = top_k
        self._filters = filters

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        storage, handle, cfg = self._args
        vectors = None
        if cfg.mode != "bm25":
            vec = query_bundle.embedding
            vectors = [vec if vec is not None else self._embed_query(query_bundle.query_str)]
        (hits,) = first_stage(
            storage,
            handle,
            cfg,
            [query_bundle.query_str],
            vectors=vectors,
            top_k=self._top_k,
            filters=self._filters,
        )
        return list(hits)
