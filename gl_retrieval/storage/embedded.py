"""The embedded default vector store: numpy vectors, memory-mapped, with the node text beside them.

:class:`EmbeddedVectorStore` replaces LlamaIndex's ``SimpleVectorStore`` (JSON on disk, a Python
loop per query). It keeps the vectors as a float32 matrix, scores all rows with one matrix-vector
product, evaluates metadata filters on columnar numpy arrays *before* taking the top k, and
persists to a directory that reloads in milliseconds (vectors memory-mapped, text decoded only for
the rows a query returns). ``docs/scaling.md`` has the measurements behind these choices.

Rows are append-only in memory: re-adding a node id marks its old row deleted and appends a new
one; deleted rows are dropped when the store is persisted. The store does no locking, and queries
fill caches lazily (filter columns, the HNSW graph): share one store between threads behind a lock.

Persisted layout (one directory)::

    manifest.json                 commit point: format, settings, file names and sizes
    vectors.<gen>.npy             float32 (n, dim), loaded with mmap_mode="r"
    norms.<gen>.npy               float32 (n,), L2 norm of every vector
    rows.<gen>.json               {"ids": [...], "ref_doc_ids": [...]}
    metadata.<gen>.json (+ spans) one JSON object per row, decoded when a filter needs it
    nodes.<gen>.json (+ spans)    the rest of each node (text, relationships, ...), decoded per hit
    hnsw.<gen>.bin (+ labels)     only with ann="hnsw"

Every file is written under a temporary name, fsync-ed and renamed; ``manifest.json`` is replaced
last and names the generation's files, so a crash mid-persist leaves the previous generation
readable. Files of older generations are removed after the new manifest is in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import fsspec
import numpy as np
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.schema import BaseNode, Document, ImageNode, IndexNode, Node, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)

from gl_retrieval.errors import (
    ConfigError,
    EmbeddingError,
    FilterError,
    IndexDamagedError,
    IndexMismatchError,
    StorageError,
)
from gl_retrieval.storage._files import (
    MANIFEST,
    Generation,
    JsonRows,
    dumps,
    open_generation,
    write_npy_chunks,
)
from gl_retrieval.storage._matrix import VectorRows, top_k
from gl_retrieval.storage.ann import HnswGraph
from gl_retrieval.storage.columns import Column, build_column, evaluate_filters
from gl_retrieval.storage.filters import metadata_schema
from gl_retrieval.storage.integrity import read_json

__all__ = ["EmbeddedVectorStore"]

FORMAT, VERSION = "gl_retrieval.embedded_vector_store", 1
_NODE_TYPES: dict[str, type[BaseNode]] = {
    c.class_name(): c for c in (TextNode, Node, Document, ImageNode, IndexNode)
}
#: Nodes kept decoded for ``query(shared_nodes=True)``, at most (then the cache starts over).
_SHARED_NODES = 50_000
#: Rows per chunk when vectors are written (4,096 x 384-d float32 = 6 MiB).
_WRITE_ROWS = 4096
_SETTINGS = (
    "similarity",
    "ann",
    "ann_min_rows",
    "ann_exact_below",
    "hnsw_m",
    "hnsw_ef_construction",
    "hnsw_ef_search",
)


class EmbeddedVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store that keeps vectors, text and metadata in one local directory.

    Args:
        similarity: ``"cosine"`` (default; correct for unnormalised vectors too) or ``"dot"``.
        ann: ``"off"`` (default: exact search) or ``"hnsw"`` (hnswlib graph, once the store has
            at least ``ann_min_rows`` rows; needs ``pip install 'gl-retrieval[ann]'``). Recall
            depends on the data and the size: on the bench corpus these defaults gave 0.99 at
            100k but 0.88 at 1M (docs/scaling.md); measure recall on your corpus first.
        ann_min_rows: Below this many rows the search is exact even with ``ann="hnsw"``.
        ann_exact_below: With a filter that keeps less than this fraction of the rows, search the
            kept rows exactly instead of the graph (cheap, and never starves the top k).
        hnsw_m: Graph degree.
        hnsw_ef_construction: Candidate list size while building.
        hnsw_ef_search: Candidate list size per query (raised to the oversampled k if larger).

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> from llama_index.core.vector_stores.types import VectorStoreQuery
        >>> store = EmbeddedVectorStore()
        >>> store.add([TextNode(id_="a", text="hi", embedding=[1.0, 0.0])])
        ['a']
        >>> store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=1)).ids
        ['a']
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=True
    )
    stores_text: bool = True
    is_embedding_query: bool = True
    similarity: Literal["cosine", "dot"] = Field(default="cosine")
    ann: Literal["off", "hnsw"] = Field(default="off")
    ann_min_rows: int = Field(default=200_000, gt=0)
    ann_exact_below: float = Field(default=0.1, ge=0.0, le=1.0)
    hnsw_m: int = Field(default=16, gt=1)
    hnsw_ef_construction: int = Field(default=100, gt=0)
    hnsw_ef_search: int = Field(default=128, gt=0)

    _vectors: VectorRows = PrivateAttr(default_factory=VectorRows)
    _ids: list[str] = PrivateAttr(default_factory=list)
    _row_of: dict[str, int] | None = PrivateAttr(default_factory=dict)  # None: build on use
    _refs: list[str | None] = PrivateAttr(default_factory=list)
    _doc_rows: dict[str, list[int]] | None = PrivateAttr(default_factory=dict)
    _meta: JsonRows = PrivateAttr(default_factory=JsonRows)
    _body: JsonRows = PrivateAttr(default_factory=JsonRows)
    _columns: dict[str, Column] = PrivateAttr(default_factory=dict)
    _columns_n: int = PrivateAttr(default=0)
    _graph: HnswGraph | None = PrivateAttr(default=None)
    _graph_has_dead: bool = PrivateAttr(default=False)  # rows died since the graph last looked
    _persist_paths: dict[str, Path] | None = PrivateAttr(default=None)  # the files it loaded
    _shared: dict[int, BaseNode] = PrivateAttr(default_factory=dict)  # row -> node, read-only

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "EmbeddedVectorStore"

    @property
    def client(self) -> None:
        """No client: the store is in-process."""
        return None

    # -- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        """Number of stored nodes. (Not ``__len__``: an empty store must stay truthy, because
        LlamaIndex tests ``if vector_store:`` and would swap in a SimpleVectorStore.)"""
        return self._vectors.n_live

    @property
    def dim(self) -> int | None:
        """Vector dimension, fixed by the first ``add`` (None while empty)."""
        return self._vectors.dim

    def ref_doc_node_ids(self) -> dict[str, list[str]]:
        """Map every source document id to the ids of its stored nodes."""
        return {ref: [self._ids[r] for r in rows] for ref, rows in self._by_doc().items()}

    def get_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
    ) -> list[BaseNode]:
        """Return stored nodes (without embeddings): all, the given ids (in that order, unknown
        ids skipped), and/or those matching ``filters``."""
        if node_ids is None:
            rows = np.flatnonzero(self._allowed(None, None, filters, force=True))
        else:
            by_id = self._by_id()
            rows = np.asarray([by_id[i] for i in node_ids if i in by_id], np.int64)
            if filters is not None:
                rows = rows[self._allowed(None, None, filters, force=True)[rows]]
        return [self._node(int(r)) for r in rows]

    def filter_mask(self, filters: MetadataFilters, *, node_ids: Sequence[str]) -> np.ndarray:
        """Which of ``node_ids`` are stored and pass ``filters``, as a boolean array in that
        order: the store's one filter evaluator, for callers that rank the rows themselves (the
        BM25 side)."""
        allowed = self._allowed(None, None, filters, force=True)
        by_id = self._by_id()
        rows = np.fromiter((by_id.get(i, -1) for i in node_ids), np.int64, len(node_ids))
        stored = rows >= 0
        out = np.zeros(len(rows), dtype=bool)
        out[stored] = allowed[rows[stored]]  # type: ignore[index]
        return out

    def metadata_schema(self) -> dict[str, frozenset[str]]:
        """Which kinds of value each metadata key holds in the stored rows (see
        :func:`gl_retrieval.storage.filters.metadata_schema`)."""
        decoded = self._meta.decoded()
        return metadata_schema(decoded[r] for r in np.flatnonzero(self._vectors.live))

    def vectors(self, node_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``node_ids``, in that order, as float32 ``(n, dim)``.

        Raises:
            KeyError: an id is not stored.
        """
        by_id = self._by_id()
        rows = np.asarray([by_id[i] for i in node_ids], np.int64)
        out = np.zeros((len(rows), self.dim or 0), np.float32)
        if len(rows):
            order = np.argsort(rows, kind="stable")
            out[order] = np.concatenate(list(self._vectors.vectors_of(rows[order])))
        return out

    def query(
        self, query: VectorStoreQuery, *, shared_nodes: bool = False, **kwargs: Any
    ) -> VectorStoreQueryResult:
        """Top ``similarity_top_k`` nodes by similarity, after ``node_ids``, ``doc_ids`` and
        ``filters`` restricted the rows (a filter never starves the result).

        An empty ``node_ids`` or ``doc_ids`` list means no restriction, as in LlamaIndex's other
        text-storing stores: ``VectorStoreIndex.as_retriever`` passes ``node_ids=[]`` for them.

        Each call decodes fresh node objects, which the caller may modify. With
        ``shared_nodes=True`` it hands out nodes decoded once and kept, the same objects to
        every caller, which must not modify them; decoding is most of a query's time on a small
        corpus (``serve`` reads them only to answer).
        """
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise ConfigError(
                f"EmbeddedVectorStore supports query mode 'default' only, but got "
                f"{query.mode.value!r}; use gl_retrieval's hybrid retriever for sparse/hybrid"
            )
        if query.similarity_top_k <= 0:
            raise ConfigError(f"similarity_top_k must be > 0, but got {query.similarity_top_k}")
        if query.query_embedding is None:
            raise EmbeddingError("the query has no query_embedding; embed the query first")
        q = np.asarray(query.query_embedding, dtype=np.float32)
        if self._vectors.n == 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        if q.shape != (self.dim,):
            raise IndexMismatchError(
                f"the query vector has shape {q.shape}, but the store holds {self.dim}-d "
                "vectors; query with the embedder that built the index, or rebuild it"
            )
        if not np.isfinite(q).all():
            raise EmbeddingError("the query vector contains NaN or infinity; check the embedder")
        allowed = self._allowed(query.node_ids or None, query.doc_ids or None, query.filters)
        rows, scores = self._search(q, k=query.similarity_top_k, allowed=allowed)
        return VectorStoreQueryResult(
            nodes=[(self._shared_node if shared_nodes else self._node)(int(r)) for r in rows],
            similarities=[float(s) for s in scores],
            ids=[self._ids[int(r)] for r in rows],
        )

    # -- writing -------------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Add nodes that carry ``.embedding``; a node id already stored is replaced."""
        if not nodes:
            return []
        vectors = self._embeddings_of(nodes)
        encoded = [self._encode(node) for node in nodes]  # may raise: before any change
        by_id = self._by_id()
        start = self._vectors.append(vectors)
        for row, node in enumerate(nodes, start):
            if node.node_id in by_id:
                self._kill(by_id[node.node_id])
            meta, body = encoded[row - start]
            self._ids.append(node.node_id)
            by_id[node.node_id] = row
            self._refs.append(node.ref_doc_id)
            if node.ref_doc_id is not None and self._doc_rows is not None:
                self._doc_rows.setdefault(node.ref_doc_id, []).append(row)
            self._meta.append(meta)
            self._body.append(body)
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose source document is ``ref_doc_id``."""
        for row in list(self._by_doc().get(ref_doc_id, ())):
            self._kill(row)

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete the given nodes, those matching ``filters``, or (both given) their overlap."""
        if node_ids is None and filters is None:
            raise FilterError("delete_nodes needs node_ids or filters; use clear() to delete all")
        for row in np.flatnonzero(self._allowed(node_ids, None, filters, force=True)):
            self._kill(int(row))

    def clear(self) -> None:
        """Delete every node (settings are kept)."""
        fresh = type(self)(**self._settings())
        for name in self.__private_attributes__:
            setattr(self, name, getattr(fresh, name))

    # -- persistence ---------------------------------------------------------------------------

    def persist(self, persist_path: str, fs: fsspec.AbstractFileSystem | None = None) -> None:
        """Write the store into the directory ``persist_path`` (created if needed).

        Called by ``StorageContext.persist(dir)`` with ``dir/default__vector_store.json``, which
        then is a directory; :meth:`from_persist_dir` reads both layouts.
        """
        _require_local(fs)
        rows = np.flatnonzero(self._vectors.live)
        gen = Generation(Path(persist_path))
        # Small chunks: the copy a write needs stays a few MiB, whatever the store's size.
        chunks = self._vectors.vectors_of(rows, size=_WRITE_ROWS)
        shape = (len(rows), self.dim or 0)
        gen.put("vectors", "npy", lambda f: write_npy_chunks(f, chunks, shape=shape))
        gen.put_npy("norms", self._vectors.norms[rows])
        ids_refs = {
            "ids": [self._ids[r] for r in rows],
            "ref_doc_ids": [self._refs[r] for r in rows],
        }
        gen.put("rows", "json", lambda f: f.write(dumps(ids_refs)))
        gen.put_json_rows("metadata", self._meta.iter_raw(rows))
        gen.put_json_rows("nodes", self._body.iter_raw(rows))
        graph = self._graph_ready(full=True)
        if graph is not None:
            path = gen.path("hnsw", "bin")
            gen.add("hnsw", path, graph.save(path))
            gen.put_npy("hnsw_labels", graph.labels_after_compaction(rows, n=self._vectors.n))
        gen.commit(
            {
                "format": FORMAT,
                "version": VERSION,
                "count": len(rows),
                "dim": self.dim,
                "settings": self._settings(),
            }
        )

    @classmethod
    def from_persist_path(
        cls, persist_path: str, *, fs: fsspec.AbstractFileSystem | None = None, **settings: Any
    ) -> EmbeddedVectorStore:
        """Load a store written by :meth:`persist` into ``persist_path``.

        Args:
            persist_path: The directory given to :meth:`persist`.
            fs: Only a local filesystem (or None) is supported: vectors are memory-mapped.
            **settings: Override persisted settings, e.g. ``hnsw_ef_search=128``.

        Raises:
            IndexNotFoundError: No manifest in the directory.
            StorageError: The directory is from another format version or a file is damaged.
        """
        _require_local(fs)
        manifest, paths = open_generation(Path(persist_path), format=FORMAT, version=VERSION)
        store = cls(**{**manifest["settings"], **settings})
        store._load(manifest, paths)
        return store

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str = "./storage",
        *,
        namespace: str = "default",
        fs: fsspec.AbstractFileSystem | None = None,
        **settings: Any,
    ) -> EmbeddedVectorStore:
        """Load from a directory given to :meth:`persist`, or from a ``StorageContext``
        persist dir (then from ``<persist_dir>/<namespace>__vector_store.json/``)."""
        root = Path(persist_dir)
        if not (root / MANIFEST).is_file():
            root = root / f"{namespace}__vector_store.json"
        return cls.from_persist_path(str(root), fs=fs, **settings)

    # -- internals -----------------------------------------------------------------------------

    def _load(self, manifest: dict[str, Any], paths: dict[str, Path]) -> None:
        n, dim = manifest.get("count"), manifest.get("dim")
        if not isinstance(n, int) or n < 0 or (n and not isinstance(dim, int)):
            _damaged(paths["vectors"].parent / MANIFEST, f"count {n!r} / dim {dim!r} are invalid")
        if n:
            base = _load_npy(paths["vectors"], mmap=True, shape=(n, dim))
            norms = _load_npy(paths["norms"], mmap=False, shape=(n,))
            _require_finite(paths["vectors"], base)
            _require_finite(paths["norms"], norms)
            self._vectors = VectorRows(base, norms)
        rows = read_json(paths["rows"])
        ids = rows.get("ids") if isinstance(rows, dict) else None
        refs = rows.get("ref_doc_ids") if isinstance(rows, dict) else None
        if (
            not isinstance(ids, list)
            or not isinstance(refs, list)
            or n not in (len(ids), len(refs))
            or len(ids) != len(refs)
        ):
            _damaged(paths["rows"], f"it does not hold {n} ids and ref_doc_ids")
        self._ids, self._refs = ids, refs
        self._row_of = self._doc_rows = None  # built on first use
        for role, name in (("metadata", "_meta"), ("nodes", "_body")):
            spans = _load_npy(paths[f"{role}_spans"], mmap=False, shape=(n, 2))
            size = paths[role].stat().st_size
            if n and (spans.min() < 0 or spans.max() > size or (spans[:, 1] < spans[:, 0]).any()):
                _damaged(paths[f"{role}_spans"], f"its spans point outside {paths[role].name}")
            setattr(self, name, JsonRows.open(paths[role], spans=spans))
        if "hnsw" in paths and self.ann == "hnsw":
            labels = np.load(paths["hnsw_labels"])
            self._graph = HnswGraph.load(
                paths["hnsw"], dim=self.dim or 0, space=self._space, label_rows=labels, covered=n
            )
        self._persist_paths = paths

    def stored_ids(self) -> list[str]:
        """Ids of the live rows, in row order."""
        return [self._ids[r] for r in np.flatnonzero(self._vectors.live)]

    def deep_check(self) -> list[tuple[Path, str]]:
        """What a full verification finds wrong with a loaded store (``gl-retrieval verify``).

        Beyond the load checks (shapes, spans, NaN/inf): the stored norms match the vectors,
        and every metadata and node row decodes.
        """
        paths = self._persist_paths
        problems: list[tuple[Path, str]] = []
        if paths is None:
            return problems
        if self._vectors.n:
            norms = np.concatenate(
                [
                    np.linalg.norm(v, axis=1)
                    for v in self._vectors.vectors_of(np.arange(self._vectors.n))
                ]
            )
            bad = np.flatnonzero(~np.isclose(norms, self._vectors.norms, rtol=1e-4, atol=1e-6))
            if len(bad):
                problems.append(
                    (paths["vectors"], f"{len(bad)} rows do not match their stored norms "
                     f"(first: row {int(bad[0])})")
                )  # fmt: skip
        for role, rows in (("metadata", self._meta), ("nodes", self._body)):
            try:
                decoded = rows.decoded()
            except (ValueError, RecursionError) as e:
                problems.append((paths[role], f"it is not valid JSON ({str(e)[:120]})"))
                continue
            if len(decoded) != self._vectors.n:
                problems.append(
                    (paths[role], f"it holds {len(decoded)} rows, not {self._vectors.n}")
                )
        return problems

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTINGS}

    @property
    def _space(self) -> str:
        return "cosine" if self.similarity == "cosine" else "ip"

    def _embeddings_of(self, nodes: Sequence[BaseNode]) -> np.ndarray:
        missing = [n.node_id for n in nodes if n.embedding is None]
        if missing:
            raise EmbeddingError(
                f"{len(missing)} node(s) have no embedding (e.g. {missing[0]!r}); embed nodes "
                "before add(), or insert them through VectorStoreIndex with an embed_model"
            )
        try:
            vectors = np.asarray([n.embedding for n in nodes], dtype=np.float32)
        except ValueError as e:
            raise EmbeddingError(f"the nodes' embeddings have different lengths: {e}") from e
        dim = self.dim if self.dim is not None else vectors.shape[1]
        if vectors.ndim != 2 or vectors.shape[1] != dim or dim == 0:
            raise EmbeddingError(
                f"expected {dim}-d embeddings, but got shape {vectors.shape}; one store holds "
                "vectors of one embedder"
            )
        if not np.isfinite(vectors).all():
            raise EmbeddingError("an embedding contains NaN or infinity; check the embedder")
        return vectors

    def _encode(self, node: BaseNode) -> tuple[bytes, bytes]:
        name = node.class_name()
        if _NODE_TYPES.get(name) is not type(node):
            raise StorageError(
                f"node {node.node_id!r} is a {type(node).__name__}; EmbeddedVectorStore stores "
                f"{', '.join(_NODE_TYPES)}"
            )
        try:
            body = node.model_dump(mode="json", exclude={"id_", "embedding"}, exclude_defaults=True)
            meta = body.pop("metadata", {})
            return dumps(meta), dumps({**body, "class_name": name})
        except (TypeError, ValueError) as e:
            raise StorageError(
                f"node {node.node_id!r} has metadata that is not JSON-serialisable: {e}"
            ) from e

    def _node(self, row: int) -> BaseNode:
        body = self._body.load(row)
        cls = _NODE_TYPES[body.get("class_name", "TextNode")]
        return cls.model_validate({**body, "id_": self._ids[row], "metadata": self._meta.load(row)})

    def _shared_node(self, row: int) -> BaseNode:
        shared = self._shared
        node = shared.get(row)
        if node is None:
            if len(shared) >= _SHARED_NODES:
                shared.clear()
            node = shared[row] = self._node(row)
        return node

    def _kill(self, row: int) -> None:
        if not self._vectors.kill(row):
            return
        self._graph_has_dead = True
        if self._row_of is not None:
            del self._row_of[self._ids[row]]
        ref = self._refs[row]
        if ref is not None and self._doc_rows is not None:
            self._doc_rows[ref].remove(row)
            if not self._doc_rows[ref]:
                del self._doc_rows[ref]

    def _by_id(self) -> dict[str, int]:
        """Node id -> live row; built on first use, so a reload does not pay for it."""
        if self._row_of is None:
            rows = np.flatnonzero(self._vectors.live).tolist()
            self._row_of = dict(zip([self._ids[r] for r in rows], rows, strict=True))
        return self._row_of

    def _by_doc(self) -> dict[str, list[int]]:
        """Source document id -> live rows; built on first use."""
        if self._doc_rows is None:
            self._doc_rows = {}
            for row in np.flatnonzero(self._vectors.live).tolist():
                if (ref := self._refs[row]) is not None:
                    self._doc_rows.setdefault(ref, []).append(row)
        return self._doc_rows

    def _column(self, key: str) -> Column:
        if self._columns_n != self._vectors.n:
            self._columns, self._columns_n = {}, self._vectors.n
        if key not in self._columns:
            self._columns[key] = build_column(key, metadata=self._meta.decoded())
        return self._columns[key]

    def _allowed(
        self,
        node_ids: list[str] | None,
        doc_ids: list[str] | None,
        filters: MetadataFilters | None,
        *,
        force: bool = False,
    ) -> np.ndarray | None:
        """Mask of live rows passing every restriction; None when that is every row."""
        live, n = self._vectors.live, self._vectors.n
        if node_ids is None and doc_ids is None and filters is None:
            return live.copy() if force or self._vectors.n_live < n else None
        mask = live.copy()
        if node_ids is not None:
            keep = np.zeros(n, bool)
            by_id = self._by_id()
            keep[[by_id[i] for i in node_ids if i in by_id]] = True
            mask &= keep
        if doc_ids is not None:
            keep = np.zeros(n, bool)
            by_doc = self._by_doc()
            keep[[r for d in doc_ids for r in by_doc.get(d, ())]] = True
            mask &= keep
        if filters is not None:
            mask &= evaluate_filters(filters, column=self._column, n=n)
        return mask

    def _scores(self, q: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        return self._vectors.scores(q, rows, cosine=self.similarity == "cosine")

    def _search(
        self, q: np.ndarray, *, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        n, n_live = self._vectors.n, self._vectors.n_live
        n_allowed = n_live if allowed is None else int(allowed.sum())
        if n_allowed == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        graph = self._graph_ready(full=False)
        if graph is not None and n_allowed >= self.ann_exact_below * n_live:
            mask = self._vectors.live if allowed is None else allowed
            rows = graph.candidates(
                q, k=k, ef=self.hnsw_ef_search, allowed=mask, n_allowed=n_allowed
            )
            if len(rows) >= min(k, n_allowed):  # else the filter starved the graph: go exact
                return top_k(rows, self._scores(q, rows), k)
        if allowed is None:
            return top_k(np.arange(n), self._scores(q, None), k)
        if n_allowed * 8 < n:  # gathering few rows beats scoring all
            rows = np.flatnonzero(allowed)
            return top_k(rows, self._scores(q, rows), k)
        scores = np.where(allowed, self._scores(q, None), -np.inf)
        return top_k(np.arange(n), scores, min(k, n_allowed))

    def _graph_ready(self, *, full: bool) -> HnswGraph | None:
        """The HNSW graph, built or brought up to date; None when search should be exact.

        Deletions are marked lazily; appended rows join the graph at persist (``full``) or once
        they are too many to score exactly on every query.
        """
        vectors = self._vectors
        if self.ann != "hnsw" or vectors.n_live < self.ann_min_rows:
            return None
        graph = self._graph
        if graph is None or (full and graph.stale):
            m, efc = self.hnsw_m, self.hnsw_ef_construction
            self._graph = HnswGraph.build(vectors, space=self._space, m=m, ef_construction=efc)
            self._graph_has_dead = False
            return self._graph
        new = vectors.n - graph.covered
        appends = full or new > max(10_000, graph.live // 20)
        graph.sync(vectors, deletes=self._graph_has_dead, appends=appends)
        self._graph_has_dead = False
        return graph


def _damaged(path: Path, problem: str) -> None:
    raise IndexDamagedError(
        f"{path} is damaged ({problem}); rebuild the index", path=str(path), problem=problem
    )


def _load_npy(path: Path, *, mmap: bool, shape: tuple[int, ...]) -> np.ndarray:
    """A ``.npy`` file of the store, checked for its dtype and shape (never unpickled)."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        _damaged(path, f"it is not a readable .npy array ({str(e)[:120]})")
    if array.shape != shape or array.dtype.kind not in "fi":
        _damaged(path, f"it holds a {array.dtype} array of shape {array.shape}, not {shape}")
    return array


def _require_finite(path: Path, array: np.ndarray) -> None:
    """Reject NaN and infinity (in blocks, so a memory map is read once, not copied)."""
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    for start in range(0, len(flat), 65536):
        block = flat[start : start + 65536]
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            row = start + int(np.flatnonzero(~ok)[0])
            _damaged(path, f"row {row} holds NaN or infinity")


def _require_local(fs: fsspec.AbstractFileSystem | None) -> None:
    if fs is not None and "file" not in fs.protocol:
        raise StorageError(
            f"EmbeddedVectorStore persists to the local filesystem only (vectors are "
            f"memory-mapped), but got a {type(fs).__name__}; pass fs=None"
        )
