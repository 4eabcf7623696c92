"""Reranker training recipes on SciFact's train split, measured on held-out dev queries.

Each run is one `finetune --stage reranker` (the library call behind it) from the packaged
all-MiniLM-L6-v2, a bi-encoder that gets a fresh one-label head, over one index of the whole
SciFact corpus (5,183 abstracts, each cut to its first 254 tokens: one chunk per document, as
bench/finetune.py builds it). The first stage is dense top-20; dev is the finetune command's
own seeded split (10% of the 809 train queries: 81), written out and passed as ``--dev`` so a
run may train on a seeded subset of the rest (``--train-queries``, to fit a loaded 2-core box)
against the same dev queries; the test split is never read.

Reported per run, from the run's own dev evaluation (the pipeline's two-stage flow): dev nDCG@10
and MRR@10 of the first stage alone and of first stage + the new reranker (best epoch), its
best epoch; wall and CPU minutes (the child's process time: all its threads), peak RSS (the
child's ru_maxrss), the load average around the run, the CPU model and flags.

Exploration only (``--blends``): the same dev scores interpolated with the first-stage score
after per-query min-max normalisation (what a score blend in the two-stage flow would give).
These figures come from a hook on the dev evaluation, not from the pipeline; they are labelled
as such and never feed a default.

Usage::

    python bench/rerank_recipes.py --data ../shared/data/scifact --work /tmp/h1/work \\
        --runs bce-lr1e-4,mnrl-lr1e-4
    python bench/rerank_recipes.py --list
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGET = 0.02  # dev nDCG@10 over the first stage alone

#: name -> FinetuneOptions overrides (stage reranker, base packaged MiniLM, seed 0).
RECIPES: dict[str, dict[str, Any]] = {
    "issue-baseline": dict(loss="bce", lr=2e-5, epochs=1, negatives=3, pos_weight=1.0),
    "bce-lr1e-4": dict(loss="bce", lr=1e-4, epochs=2, negatives=4),
    "bce-lr2e-4": dict(loss="bce", lr=2e-4, epochs=2, negatives=4),
    "bce-lr1e-4-rand": dict(loss="bce", lr=1e-4, epochs=2, negatives=3, random_negatives=2),
    "bce-lr1e-4-skip0": dict(loss="bce", lr=1e-4, epochs=2, negatives=4, mine_skip=0),
    "mnrl-lr1e-4": dict(loss="mnrl", lr=1e-4, epochs=2, negatives=3, random_negatives=2),
    "mnrl-lr2e-4-1ep": dict(loss="mnrl", lr=2e-4, epochs=1, negatives=2, random_negatives=3),
    "mnrl-lr2e-4-2ep": dict(loss="mnrl", lr=2e-4, epochs=2, negatives=2, random_negatives=3),
    "mnrl-lr2e-4-2ep-blend": dict(
        loss="mnrl", lr=2e-4, epochs=2, negatives=2, random_negatives=3, first_stage_weight=0.5
    ),
    "listnet-lr1e-4": dict(loss="listnet", lr=1e-4, epochs=2, negatives=4),
    "bce-lr1e-4-3ep": dict(loss="bce", lr=1e-4, epochs=3, negatives=4),
    "bce-lr1e-4-len256": dict(loss="bce", lr=1e-4, epochs=2, negatives=4, max_seq_length=256),
}


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "avx512_bf16")
    return {"model": model, "flags": [f for f in wanted if f in flags], "cores": os.cpu_count()}


def write_config(work: Path, max_seq_length: int) -> Path:
    """The run config: bench/finetune.py's index (built once), dense top-20, a stand-in
    reranker section (the starting point comes from --base-model)."""
    cfg = work / "rerank.yaml"
    cfg.write_text(
        "embedder:\n"
        "  model: packaged:all-MiniLM-L6-v2\n"
        f"  max_length: {max_seq_length}\n"
        "  backend: torch\n"
        "sources:\n  - path: corpus.jsonl\n"
        f"chunking:\n  chunk_size: {max_seq_length - 2}\n  chunk_overlap: 0\n"
        "storage:\n  persist_dir: index\n"
        "retriever:\n  mode: dense\n  top_k: 20\n"
        "reranker:\n  model: packaged:stand-in-cross-encoder\n  top_n: 10\n  backend: torch\n"
        "runtime:\n  threads: 2\n",
        encoding="utf-8",
    )
    return cfg


def prepare(args: argparse.Namespace, work: Path) -> Path:
    """Build the index with bench/finetune.py's preparation unless it exists."""
    if not (work / "index").exists():
        spec = importlib.util.spec_from_file_location("bench_finetune", ROOT / "bench/finetune.py")
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        mod.prepare(
            argparse.Namespace(
                data=args.data,
                max_seq_length=args.index_length,
                corpus_sample=0,
                seed=0,
                threads=args.threads,
            ),
            work,
        )
    return write_config(work, args.index_length)


