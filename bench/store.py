"""Benchmark vector-store backends: persist, reload, query latency, recall, disk, peak RSS.

Synthetic corpus: normalised 384-d vectors drawn around random cluster centres (about 50 chunks
per centre, cosine to the centre ~0.6: nearer to real embeddings than uniform noise, on which
every ANN index looks bad), ~200-character texts, and metadata ``category`` (10 values),
``bucket`` (100 ints) and ``date`` (ISO string). Queries come from the same mixture; the ground
truth is exact inner-product top 10.

Every backend and size runs in two fresh subprocesses (build+persist, then reload+query), so the
peak RSS (``ru_maxrss``) of each is honest. Nodes are built and added in batches of 10k, as an
ingest pipeline would, so the build RSS is the store's, not a million TextNodes'.

Usage::

    python bench/store.py --sizes 10000,100000
    python bench/store.py --sizes 1000000 --backends embedded,embedded-hnsw

Writes bench/results/store.json and bench/results/store.png (git-ignored) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DIM, K, BATCH, SEED = 384, 10, 10_000, 0
BACKENDS = ("embedded", "embedded-hnsw", "simple", "pgvector")
FILTERS = {  # name -> (key, operator, value); selectivity in the name
    "filter10%": ("category", "==", "c3"),
    "filter1%": ("bucket", "==", 7),
}
_VOCABULARY = (
    "the of and to in is for on with as by at from retrieval index vector store query chunk "
    "document embedding model search filter metadata score rank node text cluster latency "
    "memory disk graph exact approximate recall persist reload python numpy postgres"
)
WORDS = np.array(_VOCABULARY.split())


# -- data ----------------------------------------------------------------------------------------


def make_corpus(n: int, work: Path, n_queries: int) -> None:
    """Write corpus.npy, queries.npy and the exact top-K ids gt.npy into ``work``.

    Topics > subtopics > clusters > chunks, each level a noisy copy of its parent (cosine ~0.7,
    0.8, 0.8), so similarity is graded as in real embeddings: ~0.64 within a cluster, ~0.4
    within a subtopic, ~0.2 within a topic, ~0 across. (Flat, equidistant clusters are an
    adversarial case for graph indexes: at 1M, 20k isolated clusters gave hnswlib 0.53 recall.)
    """
    rng = np.random.default_rng(SEED)

    def around(parents: np.ndarray, m: int, cosine: float) -> np.ndarray:
        spread = np.sqrt((1 / cosine**2 - 1) / DIM)
        x = parents[rng.integers(0, len(parents), m)]
        x = x + rng.standard_normal((m, DIM), dtype=np.float32) * np.float32(spread)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    topics = around(np.eye(1, DIM, dtype=np.float32), 32, 1e-3)  # ~random directions
    clusters = around(around(topics, max(n // 1000, 4), 0.7), max(n // 50, 10), 0.8)

    def draw(m: int) -> np.ndarray:
        return around(clusters, m, 0.8)

    corpus = np.lib.format.open_memmap(work / "corpus.npy", "w+", np.float32, (n, DIM))
    for i in range(0, n, 100_000):
        corpus[i : i + 100_000] = draw(min(100_000, n - i))
    corpus.flush()
    queries = draw(n_queries)
    np.save(work / "queries.npy", queries)
    best = np.full((n_queries, K), -np.inf, np.float32), np.zeros((n_queries, K), np.int64)
    for i in range(0, n, 100_000):
        s = queries @ corpus[i : i + 100_000].T
        scores = np.concatenate([best[0], s], axis=1)
        ids = np.concatenate([best[1], np.arange(i, i + s.shape[1])[None].repeat(n_queries, 0)], 1)
        top = np.argsort(-scores, axis=1)[:, :K]
        best = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    np.save(work / "gt.npy", best[1])


def node_batches(corpus: np.ndarray) -> Iterator[list[Any]]:
    """TextNodes with embeddings, ~200-char texts and metadata, BATCH at a time."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    rng = np.random.default_rng(SEED + 1)
    day0 = date(2020, 1, 1)
    for start in range(0, len(corpus), BATCH):
        vectors = np.asarray(corpus[start : start + BATCH])
        words = WORDS[rng.integers(0, len(WORDS), (len(vectors), 30))]
        yield [
            TextNode(
                id_=f"n{i}",
                text=" ".join(words[j]),
                embedding=vectors[j].tolist(),
                metadata={
                    "category": f"c{i % 10}",
                    "bucket": i % 100,
                    "date": (day0 + timedelta(days=i % 1500)).isoformat(),
                },
                relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i // 8}")},
            )
            for j, i in enumerate(range(start, start + len(vectors)))
        ]


