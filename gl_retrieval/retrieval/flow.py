"""The two-stage flow, written once: a checked request → first stage → rerank → results.

Every surface runs a query through these steps and nothing else: ``RetrievalPipeline.retrieve``
and ``retrieve_batch``, :class:`TwoStageRetriever` (and so the query engine and ``ask``), the
CLI, ``serve``'s batch workers (which batch and schedule the model calls across requests), and
so ``RemotePipeline``. The steps are:

1. :func:`check_request`: the query texts, ``top_k``, ``top_n`` and the filters are checked and
   parsed once, at the entry, into a :class:`SearchRequest` (one exception per fault:
   :class:`~gl_retrieval.errors.QueryError`, :class:`~gl_retrieval.errors.FilterError`);
2. :meth:`TwoStage.candidates`: the first stage (dense, bm25 or hybrid) for every query, given
   the query vectors (one ``embed_queries`` call for all of them, or serve's embed batcher);
3. :meth:`TwoStage.pairs`: the ``(query, passage)`` pairs the reranker must score;
4. :meth:`TwoStage.results`: the candidates ordered by those scores (one ``score_pairs`` call,
   or serve's rerank batcher) and cut to ``top_n``; without a reranker, the first ``top_n``.

Below :func:`check_request` the inputs are trusted.

Example:
    >>> req = check_request(["what is BM25?"], filters="year>=2020", top_k=None, top_n=3,
    ...                     default_top_k=20)
    >>> req.queries, req.top_k, req.top_n, [f.key for f in req.filters.filters]
    (('what is BM25?',), 20, 3, ['year'])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from gl_retrieval.config import RetrieverConfig
from gl_retrieval.errors import QueryError
from gl_retrieval.retrieval.filters import parse_filters
from gl_retrieval.retrieval.queries import check_depth, check_query
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.retrieval.retrievers import first_stage
from gl_retrieval.storage import IndexHandle, Storage

__all__ = ["SearchRequest", "StageTrace", "TwoStage", "TwoStageRetriever", "check_request"]


@dataclass(frozen=True)
class SearchRequest:
    """A checked request: what every surface builds once, at its entry.

    Attributes:
        queries: The query texts.
        filters: The parsed filters (None: no filter).
        top_k: Candidates per query from the first stage.
        top_n: Results per query (None: the reranker's ``top_n``, or all ``top_k`` without one).
    """

    queries: tuple[str, ...]
    filters: MetadataFilters | None
    top_k: int
    top_n: int | None


@dataclass
class StageTrace:
    """What one :meth:`TwoStage.run` call did, stage by stage: handed in empty, filled by the call
    (``eval`` reads it to score the first stage and time each stage from the calls that produce
    the results).

    Times are wall seconds (``time.perf_counter``) and **process** CPU seconds
    (``time.process_time``: every thread of the process, so a model runtime's intra-op threads
    count, and so would anything else the process runs meanwhile; ``eval`` runs nothing else).

    Attributes:
        candidates: The first stage's candidates per query, before any reranking.
        first_wall_s: Embedding the queries (when ``run`` embeds them) and the first stage.
        first_cpu_s: The same, in process CPU seconds.
        rerank_wall_s: The pairs, the cross-encoder and the ordering (0 without a reranker).
        rerank_cpu_s: The same, in process CPU seconds.
        pairs: How many ``(query, passage)`` pairs the reranker scored.
    """

    candidates: list[list[RankedNode]] = field(default_factory=list)
    first_wall_s: float = 0.0
    first_cpu_s: float = 0.0
    rerank_wall_s: float = 0.0
    rerank_cpu_s: float = 0.0
    pairs: int = 0


def check_request(
    queries: Sequence[str],
    *,
    filters: Any,
    top_k: int | None,
    top_n: int | None,
    default_top_k: int,
) -> SearchRequest:
    """Check and parse what a caller asks, once, before any model runs.

    Args:
        queries: The query texts (a list; a bare string is refused, to catch
            ``retrieve_batch("text")``).
        filters: Anything :func:`~gl_retrieval.retrieval.filters.parse_filters` accepts.
        top_k: Candidates per query; None: ``default_top_k``.
        top_n: Results per query, or None.
        default_top_k: The config's ``retriever.top_k``.

    Raises:
        QueryError: a query is not a non-empty string within the limits, or ``top_k`` /
            ``top_n`` is not a whole number in 1..10,000.
        FilterError: a filter is malformed.

    Example:
        >>> try:
        ...     check_request(["ok", "  "], filters=None, top_k=None, top_n=None, default_top_k=5)
        ... except QueryError as e:
        ...     print(e)
        query must be a non-empty string, but got '  '
    """
    if isinstance(queries, str):
        raise QueryError("retrieve_batch takes a list of queries; use retrieve for one")
    checked = tuple(check_query(q) for q in queries)
    check_depth("top_k", top_k)
    check_depth("top_n", top_n)
    return SearchRequest(
        queries=checked,
        filters=parse_filters(filters),
        top_k=top_k if top_k is not None else default_top_k,
        top_n=top_n,
    )


class TwoStage:
    """The two stages over one loaded index: cheap to build, holds no model of its own.

    A request keeps the index generation it started on: build a ``TwoStage`` per request from
    the handle loaded then (:meth:`RetrievalPipeline.stages`).

    Args:
        storage: The storage ``handle`` came from.
        handle: The loaded index.
        retriever: The first stage's settings.
        reranker: The second stage, or None.
        shared_nodes: The caller only reads the results' nodes (``serve``), so the embedded
            store may hand out nodes shared between calls.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        handle: IndexHandle,
        retriever: RetrieverConfig,
        reranker: CrossEncoderReranker | None,
        shared_nodes: bool = False,
    ) -> None:
        self.storage = storage
        self.handle = handle
        self.retriever = retriever
        self.reranker = reranker
        self.shared_nodes = shared_nodes

    @property
    def needs_vectors(self) -> bool:
        """False in ``bm25`` mode, where queries are never embedded."""
        return self.retriever.mode != "bm25"

    def candidates(
        self, request: SearchRequest, vectors: Sequence[Any] | None
    ) -> list[list[RankedNode]]:
        """Step 2, the first stage: ``request.top_k`` candidates for each query.

        Args:
            request: From :meth:`RetrievalPipeline.request` (its filters checked against the
                index's metadata there).
            vectors: One query vector per query (``embed_queries``); None in ``bm25`` mode.
        """
        return first_stage(
            self.storage,
            self.handle,
            self.retriever,
            request.queries,
            vectors=vectors if self.needs_vectors else None,
            top_k=request.top_k,
            filters=request.filters,
            shared_nodes=self.shared_nodes,
        )

    def pairs(
        self, request: SearchRequest, candidates: Sequence[Sequence[RankedNode]]
    ) -> list[tuple[str, str]]:
        """Step 3: every ``(query, passage)`` pair the reranker scores, query after query
        (none without a reranker)."""
        if self.reranker is None:
            return []
        return [
            (q, p)
            for q, cands in zip(request.queries, candidates, strict=True)
            for p in self.reranker.passages(cands)
        ]

    def results(
        self,
        request: SearchRequest,
        candidates: Sequence[Sequence[RankedNode]],
        scores: Sequence[float] | None,
    ) -> list[list[RankedNode]]:
        """Step 4: each query's candidates ordered by the reranker's ``scores`` (flat, in the
        order of :meth:`pairs`), cut to ``top_n``; without a reranker the first ``top_n``."""
        reranker = self.reranker
        if reranker is None:
            n = request.top_n
            return [list(c[:n] if n is not None else c) for c in candidates]
        flat = list(scores or ())
        out, start = [], 0
        for cands in candidates:
            part = flat[start : start + len(cands)]
            start += len(cands)
            out.append(reranker.rank(cands, part, top_n=request.top_n) if cands else [])
        return out

    def run(
        self,
        request: SearchRequest,
        *,
        embed: Any,
        vectors: Sequence[Any] | None = None,
        trace: StageTrace | None = None,
        rerank_cache: bool = True,
    ) -> list[list[RankedNode]]:
        """All four steps in this thread: one ``embed`` call for every query (unless
        ``vectors`` are given), one ``score_pairs`` call for every pair.

        Args:
            request: From :func:`check_request`.
            embed: ``queries -> vectors`` (the embedder's ``embed_queries``).
            vectors: The query vectors, when the caller has them already.
            trace: Filled with each stage's candidates and cost (see :class:`StageTrace`).
            rerank_cache: False: every pair goes to the cross-encoder (``eval`` measures the
                model's own cost, and its modes share pairs).
        """
        if not request.queries:
            return []
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if vectors is None and self.needs_vectors:
            vectors = list(embed(list(request.queries)))
        candidates = self.candidates(request, vectors)
        wall1, cpu1 = time.perf_counter(), time.process_time()
        pairs = self.pairs(request, candidates)
        scores = (
            self.reranker.score_pairs(pairs, cache=rerank_cache)
            if self.reranker is not None
            else None
        )
        out = self.results(request, candidates, scores)
        if trace is not None:
            wall2, cpu2 = time.perf_counter(), time.process_time()
            trace.candidates = candidates
            trace.first_wall_s, trace.first_cpu_s = wall1 - wall0, cpu1 - cpu0
            if self.reranker is not None:
                trace.rerank_wall_s, trace.rerank_cpu_s = wall2 - wall1, cpu2 - cpu1
            trace.pairs = len(pairs)
        return out


