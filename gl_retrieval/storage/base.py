"""What every storage backend hands the pipeline: an index, its manifest and its document table."""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, TransformComponent
from llama_index.core.vector_stores.types import (
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from gl_retrieval.storage.manifest import Manifest

__all__ = ["DocRecord", "GenerationCheck", "IndexHandle", "Storage", "index_kwargs"]


class _AsGiven(TransformComponent):
    """The nodes as given: gl_retrieval chunks before the index sees them."""

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return nodes


def index_kwargs(embed_model: BaseEmbedding) -> dict[str, Any]:
    """Everything a ``VectorStoreIndex`` would otherwise take from LlamaIndex's global Settings.

    ``transformations`` is a one-step identity list, not ``[]``: LlamaIndex replaces an empty
    list with ``Settings.transformations``, whose default SentenceSplitter loads tiktoken's
    cl100k table (about 1 s of CPU in every process that creates or loads an index).
    """
    return {
        "embed_model": embed_model,
        "callback_manager": CallbackManager([]),
        "transformations": [_AsGiven()],
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
    #: Id of the committed generation this handle holds (None: a new, uncommitted index).
    generation: str | None = None

    @property
    def vector_store(self) -> Any:
        return self.storage_context.vector_store


#: A check of one embedded generation directory beyond the storage's own files (the BM25 side
#: is retrieval's): ``(generation dir, chunk ids) -> [(path, problem), ...]``.
GenerationCheck = Callable[[Path, Sequence[str]], Iterable[tuple[Path, str]]]


class Storage(abc.ABC):
    """A place an index lives: a directory (embedded) or a database (postgres).

    Everything a caller may use is declared here, and both backends implement all of it
    (``tests/test_storage_contract.py`` runs one table of calls against each): callers never
    probe a backend with ``getattr``, call its private methods or test its concrete type.
    """

    #: Human-readable location for messages (never contains a password).
    location: str

    # -- reading ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def exists(self) -> bool:
        """True when an index has been committed here."""

    @abc.abstractmethod
    def read_manifest(self) -> Manifest:
        """The committed manifest, without loading the index.

        Raises:
            IndexNotFoundError: nothing is committed.
        """

    @abc.abstractmethod
    def read_documents(self) -> dict[str, DocRecord]:
        """The committed document table (doc id -> content hash and chunk ids), without the
        chunks.

        Raises:
            IndexNotFoundError: nothing is committed.
        """

    @abc.abstractmethod
    def metadata_schema(self) -> Mapping[str, frozenset[str]]:
        """Which kinds of value (``number``, ``date``, ``string``, ``bool``, ``list``, ...: see
        :func:`gl_retrieval.storage.filters.kind`) each metadata key holds in the committed
        index, read without loading it or any model: filters are checked against it before a
        model loads.

        Raises:
            IndexNotFoundError: nothing is committed.
        """

    @abc.abstractmethod
    def committed_generation(self) -> str | None:
        """Id of the generation committed now (None: nothing committed). Cheap enough to poll:
        a file read (embedded) or one small row (postgres)."""

    @abc.abstractmethod
    def load(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        """Load the committed index; ``handle.generation`` says which generation it is.

        Raises:
            IndexNotFoundError: nothing is committed.
        """

    @abc.abstractmethod
    def search(
        self, handle: IndexHandle, query: VectorStoreQuery, *, shared_nodes: bool = False
    ) -> VectorStoreQueryResult:
        """Run a vector query on a loaded index (the dense first stage): the nodes, with their
        text, and their similarities, best first.

        Args:
            handle: A handle this storage loaded.
            query: The query (vector, ``similarity_top_k``, filters).
            shared_nodes: The caller only reads the nodes, so a backend may hand out nodes
                shared between calls (the embedded store decodes each once); without it every
                call gets nodes of its own.
        """

    @abc.abstractmethod
    def filter_mask(
        self, handle: IndexHandle, filters: MetadataFilters, *, node_ids: Sequence[str]
    ) -> np.ndarray:
        """Which of ``node_ids`` pass ``filters``, as a boolean array in that order: the
        backend's one filter evaluator, for a first stage that ranks the rows itself (BM25)."""

    @abc.abstractmethod
    def stored_vectors(self, handle: IndexHandle, node_ids: Sequence[str]) -> np.ndarray | None:
        """The stored vectors of ``node_ids``, in that order, or None where this backend does
        not read them back cheaply.

        Raises:
            KeyError: a node id is not in the index.
        """

    # -- checking --------------------------------------------------------------------------------

    @abc.abstractmethod
    def check_files(self) -> None:
        """A quick integrity check of the committed index, loading nothing (``info`` runs it).

        Raises:
            IndexDamagedError: something is damaged (the message names it and the way back).
        """

    @abc.abstractmethod
    def verify(self, *, extra: GenerationCheck | None = None) -> dict[str, Any]:
        """Check the committed index completely, loading no model.

        Args:
            extra: More checks of an embedded generation directory (retrieval's BM25 side);
                a backend without generation directories does not call it.

        Returns:
            The ``verify --json`` shape (docs/operations.md): ``ok``, ``backend``,
            ``generation``, ``problems`` (``file``, ``problem``), ``warnings``, ``recovery``.

        Raises:
            IndexNotFoundError: nothing is committed.
        """

    @abc.abstractmethod
    def recovery(self) -> str:
        """How to get back to a working index (an intact older generation, or a rebuild)."""

    # -- writing ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def new(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        """An empty index, not yet committed."""

    @abc.abstractmethod
    def write_lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold this index's writer lock: one ``index`` run at a time, across processes.

        Raises:
            StorageError: another process holds it.
        """

    @abc.abstractmethod
    def check_space(self, handle: IndexHandle, *, adding_bytes: int) -> None:
        """Check, before the embedding starts, that a commit of ``handle`` grown by about
        ``adding_bytes`` fits where this storage writes (a full disk found up front, not after
        the work).

        Raises:
            StorageError: it does not fit; the message names the path, the bytes needed and
                free, and what to do.
        """

    @abc.abstractmethod
    def commit(self, handle: IndexHandle) -> None:
        """Make ``handle`` the committed index, atomically (and set ``handle.generation``)."""
