"""RetrievalPipeline: the one object apps hold.

Example:
    >>> from gl_retrieval import RetrievalPipeline
    >>> pipe = RetrievalPipeline.from_config("examples/configs/demo.yaml")  # doctest: +SKIP
    >>> pipe.warmup()                                          # load models + index at start
    >>> for hit in pipe.retrieve("how are chunks measured?"):  # doctest: +SKIP
    ...     print(hit.doc_id, round(hit.score, 3))
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import LLM
from llama_index.core.schema import QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from gl_retrieval._progress import want_progress
from gl_retrieval.config import PipelineConfig, load_config, parse_config
from gl_retrieval.embedders import GLEmbedding, get_embedder
from gl_retrieval.errors import ConfigError, GLRetrievalError, LLMNotConfiguredError
from gl_retrieval.ingest.indexer import IndexSummary, index_documents, index_sources
from gl_retrieval.ingest.sources import Document
from gl_retrieval.retrieval.filters import parse_filters
from gl_retrieval.retrieval.lexical import attach_lexical, check_lexical, lexical_index
from gl_retrieval.retrieval.queries import check_depth, check_query
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, build_reranker
from gl_retrieval.retrieval.results import RankedNode, format_results, retrieval_kind
from gl_retrieval.retrieval.retrievers import TwoStageRetriever, build_first_stage, dense_search
from gl_retrieval.storage import IndexHandle, Storage, check_compatible, open_storage
from gl_retrieval.storage.manifest import chunking_differences

__all__ = ["Answer", "RetrievalOnlyQueryEngine", "RetrievalPipeline"]

log = logging.getLogger(__name__)

#: What ``filters=`` accepts: ``MetadataFilters``, strings like ``"ticker=PENDLE"`` or a mapping
#: (see :func:`gl_retrieval.retrieval.filters.parse_filters`).
FiltersArg = MetadataFilters | Mapping[str, Any] | Sequence[str] | str | None


@dataclass(frozen=True)
class Answer:
    """An LLM's answer and the sources it was written from."""

    question: str
    answer: str
    sources: list[RankedNode]

    def to_dict(self) -> dict[str, Any]:
        """The `ask --json` shape."""
        return {
            "question": self.question,
            "answer": self.answer,
            "sources": [
                {k: v for k, v in s.to_dict().items() if k in ("id", "doc_id", "text", "score")}
                for s in self.sources
            ],
        }


class RetrievalOnlyQueryEngine(BaseQueryEngine):
    """A query engine over the two-stage retriever; it calls an LLM only when given one.

    Without ``llm``, ``response.source_nodes`` holds the results and ``response.response``
    lists them, best first, with their scores (so ``print(response)`` shows the sources, not
    ``None``); ``response.metadata["retrieval_only"]`` is True. With one, the response is its
    answer written from those results.

    Example:
        >>> response = pipe.as_query_engine(top_n=3).query("what is BM25?")  # doctest: +SKIP
        >>> print(response)  # doctest: +SKIP
        Retrieval only (the config has no llm section): 3 sources, best first.
         1. cosine 0.6120  bm25-note  BM25 ranks documents by term frequency ...
    """

    def __init__(self, retriever: TwoStageRetriever, *, llm: LLM | None = None) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._retriever = retriever
        self._llm = llm

    def _query(self, query_bundle: QueryBundle) -> Response:
        nodes = self._retriever.retrieve(query_bundle)
        if self._llm is None:
            head = (
                "Retrieval only (the config has no llm section): "
                f"{len(nodes)} source{'s' if len(nodes) != 1 else ''}, best first."
            )
            lines = [head, *format_results(nodes, width=100)]
            return Response(
                response="\n".join(lines), source_nodes=nodes, metadata={"retrieval_only": True}
            )
        from gl_retrieval.ollama.llm import synthesize_answer

        text = synthesize_answer(self._llm, query_bundle.query_str, nodes)
        return Response(response=text, source_nodes=nodes)

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        # Model work (and an LLM call) runs in a worker thread, off the event loop.
        return await asyncio.to_thread(self._query, query_bundle)

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}


