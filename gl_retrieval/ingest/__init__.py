"""Ingest: sources -> documents -> chunks -> an incremental, atomic commit to storage.

Takes the config's ``sources`` and ``chunking``, an embedder (for its tokenizer and vectors) and a
storage backend; hands on a committed index generation and an :class:`IndexSummary` of what
changed.
"""

from __future__ import annotations

from gl_retrieval.ingest.indexer import IndexSummary, index_documents, index_sources
from gl_retrieval.ingest.sources import Document, Skipped, read_jsonl, read_sources

__all__ = [
    "Document",
    "IndexSummary",
    "Skipped",
    "index_documents",
    "index_sources",
    "read_jsonl",
    "read_sources",
]
