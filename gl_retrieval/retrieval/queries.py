"""Checks on what a caller asks: the query text and how many results, before any model runs.

Example:
    >>> check_query("  what is BM25?  ")
    '  what is BM25?  '
    >>> try:
    ...     check_depth("top_k", 10**9)
    ... except QueryError as e:
    ...     print(e)
    top_k is 1,000,000,000, over the limit of 10,000 candidates per query
"""

from __future__ import annotations

from typing import Any

from gl_retrieval.config import limits
from gl_retrieval.errors import QueryError

__all__ = ["check_depth", "check_query", "check_utf8"]


def check_utf8(text: str, what: str) -> None:
    """Raise :class:`QueryError` naming ``what`` when ``text`` cannot be encoded as UTF-8.

    A lone UTF-16 surrogate (``"\\ud800"``: valid JSON, or a command-line byte that is not
    UTF-8) is a Python ``str`` but no text: tokenizers raise ``TypeError`` on it. It is refused
    here, before any model runs.

    Example:
        >>> try:
        ...     check_utf8("wing \\udcff", "query")
        ... except QueryError as e:
        ...     print(str(e)[:60])
        query holds a character that is not valid text (a lone surro
    """
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise QueryError(
            f"{what} holds a character that is not valid text (a lone surrogate {bad!r} at "
            f"position {e.start}): send UTF-8 text"
        ) from None


def check_query(query: Any) -> str:
    """Return ``query`` unchanged, or raise :class:`QueryError` when it cannot be a query.

    Raises:
        QueryError: not a string, empty or only whitespace, longer than
            :data:`~gl_retrieval.config.limits.QUERY_CHARS`, holding a NUL character, or
            not encodable as UTF-8 (a lone surrogate).
    """
    if not isinstance(query, str):
        raise QueryError(f"a query must be text, but got {type(query).__name__}")
    if not query.strip():
        shown = repr(query) if len(query) <= 20 else f"{len(query):,} whitespace characters"
        raise QueryError(f"query must be a non-empty string, but got {shown}")
    if len(query) > limits.QUERY_CHARS:
        raise QueryError(
            f"the query is {len(query):,} characters, over the limit of {limits.QUERY_CHARS:,}: "
            "search with a shorter text"
        )
    if "\0" in query:
        raise QueryError("the query contains a NUL character: remove it")
    check_utf8(query, "the query")
    return query


def check_depth(name: str, value: int | None) -> None:
    """Check a ``top_k`` / ``top_n`` argument: ``None``, or a whole number in 1..TOP_K.

    Raises:
        QueryError: not a whole number, not positive, or over :data:`~.limits.TOP_K`.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueryError(f"{name} must be a whole number, but got {value!r}")
    if value <= 0:
        raise QueryError(f"{name} must be > 0, but got {value}")
    if value > limits.TOP_K:
        raise QueryError(
            f"{name} is {value:,}, over the limit of {limits.TOP_K:,} candidates per query"
        )
