"""LlamaIndex ``MetadataFilters`` as SQL over a JSONB ``metadata_`` column, with bound values.

``PGVectorStore`` builds its filter SQL by pasting keys and values into the statement text, so a
value such as ``O'Reilly`` breaks the query and a crafted one injects SQL. Here every key and
value is a bound parameter, and the semantics follow LlamaIndex's ``SimpleVectorStore`` (and the
embedded backend), so a filter means the same thing on every backend:

- ``==`` / ``!=`` / ``in`` / ``nin`` compare JSON values by type (``2020`` is not ``"2020"``);
  ``==`` and ``in`` are written as JSONB containment, so a GIN index on the column serves them;
- ``<`` ``<=`` ``>`` ``>=`` compare numbers with numbers and strings with strings (ISO dates
  order correctly as strings, byte-wise like Python); a value of another type never matches;
- a missing key matches only ``!=`` and ``nin``;
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

from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from sqlalchemy import (
    Boolean,
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
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from gl_retrieval.errors import FilterError

__all__ = ["filters_clause"]

_COMPARE = {
    FilterOperator.GT: lambda a, b: a > b,
    FilterOperator.GTE: lambda a, b: a >= b,
    FilterOperator.LT: lambda a, b: a < b,
    FilterOperator.LTE: lambda a, b: a <= b,
}
_SUPPORTED = ", ".join(op.value for op in FilterOperator)


def _literal(value: Any) -> ColumnElement[Any]:
    # A JSON string bound as text and cast in SQL: plain parameters, whichever way it is run.
    return cast(literal(json.dumps(value), String), JSONB)


def _equals(metadata: ColumnElement[Any], key: str, value: Any) -> ColumnElement[bool]:
    """``metadata[key] == value``; for scalars as ``metadata @> {key: value}``, which the GIN
    index on ``metadata_`` answers (equal JSON values, numbers numerically, no type mixing)."""
    if isinstance(value, (list, dict)):
        return metadata[key] == _literal(value)
    return metadata.contains(_literal({key: value}))


def _missing(field: ColumnElement[Any]) -> ColumnElement[bool]:
    return or_(field.is_(None), func.jsonb_typeof(field) == "null")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compare(field: ColumnElement[Any], f: MetadataFilter) -> ColumnElement[bool]:
    value = f.value
    if _is_number(value):
        typed = case((func.jsonb_typeof(field) == "number", cast(field.astext, Numeric)))
        return _COMPARE[f.operator](typed, value)
    if isinstance(value, bool):
        typed = case((func.jsonb_typeof(field) == "boolean", cast(field.astext, Boolean)))
        return _COMPARE[f.operator](typed, value)
    if isinstance(value, str):
        typed = case((func.jsonb_typeof(field) == "string", field.astext))
        return _COMPARE[f.operator](typed.collate("C"), value)
    raise FilterError(
        f"filter on {f.key!r}: {f.operator.value!r} needs a number, a string or a date, "
        f"but got {value!r}"
    )


def _values(f: MetadataFilter) -> list[Any]:
    if not isinstance(f.value, list):
        raise FilterError(
            f"filter on {f.key!r}: {f.operator.value!r} needs a list of values, but got {f.value!r}"
        )
    return list(f.value)


def filter_clause(metadata: ColumnElement[Any], f: MetadataFilter) -> ColumnElement[bool]:
    """One filter as a SQL condition on the JSONB column ``metadata``."""
    field = metadata[f.key]  # metadata_ -> :key (the key is a bound parameter)
    op = f.operator
    if op == FilterOperator.EQ:
        return _equals(metadata, f.key, f.value)
    if op == FilterOperator.NE:
        return or_(_missing(field), field != _literal(f.value))
    if op in _COMPARE:
        return _compare(field, f)
    if op in (FilterOperator.IN, FilterOperator.NIN):
        values = _values(f)
        hit = or_(*(_equals(metadata, f.key, v) for v in values)) if values else false()
        return hit if op == FilterOperator.IN else or_(_missing(field), not_(hit))
    if op == FilterOperator.CONTAINS:
        return and_(func.jsonb_typeof(field) == "array", field.contains(_literal([f.value])))
    if op in (FilterOperator.ANY, FilterOperator.ALL):
        values = _values(f)
        parts = [field.contains(_literal([v])) for v in values]
        if not parts:  # as Python's any([]) / all([])
            empty = true() if op == FilterOperator.ALL else false()
            return and_(func.jsonb_typeof(field) == "array", empty)
        joined = or_(*parts) if op == FilterOperator.ANY else and_(*parts)
        return and_(func.jsonb_typeof(field) == "array", joined)
    if op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        if not isinstance(f.value, str):
            raise FilterError(f"filter on {f.key!r}: {op.value!r} needs a string value")
        text = case((func.jsonb_typeof(field) == "string", field.astext))
        if op == FilterOperator.TEXT_MATCH:
            return text.contains(f.value, autoescape=True)
        return text.icontains(f.value, autoescape=True)
    if op == FilterOperator.IS_EMPTY:
        return or_(_missing(field), field == _literal(""), field == _literal([]))
    raise FilterError(f"filter on {f.key!r}: unknown operator {op!r}; use one of {_SUPPORTED}")


def filters_clause(metadata: ColumnElement[Any], filters: MetadataFilters) -> ColumnElement[bool]:
    """``filters`` (nested to any depth) as one SQL condition on the JSONB column ``metadata``.

    Args:
        metadata: The JSONB column holding each row's metadata (``PGVectorStore``'s ``metadata_``).
        filters: LlamaIndex metadata filters.

    Raises:
        FilterError: an operator this backend does not know, or a value of the wrong shape.
    """
    parts = [
        filters_clause(metadata, f)
        if isinstance(f, MetadataFilters)
        else filter_clause(metadata, f)
        for f in filters.filters
    ]
    condition = filters.condition or FilterCondition.AND
    if not parts:
        return true()
    if condition == FilterCondition.AND:
        return and_(*parts)
    if condition == FilterCondition.OR:
        return or_(*parts)
    if condition == FilterCondition.NOT:
        # A comparison on a missing key is NULL in SQL but false in Python: coalesce so that
        # `not` matches such rows as SimpleVectorStore does. Only here: a bare `metadata_ @> x`
        # elsewhere keeps the GIN index and the planner's row estimates usable.
        return not_(func.coalesce(or_(*parts), false()))
    raise FilterError(f"unknown filter condition {condition!r}; use and, or or not")
