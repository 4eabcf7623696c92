"""RetrievalPipeline: the one object apps hold.

Example:
    >>> from gl_retrieval import RetrievalPipeline
    >>> pipe = RetrievalPipeline.from_config(
    ...     {
    ...         "embedder": {"model": "packaged:all-MiniLM-L6-v2"},  # offline; or a hub id
    ...         "retriever": {"mode": "dense", "top_k": 10},
    ...         "storage": {"persist_dir": index_dir},  # any directory
    ...         "sources": [{"path": "gl_retrieval/data/demo_corpus.jsonl"}],
    ...         "chunking": {"chunk_size": 200, "chunk_overlap": 20},
    ...     }
    ... )
    >>> pipe.index(show_progress=False).added  # documents embedded
    50
    >>> pipe = pipe.warmup()  # load the models and the index at start, not on the first query
    >>> for hit in pipe.retrieve("how are chunks measured?", top_n=3):
    ...     print(hit.doc_id, hit.score_kind)
    chunking-size cosine
    chunking-overlap cosine
    chunking-doc-ranking cosine
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.response.schema import Response
from llama_index.core.llms import LLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from gl_retrieval._progress import want_progress
from gl_retrieval.answers.results import Answer, AnswerStream
from gl_retrieval.config import PipelineConfig, RetrieverConfig, load_config, parse_config
from gl_retrieval.embedders import GLEmbedding, get_embedder
from gl_retrieval.errors import ConfigError, LLMNotConfiguredError
from gl_retrieval.ingest.indexer import IndexSummary, index_documents, index_sources
from gl_retrieval.ingest.sources import Document
from gl_retrieval.retrieval.filters import check_filters
from gl_retrieval.retrieval.flow import SearchRequest, TwoStage, TwoStageRetriever, check_request
from gl_retrieval.retrieval.lexical import attach_lexical, check_lexical, lexical_index
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, build_reranker
from gl_retrieval.retrieval.results import RankedNode
from gl_retrieval.retrieval.retrievers import index_schema
from gl_retrieval.storage import IndexHandle, Storage, check_compatible, open_storage
from gl_retrieval.storage.manifest import chunking_differences

if TYPE_CHECKING:
    from llama_index.core.chat_engine.types import BaseChatEngine
    from llama_index.core.llms import ChatMessage
    from llama_index.core.memory import BaseMemory
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

__all__ = ["Answer", "AnswerStream", "RetrievalPipeline"]

log = logging.getLogger(__name__)

#: What ``filters=`` accepts: ``MetadataFilters``, strings like ``"ticker=PENDLE"`` or a mapping
#: (see :func:`gl_retrieval.retrieval.filters.parse_filters`).
FiltersArg = MetadataFilters | Mapping[str, Any] | Sequence[str] | str | None


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
        """The answering LLM: the one passed in, else the config's ``llm`` section built (nothing
        is contacted yet), else None (retrieval-only)."""
        if self._llm is None and self._config.llm is not None:
            from gl_retrieval.answers.llms import build_llm

            with self._lock:
                if self._llm is None:
                    self._llm = build_llm(self._config.llm)
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
        # A config that leaves chunking unset (a reader's dict, say) takes the index's, quietly.
        diffs = (
            chunking_differences(manifest, self._config.chunking.model_dump())
            if "chunking" in self._config.model_fields_set
            else []
        )
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
        return self.storage.committed_generation()

    @property
    def generation(self) -> str | None:
        """Id of the generation loaded in this pipeline (None: no index loaded yet)."""
        handle = self._handle
        return None if handle is None else handle.generation

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
        self,
        *,
        rebuild: bool = False,
        prune: bool = False,
        show_progress: bool | None = None,
        threads: int | None = None,
    ) -> IndexSummary:
        """Index the config's ``sources``: embed only new or changed documents, commit atomically.

        Args:
            rebuild: Re-embed everything into a fresh index (after an embedder change).
            prune: Remove indexed documents that are no longer in the sources.
            show_progress: A progress bar while embedding. Default (None): when someone is
                watching, i.e. stderr is a terminal or this runs in a notebook; ``False``
                silences it (so does ``TQDM_DISABLE=1``). Model loads never print bars.
            threads: The embedder's intra-op threads for this job. Default: ``runtime.threads``,
                where ``auto`` means every core (a bulk job; queries keep their share, restored
                when the job ends). ``serve``'s index jobs pass the query share.
        """
        if not self._config.sources:
            raise ConfigError("the config has no `sources` to index: add sources: [{path: ...}]")
        return self._write(
            index_sources,
            threads=threads,
            rebuild=rebuild,
            prune=prune,
            show_progress=want_progress(show_progress),
        )

    def index_documents(
        self,
        documents: Iterable[Document],
        *,
        rebuild: bool = False,
        prune: bool = False,
        show_progress: bool | None = None,
        threads: int | None = None,
    ) -> IndexSummary:
        """Index these documents instead of the config's ``sources`` (same incremental rules).

        Args:
            documents: The full current set of documents (``prune`` deletes any others).
            rebuild: Re-embed everything into a fresh index.
            prune: Remove indexed documents that are not in ``documents``.
            show_progress: A progress bar while embedding (default: when someone is
                watching; see :meth:`index`).
            threads: The embedder's threads for this job (default: every core under
                ``runtime.threads: auto``; see :meth:`index`).

        Example:
            >>> from gl_retrieval.ingest.sources import Document
            >>> pipe.index_documents([Document("d1", "BM25 is lexical.")])  # doctest: +SKIP
        """
        return self._write(
            functools.partial(index_documents, documents),
            threads=threads,
            rebuild=rebuild,
            prune=prune,
            show_progress=want_progress(show_progress),
        )

    def _write(
        self, run: Callable[..., IndexSummary], *, threads: int | None, **options: bool
    ) -> IndexSummary:
        """Run one indexing function under the storage's writer lock, with the bulk threads
        (:func:`~gl_retrieval.models.runtimes.resolve_threads` ``bulk=True``), then drop the
        loaded index so the next query sees the new commit."""
        from gl_retrieval.models.runtimes import resolve_threads

        n = resolve_threads(self._config.runtime.threads, bulk=True) if threads is None else threads
        with self._write_lock, self.storage.write_lock(), self.embedder.bulk_threads(n):
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

    def request(
        self,
        queries: Sequence[str],
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> SearchRequest:
        """Check and parse a request once (the entry of every query path).

        Raises:
            QueryError: a query, ``top_k`` or ``top_n`` is not acceptable.
            FilterError: a filter is malformed, names a key no chunk has, or has a value of a
                kind the key never holds. Checked against the loaded index's metadata, or
                before the first load against :meth:`Storage.metadata_schema`, so no model
                loads for it.
        """
        req = check_request(
            queries,
            filters=filters,
            top_k=top_k,
            top_n=top_n,
            default_top_k=self._config.retriever.top_k,
        )
        if req.filters is not None:
            handle = self._handle  # loading one would load the embedder: not for this check
            schema = self.storage.metadata_schema() if handle is None else index_schema(handle)
            check_filters(req.filters, schema)
        return req

    def stages(
        self, *, retriever: RetrieverConfig | None = None, shared_nodes: bool = False
    ) -> TwoStage:
        """The two stages over the index loaded now (loading it on first use).

        Args:
            retriever: Another first-stage setting over the same index (``eval --modes``);
                default: the config's ``retriever``.
            shared_nodes: The caller only reads the results' nodes (``serve``).
        """
        return TwoStage(
            storage=self.storage,
            handle=self._load_handle(),
            retriever=retriever or self._config.retriever,
            reranker=self.reranker,
            shared_nodes=shared_nodes,
        )

    def as_retriever(
        self,
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> TwoStageRetriever:
        """A LlamaIndex retriever: first stage ``top_k``, then the reranker (if any) to ``top_n``.

        Each call runs on the index loaded at that moment (a ``refresh`` between two calls is
        seen by the second).

        Args:
            filters: Metadata filters applied before ``top_k`` is taken, in every mode:
                ``MetadataFilters``, strings like ``["ticker=PENDLE", "date<2026-01-01"]`` or
                a mapping like ``{"ticker": "PENDLE"}`` (see :mod:`gl_retrieval.retrieval.filters`).
            top_k: Candidates to retrieve; default ``retriever.top_k``.
            top_n: Results to return; default ``reranker.top_n`` (or all ``top_k`` without one).

        Raises:
            QueryError: ``top_k`` or ``top_n`` is not acceptable.
            FilterError: a filter is malformed, or cannot match this index.
        """
        req = self.request((), filters=filters, top_k=top_k, top_n=top_n)
        return TwoStageRetriever(self.stages, embed=self.embedder.embed_queries, request=req)

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

        Raises:
            QueryError: the query, ``top_k`` or ``top_n`` is not acceptable.
            FilterError: a filter is malformed, or cannot match this index.

        Example:
            >>> hits = pipe.retrieve("how are chunks measured?", top_n=3)
            >>> len(hits), hits[0].score_kind
            (3, 'cosine')
        """
        (hits,) = self.retrieve_batch([query], filters=filters, top_k=top_k, top_n=top_n)
        return hits

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
    ) -> list[RankedNode]:
        """The first stage alone: ``top_k`` candidates for ``query``, not reranked.

        Args:
            query: The query text.
            embedding: The query's vector (from :meth:`GLEmbedding.embed_queries`); computed
                here when None.
            filters: Metadata filters, as for :meth:`retrieve`.
            top_k: Candidates to retrieve; default ``retriever.top_k``.
        """
        req = self.request([query], filters=filters, top_k=top_k)
        stages = self.stages()
        vectors = None
        if stages.needs_vectors:
            vectors = [embedding] if embedding is not None else self.embedder.embed_queries([query])
        return stages.candidates(req, vectors)[0]

    def retrieve_batch(
        self,
        queries: Sequence[str],
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
    ) -> list[list[RankedNode]]:
        """:meth:`retrieve` for many queries: one embed call for all of them, one rerank call.

        Results equal ``[pipe.retrieve(q, ...) for q in queries]`` (to float tolerance).

        Args:
            queries: The query texts.
            filters: Metadata filters applied to every query.
            top_k: Candidates per query.
            top_n: Results per query.

        Returns:
            One result list per query, in the order of ``queries``.

        Example:
            >>> a, b = pipe.retrieve_batch(["what is BM25?", "what does a reranker do?"])
            >>> len(a) == len(b) == pipe.config.retriever.top_k
            True
        """
        return self.run(self.request(queries, filters=filters, top_k=top_k, top_n=top_n))

    def run(self, request: SearchRequest) -> list[list[RankedNode]]:
        """Run a request checked by :meth:`request` through both stages: one embed call for
        all its queries, one rerank call for all their candidates.

        Example:
            >>> req = pipe.request(["what is BM25?"], top_n=2)
            >>> [len(hits) for hits in pipe.run(req)]
            [2]
        """
        if not request.queries:
            return []
        return self.stages().run(request, embed=self.embedder.embed_queries)

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

    def as_query_engine(
        self,
        *,
        llm: LLM | None = None,
        response_mode: str = "compact",
        streaming: bool = False,
        text_qa_template: Any = None,
        refine_template: Any = None,
        node_postprocessors: Sequence[BaseNodePostprocessor] = (),
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
        **synth_kwargs: Any,
    ) -> RetrieverQueryEngine:
        """LlamaIndex's own ``RetrieverQueryEngine`` over the two stages.

        The LLM is ``llm``, else the config's ``llm`` section, else none: the engine is then
        retrieval-only (no model is ever called, no silent OpenAI fallback), and
        ``print(response)`` lists the sources. LlamaIndex's global ``Settings`` is never read.

        Args:
            llm: Any LlamaIndex ``LLM``, for this engine only.
            response_mode: LlamaIndex's response mode (``compact``, ``refine``,
                ``tree_summarize``, ...).
            streaming: ``query`` returns LlamaIndex's ``StreamingResponse`` (``response_gen``,
                ``source_nodes``); ``aquery`` its async form.
            text_qa_template: Replaces LlamaIndex's question-answering prompt.
            refine_template: Replaces LlamaIndex's refine prompt.
            node_postprocessors: Run on the reranked results before the LLM sees them.
            filters: Metadata filters, as for :meth:`retrieve`.
            top_k: Candidates to retrieve.
            top_n: Sources handed on.
            **synth_kwargs: More ``get_response_synthesizer`` arguments.

        Example:
            >>> engine = pipe.as_query_engine(top_n=2)
            >>> print(engine.query("what is BM25?")).splitlines()[0]  # doctest: +SKIP
            >>> str(engine.query("what is BM25?")).splitlines()[0]
            'Retrieval only (the config has no llm section): 2 sources, best first.'
        """
        from gl_retrieval.answers.engines import build_query_engine

        return build_query_engine(
            self.as_retriever(filters=filters, top_k=top_k, top_n=top_n),
            llm=llm or self.llm,
            response_mode=response_mode,
            streaming=streaming,
            text_qa_template=text_qa_template,
            refine_template=refine_template,
            node_postprocessors=node_postprocessors,
            **synth_kwargs,
        )

    def as_chat_engine(
        self,
        *,
        llm: LLM | None = None,
        chat_mode: str = "condense_plus_context",
        memory: BaseMemory | None = None,
        system_prompt: str | None = None,
        chat_history: Sequence[ChatMessage] | None = None,
        node_postprocessors: Sequence[BaseNodePostprocessor] = (),
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
        **kwargs: Any,
    ) -> BaseChatEngine:
        """LlamaIndex's chat engine over the two stages: follow-up questions are condensed with
        the conversation, each turn is retrieved and reranked, and its sources are attached
        (``response.source_nodes``); ``stream_chat`` / ``astream_chat`` stream.

        Args:
            llm: Any LlamaIndex ``LLM``; default: the config's ``llm`` section.
            chat_mode: ``condense_plus_context`` (default), ``context`` or
                ``condense_question`` (see :func:`gl_retrieval.answers.build_chat_engine`).
            memory: The conversation memory; default a buffer sized to the LLM's window.
            system_prompt: Prepended to every turn.
            chat_history: Earlier turns (``ChatMessage``), when ``memory`` is not given.
            node_postprocessors: Run on the reranked results.
            filters: Metadata filters, as for :meth:`retrieve`.
            top_k: Candidates to retrieve per turn.
            top_n: Sources per turn.
            **kwargs: More arguments of the chat engine (``context_prompt``, ...).

        Raises:
            LLMNotConfiguredError: no LLM was passed and the config has no ``llm`` section.

        Example:
            >>> chat = pipe.as_chat_engine(system_prompt="Answer briefly.")  # doctest: +SKIP
            >>> chat.chat("what is BM25?").source_nodes[0].doc_id  # doctest: +SKIP
            >>> chat.stream_chat("and how is it tuned?").print_response_stream()  # doctest: +SKIP
        """
        from gl_retrieval.answers.engines import build_chat_engine

        return build_chat_engine(
            self.as_retriever(filters=filters, top_k=top_k, top_n=top_n),
            llm=self._require_llm(llm, "a chat engine"),
            chat_mode=chat_mode,
            memory=memory,
            system_prompt=system_prompt,
            chat_history=chat_history,
            node_postprocessors=node_postprocessors,
            **kwargs,
        )

    def _require_llm(self, llm: LLM | None, what: str) -> LLM:
        llm = llm or self.llm
        if llm is None:
            raise LLMNotConfiguredError(
                f"{what} needs an LLM, but the config has no `llm` section: add "
                "`llm: {provider: ollama, model: llama3.2}` or pass llm= (retrieval works "
                "without one: use `query`)"
            )
        return llm

    def ask(
        self,
        question: str,
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
        llm: LLM | None = None,
    ) -> Answer:
        """Retrieve (and rerank) sources for ``question`` and have the LLM answer from them.

        Built on :meth:`as_query_engine`: the same retrieval, LlamaIndex's response
        synthesizer. With no source found, no LLM is called.

        Args:
            question: The question.
            filters: Metadata filters, as for :meth:`retrieve`.
            top_k: Candidates to retrieve.
            top_n: Sources handed to the LLM.
            llm: Any LlamaIndex ``LLM``; default: the config's ``llm`` section.

        Returns:
            An :class:`Answer` with the text and the sources it was written from.

        Raises:
            LLMNotConfiguredError: no LLM was passed and the config has no ``llm`` section.
            OllamaError: the Ollama server is down, lacks the model, or timed out.

        Example:
            >>> answer = pipe.ask("when should I switch to pgvector?")  # doctest: +SKIP
            >>> print(answer.answer, [s.doc_id for s in answer.sources])  # doctest: +SKIP
        """
        return self.ask_stream(
            question, filters=filters, top_k=top_k, top_n=top_n, llm=llm, streaming=False
        ).to_answer()

    def ask_stream(
        self,
        question: str,
        *,
        filters: FiltersArg = None,
        top_k: int | None = None,
        top_n: int | None = None,
        llm: LLM | None = None,
        streaming: bool = True,
    ) -> AnswerStream:
        """:meth:`ask`, the answer streamed: the sources are known at once, then iterating the
        result yields the answer's text as the LLM writes it; ``close()`` stops the LLM.

        Example:
            >>> stream = pipe.ask_stream("what is BM25?")  # doctest: +SKIP
            >>> [s.doc_id for s in stream.sources]  # doctest: +SKIP
            >>> for token in stream:  # doctest: +SKIP
            ...     print(token, end="", flush=True)
        """
        from llama_index.core.prompts import PromptTemplate

        from gl_retrieval.answers.engines import ASK_PROMPT, numbered_sources
        from gl_retrieval.answers.llms import guard_stream, llm_errors
        from gl_retrieval.ollama.llm import NO_SOURCES_ANSWER

        model = self._require_llm(llm, "`ask`")
        engine = self.as_query_engine(
            llm=model,
            streaming=streaming,
            text_qa_template=PromptTemplate(ASK_PROMPT),
            filters=filters,
            top_k=top_k,
            top_n=top_n,
        )
        bundle = QueryBundle(query_str=question)
        sources: list[Any] = engine.retrieve(bundle)
        if not sources:
            return AnswerStream(question, [], iter([NO_SOURCES_ANSWER]))
        with llm_errors(model):  # the LLM reads the sources numbered, to cite them
            response = engine.synthesize(bundle, numbered_sources(sources))
        if not streaming:
            return AnswerStream(question, sources, iter([str(response.response or "")]))
        return AnswerStream(question, sources, guard_stream(response.response_gen, llm=model))

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
        return self.storage.verify(extra=check_lexical)

    async def aquery(self, query: str, **kwargs: Any) -> Response:
        """``as_query_engine(**kwargs).aquery(query)``: retrieval (and an LLM answer, if one
        is configured) in a worker thread."""
        engine = await asyncio.to_thread(self.as_query_engine, **kwargs)
        return await engine.aquery(query)  # type: ignore[return-value]

    async def aask(self, question: str, **kwargs: Any) -> Answer:
        """:meth:`ask` in a worker thread."""
        return await asyncio.to_thread(self.ask, question, **kwargs)

    def backends(self, *, settle: bool = False) -> dict[str, dict[str, Any] | None]:
        """What runs the embedder and the reranker, and why: ``backend: auto`` resolved on this
        machine (``BackendChoice.to_dict()``: backend, quantization, precision, reason, CPU tier,
        model and flags, fallbacks, notices, parity verdict); None for a role without a local
        model (no reranker, an Ollama embedder).

        Args:
            settle: Build the embedder and load the reranker first when ``auto`` picked a
                quantized export, so its parity verdict is in: exports and checks it once if
                nothing is cached (what ``models pull`` does). Default: loads nothing; an
                embedder or reranker already loaded reports its settled choice.

        Example:
            >>> cfg = {"embedder": {"model": "packaged:all-MiniLM-L6-v2"}}
            >>> pipe = RetrievalPipeline.from_config(cfg)
            >>> sorted(pipe.backends()["embedder"])[:4]
            ['backend', 'configured', 'cpu_model', 'fallbacks']
        """
        from gl_retrieval.models.backend_choice import resolve_backend
        from gl_retrieval.models.parity import needs_parity

        out: dict[str, dict[str, Any] | None] = {"embedder": None, "reranker": None}
        emb = self._config.embedder
        if emb.provider == "huggingface":
            choice = resolve_backend(
                "embedder", backend=emb.backend, quantization=emb.quantization, device=emb.device
            )
            built = self._embedder
            if built is None and settle and needs_parity(choice):
                built = self.embedder
            out["embedder"] = (built.backend_choice if built else None) or choice.to_dict()
        reranker = self.reranker
        if reranker is not None:
            if settle and needs_parity(reranker.backend_choice):
                reranker.warmup()
            out["reranker"] = reranker.backend_choice.to_dict()
        return out

    def info(self) -> dict[str, Any]:
        """The manifest and counts of the committed index (no model is loaded).

        On the embedded backend every file's size and checksum is checked too (cheap: about
        0.05 s per 100k chunks), so a damaged index raises ``IndexDamagedError`` here as well.
        """
        m = self.storage.read_manifest()
        self.storage.check_files()
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
