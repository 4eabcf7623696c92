"""EmbeddedVectorStore: the LlamaIndex vector-store contract, filters, persistence, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from llama_index.core import Settings, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import (
    Document,
    NodeRelationship,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from gl_retrieval.errors import (
    ConfigError,
    EmbeddingError,
    FilterError,
    IndexMismatchError,
    IndexNotFoundError,
    StorageError,
)
from gl_retrieval.storage import _files
from gl_retrieval.storage.embedded import EmbeddedVectorStore

DIM = 16


@pytest.fixture(autouse=True)
def _no_global_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any read of LlamaIndex's global Settings.embed_model / .llm fails the test."""

    def refuse(self: Any) -> Any:
        raise AssertionError("gl_retrieval read LlamaIndex's global Settings")

    for name in ("embed_model", "llm"):
        monkeypatch.setattr(type(Settings), name, property(refuse))


class HashEmbedding(BaseEmbedding):
    """A tiny deterministic bag-of-words embedder: each word hashes to one of DIM axes."""

    def _vector(self, text: str) -> list[float]:
        v = np.zeros(DIM, np.float32)
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        return (v / (np.linalg.norm(v) or 1.0)).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def make_nodes(
    n: int, *, seed: int = 0, dim: int = DIM, docs: int = 10, normalise: bool = False
) -> list[TextNode]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32) * rng.uniform(0.5, 3, (n, 1))
    if normalise:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        TextNode(
            id_=f"n{i}",
            text=f"chunk {i}",
            embedding=vectors[i].tolist(),
            metadata={"i": i, "parity": "even" if i % 2 == 0 else "odd"},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i % docs}")},
        )
        for i in range(n)
    ]


def query(store: EmbeddedVectorStore, vector: Any, k: int = 5, **kw: Any) -> list[str]:
    q = VectorStoreQuery(query_embedding=list(map(float, vector)), similarity_top_k=k, **kw)
    return store.query(q).ids or []


def brute_force(nodes: list[TextNode], q: np.ndarray, k: int, *, cosine: bool = True) -> list:
    m = np.asarray([n.embedding for n in nodes], np.float32)
    s = m @ q
    if cosine:
        s = s / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    order = np.lexsort((np.arange(len(nodes)), -s))[:k]
    return [(nodes[i].node_id, float(s[i])) for i in order]


# -- add, upsert, query ------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_query_matches_brute_force_for_unnormalised_vectors(similarity: str) -> None:
    nodes = make_nodes(500)
    store = EmbeddedVectorStore(similarity=similarity)
    store.add(nodes[:200])
    store.add(nodes[200:])  # two batches: exercises the growing buffer
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32) * 7
        res = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10))
        expected = brute_force(nodes, q, 10, cosine=similarity == "cosine")
        assert res.ids == [i for i, _ in expected]
        np.testing.assert_allclose(res.similarities, [s for _, s in expected], rtol=1e-4)
        assert [n.node_id for n in res.nodes] == res.ids
        assert all(n.embedding is None for n in res.nodes)


def test_zero_vector_scores_zero_instead_of_nan() -> None:
    store = EmbeddedVectorStore()
    store.add([TextNode(id_="z", text="z", embedding=[0.0] * 4)])
    res = store.query(VectorStoreQuery(query_embedding=[1.0, 0, 0, 0], similarity_top_k=3))
    assert res.ids == ["z"] and res.similarities == [0.0]


def test_upsert_replaces_node_with_same_id() -> None:
    store = EmbeddedVectorStore()
    store.add(make_nodes(20))
    new = TextNode(id_="n3", text="replaced", embedding=[1.0] + [0.0] * (DIM - 1))
    store.add([new])
    assert store.count() == 20
    res = store.query(VectorStoreQuery(query_embedding=new.embedding, similarity_top_k=20))
    assert res.ids.count("n3") == 1
    assert res.ids[0] == "n3" and res.nodes[0].get_content() == "replaced"
    assert res.nodes[0].ref_doc_id is None
    assert "n3" not in store.ref_doc_node_ids()["doc3"]


