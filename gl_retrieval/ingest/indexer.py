"""Indexing: read sources, embed only what changed, commit atomically.

Re-running :func:`index_sources` embeds only new or changed documents: a document is unchanged
when the hash of its text plus user-facing metadata (never file mtimes) equals the one recorded
for its id in the committed index. ``prune`` removes documents that are gone from the sources.

The work is ordered for throughput:

1. Only the committed manifest and document table are read to decide what changed, so a run
   with nothing to do loads neither the model nor the vectors.
2. Changed documents are chunked as a stream, in the model's own tokenizer, a bounded window of
   text at a time (:meth:`~gl_retrieval.ingest.chunking.Chunker.iter_split`).
3. The chunks are embedded in groups of ``GROUP_WINDOWS`` windows of ``8 * batch_size`` chunks,
   longest first within a group, so batches carry little padding (sentence-transformers only
   sorts within one ``encode`` call) and a progress bar can follow the work.
4. Each embedded window goes straight to the vector store (``vector_store.add``), with only the
   bookkeeping LlamaIndex's ``load_index_from_storage`` needs, instead of
   ``VectorStoreIndex.insert_nodes`` (which re-checks embeddings and copies every node twice),
   and the chunks are dropped; a document's text is dropped once its last chunk is embedded.

So the memory an ``index`` run adds on top of what the index itself holds (chunk text, vectors)
and the documents read is bounded by one tokenizer window and one group of chunks, whatever the
size of a file (docs/hostile-inputs.md has the measurements).

Nothing is committed until everything succeeded, so a failure (or ``kill -9``) leaves the
previous index as it was.

Example:
    >>> from gl_retrieval import RetrievalPipeline
    >>> pipe = RetrievalPipeline.from_config("examples/configs/demo.yaml")  # doctest: +SKIP
    >>> summary = pipe.index()  # doctest: +SKIP
    >>> summary.to_dict()["documents"]  # doctest: +SKIP
    {'added': 0, 'updated': 1, 'unchanged': 49, 'deleted': 0, 'skipped': 0}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gl_retrieval.config import PipelineConfig
from gl_retrieval.embedders.base import GLEmbedding
from gl_retrieval.errors import EmbeddingError, IndexNotFoundError
from gl_retrieval.ingest.chunking import Chunk, Chunker, ChunkPlan, effective_chunk_size
from gl_retrieval.ingest.sources import Document, Skipped, read_sources
from gl_retrieval.storage import (
    DocRecord,
    IndexHandle,
    Manifest,
    Storage,
    check_compatible,
)

if TYPE_CHECKING:
    from llama_index.core.schema import TextNode

__all__ = ["IndexSummary", "index_documents", "index_sources"]

log = logging.getLogger(__name__)

#: Chunks per ``embed_documents`` call, in units of the embedder's batch size.
WINDOW_BATCHES = 8
#: Chunks held at once (sorted longest first among themselves), in windows.
GROUP_WINDOWS = 8
#: What a commit stores per character of new text, and per chunk beyond its vector, for the
#: free-space check before embedding (:func:`_expected_bytes`; see docs/hostile-inputs.md).
BYTES_PER_CHAR = 3
BYTES_PER_CHUNK = 1024


@dataclass
class IndexSummary:
    """What one `index` run did.

    ``timings`` splits ``seconds`` into phases (read, open, model, chunk, embed, store, commit);
    it is logged at INFO level by :func:`index_documents` and is not part of :meth:`to_dict`.
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    chunks_embedded: int = 0
    seconds: float = 0.0
    #: Documents gone from the sources but kept in the index (no ``prune``).
    kept_gone: int = 0
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The `index --json` shape."""
        return {
            "documents": {
                "added": self.added,
                "updated": self.updated,
                "unchanged": self.unchanged,
                "deleted": self.deleted,
                "skipped": len(self.skipped),
            },
            "chunks_embedded": self.chunks_embedded,
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        """One human line: the documents, then the chunks and the time (the model load apart).

        Example:
            >>> IndexSummary(added=1, chunks_embedded=1, seconds=2.5, kept_gone=2,
            ...              timings={"model": 2.0}).line()  # doctest: +NORMALIZE_WHITESPACE
            '1 added, 0 updated, 0 unchanged, 0 deleted (2 gone from the sources, kept: --prune
            removes them), 0 skipped; 1 chunk embedded in 0.5s (+2.0s loading the model)'
        """
        gone = (
            f" ({self.kept_gone} gone from the sources, kept: --prune removes "
            f"{'it' if self.kept_gone == 1 else 'them'})"
            if self.kept_gone
            else ""
        )
        model_s = self.timings.get("model", 0.0)
        load = f" (+{model_s:.1f}s loading the model)" if model_s >= 0.05 else ""
        n = self.chunks_embedded
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.deleted} deleted{gone}, {len(self.skipped)} skipped; "
            f"{n} chunk{'' if n == 1 else 's'} embedded in "
            f"{max(0.0, self.seconds - model_s):.1f}s{load}"
        )

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to ``timings[phase]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t


def _static_fingerprint(embedder: GLEmbedding) -> dict[str, Any]:
    # The embedder's identity without loading it (``dimension`` needs the model).
    return {
        "provider": embedder.provider,
        "model": embedder.model_name,
        "query_prefix": embedder.query_prefix,
        "document_prefix": embedder.document_prefix,
        "normalize": embedder.normalize,
        **({"revision": embedder.revision} if hasattr(embedder, "revision") else {}),
    }


def _committed(
    storage: Storage, *, config: PipelineConfig, embedder: GLEmbedding
) -> tuple[Manifest | None, dict[str, DocRecord]]:
    """The committed manifest and document table (checked against the config), cheaply."""
    try:
        manifest = storage.read_manifest()
    except IndexNotFoundError:
        return None, {}
    check_compatible(
        manifest,
        embedder=_static_fingerprint(embedder),
        chunking=config.chunking.model_dump(),
        where=storage.location,
    )
    return manifest, storage.read_documents()


def _add_nodes(handle: IndexHandle, nodes: list[TextNode]) -> None:
    """Add embedded nodes to the index without ``insert_nodes``' per-node copies and checks.

    Does what ``VectorStoreIndex._add_nodes_to_index`` does for text nodes: the vector store
    gets the nodes; a store that keeps no text (``stores_text=False``) also needs them, without
    their embeddings, in the docstore and the index struct.
    """
    if not nodes:
        return
    index = handle.index
    store = handle.storage_context.vector_store
    ids = store.add(nodes)
    if not store.stores_text:
        struct = index.index_struct
        for node, new_id in zip(nodes, ids, strict=True):
            node.embedding = None  # the store holds it; the docstore keeps text and metadata
            struct.add_node(node, text_id=new_id)
        index.docstore.add_documents(nodes, allow_update=True)
    handle.storage_context.index_store.add_index_struct(index.index_struct)


def _groups(chunks: Iterable[Chunk], size: int) -> Iterator[tuple[list[Chunk], int]]:
    """``chunks`` in lists of at most ``size``, each with the characters of the documents it
    completes (for the progress bar: the counts add up to the documents' length)."""
    group: list[Chunk] = []
    done = 0  # characters of the documents credited to this group
    doc: Document | None = None
    pos = 0
    for c in chunks:
        if c.doc is not doc:
            if doc is not None:
                done += len(doc.text) - pos
            doc, pos = c.doc, 0
        done += max(0, c.end - pos)
        pos = max(pos, c.end)
        group.append(c)
        if len(group) >= size:
            yield group, done
            group, done = [], 0
    if doc is not None:
        done += len(doc.text) - pos
    if group or done:
        yield group, done


def _embed_into(
    handle: IndexHandle,
    chunks: Iterable[Chunk],
    *,
    embedder: GLEmbedding,
    summary: IndexSummary,
    bar: Any,
    node_ids: dict[str, list[str]],
) -> None:
    """Embed the stream ``chunks`` group by group, longest first within a group, and add each
    window to the index; ``node_ids`` gets each document's node ids."""
    window = max(1, int(embedder.embed_batch_size)) * WINDOW_BATCHES
    for group, chars in _groups(chunks, window * GROUP_WINDOWS):
        # Refuse over-long chunks before embedding them, naming them.
        embedder.check_lengths([c.text for c in group], ids=[c.node_id for c in group])
        for c in group:
            node_ids.setdefault(c.doc.doc_id, []).append(c.node_id)
        group.sort(key=lambda c: c.tokens, reverse=True)
        shown = 0
        for w in range(0, len(group), window):
            part = group[w : w + window]
            with summary.timed("embed"):
                vectors = embedder.embed_documents([c.text for c in part], show_progress=False)
                if vectors.ndim != 2 or vectors.shape[0] != len(part):
                    raise EmbeddingError(
                        f"embedder {embedder.model_name!r} returned an array of shape "
                        f"{tuple(vectors.shape)} for {len(part)} chunks"
                    )
                _require_finite(vectors, part, model=embedder.model_name)
            with summary.timed("store"):
                rows = vectors.tolist()
                _add_nodes(
                    handle, [c.to_node(embedding=row) for c, row in zip(part, rows, strict=True)]
                )
            summary.chunks_embedded += len(part)
            step = chars * (w + len(part)) // len(group) - shown
            bar.update(step)
            shown += step
        bar.update(chars - shown)  # all of it when the group has no chunks (blank documents)


def _expected_bytes(chars: int, plan: ChunkPlan, dimension: int) -> int:
    """About what ``chars`` characters of new text add to a committed index: the chunk text
    (overlaps and JSON escaping included) and the BM25 side, ``BYTES_PER_CHAR`` a character,
    and per chunk (one every 3 characters a token, a generous count) its vector and its node's
    ids, metadata and relationships."""
    chunks = chars // max(1, 3 * (plan.chunk_size - plan.chunk_overlap)) + 1
    return BYTES_PER_CHAR * chars + chunks * (4 * dimension + BYTES_PER_CHUNK)


def _drain(docs: list[Document]) -> Iterator[Document]:
    """Yield and forget ``docs`` from the front, so each document's text can be freed once its
    chunks are embedded (the list is empty afterwards)."""
    docs.reverse()
    while docs:
        yield docs.pop()


def _timed(items: Iterator[Chunk], summary: IndexSummary, phase: str) -> Iterator[Chunk]:
    """``items``, with the time spent producing them added to ``summary.timings[phase]``."""
    while True:
        with summary.timed(phase):
            item = next(items, None)
        if item is None:
            return
        yield item


def _require_finite(vectors: Any, part: Sequence[Chunk], *, model: str) -> None:
    """Refuse NaN or infinite vectors before they reach any store (every backend)."""
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(np.asarray(vectors, dtype=np.float32)).all(axis=1))
    if len(bad):
        names = ", ".join(repr(part[i].node_id) for i in bad[:3])
        raise EmbeddingError(
            f"embedder {model!r} returned NaN or infinite vectors for {len(bad)} chunks "
            f"(e.g. {names}); nothing was committed. Check the embedder (on a GPU, try "
            "`device: cpu` to rule out an fp16 overflow)"
        )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(*, total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return _NoBar()
    from gl_retrieval._progress import make_bar

    return make_bar(total=total, desc="embedding", unit="char") or _NoBar()


def index_documents(
    documents: Iterable[Document],
    *,
    config: PipelineConfig,
    embedder: GLEmbedding,
    storage: Storage,
    rebuild: bool = False,
    prune: bool = False,
    show_progress: bool = False,
    skipped: list[Skipped] | None = None,
    on_handle: Callable[[IndexHandle], None] | None = None,
) -> IndexSummary:
    """Bring the index at ``storage`` up to date with ``documents``.

    Args:
        documents: The full current set of documents (``prune`` deletes any others); may be a
            lazy iterable (reading then counts in ``timings["read"]``).
        config: The pipeline config (chunking, retriever settings for the manifest).
        embedder: The embedder (loaded only if something needs embedding).
        storage: Where the index lives. Callers that may run concurrently hold its write lock.
        rebuild: Ignore the existing index and embed everything again into a fresh one.
        prune: Delete indexed documents that are not in ``documents``.
        show_progress: Show a progress bar (stderr) while embedding.
        skipped: Documents the readers skipped; the list is read after ``documents`` is
            consumed, so a lazy reader may still append to it.
        on_handle: Called with the updated handle before commit (e.g. to refresh BM25).

    Returns:
        The run's :class:`IndexSummary`.

    Raises:
        IndexMismatchError: the committed index was built with another embedder or chunking.
        EmbeddingError: the embedder returned the wrong number of vectors.

    Example:
        >>> docs = [Document("a", "BM25 ranks by term frequency.")]
        >>> s = index_documents(docs, config=cfg, embedder=emb, storage=st)  # doctest: +SKIP
        >>> s.to_dict()["documents"]["added"]  # doctest: +SKIP
        1
    """
    t0 = time.perf_counter()
    summary = IndexSummary()
    with summary.timed("open"):
        manifest, old = (
            (None, {}) if rebuild else _committed(storage, config=config, embedder=embedder)
        )
    current: set[str] = set()
    changed: list[Document] = []
    with summary.timed("read"):
        for doc in documents:
            current.add(doc.doc_id)
            rec = old.get(doc.doc_id)
            if rec is None:
                summary.added += 1
                changed.append(doc)
            elif rec.hash != doc.content_hash:
                summary.updated += 1
                changed.append(doc)
            else:
                summary.unchanged += 1
    summary.skipped = list(skipped or [])
    gone = [d for d in old if d not in current]
    summary.kept_gone, gone = (0, gone) if prune else (len(gone), [])
    summary.deleted = len(gone)

    if not changed and not gone and manifest is not None:
        return _finish(summary, t0)  # nothing to do: no model load, no vectors read, no write

    with summary.timed("open"):
        handle = (
            storage.load(embed_model=embedder)
            if manifest is not None
            else storage.new(embed_model=embedder)
        )
    with summary.timed("store"):
        for doc_id in [d.doc_id for d in changed if d.doc_id in old] + gone:
            handle.index.delete_ref_doc(doc_id, delete_from_docstore=True)
            handle.documents.pop(doc_id, None)
    plan: ChunkPlan | None = None
    records = [(d.doc_id, d.content_hash, d.source) for d in changed]
    node_ids: dict[str, list[str]] = {}
    if changed:
        with summary.timed("model"):
            embedder.warmup()
        with summary.timed("chunk"):
            plan = effective_chunk_size(config.chunking, embedder)
            if plan.warning:
                summary.warnings.append(plan.warning)
        chars = sum(len(d.text) for d in changed)
        # A full disk is found now, before the embedding, not at the commit after it.
        storage.check_space(handle, adding_bytes=_expected_bytes(chars, plan, embedder.dimension))
        chunks = _timed(Chunker(plan, embedder).iter_split(_drain(changed)), summary, "chunk")
        bar = _progress(total=chars, enabled=show_progress)
        try:
            _embed_into(
                handle, chunks, embedder=embedder, summary=summary, bar=bar, node_ids=node_ids
            )
        finally:
            bar.close()
    for doc_id, content_hash, source in records:
        handle.documents[doc_id] = DocRecord(
            hash=content_hash, nodes=node_ids.get(doc_id, []), source=source
        )
    chunks_added = summary.chunks_embedded > 0
    fingerprint = embedder.fingerprint() if (chunks_added or handle.manifest is None) else None
    handle.manifest = _next_manifest(
        handle.manifest, fingerprint=fingerprint, config=config, plan=plan, handle=handle
    )
    if on_handle is not None:
        on_handle(handle)
    with summary.timed("commit"):
        storage.commit(handle)
    return _finish(summary, t0)


def _finish(summary: IndexSummary, t0: float) -> IndexSummary:
    summary.seconds = time.perf_counter() - t0
    if summary.skipped:
        log.info("skipped %d documents: %s", len(summary.skipped), summary.skipped)
    log.info(
        "index: %s; timings %s",
        json.dumps(summary.to_dict()),
        json.dumps({k: round(v, 3) for k, v in summary.timings.items()}),
    )
    return summary


def _next_manifest(
    old: Manifest | None,
    *,
    fingerprint: dict[str, Any] | None,
    config: PipelineConfig,
    plan: ChunkPlan | None,
    handle: IndexHandle,
) -> Manifest:
    chunking = dict(old.chunking) if old else {}
    if plan is not None:
        chunking = {
            "configured_chunk_size": config.chunking.chunk_size,
            "configured_chunk_overlap": config.chunking.chunk_overlap,
            "chunk_size": plan.chunk_size,
            "chunk_overlap": plan.chunk_overlap,
            "tokenizer": "embedder",
        }
    embedder = fingerprint if fingerprint is not None else (old.embedder if old else {})
    manifest = Manifest(embedder=embedder, chunking=chunking)
    if old is not None:
        manifest.created_at = old.created_at
    manifest.documents = len(handle.documents)
    manifest.chunks = sum(len(r.nodes) for r in handle.documents.values())
    return manifest


def index_sources(
    *,
    config: PipelineConfig,
    embedder: GLEmbedding,
    storage: Storage,
    rebuild: bool = False,
    prune: bool = False,
    show_progress: bool = False,
    on_handle: Callable[[IndexHandle], None] | None = None,
) -> IndexSummary:
    """Index the config's ``sources`` (see :func:`index_documents`).

    Unreadable documents (binary, not UTF-8, empty) are skipped and listed in
    ``summary.skipped``; they never abort the run.
    """
    skipped: list[Skipped] = []
    return index_documents(
        read_sources(config.sources, skipped),
        config=config,
        embedder=embedder,
        storage=storage,
        rebuild=rebuild,
        prune=prune,
        show_progress=show_progress,
        skipped=skipped,
        on_handle=on_handle,
    )
