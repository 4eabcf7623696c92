"""Chunk rows for the Postgres table, written with binary ``COPY``.

:func:`node_row` turns a node into the row ``PGVectorStore.add`` would write (text outside the
metadata, the node's JSON in ``metadata_._node_content``); :func:`copy_rows` streams rows in
PostgreSQL's binary COPY format: no text formatting of hundreds of floats per row.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.utils import node_to_metadata_dict

from gl_retrieval.errors import StorageError

__all__ = ["COPY_COLUMNS", "Row", "copy_rows", "node_row"]

#: Columns written by :func:`copy_rows`, in order (``id`` is the table's own sequence).
COPY_COLUMNS = ("text", "metadata_", "node_id", "embedding")
_COPY_BATCH = 5_000

Row = tuple[str, str, str, np.ndarray]  # text, metadata JSON, node id, float32 vector


def node_row(node: BaseNode, *, dim: int) -> Row:
    """The table row of ``node``, as ``PGVectorStore.add`` would write it (text outside the
    metadata, the node's JSON in ``metadata_._node_content``)."""
    vec = np.asarray(node.get_embedding(), dtype=np.float32)
    if vec.shape != (dim,):
        raise StorageError(
            f"chunk {node.node_id!r} has a {vec.shape[-1] if vec.ndim else 0}-d embedding, but "
            f"this index holds {dim}-d vectors; rebuild the index with the new embedder "
            "(`gl-retrieval index CONFIG --rebuild`)"
        )
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    meta = json.dumps(node_to_metadata_dict(node, remove_text=True), ensure_ascii=False)
    if "\x00" in text or "\\u0000" in meta or "\x00" in node.node_id:
        raise StorageError(
            f"chunk {node.node_id!r} contains a NUL character, which PostgreSQL text cannot "
            "store: remove it from the source document"
        )
    return text, meta, node.node_id, vec


_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)


def _encode(rows: Iterable[Row], dim: int) -> bytes:
    """Rows in PostgreSQL's binary COPY format: varchar, jsonb (version 1), varchar, vector."""
    out = io.BytesIO()
    out.write(_HEADER)
    vec_head = struct.pack("!HH", dim, 0)
    vec_len = struct.pack("!i", 4 + 4 * dim)
    for text, meta, node_id, vec in rows:
        t, m, n = text.encode(), meta.encode(), node_id.encode()
        out.write(struct.pack("!hi", 4, len(t)))
        out.write(t)
        out.write(struct.pack("!i", len(m) + 1))
        out.write(b"\x01")
        out.write(m)
        out.write(struct.pack("!i", len(n)))
        out.write(n)
        out.write(vec_len)
        out.write(vec_head)
        out.write(vec.astype(">f4", copy=False).tobytes())
    out.write(_TRAILER)
    return out.getvalue()


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def copy_rows(dbapi_connection: Any, table: str, rows: Iterable[Row], *, dim: int) -> int:
    """Write ``rows`` into ``table`` with binary ``COPY`` in the connection's transaction.

    Args:
        dbapi_connection: A psycopg2 connection (inside the caller's transaction).
        table: The quoted, schema-qualified table name.
        rows: :func:`node_row` tuples.
        dim: The vector dimension.

    Returns:
        How many rows were written.
    """
    sql = f"COPY {table} ({', '.join(COPY_COLUMNS)}) FROM STDIN WITH (FORMAT binary)"
    n = 0
    with dbapi_connection.cursor() as cur:
        for batch in _batches(rows, _COPY_BATCH):
            cur.copy_expert(sql, io.BytesIO(_encode(batch, dim)))
            n += len(batch)
    return n