def test_same_id_twice_in_one_batch_keeps_the_last() -> None:
    store = EmbeddedVectorStore()
    a = TextNode(id_="x", text="first", embedding=[1.0, 0.0])
    b = TextNode(id_="x", text="second", embedding=[0.0, 1.0])
    assert store.add([a, b]) == ["x", "x"]
    assert store.count() == 1
    assert store.get_nodes()[0].get_content() == "second"


def test_top_k_larger_than_store_and_empty_store() -> None:
    store = EmbeddedVectorStore()
    assert query(store, [1.0, 0.0]) == []
    store.add(make_nodes(3))
    assert sorted(query(store, np.ones(DIM), k=10)) == ["n0", "n1", "n2"]


def test_bad_inputs_raise_library_errors() -> None:
    store = EmbeddedVectorStore()
    with pytest.raises(EmbeddingError, match="no embedding"):
        store.add([TextNode(id_="a", text="a")])
    with pytest.raises(EmbeddingError, match="NaN"):
        store.add([TextNode(id_="a", text="a", embedding=[float("nan"), 1.0])])
    store.add(make_nodes(3))
    with pytest.raises(EmbeddingError, match=f"expected {DIM}-d"):
        store.add([TextNode(id_="b", text="b", embedding=[1.0, 2.0])])
    with pytest.raises(IndexMismatchError, match=f"{DIM}-d"):
        query(store, [1.0, 2.0])
    with pytest.raises(ConfigError, match="'mmr'"):
        query(store, np.ones(DIM), mode=VectorStoreQueryMode.MMR)
    with pytest.raises(ConfigError, match="similarity_top_k must be > 0, but got 0"):
        query(store, np.ones(DIM), k=0)
    with pytest.raises(StorageError, match="not JSON-serialisable"):
        store.add([TextNode(id_="c", text="c", embedding=[1.0] * DIM, metadata={"o": object()})])
    assert store.count() == 3  # failed adds changed nothing
    with pytest.raises(ValueError, match="simlarity"):
        EmbeddedVectorStore(simlarity="dot")  # typo'd setting fails loudly


# -- delete, get_nodes -------------------------------------------------------------------------


def test_delete_by_ref_doc_id() -> None:
    store = EmbeddedVectorStore()
    nodes = make_nodes(50)
    store.add(nodes)
    assert store.ref_doc_node_ids()["doc7"] == ["n7", "n17", "n27", "n37", "n47"]
    store.delete("doc7")
    store.delete("no-such-doc")
    assert store.count() == 45 and "doc7" not in store.ref_doc_node_ids()
    hits = query(store, np.ones(DIM), k=50)
    assert len(hits) == 45 and not {"n7", "n17", "n27"} & set(hits)
    expected = brute_force([n for n in nodes if n.ref_doc_id != "doc7"], np.ones(DIM), 5)
    assert query(store, np.ones(DIM)) == [i for i, _ in expected]


def test_delete_nodes_by_ids_filters_or_both() -> None:
    store = EmbeddedVectorStore()
    store.add(make_nodes(10))
    even = MetadataFilters(filters=[MetadataFilter(key="parity", value="even")])
    store.delete_nodes(node_ids=["n1", "n2", "missing"])
    assert {n.node_id for n in store.get_nodes()} == {f"n{i}" for i in range(10)} - {"n1", "n2"}
    store.delete_nodes(node_ids=["n3", "n4"], filters=even)  # overlap: only n4
    assert "n3" in {n.node_id for n in store.get_nodes()}
    store.delete_nodes(filters=even)
    assert sorted(n.node_id for n in store.get_nodes()) == ["n3", "n5", "n7", "n9"]
    with pytest.raises(FilterError, match="clear"):
        store.delete_nodes()
    store.clear()
    assert store.count() == 0 and store.get_nodes() == []
    store.add(make_nodes(2, dim=3))  # a cleared store takes any dimension again
    assert store.dim == 3


