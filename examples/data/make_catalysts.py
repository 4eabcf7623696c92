"""Generate ``catalysts.jsonl``: synthetic market catalysts and the setups that preceded them.

Every record is invented: the tickers are real symbols, but the events, dates, levels and moves
are drawn from templates with a fixed seed, so the file is the same on every run. It exists so
the paiddaily example has something to search with ticker and date filters, e.g. "catalysts that
preceded a setup like today's for PENDLE before 2026-01-01".

Record layout (one JSON object a line)::

    {"_id": "cat-0001", "text": "...",
     "metadata": {"ticker": "PENDLE", "asset_class": "crypto", "date": "2025-03-14",
                  "kind": "unlock", "move_pct": 14.2}}

``move_pct`` is the fictional move over the five sessions after the catalyst.

Usage::

    python examples/data/make_catalysts.py            # rewrites catalysts.jsonl beside this file
    python examples/data/make_catalysts.py --check    # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

SEED = 20250314
N_RECORDS = 300
START, END = date(2024, 1, 1), date(2026, 10, 31)
OUT = Path(__file__).with_name("catalysts.jsonl")

# ticker -> (asset class, weight in the sample, flavour used in some sentences)
TICKERS: dict[str, tuple[str, int, str]] = {
    "PENDLE": ("crypto", 5, "yield-trading protocol"),
    "ETH": ("crypto", 3, "smart-contract platform"),
    "SOL": ("crypto", 3, "high-throughput chain"),
    "ARB": ("crypto", 2, "rollup network"),
    "LINK": ("crypto", 2, "oracle network"),
    "AAVE": ("crypto", 2, "lending protocol"),
    "NVDA": ("equity", 3, "chip designer"),
    "TSLA": ("equity", 3, "electric-vehicle maker"),
    "PLTR": ("equity", 2, "data-analytics software vendor"),
    "AMD": ("equity", 2, "chip designer"),
    "COIN": ("equity", 2, "crypto exchange operator"),
    "MRNA": ("equity", 2, "biotech"),
}

# kind -> [(template, bias)]: {t} is the ticker, {f} its flavour, other fields come from FIELDS.
# The bias (in %) shifts the fictional five-day move, so good news tends to go up.
Templates = dict[str, list[tuple[str, float]]]

CRYPTO_CATALYSTS: Templates = {
    "unlock": [
        ("token unlock of {pct_small}% of circulating supply scheduled for {day}", -5.0),
        ("cliff unlock for early investors releasing {pct_small}% of supply on {day}", -7.0),
    ],
    "listing": [
        ("spot listing announced on a top-five exchange for {day}", 7.0),
        ("perpetual futures listing with {lev}x leverage went live on {day}", 2.0),
    ],
    "partnership": [
        ("integration with a major wallet announced, bringing {t} to {users}M users", 4.0),
        ("partnership with a large market maker to deepen {t} liquidity", 1.0),
    ],
    "governance": [
        ("governance vote passed to redirect {pct_small}% of fees to stakers", 4.0),
        ("proposal to cut token emissions by {pct_mid}% approved", 3.0),
        ("proposal to raise treasury spending was voted down after a heated debate", -2.0),
    ],
    "upgrade": [
        ("network upgrade activated on {day}, lowering fees by about {pct_mid}%", 3.0),
        ("v{ver} of the {f} shipped with new pool types", 4.0),
        ("a planned upgrade slipped by {n_small} weeks after an audit finding", -4.0),
    ],
    "exploit": [
        ("a third-party pool built on {t} lost ${loss}M to an exploit; core contracts safe", -8.0),
        ("a bridge used by {t} holders was paused after a ${loss}M exploit", -10.0),
    ],
    "macro": [
        ("US CPI printed {cpi_low}% against {cpi_est}% expected", 3.0),
        ("US CPI printed {cpi_high}% against {cpi_est}% expected", -3.0),
        ("the Fed held rates and signalled cuts later in the year", 2.0),
    ],
    "buyback": [
        ("treasury began a buyback of {pct_small}% of supply funded by protocol revenue", 4.0),
    ],
}
ETF_CATALYSTS: Templates = {
    "etf": [
        ("spot ETF filings for {t} updated with fee schedules; decision window opened", 6.0),
        ("regulator delayed its decision on a {t} ETF by {n_small} weeks", -4.0),
    ],
}
PENDLE_CATALYSTS: Templates = {
    "upgrade": [
        ("new yield pools for restaked ETH tokens launched with boosted incentives", 6.0),
        ("fixed-yield market for a large stablecoin opened with ${tvl}M deposited in a day", 8.0),
    ],
    "governance": [
        ("vePENDLE holders voted to change how swap fees are shared with lockers", 3.0),
    ],
    "unlock": [
        ("a large batch of PT tokens matured on {day}, returning ${tvl}M to depositors", -3.0),
    ],
}
EQUITY_CATALYSTS: Templates = {
    "earnings": [
        ("quarterly earnings on {day}: revenue beat consensus by {pct_small}%", 6.0),
        ("quarterly earnings on {day}: EPS missed by {pct_small}% and margins narrowed", -8.0),
        ("quarterly earnings on {day}: in line, with a cautious tone on the call", -1.0),
    ],
    "guidance": [
        ("full-year guidance raised, {pct_small}% above the street", 6.0),
        ("next-quarter guidance came in below consensus", -7.0),
    ],
    "lawsuit": [
        ("a class action over disclosure was filed on {day}", -4.0),
        ("a patent suit against a rival was settled in the company's favour", 3.0),
    ],
    "buyback": [
        ("board authorised a ${bb}B share buyback", 3.0),
    ],
    "partnership": [
        ("multi-year supply agreement with a hyperscaler announced", 6.0),
        ("partnership with a large automaker disclosed at an industry conference", 3.0),
    ],
    "analyst": [
        ("two brokers upgraded the stock to buy with targets {pct_mid}% higher", 4.0),
        ("a prominent short seller published a report on {day}", -6.0),
    ],
    "macro": [
        ("US CPI printed {cpi_low}% against {cpi_est}% expected", 2.0),
        ("payrolls surprised to the upside and yields jumped", -2.0),
    ],
    "index": [
        ("inclusion in a major index announced, effective {day}", 5.0),
    ],
    "product": [
        ("new product line unveiled at the annual event on {day}", 1.0),
        ("a flagship product recall covering {users}0,000 units announced", -5.0),
    ],
}
MRNA_CATALYSTS: Templates = {
    "fda": [
        ("FDA approval decision for a respiratory vaccine due on {day}", 2.0),
        ("FDA advisory committee voted {votes} in favour of a new indication", 12.0),
        ("FDA issued a complete response letter asking for more trial data", -18.0),
        ("late-stage trial met its primary endpoint; full data due at a conference", 10.0),
    ],
}

# (template, bias): the setup in the run-up; some lean one way (a crowded short squeezes).
CRYPTO_SETUPS = [
    ("price coiled in a tight range for {n} days", 1.0),
    ("funding turned negative {n_small} days before", 3.0),
    ("open interest rose {pct_mid}% while price stayed flat", 0.0),
    ("exchange balances fell {pct_small}% in a week as tokens moved to cold storage", 2.0),
    ("price broke above the {n}-day high on rising volume", 2.0),
    ("a breakdown below the range low was reclaimed within a day", 2.0),
    ("TVL grew {pct_mid}% in a month while price lagged", 2.0),
    ("price drifted lower for {n} days on shrinking volume", -1.0),
    ("the token held its 200-day average after a {pct_mid}% pullback", 1.0),
    ("perp basis compressed to near zero", 0.0),
    ("a higher low formed after a {pct_mid}% drawdown", 1.0),
    ("RSI diverged from price at the lows", 1.0),
    ("funding ran hot at {funding}% per eight hours", -3.0),
    ("a rally stalled at the prior high on fading volume", -2.0),
]
EQUITY_SETUPS = [
    ("the stock coiled in a tight range for {n} sessions", 1.0),
    ("short interest reached {si}% of float", 3.0),
    ("implied volatility sank to a {n_small}-month low", 0.0),
    ("shares gapped up and faded to close near the open", -2.0),
    ("the stock held its 200-day average after a {pct_mid}% pullback", 1.0),
    ("volume dried up to {pct_vol}% of its 30-day average", 0.0),
    ("price broke above a {n}-day base on heavy volume", 2.0),
    ("a higher low formed after a {pct_mid}% drawdown", 1.0),
    ("call volume ran at {n_small}x its usual level", 1.0),
    ("the stock lagged its sector by {pct_small}% over the month", 0.0),
    ("RSI diverged from price at the lows", 1.0),
    ("insiders sold shares worth ${insider}M in the prior month", -2.0),
]
UP_REACTIONS = [
    "shorts covered and price rose {size} over the next five sessions",
    "the move resolved upward: {move} in five sessions",
    "buyers stepped in at the open and it closed the week {move}",
    "the range broke to the upside, {move} by the end of the week",
]
DOWN_REACTIONS = [
    "sellers took control and price fell {size} over five sessions",
    "the setup failed and it dropped {size} in a week",
    "the news was sold: {move} over the next five sessions",
    "support gave way and it ended the week {move}",
]
FLAT_REACTIONS = [
    "the reaction was muted, {move} over five sessions",
    "price chopped around and finished the week {move}",
]
#: spread (standard deviation, %) of the five-day move per kind, before the asset-class scale
KIND_SPREAD: dict[str, float] = {"fda": 10.0, "exploit": 6.0, "unlock": 6.0, "listing": 7.0}
DEFAULT_SPREAD = 4.0
#: relative frequency of each kind among a ticker's kinds (default 1)
KIND_WEIGHT: dict[str, float] = {"fda": 3.0, "macro": 0.6, "buyback": 0.7}

FIELDS: dict[str, Callable[[random.Random], str]] = {
    "pct_small": lambda r: f"{r.uniform(1.5, 12):.1f}",
    "pct_mid": lambda r: str(r.randint(10, 45)),
    "pct_vol": lambda r: str(r.randint(35, 60)),
    "si": lambda r: f"{r.uniform(8, 32):.1f}",
    "n": lambda r: str(r.randint(6, 30)),
    "n_small": lambda r: str(r.randint(2, 6)),
    "lev": lambda r: str(r.choice([20, 25, 50])),
    "users": lambda r: str(r.randint(2, 40)),
    "ver": lambda r: str(r.randint(2, 4)),
    "loss": lambda r: f"{r.uniform(1, 40):.1f}",
    "tvl": lambda r: str(r.randint(40, 900)),
    "bb": lambda r: f"{r.uniform(0.5, 10):.1f}",
    "votes": lambda r: f"{r.randint(8, 14)}-{r.randint(0, 4)}",
    "funding": lambda r: f"{r.uniform(0.03, 0.12):.2f}",
    "insider": lambda r: str(r.randint(5, 400)),
}


def _fill(template: str, rng: random.Random, *, ticker: str, flavour: str, day: date) -> str:
    """Format one template, drawing a fresh value for each numeric field it names."""
    cpi_est = rng.choice([2.4, 2.6, 2.8, 3.0, 3.1, 3.3])
    values = {
        "t": ticker,
        "f": flavour,
        "day": f"{day:%b} {day.day}",
        "cpi_est": f"{cpi_est:.1f}",
        "cpi_low": f"{cpi_est - rng.choice([0.1, 0.2, 0.3]):.1f}",
        "cpi_high": f"{cpi_est + rng.choice([0.1, 0.2, 0.3]):.1f}",
    }
    for _, name, _, _ in string.Formatter().parse(template):
        if name and name not in values:
            values[name] = FIELDS[name](rng)
    return template.format(**values)


def _catalysts_for(ticker: str, asset_class: str) -> Templates:
    base = CRYPTO_CATALYSTS if asset_class == "crypto" else EQUITY_CATALYSTS
    table = {kind: list(templates) for kind, templates in base.items()}
    extra: Templates = {}
    if ticker in {"ETH", "SOL"}:  # no vesting schedule or treasury buyback for these
        extra = ETF_CATALYSTS
        del table["unlock"], table["buyback"]
    elif ticker == "PENDLE":
        extra = PENDLE_CATALYSTS
    elif ticker == "MRNA":
        extra = MRNA_CATALYSTS
        del table["partnership"]
    for kind, templates in extra.items():
        table.setdefault(kind, []).extend(templates)
    return table


def _record(rng: random.Random, ticker: str, day: date) -> dict[str, object]:
    asset_class, _, flavour = TICKERS[ticker]
    catalysts = _catalysts_for(ticker, asset_class)
    kinds = sorted(catalysts)
    weights = [KIND_WEIGHT.get(k, 1.0) for k in kinds]
    kind = rng.choices(kinds, weights=weights)[0]
    template, bias = rng.choice(catalysts[kind])
    catalyst = _fill(template, rng, ticker=ticker, flavour=flavour, day=day)
    setups = rng.sample(CRYPTO_SETUPS if asset_class == "crypto" else EQUITY_SETUPS, 2)
    setup_text = " and ".join(
        _fill(s, rng, ticker=ticker, flavour=flavour, day=day) for s, _ in setups
    )
    bias += sum(b for _, b in setups)

    scale = 1.6 if asset_class == "crypto" else 1.0
    move = round(rng.gauss(bias, KIND_SPREAD.get(kind, DEFAULT_SPREAD)) * scale, 1)
    if move >= 2.0:
        reactions = UP_REACTIONS
    elif move <= -2.0:
        reactions = DOWN_REACTIONS
    else:
        reactions = FLAT_REACTIONS
    reaction = rng.choice(reactions).format(move=f"{move:+.1f}%", size=f"{abs(move):.1f}%")

    text = (
        f"{ticker} ({flavour}): {catalyst}. In the run-up, {setup_text}. "
        f"{reaction[0].upper()}{reaction[1:]}."
    )
    return {
        "text": text,
        "metadata": {
            "ticker": ticker,
            "asset_class": asset_class,
            "date": day.isoformat(),
            "kind": kind,
            "move_pct": move,
        },
    }


def generate(*, seed: int = SEED, n: int = N_RECORDS) -> list[dict[str, object]]:
    """Return the records, sorted by date then ticker, with ids ``cat-0001`` onwards."""
    rng = random.Random(seed)
    tickers = sorted(TICKERS)
    weights = [TICKERS[t][1] for t in tickers]
    span = (END - START).days
    drafts = []
    for _ in range(n):
        ticker = rng.choices(tickers, weights=weights)[0]
        day = START + timedelta(days=rng.randint(0, span))
        drafts.append(_record(rng, ticker, day))
    drafts.sort(key=lambda r: (r["metadata"]["date"], r["metadata"]["ticker"]))  # type: ignore[index]
    return [{"_id": f"cat-{i:04d}", **r} for i, r in enumerate(drafts, start=1)]


def render(records: list[dict[str, object]]) -> str:
    """Serialise records as JSON lines."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> int:
    """Write (or, with ``--check``, verify) the catalysts file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output path")
    parser.add_argument("--check", action="store_true", help="fail if --out is not up to date")
    args = parser.parse_args(argv)
    content = render(generate())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != content:
            print(f"{args.out} is stale: run {Path(__file__).name} to regenerate", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(content, encoding="utf-8")
    print(f"wrote {args.out} ({content.count(chr(10))} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