def write_split(data: Path, work: Path, train_queries: int, seed: int) -> tuple[Path, Path]:
    """The finetune command's own dev split (``split_dev``: a seeded 10% of the queries, at most
    100, drawn from the sorted judged ones), written out as a dev set, and the rest as the
    training set, or a seeded ``train_queries`` of it (0: all) to keep a run affordable."""
    import random

    rows = (data / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()
    head, rows = rows[0], [r for r in rows[1:] if r.strip()]
    qids = sorted({r.split("\t")[0] for r in rows})
    size = max(1, min(100, round(0.1 * len(qids))))
    dev = set(random.Random(seed).sample(qids, size))
    rest = [q for q in qids if q not in dev]
    if train_queries:
        rest = sorted(random.Random(seed).sample(rest, min(train_queries, len(rest))))
    keep = set(rest)
    queries = {
        json.loads(line)["_id"]: line
        for line in (data / "queries.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    out = []
    for name, chosen in (("dev", dev), (f"train{train_queries or ''}", keep)):
        d = work / "split" / name
        (d / "qrels").mkdir(parents=True, exist_ok=True)
        (d / "queries.jsonl").write_text("\n".join(queries[q] for q in sorted(chosen)) + "\n")
        (d / "qrels" / "train.tsv").write_text(
            "\n".join([head, *(r for r in rows if r.split("\t")[0] in chosen)]) + "\n"
        )
        out.append(d)
    return out[1], out[0]


def _blend_hook(blends: list[float], sink: list[dict[str, Any]]) -> None:
    """Exploration: also measure score blends of each dev evaluation (see the docstring)."""
    import numpy as np

    from gl_retrieval.eval.metrics import doc_level_ranking, evaluate
    from gl_retrieval.train import reranker as rmod

    real = rmod.DevReranking.reranked

    def hooked(self: Any, reranker: Any) -> dict[str, float]:
        seen: list[float] = []
        score = reranker.score_pairs

        def spy(pairs: Any, **kw: Any) -> Any:
            out = score(pairs, **kw)
            seen.extend(float(s) for s in out)
            return out

        object.__setattr__(reranker, "score_pairs", spy)
        metrics = real(self, reranker)
        row: dict[str, Any] = {}
        for w in blends:
            run, start = {}, 0
            for qid, cands in zip(self.qids, self.candidates, strict=True):
                r = np.array(seen[start : start + len(cands)])
                start += len(cands)
                d = np.array([float(c.score or 0.0) for c in cands])
                norm = [(x - x.min()) / (x.max() - x.min() + 1e-9) for x in (r, d)]
                s = w * norm[0] + (1 - w) * norm[1]
                order = np.argsort(-s, kind="stable")
                run[qid] = doc_level_ranking(
                    (str(cands[i].node.ref_doc_id or cands[i].node.node_id), 0.0) for i in order
                )
            row[f"blend_{w:g}"] = evaluate(run, self.dev.qrels, metrics=self.metrics)
        sink.append(row)
        shown = ", ".join(f"{k} nDCG@10 {v['nDCG@10']:.4f}" for k, v in row.items())
        print(f"  exploration: {shown}", file=sys.stderr, flush=True)
        return metrics

    rmod.DevReranking.reranked = hooked  # type: ignore[method-assign]


def one_run(args: argparse.Namespace) -> None:
    """Child process: one recipe; prints one RESULT line."""
    import torch

    torch.set_num_threads(args.threads)
    from gl_retrieval.train import FinetuneOptions, finetune

    work = Path(args.work)
    recipe = {"max_seq_length": args.max_seq_length, **RECIPES[args.one]}
    blends: list[dict[str, Any]] = []
    if args.blends:
        _blend_hook([float(x) for x in args.blends.split(",")], blends)
    opts = FinetuneOptions(
        stage="reranker",
        base_model="packaged:all-MiniLM-L6-v2",
        seed=args.seed,
        overwrite=True,
        show_progress=False,
        **recipe,
    )
    train, dev = write_split(Path(args.data), work, args.train_queries, args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    res = finetune(
        work / "rerank.yaml",
        train=train,
        dev=dev,
        output=work / f"rr-{args.one}",
        options=opts,
        progress=lambda m: print(f"  [{args.one}] {m}", file=sys.stderr, flush=True),
    )
    out = res.to_dict()
    out["recipe"] = recipe
    out["train_queries"] = args.train_queries or "all"
    out["cpu_seconds"] = round(time.process_time() - c0, 1)
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["blends_exploration"] = blends
    print("RESULT " + json.dumps(out), flush=True)


HEADER = (
    "| recipe | train q | loss | lr | epochs | neg (mined+random) | max len | "
    "first stage nDCG@10 | reranked nDCG@10 | Δ | first stage MRR@10 | reranked MRR@10 | "
    "blended nDCG@10 (w) | best epoch | wall min | "
    "CPU min | peak RSS MB | load avg |\n"
    "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def row(name: str, r: dict[str, Any]) -> str:
    rc, fs = r["recipe"], r["dev_before"]["first_stage"]
    rr = (r["dev_after"] or {}).get("reranked", {"nDCG@10": float("nan"), "MRR@10": float("nan")})
    load = "/".join(f"{x:.1f}" for x in r.get("loadavg", []))
    bl = (r["dev_after"] or {}).get("blended")
    blended = f"{bl['nDCG@10']:.4f} ({rc.get('first_stage_weight')})" if bl else "-"
    return (
        f"| {name} | {r.get('train_queries', 'all')} | {rc.get('loss')} | {rc.get('lr'):g} | "
        f"{rc.get('epochs')} | "
        f"{rc.get('negatives')}+{rc.get('random_negatives', 0)} | {rc['max_seq_length']} | "
        f"{fs['nDCG@10']:.4f} | {rr['nDCG@10']:.4f} | {rr['nDCG@10'] - fs['nDCG@10']:+.4f} | "
        f"{fs['MRR@10']:.4f} | {rr['MRR@10']:.4f} | {blended} | {r['best_epoch']} | "
        f"{r['wall_seconds'] / 60:.1f} | {r['cpu_seconds'] / 60:.1f} | {r['peak_rss_mb']} | "
        f"{load} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--runs", default="bce-lr1e-4,mnrl-lr1e-4")
    ap.add_argument("--max-seq-length", type=int, default=128, help="reranker (query+passage)")
    ap.add_argument("--index-length", type=int, default=256, help="documents cut to this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-queries", type=int, default=0, help="train on a seeded N of them (0: all)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blends", default="", help="exploration: blend weights, e.g. 0.3,0.5")
    ap.add_argument("--work", default="/tmp/gl-rerank-recipes")
    ap.add_argument("--out", default=str(RESULTS / "rerank_recipes.json"))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        for k, v in RECIPES.items():
            print(k, v)
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.one:
        one_run(args)
        return
    if "test" in Path(args.data).name.lower():
        raise SystemExit("refusing a test split")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(args, work)
    out = Path(args.out)
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    report.update({"cpu": cpu_info(), "target_lift": TARGET})
    report.setdefault("runs", {})
    rows = [row(k, v) for k, v in report["runs"].items() if not {"error", "partial"} & set(v)]
    for name in [s.strip() for s in args.runs.split(",") if s.strip()]:
        load0 = os.getloadavg()
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", name]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            report["runs"][name] = {"error": f"exit code {proc.returncode}"}
        else:
            r = json.loads(line[len("RESULT ") :])
            r["loadavg"] = [round(x, 2) for x in (*load0[:1], *os.getloadavg())]
            report["runs"][name] = {k: v for k, v in r.items() if k != "history"} | {
                "history": [
                    {k: h[k] for k in ("epoch", "step", "dev")} for h in r.get("history", [])
                ]
            }
            rows.append(row(name, r))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"\nCPU {report['cpu']}\n{HEADER}\n" + "\n".join(rows), flush=True)
    print(f"\nwrote {out}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