class RetrievalPipeline:
    """Config → embedder → persisted index → retriever → reranker, as one object.

    Construction is cheap: models and the index load on :meth:`warmup` or first use, once.
    Thread-safe for concurrent :meth:`retrieve` calls after warm-up.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        embedder: GLEmbedding | None = None,
        reranker: CrossEncoderReranker | None = None,
        storage: Storage | None = None,
        llm: LLM | None = None,
    ) -> None:
        self._config = config
        self._llm = llm
        self._embedder = embedder
        self._reranker = reranker
        self._storage = storage
        self._handle: IndexHandle | None = None
        # _lock guards building the stages and loading/swapping the index; _write_lock
        # serialises index writes, so queries keep running on the loaded index while one runs.
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig | Mapping[str, Any] | str | os.PathLike[str],
        *,
        base_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> RetrievalPipeline:
        """Build a pipeline from a config object, a mapping, or a YAML file path.

        Relative paths (``storage.persist_dir``, ``sources[].path``, a local ``model``
        directory) resolve against:

        - a YAML file: the folder the file is in, wherever you run from;
        - a mapping: ``base_dir`` if given, else the **current working directory** at this
          call (so the same dict finds other files when run from elsewhere: pass
          ``base_dir=Path(__file__).parent`` to pin it);
        - a :class:`PipelineConfig`: nothing is resolved again (``load_config`` and
          ``parse_config(...).resolve_paths(base)`` already did, or you chose absolute paths).

        Args:
            config: A :class:`PipelineConfig`, a dict in the same shape, or a path to YAML.
            base_dir: For a mapping only: the folder its relative paths are relative to.
            **kwargs: Passed to the constructor (``embedder=``, ``reranker=``, ``storage=``).

        Raises:
            ConfigError: the config is invalid, or ``base_dir`` was given with a file or a
                ``PipelineConfig``.

        Example:
            >>> cfg = {"storage": {"persist_dir": ".gl_index/notes"}}
            >>> pipe = RetrievalPipeline.from_config(cfg, base_dir="/srv/app")
            >>> str(pipe.config.storage.persist_dir)
            '/srv/app/.gl_index/notes'
        """
        if base_dir is not None and not isinstance(config, Mapping):
            raise ConfigError(
                "base_dir applies to a mapping config only: a YAML file's relative paths "
                "resolve against its own folder, and a PipelineConfig is used as it is"
            )
        if isinstance(config, PipelineConfig):
            cfg = config
        elif isinstance(config, Mapping):
            base = Path(base_dir).expanduser().resolve() if base_dir is not None else Path.cwd()
            cfg = parse_config(dict(config)).resolve_paths(base)
        elif isinstance(config, (str, os.PathLike)):
            cfg = load_config(config)
        else:
            raise ConfigError(
                f"config must be a PipelineConfig, a mapping or a path, not {type(config).__name__}"
            )
        return cls(cfg, **kwargs)

    @property
    def config(self) -> PipelineConfig:
        """The validated config; ``config.model_dump(mode="json")`` reloads to an equal one."""
        return self._config

    @property
    def embedder(self) -> GLEmbedding:
        if self._embedder is None:
            self._embedder = get_embedder(
                self._config.embedder, threads=self._config.runtime.threads
            )
        return self._embedder

    @property
    def reranker(self) -> CrossEncoderReranker | None:
        if self._reranker is None and self._config.reranker is not None:
            self._reranker = build_reranker(
                self._config.reranker, threads=self._config.runtime.threads
            )
        return self._reranker

    @property
    def llm(self) -> LLM | None:
        """The answering LLM from the ``llm`` section, or None (retrieval-only)."""
        if self._llm is None and self._config.llm is not None:
            from gl_retrieval.ollama.llm import build_ollama_llm

            c = self._config.llm
            self._llm = build_ollama_llm(
                model=c.model, base_url=c.base_url, timeout_s=c.timeout_s, temperature=c.temperature
            )
        return self._llm

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self._config.storage)
        return self._storage

    # -- lifecycle -----------------------------------------------------------------------------

    def warmup(self) -> RetrievalPipeline:
        """Load the embedder, the reranker and the index now, so no request pays for it.

        Returns:
            ``self``, so ``pipe = RetrievalPipeline.from_config(p).warmup()`` works.

        Raises:
            IndexNotFoundError: nothing was indexed yet.
            IndexMismatchError: the index was built by a different embedder.
            ModelLoadError: a model cannot be loaded.
        """
        self.embedder.warmup()
        if self.reranker is not None:
            self.reranker.warmup()
        handle = self._load_handle()
        if self._config.retriever.mode != "dense":
            lexical_index(handle)
        return self

    def reload(self) -> None:
        """Drop the loaded index so the next query sees what another process committed."""
        with self._lock:
            self._handle = None

    def _load_handle(self) -> IndexHandle:
        handle = self._handle  # one read: a concurrent refresh() swaps it atomically
        if handle is not None:
            return handle
        with self._lock:
            if self._handle is None:
                self._handle = self._read_index()
            return self._handle

    def _read_index(self) -> IndexHandle:
        manifest = self.storage.read_manifest()
        fp = self.embedder.fingerprint()
        check_compatible(manifest, embedder=fp, chunking=None, where=self.storage.location)
        # Another chunking leaves the vectors comparable, so queries stay correct and
        # are served; only `index` refuses it (it would mix two chunkings in one index).
        diffs = chunking_differences(manifest, self._config.chunking.model_dump())
        if diffs:
            log.warning(
                "the index at %s was chunked differently than the config asks (%s); "
                "queries use the index's chunks. Rebuild with `gl-retrieval index "
                "CONFIG --rebuild` to apply the config's chunking",
                self.storage.location,
                "; ".join(diffs),
            )
        handle = self.storage.load(embed_model=self.embedder)
        if self._config.retriever.mode != "dense":
            lexical_index(handle)
        return handle

    def committed_generation(self) -> str | None:
        """Id of the generation the storage has committed now (None: nothing committed).

        Cheap enough to poll: a file read (embedded) or one small row (postgres).
        """
        return _committed_generation(self.storage)

    @property
    def generation(self) -> str | None:
        """Id of the generation loaded in this pipeline (None: no index loaded yet)."""
        handle = self._handle
        return None if handle is None else _handle_generation(handle)

    def refresh(self) -> bool:
        """Load the committed generation if it is newer than the loaded one, then swap.

        The new index is loaded (and its BM25 side built) before the swap; queries already
        running keep the index they started on, later ones see the new one. Safe to call from a
        background thread while queries run.

        Returns:
            True when a new generation was loaded.

        Raises:
            IndexNotFoundError: nothing is committed.
            IndexMismatchError: the new generation was built by a different embedder.
        """
        committed = self.committed_generation()
        if committed is not None and committed == self.generation:
            return False
        with self._lock:
            if committed is not None and committed == self.generation:
                return False
            self._handle = self._read_index()
        return True

    # -- indexing ------------------------------------------------------------------------------

    def _before_commit(self) -> Callable[[IndexHandle], None] | None:
        """Keeps the BM25 side in sync on every commit. Only the embedded backend persists one;
        on postgres (dense only, for now) it would re-read every chunk on each `index` run."""
        return attach_lexical if self._config.storage.backend == "embedded" else None

    def index(
        self, *, rebuild: bool = False, prune: bool = False, show_progress: bool | None = None
    ) -> IndexSummary:
        """Index the config's ``sources``: embed only new or changed documents, commit atomically.

        Args:
            rebuild: Re-embed everything into a fresh index (after an embedder change).
            prune: Remove indexed documents that are no longer in the sources.
            show_progress: A progress bar while embedding. Default (None): when someone is
                watching, i.e. stderr is a terminal or this runs in a notebook; ``False``
                silences it (so does ``TQDM_DISABLE=1``). Model loads never print bars.
        """
        if not self._config.sources:
            raise ConfigError("the config has no `sources` to index: add sources: [{path: ...}]")
        return self._write(
            index_sources, rebuild=rebuild, prune=prune, show_progress=want_progress(show_progress)
        )

    def index_documents(
        self,
        documents: Iterable[Document],
        *,
        rebuild: bool = False,
        prune: bool = False,
        show_progress: bool | None = None,
    ) -> IndexSummary:
        """Index these documents instead of the config's ``sources`` (same incremental rules).

        Args:
            documents: The full current set of documents (``prune`` deletes any others).
            rebuild: Re-embed everything into a fresh index.
            prune: Remove indexed documents that are not in ``documents``.
            show_progress: A progress bar while embedding (default: when someone is
                watching; see :meth:`index`).

        Example:
            >>> from gl_retrieval.ingest.sources import Document
            >>> pipe.index_documents([Document("d1", "BM25 is lexical.")])  # doctest: +SKIP
        """
        return self._write(
            functools.partial(index_documents, documents),
            rebuild=rebuild,
            prune=prune,
            show_progress=want_progress(show_progress),
        )

    def _write(self, run: Callable[..., IndexSummary], **options: bool) -> IndexSummary:
        """Run one indexing function under the storage's writer lock, then drop the loaded index
        so the next query sees the new commit."""
        lock = getattr(self.storage, "write_lock", None)
        with self._write_lock, lock() if lock else nullcontext():
            summary = run(
                config=self._config,
                embedder=self.embedder,
                storage=self.storage,
                on_handle=self._before_commit(),
                **options,
            )
            with self._lock:
                self._handle = None
        return summary

    # -- querying ------------------------------------------------------------------------------

    def as_retriever(
        self,
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> TwoStageRetriever:
        """A LlamaIndex retriever: first stage ``top_k``, then the reranker (if any) to ``top_n``.

        Args:
            filters: Metadata filters applied before ``top_k`` is taken, in every mode:
                ``MetadataFilters``, strings like ``["ticker=PENDLE", "date<2026-01-01"]`` or
                a mapping like ``{"ticker": "PENDLE"}`` (see :mod:`gl_retrieval.retrieval.filters`).
            top_k: Candidates to retrieve; default ``retriever.top_k``.
            top_n: Results to return; default ``reranker.top_n`` (or all ``top_k`` without one).
        """
        check_depth("top_k", top_k)
        check_depth("top_n", top_n)
        k = top_k or self._config.retriever.top_k
        parsed = parse_filters(filters)
        handle = self._load_handle()
        rc = self._config.retriever
        first = build_first_stage(handle, rc, top_k=k, filters=parsed)
        kind = retrieval_kind(rc.mode, fusion=rc.fusion, normalization=rc.normalization)
        return TwoStageRetriever(first, reranker=self.reranker, top_n=top_n, retrieval_kind=kind)

    def retrieve(
        self,
        query: str,
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[RankedNode]:
        """Retrieve (and rerank) the best chunks for ``query``.

        Args:
            query: The query text (the embedder's query prefix is added for you).
            filters: Metadata filters applied before ``top_k`` is taken, in every mode (see
                :meth:`as_retriever`); e.g. ``["ticker=PENDLE", "date<2026-01-01"]``.
            top_k: Candidates to retrieve; default ``retriever.top_k``.
            top_n: Results to return; default ``reranker.top_n`` (or ``top_k`` without one).

        Returns:
            Results best first; each keeps ``retrieval_score`` and ``rerank_score``.

        Example:
            >>> hits = pipe.retrieve("what is reciprocal rank fusion?", top_n=3)  # doctest: +SKIP
            >>> [h.doc_id for h in hits]  # doctest: +SKIP
            >>> pipe.retrieve("upgrade", filters=["ticker=PENDLE"])  # doctest: +SKIP
        """
        _check_query(query, top_k=top_k)
        retriever = self.as_retriever(filters=filters, top_k=top_k, top_n=top_n)
        return list(retriever.retrieve(query))  # type: ignore[arg-type]

    @property
    def needs_query_embedding(self) -> bool:
        """False in ``bm25`` mode, where queries are never embedded."""
        return self._config.retriever.mode != "bm25"

    def retrieve_candidates(
        self,
        query: str,
        *,
        embedding: Sequence[float] | None = None,
        filters: FiltersArg = None,
        top_k: int | None = None,
        direct: bool = False,
    ) -> list[RankedNode]:
        """The first stage alone: ``top_k`` candidates for ``query``, not reranked.

        Args:
            query: The query text.
            embedding: The query's vector (from :meth:`GLEmbedding.embed_queries`); computed
                here when None. Pass it to embed many queries in one call.
            filters: Metadata filters, as for :meth:`retrieve`.
            top_k: Candidates to retrieve; default ``retriever.top_k``.
            direct: In dense mode, query the store without LlamaIndex's retriever around it
                (:func:`~gl_retrieval.retrieval.retrievers.dense_search`): the same hits,
                without its instrumentation events, about 0.6 ms sooner, and on the embedded
                store with nodes shared between calls, not to be modified. ``serve`` does this.
        """
        _check_query(query, top_k=top_k)
        k = top_k or self._config.retriever.top_k
        handle = self._load_handle()
        if direct and embedding is not None and self._config.retriever.mode == "dense":
            hits = dense_search(handle, embedding, top_k=k, filters=filters)
            if hits is not None:
                return [RankedNode.from_retrieved(h) for h in hits]
        first = build_first_stage(
            handle, self._config.retriever, top_k=k, filters=parse_filters(filters)
        )
        bundle = QueryBundle(
            query_str=query, embedding=None if embedding is None else [float(x) for x in embedding]
        )
        return [RankedNode.from_retrieved(h) for h in first.retrieve(bundle)]

    def rank_candidates(
        self,
        candidates: Sequence[RankedNode],
        *,
        scores: Sequence[float] | None = None,
        top_n: int | None = None,
    ) -> list[RankedNode]:
        """The second stage: order ``candidates`` by reranker ``scores`` and cut to ``top_n``.

        Args:
            candidates: From :meth:`retrieve_candidates`.
            scores: Cross-encoder scores for ``(query, passage)`` of each candidate (see
                :meth:`CrossEncoderReranker.score_pairs`); required when a reranker is
                configured, ignored otherwise.
            top_n: Results to return, as for :meth:`retrieve`.
        """
        if top_n is not None and top_n <= 0:
            raise ValueError(f"top_n must be > 0, but got {top_n}")
        reranker = self.reranker
        if reranker is None:
            return list(candidates[:top_n] if top_n is not None else candidates)
        if scores is None:
            raise ValueError("rank_candidates needs the reranker's scores for the candidates")
        return reranker.rank(candidates, scores, top_n=top_n)

    def retrieve_batch(
        self,
        queries: Sequence[str],
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[list[RankedNode]]:
        """:meth:`retrieve` for many queries: one embed call for all of them, one rerank call.

        Results equal (to float tolerance) ``[pipe.retrieve(q, ...) for q in queries]``.

        Args:
            queries: The query texts.
            filters: Metadata filters applied to every query.
            top_k: Candidates per query.
            top_n: Results per query.

        Returns:
            One result list per query, in the order of ``queries``.

        Example:
            >>> a, b = pipe.retrieve_batch(["what is BM25?", "rerank?"])  # doctest: +SKIP
        """
        if isinstance(queries, str):
            raise ValueError("retrieve_batch takes a list of queries; use retrieve for one")
        queries = list(queries)
        for q in queries:
            _check_query(q, top_k=top_k)
        if top_n is not None and top_n <= 0:
            raise ValueError(f"top_n must be > 0, but got {top_n}")
        if not queries:
            return []
        parsed = parse_filters(filters)
        vectors: list[Any] = [None] * len(queries)
        if self.needs_query_embedding:
            vectors = list(self.embedder.embed_queries(queries))
        candidates = [
            self.retrieve_candidates(q, embedding=v, filters=parsed, top_k=top_k)
            for q, v in zip(queries, vectors, strict=True)
        ]
        reranker = self.reranker
        if reranker is None:
            return [self.rank_candidates(c, top_n=top_n) for c in candidates]
        pairs = [
            (q, p) for q, c in zip(queries, candidates, strict=True) for p in reranker.passages(c)
        ]
        flat = reranker.score_pairs(pairs)
        out, start = [], 0
        for c in candidates:
            out.append(self.rank_candidates(c, scores=flat[start : start + len(c)], top_n=top_n))
            start += len(c)
        return out

    async def aretrieve(
        self,
        query: str,
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[RankedNode]:
        """:meth:`retrieve` for async code: the model work runs in a worker thread, so
        gathered calls overlap and the event loop stays free.

        Example:
            >>> hits = await pipe.aretrieve("what is BM25?")  # doctest: +SKIP
        """
        return await asyncio.to_thread(
            self.retrieve, query, filters=filters, top_k=top_k, top_n=top_n
        )

    async def aretrieve_batch(
        self,
        queries: Sequence[str],
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[list[RankedNode]]:
        """:meth:`retrieve_batch` in a worker thread."""
        return await asyncio.to_thread(
            self.retrieve_batch, queries, filters=filters, top_k=top_k, top_n=top_n
        )

    def as_query_engine(self, **kwargs: Any) -> BaseQueryEngine:
        """A LlamaIndex query engine: retrieval-only, unless the config has an ``llm`` section.

        Retrieval-only engines return the results as ``response.source_nodes``, with
        ``response.response`` listing them and their scores (``print(response)`` shows them),
        and never call an LLM (no silent OpenAI fallback). With an ``llm`` section the response
        is the LLM's answer written from those sources.

        Args:
            **kwargs: ``filters``, ``top_k``, ``top_n`` as for :meth:`retrieve`.
        """
        return RetrievalOnlyQueryEngine(self.as_retriever(**kwargs), llm=self.llm)

    def ask(
        self,
        question: str,
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> Answer:
        """Retrieve (and rerank) sources for ``question`` and have the configured LLM answer.

        Args:
            question: The question.
            filters: Metadata filters, as for :meth:`retrieve`.
            top_k: Candidates to retrieve.
            top_n: Sources handed to the LLM.

        Returns:
            An :class:`Answer` with the text and the sources it was written from.

        Raises:
            LLMNotConfiguredError: the config has no ``llm`` section.
            OllamaError: the Ollama server is down, lacks the model, or timed out.

        Example:
            >>> answer = pipe.ask("when should I switch to pgvector?")  # doctest: +SKIP
            >>> print(answer.answer, [s.doc_id for s in answer.sources])  # doctest: +SKIP
        """
        llm = self.llm
        if llm is None:
            raise LLMNotConfiguredError(
                "`ask` needs an LLM, but the config has no `llm` section: add "
                "`llm: {provider: ollama, model: llama3.2}` (retrieval works without one: "
                "use `query`)"
            )
        from gl_retrieval.ollama.llm import synthesize_answer

        sources = self.retrieve(question, filters=filters, top_k=top_k, top_n=top_n)
        return Answer(
            question=question, answer=synthesize_answer(llm, question, sources), sources=sources
        )

    def verify(self) -> dict[str, Any]:
        """Check the committed index completely, without loading a model.

        Embedded: every file's size and checksum, every JSON file, NaN/inf in the vectors,
        the norms, and that the documents, the vector store, the BM25 side and the manifest
        agree. Postgres: a lighter check (see docs/operations.md).

        Returns:
            A report: ``ok`` (bool), ``problems`` (each ``file`` and ``problem``),
            ``recovery`` (what to do when not ok), and what was checked.

        Raises:
            IndexNotFoundError: nothing was indexed yet.

        Example:
            >>> report = pipe.verify()  # doctest: +SKIP
            >>> report["ok"], report["problems"]  # doctest: +SKIP
            (True, [])
        """
        storage = self.storage
        report = storage.verify()  # type: ignore[attr-defined]
        gen = report.get("generation")
        if report["backend"] != "embedded" or gen is None:
            return report
        seen = {p["file"] for p in report["problems"]}
        directory = Path(storage.location) / gen
        try:
            ids = [nid for rec in storage.read_documents().values() for nid in rec.nodes]  # type: ignore[attr-defined]
        except GLRetrievalError:
            return report  # the document table is damaged: already reported
        for path, problem in check_lexical(directory, ids):
            if str(path) not in seen:
                report["problems"].append({"file": str(path), "problem": problem})
        if report["ok"] and report["problems"]:
            report["ok"] = False
            report["recovery"] = storage.recovery(exclude=directory)  # type: ignore[attr-defined]
        return report

    async def aquery(self, query: str, **kwargs: Any) -> Response:
        """``as_query_engine(**kwargs).aquery(query)``: retrieval (and an LLM answer, if one
        is configured) in a worker thread."""
        engine = await asyncio.to_thread(self.as_query_engine, **kwargs)
        return await engine.aquery(query)  # type: ignore[return-value]

    async def aask(self, question: str, **kwargs: Any) -> Answer:
        """:meth:`ask` in a worker thread."""
        return await asyncio.to_thread(self.ask, question, **kwargs)

    def info(self) -> dict[str, Any]:
        """The manifest and counts of the committed index (no model is loaded).

        On the embedded backend every file's size and checksum is checked too (cheap: about
        0.05 s per 100k chunks), so a damaged index raises ``IndexDamagedError`` here as well.
        """
        m = self.storage.read_manifest()
        check = getattr(self.storage, "check_files", None)
        if check is not None:
            check()
        return {
            "location": self.storage.location,
            "backend": self._config.storage.backend,
            "documents": m.documents,
            "chunks": m.chunks,
            "embedder": m.embedder,
            "chunking": m.chunking,
            "versions": m.versions,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }


def _check_query(query: Any, *, top_k: int | None) -> None:
    check_query(query)
    check_depth("top_k", top_k)


def _committed_generation(storage: Storage) -> str | None:
    """The storage's committed generation id: the CURRENT directory name (embedded) or the
    manifest row's generation number (postgres)."""
    current = getattr(storage, "current_generation", None)
    if current is not None:
        gen = current()
        return None if gen is None else Path(gen).name
    read_state = getattr(storage, "_read_state", None)
    if read_state is not None:
        from gl_retrieval.errors import IndexNotFoundError

        try:
            return str(read_state(documents=False)[0])
        except IndexNotFoundError:
            return None
    m = storage.read_manifest()  # another backend: the manifest's timestamp stands in
    return m.updated_at


def _handle_generation(handle: IndexHandle) -> str | None:
    if "dir" in handle.extras:
        return Path(handle.extras["dir"]).name
    from gl_retrieval.storage.postgres.sql import GENERATION

    if GENERATION in handle.extras:
        return str(handle.extras[GENERATION])
    return None if handle.manifest is None else handle.manifest.updated_at
