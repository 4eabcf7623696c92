"""Names shared by the Postgres store and its commit step: schema, identifiers, lock keys."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gl_retrieval.storage.base import DocRecord

__all__ = [
    "BASE",
    "BASE_CHUNKS",
    "GENERATION",
    "SCHEMA",
    "ident",
    "lock_key",
    "qname",
    "snapshot",
]

SCHEMA = "public"

GENERATION = "postgres_generation"
BASE = "postgres_documents"  # the committed document table the handle started from
BASE_CHUNKS = "postgres_chunks"


def ident(name: str) -> str:
    """A PostgreSQL identifier of at most 63 bytes (long names get a stable hash suffix)."""
    if len(name) <= 63:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return f"{name[:54]}_{digest}"


def qname(name: str) -> str:
    return f'"{SCHEMA}"."{name}"'


def lock_key(kind: str, table: str) -> int:
    digest = hashlib.blake2b(f"gl_retrieval:{kind}:{SCHEMA}.{table}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def snapshot(docs: dict[str, DocRecord]) -> dict[str, tuple[str, tuple[str, ...], str]]:
    return {k: (r.hash, tuple(r.nodes), r.source) for k, r in docs.items()}
