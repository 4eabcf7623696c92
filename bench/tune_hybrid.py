"""Tune hybrid (BM25 + dense) fusion on SciFact (train), Cranfield and CISI; reproducible.

Usage (from the project root)::

    python bench/tune_hybrid.py [--data ../shared/data] [--out bench/results]

Per dataset, once:

1. Index the corpus with the library itself (``RetrievalPipeline.index_documents``, packaged
   all-MiniLM-L6-v2, default chunking) under ``OUT/index/<name>-minilm``. Later runs, and
   ``gl-retrieval eval`` with ``bench/configs/<name>.yaml``, reuse that index: nothing is
   embedded twice.
2. Cache, per judged query, the dense top-1000 chunks (exact cosine over the stored vectors,
   which is what the vector store computes) and the BM25 top-1000 chunks (the library's
   ``LexicalIndex``) in ``OUT/tune/<name>.npz`` (numeric and string arrays, no pickle).

Then grid-search the fusion settings in numpy/Python with the library's own fusion functions
(``rrf_fuse``, ``convex_fuse``), scoring exactly as ``gl-retrieval eval`` does: fuse at chunk
level, cut to the top 100 chunks, rank documents at their best chunk, nDCG@10 with trec_eval
gains (Cranfield: 5 - code). The objective is the mean nDCG@10 over the three datasets; a
leave-one-dataset-out check (tune on two, test on the third) shows how the choice generalises.
Writes ``OUT/tune/summary.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gl_retrieval.config import parse_config  # noqa: E402
from gl_retrieval.eval.metrics import doc_level_ranking, evaluate_per_query, load_beir  # noqa: E402
from gl_retrieval.retrieval.lexical import chunk_ids, lexical_index  # noqa: E402
from gl_retrieval.retrieval.retrievers import convex_fuse, rrf_fuse  # noqa: E402

DATASETS = {"scifact": "train", "cranfield": "test", "cisi": "test"}
DEPTH = 1000  # cached per retriever and query
TOP_K = 100  # chunks kept after fusion, as `gl-retrieval eval` does
GRID: dict[str, Any] = {
    "candidate_k": [100, 200, 300, 500, 1000],
    "rrf_k": [1, 2, 5, 10, 20, 30, 60, 100],
    "alpha": [round(a, 2) for a in np.arange(0.0, 1.0001, 0.05)],
    "normalization": ["minmax", "zscore"],
}
Setting = tuple[Any, ...]


def config_for(name: str, out: Path) -> dict[str, Any]:
    """The pipeline config the benchmark uses for ``name`` (also bench/configs/<name>.yaml)."""
    return {
        "embedder": {"model": "packaged:all-MiniLM-L6-v2"},
        "storage": {"persist_dir": str(out / "index" / f"{name}-minilm")},
    }


def _vectors(handle: Any, ids: Sequence[str]) -> np.ndarray:
    store = handle.vector_store
    data = getattr(getattr(store, "data", None), "embedding_dict", None)
    if data is not None:  # SimpleVectorStore
        return np.asarray([data[i] for i in ids], dtype=np.float32)
    nodes = {n.node_id: n for n in store.get_nodes(node_ids=list(ids))}
    return np.asarray([nodes[i].embedding for i in ids], dtype=np.float32)


def build_cache(name: str, data_dir: Path, out: Path) -> Path:
    """Index ``name`` (once) and cache dense and BM25 top-DEPTH chunk lists per judged query."""
    from gl_retrieval.ingest.sources import read_jsonl
    from gl_retrieval.pipeline import RetrievalPipeline

    cache = out / "tune" / f"{name}.npz"
    if cache.exists():
        return cache
    ds = load_beir(data_dir / name, split=DATASETS[name], gains="auto")
    pipe = RetrievalPipeline.from_config(parse_config(config_for(name, out)))
    t0 = time.perf_counter()
    summary = pipe.index_documents(list(read_jsonl(ds.corpus_path, [])), show_progress=True)
    print(f"{name}: {summary.line()} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    handle = pipe.stages().handle
    ids = chunk_ids(handle)
    matrix = _vectors(handle, ids)
    qids = list(ds.queries)
    queries = pipe.embedder.embed_queries([ds.queries[q] for q in qids])
    sims = queries @ matrix.T
    depth = min(DEPTH, len(ids))
    top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
    order = np.take_along_axis(-sims, top, axis=1).argsort(axis=1, kind="stable")
    dense_idx = np.take_along_axis(top, order, axis=1).astype(np.int32)
    dense_score = np.take_along_axis(sims, dense_idx, axis=1).astype(np.float32)
    lexical = lexical_index(handle)
    row = {nid: i for i, nid in enumerate(ids)}
    bm25_idx = np.full((len(qids), depth), -1, dtype=np.int32)
    bm25_score = np.zeros((len(qids), depth), dtype=np.float32)
    for qi, q in enumerate(qids):
        for j, (nid, score) in enumerate(lexical.top_k(ds.queries[q], k=depth)):
            bm25_idx[qi, j], bm25_score[qi, j] = row[nid], score
    doc_of = {nid: doc for doc, rec in handle.documents.items() for nid in rec.nodes}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        cache,
        qids=np.array(qids),
        chunk_ids=np.array(ids),
        chunk_docs=np.array([doc_of[i] for i in ids]),
        dense_idx=dense_idx,
        dense_score=dense_score,
        bm25_idx=bm25_idx,
        bm25_score=bm25_score,
    )
    return cache


class Cached:
    """One dataset's cached score lists, and scoring of a fusion setting on them."""

    def __init__(self, name: str, data_dir: Path, cache: Path) -> None:
        z = np.load(cache, allow_pickle=False)
        self.name = name
        self.qrels = load_beir(data_dir / name, split=DATASETS[name], gains="auto").qrels
        self.qids = [str(q) for q in z["qids"]]
        docs = [str(d) for d in z["chunk_docs"]]
        self.dense = [
            [(int(i), float(s)) for i, s in zip(ix, sc, strict=True)]
            for ix, sc in zip(z["dense_idx"], z["dense_score"], strict=True)
        ]
        self.bm25 = [
            [(int(i), float(s)) for i, s in zip(ix, sc, strict=True) if i >= 0]
            for ix, sc in zip(z["bm25_idx"], z["bm25_score"], strict=True)
        ]
        self.docs = docs

    def _score(self, ranked: list[list[Any]], metric: str = "nDCG@10") -> dict[str, float]:
        run = {
            q: doc_level_ranking((self.docs[c], 0.0) for c, _ in r[:TOP_K])
            for q, r in zip(self.qids, ranked, strict=True)
        }
        per_query = evaluate_per_query(
            run, self.qrels, metrics=("nDCG@10", "MRR@10", "Recall@10", "Recall@100")
        )
        n = len(per_query)
        return {
            m: sum(s[m] for s in per_query.values()) / n for m in next(iter(per_query.values()))
        }

    def single(self, which: str) -> dict[str, float]:
        return self._score(self.dense if which == "dense" else self.bm25)

    def fused(self, setting: Setting) -> dict[str, float]:
        kind, depth, *params = setting
        out = []
        for d, b in zip(self.dense, self.bm25, strict=True):
            d, b = d[:depth], b[:depth]
            if kind == "rrf":
                out.append(rrf_fuse([d, b], k=params[0]))
            else:
                out.append(convex_fuse(d, b, alpha=params[0], normalization=params[1]))
        return self._score(out)


