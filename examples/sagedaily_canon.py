"""sagedaily: a reader over a fixed canon. Index once; every later start reuses the index.

The canon (examples/data/canon, 15 essays) does not change, so it is embedded once and persisted.
A serving process then does the warm-start pattern: build the pipeline at start-up, call
``warmup()`` (loads the embedder and the persisted index: no request pays for it), and answer
many queries from the same object.

    python examples/sagedaily_canon.py          # first run embeds the canon
    python examples/sagedaily_canon.py          # second run: "0 chunks embedded"
    python examples/sagedaily_canon.py --config examples/configs/sagedaily.yaml  # via Ollama

In a real service, run ``gl-retrieval index CONFIG`` as a build step and keep only the
``from_config(...).warmup()`` + ``retrieve`` part in the server.
"""

from __future__ import annotations

import time
from typing import Any

from _common import load_example_config, parser, print_json, snippet

from gl_retrieval import RetrievalPipeline
from gl_retrieval.models import quiet_model_loading

#: One query per day's reading: what the reader wants the canon to speak to.
READINGS = [
    "how to keep attention on one thing",
    "learning a craft slowly from a master",
    "what to do with a broken object",
    "the value of quiet",
    "when a piece of work is finished",
]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], default_config="sagedaily.offline.yaml")
    p.add_argument("queries", nargs="*", help="queries (default: five readings)")
    p.add_argument("--top-n", type=int, default=3, help="passages per query")
    args = p.parse_args(argv)
    quiet_model_loading()
    cfg = load_example_config(args.config, index_dir=args.index_dir)

    # Build step: a no-op when the canon is unchanged (content hashes match; nothing is embedded).
    summary = RetrievalPipeline.from_config(cfg).index()

    # Serving: load once at start-up, then query many times.
    t0 = time.perf_counter()
    pipe = RetrievalPipeline.from_config(cfg).warmup()
    warmup_s = time.perf_counter() - t0

    readings: list[dict[str, Any]] = []
    for query in args.queries or READINGS:
        t = time.perf_counter()
        hits = pipe.retrieve(query, top_n=args.top_n)
        ms = (time.perf_counter() - t) * 1000
        readings.append(
            {"query": query, "ms": round(ms, 1), "results": [h.to_dict() for h in hits]}
        )

    report = {
        "config": str(args.config),
        "index": summary.to_dict(),
        "chunks_embedded": summary.chunks_embedded,
        "warmup_s": round(warmup_s, 3),
        "readings": readings,
    }
    if args.json:
        print_json(report)
        return 0
    reused = " (the persisted index was reused)" if summary.chunks_embedded == 0 else ""
    print(f"index: {summary.line()}{reused}")
    print(f"warm-up: {warmup_s:.2f}s (embedder + index loaded once)")
    for r in readings:
        print(f"\n? {r['query']}  ({r['ms']:.0f} ms)")
        for rank, h in enumerate(r["results"], 1):
            kind = h["score_kind"]  # "cosine" here: mode dense, no reranker
            print(f"  {rank}. {kind} {h['score']:.3f}  {h['doc_id']}: {snippet(h['text'], 80)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
