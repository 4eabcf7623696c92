"""Database errors as one-line :class:`~gl_retrieval.errors.GLRetrievalError` messages.

Each names what failed, where (the URL without its password) and what to do; the driver's own
first line is kept, the password is never shown, and SQLAlchemy's statement dump (which can
hold whole vectors) is dropped.
"""

from __future__ import annotations

import re

from gl_retrieval.errors import GLRetrievalError, IndexMismatchError, StorageError

__all__ = ["translate"]

_HINTS = (
    (
        r"password authentication failed|no password supplied|role \".*\" does not exist",
        "check the user and password in storage.url (or PGPASSWORD / ~/.pgpass)",
    ),
    (
        r"database \".*\" does not exist",
        "create the database (`createdb NAME`) or fix its name in storage.url",
    ),
    (r"could not translate host name", "check the host name in storage.url"),
    (
        r"connection refused|no such file or directory|could not connect",
        "is PostgreSQL running there and accepting connections?",
    ),
    (r"timeout expired", "the server did not answer in time: check the host, port and firewall"),
    (
        r"type \"vector\" does not exist|extension \"vector\"",
        "the pgvector extension is missing: an administrator must run `CREATE EXTENSION vector;` "
        "in this database (pgvector must be installed on the server)",
    ),
    (
        r"relation .* does not exist",
        "the index tables are missing: run `gl-retrieval index CONFIG --rebuild`",
    ),
)


def translate(
    e: BaseException, *, action: str, location: str, password: str | None
) -> GLRetrievalError | None:
    """The error to raise instead of ``e``, or None when ``e`` is not a database error.

    Args:
        e: The exception raised by SQLAlchemy, psycopg2, asyncpg or the socket layer.
        action: What was being done, e.g. ``"read the index"``.
        location: The storage's password-free location.
        password: The URL's password, scrubbed from the message if the driver echoes it.
    """
    from sqlalchemy import exc as sa_exc

    module = type(e).__module__
    if not isinstance(e, (sa_exc.SQLAlchemyError, OSError)) and not module.startswith(
        ("psycopg2", "asyncpg")
    ):
        return None
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip() or type(orig).__name__
    if password:
        text = text.replace(password, "***")
    first = text.splitlines()[0].strip()
    if re.search(r"different vector dimensions|expected \d+ dimensions", text):
        return IndexMismatchError(
            f"cannot {action} at {location}: {first}. The table holds vectors of another "
            "dimension than this embedder's: it was rebuilt with another embedder (by another "
            "process?). Reload the pipeline, or rebuild with "
            "`gl-retrieval index CONFIG --rebuild`"
        )
    hint = next((h for pat, h in _HINTS if re.search(pat, text, re.IGNORECASE)), "")
    return StorageError(f"cannot {action} at {location}: {first}" + (f"; {hint}" if hint else ""))
