"""The Postgres commit: staged chunk writes, document rows and manifest in one transaction.

Steps, all inside ``BEGIN ... COMMIT`` (see :mod:`gl_retrieval.storage.postgres.store`):

1. a transaction advisory lock per table, then create the extension and the small tables if
   missing, and check the manifest's generation is the one the handle started from;
2. chunks: in place (delete the replaced rows, ``COPY`` the new ones; the HNSW index absorbs
   them) or, for a first build / rebuild / large change, a fresh ``data_T__build`` table (copy
   the kept rows, ``COPY`` the new ones, bulk-build the indexes, ``ANALYZE``) swapped for
   ``data_T`` by drop + rename;
3. the document rows that changed, then the manifest row with generation + 1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from gl_retrieval.errors import IndexMismatchError, StorageError
from gl_retrieval.storage.base import IndexHandle
from gl_retrieval.storage.postgres.copy import copy_rows, node_row
from gl_retrieval.storage.postgres.sql import (
    BASE,
    BASE_CHUNKS,
    GENERATION,
    ident,
    lock_key,
    qname,
    snapshot,
)
from gl_retrieval.storage.postgres.vectors import StagedChanges, StagedPGVectorStore

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from gl_retrieval.config import PostgresStorageConfig

__all__ = ["REBUILD_FRACTION", "REBUILD_MIN_ROWS", "CommitTarget", "commit"]

#: Commits adding at least this many rows, and at least REBUILD_FRACTION of the resulting
#: table, rebuild the table with a bulk HNSW build instead of inserting row by row.
REBUILD_MIN_ROWS = 1_000
REBUILD_FRACTION = 0.1


class CommitTarget(Protocol):
    """What the commit needs of the store that calls it (``PostgresStorage`` passes itself)."""

    config: PostgresStorageConfig
    location: str
    table: str
    vectors: str
    manifest_table: str
    documents_table: str

    def engines(self) -> tuple[Any, Any]: ...

    def errors(self, action: str) -> AbstractContextManager[None]: ...


def commit(storage: CommitTarget, handle: IndexHandle, store: StagedPGVectorStore) -> int:
    """Apply ``handle`` (see the module docstring); returns the new generation number."""
    from sqlalchemy import text

    staged = store.staged
    manifest = handle.manifest
    if manifest is None:
        raise StorageError("cannot commit an index without a manifest")
    dim = int(manifest.embedder.get("dimension") or 0)
    if not dim and staged.adds:
        dim = len(next(iter(staged.adds.values())).get_embedding())
    rows = [node_row(n, dim=dim) for n in staged.adds.values()]  # validate before any write
    engine, _ = storage.engines()
    with storage.errors("commit the index"), engine.begin() as conn:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("commit", storage.table)}
        )
        _ensure_extension(storage, conn)
        _create_small_tables(storage, conn)
        current = conn.execute(
            text(f"SELECT generation FROM {qname(storage.manifest_table)} WHERE id = 1 FOR UPDATE")
        ).scalar()
        expected = handle.extras.get(GENERATION)
        if current != expected:
            raise StorageError(
                f"another process committed to {storage.location} since this index run started "
                f"(generation {current}, expected {expected}); run `index` again"
            )
        live_dim = conn.execute(
            text(
                "SELECT atttypmod FROM pg_attribute "
                "WHERE attrelid = to_regclass(:t) AND attname = 'embedding'"
            ),
            {"t": qname(storage.vectors)},
        ).scalar()
        if live_dim is not None and live_dim != dim and not staged.cleared:
            raise IndexMismatchError(
                f"the index at {storage.location} holds {live_dim}-d vectors, this commit "
                f"{dim}-d ones: rebuild it with `gl-retrieval index CONFIG --rebuild`"
            )
        after = int(handle.extras.get(BASE_CHUNKS) or 0) + len(rows)
        bulk = len(rows) >= REBUILD_MIN_ROWS and len(rows) >= REBUILD_FRACTION * after
        if live_dim is None or staged.cleared or bulk:
            _rebuild(storage, conn, rows, staged, dim=dim, keep=live_dim is not None)
        else:
            _in_place(storage, conn, rows, staged, dim=dim)
        _write_documents(storage, conn, handle, replace=staged.cleared)
        generation = int(current or 0) + 1
        conn.execute(
            text(
                f"INSERT INTO {qname(storage.manifest_table)} "
                "(id, generation, dimension, manifest, updated_at) "
                "VALUES (1, :g, :d, CAST(:m AS jsonb), now()) ON CONFLICT (id) DO UPDATE SET "
                "generation = EXCLUDED.generation, dimension = EXCLUDED.dimension, "
                "manifest = EXCLUDED.manifest, updated_at = EXCLUDED.updated_at"
            ),
            {"g": generation, "d": dim, "m": manifest.to_json()},
        )
    return generation


def _ensure_extension(storage: CommitTarget, conn: Any) -> None:
    from sqlalchemy import text

    have = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).scalar()
    if have:
        return
    available = conn.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).scalar()
    if not available:
        raise StorageError(
            f"the PostgreSQL server of {storage.location} has no pgvector: install it on the "
            "server (https://github.com/pgvector/pgvector#installation), then run "
            "`CREATE EXTENSION vector;` in the database"
        )
    try:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except Exception as e:
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
        raise StorageError(
            f"the pgvector extension is not enabled in the database of {storage.location}, and "
            f"this user cannot enable it ({reason}): an administrator must run "
            "`CREATE EXTENSION vector;` in that database once"
        ) from None


def _create_small_tables(storage: CommitTarget, conn: Any) -> None:
    from sqlalchemy import text

    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {qname(storage.manifest_table)} ("
            "id integer PRIMARY KEY CHECK (id = 1), generation bigint NOT NULL, "
            "dimension integer, manifest jsonb NOT NULL, updated_at timestamptz NOT NULL)"
        )
    )
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {qname(storage.documents_table)} ("
            "doc_id text PRIMARY KEY, hash text NOT NULL, nodes jsonb NOT NULL, "
            "source text NOT NULL DEFAULT '')"
        )
    )


def _index_names(table: str) -> dict[str, str]:

    return {k: ident(f"{table}_{k}") for k in ("pkey", "hnsw", "ref_doc_id", "node_id", "metadata")}


def _rebuild(
    storage: CommitTarget,
    conn: Any,
    rows: list[Any],
    staged: StagedChanges,
    *,
    dim: int,
    keep: bool,
) -> None:
    from sqlalchemy import text

    cfg = storage.config
    live, build = storage.vectors, ident(f"{storage.vectors}__build")
    names = _index_names(build)
    conn.execute(text(f"DROP TABLE IF EXISTS {qname(build)}"))
    conn.execute(
        text(
            f"CREATE TABLE {qname(build)} (id bigserial, text varchar NOT NULL, metadata_ jsonb, "
            f'node_id varchar, embedding vector({dim}), CONSTRAINT "{names["pkey"]}" '
            "PRIMARY KEY (id))"
        )
    )
    if keep and not staged.cleared:
        conn.execute(
            text(
                f"INSERT INTO {qname(build)} (text, metadata_, node_id, embedding) "
                f"SELECT text, metadata_, node_id, embedding FROM {qname(live)} "
                "WHERE NOT (coalesce(metadata_->>'ref_doc_id', '') = ANY(:docs)) "
                "AND NOT (node_id = ANY(:nodes))"
            ),
            {"docs": list(staged.deleted_docs), "nodes": [*staged.deleted_nodes, *staged.adds]},
        )
    copy_rows(conn.connection.dbapi_connection, qname(build), rows, dim=dim)
    conn.execute(text(f"SET LOCAL maintenance_work_mem = '{cfg.maintenance_work_mem}'"))
    conn.execute(
        text(
            f'CREATE INDEX "{names["hnsw"]}" ON {qname(build)} USING hnsw '
            f"(embedding vector_cosine_ops) WITH (m = {int(cfg.hnsw_m)}, "
            f"ef_construction = {int(cfg.hnsw_ef_construction)})"
        )
    )
    ref_doc = "(metadata_->>'ref_doc_id')"
    conn.execute(text(f'CREATE INDEX "{names["ref_doc_id"]}" ON {qname(build)} ({ref_doc})'))
    conn.execute(text(f'CREATE UNIQUE INDEX "{names["node_id"]}" ON {qname(build)} (node_id)'))
    gin = "USING gin (metadata_ jsonb_path_ops)"  # serves ==/in filters (JSONB containment)
    conn.execute(text(f'CREATE INDEX "{names["metadata"]}" ON {qname(build)} {gin}'))
    conn.execute(text(f"ANALYZE {qname(build)}"))
    # The swap: readers wait for these few catalog changes, never for the build above.
    conn.execute(text(f"DROP TABLE IF EXISTS {qname(live)}"))
    conn.execute(text(f'ALTER TABLE {qname(build)} RENAME TO "{live}"'))
    for kind, name in _index_names(live).items():
        conn.execute(text(f'ALTER INDEX "public"."{names[kind]}" RENAME TO "{name}"'))
    seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": qname(live)}).scalar()
    if seq:
        conn.execute(text(f'ALTER SEQUENCE {seq} RENAME TO "{ident(live + "_id_seq")}"'))


def _in_place(
    storage: CommitTarget, conn: Any, rows: list[Any], staged: StagedChanges, *, dim: int
) -> None:
    from sqlalchemy import text

    live = qname(storage.vectors)
    if staged.deleted_docs:
        conn.execute(
            text(f"DELETE FROM {live} WHERE metadata_->>'ref_doc_id' = ANY(:docs)"),
            {"docs": list(staged.deleted_docs)},
        )
    replaced = [*staged.deleted_nodes, *staged.adds]
    if replaced:
        conn.execute(text(f"DELETE FROM {live} WHERE node_id = ANY(:ids)"), {"ids": replaced})
    copy_rows(conn.connection.dbapi_connection, live, rows, dim=dim)


def _write_documents(
    storage: CommitTarget, conn: Any, handle: IndexHandle, *, replace: bool
) -> None:
    from sqlalchemy import text

    table = qname(storage.documents_table)
    current = snapshot(handle.documents)
    if replace:
        conn.execute(text(f"DELETE FROM {table}"))
        base: dict[str, Any] = {}
    else:
        base = handle.extras.get(BASE) or {}
    gone = [d for d in base if d not in current]
    if gone:
        conn.execute(text(f"DELETE FROM {table} WHERE doc_id = ANY(:ids)"), {"ids": gone})
    changed = [
        (d, h, json.dumps(list(n)), s)
        for d, (h, n, s) in current.items()
        if base.get(d) != (h, n, s)
    ]
    if changed:
        from psycopg2.extras import execute_values

        with conn.connection.dbapi_connection.cursor() as cur:
            execute_values(
                cur,
                f"INSERT INTO {table} (doc_id, hash, nodes, source) VALUES %s "
                "ON CONFLICT (doc_id) DO UPDATE SET hash = EXCLUDED.hash, "
                "nodes = EXCLUDED.nodes, source = EXCLUDED.source",
                changed,
                template="(%s, %s, %s::jsonb, %s)",
                page_size=1000,
            )