class TwoStageRetriever(BaseRetriever):
    """The two stages as a LlamaIndex ``BaseRetriever``: it drops into any query engine.

    Each call runs :meth:`TwoStage.run` for one query, on the index loaded at that moment, and
    returns :class:`RankedNode` objects that keep both scores. A ``QueryBundle`` that carries
    an ``embedding`` is not embedded again.

    Args:
        stages: Returns the :class:`TwoStage` of the index loaded now (a hot swap between two
            calls is seen by the second).
        embed: ``queries -> vectors``.
        request: The checked settings every call uses (``filters``, ``top_k``, ``top_n``;
            its ``queries`` are ignored: each call's query takes their place).

    Example:
        >>> retriever = pipe.as_retriever(top_n=3)  # doctest: +SKIP
        >>> [h.score_kind for h in retriever.retrieve("what is BM25?")]  # doctest: +SKIP
        ['cosine', 'cosine', 'cosine']
    """

    def __init__(self, stages: Any, *, embed: Any, request: SearchRequest) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._stages = stages
        self._embed = embed
        self._request = request

    @property
    def reranker(self) -> CrossEncoderReranker | None:
        """The second stage, or None."""
        return self._stages().reranker

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        request = replace(self._request, queries=(check_query(query_bundle.query_str),))
        vectors = None if query_bundle.embedding is None else [query_bundle.embedding]
        (hits,) = self._stages().run(request, embed=self._embed, vectors=vectors)
        return list(hits)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # Embedding, search and rerank are CPU/GPU work: run them in a worker thread, so the
        # event loop stays free and gathered queries overlap.
        return await asyncio.to_thread(self._retrieve, query_bundle)