def settings() -> list[Setting]:
    rrf = [("rrf", c, k) for c, k in itertools.product(GRID["candidate_k"], GRID["rrf_k"])]
    convex = [
        ("convex", c, a, n)
        for c, a, n in itertools.product(GRID["candidate_k"], GRID["alpha"], GRID["normalization"])
    ]
    return rrf + convex


def describe(s: Setting) -> str:
    if s[0] == "rrf":
        return f"rrf k={s[2]} candidate_k={s[1]}"
    return f"convex alpha={s[2]} {s[3]} candidate_k={s[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    args = ap.parse_args(argv)

    chosen = [n.strip() for n in args.datasets.split(",") if n.strip()]
    sets = {n: Cached(n, args.data, build_cache(n, args.data, args.out)) for n in chosen}
    grid = settings()
    t0 = time.perf_counter()
    table: dict[str, dict[Setting, dict[str, float]]] = {n: {} for n in sets}
    for n, c in sets.items():
        for s in grid:
            table[n][s] = c.fused(s)
        print(
            f"{n}: {len(grid)} settings scored ({time.perf_counter() - t0:.0f}s)", file=sys.stderr
        )
    base = {n: {"dense": c.single("dense"), "bm25": c.single("bm25")} for n, c in sets.items()}

    def mean_ndcg(s: Setting, names: Sequence[str]) -> float:
        return statistics.fmean(table[n][s]["nDCG@10"] for n in names)

    names = list(sets)
    best = max(grid, key=lambda s: mean_ndcg(s, names))
    best_rrf = max((s for s in grid if s[0] == "rrf"), key=lambda s: mean_ndcg(s, names))
    rrf60 = ("rrf", 100, 60)
    lodo = {}
    for held in names:
        train = [n for n in names if n != held]
        pick = max(grid, key=lambda s: mean_ndcg(s, train))
        oracle = max(grid, key=lambda s: table[held][s]["nDCG@10"])
        lodo[held] = {
            "tuned_on": train,
            "picked": describe(pick),
            "held_out_nDCG@10": table[held][pick]["nDCG@10"],
            "oracle": describe(oracle),
            "oracle_nDCG@10": table[held][oracle]["nDCG@10"],
            "rrf60_nDCG@10": table[held][rrf60]["nDCG@10"],
            "dense_nDCG@10": base[held]["dense"]["nDCG@10"],
            "bm25_nDCG@10": base[held]["bm25"]["nDCG@10"],
        }

    print("\n## Best settings (mean nDCG@10 over the three datasets)\n")
    print("| setting | mean | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names))
    for s in sorted(grid, key=lambda s: -mean_ndcg(s, names))[:10]:
        cells = " | ".join(f"{table[n][s]['nDCG@10']:.4f}" for n in names)
        print(f"| {describe(s)} | {mean_ndcg(s, names):.4f} | {cells} |")
    print("\n## Baselines and the chosen settings (nDCG@10)\n")
    print("| run | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    rows = [
        ("dense", [base[n]["dense"]["nDCG@10"] for n in names]),
        ("bm25", [base[n]["bm25"]["nDCG@10"] for n in names]),
        ("rrf k=60 (candidate_k=100)", [table[n][rrf60]["nDCG@10"] for n in names]),
        (f"best rrf: {describe(best_rrf)}", [table[n][best_rrf]["nDCG@10"] for n in names]),
        (f"best overall: {describe(best)}", [table[n][best]["nDCG@10"] for n in names]),
    ]
    for label, vals in rows:
        print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    print("\n## Leave one dataset out (tune on two, test on the third)\n")
    print("| held out | picked on the other two | held-out nDCG@10 | oracle on it | rrf60 |")
    print("|---|---|---:|---:|---:|")
    for held, r in lodo.items():
        print(
            f"| {held} | {r['picked']} | {r['held_out_nDCG@10']:.4f} | "
            f"{r['oracle_nDCG@10']:.4f} ({r['oracle']}) | {r['rrf60_nDCG@10']:.4f} |"
        )
    summary = {
        "grid": GRID,
        "best": describe(best),
        "best_rrf": describe(best_rrf),
        "baselines": base,
        "best_scores": {n: table[n][best] for n in names},
        "best_rrf_scores": {n: table[n][best_rrf] for n in names},
        "rrf60_scores": {n: table[n][rrf60] for n in names},
        "lodo": lodo,
        "alpha_curve": {
            norm: {
                n: {
                    str(a): max(
                        table[n][("convex", c, a, norm)]["nDCG@10"] for c in GRID["candidate_k"]
                    )
                    for a in GRID["alpha"]
                }
                for n in names
            }
            for norm in GRID["normalization"]
        },
    }
    path = args.out / "tune" / "summary.json"
    path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
