"""paiddaily: catalysts that preceded a setup like this one, for one ticker, before a date.

Index examples/data/catalysts.jsonl (300 synthetic catalysts, each with metadata ``ticker``,
``date``, ``kind``, ``move_pct``), describe today's setup in words, and retrieve the 20 closest
past catalysts of that ticker before the date (metadata filters, applied before ``top_k`` is
taken), then rerank them to ``reranker.top_n``.

    python examples/paiddaily_catalysts.py                      # PENDLE before 2026-01-01
    python examples/paiddaily_catalysts.py --ticker SOL --before 2025-06-01 --json
    python examples/paiddaily_catalysts.py --config examples/configs/paiddaily.yaml

Filters use LlamaIndex's own ``MetadataFilters``. Dates are ISO strings (``YYYY-MM-DD``), so
``date < "2026-01-01"`` compares them correctly as text.

Offline, the reranker is a stand-in (``packaged:stand-in-cross-encoder``, random weights; see
configs/paiddaily.offline.yaml): its scores mean nothing, so the precedents stay in retrieval
order, and the output says so. The data is synthetic too: none of this is market data or advice.
"""

from __future__ import annotations

import statistics
from typing import Any

from _common import load_example_config, parser, print_json, ranking_note, snippet
from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters

from gl_retrieval import RetrievalPipeline
from gl_retrieval.models import quiet_model_loading

SETUP = (
    "token unlock coming up after a long base; price broke out on heavy volume and RSI "
    "diverged from price at the lows"
)


def precedent_filters(ticker: str, before: str) -> MetadataFilters:
    """``ticker == <ticker> AND date < <before>`` as LlamaIndex metadata filters."""
    return MetadataFilters(
        filters=[
            MetadataFilter(key="ticker", value=ticker, operator=FilterOperator.EQ),
            MetadataFilter(key="date", value=before, operator=FilterOperator.LT),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0], default_config="paiddaily.offline.yaml")
    p.add_argument("--ticker", default="PENDLE", help="only this ticker (default: PENDLE)")
    p.add_argument("--before", default="2026-01-01", help="only catalysts before this ISO date")
    p.add_argument("--setup", default=SETUP, help="today's setup, in words")
    p.add_argument("--top-k", type=int, default=20, help="filtered candidates to rerank")
    args = p.parse_args(argv)
    quiet_model_loading()

    cfg = load_example_config(args.config, index_dir=args.index_dir)
    pipe = RetrievalPipeline.from_config(cfg)
    summary = pipe.index()  # only new or changed catalysts are embedded

    hits = pipe.retrieve(
        args.setup, filters=precedent_filters(args.ticker, args.before), top_k=args.top_k
    )
    moves = [h.node.metadata["move_pct"] for h in hits]
    report: dict[str, Any] = {
        "config": str(args.config),
        "index": summary.to_dict(),
        "query": {"setup": args.setup, "ticker": args.ticker, "before": args.before},
        "results": [h.to_dict() for h in hits],
        "median_move_pct": statistics.median(moves) if moves else None,
    }
    if args.json:
        print_json(report)
        return 0

    print(f"index: {summary.line()}")
    print(f"\nsetup: {args.setup}")
    print(f"precedents for {args.ticker} before {args.before} (of the top {args.top_k}):")
    print(f"  {ranking_note(hits)}")
    for rank, h in enumerate(hits, 1):
        m = h.node.metadata
        scores = f"{h.score_kind} {h.score:.3f}"
        if h.score_kind == "rerank":
            scores += f" ({h.retrieval_kind} {h.retrieval_score:.3f})"
        print(
            f"  {rank}. {m['date']}  {m['kind']:<10} {m['move_pct']:+6.1f}%  {scores}  "
            f"{snippet(h.node.get_content(), 70)}"
        )
    if moves:
        print(f"median 5-day move after these precedents: {statistics.median(moves):+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
