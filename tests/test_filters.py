"""Metadata filters: parsing, type checks against the index, and filtering in every mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn
from typer.testing import CliRunner

from gl_retrieval import FilterError, RetrievalPipeline
from gl_retrieval.cli import app
from gl_retrieval.retrieval.filters import (
    check_filters,
    matches,
    metadata_schema,
    parse_filter,
    parse_filters,
)
from gl_retrieval.storage import LocalStorage
from tests.conftest import MINILM, write_corpus

# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "op", "value"),
    [
        ("ticker=PENDLE", "ticker", FilterOperator.EQ, "PENDLE"),
        ("ticker == PENDLE", "ticker", FilterOperator.EQ, "PENDLE"),
        ("ticker!=ETH", "ticker", FilterOperator.NE, "ETH"),
        ("date<2026-01-01", "date", FilterOperator.LT, "2026-01-01"),
        ("date <= 2026-01-01T12:00", "date", FilterOperator.LTE, "2026-01-01T12:00"),
        ("year>2020", "year", FilterOperator.GT, 2020),
        ("score>=0.5", "score", FilterOperator.GTE, 0.5),
        ("delta>=-1.5e2", "delta", FilterOperator.GTE, -150.0),
        ('code="007"', "code", FilterOperator.EQ, "007"),
        ("ticker in PENDLE,ETH", "ticker", FilterOperator.IN, ["PENDLE", "ETH"]),
        ("ticker IN PENDLE, ETH", "ticker", FilterOperator.IN, ["PENDLE", "ETH"]),
        ("ticker not in PENDLE,ETH", "ticker", FilterOperator.NIN, ["PENDLE", "ETH"]),
        ("ticker=[PENDLE,ETH]", "ticker", FilterOperator.IN, ["PENDLE", "ETH"]),
        ("ticker!=[PENDLE,ETH]", "ticker", FilterOperator.NIN, ["PENDLE", "ETH"]),
        ("year in 2020,2021", "year", FilterOperator.IN, [2020, 2021]),
        ("title=a = b", "title", FilterOperator.EQ, "a = b"),
    ],
)
def test_parse_filter_strings(text: str, key: str, op: FilterOperator, value: Any) -> None:
    f = parse_filter(text)
    assert (f.key, f.operator, f.value) == (key, op, value)
    assert type(f.value) is type(value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ticker~PENDLE", "cannot parse filter 'ticker~PENDLE'"),
        ("ticker", "cannot parse filter"),
        ("ticker=", "has no value"),
        ("=PENDLE", "cannot parse filter"),
        ("ticker in ,", "comma-separated list"),
        ("year in 2020,abc", "not mixed"),
        ({"date": {"~": "2026"}}, "unknown operator '~'"),
        ([42], "must be a string"),
    ],
)
def test_malformed_filters_raise_filter_error(spec: Any, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filters(spec)


def test_parse_filters_accepts_every_spelling() -> None:
    as_strings = parse_filters(["ticker=PENDLE", "date<2026-01-01"])
    as_dict = parse_filters({"ticker": "PENDLE", "date": {"<": "2026-01-01"}})
    assert as_strings is not None and as_dict is not None
    assert as_strings.filters == as_dict.filters
    assert as_strings.condition == FilterCondition.AND
    assert parse_filters({"ticker": ["PENDLE", "ETH"]}).filters[0].operator == FilterOperator.IN  # type: ignore[union-attr]
    given = MetadataFilters(filters=[MetadataFilter(key="a", value=1)])
    assert parse_filters(given) is given
    assert parse_filters(None) is None and parse_filters([]) is None and parse_filters({}) is None
    assert parse_filters("year>=2020").filters[0].value == 2020  # type: ignore[union-attr]


def test_unsupported_llama_index_operator_is_refused() -> None:
    spec = MetadataFilters(
        filters=[MetadataFilter(key="t", value="x", operator=FilterOperator.TEXT_MATCH)]
    )
    with pytest.raises(FilterError, match="not supported"):
        parse_filters(spec)


# -- type checks ------------------------------------------------------------------------------

SCHEMA = metadata_schema(
    [
        {"year": 2020, "date": "2025-06-01", "ticker": "PENDLE"},
        {"year": 2021, "date": "2025-07-01T10:00:00", "ticker": "ETH", "score": 0.5},
    ]
)


def test_metadata_schema_kinds() -> None:
    assert {
        "year": frozenset({"number"}),
        "date": frozenset({"date"}),
        "ticker": frozenset({"string"}),
        "score": frozenset({"number"}),
    } == SCHEMA


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("year<abc", r"filter year < 'abc': 'year' holds numbers .* must be a number"),
        ("year in 2020,x", "not mixed"),
        ("date<5", r"filter date < 5: 'date' holds ISO dates in this index, not numbers"),
        ("date<yesterday", r"'date' holds ISO dates in this index; compare it with an ISO date"),
        ("tikcer=PENDLE", r"no indexed chunk has metadata key 'tikcer'; keys in this index: "),
        ("ticker=42", r"'ticker' holds strings .* quote the value .* ticker=\"42\""),
        ("ticker!=42", r"'ticker' holds strings"),  # would exclude nothing: as wrong
        ("year in abc,def", r"'year' holds numbers"),
        ("flag=true", r"'flag' holds booleans in this index, and a value of kind string never"),
    ],
)
def test_type_mismatch_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        check_filters(parse_filters(spec), {**SCHEMA, "flag": frozenset({"bool"})})


MIXED = metadata_schema(
    [{"year": 2020, "tags": ["a"], "v": "2025-01-01"}, {"year": "unknown", "tags": "b", "v": "x"}]
)


@pytest.mark.parametrize(
    ("schema", "spec"),
    [
        (SCHEMA, "year<2021"),
        (SCHEMA, "year>=2020.5"),
        (SCHEMA, "date<2026-01-01"),
        (SCHEMA, "ticker in PENDLE,ETH"),
        (SCHEMA, 'ticker="42"'),
        (MIXED, "year>=2015"),  # some chunks hold numbers: the others simply do not match
        (MIXED, "year=unknown"),
        (MIXED, "tags=7"),  # a list's elements are not recorded: any kind may be among them
        (MIXED, "v<y"),  # plain strings order with any string
    ],
)
def test_well_typed_filters_pass(schema: Any, spec: str) -> None:
    check_filters(parse_filters(spec), schema)


# -- evaluation semantics match SimpleVectorStore ---------------------------------------------

METAS = [
    {"ticker": "PENDLE", "year": 2020, "date": "2025-06-01"},
    {"ticker": "ETH", "year": 2024, "date": "2026-02-01"},
    {"ticker": "PENDLE", "year": 2026, "date": "2026-01-01"},
    {"year": 2019},
    {"ticker": "BTC", "date": "2025-12-31T23:59:59"},
]


@pytest.mark.parametrize(
    "spec",
    [
        ["ticker=PENDLE"],
        ["ticker!=PENDLE"],
        ["date<2026-01-01"],
        ["date>=2026-01-01"],
        ["year<=2020"],
        ["ticker in PENDLE,ETH"],
        ["ticker not in PENDLE,ETH"],
        ["ticker=PENDLE", "date<2026-01-01"],
    ],
)
def test_matches_agrees_with_simple_vector_store(spec: list[str]) -> None:
    filters = parse_filters(spec)
    reference = build_metadata_filter_fn(lambda i: METAS[int(i)], filters)
    assert [matches(m, filters) for m in METAS] == [reference(str(i)) for i in range(len(METAS))]


def test_matches_or_and_not_conditions() -> None:
    both = [MetadataFilter(key="ticker", value="ETH"), MetadataFilter(key="year", value=2019)]
    any_of = MetadataFilters(filters=both, condition=FilterCondition.OR)
    none_of = MetadataFilters(filters=both, condition=FilterCondition.NOT)
    assert [matches(m, any_of) for m in METAS] == [False, True, False, True, False]
    assert [matches(m, none_of) for m in METAS] == [True, False, True, False, True]


# -- filters in every mode, against a real index ----------------------------------------------

# 24 documents about BM25 from ticker AAA crowd the unfiltered top_k; the 4 PENDLE documents
# are about something else, so only filtering *before* top_k can find them.
NOISE = [
    {
        "_id": f"aaa{i}",
        "text": f"BM25 term frequency ranking note {i}: inverse document frequency weights "
        "rare query terms in lexical search engines.",
        "metadata": {"ticker": "AAA", "date": f"2025-01-{i + 1:02d}", "year": 2025},
    }
    for i in range(24)
]
PENDLE = [
    {
        "_id": f"pendle{i}",
        "text": text,
        "metadata": {"ticker": "PENDLE", "date": date, "year": int(date[:4])},
    }
    for i, (text, date) in enumerate(
        [
            ("Pendle announces a token unlock and a term frequency of updates.", "2025-03-01"),
            ("Pendle yield market listing on a new exchange.", "2025-11-15"),
            ("Pendle governance vote on fee ranking changes.", "2026-02-01"),
            ("Pendle partnership with a lending protocol.", "2024-07-09"),
        ]
    )
]


@pytest.fixture(scope="module")
def filter_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("filters")
    corpus = write_corpus(root / "corpus.jsonl", NOISE + PENDLE)
    cfg = {
        "embedder": {"model": MINILM},
        "retriever": {"top_k": 3},
        "storage": {"persist_dir": str(root / "index")},
        "sources": [{"path": str(corpus)}],
    }
    RetrievalPipeline.from_config(cfg).index()
    return cfg


def _pipe(cfg: dict[str, Any], mode: str) -> RetrievalPipeline:
    return RetrievalPipeline.from_config({**cfg, "retriever": {"top_k": 3, "mode": mode}})


QUERY = "BM25 term frequency ranking"


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filter_finds_documents_below_the_unfiltered_top_k(
    filter_index: dict[str, Any], mode: str
) -> None:
    pipe = _pipe(filter_index, mode)
    unfiltered = pipe.retrieve(QUERY)
    assert all(h.doc_id.startswith("aaa") for h in unfiltered)  # type: ignore[union-attr]
    hits = pipe.retrieve(QUERY, filters=["ticker=PENDLE"])
    assert hits and all(h.node.metadata["ticker"] == "PENDLE" for h in hits)
    if mode != "bm25":  # BM25 returns only documents that share a term with the query
        assert len(hits) == 3


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_combined_and_date_filters(filter_index: dict[str, Any], mode: str) -> None:
    pipe = _pipe(filter_index, mode)
    hits = pipe.retrieve(
        "Pendle term frequency ranking", filters={"ticker": "PENDLE", "date": {"<": "2026-01-01"}}
    )
    assert hits
    for h in hits:
        assert h.node.metadata["ticker"] == "PENDLE" and h.node.metadata["date"] < "2026-01-01"
    in_list = pipe.retrieve(QUERY, filters=["ticker in PENDLE,BTC", "year>=2025"], top_k=10)
    assert {h.doc_id for h in in_list} <= {"pendle0", "pendle1", "pendle2"}


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_type_mismatch_against_the_index_raises(filter_index: dict[str, Any], mode: str) -> None:
    pipe = _pipe(filter_index, mode)
    with pytest.raises(FilterError, match="'year' holds numbers"):
        pipe.retrieve(QUERY, filters=["year<abc"])
    with pytest.raises(FilterError, match="'date' holds ISO dates"):
        pipe.retrieve(QUERY, filters=["date<5"])


def test_cli_query_filter_option(filter_index: dict[str, Any], tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.json"  # JSON is valid YAML
    cfg_file.write_text(json.dumps({**filter_index, "retriever": {"top_k": 3, "mode": "hybrid"}}))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "query",
            str(cfg_file),
            QUERY,
            "--filter",
            "ticker=PENDLE",
            "--filter",
            "date<2026-01-01",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["filters"] == ["ticker=PENDLE", "date<2026-01-01"]
    assert data["results"]
    assert all(r["metadata"]["ticker"] == "PENDLE" for r in data["results"])
    assert all(r["metadata"]["date"] < "2026-01-01" for r in data["results"])

    bad = runner.invoke(app, ["query", str(cfg_file), QUERY, "--filter", "ticker~PENDLE"])
    assert bad.exit_code != 0
    assert "cannot parse filter 'ticker~PENDLE'" in bad.stderr
    assert "Traceback" not in bad.output


# -- checked before any model loads --------------------------------------------------------------


def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any) -> Any:
        raise AssertionError("the embedder was loaded")

    monkeypatch.setattr(RetrievalPipeline, "embedder", property(refuse))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nokey=1", "no indexed chunk has metadata key 'nokey'; keys in this index: date, "),
        ("year<abc", "'year' holds numbers in this index"),
    ],
)
def test_cli_refuses_a_filter_before_any_model_loads(
    filter_index: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spec: str,
    message: str,
) -> None:
    _no_model(monkeypatch)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({**filter_index, "retriever": {"mode": "hybrid"}}))
    result = CliRunner().invoke(app, ["query", str(cfg_file), QUERY, "--filter", spec])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_an_index_without_a_recorded_schema_still_checks_filters(
    filter_index: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generation committed before manifests recorded the metadata schema (and checksums):
    the schema is read from the stored metadata, still without a model."""
    built = LocalStorage(Path(filter_index["storage"]["persist_dir"]))
    gen = built.current_generation()
    assert gen is not None
    old = LocalStorage(tmp_path / "old")
    shutil.copytree(gen, old.persist_dir / "gen-000001")
    manifest = old.persist_dir / "gen-000001" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["integrity"], data["metadata_schema"]
    manifest.write_text(json.dumps(data))
    (old.persist_dir / "CURRENT").write_text("gen-000001\n")
    assert old.read_manifest().metadata_schema is None
    assert (
        old.metadata_schema()
        == built.metadata_schema()
        == metadata_schema(d["metadata"] for d in NOISE + PENDLE)
    )

    cfg = {**filter_index, "storage": {"persist_dir": str(old.persist_dir)}}
    with monkeypatch.context() as m:
        _no_model(m)
        with pytest.raises(FilterError, match="no indexed chunk has metadata key 'nokey'"):
            RetrievalPipeline.from_config(cfg).retrieve(QUERY, filters=["nokey=1"])
    hits = RetrievalPipeline.from_config(cfg).retrieve(QUERY, filters=["ticker=PENDLE"])
    assert hits and all(h.node.metadata["ticker"] == "PENDLE" for h in hits)
