"""The PostgreSQL + pgvector backend: one database, many processes, one index per ``table``.

Tables (``T`` is ``storage.table``, lowercased; schema ``public``)::

    data_T         the chunks: text, metadata_ (JSONB), node_id, embedding vector(d)
                   (LlamaIndex PGVectorStore's layout), an HNSW index (cosine), a GIN index
                   on metadata_ (==/in filters), a btree on metadata_->>'ref_doc_id' and a
                   unique btree on node_id
    T_documents    one row per source document: content hash, chunk ids, source (incremental
                   indexing reads it instead of the chunks)
    T_manifest     one row: the manifest JSON, the vector dimension and a generation number

Atomicity: an ``index`` run stages every write in memory (:mod:`._pgvector`) and
:meth:`PostgresStorage.commit` applies them, the document rows and the manifest in ONE
transaction. Readers see the previous index until that transaction commits, then the whole new
one; a failure or a crash (even ``kill -9``) at any point before that leaves the previous index
as it was. Small updates change ``data_T`` in place (the HNSW index absorbs the new rows); large
ones (a first build, ``--rebuild``, or at least REBUILD_MIN_ROWS new rows that are at least
REBUILD_FRACTION of the table) build a fresh table with bulk index builds and swap it in, still
inside that one transaction, so readers wait only for the swap (:mod:`._pgcommit`).

Writers take a session advisory lock (:meth:`PostgresStorage.write_lock`); the commit also checks
the generation it started from, so two writers can never interleave. Readers take no lock.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.vector_stores.types import (
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from gl_retrieval._deps import require
from gl_retrieval.config import PostgresStorageConfig
from gl_retrieval.errors import ConfigError, GLRetrievalError, IndexNotFoundError, StorageError
from gl_retrieval.storage.base import (
    DocRecord,
    GenerationCheck,
    IndexHandle,
    Storage,
    index_kwargs,
)
from gl_retrieval.storage.manifest import Manifest
from gl_retrieval.storage.postgres.errors import translate
from gl_retrieval.storage.postgres.sql import (
    BASE,
    BASE_CHUNKS,
    GENERATION,
    SCHEMA,
    lock_key,
    qname,
    snapshot,
)

__all__ = ["PostgresStorage"]


def _public_url(url: Any) -> str:
    """``url`` as ``postgresql://user@host:port/db`` (a socket directory as ``?host=``): no
    password, nothing percent-encoded, for messages."""
    user = f"{url.username}@" if url.username else ""
    port = f":{url.port}" if url.port else ""
    socket = url.query.get("host") if not url.host else None
    tail = f"?host={socket}" if isinstance(socket, str) else ""
    return f"postgresql://{user}{url.host or ''}{port}/{url.database or ''}{tail}"


class _MetadataKinds(Mapping[str, frozenset[str]]):
    """Metadata key -> kinds of value in the table, read with one query on first use."""

    def __init__(self, read: Callable[[], dict[str, frozenset[str]]]) -> None:
        self._read = read
        self._kinds: dict[str, frozenset[str]] | None = None
        self._lock = threading.Lock()

    def _get(self) -> dict[str, frozenset[str]]:
        with self._lock:
            if self._kinds is None:
                self._kinds = self._read()
            return self._kinds

    def __getitem__(self, key: str) -> frozenset[str]:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class PostgresStorage(Storage):
    """An index in PostgreSQL with pgvector (see the module docstring for the layout).

    Construction is cheap: nothing connects until the first read or write. One instance keeps
    one connection pool (``storage.pool_size``); share the pipeline, not the URL, across threads.

    Example:
        >>> from gl_retrieval.config import PostgresStorageConfig
        >>> cfg = PostgresStorageConfig(
        ...     backend="postgres", url="postgresql://app:secret@db.internal/search", table="docs"
        ... )
        >>> PostgresStorage(cfg).location
        'postgresql://app@db.internal/search (table docs)'
    """

    def __init__(self, config: PostgresStorageConfig) -> None:
        sa_url = require("sqlalchemy.engine.url", extra="postgres", package="sqlalchemy")
        self.config = config
        self.table = config.table.lower()
        try:
            url = sa_url.make_url(config.url)
        except Exception:
            raise ConfigError(
                "storage.url is not a valid PostgreSQL URL: use "
                "postgresql://user:password@host:port/database"
            ) from None
        if url.get_backend_name() not in ("postgres", "postgresql"):
            raise ConfigError(
                f"storage.url must be a postgresql:// URL, but its scheme is {url.drivername!r}"
            )
        self._password = url.password
        self._url = url.set(drivername="postgresql+psycopg2")
        query = dict(url.query)
        async_query = {k: v for k, v in query.items() if k in ("host", "port")}
        if "sslmode" in query:
            async_query["ssl"] = query["sslmode"]
        self._async_url = url.set(drivername="postgresql+asyncpg", query=async_query)
        self.location = f"{_public_url(url)} (table {self.table})"
        self.vectors = f"data_{self.table}"
        self.documents_table = f"{self.table}_documents"
        self.manifest_table = f"{self.table}_manifest"
        self._engines: tuple[Any, Any] | None = None
        self._engine_lock = threading.Lock()
        self._kinds: tuple[int, dict[str, frozenset[str]]] | None = None  # (generation, schema)

    # -- connections and errors ----------------------------------------------------------------

    def _connect_args(self) -> dict[str, Any]:
        query = self._url.query
        args: dict[str, Any] = {}
        if "connect_timeout" not in query:
            args["connect_timeout"] = self.config.connect_timeout_s
        if "application_name" not in query:
            args["application_name"] = "gl_retrieval"
        return args

    def engines(self) -> tuple[Any, Any]:
        """The (sync, async) SQLAlchemy engines of this storage, created on first use."""
        with self._engine_lock:
            if self._engines is None:
                sa = require("sqlalchemy", extra="postgres")
                sa_async = require("sqlalchemy.ext.asyncio", extra="postgres")
                require("psycopg2", extra="postgres", package="psycopg2-binary")
                require("llama_index.vector_stores.postgres", extra="postgres")
                size = self.config.pool_size
                sync = sa.create_engine(
                    self._url,
                    pool_size=size,
                    max_overflow=size,
                    pool_pre_ping=True,
                    connect_args=self._connect_args(),
                )
                asyn = sa_async.create_async_engine(
                    self._async_url,
                    pool_size=size,
                    max_overflow=size,
                    pool_pre_ping=True,
                    connect_args={"timeout": self.config.connect_timeout_s},
                )
                self._engines = (sync, asyn)
            return self._engines

    def close(self) -> None:
        """Close the pooled connections (a later call reconnects)."""
        with self._engine_lock:
            if self._engines is not None:
                self._engines[0].dispose()
                self._engines = None

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn database errors raised inside into one-line GLRetrievalErrors naming the host."""
        try:
            yield
        except GLRetrievalError:
            raise
        except Exception as e:
            mapped = translate(e, action=action, location=self.location, password=self._password)
            if mapped is None:
                raise
            raise mapped from None

    # -- reading -------------------------------------------------------------------------------

    def _read_state(self, *, documents: bool) -> tuple[int, int, Manifest, dict[str, DocRecord]]:
        sa = require("sqlalchemy", extra="postgres")
        engine, _ = self.engines()
        with self.errors("read the index"), engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                found = conn.execute(
                    sa.text("SELECT to_regclass(:t)"), {"t": qname(self.manifest_table)}
                ).scalar()
                row = None
                if found is not None:
                    row = conn.execute(
                        sa.text(
                            f"SELECT generation, dimension, manifest "
                            f"FROM {qname(self.manifest_table)} WHERE id = 1"
                        )
                    ).first()
                if row is None:
                    raise IndexNotFoundError(
                        f"no index at {self.location}: run `gl-retrieval index CONFIG` first"
                    )
                docs: dict[str, DocRecord] = {}
                if documents:
                    result = conn.execute(
                        sa.text(
                            f"SELECT doc_id, hash, nodes, source FROM {qname(self.documents_table)}"
                        )
                    )
                    docs = {d: DocRecord(hash=h, nodes=list(n), source=s) for d, h, n, s in result}
        manifest = Manifest.from_json(json.dumps(row.manifest))
        return int(row.generation), int(row.dimension or 0), manifest, docs

    def exists(self) -> bool:
        try:
            self._read_state(documents=False)
        except IndexNotFoundError:
            return False
        return True

    def read_manifest(self) -> Manifest:
        return self._read_state(documents=False)[2]

    def metadata_schema(self) -> dict[str, frozenset[str]]:
        """Read on the server, one scan of the chunk table with a few rows back, and kept until
        the committed generation changes."""
        return self._kinds_at(self._read_state(documents=False)[0])

    def _kinds_at(self, generation: int) -> dict[str, frozenset[str]]:
        cached = self._kinds
        if cached is not None and cached[0] == generation:
            return cached[1]
        engine, _ = self.engines()  # first: MissingDependencyError without the postgres extra
        from gl_retrieval.storage.postgres.filters import metadata_kinds

        sql, params = metadata_kinds(qname(self.vectors))
        kinds: dict[str, set[str]] = {}
        with self.errors("read the metadata keys"), engine.connect() as conn:
            for key, kind in conn.execute(sql, params):
                kinds.setdefault(key, set()).add(kind)
        schema = {k: frozenset(v) for k, v in kinds.items()}
        self._kinds = (generation, schema)
        return schema

    def committed_generation(self) -> str | None:
        """The manifest row's generation number, as text, or None."""
        try:
            return str(self._read_state(documents=False)[0])
        except IndexNotFoundError:
            return None

    def search(
        self, handle: IndexHandle, query: VectorStoreQuery, *, shared_nodes: bool = False
    ) -> VectorStoreQueryResult:
        """pgvector's query (filters as bound SQL, see :mod:`.filters`); nodes are never
        shared."""
        return handle.vector_store.query(query)

    def filter_mask(
        self, handle: IndexHandle, filters: MetadataFilters, *, node_ids: Sequence[str]
    ) -> np.ndarray:
        """The rows passing ``filters`` (bound SQL, :mod:`.filters`), as a mask over
        ``node_ids``."""
        sa = require("sqlalchemy", extra="postgres")
        from sqlalchemy.dialects.postgresql import JSONB

        from gl_retrieval.storage.postgres.filters import filters_clause

        where = filters_clause(sa.column("metadata_", JSONB), filters)
        query = (
            sa.select(sa.column("node_id")).select_from(sa.text(qname(self.vectors))).where(where)
        )
        engine, _ = self.engines()
        with self.errors("filter the index"), engine.connect() as conn:
            passing = {row[0] for row in conn.execute(query)}
        return np.fromiter((i in passing for i in node_ids), dtype=bool, count=len(node_ids))

    def stored_vectors(self, handle: IndexHandle, node_ids: Sequence[str]) -> None:
        """None: the vectors stay on the server (callers embed again, or use a cache)."""
        return None

    def check_files(self) -> None:
        """Nothing to check here: the server owns the bytes (``verify`` checks the counts)."""
        self._read_state(documents=False)

    def recovery(self) -> str:
        return "rebuild with `gl-retrieval index CONFIG --rebuild` (re-embeds everything)"

    def read_documents(self) -> dict[str, DocRecord]:
        """The committed document table (doc id -> hash and chunk ids), without the chunks."""
        return self._read_state(documents=True)[3]

    def verify(self, *, extra: GenerationCheck | None = None) -> dict[str, Any]:
        """A lighter check than the embedded backend's (the server owns the bytes): the manifest
        and document table read, the vector table holds exactly the chunks they list, each once,
        with the recorded dimension, and whether the server's data checksums are on. ``extra``
        checks a generation directory, which this backend has none of.

        Returns:
            The ``verify --json`` shape (docs/operations.md).
        """
        import time

        sa = require("sqlalchemy", extra="postgres")
        t0 = time.perf_counter()
        generation, dim, manifest, docs = self._read_state(documents=True)
        listed = {nid for rec in docs.values() for nid in rec.nodes}
        engine, _ = self.engines()
        with self.errors("verify the index"), engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT to_regclass(:t)"), {"t": qname(self.vectors)}
            ).scalar()
            rows = distinct = 0
            if found is not None:
                rows, distinct = conn.execute(
                    sa.text(f"SELECT count(*), count(DISTINCT node_id) FROM {qname(self.vectors)}")
                ).one()
            checksums = conn.execute(sa.text("SHOW data_checksums")).scalar()
        problems = []
        table = f"table {self.vectors}"
        if rows != len(listed) or distinct != rows:
            problems.append(
                {
                    "file": table,
                    "problem": f"it holds {rows} rows ({distinct} distinct chunks), but the "
                    f"document table lists {len(listed)} chunks",
                }
            )
        if (manifest.documents, manifest.chunks) != (len(docs), len(listed)):
            problems.append(
                {
                    "file": f"table {self.manifest_table}",
                    "problem": f"it counts {manifest.documents} documents and {manifest.chunks} "
                    f"chunks, but the document table holds {len(docs)} and {len(listed)}",
                }
            )
        recorded = manifest.embedder.get("dimension")
        if dim and recorded is not None and recorded != dim:
            problems.append(
                {
                    "file": f"table {self.manifest_table}",
                    "problem": f"it records dimension {recorded}, but the vectors have {dim}",
                }
            )
        warnings = []
        if checksums != "on":
            warnings.append(
                "the server runs without data checksums (initdb --data-checksums), so damaged "
                "pages go undetected; gl-retrieval verify checks only counts on postgres"
            )
        return {
            "ok": not problems,
            "backend": "postgres",
            "location": self.location,
            "generation": str(generation),
            "files": 3,
            "bytes": 0,
            "rows": rows,
            "data_checksums": checksums,
            "problems": problems,
            "warnings": warnings,
            "recovery": None if not problems else self.recovery(),
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def _handle(
        self,
        *,
        embed_model: BaseEmbedding,
        dim: int,
        generation: int | None,
        manifest: Manifest | None,
        docs: dict[str, DocRecord],
        cleared: bool,
    ) -> IndexHandle:
        from gl_retrieval.storage.postgres.vectors import StagedPGVectorStore

        engine, async_engine = self.engines()
        cfg = self.config
        store = StagedPGVectorStore(
            connection_string=self._url,  # str() of a URL hides the password
            async_connection_string=self._async_url,
            table_name=self.table,
            schema_name=SCHEMA,
            embed_dim=max(dim, 1),
            perform_setup=False,  # DDL is ours (commit), so readers never need DDL rights
            use_jsonb=True,
            hnsw_kwargs=None,  # our DDL; search settings per transaction (see _pgvector)
            engine=engine,
            async_engine=async_engine,
        ).bind(
            errors=self.errors,
            cleared=cleared,
            ef_search=cfg.hnsw_ef_search,
            exact_max_rows=cfg.exact_search_max_rows,
        )
        sc = StorageContext.from_defaults(vector_store=store)
        index = VectorStoreIndex(nodes=[], storage_context=sc, **index_kwargs(embed_model))
        chunks = manifest.chunks if (manifest is not None and not cleared) else 0
        extras: dict[str, Any] = {
            GENERATION: generation,
            BASE: snapshot(docs),
            BASE_CHUNKS: chunks,
            # What filter checks read (retrieval.retrievers.index_schema): computed on the
            # server when first needed, instead of reading every chunk into this process.
            "gl_metadata_schema": _MetadataKinds(
                store.metadata_schema
                if generation is None or cleared
                else functools.partial(self._kinds_at, generation)
            ),
        }
        return IndexHandle(
            index=index,
            storage_context=sc,
            manifest=manifest,
            documents=docs,
            extras=extras,
            generation=None if (generation is None or cleared) else str(generation),
        )

    def load(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        generation, dim, manifest, docs = self._read_state(documents=True)
        return self._handle(
            embed_model=embed_model,
            dim=dim,
            generation=generation,
            manifest=manifest,
            docs=docs,
            cleared=False,
        )

    def new(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        try:
            generation: int | None = self._read_state(documents=False)[0]
        except IndexNotFoundError:
            generation = None
        return self._handle(
            embed_model=embed_model,
            dim=0,
            generation=generation,
            manifest=None,
            docs={},
            cleared=True,
        )

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold this table's writer lock (a session advisory lock): one `index` run at a time.

        The server releases it if the process dies, so a crashed writer never blocks the next.

        Raises:
            StorageError: another process holds it.
        """
        sa = require("sqlalchemy", extra="postgres")
        engine, _ = self.engines()
        key = lock_key("write", self.table)
        with self.errors("take the writer lock"):
            conn = engine.connect()
        try:
            with self.errors("take the writer lock"):
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                conn.commit()
            if not got:
                raise StorageError(
                    f"another process is indexing into {self.location}; wait for it to finish"
                )
            try:
                yield
            finally:
                try:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except Exception:
                    conn.invalidate()  # never return a connection that may still hold the lock
        finally:
            conn.close()

    def check_space(self, handle: IndexHandle, *, adding_bytes: int) -> None:
        """Nothing to check here: the server's disk is the server's (a full one fails the
        commit's transaction, which leaves the committed index as it was)."""

    def commit(self, handle: IndexHandle) -> None:
        """Apply the handle's staged writes, its documents and manifest in one transaction.

        Raises:
            StorageError: the handle is not from a Postgres storage, the database failed, or
                another process committed to this table since the handle was loaded.
        """
        from gl_retrieval.storage.postgres import commit as _pgcommit
        from gl_retrieval.storage.postgres.vectors import StagedPGVectorStore

        if handle.manifest is None:
            raise StorageError("cannot commit an index without a manifest")
        store = handle.vector_store
        if not isinstance(store, StagedPGVectorStore):
            raise StorageError(
                f"cannot commit a {type(store).__name__} handle to {self.location}: "
                "load it from this PostgresStorage"
            )
        generation = _pgcommit.commit(self, handle, store)
        store.reset_staged()
        handle.extras[GENERATION] = generation
        handle.generation = str(generation)
        handle.extras[BASE] = snapshot(handle.documents)
        handle.extras[BASE_CHUNKS] = handle.manifest.chunks
