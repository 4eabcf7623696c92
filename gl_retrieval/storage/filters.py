"""One meaning per metadata filter: what each operator means for each kind of value.

Every evaluator follows this rule: :func:`matches` here (the reference, one metadata dict at a
time), the embedded store's numpy columns (:mod:`gl_retrieval.storage.columns`, which dense, BM25
and hybrid retrieval all go through) and the Postgres backend's SQL
(:mod:`gl_retrieval.storage.postgres.filters`). ``tests/test_filter_conformance.py`` runs one
table of cases against all of them; ``docs/configuration.md`` shows the rule as a table generated
from :func:`matches`.

The rule, for a chunk whose metadata holds ``v`` under the filter's key, and a filter value ``x``:

* numbers (int and float, never bool) compare numerically; strings compare by code point, which
  orders ISO-8601 dates and timestamps correctly; booleans equal only booleans (``True`` is not
  ``1``);
* ``==``, ``in``, ``<``, ``<=``, ``>`` and ``>=`` match only a ``v`` of the same kind as ``x``;
  ``!=`` and ``nin`` (``not in``) are their negations, so they match a ``v`` of another kind;
* a missing key or a ``None`` value matches only ``!=`` and ``nin``;
* a list ``v`` matches ``==`` / ``in`` when one of its elements does (``!=`` / ``nin``: when none
  does); ``<``, ``<=``, ``>``, ``>=`` never match a list;
* no chunk's value makes an evaluator raise. A filter malformed in itself (``in`` without a
  list, ``<`` against a list) is a :class:`~gl_retrieval.errors.FilterError`, and one that can
  match no chunk by kind, or names a key no chunk has, is refused before searching
  (:func:`gl_retrieval.retrieval.filters.check_filters`, against :func:`metadata_schema`).

The operators only LlamaIndex's own API offers keep that principle: ``contains`` / ``any`` /
``all`` test the elements of list values, ``text_match`` (``_insensitive``) substrings of string
values, ``is_empty`` a missing, ``None``, empty-string or empty-list value; a ``==`` with a list
value means ``in`` and ``!=`` with one ``nin``; ``== None`` matches a missing or ``None`` value.
``and`` / ``or`` / ``not`` (none of them) combine filters, nested to any depth.

Example:
    >>> from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
    >>> f = MetadataFilters(filters=[MetadataFilter(key="year", operator=">=", value=2015)])
    >>> [matches(m, f) for m in ({"year": 2020}, {"year": "unknown"}, {}, {"year": [2016]})]
    [True, False, False, False]
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from llama_index.core.vector_stores.types import FilterCondition, MetadataFilter, MetadataFilters
from llama_index.core.vector_stores.types import FilterOperator as Op

from gl_retrieval.errors import FilterError

__all__ = [
    "DATE",
    "NEGATION",
    "ORDERING",
    "condition_of",
    "kind",
    "leaves",
    "match_value",
    "matches",
    "metadata_schema",
    "operand",
]

#: An ISO-8601 date or date-time string; :func:`kind` calls such a value a ``date``.
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
#: The negated operators and what they negate.
NEGATION = {Op.NE: Op.EQ, Op.NIN: Op.IN}
#: The ordering operators.
ORDERING: dict[Op, Callable[[Any, Any], bool]] = {
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
    Op.LT: operator.lt,
    Op.LTE: operator.le,
}
_SCALAR = {int: "number", float: "number", str: "string", bool: "bool"}
_LISTS = (Op.IN, Op.NIN, Op.ANY, Op.ALL)


def kind(value: Any) -> str | None:
    """The kind of a metadata value: ``number``, ``date``, ``string``, ``bool``, ``list``, the
    type's name for anything else, ``None`` for ``None``.

    Example:
        >>> [kind(v) for v in (2020, 0.5, True, "2025-01-02", "PENDLE", [1], None)]
        ['number', 'number', 'bool', 'date', 'string', 'list', None]
    """
    if value is None:
        return None
    if isinstance(value, str):
        return "date" if DATE.match(value) else "string"
    if isinstance(value, (list, tuple)):
        return "list"
    return _SCALAR.get(type(value), type(value).__name__)


def metadata_schema(metadatas: Iterable[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    """Which kinds of value (:func:`kind`) each metadata key holds across ``metadatas``.

    Example:
        >>> metadata_schema([{"year": 2020, "d": "2025-01-02"}, {"year": 2021.5, "n": None}])
        {'year': frozenset({'number'}), 'd': frozenset({'date'})}
    """
    kinds: dict[str, set[str]] = {}
    for md in metadatas:
        for key, value in md.items():
            k = kind(value)
            if k is not None:
                kinds.setdefault(key, set()).add(k)
    return {k: frozenset(v) for k, v in kinds.items()}


def operand(f: MetadataFilter) -> tuple[Op, Any]:
    """The operator and value of one filter, checked and normalised (``==`` with a list value is
    ``in``, ``!=`` with one ``nin``).

    Raises:
        FilterError: an unknown operator, or a value of the wrong shape for it.
    """
    try:
        op = Op(f.operator)
    except ValueError:
        valid = ", ".join(o.value for o in Op)
        raise FilterError(
            f"unknown filter operator {f.operator!r} on {f.key!r}; use one of: {valid}"
        ) from None
    value = f.value
    if op in (Op.EQ, Op.NE) and isinstance(value, list):
        return (Op.IN if op == Op.EQ else Op.NIN), value
    shown = f"filter on {f.key!r} with operator {op.value!r}"
    if op in _LISTS and not isinstance(value, list):
        raise FilterError(f"{shown} needs a list value, but got {value!r}; write e.g. [{value!r}]")
    if op in ORDERING and _SCALAR.get(type(value)) not in ("number", "string"):
        raise FilterError(f"{shown} needs a number or a string (an ISO date), but got {value!r}")
    if op == Op.CONTAINS and isinstance(value, list):
        raise FilterError(
            f"{shown} needs one value, but got the list {value!r}; use 'any' or 'all'"
        )
    if op in (Op.TEXT_MATCH, Op.TEXT_MATCH_INSENSITIVE) and not isinstance(value, str):
        raise FilterError(f"{shown} needs a string value, but got {value!r}")
    return op, value


def _same(a: Any, b: Any) -> bool:
    """``a == b`` within one kind: numbers numerically, strings exactly, booleans as booleans."""
    k = _SCALAR.get(type(a))
    return k is not None and k == _SCALAR.get(type(b)) and a == b


def _equals(value: Any, x: Any) -> bool:
    if isinstance(value, list):
        return any(_same(e, x) for e in value)
    return _same(value, x)


def match_value(op: Op, value: Any, x: Any) -> bool:
    """Whether a chunk holding ``value`` (``None``: missing) passes ``op x`` (from :func:`operand`).

    Example:
        >>> match_value(Op.LT, "2024-12-31", "2025-01-01"), match_value(Op.LT, 2024, "2025")
        (True, False)
        >>> match_value(Op.NE, "unknown", 2015), match_value(Op.EQ, True, 1)
        (True, False)
    """
    if op in NEGATION:
        return not match_value(NEGATION[op], value, x)
    if op == Op.EQ:
        return value is None if x is None else _equals(value, x)
    if op == Op.IN:
        return any(_equals(value, v) for v in x)
    if op in ORDERING:
        k = _SCALAR.get(type(value))
        return k in ("number", "string") and k == _SCALAR.get(type(x)) and ORDERING[op](value, x)
    if op == Op.CONTAINS:
        return isinstance(value, list) and _equals(value, x)
    if op in (Op.ANY, Op.ALL):
        test = any if op == Op.ANY else all
        return isinstance(value, list) and test(_equals(value, v) for v in x)
    if op == Op.TEXT_MATCH:
        return isinstance(value, str) and x in value
    if op == Op.TEXT_MATCH_INSENSITIVE:
        return isinstance(value, str) and x.lower() in value.lower()
    if op == Op.IS_EMPTY:
        return value is None or (isinstance(value, (str, list)) and not value)
    raise FilterError(f"unknown filter operator {op!r}")  # operand() refused it already


def condition_of(filters: MetadataFilters) -> FilterCondition:
    """How ``filters`` combine (``and`` when unset).

    Raises:
        FilterError: a condition other than ``and``, ``or`` and ``not``.
    """
    condition = filters.condition or FilterCondition.AND
    if condition not in (FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT):
        raise FilterError(f"unknown filter condition {condition!r}; use and, or or not")
    return FilterCondition(condition)


def leaves(filters: MetadataFilters) -> Iterable[MetadataFilter]:
    """Every single filter in ``filters``, nested ones included."""
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            yield from leaves(f)
        else:
            yield f


def _leaf(metadata: Mapping[str, Any], f: MetadataFilter) -> bool:
    op, x = operand(f)
    return match_value(op, metadata.get(f.key), x)


def matches(metadata: Mapping[str, Any], filters: MetadataFilters | None) -> bool:
    """True when a chunk with ``metadata`` passes ``filters`` (``None`` or empty: always).

    The reference evaluator: the columnar and SQL ones compute the same, many rows at once.

    Raises:
        FilterError: a filter is malformed (never because of ``metadata``).

    Example:
        >>> from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
        >>> f = MetadataFilters(filters=[MetadataFilter(key="tags", operator="nin", value=["x"])])
        >>> matches({"tags": ["x", "y"]}, f), matches({}, f)
        (False, True)
    """
    if filters is None:
        return True
    results = [
        matches(metadata, f) if isinstance(f, MetadataFilters) else _leaf(metadata, f)
        for f in filters.filters
    ]
    condition = condition_of(filters)
    if not results or condition == FilterCondition.AND:
        return all(results)
    if condition == FilterCondition.OR:
        return any(results)
    return not any(results)  # NOT: none of them
