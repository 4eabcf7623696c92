"""Which vector store the embedded backend keeps inside a generation directory."""

from __future__ import annotations

from pathlib import Path

from gl_retrieval.storage.embedded import EmbeddedVectorStore

__all__ = ["VECTOR_STORE_FNAME", "load_vector_store", "new_vector_store"]

#: ``StorageContext.persist(vector_store_fname=...)``: the store's directory is
#: ``<generation>/default__<VECTOR_STORE_FNAME>``.
VECTOR_STORE_FNAME = "vector_store"


def new_vector_store() -> EmbeddedVectorStore:
    return EmbeddedVectorStore()


def load_vector_store(gen: Path) -> EmbeddedVectorStore:
    return EmbeddedVectorStore.from_persist_path(str(gen / f"default__{VECTOR_STORE_FNAME}"))
