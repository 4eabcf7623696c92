"""What index integrity costs: checksum speeds, and reload/commit/verify times at 100k chunks.

Builds a synthetic generation (random 384-d vectors, ~60-word texts with metadata, the BM25 side)
through ``LocalStorage.commit``, then times, in one run and on one thread:

- the hash throughput of sha256, blake2b, xxh3-128 and crc32 over the generation's files;
- a reload (``LocalStorage.load``) that checks sizes only (the baseline) against one that also
  checks every checksum (the default), page cache warm;
- the checks alone: sizes (``stat``), every checksum, the NaN/inf scan of the vectors;
- ``gl-retrieval verify``'s full check, and the commit's extra checksum pass;
- with ``--baseline-src``, a reload by a checkout of gl_retrieval from before these checks (run
  in a subprocess on the same generation: it reads it, ignoring the checksums).

Usage::

    OMP_NUM_THREADS=1 python bench/integrity.py --size 100000 --baseline-src ../main
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gl_retrieval.storage import DocRecord, LocalStorage, Manifest  # noqa: E402
from gl_retrieval.storage.integrity import check_files, record_files  # noqa: E402

_BASELINE = """
import statistics, sys, time
from llama_index.core.embeddings import MockEmbedding
from gl_retrieval.storage import LocalStorage
storage, embed = LocalStorage(sys.argv[1]), MockEmbedding(embed_dim=int(sys.argv[2]))
storage.load(embed_model=embed)
times = []
for _ in range(5):
    t = time.perf_counter()
    handle = storage.load(embed_model=embed)
    times.append(time.perf_counter() - t)
    del handle
