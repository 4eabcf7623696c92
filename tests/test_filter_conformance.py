"""One meaning per filter: one table of cases, run against every evaluator.

The rule is :mod:`gl_retrieval.storage.filters` (and the table in docs/configuration.md). The
same rows and the same filters go through the reference evaluator (``matches``, one dict at a
time), the embedded store's columns (store level), the pipeline in dense, bm25 and hybrid mode
(so the three agree on which documents pass), and PostgreSQL's SQL (a real server, dense mode
and store level). The metadata mixes kinds on purpose: int years with a few ``"unknown"``
strings, floats, booleans beside ``1`` and ``"yes"``, ISO dates beside a non-date, lists beside
scalars, ``None`` and missing keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from gl_retrieval import RetrievalPipeline
from gl_retrieval.retrieval.filters import parse_filters
from gl_retrieval.storage.embedded import EmbeddedVectorStore
from gl_retrieval.storage.filters import matches
from tests.conftest import MINILM, write_corpus
from tests.test_postgres import PG, pg  # noqa: F401  (the session's Postgres fixture)

ROWS: dict[str, dict[str, Any]] = {
    "a": {"year": 2014, "score": 0.5, "date": "2014-05-01", "flag": True, "tags": ["x", "y"],
          "kind": "paper"},
    "b": {"year": 2015, "score": 1.5, "date": "2015-12-31T10:00:00", "flag": False,
          "tags": ["y"], "kind": "note"},
    "c": {"year": 2020, "score": 2, "date": "2020-01-15", "tags": [], "kind": "paper"},
    "d": {"year": "unknown", "score": "n/a", "date": "unknown", "flag": "yes", "tags": "x",
          "kind": "paper"},
    "e": {"year": 2023.0, "date": "2023-06-30", "flag": 1, "tags": ["z", 2015], "kind": None},
    "f": {"kind": "note"},
    "g": {"year": "unknown", "score": 3.25, "date": "2025-01-01", "tags": ["x"], "kind": "Paper"},
}  # fmt: skip
ALL = set(ROWS)


def _f(key: str, op: str, value: Any) -> MetadataFilter:
    # model_construct: a boolean value, which MetadataFilter's validation refuses
    return MetadataFilter.model_construct(key=key, operator=FilterOperator(op), value=value)


def _group(condition: str, *leaves: MetadataFilter) -> MetadataFilters:
    return MetadataFilters(filters=list(leaves), condition=FilterCondition(condition))


#: (filters, expected ids). Strings go through parse_filters, as --filter does.
CASES: list[tuple[Any, set[str]]] = [
    # numbers compare numerically; a string, a missing key or None never orders or equals
    (["year>=2015"], {"b", "c", "e"}),
    (["year<2015"], {"a"}),
    (["year==2023"], {"e"}),  # 2023.0 is 2023
    (["year!=2015"], ALL - {"b"}),  # != is the negation: other kinds and missing keys pass
    (["year in 2014,2020"], {"a", "c"}),
    (["year not in 2014,2020"], ALL - {"a", "c"}),
    (["score>1"], {"b", "c", "g"}),
    (["score<=0.5"], {"a"}),
    (["score=2.0"], {"c"}),
    # strings compare with strings only, by code point
    (["year=unknown"], {"d", "g"}),
    (["year<v"], {"d", "g"}),
    (["date<2016-01-01"], {"a", "b"}),
    (["date<=2015-12-31"], {"a"}),  # the timestamp sorts after the bare date
    (["date>=2020-01-15"], {"c", "d", "e", "g"}),  # "unknown" sorts after every digit
    (["kind=paper"], {"a", "c", "d"}),
    (["kind!=paper"], {"b", "e", "f", "g"}),  # None matches !=
    (["kind in note,Paper"], {"b", "f", "g"}),
    # lists: == / in by element, != / not in the negation, ordering never
    (["tags=x"], {"a", "d", "g"}),
    (["tags!=x"], {"b", "c", "e", "f"}),
    (["tags in y,z"], {"a", "b", "e"}),
    (["tags not in y,z"], {"c", "d", "f", "g"}),
    (["tags=2015"], {"e"}),
    (["tags>a"], {"d"}),
    # booleans equal only booleans: True is not 1
    (["flag=1"], {"e"}),
    (["flag!=1"], ALL - {"e"}),
    (["flag=yes"], {"d"}),
    (MetadataFilters(filters=[_f("flag", "==", True)]), {"a"}),
    (MetadataFilters(filters=[_f("flag", "!=", True)]), ALL - {"a"}),
    (MetadataFilters(filters=[_f("flag", "in", [False, "yes"])]), {"b", "d"}),
    # combined, nested
    (["year>=2015", "kind=paper"], {"c"}),
    (MetadataFilters(filters=[_group("or", _f("year", "<", 2015), _f("kind", "==", "note"))]),
     {"a", "b", "f"}),
    (_group("not", _f("year", ">=", 2015), _f("tags", "==", "x")), {"f"}),
    (_group("and", _group("not", _f("score", ">", 1)), _f("kind", "!=", "note")),
     {"a", "d", "e"}),
]  # fmt: skip

#: Operators only LlamaIndex's own API offers (the pipeline's parser refuses them): run at the
#: store level, on both backends, and by the reference.
STORE_CASES: list[tuple[MetadataFilters, set[str]]] = [
    (MetadataFilters(filters=[_f("tags", "contains", "x")]), {"a", "g"}),
    (MetadataFilters(filters=[_f("tags", "contains", 2015)]), {"e"}),
    (MetadataFilters(filters=[_f("tags", "any", ["y", "z"])]), {"a", "b", "e"}),
    (MetadataFilters(filters=[_f("tags", "all", ["x", "y"])]), {"a"}),
    (MetadataFilters(filters=[_f("kind", "text_match", "ape")]), {"a", "c", "d", "g"}),
    (MetadataFilters(filters=[_f("kind", "text_match_insensitive", "PAP")]), {"a", "c", "d", "g"}),
    (MetadataFilters(filters=[_f("year", "text_match", "201")]), set()),  # numbers are not text
    (MetadataFilters(filters=[_f("tags", "is_empty", None)]), {"c", "f"}),
    (MetadataFilters(filters=[_f("kind", "is_empty", None)]), {"e"}),
    (MetadataFilters(filters=[_f("kind", "==", None)]), {"e"}),
    (MetadataFilters(filters=[_f("year", "==", [2014, 2020])]), {"a", "c"}),  # == a list: in
]


def _filters(spec: Any) -> MetadataFilters:
    parsed = parse_filters(spec)
    assert parsed is not None
    return parsed


def _id(spec: Any) -> str:
    if isinstance(spec, list):
        return " & ".join(spec)
    return " ".join(
        f"{f.key}{f.operator.value}{f.value!r}" if isinstance(f, MetadataFilter) else f"({_id(f)})"
        for f in spec.filters
    ) + ("" if spec.condition in (None, FilterCondition.AND) else f" [{spec.condition.value}]")


ALL_CASES = CASES + STORE_CASES
ALL_IDS = [_id(spec) for spec, _ in ALL_CASES]


# -- the reference and the embedded store's columns ---------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), ALL_CASES, ids=ALL_IDS)
def test_reference(spec: Any, expected: set[str]) -> None:
    filters = _filters(spec) if isinstance(spec, list) else spec
    assert {i for i, meta in ROWS.items() if matches(meta, filters)} == expected


@pytest.fixture(scope="module")
def columns() -> EmbeddedVectorStore:
    store = EmbeddedVectorStore()
    store.add(
        [
            TextNode(id_=i, text=i, embedding=[1.0, float(n)], metadata=meta)
            for n, (i, meta) in enumerate(ROWS.items())
        ]
    )
    return store


@pytest.mark.parametrize(("spec", "expected"), ALL_CASES, ids=ALL_IDS)
def test_embedded_columns(columns: EmbeddedVectorStore, spec: Any, expected: set[str]) -> None:
    filters = _filters(spec) if isinstance(spec, list) else spec
    q = VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=50, filters=filters)
    assert set(columns.query(q).ids or []) == expected
    ids = [*ROWS, "not-stored"]
    mask = columns.filter_mask(filters, node_ids=ids)
    assert {i for i, keep in zip(ids, mask, strict=True) if keep} == expected


# -- the pipeline: dense, bm25 and hybrid keep the same documents --------------------------------

# Every text shares the query's word, so BM25 scores every document; top_k exceeds the corpus.
CORPUS = [
    {"_id": i, "text": f"alpha filter conformance row {i}", "metadata": meta}
    for i, meta in ROWS.items()
]
QUERY = "alpha"


def _config(root: Path, storage: dict[str, Any]) -> dict[str, Any]:
    corpus = write_corpus(root / "corpus.jsonl", CORPUS)
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 50, "candidate_k": 50},
        "storage": storage,
        "sources": [{"path": str(corpus)}],
    }


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RetrievalPipeline]:
    root = tmp_path_factory.mktemp("conformance")
    cfg = _config(root, {"persist_dir": str(root / "index")})
    RetrievalPipeline.from_config(cfg).index()
    return {
        mode: RetrievalPipeline.from_config(
            {**cfg, "retriever": {**cfg["retriever"], "mode": mode}}
        )
        for mode in ("dense", "bm25", "hybrid")
    }


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[_id(s) for s, _ in CASES])
def test_pipeline_modes(
    embedded: dict[str, RetrievalPipeline], mode: str, spec: Any, expected: set[str]
) -> None:
    hits = embedded[mode].retrieve(QUERY, filters=spec, top_k=50)
    assert {h.doc_id for h in hits} == expected


def _store_ids(pipe: RetrievalPipeline, filters: MetadataFilters) -> set[str]:
    storage = pipe.storage
    handle = storage.load(embed_model=pipe.embedder)
    vector = pipe.embedder.embed_queries([QUERY])[0].tolist()
    q = VectorStoreQuery(query_embedding=vector, similarity_top_k=50, filters=filters)
    return {n.ref_doc_id for n in storage.search(handle, q).nodes or []}  # type: ignore[misc]


@pytest.mark.parametrize(("spec", "expected"), STORE_CASES, ids=[_id(s) for s, _ in STORE_CASES])
def test_embedded_storage_search(
    embedded: dict[str, RetrievalPipeline], spec: MetadataFilters, expected: set[str]
) -> None:
    assert _store_ids(embedded["dense"], spec) == expected


# -- PostgreSQL: the same table as SQL ------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(pg: PG, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrievalPipeline]:  # noqa: F811
    table = f"t_{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("conformance_pg")
    pipe = RetrievalPipeline.from_config(
        _config(root, {"backend": "postgres", "url": pg.url, "table": table})
    )
    pipe.index()
    yield pipe
    for t in (f"data_{table}", f"{table}_documents", f"{table}_manifest"):
        pg.sql(f'DROP TABLE IF EXISTS "{t}"')


@pytest.mark.postgres
@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[_id(s) for s, _ in CASES])
def test_postgres_dense(postgres: RetrievalPipeline, spec: Any, expected: set[str]) -> None:
    hits = postgres.retrieve(QUERY, filters=spec, top_k=50)
    assert {h.doc_id for h in hits} == expected


@pytest.mark.postgres
@pytest.mark.parametrize(("spec", "expected"), STORE_CASES, ids=[_id(s) for s, _ in STORE_CASES])
def test_postgres_store_level(
    postgres: RetrievalPipeline, spec: MetadataFilters, expected: set[str]
) -> None:
    assert _store_ids(postgres, spec) == expected


@pytest.mark.postgres
def test_both_backends_record_the_same_schema(
    embedded: dict[str, RetrievalPipeline], postgres: RetrievalPipeline
) -> None:
    schema = embedded["dense"].storage.metadata_schema()
    assert schema == postgres.storage.metadata_schema()
    assert schema["year"] == {"number", "string"} and schema["tags"] == {"list", "string"}
    assert schema["flag"] == {"bool", "number", "string"} and schema["date"] == {"date", "string"}
