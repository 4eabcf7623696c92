"""Indexing: read sources, embed only what changed, commit atomically.

Re-running :func:`index_sources` embeds only new or changed documents (by a hash of text plus
user-facing metadata). ``prune`` removes documents that are gone from the sources. Nothing is
committed until everything succeeded, so a failure (or ``kill -9``) leaves the previous index.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gl_retrieval.chunking import Chunker, effective_chunk_size
from gl_retrieval.config import PipelineConfig
from gl_retrieval.embedders.base import GLEmbedding
from gl_retrieval.errors import EmbeddingError, IndexNotFoundError
from gl_retrieval.sources import Document, Skipped, read_sources
from gl_retrieval.storage import DocRecord, IndexHandle, Manifest, Storage, check_compatible

__all__ = ["IndexSummary", "index_documents", "index_sources"]


@dataclass
class IndexSummary:
    """What one `index` run did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    chunks_embedded: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

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
        """One human line."""
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.deleted} deleted, {len(self.skipped)} skipped; "
            f"{self.chunks_embedded} chunks embedded in {self.seconds:.1f}s"
        )


def _static_fingerprint(embedder: GLEmbedding) -> dict[str, Any]:
    return {
        "provider": embedder.provider,
        "model": embedder.model_name,
        "query_prefix": embedder.query_prefix,
        "document_prefix": embedder.document_prefix,
        "normalize": embedder.normalize,
        **({"revision": embedder.revision} if hasattr(embedder, "revision") else {}),
    }


def open_for_update(
    storage: Storage, *, config: PipelineConfig, embedder: GLEmbedding, rebuild: bool
) -> IndexHandle:
    """Load the committed index for updating (checking it matches), or start an empty one."""
    if rebuild:
        return storage.new(embed_model=embedder)
    try:
        manifest = storage.read_manifest()
    except IndexNotFoundError:
        return storage.new(embed_model=embedder)
    check_compatible(
        manifest,
        embedder=_static_fingerprint(embedder),
        chunking=config.chunking.model_dump(),
        where=storage.location,
    )
    return storage.load(embed_model=embedder)


def index_documents(
    documents: Any,
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
    """Bring the index at ``storage`` up to date with ``documents`` (an iterable of Document).

    Args:
        documents: The full current set of documents (``prune`` deletes any others).
        config: The pipeline config (chunking, retriever settings for the manifest).
        embedder: The embedder (loaded only if something needs embedding).
        storage: Where the index lives.
        rebuild: Ignore the existing index and embed everything again.
        prune: Delete indexed documents that are not in ``documents``.
        show_progress: Show a progress bar while embedding.
        skipped: Documents the readers already skipped (reported in the summary).
        on_handle: Called with the updated handle before commit (e.g. to refresh BM25).

    Returns:
        The run's :class:`IndexSummary`.
    """
    t0 = time.perf_counter()
    summary = IndexSummary(skipped=list(skipped or []))
    handle = open_for_update(storage, config=config, embedder=embedder, rebuild=rebuild)
    old = handle.documents
    current: dict[str, Document] = {}
    changed: list[Document] = []
    for doc in documents:
        current[doc.doc_id] = doc
        rec = old.get(doc.doc_id)
        if rec is None:
            summary.added += 1
            changed.append(doc)
        elif rec.hash != doc.content_hash:
            summary.updated += 1
            changed.append(doc)
        else:
            summary.unchanged += 1
    gone = [d for d in old if d not in current] if prune else []
    summary.deleted = len(gone)

    if not changed and not gone and handle.manifest is not None:
        summary.seconds = time.perf_counter() - t0
        return summary  # nothing to do: no model load, no write

    plan = effective_chunk_size(config.chunking, embedder) if changed else None
    if plan is not None and plan.warning:
        summary.warnings.append(plan.warning)
    nodes = Chunker(plan, embedder).chunk(changed) if plan is not None else []
    check = getattr(embedder, "check_lengths", None)
    if nodes and check is not None:  # refuse over-long chunks up front, naming them
        check([n.text for n in nodes], ids=[n.node_id for n in nodes])
    if nodes:
        vectors = embedder.embed_documents([n.text for n in nodes], show_progress=show_progress)
        if vectors.shape[0] != len(nodes):
            raise EmbeddingError(
                f"embedder returned {vectors.shape[0]} vectors for {len(nodes)} chunks"
            )
        for node, vec in zip(nodes, vectors, strict=True):
            node.embedding = vec.tolist()
    summary.chunks_embedded = len(nodes)

    index = handle.index
    for doc_id in [d.doc_id for d in changed if d.doc_id in old] + gone:
        index.delete_ref_doc(doc_id, delete_from_docstore=True)
        handle.documents.pop(doc_id, None)
    if nodes:
        index.insert_nodes(nodes)
    by_doc: dict[str, list[str]] = {}
    for n in nodes:
        by_doc.setdefault(n.ref_doc_id or "", []).append(n.node_id)
    for doc in changed:
        handle.documents[doc.doc_id] = DocRecord(
            hash=doc.content_hash, nodes=by_doc.get(doc.doc_id, []), source=doc.source
        )

    fingerprint = embedder.fingerprint() if (nodes or handle.manifest is None) else None
    handle.manifest = _next_manifest(
        handle.manifest, fingerprint=fingerprint, config=config, plan=plan, handle=handle
    )
    if on_handle is not None:
        on_handle(handle)
    storage.commit(handle)
    summary.seconds = time.perf_counter() - t0
    return summary


def _next_manifest(
    old: Manifest | None,
    *,
    fingerprint: dict[str, Any] | None,
    config: PipelineConfig,
    plan: Any,
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
    """Index the config's ``sources`` (see :func:`index_documents`)."""
    skipped: list[Skipped] = []
    docs = list(read_sources(config.sources, skipped))
    return index_documents(
        docs,
        config=config,
        embedder=embedder,
        storage=storage,
        rebuild=rebuild,
        prune=prune,
        show_progress=show_progress,
        skipped=skipped,
        on_handle=on_handle,
    )
