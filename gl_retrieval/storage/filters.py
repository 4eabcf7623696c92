"""LlamaIndex ``MetadataFilters`` evaluated as numpy boolean masks over columnar metadata.

A :class:`Column` is built once per metadata key (one pass over the rows' metadata dicts); after
that every operator is a vectorised numpy expression over all rows, so a filtered query at 100k
rows costs well under a millisecond instead of a Python loop over 100k dicts.

Semantics, chosen to follow Python's own rules:

* numbers (int and float) compare numerically; strings compare lexicographically, which orders
  ISO-8601 dates and timestamps (``"2024-01-31"``) correctly;
* ordering operators (``>``, ``>=``, ``<``, ``<=``) and text matching raise
  :class:`~gl_retrieval.errors.FilterError` when a node holds a value of another type under the
  key (``"2024" > 2023`` raises in Python too); equality (``==``, ``!=``, ``in``, ``nin``) never
  raises: a value of another type is simply not equal;
* a missing key or a ``None`` value matches only ``!=``, ``nin`` and ``is_empty``;
* ``contains``, ``any`` and ``all`` test membership in list values;
* ``FilterCondition.NOT`` matches the rows where none of its filters match, as in LlamaIndex.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from gl_retrieval.errors import FilterError

__all__ = ["Column", "build_column", "evaluate_filters"]

MISSING, NUM, STR, BOOL, LIST, OTHER = range(6)
_KIND_OF_TYPE = {type(None): MISSING, int: NUM, float: NUM, str: STR, bool: BOOL, list: LIST}
_KIND_NAME = {NUM: "number", STR: "string", BOOL: "bool", LIST: "list", OTHER: "object"}
_ORDERING = {FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE}
_TEXT = {FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE}
_MEMBERSHIP = {FilterOperator.CONTAINS, FilterOperator.ANY, FilterOperator.ALL}


@dataclass(frozen=True)
class Column:
    """One metadata key over all rows.

    Attributes:
        key: The metadata key.
        values: The raw value of every row (``None`` where missing).
        kind: Type code per row (``MISSING``, ``NUM``, ``STR``, ``BOOL``, ``LIST``, ``OTHER``).
        num: float64 value of numeric rows, NaN elsewhere.
        codes: Index into ``vocab`` for string rows, -1 elsewhere.
        vocab: The distinct strings, sorted, so ordering on codes is ordering on strings.
    """

    key: str
    values: list[Any]
    kind: np.ndarray
    num: np.ndarray
    codes: np.ndarray
    vocab: list[str]


def build_column(key: str, *, metadata: Sequence[dict[str, Any]]) -> Column:
    """Build the columnar view of ``key`` from every row's metadata dict."""
    values = [m.get(key) for m in metadata]
    n = len(values)
    kind = np.fromiter((_KIND_OF_TYPE.get(type(v), OTHER) for v in values), np.int8, n)
    num = np.full(n, np.nan)
    num_rows = np.flatnonzero(kind == NUM)
    num[num_rows] = [values[i] for i in num_rows]
    str_rows = np.flatnonzero(kind == STR)
    strings = [values[i] for i in str_rows]
    vocab = sorted(set(strings))
    code_of = {s: i for i, s in enumerate(vocab)}
    codes = np.full(n, -1, dtype=np.int32)
    codes[str_rows] = [code_of[s] for s in strings]
    return Column(key=key, values=values, kind=kind, num=num, codes=codes, vocab=vocab)


def evaluate_filters(
    filters: MetadataFilters, *, column: Callable[[str], Column], live: np.ndarray
) -> np.ndarray:
    """Evaluate (possibly nested) filters to a boolean mask over all rows.

    Args:
        filters: The LlamaIndex filters.
        column: Returns the (cached) :class:`Column` of a key.
        live: Rows that exist; type checks only look at these.

    Returns:
        A boolean array, True where the row matches (not yet AND-ed with ``live``).

    Raises:
        FilterError: An unknown operator or condition, a malformed value, or a type mismatch.
    """
    masks = [
        evaluate_filters(f, column=column, live=live)
        if isinstance(f, MetadataFilters)
        else _evaluate_one(f, column(f.key), live)
        for f in filters.filters
    ]
    if not masks:
        return np.ones(len(live), dtype=bool)
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return np.logical_and.reduce(masks)
    if condition == FilterCondition.OR:
        return np.logical_or.reduce(masks)
    if condition == FilterCondition.NOT:
        return ~np.logical_or.reduce(masks)
    valid = ", ".join(c.value for c in FilterCondition)
    raise FilterError(f"unknown filter condition {condition!r}; use one of: {valid}")