# -- backends ------------------------------------------------------------------------------------
# A backend: build(batches, path) adds and persists; load(path) -> handle;
# query(handle, vector, filters) -> list of node ids.


def _filters(spec: tuple[str, str, Any] | None) -> Any:
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

    if spec is None:
        return None
    key, op, value = spec
    return MetadataFilters(filters=[MetadataFilter(key=key, operator=op, value=value)])


def _llama_query(store: Any, vector: np.ndarray, filters: Any) -> list[str]:
    from llama_index.core.vector_stores.types import VectorStoreQuery

    q = VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=K, filters=filters)
    return store.query(q).ids or []


class Embedded:
    """gl_retrieval's EmbeddedVectorStore, exact (or HNSW with ``ann=True``)."""

    def __init__(self, *, ann: bool = False) -> None:
        from gl_retrieval.storage.embedded import EmbeddedVectorStore

        self.cls = EmbeddedVectorStore  # imported here so reload times exclude imports
        self.settings = {"ann": "hnsw", "ann_min_rows": 1} if ann else {}
        self.sweep = {"hnsw_ef_search": [64, 128, 256]} if ann else {}

    def build(self, batches: Iterator[list[Any]], path: Path) -> dict[str, float]:
        store = self.cls(**self.settings)
        t = time.perf_counter()
        for batch in batches:
            store.add(batch)
        add_s = time.perf_counter() - t
        t = time.perf_counter()
        store.persist(str(path))
        return {"add_s": add_s, "persist_s": time.perf_counter() - t}

    def load(self, path: Path, **overrides: Any) -> Any:
        return self.cls.from_persist_path(str(path), **overrides)

    query = staticmethod(_llama_query)


class Simple:
    """Stock LlamaIndex SimpleVectorStore (JSON; returns ids only, text lives in a docstore)."""

    def __init__(self) -> None:
        from llama_index.core.vector_stores import SimpleVectorStore

        self.cls = SimpleVectorStore

    def build(self, batches: Iterator[list[Any]], path: Path) -> dict[str, float]:
        store = self.cls()
        t = time.perf_counter()
        for batch in batches:
            store.add(batch)
        add_s = time.perf_counter() - t
        t = time.perf_counter()
        store.persist(str(path / "vector_store.json"))
        return {"add_s": add_s, "persist_s": time.perf_counter() - t}

    def load(self, path: Path) -> Any:
        return self.cls.from_persist_path(str(path / "vector_store.json"))

    query = staticmethod(_llama_query)


# ================================================================================================
# HOOK: Postgres + pgvector backend -- to be filled in by the engineer who owns the pg backend.
# Implement build() (create table / HNSW index via llama-index-vector-stores-postgres' PGVectorStore
# or our own backend, add the batches, and report {"add_s", "persist_s"} where persist_s is the
# index build), load() (connect; "reload" = connection + first-touch cost) and query(). Disk bytes
# for pg: replace _disk_bytes() with pg_total_relation_size() of the table plus its indexes.
# ================================================================================================
class Pgvector:
    """Postgres + pgvector (not implemented yet)."""

    def build(self, batches: Iterator[list[Any]], path: Path) -> dict[str, float]:
        raise NotImplementedError("pgvector backend: see the HOOK comment in bench/store.py")

    def load(self, path: Path) -> Any:
        raise NotImplementedError("pgvector backend: see the HOOK comment in bench/store.py")

    def query(self, handle: Any, vector: np.ndarray, filters: Any) -> list[str]:
        raise NotImplementedError("pgvector backend: see the HOOK comment in bench/store.py")