def test_get_nodes_all_by_ids_and_by_filter() -> None:
    store = EmbeddedVectorStore()
    store.add(make_nodes(10))
    assert [n.node_id for n in store.get_nodes()] == [f"n{i}" for i in range(10)]
    assert [n.node_id for n in store.get_nodes(node_ids=["n5", "x", "n2"])] == ["n5", "n2"]
    odd = MetadataFilters(filters=[MetadataFilter(key="parity", value="odd")])
    assert [n.node_id for n in store.get_nodes(node_ids=["n5", "n2"], filters=odd)] == ["n5"]
    assert len(store.get_nodes(filters=odd)) == 5


def test_empty_store_is_truthy_so_storage_context_keeps_it() -> None:
    store = EmbeddedVectorStore()
    assert StorageContext.from_defaults(vector_store=store).vector_store is store


# -- filters -----------------------------------------------------------------------------------

ROWS: list[dict[str, Any]] = [
    {"year": 2021, "score": 0.5, "date": "2021-03-01", "tags": ["a", "b"], "title": "Alpha"},
    {"year": 2022, "score": 1.5, "date": "2022-12-31T10:00:00", "tags": ["b"], "title": "beta"},
    {"year": 2023, "score": 2.0, "date": "2023-01-15", "tags": [], "title": ""},
    {"year": 2024, "date": "2024-06-30", "tags": ["c"], "title": "Gamma ray"},
    {"score": 3.0, "title": None},
]


@pytest.fixture
def filtered_store() -> EmbeddedVectorStore:
    store = EmbeddedVectorStore()
    store.add(
        [
            TextNode(id_=f"r{i}", text=f"row {i}", embedding=[1.0, float(i)], metadata=meta)
            for i, meta in enumerate(ROWS)
        ]
    )
    return store


def ids_matching(store: EmbeddedVectorStore, filters: MetadataFilters) -> set[str]:
    res = store.query(
        VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=100, filters=filters)
    )
    return set(res.ids or [])


@pytest.mark.parametrize(
    ("key", "op", "value", "expected"),
    [
        ("year", "==", 2022, {1}),
        ("year", "==", 2022.0, {1}),
        ("year", "!=", 2022, {0, 2, 3, 4}),
        ("year", ">", 2022, {2, 3}),
        ("year", ">=", 2022, {1, 2, 3}),
        ("year", "<", 2022, {0}),
        ("year", "<=", 2022, {0, 1}),
        ("score", ">", 1.0, {1, 2, 4}),
        ("date", ">=", "2022-06-01", {1, 2, 3}),
        ("date", "<", "2022-12-31", {0}),
        ("date", "<=", "2023-01-15", {0, 1, 2}),
        ("date", ">", "2023-01-15", {3}),
        ("year", "in", [2021, 2024, 1999], {0, 3}),
        ("year", "nin", [2021, 2024], {1, 2, 4}),
        ("title", "in", ["beta", "nope"], {1}),
        ("tags", "contains", "b", {0, 1}),
        ("tags", "any", ["a", "c"], {0, 3}),
        ("tags", "all", ["a", "b"], {0}),
        ("title", "text_match", "amma", {3}),
        ("title", "text_match_insensitive", "ALPHA", {0}),
        ("title", "is_empty", None, {2, 4}),
        ("tags", "is_empty", None, {2, 4}),
        ("missing_key", "is_empty", None, {0, 1, 2, 3, 4}),
        ("year", "==", "2022", set()),  # equality across types is False, as in Python
    ],
)
def test_each_operator(
    filtered_store: EmbeddedVectorStore, key: str, op: str, value: Any, expected: set[int]
) -> None:
    f = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=op)])
    assert ids_matching(filtered_store, f) == {f"r{i}" for i in expected}


