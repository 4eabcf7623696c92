"""The PostgreSQL + pgvector backend: chunks, documents and manifest in one database.

Takes a ``storage: {backend: postgres}`` config; hands on the same ``Storage`` protocol as the
embedded store (open, load, begin, commit), with commits in one transaction.
"""

from __future__ import annotations

from gl_retrieval.storage.postgres.store import PostgresStorage

__all__ = ["PostgresStorage"]