print(statistics.median(times))
"""


def baseline_reload(src: Path, index: Path, dim: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE, str(index), str(dim)],
        env=env, capture_output=True, text=True, check=True, cwd=src,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


_VOCABULARY = (
    "index vector query chunk token embed rerank score hybrid lexical dense sparse commit "
    "reader writer manifest checksum storage generation filter metadata corpus document "
    "model batch latency recall precision cosine norm matrix memory disk page cache"
)
WORDS = np.array(_VOCABULARY.split())


def build(root: Path, n: int, dim: int) -> LocalStorage:
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    from gl_retrieval.retrieval.lexical import LexicalIndex, _PersistBM25

    rng = np.random.default_rng(0)
    storage = LocalStorage(root)
    embed = MockEmbedding(embed_dim=dim)
    handle = storage.new(embed_model=embed)
    store = handle.vector_store
    texts = []
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        vectors = rng.standard_normal((m, dim)).astype(np.float32)
        words = WORDS[rng.integers(0, len(WORDS), size=(m, 60))]
        nodes = []
        for j in range(m):
            i = start + j
            text = " ".join(words[j])
            texts.append((f"d{i}#0", text))
            nodes.append(
                TextNode(
                    id_=f"d{i}#0",
                    text=text,
                    embedding=vectors[j].tolist(),
                    metadata={"doc_id": f"d{i}", "year": 2000 + i % 25},
                )
            )
            handle.documents[f"d{i}"] = DocRecord(hash=f"{i:064x}", nodes=[f"d{i}#0"])
        store.add(nodes)
    handle.extras["persist_hooks"] = [_PersistBM25(LexicalIndex.build(texts))]
    handle.manifest = Manifest(
        embedder={"provider": "mock", "model": "mock", "dimension": dim},
        chunking={"chunk_size": 256, "chunk_overlap": 32},
        documents=n,
        chunks=n,
    )
    with storage.write_lock():
        storage.commit(handle)
    return storage


def hash_speeds(gen: Path) -> list[dict[str, Any]]:
    files = [p for p in gen.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)

    def run(update: Any, make: Any) -> float:
        t = time.perf_counter()
        buf = bytearray(1 << 22)
        view = memoryview(buf)
        for p in files:
            h = make()
            with open(p, "rb", buffering=0) as f:
                while k := f.readinto(buf):
                    h = update(h, view[:k])
        return time.perf_counter() - t

    def hashlib_update(h: Any, b: Any) -> Any:
        h.update(b)
        return h

    algos = {
        "read only": (lambda h, b: h, lambda: None),
        "crc32 (zlib)": (lambda h, b: zlib.crc32(b, h), lambda: 0),
        "sha256": (hashlib_update, hashlib.sha256),
        "blake2b": (hashlib_update, hashlib.blake2b),
        "xxh3_128": (hashlib_update, xxhash.xxh3_128),
    }
    rows = []
    for name, (update, make) in algos.items():
        best = min(run(update, make) for _ in range(3))
        rows.append({"algorithm": name, "ms": best * 1e3, "GB/s": total / best / 1e9})
    return rows


def timed(fn: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        del out
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument(
        "--baseline-src", type=Path, default=None, help="A gl_retrieval checkout to compare."
    )
    args = ap.parse_args()
    from llama_index.core.embeddings import MockEmbedding

    work = args.work or Path(tempfile.mkdtemp(prefix="gl-integrity-"))
    t = time.perf_counter()
    storage = build(work / "index", args.size, args.dim)
    build_s = time.perf_counter() - t
    gen = storage.current_generation()
    assert gen is not None
    total = sum(p.stat().st_size for p in gen.rglob("*") if p.is_file())
    record_s = timed(lambda: record_files(gen), repeat=3)
    embed = MockEmbedding(embed_dim=args.dim)
    sizes = LocalStorage(work / "index", verify="sizes")
    checks = LocalStorage(work / "index", verify="checksums")
    sizes.load(embed_model=embed)  # warm the page cache
    load_sizes = timed(lambda: sizes.load(embed_model=embed))
    load_checks = timed(lambda: checks.load(embed_model=embed))
    verify_s = timed(lambda: checks.verify(), repeat=3)
    files = json.loads((gen / "manifest.json").read_text())["integrity"]["files"]
    stat_s = timed(lambda: check_files(gen, files, checksums=False))
    sums_s = timed(lambda: check_files(gen, files, checksums=True))
    vectors = next((gen / "default__vector_store").glob("vectors.*.npy"))
    from gl_retrieval.storage.embedded import _require_finite

    nan_s = timed(lambda: _require_finite(vectors, np.load(vectors, mmap_mode="r")))
    speeds = hash_speeds(gen)
    base_s = (
        baseline_reload(args.baseline_src, work / "index", args.dim) if args.baseline_src else None
    )

    load = os.getloadavg()
    n_files = sum(1 for p in gen.rglob("*") if p.is_file())
    print(f"\n{args.size} chunks, dim {args.dim}: generation {total / 1e6:.1f} MB in "
          f"{n_files} files (built in {build_s:.1f}s)")  # fmt: skip
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}\n")  # fmt: skip
    print("| checksum | ms over the generation | GB/s |")
    print("|---|---:|---:|")
    for r in speeds:
        print(f"| {r['algorithm']} | {r['ms']:.0f} | {r['GB/s']:.2f} |")
    print("\n| step | median s | vs first row |")
    print("|---|---:|---:|")
    rows = [
        *([("reload by the baseline checkout (no checks)", base_s)] if base_s else []),
        ("reload, sizes only (baseline)", load_sizes),
        ("reload, every checksum (default)", load_checks),
        ("  of which: sizes of every file (stat)", stat_s),
        ("  of which: every checksum", sums_s),
        ("  of which: NaN/inf scan of the vectors", nan_s),
        ("checksum pass added to a commit", record_s),
        ("gl-retrieval verify (full)", verify_s),
    ]
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {s / rows[0][1]:.2f}x |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "size": args.size,
        "dim": args.dim,
        "bytes": total,
        "loadavg": load,
        "hash": speeds,
        "seconds": dict(rows),
    }
    path = out / f"integrity-{args.size}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
