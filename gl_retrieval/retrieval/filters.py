"""Metadata filters: a friendly syntax, parsed into LlamaIndex ``MetadataFilters``, and checked.

Three spellings, all parsed by :func:`parse_filters` into one ``MetadataFilters`` (AND):

* strings, as on the command line (``--filter``, repeatable)::

      ticker=PENDLE            equality              ticker!=ETH          inequality
      date<2026-01-01          <, <=, >, >= on numbers and ISO dates (YYYY-MM-DD[THH:MM[:SS]])
      ticker in PENDLE,ETH     membership            ticker not in PENDLE,ETH

  Values that look like numbers are numbers (``year>=2020``); anything else, ISO dates
  included, is a string (ISO dates compare correctly as strings).
  Quote a value to keep it a string: ``code="007"``. Spaces around operators are allowed.

* a mapping: ``{"ticker": "PENDLE"}`` (equality), ``{"ticker": ["PENDLE", "ETH"]}`` (membership),
  ``{"date": {"<": "2026-01-01"}}`` (any operator above);

* a ``MetadataFilters`` (or a list of ``MetadataFilter``), passed through.

What each operator means for each kind of value is one rule, :mod:`gl_retrieval.storage.filters`
(numbers numerically, strings by code point, a value of another kind or a missing key matches
only ``!=`` and ``not in``; the table is in docs/configuration.md), and every backend and mode
evaluates it alike; :func:`matches` is its reference evaluator on one metadata dict.
:func:`check_filters` compares a filter's value with the kinds the index holds for that key, so
``year<abc`` against numeric years, or ``date<5`` against date strings, is a
:class:`~gl_retrieval.errors.FilterError` said once, before searching, rather than an empty
result.

Example:
    >>> f = parse_filters(["ticker=PENDLE", "date<2026-01-01", "year >= 2020"])
    >>> [(x.key, x.operator.value, x.value) for x in f.filters]
    [('ticker', '==', 'PENDLE'), ('date', '<', '2026-01-01'), ('year', '>=', 2020)]
    >>> matches({"ticker": "PENDLE", "date": "2025-06-01", "year": 2025}, f)
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias

from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from gl_retrieval.config import limits
from gl_retrieval.errors import FilterError
from gl_retrieval.storage.filters import (
    DATE,
    NEGATION,
    ORDERING,
    kind,
    leaves,
    matches,
    metadata_schema,
    operand,
)

__all__ = [
    "FilterSpec",
    "MetadataSchema",
    "check_filters",
    "matches",
    "metadata_schema",
    "parse_filter",
    "parse_filters",
]

#: Everything :func:`parse_filters` accepts.
FilterSpec: TypeAlias = (
    "MetadataFilters | Mapping[str, Any] | str | Sequence[str | MetadataFilter] | None"
)
#: metadata key -> the kinds of value the index holds for it ("number", "date", "string", ...).
MetadataSchema: TypeAlias = Mapping[str, frozenset[str]]

_OPS: dict[str, FilterOperator] = {
    "=": FilterOperator.EQ,
    "==": FilterOperator.EQ,
    "!=": FilterOperator.NE,
    "<": FilterOperator.LT,
    "<=": FilterOperator.LTE,
    ">": FilterOperator.GT,
    ">=": FilterOperator.GTE,
    "in": FilterOperator.IN,
    "not in": FilterOperator.NIN,
    "nin": FilterOperator.NIN,
}
_SUPPORTED = frozenset(_OPS.values())
_SYNTAX = "key=value, key!=value, key<value (<=, >, >=), key in a,b or key not in a,b"

_KEY = r"(?P<key>[A-Za-z_][\w.\-]*)"
_SYMBOLIC = re.compile(rf"^\s*{_KEY}\s*(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<value>.*?)\s*$", re.S)
_WORD = re.compile(rf"^\s*{_KEY}\s+(?P<op>not\s+in|in)\s+(?P<value>.*?)\s*$", re.S | re.I)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# -- parsing ----------------------------------------------------------------------------------


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if _NUMBER.match(text):
        number = float(text)
        if not math.isfinite(number):
            raise FilterError(f"number {_short(text)} is out of range: use a finite number")
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else number
    return text


def _short(text: str, width: int = 40) -> str:
    return repr(text) if len(text) <= width else f"{text[:width]!r}… ({len(text):,} characters)"


def _real_date(text: str, where: str) -> None:
    """Refuse ISO-looking dates that name no real day or time (2026-13-01, 2026-02-30)."""
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"filter {_short(where)}: {text!r} is not a real date: use YYYY-MM-DD (month "
            "01-12, a day that month has), optionally with THH:MM[:SS]"
        ) from None


def _list(text: str) -> list[Any]:
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    return [_scalar(part) for part in body.split(",") if part.strip()]


def parse_filter(text: str) -> MetadataFilter:
    """Parse one ``key<op>value`` string into a ``MetadataFilter``.

    Args:
        text: E.g. ``"ticker=PENDLE"``, ``"date<2026-01-01"``, ``"ticker in PENDLE,ETH"``.

    Raises:
        FilterError: the string has no known operator, or no key or value.

    Example:
        >>> parse_filter("ticker in PENDLE, ETH").value
        ['PENDLE', 'ETH']
    """
    if not isinstance(text, str):
        raise FilterError(f"a filter must be a string like 'ticker=PENDLE', got {text!r}")
    if len(text) > limits.FILTER_CHARS:
        raise FilterError(
            f"filter {_short(text)} is over the limit of {limits.FILTER_CHARS:,} characters"
        )
    if "\0" in text:
        raise FilterError(f"filter {_short(text)} contains a NUL character")
    try:
        return _parse_filter(text)
    except FilterError as e:
        if str(e).startswith(("filter ", "cannot parse filter")):
            raise
        raise FilterError(f"filter {_short(text)}: {e}") from None


def _parse_filter(text: str) -> MetadataFilter:
    m = _WORD.match(text) or _SYMBOLIC.match(text)
    if m is None:
        raise FilterError(f"cannot parse filter {_short(text)}: expected {_SYNTAX}")
    key, op, raw = m.group("key"), " ".join(m.group("op").lower().split()), m.group("value")
    if not raw.strip():
        raise FilterError(f"filter {_short(text)} has no value after {op!r}: expected {_SYNTAX}")
    operator = _OPS[op]
    if operator in (FilterOperator.IN, FilterOperator.NIN):
        values = _list(raw)
        if not values:
            raise FilterError(
                f"filter {_short(text)}: {op!r} needs a comma-separated list, e.g. a,b"
            )
        return _make(key, operator, values, text)
    if op in ("=", "==", "!=") and raw.strip().startswith("[") and raw.strip().endswith("]"):
        # key=[a,b] is membership; key!=[a,b] is exclusion.
        neg = op == "!="
        return _make(key, FilterOperator.NIN if neg else FilterOperator.IN, _list(raw), text)
    return _make(key, operator, _scalar(raw), text)


def _make(key: str, operator: FilterOperator, value: Any, where: str) -> MetadataFilter:
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and DATE.match(v):
            _real_date(v, where)
        elif isinstance(v, float) and not math.isfinite(v):
            raise FilterError(f"filter {_short(where)}: {v} is not a finite number")
    try:
        made = MetadataFilter(key=key, operator=operator, value=value)
    except ValueError:
        raise FilterError(
            f"filter {where!r}: invalid value {value!r}: use a number, a string, or a list of "
            "numbers or of strings (not mixed)"
        ) from None
    operand(made)  # in without a list, < against a list
    return made


def _from_mapping(spec: Mapping[str, Any]) -> list[MetadataFilter]:
    out: list[MetadataFilter] = []
    for key, value in spec.items():
        if isinstance(value, Mapping):
            for op, operand in value.items():
                name = " ".join(str(op).lower().split())
                if name not in _OPS:
                    raise FilterError(
                        f"filter {{{key!r}: {{{op!r}: ...}}}}: unknown operator {op!r}; use one "
                        f"of {', '.join(repr(o) for o in _OPS)}"
                    )
                operator = _OPS[name]
                if operator in (FilterOperator.IN, FilterOperator.NIN) and isinstance(operand, str):
                    operand = _list(operand)
                out.append(_make(str(key), operator, operand, f"{key}: {value}"))
        elif isinstance(value, (list, tuple, set, frozenset)):
            out.append(_make(str(key), FilterOperator.IN, list(value), f"{key}: {value}"))
        else:
            out.append(_make(str(key), FilterOperator.EQ, value, f"{key}: {value}"))
    return out


def parse_filters(spec: Any) -> MetadataFilters | None:
    """Turn any accepted filter spelling into ``MetadataFilters`` (``None`` when empty).

    Args:
        spec: ``None``; a ``MetadataFilters`` (returned as is); a mapping; one string; or a
            sequence of strings and ``MetadataFilter`` objects. See the module docstring.

    Raises:
        FilterError: a string cannot be parsed, or an operator is unknown or unsupported.

    Example:
        >>> parse_filters({"ticker": ["PENDLE", "ETH"], "date": {"<": "2026-01-01"}}).filters[0]
        MetadataFilter(key='ticker', value=['PENDLE', 'ETH'], operator=<FilterOperator.IN: 'in'>)
    """
    if spec is None:
        return None
    if isinstance(spec, MetadataFilters):
        _check_supported(spec)
        return spec if spec.filters else None
    if isinstance(spec, MetadataFilter):
        spec = [spec]
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, Mapping):
        filters = _from_mapping(spec)
    elif isinstance(spec, Iterable):
        filters = []
        for item in spec:
            if isinstance(item, MetadataFilter):
                filters.append(item)
            elif isinstance(item, str):
                filters.append(parse_filter(item))
            else:
                raise FilterError(
                    f"a filter must be a string like 'ticker=PENDLE' or a MetadataFilter, "
                    f"got {item!r}"
                )
    else:
        raise FilterError(
            f"filters must be a list of strings, a mapping or MetadataFilters, got {spec!r}"
        )
    if not filters:
        return None
    if len(filters) > limits.FILTERS:
        raise FilterError(
            f"{len(filters):,} filters given, over the limit of {limits.FILTERS} per query"
        )
    result = MetadataFilters(filters=filters, condition=FilterCondition.AND)
    _check_supported(result)
    return result


def _check_supported(filters: MetadataFilters) -> None:
    for f in leaves(filters):
        if f.operator not in _SUPPORTED:
            raise FilterError(
                f"filter on {f.key!r}: operator {f.operator.value!r} is not supported; use one "
                "of ==, !=, <, <=, >, >=, in, nin"
            )
        operand(f)  # a value of the wrong shape (in without a list, < against a list)


# -- checking against the index ---------------------------------------------------------------

_NAMES = {"number": "numbers", "date": "ISO dates", "string": "strings", "bool": "booleans"}


def _describe(kinds: frozenset[str]) -> str:
    return " and ".join(_NAMES.get(k, k) for k in sorted(kinds))


def _can_match(op: FilterOperator, value_kind: str | None, held: frozenset[str]) -> bool:
    """Whether a chunk holding one of the kinds ``held`` can pass ``op`` with a value of
    ``value_kind``, by the rule of :mod:`gl_retrieval.storage.filters` (``!=`` and ``not in``
    are asked as ``==`` and ``in``: a negation that excludes nothing is as wrong)."""
    if op in ORDERING:  # numbers with numbers, strings (ISO dates among them) with strings
        if value_kind == "date":
            return bool(held & {"date", "string"})
        return value_kind in held
    return "list" in held or value_kind in held  # a list's elements are not recorded


def check_filters(filters: MetadataFilters | None, schema: MetadataSchema) -> None:
    """Raise :class:`FilterError` when a filter can match no chunk of the index by kind.

    By the rule of :mod:`gl_retrieval.storage.filters`, a value of another kind than the
    filter's never equals or orders with it: ``year<abc`` against numeric years, ``date<5``
    against ISO dates or ``ticker=42`` against string tickers would quietly return nothing (and
    ``ticker!=42`` everything), so each is refused once, before searching.

    Args:
        filters: Parsed filters (``None`` passes).
        schema: The index's metadata schema
            (:meth:`~gl_retrieval.storage.base.Storage.metadata_schema`).

    Raises:
        FilterError: a key no indexed chunk has (the message lists the keys there are), or a
            value of a kind the key never holds (for ``in``: none of its values).

    Example:
        >>> try:
        ...     check_filters(parse_filters("year<abc"), {"year": frozenset({"number"})})
        ... except FilterError as e:
        ...     print(str(e).split(",")[0])
        filter year < 'abc': 'year' holds numbers in this index
    """
    if filters is None:
        return
    _check_supported(filters)
    for f in leaves(filters):
        if f.key not in schema:
            known = ", ".join(sorted(schema)) or "(none: the indexed documents have no metadata)"
            raise FilterError(
                f"filter {_shown(f)}: no indexed chunk has metadata key {f.key!r}; keys in this "
                f"index: {known}"
            )
        op, value = operand(f)
        op = NEGATION.get(op, op)
        held = frozenset(schema[f.key])
        kinds = [kind(v) for v in (value if isinstance(value, list) else [value])]
        if not any(_can_match(op, k, held) for k in kinds):
            raise FilterError(_refusal(f, op, kinds[0], held))


def _shown(f: MetadataFilter) -> str:
    return f"{f.key} {f.operator.value} {f.value!r}"


def _refusal(
    f: MetadataFilter, op: FilterOperator, value_kind: str | None, held: frozenset[str]
) -> str:
    shown, example = f"filter {_shown(f)}", f"{f.key}{_example_op(f)}"
    if held <= {"number"}:
        return (
            f"{shown}: {f.key!r} holds numbers in this index, so the value must be a number, "
            f"e.g. {example}2020"
        )
    if value_kind == "number":
        if op in ORDERING:
            fix = "compare it with a value of the same kind" + (
                ", e.g. an ISO date 2026-01-01" if "date" in held else ""
            )
        else:
            fix = f'quote the value to compare it as a string, e.g. {example}"{f.value}"'
        return f"{shown}: {f.key!r} holds {_describe(held)} in this index, not numbers; {fix}"
    if "date" in held and "string" not in held:
        return (
            f"{shown}: {f.key!r} holds ISO dates in this index; compare it with an ISO date, "
            f"e.g. {example}2026-01-01"
        )
    return (
        f"{shown}: {f.key!r} holds {_describe(held)} in this index, and a value of kind "
        f"{value_kind} never matches one of them (a filter compares values of one kind)"
    )


def _example_op(f: MetadataFilter) -> str:
    return {"==": "=", "in": "=", "nin": "!="}.get(f.operator.value, f.operator.value)