def make_backend(name: str) -> Any:
    factories: dict[str, Callable[[], Any]] = {
        "embedded": Embedded,
        "embedded-hnsw": lambda: Embedded(ann=True),
        "simple": Simple,
        "pgvector": Pgvector,
    }
    return factories[name]()


# -- child processes -----------------------------------------------------------------------------


def _rss_mb() -> float:
    """Peak RSS of this process in MiB. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec,
    so a child would report its parent's peak (the corpus generator's) when that was higher."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child_build(backend: Any, work: Path, out: Path) -> dict[str, Any]:
    corpus = np.load(work / "corpus.npy", mmap_mode="r")
    base, text_bytes = _rss_mb(), [0]

    def counted() -> Iterator[list[Any]]:
        for batch in node_batches(corpus):
            text_bytes[0] += sum(len(n.text.encode()) for n in batch)
            yield batch

    result = backend.build(counted(), out)
    raw = corpus.nbytes + text_bytes[0]
    return {
        **result,
        "raw_bytes": raw,
        "disk_bytes": _disk_bytes(out),
        "build_rss_mb": _rss_mb(),
        "build_base_mb": base,
    }


def child_query(backend: Any, work: Path, out: Path) -> dict[str, Any]:
    queries, gt = np.load(work / "queries.npy"), np.load(work / "gt.npy")
    base = _rss_mb()
    t = time.perf_counter()
    handle = backend.load(out)
    reload_s = time.perf_counter() - t
    times, cpu, recalls = [], [], []
    for q, truth in zip(queries, gt, strict=True):
        t, c = time.perf_counter(), time.process_time()
        ids = backend.query(handle, q, None)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        recalls.append(len({int(i[1:]) for i in ids} & set(truth.tolist())) / K)
    result = {
        "reload_s": reload_s,
        "first_query_ms": times[0] * 1e3,
        "p50_ms": float(np.percentile(times[1:], 50)) * 1e3,
        "p95_ms": float(np.percentile(times[1:], 95)) * 1e3,
        "cpu_p50_ms": float(np.percentile(cpu[1:], 50)) * 1e3,
        "recall@10": float(np.mean(recalls)),
    }
    for name, spec in FILTERS.items():
        filters = _filters(spec)
        ftimes = []
        for q in queries[: max(len(queries) // 4, 5)]:
            t = time.perf_counter()
            backend.query(handle, q, filters)
            ftimes.append(time.perf_counter() - t)
        result[f"{name}_first_ms"] = ftimes[0] * 1e3
        result[f"{name}_p50_ms"] = float(np.percentile(ftimes[1:], 50)) * 1e3
    result["query_rss_mb"], result["base_mb"] = _rss_mb(), base
    # the tuning curve: reload with each setting, p50 and recall (after the RSS is taken)
    for name, values in getattr(backend, "sweep", {}).items():
        result["sweep"] = []
        for value in values:
            handle = backend.load(out, **{name: value})
            ts, rs = [], []
            for q, truth in zip(queries, gt, strict=True):
                t = time.perf_counter()
                ids = backend.query(handle, q, None)
                ts.append(time.perf_counter() - t)
                rs.append(len({int(i[1:]) for i in ids} & set(truth.tolist())) / K)
            p50, recall = float(np.percentile(ts[1:], 50)) * 1e3, float(np.mean(rs))
            result["sweep"].append({name: value, "p50_ms": p50, "recall@10": recall})
    return result


def run_child(
    phase: str, backend: str, work: Path, *, timeout: float, blas_threads: int
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", phase, "--backends", backend, "--work", str(work)]
    env = dict(os.environ)
    if blas_threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(blas_threads)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{phase} timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{phase} failed: {tail[0]}"}
    return json.loads(lines[-1])


# -- report --------------------------------------------------------------------------------------

COLUMNS = [
    ("backend", "backend", "{}"),
    ("size", "chunks", "{:,}"),
    ("load_avg", "load avg", "{:.1f}"),
    ("add_s", "add s", "{:.1f}"),
    ("persist_s", "persist s", "{:.2f}"),
    ("reload_s", "reload s", "{:.3f}"),
    ("first_query_ms", "1st query ms", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p95_ms", "p95 ms", "{:.2f}"),
    ("cpu_p50_ms", "CPU p50 ms", "{:.2f}"),
    ("filter10%_p50_ms", "filt 10% p50", "{:.2f}"),
    ("filter1%_p50_ms", "filt 1% p50", "{:.2f}"),
    ("filter10%_first_ms", "1st filt ms", "{:.0f}"),
    ("recall@10", "recall@10", "{:.4f}"),
    ("disk_mb", "disk MB", "{:.0f}"),
    ("disk_ratio", "disk / raw", "{:.2f}"),
    ("build_rss_mb", "build RSS MB", "{:.0f}"),
    ("query_rss_mb", "serve RSS MB", "{:.0f}"),
    ("serve_ratio", "serve ΔRSS / raw", "{:.2f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['size']:,} | {r['error']} |")
            continue
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend and "p50_ms" in r]
        pts = sorted((r["size"], r["p50_ms"]) for r in mine)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=backend)
        for r in mine:  # approximate results: say how approximate
            if r["recall@10"] < 0.9995:
                xy = (r["size"], r["p50_ms"])
                ax.annotate(f"recall {r['recall@10']:.2f}", xy, textcoords="offset points",
                            xytext=(-30, 8), fontsize=8)  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="chunks (384-d)", ylabel="query p50 (ms)")
    ax.set_title("Query latency vs corpus size (top-10, excluding query embedding)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="comma-separated corpus sizes")
    p.add_argument("--backends", default="embedded,embedded-hnsw,simple,pgvector")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--simple-max", type=int, default=10_000, help="largest size for 'simple'")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="OPENBLAS_NUM_THREADS for the children (0: library default, all cores)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=["build", "query"], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        backend, store_dir = make_backend(args.backends), args.work / args.backends
        if args.child == "build":
            store_dir.mkdir()
        fn = child_build if args.child == "build" else child_query
        print(json.dumps(fn(backend, args.work, store_dir)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "store.json"
    previous = json.loads(json_path.read_text())["results"] if json_path.exists() else []
    rows: list[dict[str, Any]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        work = args.out / f"work-{size}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        t = time.perf_counter()
        make_corpus(size, work, args.queries)
        print(f"# {size:,} chunks: corpus in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for name in args.backends.split(","):
            row: dict[str, Any] = {"backend": name, "size": size}
            if name == "simple" and size > args.simple_max:
                row["error"] = f"skipped: size > --simple-max {args.simple_max}"
            else:
                kw = {"timeout": args.timeout, "blas_threads": args.blas_threads}
                row.update(run_child("build", name, work, **kw))
                if "error" not in row:
                    row["load_avg"] = os.getloadavg()[0]
                    row.update(run_child("query", name, work, **kw))
            if "error" not in row:
                raw = row["raw_bytes"]
                row["disk_mb"] = row["disk_bytes"] / 2**20
                row["disk_ratio"] = row["disk_bytes"] / raw
                row["serve_ratio"] = (row["query_rss_mb"] - row["base_mb"]) * 2**20 / raw
            print(table([row]).splitlines()[-1], file=sys.stderr)
            rows.append(row)
        shutil.rmtree(work, ignore_errors=True)
    # keep earlier results for (backend, size) pairs not re-measured in this run
    seen = {(r["backend"], r["size"]) for r in rows}
    merged = [r for r in previous if (r["backend"], r["size"]) not in seen] + rows
    merged.sort(key=lambda r: (BACKENDS.index(r["backend"]), r["size"]))
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dim": DIM,
        "queries": args.queries,
        "blas_threads": args.blas_threads or "default",
        "raw_bytes_note": "raw = float32 vectors + text bytes (texts average ~200 chars)",
    }
    json_path.write_text(json.dumps({"meta": meta, "results": merged}, indent=2))
    plot(merged, args.out / "store.png")
    print(table(merged))
    print(f"\nwrote {json_path} and {args.out / 'store.png'}")


if __name__ == "__main__":
    main()