def test_nested_and_or_not(filtered_store: EmbeddedVectorStore) -> None:
    recent = MetadataFilter(key="year", value=2023, operator=FilterOperator.GTE)
    has_b = MetadataFilter(key="tags", value="b", operator=FilterOperator.CONTAINS)
    high = MetadataFilter(key="score", value=2.5, operator=FilterOperator.GT)
    either = MetadataFilters(filters=[recent, has_b], condition=FilterCondition.OR)
    assert ids_matching(filtered_store, either) == {"r0", "r1", "r2", "r3"}
    nested = MetadataFilters(
        filters=[either, MetadataFilter(key="score", value=1.0, operator=FilterOperator.GT)],
        condition=FilterCondition.AND,
    )
    assert ids_matching(filtered_store, nested) == {"r1", "r2"}
    deep = MetadataFilters(filters=[nested, high], condition=FilterCondition.OR)
    assert ids_matching(filtered_store, deep) == {"r1", "r2", "r4"}
    none_of = MetadataFilters(filters=[recent, has_b], condition=FilterCondition.NOT)
    assert ids_matching(filtered_store, none_of) == {"r4"}


@pytest.mark.parametrize(
    ("key", "op", "value", "message"),
    [
        ("title", "text_match", 5, "needs a string value"),
        ("tags", "any", "a", "needs a list value"),
        ("year", "in", 2021, "needs a list value"),
        ("year", "<", [2021], "needs a number or a string"),
        ("tags", "contains", ["a"], "needs one value"),
    ],
)
def test_a_malformed_filter_raises_filter_error(
    filtered_store: EmbeddedVectorStore, key: str, op: str, value: Any, message: str
) -> None:
    f = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=op)])
    with pytest.raises(FilterError, match=message):
        ids_matching(filtered_store, f)


@pytest.mark.parametrize(
    ("key", "op", "value", "expected"),
    [
        ("year", ">", "2022", set()),  # a string never orders with numbers
        ("date", "<", 2022, set()),
        ("year", "!=", "2022", {0, 1, 2, 3, 4}),  # ... and != is the negation
        ("year", "text_match", "20", set()),  # numbers are not text
        ("year", "contains", 2021, set()),  # nor lists
        ("tags", ">", "a", set()),  # ordering never matches a list
    ],
)
def test_a_value_of_another_kind_does_not_match(
    filtered_store: EmbeddedVectorStore, key: str, op: str, value: Any, expected: set[int]
) -> None:
    """The rule of gl_retrieval.storage.filters: never an error because of a row's value."""
    f = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=op)])
    assert ids_matching(filtered_store, f) == {f"r{i}" for i in expected}


def test_mixed_types_under_one_key_filter_by_kind() -> None:
    store = EmbeddedVectorStore()
    store.add(
        [
            TextNode(id_="a", text="a", embedding=[1.0, 0.0], metadata={"year": 2020}),
            TextNode(id_="b", text="b", embedding=[1.0, 0.0], metadata={"year": "unknown"}),
        ]
    )
    later = MetadataFilters(filters=[MetadataFilter(key="year", value=2019, operator=">")])
    assert ids_matching(store, later) == {"a"}
    other = MetadataFilters(filters=[MetadataFilter(key="year", value=2020, operator="!=")])
    assert ids_matching(store, other) == {"b"}
    assert store.metadata_schema() == {"year": frozenset({"number", "string"})}
    store.delete_nodes(node_ids=["b"])  # deleted rows no longer count
    assert store.metadata_schema() == {"year": frozenset({"number"})}


