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
* auto (issue 26; not in the default --sections): torch fp32 against what ``backend: auto``
  picks on this CPU and the other candidates of its table row, bge-reranker-base size, 20 pairs
  of ~256 tokens, CPU time, the rows interleaved rep by rep; the parity numbers of each candidate
  on a cross-encoder with real weights; MiniLM ingest CPU time and dense nDCG@10 of torch vs the
  embedder's auto choice; reranked nDCG@10 with a trained reranker (--trained-reranker), when
  there is one. Records the CPU model, flags, tier and load average.

Every timed model is pinned to --threads (default 1). The load average is printed with every
table; ratios are taken within this run. Writes bench/results/backends.json after each section.

Usage::

    python bench/backends.py                # everything (about 30-40 min on a loaded 2-core box)
    python bench/backends.py --sections rerank,cold
    python bench/backends.py --sections auto --rerank-reps 5
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


# -- backend: auto -------------------------------------------------------------------------------


def _auto_rows(role: str) -> tuple[Any, list[tuple[str, str, str]]]:
    """The auto choice on this machine for ``role`` and the rows to time: torch fp32 first, then
    every candidate of the role's table row (the choice first among them)."""
    from gl_retrieval.models.backend_choice import PREFERENCES, precision_of, resolve_backend

    os.environ.pop("GL_RETRIEVAL_AUTO_BACKEND", None)
    choice = resolve_backend(role, backend="auto", quantization="auto", device="cpu")
    cpu = detect()
    rows = [("torch fp32", "torch", "none")]
    for backend, quant in PREFERENCES[role, choice.tier]:
        if backend != "torch":
            rows.append((f"{backend} {precision_of(backend, quant, cpu=cpu)}", backend, quant))
    return choice, rows


def detect() -> Any:
    from gl_retrieval.models.backend_choice import detect_cpu

    return detect_cpu()


def bench_auto(args: argparse.Namespace, work: Path) -> None:
    """torch fp32 vs what ``backend: auto`` picks here (and the other candidates of its row),
    interleaved rep by rep so that a change in load hits every row alike; CPU time."""

    cpu = detect()
    meta = {
        "cpu_model": cpu.model,
        "flags": sorted(cpu.flags),
        "tier": cpu.tier,
        "load_start": load(),
        "threads": args.threads,
    }
    choice, rows = _auto_rows("reranker")
    OUT["auto"] = {"meta": meta, "choice": choice.to_dict(), "rerank": {}}
    parts = set(args.auto_parts.split(","))
    if "rerank" in parts:
        _auto_rerank(args, work, rows, choice)
    if "fidelity" in parts:
        _auto_fidelity(args, work, rows)
    if "embedder" in parts:
        _auto_embedder(args)
    if "reranked" in parts and Path(args.trained_reranker).is_dir():
        _auto_reranked(args, Path(args.trained_reranker), rows)
    OUT["auto"]["meta"]["load_end"] = load()
    save()


def _auto_rerank(
    args: argparse.Namespace, work: Path, rows: list[tuple[str, str, str]], choice: Any
) -> None:
    from gl_retrieval.models.exports import ExportSpec, ensure_export

    cpu = detect()
    print(f"\n## backend: auto, reranker ({cpu.model}, tier {cpu.tier}; {load()})", flush=True)
    path = make_cross_encoder(work / "ce-768x12", hidden=768, layers=12)
    query, passages = pairs_256()
    scorers = {}
    for label, backend, quant in rows:
        t0 = time.perf_counter()
        if backend != "torch":
            ensure_export(ExportSpec(str(path), "reranker", backend, quant))
        scorers[label] = scorer(path, backend, quant, args.threads)
        scorers[label](query, passages[:2])
        print(f"{label}: ready in {time.perf_counter() - t0:.1f}s", flush=True)
    cpu_ms: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    wall_ms: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    for rep in range(args.rerank_reps):
        for label, _, _ in rows:
            t0, c0 = time.perf_counter(), time.process_time()
            scorers[label](query, passages)
            wall_ms[label].append((time.perf_counter() - t0) * 1000)
            cpu_ms[label].append((time.process_time() - c0) * 1000)
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in cpu_ms.items()),
              flush=True)  # fmt: skip
    base = statistics.median(cpu_ms["torch fp32"])
    auto_label = next(
        label for label, b, q in rows if (b, q) == (choice.backend, choice.quantization)
    )
    rerank = {}
    for label, _, _ in rows:
        med = statistics.median(cpu_ms[label])
        rerank[label] = {
            "cpu_ms_median": round(med, 1),
            "cpu_ms_all": [round(x, 1) for x in cpu_ms[label]],
            "wall_ms_median": round(statistics.median(wall_ms[label]), 1),
            "ratio_vs_torch": round(med / base, 3),
            "auto": label == auto_label,
        }
    OUT["auto"]["rerank"] = rerank
    save()


