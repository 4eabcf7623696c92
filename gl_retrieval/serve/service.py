"""What the HTTP routes call: one warm pipeline, the batchers, the index job and the watcher.

The service owns a :class:`RetrievalPipeline`. Each query's embedding goes through the embed
batcher, its first stage runs in a worker thread on the index generation loaded when it
started, and its rerank pairs go through the rerank batcher; the result is exactly what
``pipe.retrieve`` gives in process (to float tolerance). A watcher thread polls the storage
and swaps in each newly committed generation (``pipe.refresh()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gl_retrieval.config import HuggingFaceEmbedderConfig, PipelineConfig, ServeConfig
from gl_retrieval.errors import (
    GLRetrievalError,
    IndexDamagedError,
    IndexNotFoundError,
    StorageError,
)
from gl_retrieval.models.runtimes import resolve_threads
from gl_retrieval.pipeline import RetrievalPipeline
from gl_retrieval.retrieval.flow import SearchRequest, TwoStage
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.retrieval.score_cache import ScoreLookup
from gl_retrieval.serve.admission import Admission
from gl_retrieval.serve.batching import MicroBatcher, Overloaded, split_by_length
from gl_retrieval.serve.metrics import ServeMetrics

__all__ = ["IndexJob", "JobRunning", "RetrievalService", "embed_workers_for"]

log = logging.getLogger("gl_retrieval.serve")

#: Threads for first-stage searches. They are short and hold the GIL, so more threads only
#: take turns with the event loop (16 made the loop answer late under load); see
#: docs/serving.md for the measurement.
SEARCH_THREADS = 2

#: What one more model call costs, in padded tokens: MiniLM on one CPU thread spends about
#: 15 ms per call beyond its tokens (streaming the weights again) and 0.5 ms per token.
CALL_COST_TOKENS = 32

#: Admission prices a request in predicted tokens (issue 24): a text costs about one token per
#: 4 characters, up to the model's limit, plus this much per text (its share of a call).
TEXT_OVERHEAD_TOKENS = 8

#: A request whose texts are predicted over this many tokens is heavy: admitted by its cost
#: (see :mod:`gl_retrieval.serve.admission`) and embedded in calls of about this size, one after
#: the other, so the light queries arriving meanwhile run between them and no call's
#: activations grow with the request. On this project's 2-core machine MiniLM takes about
#: 0.1-0.3 s for it.
CHUNK_TOKENS = 512

#: What a request costs until its body says (a short query).
LIGHT_TOKENS = 16

_ticket: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar(
    "gl_retrieval_admission", default=None
)


@dataclass
class _Ticket:
    """One admitted request's predicted cost, re-priced by :meth:`RetrievalService.charge`."""

    cost: float
    measured: bool