def test_filter_never_starves_top_k() -> None:
    """The only matching rows rank last without the filter; they must still come back."""
    rng = np.random.default_rng(0)
    q = np.zeros(DIM, np.float32)
    q[0] = 1.0
    nodes = [
        TextNode(
            id_=f"c{i}",
            text="common",
            embedding=(q + 0.1 * rng.standard_normal(DIM)).tolist(),
            metadata={"kind": "common"},
        )
        for i in range(2000)
    ] + [
        TextNode(id_=f"rare{i}", text="rare", embedding=(-q).tolist(), metadata={"kind": "rare"})
        for i in range(3)
    ]
    store = EmbeddedVectorStore()
    store.add(nodes)
    assert not {"rare0", "rare1", "rare2"} & set(query(store, q, k=100))
    rare = MetadataFilters(filters=[MetadataFilter(key="kind", value="rare")])
    assert sorted(query(store, q, k=5, filters=rare)) == ["rare0", "rare1", "rare2"]
    # most rows match: the full scan with a mask path
    common = MetadataFilters(filters=[MetadataFilter(key="kind", value="common")])
    assert len(query(store, q, k=5, filters=common)) == 5


def test_node_ids_and_doc_ids_restrict_the_query() -> None:
    nodes = make_nodes(100)
    store = EmbeddedVectorStore()
    store.add(nodes)
    q = np.ones(DIM)
    assert sorted(query(store, q, k=10, node_ids=["n4", "n90", "zz"])) == ["n4", "n90"]
    assert len(query(store, q, k=10, node_ids=[], doc_ids=[])) == 10  # [] = unrestricted
    hits = query(store, q, k=100, doc_ids=["doc1", "doc2"])
    assert sorted(hits) == sorted(n.node_id for n in nodes if n.ref_doc_id in {"doc1", "doc2"})
    odd = MetadataFilters(filters=[MetadataFilter(key="parity", value="odd")])
    assert sorted(query(store, q, k=100, doc_ids=["doc1", "doc2"], filters=odd)) == sorted(
        n.node_id for n in nodes if n.ref_doc_id == "doc1"
    )


def test_filter_columns_follow_added_rows(filtered_store: EmbeddedVectorStore) -> None:
    f = MetadataFilters(filters=[MetadataFilter(key="year", value=2030, operator=">=")])
    assert ids_matching(filtered_store, f) == set()
    filtered_store.add(
        [TextNode(id_="new", text="x", embedding=[1.0, 0.0], metadata={"year": 2031})]
    )
    assert ids_matching(filtered_store, f) == {"new"}


# -- persistence -------------------------------------------------------------------------------


def rich_node() -> TextNode:
    return TextNode(
        id_="rich",
        text='Ünïcode text\nwith a newline and "quotes"',
        embedding=[0.5] * DIM,
        metadata={"file": "a.md", "page": 3, "tags": ["x"], "nested": {"k": [1, 2]}},
        excluded_embed_metadata_keys=["page"],
        excluded_llm_metadata_keys=["file", "page"],
        metadata_template="{key}={value}",
        start_char_idx=10,
        end_char_idx=50,
        relationships={
            NodeRelationship.SOURCE: RelatedNodeInfo(node_id="docR", metadata={"src": 1}),
            NodeRelationship.PREVIOUS: RelatedNodeInfo(node_id="prev"),
            NodeRelationship.NEXT: RelatedNodeInfo(node_id="next", hash="h"),
        },
    )


