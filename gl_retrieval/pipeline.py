"""RetrievalPipeline: the one object apps hold.

Example:
    >>> from gl_retrieval import RetrievalPipeline
    >>> pipe = RetrievalPipeline.from_config("examples/configs/demo.yaml")  # doctest: +SKIP
    >>> pipe.warmup()                                          # load models + index at start
    >>> for hit in pipe.retrieve("how are chunks measured?"):  # doctest: +SKIP
    ...     print(hit.doc_id, round(hit.score, 3))
"""

from __future__ import annotations

import functools
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

from gl_retrieval.config import PipelineConfig, load_config, parse_config
from gl_retrieval.embedders import GLEmbedding, get_embedder
from gl_retrieval.errors import ConfigError, LLMNotConfiguredError
from gl_retrieval.ingest.indexer import IndexSummary, index_documents, index_sources
from gl_retrieval.ingest.sources import Document
from gl_retrieval.retrieval.filters import parse_filters
from gl_retrieval.retrieval.lexical import attach_lexical, lexical_index
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, build_reranker
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.retrieval.retrievers import TwoStageRetriever, build_first_stage
from gl_retrieval.storage import IndexHandle, Storage, check_compatible, open_storage

__all__ = ["Answer", "RetrievalOnlyQueryEngine", "RetrievalPipeline"]

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

    Without ``llm``, ``response.response`` is ``""`` and ``response.source_nodes`` holds the
    results. With one, the response is its answer written from those results.
    """

    def __init__(self, retriever: TwoStageRetriever, *, llm: LLM | None = None) -> None:
        super().__init__(callback_manager=CallbackManager([]))
        self._retriever = retriever
        self._llm = llm

    def _query(self, query_bundle: QueryBundle) -> Response:
        nodes = self._retriever.retrieve(query_bundle)
        if self._llm is None:
            return Response(response="", source_nodes=nodes)
        from gl_retrieval.ollama.llm import synthesize_answer

        text = synthesize_answer(self._llm, query_bundle.query_str, nodes)
        return Response(response=text, source_nodes=nodes)

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return self._query(query_bundle)

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
        self._lock = threading.RLock()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: PipelineConfig | Mapping[str, Any] | str | os.PathLike[str], **kwargs: Any
    ) -> RetrievalPipeline:
        """Build a pipeline from a config object, a mapping, or a YAML file path.

        Args:
            config: A :class:`PipelineConfig`, a dict in the same shape, or a path to YAML.
            **kwargs: Passed to the constructor (``embedder=``, ``reranker=``, ``storage=``).

        Raises:
            ConfigError: the config is invalid.
        """
        if isinstance(config, PipelineConfig):
            cfg = config
        elif isinstance(config, Mapping):
            cfg = parse_config(dict(config)).resolve_paths(Path.cwd())
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
        with self._lock:
            if self._handle is None:
                manifest = self.storage.read_manifest()
                fp = self.embedder.fingerprint()
                check_compatible(manifest, embedder=fp, chunking=None, where=self.storage.location)
                self._handle = self.storage.load(embed_model=self.embedder)
            return self._handle

    # -- indexing ------------------------------------------------------------------------------

    def _before_commit(self) -> Callable[[IndexHandle], None] | None:
        """Keeps the BM25 side in sync on every commit. Only the embedded backend persists one;
        on postgres (dense only, for now) it would re-read every chunk on each `index` run."""
        return attach_lexical if self._config.storage.backend == "embedded" else None

    def index(
        self, *, rebuild: bool = False, prune: bool = False, show_progress: bool = False
    ) -> IndexSummary:
        """Index the config's ``sources``: embed only new or changed documents, commit atomically.

        Args:
            rebuild: Re-embed everything into a fresh index (after an embedder change).
            prune: Remove indexed documents that are no longer in the sources.
            show_progress: Show a progress bar while embedding.
        """
        if not self._config.sources:
            raise ConfigError("the config has no `sources` to index: add sources: [{path: ...}]")
        return self._write(index_sources, rebuild=rebuild, prune=prune, show_progress=show_progress)

    def index_documents(
        self,
        documents: Iterable[Document],
        *,
        rebuild: bool = False,
        prune: bool = False,
        show_progress: bool = False,
    ) -> IndexSummary:
        """Index these documents instead of the config's ``sources`` (same incremental rules).

        Args:
            documents: The full current set of documents (``prune`` deletes any others).
            rebuild: Re-embed everything into a fresh index.
            prune: Remove indexed documents that are not in ``documents``.
            show_progress: Show a progress bar while embedding.

        Example:
            >>> from gl_retrieval.ingest.sources import Document
            >>> pipe.index_documents([Document("d1", "BM25 is lexical.")])  # doctest: +SKIP
        """
        return self._write(
            functools.partial(index_documents, documents),
            rebuild=rebuild,
            prune=prune,
            show_progress=show_progress,
        )

    def _write(self, run: Callable[..., IndexSummary], **options: bool) -> IndexSummary:
        """Run one indexing function under the storage's writer lock, then drop the loaded index
        so the next query sees the new commit."""
        lock = getattr(self.storage, "write_lock", None)
        with self._lock, lock() if lock else nullcontext():
            summary = run(
                config=self._config,
                embedder=self.embedder,
                storage=self.storage,
                on_handle=self._before_commit(),
                **options,
            )
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
        k = top_k or self._config.retriever.top_k
        if top_n is not None and top_n <= 0:
            raise ValueError(f"top_n must be > 0, but got {top_n}")
        parsed = parse_filters(filters)
        handle = self._load_handle()
        first = build_first_stage(handle, self._config.retriever, top_k=k, filters=parsed)
        return TwoStageRetriever(first, reranker=self.reranker, top_n=top_n)

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
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty string, but got {query!r}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be > 0, but got {top_k}")
        retriever = self.as_retriever(filters=filters, top_k=top_k, top_n=top_n)
        return list(retriever.retrieve(query))  # type: ignore[arg-type]

    def as_query_engine(self, **kwargs: Any) -> BaseQueryEngine:
        """A LlamaIndex query engine: retrieval-only, unless the config has an ``llm`` section.

        Retrieval-only engines return the results as ``response.source_nodes`` with an empty
        ``response`` and never call an LLM (no silent OpenAI fallback). With an ``llm`` section
        the response is the LLM's answer written from those sources.

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

    def info(self) -> dict[str, Any]:
        """The manifest and counts of the committed index (no model is loaded)."""
        m = self.storage.read_manifest()
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
