"""What every storage backend hands the pipeline: an index, its manifest and its document table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager

from gl_retrieval.storage.manifest import Manifest

__all__ = ["DocRecord", "IndexHandle", "Storage", "index_kwargs"]


def index_kwargs(embed_model: BaseEmbedding) -> dict[str, Any]:
    """Everything a ``VectorStoreIndex`` would otherwise take from LlamaIndex's global Settings."""
    return {
        "embed_model": embed_model,
        "callback_manager": CallbackManager([]),
        "transformations": [],
    }


@dataclass
class DocRecord:
    """One source document as indexed: its content hash and the ids of its chunks."""

    hash: str
    nodes: list[str]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "nodes": self.nodes, "source": self.source}


def documents_to_json(docs: dict[str, DocRecord]) -> str:
    return json.dumps({k: v.to_dict() for k, v in docs.items()}, separators=(",", ":"))


def documents_from_json(text: str) -> dict[str, DocRecord]:
    return {k: DocRecord(**v) for k, v in json.loads(text).items()}


@dataclass
class IndexHandle:
    """A loaded (or new) index with everything needed to query and update it."""

    index: VectorStoreIndex
    storage_context: StorageContext
    manifest: Manifest | None
    documents: dict[str, DocRecord] = field(default_factory=dict)
    #: Extra per-index state other components persist with the index (e.g. the BM25 side).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def vector_store(self) -> Any:
        return self.storage_context.vector_store


class Storage(Protocol):
    """A place an index lives: a directory (embedded) or a database (postgres)."""

    #: Human-readable location for messages (never contains a password).
    location: str

    def exists(self) -> bool:
        """True when an index has been committed here."""
        ...

    def read_manifest(self) -> Manifest:
        """The committed manifest, without loading the index (raises IndexNotFoundError)."""
        ...

    def load(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        """Load the committed index (raises IndexNotFoundError)."""
        ...

    def new(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        """An empty index, not yet committed."""
        ...

    def commit(self, handle: IndexHandle) -> None:
        """Make ``handle`` the committed index, atomically."""
        ...
