"""Batch embedding on a GPU against one text per request, both through the library's embedder.

What an Ollama-style embedding server does for ingestion is one request per text: the GPU sees
batches of one. ``gl-retrieval index`` hands the embedder windows of chunks, which it encodes in
batches of ``embedder.batch_size`` (64). This measures what that is worth on a GPU, on the same
chunk texts, through the same object (``build_embedder`` of an ``embedder`` config, so fp16 on
CUDA, the padding-free forward where it applies, the document prefix):

(serial) ``embed_documents([text])`` for each text, one call at a time (``--serial-limit`` texts
         spread evenly over the corpus: one request per text is slow, and its rate is steady
         after a few hundred);
(batch)  ``embed_documents(texts)`` with ``batch_size`` 64, then each of ``--batch-sizes``
         (the best is reported), and batch 64 with the padding-free forward off (``unpad: false``,
         sentence-transformers' own padded forward, which on CUDA uses fused attention kernels).

Each figure is texts per second of wall time (``torch.cuda.synchronize`` is implied: the
vectors come back as numpy) and of process CPU time, after one untimed warm-up pass; the best of
``--repeats``. The chunk texts are those ``index`` embeds (gl_retrieval's Chunker on the
dataset's ``corpus.jsonl``, title + text, chunk_size 254 for MiniLM). The JSON records the GPU
name, the CPU model and flags, torch and CUDA versions, and the load average.

Usage::

    python bench/gpu_ingest.py                          # CUDA, scifact, 4000 chunks
    python bench/gpu_ingest.py --device cpu --limit 200 --serial-limit 50  # smoke check, CPU

Writes bench/results/gpu_ingest_<device>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
sys.path.insert(0, str(ROOT))  # gl_retrieval from this checkout
CHUNK_SIZE, CHUNK_OVERLAP = 254, 32


def cpu_info() -> dict[str, Any]:
    """CPU model, cores and the vector flags that matter, as the library reads them."""
    from gl_retrieval.models.backend_choice import detect_cpu

    return detect_cpu().to_dict()


def gpu_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1))
    return info


def chunk_texts(dataset: str, model: str, limit: int) -> list[str]:
    """The chunk texts ``index`` would embed for the dataset (the first ``limit``)."""
    from gl_retrieval.config import ChunkingConfig, HuggingFaceEmbedderConfig
    from gl_retrieval.embedders import build_embedder
    from gl_retrieval.ingest.chunking import Chunker, effective_chunk_size
    from gl_retrieval.ingest.sources import Skipped, read_jsonl

    skipped: list[Skipped] = []
    docs = read_jsonl(DATA / dataset / "corpus.jsonl", skipped)
    # The CPU torch embedder only measures tokens here; the timed one is built per variant.
    emb = build_embedder(HuggingFaceEmbedderConfig(model=model, backend="torch", device="cpu"))
    plan = effective_chunk_size(
        ChunkingConfig(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP), emb
    )
    texts: list[str] = []
    for chunk in Chunker(plan, emb).iter_split(docs):
        texts.append(chunk.text)
        if limit and len(texts) >= limit:
            break
    return texts


def embedder(
    model: str, device: str, *, batch_size: int, unpad: bool = True, bulk: bool = True
) -> Any:
    from gl_retrieval.config import HuggingFaceEmbedderConfig
    from gl_retrieval.embedders import build_embedder
    from gl_retrieval.models.runtimes import resolve_threads

    cfg = HuggingFaceEmbedderConfig(
        model=model, backend="torch", device=device, batch_size=batch_size, unpad=unpad
    )
    # Batches: the bulk share (every core under runtime.threads auto), as `index` runs. Serial:
    # the query share, as a server answering one request at a time (on a busy CPU, two threads
    # per single-text call spin and wait for each other: 0.7 s of CPU per text at load 9 on 2
    # cores). On CUDA the threads matter little.
    emb = build_embedder(cfg, threads=resolve_threads("auto", bulk=bulk))
    emb.warmup()
    return emb


def timed(fn: Any, repeats: int) -> dict[str, float]:
    """Best wall and CPU seconds of ``fn()`` over ``repeats`` (after one untimed call)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": min(walls), "cpu_s": min(cpus)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke check)")
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    ap.add_argument("--limit", type=int, default=4000, help="chunk texts to embed (0: all)")
    ap.add_argument("--serial-limit", type=int, default=500, help="texts sent one at a time")
    ap.add_argument("--batch-sizes", default="16,32,64,128,256")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu for a smoke check")
    info = {
        "device": args.device,
        "gpu": gpu_info(args.device),
        "cpu": cpu_info(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    texts = chunk_texts(args.dataset, args.model, args.limit)
    # Evenly spread over the corpus, so their lengths are those of the batches' texts.
    step = max(1, len(texts) // max(1, args.serial_limit))
    serial_texts = texts[::step][: args.serial_limit]
    print(f"{len(texts)} chunk texts ({len(serial_texts)} for serial)", file=sys.stderr)

    rows: list[dict[str, Any]] = []

    def record(name: str, n: int, t: dict[str, float], **extra: Any) -> None:
        row = {
            "variant": name,
            "texts": n,
            **{k: round(v, 4) for k, v in t.items()},
            "texts_per_s": round(n / t["wall_s"], 1),
            "texts_per_cpu_s": round(n / t["cpu_s"], 1) if t["cpu_s"] > 0 else None,
            **extra,
        }
        rows.append(row)
        print(f"{name}: {row['texts_per_s']} texts/s", file=sys.stderr)

    emb = embedder(args.model, args.device, batch_size=64, bulk=False)
    precision = emb.fingerprint()["precision"]
    info["torch_threads_serial"] = torch.get_num_threads()
    info["unpadded"] = emb.unpadded
    record(
        "serial (1 text per call)",
        len(serial_texts),
        timed(lambda: [emb.embed_documents([t]) for t in serial_texts], 1),
        batch_size=1,
        precision=precision,
    )
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        emb = embedder(args.model, args.device, batch_size=bs)
        info["torch_threads_batch"] = torch.get_num_threads()
        record(
            f"batch {bs}",
            len(texts),
            timed(lambda emb=emb: emb.embed_documents(texts), args.repeats),
            batch_size=bs,
            precision=precision,
        )
    emb = embedder(args.model, args.device, batch_size=64, unpad=False)
    record(
        "batch 64, padded forward (unpad: false)",
        len(texts),
        timed(lambda: emb.embed_documents(texts), args.repeats),
        batch_size=64,
        precision=precision,
    )

    serial = rows[0]["texts_per_s"]
    batch64 = next(r for r in rows if r["variant"] == "batch 64")
    best = max(rows[1:], key=lambda r: r["texts_per_s"])
    for r in rows:
        r["speedup_vs_serial"] = round(r["texts_per_s"] / serial, 2)
    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = {
        "serial_texts_per_s": serial,
        "batch64_texts_per_s": batch64["texts_per_s"],
        "batch64_speedup_vs_serial": batch64["speedup_vs_serial"],
        "best": best["variant"],
        "best_texts_per_s": best["texts_per_s"],
        "best_speedup_vs_serial": best["speedup_vs_serial"],
    }
    table = (
        f"{info['gpu'].get('name', args.device)}; CPU {info['cpu']['model']} "
        f"{'/'.join(info['cpu']['flags'])}; load {info['load_start'][0]}-{info['load_end'][0]}; "
        f"{args.model} {precision}, torch threads {info['torch_threads_serial']} (serial) / "
        f"{info['torch_threads_batch']} (batches)\n\n"
        "| variant | texts | wall s | texts/s | texts per CPU s | vs serial |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        + "\n".join(
            f"| {r['variant']} | {r['texts']} | {r['wall_s']:.2f} | {r['texts_per_s']:.1f} | "
            f"{r['texts_per_cpu_s'] or '-'} | {r['speedup_vs_serial']:.2f}x |"
            for r in rows
        )
    )
    out = args.out or ROOT / "bench" / "results" / f"gpu_ingest_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({**info, "summary": summary, "rows": rows, "table_markdown": table}, indent=2),
        encoding="utf-8",
    )
    print(table)
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
