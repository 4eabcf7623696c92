"""Backends on a CPU box: torch vs onnx / onnx-int8 / openvino / openvino-int8, in one run.

Rows (issue 12):

* bi-encoder (the packaged all-MiniLM-L6-v2): ingest throughput on SciFact docs (title + text),
  single-query p50, dense nDCG@10 on SciFact (train qrels; see --scifact-docs), CISI and
  Cranfield, plus the mixed case: documents embedded by torch fp32, queries by the backend.
* cross-encoder, two sizes with random weights (BertForSequenceClassification, the MiniLM
  vocabulary): bge-reranker-base size (hidden 768, 12 layers) and ms-marco-MiniLM-L-6 size
  (hidden 384, 6 layers): p50/p90 of scoring 20 pairs of ~256 tokens, export and load time.
* fidelity: a cross-encoder built from the real MiniLM encoder weights with a fresh 1-label head;
  Spearman correlation of each backend's scores with torch fp32.
* cold query: whole-process wall time of `gl-retrieval query` on a 5k-doc index per backend
  (embedder and reranker on that backend; MiniLM-L-6-sized reranker).
* threads: single-query encode and 20-pair rerank p50 at 1, 2, 4 threads and torch's default, on
  the machine as it is ("idle") and with two busy-loop processes added ("loaded").

Every timed model is pinned to --threads (default 1). The load average is printed with every
table; ratios are taken within this run. Writes bench/results/backends.json after each section.

Usage::

    python bench/backends.py                # everything (about 30-40 min on a loaded 2-core box)
    python bench/backends.py --sections rerank,cold
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

BACKENDS = [
    ("torch", "torch", "auto"),
    ("onnx", "onnx", "none"),
    ("onnx-int8", "onnx", "int8"),
    ("openvino", "openvino", "auto"),
    ("openvino-int8", "openvino", "int8"),
]
MINILM = "packaged:all-MiniLM-L6-v2"
RESULTS = ROOT / "bench" / "results" / os.environ.get("GL_BENCH_OUT", "backends.json")
OUT: dict[str, Any] = {}


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def chosen(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The BACKENDS rows named by ``--backends`` (torch, the baseline, always)."""
    names = set(args.backends.split(",")) | {"torch"}
    return [b for b in BACKENDS if b[0] in names]


