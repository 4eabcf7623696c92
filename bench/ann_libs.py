"""Compare exact numpy search with hnswlib, FAISS (HNSW, IVF) and usearch on one corpus.

The evidence behind ``EmbeddedVectorStore``'s search choice (docs/scaling.md): build time, query
p50/p95 (one query at a time, one thread) and recall@10 against exact search, on the same
clustered synthetic corpus as bench/store.py.

Usage::

    python bench/ann_libs.py --size 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store import K, make_corpus

BUILD_THREADS = 2
EFS = (64, 128, 256)


def measure(
    name: str,
    index: Any,
    search: Callable[[Any, np.ndarray], np.ndarray],
    queries: np.ndarray,
    gt: np.ndarray,
    *,
    build_s: float | None,
) -> dict[str, Any]:
    times, recalls = [], []
    for q, truth in zip(queries, gt, strict=True):
        t = time.perf_counter()
        ids = search(index, q)
        times.append(time.perf_counter() - t)
        recalls.append(len(set(np.asarray(ids).tolist()) & set(truth.tolist())) / K)
    row = {
        "method": name,
        "build_s": build_s,
        "p50_ms": float(np.percentile(times, 50)) * 1e3,
        "p95_ms": float(np.percentile(times, 95)) * 1e3,
        "recall@10": float(np.mean(recalls)),
    }
    built = "-" if build_s is None else f"{build_s:.1f}"
    print(
        f"| {name} | {built} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} "
        f"| {row['recall@10']:.4f} |",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument(
        "--methods",
        default="hnswlib,usearch,faiss-hnsw,faiss-ivf",
        help="which indexes to build besides exact (comma-separated)",
    )
    args = p.parse_args()

    import faiss
    import hnswlib
    from usearch.index import Index as UsearchIndex

    faiss.omp_set_num_threads(BUILD_THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_corpus(args.size, work, args.queries)
        x = np.ascontiguousarray(np.load(work / "corpus.npy"))
        queries, gt = np.load(work / "queries.npy"), np.load(work / "gt.npy")
    n, d = x.shape
    print(f"{n:,} x {d}, {len(queries)} queries\n")
    print("| method | build s | p50 ms | p95 ms | recall@10 |\n|---|---|---|---|---|")
    exact = lambda m, q: np.argpartition(-(m @ q), K)[:K]  # noqa: E731
    rows = [measure("exact numpy", x, exact, queries, gt, build_s=0.0)]

    def hnswlib_build() -> Any:
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, ef_construction=100, M=16)
        index.add_items(x, num_threads=BUILD_THREADS)
        return index

    def usearch_build() -> Any:
        index = UsearchIndex(ndim=d, metric="ip", dtype="f32", connectivity=16, expansion_add=100)
        index.add(np.arange(n), x, threads=BUILD_THREADS)
        return index

    def faiss_hnsw_build() -> Any:
        index = faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 100
        index.add(x)
        return index

    nlist = int(4 * np.sqrt(n))

    def faiss_ivf_build() -> Any:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x[: min(n, nlist * 40)])
        index.add(x)
        return index

    def hnswlib_search(ef: int) -> Callable[[Any, np.ndarray], np.ndarray]:
        def search(index: Any, q: np.ndarray) -> np.ndarray:
            index.set_ef(ef)
            return index.knn_query(q, k=K, num_threads=1)[0][0]

        return search

    def usearch_search(ef: int) -> Callable[[Any, np.ndarray], np.ndarray]:
        def search(index: Any, q: np.ndarray) -> np.ndarray:
            index.expansion_search = ef
            return index.search(q, K, threads=1).keys

        return search

    def faiss_search(ef: int | None = None, nprobe: int | None = None) -> Callable[..., Any]:
        def search(index: Any, q: np.ndarray) -> np.ndarray:
            if ef is not None:
                index.hnsw.efSearch = ef
            if nprobe is not None:
                index.nprobe = nprobe
            return index.search(q[None], K)[1][0]

        return search

    methods = {
        "hnswlib": ("hnswlib M16", hnswlib_build, [(f"ef{e}", hnswlib_search(e)) for e in EFS]),
        "usearch": ("usearch M16", usearch_build, [(f"ef{e}", usearch_search(e)) for e in EFS]),
        "faiss-hnsw": (
            "faiss HNSW16",
            faiss_hnsw_build,
            [(f"ef{e}", faiss_search(ef=e)) for e in EFS],
        ),
        "faiss-ivf": (
            f"faiss IVF{nlist}",
            faiss_ivf_build,
            [(f"nprobe{p}", faiss_search(nprobe=p)) for p in (8, 32, 64)],
        ),
    }
    for label, build, variants in (methods[m] for m in args.methods.split(",")):
        t = time.perf_counter()
        index = build()
        build_s: float | None = time.perf_counter() - t
        for variant, search in variants:
            rows.append(measure(f"{label} {variant}", index, search, queries, gt, build_s=build_s))
            build_s = None  # the next variant searches the same index
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"ann_libs_{n}.json"
    out.write_text(json.dumps({"size": n, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