def predicted_tokens(texts: Sequence[str], *, max_tokens: int | None) -> list[int]:
    """Each text's predicted cost in tokens, from its length alone (no tokenizer runs).

    Example:
        >>> predicted_tokens(["what is bm25?", "word " * 400], max_tokens=256)
        [12, 264]
    """
    cap = max_tokens or 512
    return [min(cap, len(t) // 4 + 1) + TEXT_OVERHEAD_TOKENS for t in texts]


#: What an embedding request asks for: the embedder's query or document prefix, or none (TEI).
EmbedKind = str  # "query" | "document" | "raw"


def embed_workers_for(config: PipelineConfig, *, cores: int | None = None) -> int:
    """``serve.embed_workers`` resolved: the number, or what ``auto`` picks for ``config``.

    ``auto`` is 2 on 2+ cores for an unpadded torch embedder when no reranker is configured,
    each worker then running its own batch on half the cores. On this project's 2-core
    machine that beat one worker on both cores by 1.1-1.2x at 16 clients: a batch on one thread
    never waits at a parallel region's barrier for a core the event loop holds, and one worker
    encodes while the other's requests are being answered. A reranker's calls are long and
    few, so they keep one worker with every core. See docs/serving.md.

    Example:
        >>> from gl_retrieval.config import parse_config
        >>> cfg = parse_config({"embedder": {"model": "packaged:all-MiniLM-L6-v2"}})
        >>> embed_workers_for(cfg, cores=2), embed_workers_for(cfg, cores=1)
        (2, 1)
    """
    scfg = config.serve or ServeConfig()
    if scfg.embed_workers != "auto":
        return int(scfg.embed_workers)
    if not scfg.batching:
        return 1
    from gl_retrieval.models.backend_choice import resolve_backend
    from gl_retrieval.models.runtimes import cpu_count

    emb = config.embedder
    unpadded = (
        isinstance(emb, HuggingFaceEmbedderConfig)
        and emb.unpad
        and resolve_backend(
            "embedder", backend=emb.backend, quantization=emb.quantization, device=emb.device
        ).backend
        == "torch"
    )
    cores = cpu_count() if cores is None else cores
    return 2 if unpadded and config.reranker is None and cores >= 2 else 1


@dataclass
class _Failed:
    """A query's error, carried out of a batch to its own request."""

    error: Exception


class JobRunning(GLRetrievalError):
    """An index job is already running (HTTP 409)."""


@dataclass
class IndexJob:
    """A background `index` run started by ``POST /v1/index``."""

    id: str
    prune: bool
    state: str = "running"  # running | succeeded | failed
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "prune": self.prune,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "summary": self.summary,
            "error": self.error,
        }


class RetrievalService:
    """The pipeline behind the server, with batching across requests.

    Args:
        pipe: The pipeline (warmed up by :meth:`start`).
        config: The ``serve`` settings.
        metrics: Where to record; a new registry by default.
    """

    def __init__(
        self,
        pipe: RetrievalPipeline,
        config: ServeConfig | None = None,
        *,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.pipe = pipe
        self.config = config or ServeConfig()
        self.metrics = metrics or ServeMetrics()
        wait_ms = self.config.max_queue_wait_ms
        self._admission = Admission(
            queue_size=self.config.queue_size,
            max_wait_s=None if wait_ms is None else wait_ms / 1000,
            chunk=CHUNK_TOKENS,
            timeout_s=self.config.request_timeout_s,
        )
        self._max_tokens: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="gl-serve")
        self._search = ThreadPoolExecutor(
            max_workers=SEARCH_THREADS, thread_name_prefix="gl-search"
        )
        self._embed: MicroBatcher | None = None
        self.embed_workers = 1
        self._rerank: MicroBatcher | None = None
        self._jobs: dict[str, IndexJob] = {}
        self._job_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.last_reload_error: str | None = None
        # Faults that make a loaded generation unservable (see ``not_ready_reason``): the store
        # unreachable (cleared by the watcher's next probe that answers), and the generation a
        # query found damaged (cleared when another generation is loaded).
        self._store_down: StorageError | None = None
        self._damaged: IndexDamagedError | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RetrievalService:
        """Load the models and the index (before the socket accepts), start the batchers and
        the generation watcher. A missing index is not fatal: /readyz says 503 until one is
        committed (e.g. by ``POST /v1/index``)."""
        pipe, cfg = self.pipe, self.config
        t0 = time.perf_counter()
        pipe.embedder.warmup()
        self._max_tokens = pipe.embedder.max_tokens
        self.metrics.model_load.labels("embedder").set(time.perf_counter() - t0)
        if pipe.reranker is not None:
            t0 = time.perf_counter()
            pipe.reranker.warmup()
            self.metrics.model_load.labels("reranker").set(time.perf_counter() - t0)
            self.metrics.watch_rerank_cache(pipe.reranker.cache_stats)
        self._try_refresh()
        if cfg.batching:
            self.embed_workers = self._resolve_embed_workers()
            self._embed = MicroBatcher(
                self._embed_batch,
                name="embed",
                max_cost=cfg.max_batch_size,
                max_wait_s=cfg.max_wait_ms / 1000,
                max_queue=max(cfg.queue_size * 4, 64),
                pending=lambda: self._in_flight,
                observe=self.metrics.observe_batch("embed"),
                workers=self.embed_workers,
            )
            if pipe.reranker is not None:
                self._rerank = MicroBatcher(
                    self._rerank_batch,
                    name="rerank",
                    max_cost=cfg.rerank_max_batch_tokens,
                    max_wait_s=cfg.max_wait_ms / 1000,
                    max_queue=max(cfg.queue_size * 4, 64),
                    pending=lambda: self._in_flight,
                    observe=self.metrics.observe_batch("rerank"),
                )
        self._watcher = threading.Thread(target=self._watch, name="gl-serve-watch", daemon=True)
        self._watcher.start()
        return self

    def _resolve_embed_workers(self) -> int:
        cfg = self.config
        if cfg.embed_workers == "auto":
            workers = embed_workers_for(self.pipe.config.model_copy(update={"serve": cfg}))
        else:
            workers = int(cfg.embed_workers)
        if workers > 1 and not self.pipe.embedder.unpadded:
            log.warning(
                "serve.embed_workers %d needs an unpadded torch embedder (a BERT-family model "
                "with embedder.unpad); running 1",
                workers,
            )
            workers = 1
        return workers

    def close(self) -> None:
        self._stop.set()
        for b in (self._embed, self._rerank):
            if b is not None:
                b.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._search.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        """True once an index generation is loaded, while its store answers and no query has
        found it damaged (what ``/readyz`` says)."""
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        """Why the replica cannot answer queries now, or None when it can."""
        if self.pipe.generation is None:
            return self.last_reload_error or "no index generation loaded yet"
        fault = self._fault()
        return None if fault is None else str(fault)

    def _fault(self) -> StorageError | None:
        """A new error for the storage fault that stops the loaded generation being served."""
        down, damaged = self._store_down, self._damaged
        if down is not None:
            return StorageError(str(down))
        if damaged is not None and damaged.generation == self.pipe.generation:
            return IndexDamagedError(
                str(damaged),
                path=damaged.path,
                problem=damaged.problem,
                generation=damaged.generation,
            )
        return None

    def _storage_fault(self, e: StorageError) -> None:
        """Note a fault a query or a probe met (it turns ``/readyz`` to 503)."""
        if isinstance(e, IndexDamagedError):
            if e.generation is None:  # not known which generation: nothing to mark
                return
            if self._damaged is None or self._damaged.generation != e.generation:
                log.error("generation %s is damaged; /readyz answers 503: %s", e.generation, e)
            self._damaged = e
            return
        if self._store_down is None:
            log.error("the index store is unreachable, /readyz answers 503 until it is back: %s", e)
        self._store_down = e

    def _try_refresh(self) -> bool:
        try:
            switched = self.pipe.refresh()
        except IndexNotFoundError as e:
            self.last_reload_error = str(e)
            return False
        except IndexDamagedError as e:  # a newly committed generation: keep the loaded one
            self.last_reload_error = str(e)
            log.warning("could not load the committed index generation: %s", e)
            return False
        except StorageError as e:
            self.last_reload_error = str(e)
            try:  # is the store down, or only the new generation unreadable?
                self.pipe.committed_generation()
            except StorageError as down:
                self._storage_fault(down)
            else:
                log.warning("could not load the committed index generation: %s", e)
            return False
        except Exception as e:  # keep serving the loaded generation
            self.last_reload_error = f"{type(e).__name__}: {e}"
            log.warning("could not load the committed index generation: %s", e)
            return False
        self.last_reload_error = None
        if self._store_down is not None:
            self._store_down = None
            log.warning("the index store answers again; /readyz answers 200")
        if switched:
            gen = self.pipe.generation
            self.metrics.set_generation(gen)
            self.metrics.generation_switches.inc()
            log.info("serving index generation %s", gen)
        return switched

    def _watch(self) -> None:
        while not self._stop.wait(self.config.reload_interval_s):
            self._try_refresh()

    # -- admission -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self, *, measured: bool = True) -> Iterator[None]:
        """Count a request in, or refuse it (``Overloaded``): at ``queue_size`` requests, or
        when those admitted would take over ``max_queue_wait_ms`` to drain (see
        :mod:`gl_retrieval.serve.admission`). ``measured=False`` for an LLM answer: it holds
        its place in ``queue_size`` until its stream ends, outside the measured rate.

        The request is priced as a short query until :meth:`charge` re-prices it from its
        body."""
        ticket = _Ticket(cost=LIGHT_TOKENS, measured=measured)
        try:
            self._admission.enter(measured=measured, cost=ticket.cost)
        except Overloaded:
            self.metrics.rejected.inc()
            raise
        self.metrics.in_flight.set(self._admission.in_flight)
        token = _ticket.set(ticket)
        try:
            yield
        finally:
            _ticket.reset(token)
            self._admission.leave(measured=measured, cost=ticket.cost)
            self.metrics.in_flight.set(self._admission.in_flight)
            self.metrics.predicted_wait.set(self._admission.predicted_wait_s())

    def charge(self, texts: Sequence[str]) -> list[int]:
        """Re-price the admitted request this runs in by its ``texts`` (predicted tokens), or
        refuse it now with ``Overloaded`` (503 + Retry-After) when, at that cost, it would hold
        light requests up or not finish in time. Returns each text's predicted tokens.
        Outside an admitted request (the library, tests) it only predicts."""
        tokens = predicted_tokens(texts, max_tokens=self._max_tokens)
        ticket = _ticket.get()
        cost = float(sum(tokens))
        if ticket is not None and ticket.measured and cost > ticket.cost:
            try:
                self._admission.charge(ticket.cost, cost)
            except Overloaded:
                self.metrics.rejected.inc()
                raise
            ticket.cost = cost
        return tokens

    @property
    def _in_flight(self) -> int:
        return self._admission.measured  # what a batch may wait for (not the LLM answers)

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` in the service's worker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _run_search(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._search, fn, *args)

    # -- model calls (batched when batching is on) -----------------------------------------------

    def _encode(self, kind: EmbedKind, texts: Sequence[str]) -> np.ndarray:
        emb = self.pipe.embedder
        if kind == "query":
            return emb.embed_queries(list(texts))
        if kind == "document":
            return emb.embed_documents(list(texts))
        return emb.embed_raw(list(texts))  # TEI: as given, no prefix

    def _encode_grouped(self, kind: EmbedKind, texts: list[str]) -> np.ndarray:
        """:meth:`_encode`, in calls of similar-length texts (see :func:`split_by_length`).

        An embedder that skips padding (``unpadded``) takes the whole batch in one call: there
        is no padding for a split to save."""
        emb = self.pipe.embedder
        if len(texts) <= 2 or emb.unpadded:
            return self._encode(kind, texts)
        counts = emb.count_tokens(texts)
        if counts is None:
            return self._encode(kind, texts)
        groups = split_by_length(counts, call_cost=CALL_COST_TOKENS)
        if len(groups) == 1:
            return self._encode(kind, texts)
        out: np.ndarray | None = None
        for g in groups:
            vecs = self._encode(kind, [texts[i] for i in g])
            if out is None:
                out = np.zeros((len(texts), vecs.shape[1]), dtype=vecs.dtype)
            out[g] = vecs
        return out  # type: ignore[return-value]

    def _embed_batch(self, payloads: list[tuple[Any, ...]]) -> list[Any]:
        """One batch of embed payloads: ``(kind, texts)``, or ``("search", stages, request)``,
        whose queries are embedded with the other queries and then searched here, in the model
        worker (see :meth:`retrieve_many`)."""
        out: list[Any] = [None] * len(payloads)
        texts_of = [p[2].queries if p[0] == "search" else p[1] for p in payloads]
        kinds = ["query" if p[0] == "search" else p[0] for p in payloads]
        for kind in dict.fromkeys(kinds):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            texts = [t for i in idx for t in texts_of[i]]
            vecs = self._encode_grouped(kind, texts)
            start = 0
            for i in idx:
                n = len(texts_of[i])
                out[i] = vecs[start : start + n]
                start += n
        for i, p in enumerate(payloads):
            if p[0] == "search":
                _, stages, request = p
                out[i] = _first_stage(stages, request, out[i])
        return out

    async def embed(self, kind: EmbedKind, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (merged with other requests' texts when batching is on).

        The request is first priced by its predicted tokens (:meth:`charge`: 503 when it
        cannot be taken now). A heavy one (over :data:`CHUNK_TOKENS`) goes to the model in
        calls of about that many tokens, one after the other: light requests run between them,
        and no call's memory grows with the request."""
        tokens = self.charge(texts)
        texts = list(texts)
        if self._embed is None:
            return await self.run(self._encode, kind, texts)
        per_text = CHUNK_TOKENS / self.config.max_batch_size  # a full batch of light texts
        parts: list[np.ndarray] = []
        start = 0
        while start < len(texts):
            end, used = start, 0
            while end < len(texts) and (end == start or used + tokens[end] <= CHUNK_TOKENS):
                used += tokens[end]
                end += 1
            cost = max(end - start, math.ceil(used / per_text))
            parts.append(await self._embed.submit((kind, texts[start:end]), cost=cost))
            start = end
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _rerank_batch(self, payloads: list[list[tuple[str, str]]]) -> list[list[float]]:
        reranker = self.pipe.reranker
        if reranker is None:
            raise GLRetrievalError("no reranker is configured")
        # The payloads are what the cache lacked (score_pairs looked them up); a pair that
        # several requests of this batch lack is scored once.
        flat = reranker.score_missing([p for pairs in payloads for p in pairs])
        out, start = [], 0
        for pairs in payloads:
            out.append(flat[start : start + len(pairs)])
            start += len(pairs)
        return out

    async def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Cross-encoder scores of ``pairs``: those in the rerank cache at once, the rest by the
        model (merged with other requests' pairs, up to the token budget, when batching is
        on). A request whose pairs are all cached never reaches the rerank batcher."""
        if not pairs:
            return []
        reranker = self.pipe.reranker
        if reranker is None:
            raise GLRetrievalError("no reranker is configured")
        # The lookup and the misses' token count (the batcher's cost) off the event loop.
        found, tokens = await self._run_search(
            _lookup_and_tokens, reranker, pairs, self._rerank is not None
        )
        if not found.missing:
            return found.complete([])
        if self._rerank is not None:
            fresh = await self._rerank.submit(list(found.missing), cost=tokens)
        else:
            fresh = await self.run(reranker.score_missing, list(found.missing))
        return found.complete(fresh)

    # -- retrieval -------------------------------------------------------------------------------

    async def retrieve_many(
        self,
        queries: Sequence[str],
        *,
        filters: Any = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[list[RankedNode]]:
        """Retrieve and rerank each query through the two stages of
        :mod:`gl_retrieval.retrieval.flow`, with the model calls batched across requests:
        exactly what ``pipe.retrieve_batch`` gives in process, to float tolerance.

        Refused at once while the store is down or the loaded generation is damaged
        (``StorageError``, ``IndexDamagedError``: 503); a storage fault it meets turns
        ``/readyz`` to 503 (the watcher's next probe that answers turns it back).

        Raises:
            QueryError: a query, ``top_k`` or ``top_n`` is not acceptable (checked here once,
                as the library's entry checks it).
            FilterError: a filter is malformed or cannot match the index (this request alone
                fails, never its batch).
            IndexNotFoundError: no index is loaded yet.
        """
        fault = self._fault() if self.pipe.generation is not None else None
        if fault is not None:
            raise fault
        try:
            request = self.pipe.request(queries, filters=filters, top_k=top_k, top_n=top_n)
            self.charge(request.queries)
            return await self._run(request)
        except StorageError as e:
            self._storage_fault(e)
            raise

    async def _run(self, request: SearchRequest) -> list[list[RankedNode]]:
        """The checked request through the flow's steps, the model calls through the batchers."""
        if self.pipe.generation is None:
            self._try_refresh()
            if self.pipe.generation is None:
                raise IndexNotFoundError(self.last_reload_error or "no index is loaded yet")
        if not request.queries:
            return []
        stages = self.pipe.stages(shared_nodes=True)  # the generation loaded now
        if self._embed is not None and stages.retriever.mode == "dense":
            # Dense search takes well under a millisecond: it runs in the model worker right
            # after the batch's encode, so a batch's requests stay together (handed to other
            # threads, they took turns for the GIL with the next encode and split the batches).
            found = await self._embed.submit(("search", stages, request), cost=len(request.queries))
            if isinstance(found, _Failed):
                raise found.error
            candidates = found
        else:
            vecs = None
            if stages.needs_vectors:
                vecs = list(await self.embed("query", request.queries))
            candidates = await self._run_search(stages.candidates, request, vecs)
        scores = None
        if stages.reranker is not None:
            pairs = await self._run_search(stages.pairs, request, candidates)
            scores = await self.score_pairs(pairs)
        return stages.results(request, candidates, scores)

    # -- index jobs ------------------------------------------------------------------------------

    def start_index_job(self, *, prune: bool = False) -> IndexJob:
        """Start an incremental ``index`` of the configured sources in a background thread.

        Raises:
            JobRunning: one is running already.
        """
        with self._job_lock:
            running = [j for j in self._jobs.values() if j.state == "running"]
            if running:
                raise JobRunning(f"index job {running[0].id} is still running")
            job = IndexJob(id=uuid.uuid4().hex[:12], prune=prune)
            self._jobs[job.id] = job
        threading.Thread(target=self._run_job, args=(job,), daemon=True).start()
        return job

    def _run_job(self, job: IndexJob) -> None:
        try:
            # The query share, not every core: this process goes on answering queries.
            summary = self.pipe.index(
                prune=job.prune, threads=resolve_threads(self.pipe.config.runtime.threads)
            )
            job.summary = summary.to_dict()
            job.state = "succeeded"
        except Exception as e:
            job.error = (
                f"{type(e).__name__}: {e}" if not isinstance(e, GLRetrievalError) else str(e)
            )
            job.state = "failed"
        finally:
            job.finished_at = time.time()
            self._try_refresh()

    def job(self, job_id: str) -> IndexJob | None:
        return self._jobs.get(job_id)


def _first_stage(stages: TwoStage, request: SearchRequest, vectors: Any) -> Any:
    """A request's candidates, or its error: one bad request fails only itself, never the
    other requests of its batch."""
    try:
        return stages.candidates(request, vectors)
    except Exception as e:
        return _Failed(e)


def _lookup_and_tokens(
    reranker: CrossEncoderReranker, pairs: list[tuple[str, str]], measure: bool
) -> tuple[ScoreLookup, int]:
    """What the rerank cache holds of ``pairs``, and the tokens of the pairs it lacks when the
    rerank batcher needs their cost."""
    found = reranker.lookup(pairs)
    missing = list(found.missing)
    tokens = sum(reranker.count_pair_tokens(missing)) if measure and missing else 0
    return found, max(1, tokens)