def cpu_features() -> dict[str, Any]:
    """The CPU model and the SIMD features int8 and bf16 speedups depend on."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16")
            wanted += ("amx_int8",)
            info["flags"] = {f: f in flags for f in wanted}
            break
    return info


def save() -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(OUT, indent=2))


def corpus(name: str) -> list[tuple[str, str]]:
    rows = []
    with open(DATA / name / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            rows.append((str(d["_id"]), (d.get("title", "") + " " + d.get("text", "")).strip()))
    return rows


def embedder(backend: str, quant: str, threads: int) -> Any:
    from gl_retrieval.config import HuggingFaceEmbedderConfig
    from gl_retrieval.embedders import build_embedder

    cfg = HuggingFaceEmbedderConfig(model=MINILM, backend=backend, quantization=quant)
    return build_embedder(cfg, threads=threads)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


# -- bi-encoder ----------------------------------------------------------------------------------


def ndcg(dataset: str, qv: np.ndarray, qids: list[str], dv: np.ndarray, dids: list[str]) -> float:
    from gl_retrieval.eval.metrics import load_beir, ndcg_at_k

    split = "train" if dataset == "scifact" else "test"
    ds = load_beir(DATA / dataset, split=split, gains="auto")
    scores = qv @ dv.T
    vals = []
    for i, q in enumerate(qids):
        top = np.argsort(-scores[i])[:10]
        vals.append(ndcg_at_k([dids[j] for j in top], ds.qrels[q], k=10))
    return float(np.mean(vals))


def queries(dataset: str) -> tuple[list[str], list[str]]:
    from gl_retrieval.eval.metrics import load_beir

    split = "train" if dataset == "scifact" else "test"
    ds = load_beir(DATA / dataset, split=split, gains="auto")
    qids = list(ds.queries)
    return qids, [ds.queries[q] for q in qids]


def scifact_subset(n_docs: int) -> list[tuple[str, str]]:
    """The first ``n_docs`` SciFact docs plus every doc judged relevant (all queries scored)."""
    from gl_retrieval.eval.metrics import load_beir

    ds = load_beir(DATA / "scifact", split="train")
    relevant = {d for j in ds.qrels.values() for d in j}
    rows = corpus("scifact")
    return [r for i, r in enumerate(rows) if i < n_docs or r[0] in relevant]


def bench_biencoder(args: argparse.Namespace) -> None:
    print(f"\n## bi-encoder ({load()})", flush=True)
    ingest_docs = [t for _, t in corpus("scifact")[: args.ingest_docs]]
    wanted = args.ndcg_datasets.split(",")
    sets = {"scifact": scifact_subset(args.scifact_docs)} if "scifact" in wanted else {}
    for name in ("cisi", "cranfield"):
        if name in wanted:
            sets[name] = [r for r in corpus(name) if r[1]]
    qsets = {name: queries(name) for name in sets}
    latency_queries = queries("scifact")[1][: args.query_reps]
    rows: dict[str, dict[str, Any]] = {}
    torch_docs: dict[str, np.ndarray] = {}
    for label, backend, quant in chosen(args):
        t0 = time.perf_counter()
        emb = embedder(backend, quant, args.threads)
        emb.warmup()
        ready = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        emb.embed_documents(ingest_docs)
        ingest_s, ingest_cpu = time.perf_counter() - t0, time.process_time() - c0
        lat = []
        for q in latency_queries:
            t0 = time.perf_counter()
            emb.embed_queries([q])
            lat.append(time.perf_counter() - t0)
        row: dict[str, Any] = {
            "ready_s": round(ready, 2),
            "ingest_docs_per_s": round(len(ingest_docs) / ingest_s, 2),
            "ingest_docs_per_cpu_s": round(len(ingest_docs) / ingest_cpu, 2),
            "query_p50_ms": round(pct(lat, 50), 2),
            "load": os.getloadavg()[0],
        }
        for name, docs in sets.items():
            if args.skip_ndcg or label not in args.ndcg_backends.split(","):
                break
            dv = emb.embed_documents([t for _, t in docs])
            qids, qtexts = qsets[name]
            qv = emb.embed_queries(qtexts)
            dids = [d for d, _ in docs]
            row[f"ndcg_{name}"] = round(ndcg(name, qv, qids, dv, dids), 4)
            if label == "torch":
                torch_docs[name] = dv
            else:
                row[f"ndcg_{name}_fp32_docs"] = round(
                    ndcg(name, qv, qids, torch_docs[name], dids), 4
                )
        rows[label] = row
        print(label, row, flush=True)
        OUT["biencoder"] = rows
        save()
    base = rows["torch"]
    for row in rows.values():
        row["ingest_speedup"] = round(row["ingest_docs_per_s"] / base["ingest_docs_per_s"], 2)
        row["ingest_cpu_speedup"] = round(
            row["ingest_docs_per_cpu_s"] / base["ingest_docs_per_cpu_s"], 2
        )
        row["query_speedup"] = round(base["query_p50_ms"] / row["query_p50_ms"], 2)
    OUT["biencoder"] = rows
    OUT["biencoder_meta"] = {
        "ingest_docs": len(ingest_docs),
        "scifact_docs": len(sets["scifact"]),
        "threads": args.threads,
        "load_after": load(),
    }
    save()


# -- cross-encoders ------------------------------------------------------------------------------


def make_cross_encoder(path: Path, *, hidden: int, layers: int, from_minilm: bool = False) -> Path:
    import torch
    import transformers

    from gl_retrieval.models import resolve_model_path
    from gl_retrieval.models.stand_in import TOKENIZER_FILES

    if (path / "config.json").exists():
        return path
    src = Path(resolve_model_path(MINILM))
    torch.manual_seed(0)
    if from_minilm:
        model = transformers.BertForSequenceClassification.from_pretrained(str(src), num_labels=1)
    else:
        cfg = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            intermediate_size=hidden * 4,
            max_position_embeddings=512,
            num_labels=1,
        )
        model = transformers.BertForSequenceClassification(cfg)
    model.save_pretrained(str(path))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            (path / name).write_bytes((src / name).read_bytes())
    return path


def pairs_256(n: int = 20) -> tuple[str, list[str]]:
    docs = [t for _, t in corpus("scifact")]
    passages = []
    for t in docs:
        words = t.split()
        if len(words) >= 230:
            passages.append(" ".join(words[:200]))  # ~256 word pieces with the query
        if len(passages) == n:
            break
    return "Does vitamin D supplementation reduce the risk of fractures in older adults?", passages


def scorer(model: Path, backend: str, quant: str, threads: int) -> Any:
    from gl_retrieval.retrieval.rerankers import _shared_scorer

    return _shared_scorer(
        str(model),
        device="cpu",
        batch_size=32,
        max_length=512,
        revision=None,
        backend=backend,
        quantization=quant,
        threads=threads,
    )


def bench_rerank(args: argparse.Namespace, work: Path) -> None:
    from gl_retrieval.models.exports import ExportSpec, ensure_export

    query, passages = pairs_256()
    shapes = {"bge-reranker-base size": (768, 12), "MiniLM-L-6 size": (384, 6)}
    sizes = {
        name: make_cross_encoder(work / f"ce-{h}x{n}", hidden=h, layers=n)
        for name, (h, n) in shapes.items()
        if name.split()[0] in args.sizes.split(",")
    }
    OUT["rerank"] = {}
    for size, path in sizes.items():
        print(f"\n## cross-encoder, {size} ({load()})", flush=True)
        rows = {}
        for label, backend, quant in chosen(args):
            export_s = 0.0
            if backend != "torch":
                t0 = time.perf_counter()
                ensure_export(ExportSpec(str(path), "reranker", backend, quant))
                export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            score = scorer(path, backend, quant, args.threads)
            score(query, passages[:1])
            load_s = time.perf_counter() - t0
            lat, cpu = [], []
            for _ in range(args.rerank_reps):
                t0, c0 = time.perf_counter(), time.process_time()
                score(query, passages)
                lat.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            rows[label] = {
                "p50_ms": round(pct(lat, 50), 1),
                "p90_ms": round(pct(lat, 90), 1),
                "cpu_p50_ms": round(pct(cpu, 50), 1),
                "export_s": round(export_s, 1),
                "load_s": round(load_s, 2),
                "load": os.getloadavg()[0],
            }
            print(label, rows[label], flush=True)
            OUT.setdefault("rerank", {})[size] = rows
            save()
        for row in rows.values():
            row["speedup"] = round(rows["torch"]["p50_ms"] / row["p50_ms"], 2)
            row["cpu_speedup"] = round(rows["torch"]["cpu_p50_ms"] / row["cpu_p50_ms"], 2)
        OUT["rerank"][size] = rows
        save()


def bench_fidelity(args: argparse.Namespace, work: Path) -> None:
    print(f"\n## fidelity ({load()})", flush=True)
    path = make_cross_encoder(work / "ce-minilm-head", hidden=0, layers=0, from_minilm=True)
    _, qtexts = queries("scifact")
    docs = [t for _, t in corpus("scifact")[:200]]
    rng = np.random.default_rng(0)
    cases = [
        (qtexts[i], [docs[j] for j in rng.choice(len(docs), 10, replace=False)]) for i in range(10)
    ]
    ref = None
    rows = {}
    for label, backend, quant in chosen(args):
        score = scorer(path, backend, quant, args.threads)
        s = np.concatenate([np.asarray(score(q, ps), dtype=np.float64) for q, ps in cases])
        if ref is None:
            ref = s
        rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
        rho = float(np.corrcoef(rank(ref), rank(s))[0, 1])
        rows[label] = {
            "spearman": round(rho, 4),
            "max_abs_diff": float(np.abs(ref - s).max()),
            "score_std": float(s.std()),
        }
        print(label, rows[label], flush=True)
    OUT["fidelity"] = rows
    save()


# -- cold query ----------------------------------------------------------------------------------


def bench_cold(args: argparse.Namespace, work: Path) -> None:
    import yaml

    print(f"\n## cold query process ({load()})", flush=True)
    reranker = make_cross_encoder(work / "ce-384x6", hidden=384, layers=6)
    src = work / "cold-corpus.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        # 5k SciFact docs, first sentence of each: the cold path loads the index, not the text.
        for d, t in corpus("scifact")[: args.cold_docs]:
            f.write(json.dumps({"_id": d, "title": "", "text": t[: args.cold_chars]}) + "\n")
    index_dir = work / "cold-index"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GL_RETRIEVAL_CACHE": str(work / "cache")}
    base = {
        "sources": [{"path": str(src)}],
        "storage": {"persist_dir": str(index_dir)},
        "retriever": {"mode": "dense", "top_k": 20},
    }
    configs = {}
    for label, backend, quant in chosen(args):
        cfg = {
            **base,
            "embedder": {"model": MINILM, "backend": backend, "quantization": quant},
            "reranker": {
                "model": str(reranker),
                "backend": backend,
                "quantization": quant,
                "top_n": 5,
                "device": "cpu",
            },
            "runtime": {"threads": args.threads},
        }
        p = work / f"cold-{label}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        configs[label] = p
    cli = [sys.executable, "-m", "gl_retrieval.cli"]
    t0 = time.perf_counter()
    subprocess.run(
        [*cli, "index", str(configs["torch"]), "--json"], env=env, check=True, capture_output=True
    )
    print(f"index built in {time.perf_counter() - t0:.0f}s", flush=True)
    for label in configs:  # build exports first: cold means a process start, not an export
        subprocess.run(
            [*cli, "models", "pull", str(configs[label])], env=env, check=True, capture_output=True
        )
    rows = {}
    q = "vitamin D and bone fractures"
    for label, p in configs.items():
        walls = []
        for _ in range(args.cold_reps):
            t0 = time.perf_counter()
            r = subprocess.run(
                [*cli, "query", str(p), q, "--json"], env=env, capture_output=True, text=True
            )
            walls.append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise SystemExit(f"{label}: {r.stderr}")
        rows[label] = {
            "median_s": round(statistics.median(walls), 2),
            "min_s": round(min(walls), 2),
            "load": os.getloadavg()[0],
        }
        print(label, rows[label], flush=True)
    for row in rows.values():
        row["ratio"] = round(row["median_s"] / rows["torch"]["median_s"], 2)
    OUT["cold"] = rows
    save()


# -- threads -------------------------------------------------------------------------------------


def _busy() -> None:
    while True:
        pass


def bench_threads(args: argparse.Namespace, work: Path) -> None:
    import torch

    reranker = make_cross_encoder(work / "ce-384x6", hidden=384, layers=6)
    query, passages = pairs_256()
    default = torch.get_num_threads()
    OUT["threads"] = {}
    for state in ("idle", "loaded"):
        procs = []
        if state == "loaded":
            procs = [mp.Process(target=_busy, daemon=True) for _ in range(2)]
            for p in procs:
                p.start()
            time.sleep(2)
        print(f"\n## threads, {state} machine ({load()})", flush=True)
        rows = {}
        for backend in ("torch", "onnx"):
            quant = "auto" if backend == "torch" else "none"
            for n in (1, 2, 4, os.cpu_count() or 2):
                emb = embedder(backend, quant, n)
                emb.warmup()
                if backend == "torch":
                    torch.set_num_threads(n)
                enc = []
                for _ in range(args.query_reps):
                    t0 = time.perf_counter()
                    emb.embed_queries([query])
                    enc.append(time.perf_counter() - t0)
                score = scorer(reranker, backend, quant, n)
                if backend == "torch":
                    torch.set_num_threads(n)
                rr = []
                for _ in range(max(3, args.rerank_reps // 2)):
                    t0 = time.perf_counter()
                    score(query, passages)
                    rr.append(time.perf_counter() - t0)
                rows[f"{backend} threads={n}"] = {
                    "encode_p50_ms": round(pct(enc, 50), 1),
                    "rerank_p50_ms": round(pct(rr, 50), 1),
                    "load": os.getloadavg()[0],
                }
                print(backend, n, rows[f"{backend} threads={n}"], flush=True)
        for p in procs:
            p.terminate()
        OUT["threads"][state] = rows
        OUT["threads"]["torch_default"] = default
        save()


def table(out: dict[str, Any]) -> str:
    """The issue's table (columns torch, onnx, onnx-int8, openvino, openvino-int8) as markdown."""
    cols = [label for label, _, _ in BACKENDS]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]

    def row(name: str, cells: dict[str, Any], key: str, fmt: str = "{}") -> None:
        vals = [fmt.format(cells[c][key]) if c in cells and key in cells[c] else "–" for c in cols]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")

    bi = out.get("biencoder", {})
    if bi:
        meta = out.get("biencoder_meta", {})
        n = meta.get("ingest_docs", "?")
        row(f"bi-encoder ingest, docs/s ({n} SciFact docs)", bi, "ingest_docs_per_s")
        row("bi-encoder ingest speedup (wall)", bi, "ingest_speedup", "{}×")
        row("bi-encoder ingest speedup (CPU time)", bi, "ingest_cpu_speedup", "{}×")
        row("bi-encoder single-query p50, ms", bi, "query_p50_ms")
        for ds in ("scifact", "cisi", "cranfield"):
            row(f"dense nDCG@10 {ds}", bi, f"ndcg_{ds}")
            row(f"dense nDCG@10 {ds}, torch fp32 docs", bi, f"ndcg_{ds}_fp32_docs")
    for size, cells in out.get("rerank", {}).items():
        row(f"rerank {size}: p50 ms (20 pairs × ~256 tok)", cells, "p50_ms")
        row(f"rerank {size}: p90 ms", cells, "p90_ms")
        row(f"rerank {size}: CPU ms p50", cells, "cpu_p50_ms")
        row(f"rerank {size}: speedup (wall p50)", cells, "speedup", "{}×")
        row(f"rerank {size}: speedup (CPU p50)", cells, "cpu_speedup", "{}×")
        row(f"rerank {size}: export s", cells, "export_s")
        row(f"rerank {size}: load s", cells, "load_s")
    if "fidelity" in out:
        row("rerank fidelity: Spearman vs torch fp32", out["fidelity"], "spearman")
    if "cold" in out:
        row("cold `gl-retrieval query`, median s", out["cold"], "median_s")
        row("cold query, ratio to torch", out["cold"], "ratio", "{}×")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="biencoder,rerank,fidelity,cold,threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ingest-docs", type=int, default=1000)
    ap.add_argument(
        "--scifact-docs",
        type=int,
        default=1000,
        help="SciFact corpus for nDCG: the first N docs plus every judged doc",
    )
    ap.add_argument("--query-reps", type=int, default=30)
    ap.add_argument("--rerank-reps", type=int, default=7)
    ap.add_argument("--cold-docs", type=int, default=5000)
    ap.add_argument("--cold-reps", type=int, default=3)
    ap.add_argument("--skip-ndcg", action="store_true")
    ap.add_argument("--sizes", default="bge-reranker-base,MiniLM-L-6")
    ap.add_argument("--ndcg-datasets", default="scifact,cisi,cranfield")
    ap.add_argument("--cold-chars", type=int, default=160, help="text per cold-index doc")
    ap.add_argument(
        "--ndcg-backends",
        default="torch,onnx,onnx-int8,openvino,openvino-int8",
        help="which backends get the nDCG rows (fp32 exports match torch to 1e-5)",
    )
    ap.add_argument(
        "--backends",
        default=",".join(label for label, _, _ in BACKENDS),
        help="columns to measure (torch, the baseline, is always measured)",
    )
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--table", action="store_true", help="print the table from the last results")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="gl-backends-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["GL_RETRIEVAL_CACHE"] = str(work / "cache")
    if RESULTS.exists():
        OUT.update(json.loads(RESULTS.read_text()))
    OUT["meta"] = {
        "start": load(),
        "cpus": os.cpu_count(),
        "cpu": cpu_features(),
        "threads": args.threads,
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    import torch

    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("gl_retrieval").setLevel(logging.ERROR)
    sections = args.sections.split(",")
    if "biencoder" in sections:
        bench_biencoder(args)
    if "rerank" in sections:
        bench_rerank(args, work)
    if "fidelity" in sections:
        bench_fidelity(args, work)
    if "cold" in sections:
        bench_cold(args, work)
    if "threads" in sections:
        bench_threads(args, work)
    OUT["meta"]["end"] = load()
    save()
    print(table(OUT))
    print(f"\nwrote {RESULTS} ({load()})")


if __name__ == "__main__":
    main()