def _evaluate_one(f: MetadataFilter, col: Column, live: np.ndarray) -> np.ndarray:
    op, value = FilterOperator(f.operator), f.value
    if op == FilterOperator.EQ:
        return _equal(col, value)
    if op == FilterOperator.NE:
        return ~_equal(col, value)
    if op in (FilterOperator.IN, FilterOperator.NIN):
        if not isinstance(value, list):
            raise FilterError(
                f"filter on {f.key!r} with operator {op.value!r} needs a list value, "
                f"but got {value!r}; write e.g. value=[{value!r}]"
            )
        hit = _is_in(col, value)
        return hit if op == FilterOperator.IN else ~hit
    if op == FilterOperator.IS_EMPTY:
        empty = (col.kind == MISSING) | (col.codes == _code(col, ""))
        lists = np.flatnonzero(col.kind == LIST)
        empty[lists] = [not col.values[i] for i in lists]
        return empty
    if op in _ORDERING:
        return _ordering(f, op, col, live)
    if op in _TEXT:
        return _text_match(f, op, col, live)
    if op in _MEMBERSHIP:
        return _membership(f, op, col, live)
    valid = ", ".join(o.value for o in FilterOperator)
    raise FilterError(f"unsupported filter operator {op!r} on {f.key!r}; use one of: {valid}")


def _none(col: Column) -> np.ndarray:
    return np.zeros(len(col.kind), dtype=bool)


def _code(col: Column, s: str) -> int:
    i = bisect.bisect_left(col.vocab, s)
    return i if i < len(col.vocab) and col.vocab[i] == s else -2  # -2 never matches


def _equal(col: Column, value: Any) -> np.ndarray:
    if value is None:
        return col.kind == MISSING
    if isinstance(value, str):
        return col.codes == _code(col, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (col.kind == NUM) & (col.num == value)
    hit = _none(col)
    rows = np.flatnonzero(col.kind >= BOOL)
    hit[rows] = [col.values[i] == value for i in rows]
    return hit


def _is_in(col: Column, values: list[Any]) -> np.ndarray:
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    hit = np.isin(col.codes, np.asarray([_code(col, s) for s in strings], dtype=np.int32))
    if numbers:
        hit |= (col.kind == NUM) & np.isin(col.num, np.asarray(numbers, dtype=np.float64))
    for v in values:
        if v is None or not isinstance(v, (str, int, float)) or isinstance(v, bool):
            hit |= _equal(col, v)
    return hit


def _check_kind(f: MetadataFilter, col: Column, live: np.ndarray, want: int, fix: str) -> None:
    bad = live & (col.kind != MISSING) & (col.kind != want)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise FilterError(
            f"filter {f.key!r} {f.operator.value} {f.value!r} compares a {_KIND_NAME[want]} "
            f"with {_KIND_NAME[int(col.kind[first])]} values: {int(bad.sum())} node(s) hold "
            f"e.g. {col.values[first]!r} under {f.key!r}; {fix}"
        )


def _ordering(f: MetadataFilter, op: FilterOperator, col: Column, live: np.ndarray) -> np.ndarray:
    value = f.value
    if isinstance(value, str):
        _check_kind(f, col, live, STR, f"store {f.key!r} as a string in every node")
        lo, hi = bisect.bisect_left(col.vocab, value), bisect.bisect_right(col.vocab, value)
        c = col.codes
        return {
            FilterOperator.GT: c >= hi,
            FilterOperator.GTE: c >= lo,
            FilterOperator.LT: (c >= 0) & (c < lo),
            FilterOperator.LTE: (c >= 0) & (c < hi),
        }[op]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_kind(f, col, live, NUM, f"store {f.key!r} as a number in every node")
        with np.errstate(invalid="ignore"):
            return {
                FilterOperator.GT: col.num > value,
                FilterOperator.GTE: col.num >= value,
                FilterOperator.LT: col.num < value,
                FilterOperator.LTE: col.num <= value,
            }[op]
    raise FilterError(
        f"filter on {f.key!r} with operator {op.value!r} needs a number or string value, "
        f"but got {value!r}"
    )


def _text_match(f: MetadataFilter, op: FilterOperator, col: Column, live: np.ndarray) -> np.ndarray:
    if not isinstance(f.value, str):
        raise FilterError(
            f"filter on {f.key!r} with operator {op.value!r} needs a string value, "
            f"but got {f.value!r}"
        )
    _check_kind(f, col, live, STR, "text matching applies to string metadata only")
    if op == FilterOperator.TEXT_MATCH:
        hits = [i for i, s in enumerate(col.vocab) if f.value in s]
    else:
        needle = f.value.lower()
        hits = [i for i, s in enumerate(col.vocab) if needle in s.lower()]
    return np.isin(col.codes, np.asarray(hits, dtype=np.int32))


def _membership(f: MetadataFilter, op: FilterOperator, col: Column, live: np.ndarray) -> np.ndarray:
    _check_kind(f, col, live, LIST, "use text_match for substrings, == for scalar values")
    if op == FilterOperator.CONTAINS:
        if isinstance(f.value, list):
            raise FilterError(
                f"filter on {f.key!r} with operator 'contains' needs one value, but got the "
                f"list {f.value!r}; use 'any' or 'all' to test several values"
            )
        test: Callable[[list[Any]], bool] = lambda v: f.value in v  # noqa: E731
    else:
        if not isinstance(f.value, list):
            raise FilterError(
                f"filter on {f.key!r} with operator {op.value!r} needs a list value, "
                f"but got {f.value!r}; write e.g. value=[{f.value!r}]"
            )
        wanted, combine = f.value, (any if op == FilterOperator.ANY else all)
        test = lambda v: combine(w in v for w in wanted)  # noqa: E731
    hit = _none(col)
    rows = np.flatnonzero(col.kind == LIST)
    hit[rows] = [test(col.values[i]) for i in rows]
    return hit