def _auto_fidelity(args: argparse.Namespace, work: Path, rows: list[tuple[str, str, str]]) -> None:
    """The parity check's numbers on a cross-encoder with real encoder weights (MiniLM + a fresh
    head) and, when given, a trained one: every candidate against torch fp32 on the fixed pairs."""
    from gl_retrieval.models.parity import judge_scores, parity_pairs

    models = {
        "MiniLM + fresh head": make_cross_encoder(
            work / "ce-minilm-head", hidden=0, layers=0, from_minilm=True
        )
    }
    if Path(args.trained_reranker).is_dir():
        models["trained (h1)"] = Path(args.trained_reranker)
    pairs = parity_pairs()
    out = {}
    for name, path in models.items():
        ref = None
        out[name] = {}
        for label, backend, quant in rows:
            s = scorer(path, backend, quant, args.threads).predict_pairs(pairs)
            if ref is None:
                ref = s
                continue
            v = judge_scores(ref, s, backend=backend, precision=label.split()[-1])
            out[name][label] = v.to_dict()
            print(name, label, v.to_dict(), flush=True)
    OUT["auto"]["fidelity"] = out
    save()


def _auto_embedder(args: argparse.Namespace) -> None:
    """Ingest CPU time of the packaged MiniLM (torch fp32 vs the embedder's candidates here) and
    dense nDCG@10 of torch vs the auto choice on the --auto-ndcg datasets."""
    choice, rows = _auto_rows("embedder")
    print(
        f"\n## backend: auto, embedder: {choice.backend} {choice.precision} ({load()})", flush=True
    )
    docs = [t for _, t in corpus("scifact")[: args.auto_ingest_docs]]
    embs = {}
    for label, backend, quant in rows:
        embs[label] = embedder(backend, quant, args.threads)
        embs[label].warmup()
    cpu_s: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    for _ in range(2):
        for label, _, _ in rows:
            c0 = time.process_time()
            embs[label].embed_documents(docs)
            cpu_s[label].append(time.process_time() - c0)
    base = min(cpu_s["torch fp32"])
    auto_label = next(
        label for label, b, q in rows if (b, q) == (choice.backend, choice.quantization)
    )
    ingest = {
        label: {
            "docs_per_cpu_s": round(len(docs) / min(v), 2),
            "cpu_ratio_vs_torch": round(min(v) / base, 3),
            "auto": label == auto_label,
        }
        for label, v in cpu_s.items()
    }
    print("ingest", ingest, flush=True)
    ndcgs: dict[str, dict[str, float]] = {}
    for name in [d for d in args.auto_ndcg.split(",") if d]:
        data = (
            [r for r in corpus(name) if r[1]]
            if name != "scifact"
            else scifact_subset(args.scifact_docs)
        )
        qids, qtexts = queries(name)
        ndcgs[name] = {}
        for label in ("torch fp32", auto_label):
            e = embs[label]
            dv = e.embed_documents([t for _, t in data])
            qv = e.embed_queries(qtexts)
            ndcgs[name][label] = round(ndcg(name, qv, qids, dv, [d for d, _ in data]), 4)
            print(name, label, ndcgs[name][label], flush=True)
            OUT["auto"]["embedder"] = {"choice": choice.to_dict(), "ingest": ingest, "ndcg": ndcgs}
            save()
    OUT["auto"]["embedder"] = {"choice": choice.to_dict(), "ingest": ingest, "ndcg": ndcgs}
    save()


