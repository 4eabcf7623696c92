"""LlamaIndex ``MetadataFilters`` as SQL over a JSONB ``metadata_`` column, with bound values.

``PGVectorStore`` builds its filter SQL by pasting keys and values into the statement text, so a
value such as ``O'Reilly`` breaks the query and a crafted one injects SQL. Here every key and
value is a bound parameter, and each operator means what :mod:`gl_retrieval.storage.filters`
says it means on every backend (``tests/test_filter_conformance.py`` runs the same table here):

- ``==`` / ``in`` are JSONB containment, ``metadata_ @> {key: x}`` (JSON values compare by type:
  ``2020`` is not ``"2020"``, ``true`` is not ``1``; numbers numerically), or'ed with
  ``metadata_ @> {key: [x]}`` for list values, so the GIN index on the column serves both;
- ``<`` ``<=`` ``>`` ``>=`` compare numbers with numbers and strings with strings (byte-wise,
  ``COLLATE "C"``: code point order, as Python); a value of another kind is NULL, never a match;
- ``!=`` / ``nin`` are the negations, true on a missing key or a JSON ``null``;
- ``contains`` / ``any`` / ``all`` test list values, ``text_match`` (``_insensitive``) substrings,
  ``is_empty`` a missing, null, empty-string or empty-list value;
- ``condition`` ``and`` / ``or`` / ``not`` (none of the filters match), nested to any depth.

Example:
    >>> from sqlalchemy import column
    >>> from sqlalchemy.dialects import postgresql
    >>> from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
    >>> f = MetadataFilters(filters=[MetadataFilter(key="ticker", value="O'X")])
    >>> sql = filters_clause(column("metadata_", postgresql.JSONB), f)
    >>> "O'X" in str(sql.compile(dialect=postgresql.dialect()))
    False
"""

from __future__ import annotations

import json
from typing import Any