def test_persist_reload_roundtrip(tmp_path: Path) -> None:
    nodes = [*make_nodes(300), rich_node()]
    store = EmbeddedVectorStore(similarity="dot")
    store.add(nodes)
    store.delete("doc3")
    store.persist(str(tmp_path / "vs"))
    loaded = EmbeddedVectorStore.from_persist_dir(str(tmp_path / "vs"))
    assert loaded.similarity == "dot" and loaded.count() == store.count() == 271
    assert isinstance(loaded._vectors._base, np.memmap)  # vectors are memory-mapped, not read
    got = loaded.get_nodes(node_ids=["rich"])[0]
    want = rich_node()
    want.embedding = None
    assert got.model_dump() == want.model_dump()
    assert got.ref_doc_id == "docR"
    assert got.get_content(metadata_mode="llm") == want.get_content(metadata_mode="llm")
    rng = np.random.default_rng(5)
    for _ in range(3):
        q = rng.standard_normal(DIM)
        assert query(loaded, q, k=10) == query(store, q, k=10)
    assert loaded.ref_doc_node_ids() == store.ref_doc_node_ids()
    # a loaded store still takes writes (its base rows are read-only memory maps)
    loaded.add([TextNode(id_="n0", text="new n0", embedding=[9.0] * DIM)])
    loaded.delete("doc4")
    assert loaded.count() == 271 - 30 + 0
    even = MetadataFilters(filters=[MetadataFilter(key="parity", value="even")])
    assert len(loaded.get_nodes(filters=even)) == 150 - 30 - 1  # doc4 deleted, n0 replaced
    loaded.persist(str(tmp_path / "vs"))  # re-persist into the directory it is mapped from
    again = EmbeddedVectorStore.from_persist_path(str(tmp_path / "vs"))
    assert again.count() == loaded.count()
    assert again.get_nodes(node_ids=["n0"])[0].get_content() == "new n0"
    names = sorted(p.name for p in (tmp_path / "vs").iterdir())
    generations = {n.split(".")[1] for n in names if n != "manifest.json"}
    assert len(generations) == 1, names  # the old generation was cleaned up


def test_empty_store_roundtrip(tmp_path: Path) -> None:
    EmbeddedVectorStore().persist(str(tmp_path))
    loaded = EmbeddedVectorStore.from_persist_path(str(tmp_path))
    assert loaded.count() == 0 and query(loaded, [1.0]) == []
    loaded.add(make_nodes(3))
    assert len(query(loaded, np.ones(DIM))) == 3