def _auto_reranked(args: argparse.Namespace, model: Path, rows: list[tuple[str, str, str]]) -> None:
    """Reranked nDCG@10 on the first --auto-rerank-queries SciFact train queries: the dense
    top 20 (MiniLM on the embedder's auto choice: the first stage is the same for every row),
    reranked by the trained model on torch fp32 and on each candidate of the reranker's row."""
    from gl_retrieval.eval.metrics import load_beir, ndcg_at_k

    echoice, _ = _auto_rows("embedder")
    ds = load_beir(DATA / "scifact", split="train", gains="auto")
    data = scifact_subset(args.scifact_docs)
    text = dict(data)
    qids = list(ds.queries)[: args.auto_rerank_queries]
    emb = embedder(echoice.backend, echoice.quantization, args.threads)
    dv = emb.embed_documents([t for _, t in data])
    qv = emb.embed_queries([ds.queries[q] for q in qids])
    dids = [d for d, _ in data]
    top = np.argsort(-(qv @ dv.T), axis=1)[:, :20]
    dense = [
        ndcg_at_k([dids[j] for j in top[i][:10]], ds.qrels[q], k=10) for i, q in enumerate(qids)
    ]
    out: dict[str, Any] = {"dense only": round(float(np.mean(dense)), 4)}
    ref = None
    for label, backend, quant in rows:
        score = scorer(model, backend, quant, args.threads)
        vals, scores = [], []
        for i, q in enumerate(qids):
            cands = [dids[j] for j in top[i]]
            s = np.asarray(score(ds.queries[q], [text[d] for d in cands]), dtype=np.float64)
            scores.append(s)
            order = [cands[j] for j in np.argsort(-s, kind="stable")]
            vals.append(ndcg_at_k(order[:10], ds.qrels[q], k=10))
        flat = np.concatenate(scores)
        ref = flat if ref is None else ref
        out[label] = {
            "ndcg": round(float(np.mean(vals)), 4),
            "max_abs_diff_vs_torch": round(float(np.abs(flat - ref).max()), 5),
            "torch_spread": round(float(ref.max() - ref.min()), 5),
        }
        print("reranked", label, out[label], flush=True)
        OUT["auto"]["reranked"] = {"model": str(model), "queries": len(qids), "ndcg": out}
        save()


def auto_table(out: dict[str, Any]) -> str:
    """The auto section as markdown."""
    a = out.get("auto")
    if not a:
        return ""
    m = a["meta"]
    lines = [
        f"CPU: {m['cpu_model']} (tier {m['tier']}; flags {', '.join(m['flags'])}); "
        f"{m['threads']} thread; {m['load_start']} at the start, "
        f"{m.get('load_end', '?')} at the end",
        "",
        "| reranker, bge-reranker-base size, 20 pairs × ~256 tokens | CPU ms (median) "
        "| vs torch fp32 |",
        "|---|---:|---:|",
    ]
    if not a["rerank"]:
        lines = lines[:2]
    for label, r in a["rerank"].items():
        name = f"**{label} (auto)**" if r["auto"] else label
        lines.append(f"| {name} | {r['cpu_ms_median']:,.0f} | {r['ratio_vs_torch']:.2f}× |")
    emb = a.get("embedder")
    if emb:
        lines += [
            "",
            "| embedder (MiniLM), SciFact ingest | docs per CPU-s | CPU time vs torch fp32 |",
            "|---|---:|---:|",
        ]
        for label, r in emb["ingest"].items():
            name = f"**{label} (auto)**" if r["auto"] else label
            lines.append(f"| {name} | {r['docs_per_cpu_s']} | {r['cpu_ratio_vs_torch']:.2f}× |")
        for ds, vals in emb["ndcg"].items():
            lines.append(
                f"| dense nDCG@10 {ds} | " + ", ".join(f"{k} {v}" for k, v in vals.items()) + " | |"
            )
    return "\n".join(lines)


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
    base = "\n".join(lines) if len(lines) > 2 else ""
    return "\n\n".join(t for t in (base, auto_table(out)) if t)


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
    ap.add_argument(
        "--auto-parts",
        default="rerank,fidelity,embedder,reranked",
        help="auto section: what to run besides the rerank timing",
    )
    ap.add_argument("--auto-ingest-docs", type=int, default=200)
    ap.add_argument("--auto-ndcg", default="cisi", help="auto section: dense nDCG datasets")
    ap.add_argument("--auto-rerank-queries", type=int, default=100)
    ap.add_argument("--trained-reranker", default="/tmp/h1/best-reranker")
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
    if "auto" in sections:
        bench_auto(args, work)
    OUT["meta"]["end"] = load()
    save()
    print(table(OUT))
    print(f"\nwrote {RESULTS} ({load()})")


if __name__ == "__main__":
    main()
