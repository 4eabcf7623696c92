"""LlamaIndex's ``PGVectorStore`` with staged writes, bound filter values and clear errors.

:class:`StagedPGVectorStore` is what a Postgres-backed :class:`~gl_retrieval.storage.IndexHandle`
holds. Reads (``query``, ``get_nodes``) go to the committed table as usual. Writes (``add``,
``delete``, ``delete_nodes``, ``clear``) are *staged* in memory and reach the database only in
:meth:`PostgresStorage.commit <gl_retrieval.storage.postgres.store.PostgresStorage.commit>`, in one
transaction with the document table and the manifest, so other processes never see half an
``index`` run. ``get_nodes`` by id sees the staged changes (a handle reads its own writes).

Searches set ``hnsw.ef_search`` and pgvector's iterative scan per transaction, answer selective
filters exactly, and build filters with bound parameters (:mod:`._pg_filters`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from llama_index.vector_stores.postgres import PGVectorStore
from llama_index.vector_stores.postgres.base import DBEmbeddingRow

from gl_retrieval.errors import StorageError
from gl_retrieval.storage.postgres.filters import filter_clause, filters_clause, metadata_kinds

__all__ = ["StagedChanges", "StagedPGVectorStore"]

_VERSION = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"


@dataclass
class StagedChanges:
    """Writes made through a handle and not committed yet."""

    adds: dict[str, BaseNode] = field(default_factory=dict)
    deleted_docs: set[str] = field(default_factory=set)
    deleted_nodes: set[str] = field(default_factory=set)
    #: ``clear()`` was called (or the handle is a fresh index): the commit replaces every row.
    cleared: bool = False

    def __bool__(self) -> bool:
        return bool(self.adds or self.deleted_docs or self.deleted_nodes or self.cleared)


class StagedPGVectorStore(PGVectorStore):
    """``PGVectorStore`` whose writes wait for the storage's commit (see the module docstring)."""

    _staged: StagedChanges = PrivateAttr(default_factory=StagedChanges)
    _errors: Callable[[str], AbstractContextManager[None]] | None = PrivateAttr(default=None)
    _ef_search: int = PrivateAttr(default=40)
    _exact_max_rows: int = PrivateAttr(default=0)
    _iterative: bool | None = PrivateAttr(default=None)  # pgvector >= 0.8, checked once

    @classmethod
    def class_name(cls) -> str:
        return "StagedPGVectorStore"

    def bind(
        self,
        *,
        errors: Callable[[str], AbstractContextManager[None]],
        cleared: bool,
        ef_search: int,
        exact_max_rows: int,
    ) -> StagedPGVectorStore:
        """Set the error translator (database errors -> StorageError), the search settings
        and the initial state."""
        self._errors = errors
        self._staged = StagedChanges(cleared=cleared)
        self._ef_search = ef_search
        self._exact_max_rows = exact_max_rows
        return self

    @property
    def staged(self) -> StagedChanges:
        """The uncommitted writes."""
        return self._staged

    def reset_staged(self) -> None:
        """Forget the staged writes (after they were committed)."""
        self._staged = StagedChanges()

    def _guard(self, action: str) -> AbstractContextManager[None]:
        if self._errors is None:
            raise StorageError("this vector store is not bound to a PostgresStorage")
        return self._errors(action)

    # -- staged writes -------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        ids = []
        for node in nodes:
            if node.embedding is None:
                raise StorageError(
                    f"chunk {node.node_id!r} has no embedding; embed nodes before adding them"
                )
            self._staged.adds[node.node_id] = node
            self._staged.deleted_nodes.discard(node.node_id)
            ids.append(node.node_id)
        return ids

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return self.add(nodes)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        adds = self._staged.adds
        for nid in [nid for nid, n in adds.items() if n.ref_doc_id == ref_doc_id]:
            del adds[nid]
        self._staged.deleted_docs.add(ref_doc_id)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        self.delete(ref_doc_id)

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        if filters is not None:
            raise StorageError(
                "delete_nodes(filters=...) is not supported on a Postgres index handle: "
                "delete by node id or by document (delete_ref_doc)"
            )
        for nid in node_ids or ():
            self._staged.adds.pop(nid, None)
            self._staged.deleted_nodes.add(nid)

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        self.delete_nodes(node_ids, filters)

    def clear(self) -> None:
        self._staged = StagedChanges(cleared=True)

    async def aclear(self) -> None:
        self.clear()

    # -- reads ---------------------------------------------------------------------------------

    def _visible(self, node: BaseNode) -> bool:
        s = self._staged
        return node.node_id not in s.deleted_nodes and (node.ref_doc_id or "") not in s.deleted_docs

    def _overlay(self, node_ids: list[str], fetch: Callable[[list[str]], list[BaseNode]]) -> Any:
        s = self._staged
        committed_ids = [] if s.cleared else [i for i in node_ids if i not in s.adds]
        got = [n for n in fetch(committed_ids) if self._visible(n)] if committed_ids else []
        return got + [s.adds[i] for i in node_ids if i in s.adds]

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        if node_ids is None and filters is None:
            raise StorageError("get_nodes needs node_ids or filters")
        if node_ids is not None and not node_ids:
            return []  # PGVectorStore would return every row for an empty id list

        def fetch(ids: list[str] | None) -> list[BaseNode]:
            with self._guard("read chunks"):
                return super(StagedPGVectorStore, self).get_nodes(node_ids=ids, filters=filters)

        if not self._staged:
            return fetch(node_ids)
        if filters is not None or node_ids is None:
            raise StorageError(
                "get_nodes(filters=...) on an index with uncommitted changes is not supported: "
                "commit first, or ask for node ids"
            )
        return self._overlay(node_ids, fetch)

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        return self.get_nodes(node_ids, filters)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        with self._guard("query the index"):
            return super().query(query, **kwargs)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        with self._guard("query the index"):
            return await super().aquery(query, **kwargs)

    def metadata_schema(self) -> dict[str, frozenset[str]]:
        """Which kinds of value each metadata key holds in the committed table.

        Kinds as :func:`gl_retrieval.storage.filters.kind` names them: ``number``, ``bool``,
        ``string``, ``date`` (an ISO date or date-time string), ``list``, ``dict``. One scan on
        the server, a few rows back, instead of reading every chunk into this process.
        """
        sql, params = metadata_kinds(f"{self.schema_name}.{self._table_class.__tablename__}")
        self._initialize()
        kinds: dict[str, set[str]] = {}
        with self._guard("read the metadata keys"), self._session() as session:
            for key, kind in session.execute(sql, params):
                kinds.setdefault(key, set()).add(kind)
        return {k: frozenset(v) for k, v in kinds.items()}

    # -- dense search: per-transaction settings, exact search for selective filters ----------

    def _settings(self, limit: int, kwargs: Any) -> Any:
        """The ``SET LOCAL``s of one search, as one statement.

        ``hnsw.ef_search`` is at least ``limit``; ``hnsw.iterative_scan`` keeps walking the
        graph until ``limit`` rows pass the filters (pgvector >= 0.8). Being transaction-local,
        they also work through a transaction-pooling proxy (PgBouncer).
        """
        from sqlalchemy import text

        ef = max(int(kwargs.get("hnsw_ef_search") or self._ef_search), limit)
        sql = f"SELECT set_config('hnsw.ef_search', '{ef}', true)"
        if self._iterative:
            sql += ", set_config('hnsw.iterative_scan', 'strict_order', true)"
        return text(sql)

    def _exact(self, filters: MetadataFilters | None) -> bool:
        """True when the planner expects at most ``exact_max_rows`` rows to pass ``filters``.

        Then an exact search over those rows (found through the GIN index on ``metadata_``, or a
        scan) is both faster and better than the HNSW graph, which reaches few of them. One
        ``EXPLAIN`` (no execution) on the sync engine, for the async path too.
        """
        if filters is None or self._exact_max_rows <= 0:
            return False
        from sqlalchemy import literal, select

        stmt = (
            select(literal(1))
            .select_from(self._table_class)
            .where(self._recursively_apply_filters(filters))
        )
        compiled = stmt.compile(dialect=self._engine.dialect)
        with self._engine.connect() as conn:
            plan = conn.exec_driver_sql(
                f"EXPLAIN (FORMAT JSON) {compiled.string}", compiled.params
            ).scalar()
        rows = plan[0]["Plan"]["Plan Rows"] if plan else self._exact_max_rows + 1
        return bool(rows <= self._exact_max_rows)

    def _check_iterative(self, version: str | None) -> None:
        parts = [int(p) for p in re.findall(r"\d+", version or "0")[:2]] + [0, 0]
        self._iterative = (parts[0], parts[1]) >= (0, 8)

    def _rows(self, result: Any) -> list[Any]:
        return [
            DBEmbeddingRow(
                node_id=item.node_id,
                text=item.text,
                metadata=item.metadata_,
                custom_fields={},
                similarity=(1 - item.distance) if item.distance is not None else 0,
            )
            for item in result.all()
        ]

    def _query_with_score(
        self,
        embedding: list[float] | None,
        limit: int = 10,
        metadata_filters: MetadataFilters | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        from sqlalchemy import text

        stmt = self._build_query(embedding, limit, metadata_filters, **kwargs)
        exact = self._exact(metadata_filters)
        with self._session() as session, session.begin():
            if self._iterative is None:  # once per store
                self._check_iterative(session.execute(text(_VERSION)).scalar())
            session.execute(self._settings(limit, kwargs))
            if exact:
                session.execute(text("SET LOCAL enable_indexscan = off"))
            return self._rows(session.execute(stmt))

    async def _aquery_with_score(
        self,
        embedding: list[float] | None,
        limit: int = 10,
        metadata_filters: MetadataFilters | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        from sqlalchemy import text

        stmt = self._build_query(embedding, limit, metadata_filters, **kwargs)
        exact = self._exact(metadata_filters)
        async with self._async_session() as session, session.begin():
            if self._iterative is None:
                self._check_iterative((await session.execute(text(_VERSION))).scalar())
            await session.execute(self._settings(limit, kwargs))
            if exact:
                await session.execute(text("SET LOCAL enable_indexscan = off"))
            return self._rows(await session.execute(stmt))

    # -- filters: bound parameters instead of PGVectorStore's string formatting ---------------

    def _build_filter_clause(self, filter_: MetadataFilter) -> Any:
        return filter_clause(self._table_class.metadata_, filter_)

    def _recursively_apply_filters(self, filters: MetadataFilters) -> Any:
        return filters_clause(self._table_class.metadata_, filters)