def test_crash_mid_persist_leaves_previous_generation_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EmbeddedVectorStore()
    store.add(make_nodes(20))
    store.persist(str(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    store.add([TextNode(id_="later", text="later", embedding=[1.0] * DIM)])
    real_replace, calls = os.replace, []

    def crash_on_fourth(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(_files.os, "replace", crash_on_fourth)
    with pytest.raises(OSError, match="simulated"):
        store.persist(str(tmp_path))
    monkeypatch.setattr(_files.os, "replace", real_replace)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, name  # old files untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    loaded = EmbeddedVectorStore.from_persist_path(str(tmp_path))
    assert loaded.count() == 20 and not loaded.get_nodes(node_ids=["later"])
    store.persist(str(tmp_path))  # the next persist commits and removes the orphans
    assert EmbeddedVectorStore.from_persist_path(str(tmp_path)).count() == 21
    assert len(list(tmp_path.iterdir())) == len(before)


def test_damaged_or_missing_index_raises(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="no index at"):
        EmbeddedVectorStore.from_persist_path(str(tmp_path / "nothing"))
    store = EmbeddedVectorStore()
    store.add(make_nodes(10))
    store.persist(str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    vectors = tmp_path / manifest["files"]["vectors"]["name"]
    vectors.write_bytes(vectors.read_bytes()[:-8])
    with pytest.raises(StorageError, match=r"is damaged .*written as 768 bytes"):
        EmbeddedVectorStore.from_persist_path(str(tmp_path))
    manifest["version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match="version 99"):
        EmbeddedVectorStore.from_persist_path(str(tmp_path))


def test_non_local_filesystem_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="local filesystem only"):
        EmbeddedVectorStore().persist(str(tmp_path), fs=fsspec.filesystem("memory"))
    EmbeddedVectorStore().persist(str(tmp_path), fs=fsspec.filesystem("file"))


# -- LlamaIndex integration --------------------------------------------------------------------


def test_vector_store_index_inserts_retrieves_and_reloads(tmp_path: Path) -> None:
    embed = HashEmbedding()
    store = EmbeddedVectorStore()
    ctx = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex(nodes=[], storage_context=ctx, embed_model=embed)
    index.insert_nodes(
        [
            TextNode(id_="cats", text="cats purr and sleep", metadata={"topic": "pets"}),
            TextNode(id_="rust", text="rust borrow checker lifetimes", metadata={"topic": "code"}),
            TextNode(id_="dogs", text="dogs bark and fetch", metadata={"topic": "pets"}),
        ]
    )
    index.insert(Document(text="python numpy arrays broadcasting", id_="pydoc"))
    assert store.count() == 4 and len(ctx.docstore.docs) == 0  # text lives in the store
    hits = index.as_retriever(similarity_top_k=1).retrieve("why do cats purr")
    assert hits[0].node.node_id == "cats" and hits[0].node.get_content() == "cats purr and sleep"
    hits = index.as_retriever(similarity_top_k=1).retrieve("numpy broadcasting")
    assert hits[0].node.ref_doc_id == "pydoc"
    code = MetadataFilters(filters=[MetadataFilter(key="topic", value="code")])
    hits = index.as_retriever(similarity_top_k=2, filters=code).retrieve("cats purr")
    assert [h.node.node_id for h in hits] == ["rust"]
    index.delete_ref_doc("pydoc")
    assert store.count() == 3

    ctx.persist(str(tmp_path))  # the vector store lands in tmp/default__vector_store.json/
    reloaded = EmbeddedVectorStore.from_persist_dir(str(tmp_path))
    ctx2 = StorageContext.from_defaults(persist_dir=str(tmp_path), vector_store=reloaded)
    index2 = load_index_from_storage(ctx2, embed_model=embed)
    hits = index2.as_retriever(similarity_top_k=1).retrieve("dogs fetch")
    assert hits[0].node.node_id == "dogs"


# -- approximate search ------------------------------------------------------------------------


def test_hnsw_mode_recall_filters_updates_and_reload(tmp_path: Path) -> None:
    pytest.importorskip("hnswlib")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM))
    vectors = centres[rng.integers(0, 40, 3000)] + 0.3 * rng.standard_normal((3000, DIM))
    nodes = [
        TextNode(id_=f"h{i}", text=str(i), embedding=v.tolist(), metadata={"bucket": i % 50})
        for i, v in enumerate(vectors)
    ]
    exact = EmbeddedVectorStore()
    ann = EmbeddedVectorStore(ann="hnsw", ann_min_rows=1000, hnsw_ef_search=100)
    exact.add(nodes)
    ann.add(nodes)
    queries = centres[rng.integers(0, 40, 30)] + 0.3 * rng.standard_normal((30, DIM))

    def recall() -> float:
        hits = [len(set(query(ann, q, k=10)) & set(query(exact, q, k=10))) for q in queries]
        return float(np.mean(hits)) / 10

    assert recall() >= 0.95
    assert ann._graph is not None
    # selective filter (2% of rows): exact over the kept rows, so identical results
    one = MetadataFilters(filters=[MetadataFilter(key="bucket", value=7)])
    for q in queries[:5]:
        assert query(ann, q, k=10, filters=one) == query(exact, q, k=10, filters=one)
    # upserts and deletes after the graph was built
    moved = TextNode(id_="h1", text="moved", embedding=queries[0].tolist())
    for store in (exact, ann):
        store.add([moved])
        store.delete_nodes(node_ids=[f"h{i}" for i in range(2, 500)])
    assert query(ann, queries[0], k=1) == ["h1"]
    assert recall() >= 0.95
    ann.persist(str(tmp_path))
    loaded = EmbeddedVectorStore.from_persist_path(str(tmp_path))
    assert loaded.ann == "hnsw" and loaded._graph is not None
    ann = loaded
    assert recall() >= 0.95
    assert query(ann, queries[0], k=1) == ["h1"]
    # the persisted graph has deleted labels; rows added after reload must still be found
    late = TextNode(id_="late", text="late", embedding=(-queries[1]).tolist())
    ann.add([late])
    assert query(ann, -queries[1], k=1) == ["late"]
    ann.delete_nodes(node_ids=["late"])
    assert "late" not in query(ann, -queries[1], k=10)
