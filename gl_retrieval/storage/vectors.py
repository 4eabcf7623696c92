"""Which vector store the embedded backend uses inside a generation directory."""

from __future__ import annotations

from pathlib import Path

from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import BasePydanticVectorStore

__all__ = ["load_vector_store", "new_vector_store"]

VECTOR_STORE_FILE = "default__vector_store.json"


def new_vector_store() -> BasePydanticVectorStore:
    return SimpleVectorStore()


def load_vector_store(gen: Path) -> BasePydanticVectorStore:
    return SimpleVectorStore.from_persist_path(str(gen / VECTOR_STORE_FILE))