from llama_index.core.vector_stores.types import FilterCondition, MetadataFilter, MetadataFilters
from llama_index.core.vector_stores.types import FilterOperator as Op
from sqlalchemy import (
    Numeric,
    String,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement, TextClause

from gl_retrieval.storage.filters import DATE, NEGATION, ORDERING, condition_of, operand

__all__ = ["filter_clause", "filters_clause", "metadata_kinds"]

#: Keys PGVectorStore keeps in ``metadata_`` beside the chunk's own metadata.
INTERNAL_KEYS = ("_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id")


def _literal(value: Any) -> ColumnElement[Any]:
    # A JSON string bound as text and cast in SQL: plain parameters, whichever way it is run.
    return cast(literal(json.dumps(value), String), JSONB)


def _equals(metadata: ColumnElement[Any], key: str, value: Any) -> ColumnElement[bool]:
    """``metadata[key]`` is ``value`` or a list holding it, as two containments the GIN index on
    ``metadata_`` answers (equal JSON values: numbers numerically, no mixing of types)."""
    if value is None:
        return _missing(metadata[key])
    return or_(
        metadata.contains(_literal({key: value})), metadata.contains(_literal({key: [value]}))
    )


def _missing(field: ColumnElement[Any]) -> ColumnElement[bool]:
    return or_(field.is_(None), func.jsonb_typeof(field) == "null")


def _compare(field: ColumnElement[Any], op: Op, value: Any) -> ColumnElement[bool]:
    if isinstance(value, str):
        typed = case((func.jsonb_typeof(field) == "string", field.astext))
        return ORDERING[op](typed.collate("C"), value)
    typed = case((func.jsonb_typeof(field) == "number", cast(field.astext, Numeric)))
    return ORDERING[op](typed, value)


def _positive(metadata: ColumnElement[Any], key: str, op: Op, value: Any) -> ColumnElement[bool]:
    field = metadata[key]  # metadata_ -> :key (the key is a bound parameter)
    is_array = func.jsonb_typeof(field) == "array"
    if op == Op.EQ:
        return _equals(metadata, key, value)
    if op == Op.IN:
        return or_(*(_equals(metadata, key, v) for v in value)) if value else false()
    if op in ORDERING:
        return _compare(field, op, value)
    if op == Op.CONTAINS:
        return and_(is_array, field.contains(_literal([value])))
    if op in (Op.ANY, Op.ALL):
        parts = [field.contains(_literal([v])) for v in value]
        if not parts:  # as Python's any([]) / all([])
            return and_(is_array, true() if op == Op.ALL else false())
        return and_(is_array, or_(*parts) if op == Op.ANY else and_(*parts))
    if op in (Op.TEXT_MATCH, Op.TEXT_MATCH_INSENSITIVE):
        string = case((func.jsonb_typeof(field) == "string", field.astext))
        if op == Op.TEXT_MATCH:
            return string.contains(value, autoescape=True)
        return string.icontains(value, autoescape=True)
    # is_empty (operand() refused every other operator)
    return or_(_missing(field), field == _literal(""), field == _literal([]))


def filter_clause(metadata: ColumnElement[Any], f: MetadataFilter) -> ColumnElement[bool]:
    """One filter as a SQL condition on the JSONB column ``metadata``.

    Raises:
        FilterError: an unknown operator, or a value of the wrong shape for it.
    """
    op, value = operand(f)
    if op in NEGATION:
        positive = _positive(metadata, f.key, NEGATION[op], value)
        if NEGATION[op] == Op.EQ and value is None:
            return not_(positive)
        return or_(_missing(metadata[f.key]), not_(positive))
    return _positive(metadata, f.key, op, value)


def filters_clause(metadata: ColumnElement[Any], filters: MetadataFilters) -> ColumnElement[bool]:
    """``filters`` (nested to any depth) as one SQL condition on the JSONB column ``metadata``.

    Args:
        metadata: The JSONB column holding each row's metadata (``PGVectorStore``'s ``metadata_``).
        filters: LlamaIndex metadata filters.

    Raises:
        FilterError: an operator or condition this backend does not know, or a value of the
            wrong shape (never a row's value).
    """
    parts = [
        filters_clause(metadata, f)
        if isinstance(f, MetadataFilters)
        else filter_clause(metadata, f)
        for f in filters.filters
    ]
    condition = condition_of(filters)
    if not parts:
        return true()
    if condition == FilterCondition.AND:
        return and_(*parts)
    if condition == FilterCondition.OR:
        return or_(*parts)
    # NOT. A comparison with a value of another kind is NULL in SQL but false in Python: coalesce
    # so that `not` matches such rows. Only here: a bare `metadata_ @> x` elsewhere keeps the
    # GIN index and the planner's row estimates usable.
    return not_(func.coalesce(or_(*parts), false()))


def metadata_kinds(table: str) -> tuple[TextClause, dict[str, Any]]:
    """The query (and its parameters) that reads which kinds of value each metadata key holds in
    ``table`` (a quoted, schema-qualified name), as ``(key, kind)`` rows: one scan on the server.

    Kinds as :func:`gl_retrieval.storage.filters.kind` names them: ``number``, ``bool``,
    ``string``, ``date``, ``list``, ``dict``.
    """
    sql = text(
        "SELECT e.key, CASE jsonb_typeof(e.value) WHEN 'number' THEN 'number' "
        "WHEN 'boolean' THEN 'bool' WHEN 'array' THEN 'list' WHEN 'object' THEN 'dict' "
        "ELSE CASE WHEN (e.value #>> '{}') ~ :date THEN 'date' ELSE 'string' END END "
        f"FROM {table}, jsonb_each(metadata_) AS e WHERE jsonb_typeof(e.value) <> 'null' "
        "AND NOT (e.key = ANY(:internal)) GROUP BY 1, 2"
    )
    return sql, {"date": DATE.pattern, "internal": list(INTERNAL_KEYS)}
