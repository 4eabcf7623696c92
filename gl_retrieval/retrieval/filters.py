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

:func:`check_filters` compares a filter's value with the types the index actually holds for that
key, so ``year<abc`` against numeric years, or ``date<5`` against date strings, is a
:class:`~gl_retrieval.errors.FilterError` rather than an empty (or crashing) result.
:func:`matches` evaluates filters on one metadata dict, with the same semantics as LlamaIndex's
``SimpleVectorStore`` (a missing key matches only ``!=`` and ``not in``).

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
_COMPARISONS = frozenset(
    {FilterOperator.LT, FilterOperator.LTE, FilterOperator.GT, FilterOperator.GTE}
)
_SYNTAX = "key=value, key!=value, key<value (<=, >, >=), key in a,b or key not in a,b"

_KEY = r"(?P<key>[A-Za-z_][\w.\-]*)"
_SYMBOLIC = re.compile(rf"^\s*{_KEY}\s*(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<value>.*?)\s*$", re.S)
_WORD = re.compile(rf"^\s*{_KEY}\s+(?P<op>not\s+in|in)\s+(?P<value>.*?)\s*$", re.S | re.I)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")


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
        if isinstance(v, str) and _DATE.match(v):
            _real_date(v, where)
        elif isinstance(v, float) and not math.isfinite(v):
            raise FilterError(f"filter {_short(where)}: {v} is not a finite number")
    try:
        return MetadataFilter(key=key, operator=operator, value=value)
    except ValueError:
        raise FilterError(
            f"filter {where!r}: invalid value {value!r}: use a number, a string, or a list of "
            "numbers or of strings (not mixed)"
        ) from None


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


def _leaves(filters: MetadataFilters) -> Iterable[MetadataFilter]:
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            yield from _leaves(f)
        else:
            yield f


def _check_supported(filters: MetadataFilters) -> None:
    for f in _leaves(filters):
        if f.operator not in _SUPPORTED:
            raise FilterError(
                f"filter on {f.key!r}: operator {f.operator.value!r} is not supported; use one "
                "of ==, !=, <, <=, >, >=, in, nin"
            )


# -- checking against the index ---------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "date" if _DATE.match(value) else "string"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def metadata_schema(metadatas: Iterable[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    """Which kinds of value each metadata key holds across ``metadatas``.

    Example:
        >>> metadata_schema([{"year": 2020, "d": "2025-01-02"}, {"year": 2021.5}])
        {'year': frozenset({'number'}), 'd': frozenset({'date'})}
    """
    kinds: dict[str, set[str]] = {}
    for md in metadatas:
        for key, value in md.items():
            if value is not None:
                kinds.setdefault(key, set()).add(_kind(value))
    return {k: frozenset(v) for k, v in kinds.items()}


def _describe(kinds: frozenset[str]) -> str:
    names = {"number": "numbers", "date": "ISO dates", "string": "strings", "bool": "booleans"}
    return " and ".join(names.get(k, k) for k in sorted(kinds))


def check_filters(filters: MetadataFilters | None, schema: MetadataSchema) -> None:
    """Raise :class:`FilterError` when a filter cannot match the index's metadata by type.

    Args:
        filters: Parsed filters (``None`` passes).
        schema: The index's :func:`metadata_schema`.

    Raises:
        FilterError: a key no indexed chunk has (the message lists the keys there are), a
            comparison between a number and a string/date, or a date against a non-date.

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
    for f in _leaves(filters):
        shown = f"{f.key} {f.operator.value} {f.value!r}"
        if f.key not in schema:
            known = ", ".join(sorted(schema)) or "(none: the indexed documents have no metadata)"
            raise FilterError(
                f"filter {shown}: no indexed chunk has metadata key {f.key!r}; keys in this "
                f"index: {known}"
            )
        held = schema[f.key]
        values = f.value if isinstance(f.value, list) else [f.value]
        for v in values:
            kind = _kind(v)
            if held <= {"number"} and kind != "number":
                raise FilterError(
                    f"filter {shown}: {f.key!r} holds numbers in this index, so the value must "
                    f"be a number, e.g. {f.key}{_example_op(f)}2020"
                )
            if "number" not in held and kind == "number" and f.operator in _COMPARISONS:
                raise FilterError(
                    f"filter {shown}: {f.key!r} holds {_describe(held)} in this index, not "
                    "numbers; compare it with a value of the same kind"
                    + (", e.g. an ISO date 2026-01-01" if "date" in held else "")
                )
            if held == {"date"} and f.operator in _COMPARISONS and kind != "date":
                raise FilterError(
                    f"filter {shown}: {f.key!r} holds ISO dates in this index; compare it with "
                    f"an ISO date, e.g. {f.key}{_example_op(f)}2026-01-01"
                )


def _example_op(f: MetadataFilter) -> str:
    return {"==": "=", "in": "=", "nin": "!="}.get(f.operator.value, f.operator.value)


# -- evaluating -------------------------------------------------------------------------------


def _match_one(f: MetadataFilter, value: Any) -> bool:
    op = f.operator
    if value is None:
        return op in (FilterOperator.NE, FilterOperator.NIN)
    try:
        if op == FilterOperator.EQ:
            return bool(value == f.value)
        if op == FilterOperator.NE:
            return bool(value != f.value)
        if op == FilterOperator.LT:
            return bool(value < f.value)
        if op == FilterOperator.LTE:
            return bool(value <= f.value)
        if op == FilterOperator.GT:
            return bool(value > f.value)
        if op == FilterOperator.GTE:
            return bool(value >= f.value)
        if op == FilterOperator.IN:
            return value in f.value
        if op == FilterOperator.NIN:
            return value not in f.value
    except TypeError:
        return False  # a value of another type than the filter's (mixed-type key)
    raise FilterError(f"operator {op.value!r} is not supported")


def matches(metadata: Mapping[str, Any], filters: MetadataFilters | None) -> bool:
    """True when ``metadata`` passes ``filters`` (``None`` passes everything).

    Semantics follow LlamaIndex's ``SimpleVectorStore``: a missing key matches only ``!=`` and
    ``not in``; ``condition`` ``and`` / ``or`` / ``not`` combine the filters; nested
    ``MetadataFilters`` are evaluated recursively.

    Example:
        >>> matches({"year": 2019}, parse_filters("year>=2020"))
        False
    """
    if filters is None or not filters.filters:
        return True
    results = (
        matches(metadata, f)
        if isinstance(f, MetadataFilters)
        else _match_one(f, metadata.get(f.key))
        for f in filters.filters
    )
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return all(results)
    if condition == FilterCondition.OR:
        return any(results)
    return not any(results)  # NOT
