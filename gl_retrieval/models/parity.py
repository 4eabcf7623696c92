"""The parity check of ``backend: auto``: a quantized export is used only if it agrees with fp32.

When ``auto`` picks a precision below fp32 (int8, or bf16 on openvino), the export and the
fp32 torch model score one fixed set of inputs, and the export is kept only within these
tolerances (docs/performance.md, "backend: auto"):

- a **reranker**: over :func:`parity_pairs` (every demo query against 12 passages of two demo
  documents each, 60 pairs of ~85-135 tokens), Spearman's rank correlation with fp32
  >= :data:`RERANK_MIN_SPEARMAN`, and the largest score difference <= :data:`RERANK_MAX_DIFF`
  of the fp32 scores' spread (max - min);
- an **embedder**: over :func:`parity_texts` (the demo queries, every demo document's text, and
  ten long texts of four documents each: 65 texts of ~15-200 tokens), the cosine of every
  vector with its fp32 one >= :data:`EMBED_MIN_COSINE`.

The inputs are made from the bundled demo corpus (``gl_retrieval/data``), but not as the
OpenVINO int8 calibration reads it (title + text, one document at a time): long inputs are
where int8 drifts most, and a check on the calibration set itself would flatter it.

Otherwise :func:`settle` moves to the next candidate of the choice and says so. The verdict
(its measurements) is written next to the cached export, ``parity-<precision>-<inputs>.json``
(``<inputs>``: a hash of the fixed inputs, so changing them checks again), so it is computed
once per export; it is judged again on every read, so a changed tolerance applies
without re-scoring. A model with random weights (the stand-in) cannot be judged: its scores
barely vary, and the check is skipped with a note.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from gl_retrieval.errors import GLRetrievalError
from gl_retrieval.models.backend_choice import BackendChoice

__all__ = [
    "EMBED_MIN_COSINE",
    "RERANK_MAX_DIFF",
    "RERANK_MIN_SPEARMAN",
    "ParityVerdict",
    "judge_scores",
    "judge_vectors",
    "needs_parity",
    "parity_pairs",
    "parity_texts",
    "read_verdict",
    "settle",
    "write_verdict",
]

log = logging.getLogger("gl_retrieval")

#: Reranker: least Spearman rank correlation with fp32 over the fixed pairs.
RERANK_MIN_SPEARMAN = 0.98
#: Reranker: largest |score - fp32 score|, as a fraction of the fp32 scores' max - min.
RERANK_MAX_DIFF = 0.10
#: Embedder: least cosine between a text's vector and its fp32 vector. onnx int8 MiniLM
#: measured 0.986 here (0.991 on SciFact abstracts) and kept dense nDCG@10 within 0.005 of
#: fp32 on SciFact, CISI and Cranfield (docs/performance.md).
EMBED_MIN_COSINE = 0.98
#: fp32 scores that vary less than this (max - min) cannot be judged (random weights).
MIN_SPREAD = 1e-3

_PASSAGES_PER_QUERY = 12


@dataclass(frozen=True)
class ParityVerdict:
    """One parity check: its measurements, and whether they are within the tolerances."""

    role: str
    backend: str
    precision: str
    n: int
    ok: bool
    checked: bool = True
    spearman: float | None = None
    max_diff: float | None = None
    spread: float | None = None
    min_cosine: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def why(self) -> str:
        """What failed, for the notice (empty when ok)."""
        if self.ok:
            return ""
        if self.min_cosine is not None:
            return f"against fp32: min cosine {self.min_cosine:.4f} (needs >= {EMBED_MIN_COSINE})"
        bound = RERANK_MAX_DIFF * (self.spread or 0.0)
        return (
            f"against fp32: Spearman {self.spearman:.4f} (needs >= {RERANK_MIN_SPEARMAN}), "
            f"max |diff| {self.max_diff:.4g} (needs <= {bound:.4g}, {RERANK_MAX_DIFF} of the "
            f"scores' spread {self.spread:.4g})"
        )


def needs_parity(choice: BackendChoice) -> bool:
    """Whether ``auto`` must check this choice: an export below fp32 (int8, bf16)."""
    return choice.configured == "auto" and choice.backend != "torch" and choice.precision != "fp32"


def _demo() -> tuple[list[str], list[str]]:
    data = resources.files("gl_retrieval") / "data"
    docs = []
    for line in (data / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            docs.append(json.loads(line)["text"])
    queries = [q["query"] for q in json.loads((data / "demo_queries.json").read_text())]
    return queries, docs


def parity_pairs() -> list[tuple[str, str]]:
    """The fixed (query, passage) pairs: each demo query against 12 passages of two
    consecutive demo documents, spread over the corpus the same way for every query."""
    queries, docs = _demo()
    n = len(docs)
    step = max(1, n // _PASSAGES_PER_QUERY)
    out = []
    for i, q in enumerate(queries):
        for j in range(_PASSAGES_PER_QUERY):
            k = (i * 3 + j * step) % n
            out.append((q, f"{docs[k]} {docs[(k + 1) % n]}"))
    return out


def parity_texts() -> list[str]:
    """The fixed texts of the embedder check: the demo queries, each demo document's text,
    and ten long texts of four consecutive documents."""
    queries, docs = _demo()
    long = [" ".join(docs[k : k + 4]) for k in range(0, min(len(docs), 40), 4)]
    return queries + docs + long


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    def rank(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        return r

    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def judge_scores(
    ref: Sequence[float], got: Sequence[float], *, backend: str, precision: str
) -> ParityVerdict:
    """Reranker scores of the export (``got``) against fp32 (``ref``), on the same pairs."""
    a, b = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    spread = float(a.max() - a.min()) if len(a) else 0.0
    diff = float(np.abs(a - b).max()) if len(a) else 0.0
    if spread < MIN_SPREAD:
        return ParityVerdict(
            "reranker", backend, precision, len(a), ok=True, checked=False, max_diff=diff,
            spread=spread,
            note=f"not judged: the fp32 scores barely vary (spread {spread:.2g}; random "
            "weights?), so rank agreement means nothing",
        )  # fmt: skip
    rho = _spearman(a, b)
    ok = rho >= RERANK_MIN_SPEARMAN and diff <= RERANK_MAX_DIFF * spread
    return ParityVerdict(
        "reranker", backend, precision, len(a), ok=ok, spearman=round(rho, 5),
        max_diff=round(diff, 6), spread=round(spread, 6),
    )  # fmt: skip


def judge_vectors(
    ref: np.ndarray, got: np.ndarray, *, backend: str, precision: str
) -> ParityVerdict:
    """Embedder vectors of the export (``got``) against fp32 (``ref``), row by row."""
    a, b = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.clip(na, 1e-12, None)
    low = float(cos.min()) if len(cos) else 1.0
    return ParityVerdict(
        "embedder", backend, precision, len(cos), ok=low >= EMBED_MIN_COSINE,
        min_cosine=round(low, 5),
    )  # fmt: skip


def _rejudge(data: dict[str, Any]) -> ParityVerdict:
    """A stored verdict judged with today's tolerances."""
    v = ParityVerdict(**{k: data[k] for k in ParityVerdict.__dataclass_fields__ if k in data})
    if not v.checked:
        return v
    if v.min_cosine is not None:
        return ParityVerdict(**{**asdict(v), "ok": v.min_cosine >= EMBED_MIN_COSINE})
    ok = (v.spearman or 0.0) >= RERANK_MIN_SPEARMAN and (v.max_diff or 0.0) <= (
        RERANK_MAX_DIFF * (v.spread or 0.0)
    )
    return ParityVerdict(**{**asdict(v), "ok": ok})


@functools.lru_cache(maxsize=1)
def _inputs_digest() -> str:
    data = json.dumps([parity_pairs(), parity_texts()]).encode()
    return hashlib.sha256(data).hexdigest()[:12]


def _verdict_path(export: Path, precision: str) -> Path:
    return export / f"parity-{precision}-{_inputs_digest()}.json"


def read_verdict(export: Path, precision: str) -> ParityVerdict | None:
    """The verdict cached beside ``export`` for ``precision``, judged anew; None if none."""
    try:
        return _rejudge(json.loads(_verdict_path(export, precision).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_verdict(export: Path, verdict: ParityVerdict) -> None:
    """Cache ``verdict`` beside ``export`` (written whole, then renamed into place)."""
    final = _verdict_path(export, verdict.precision)
    tmp = final.with_name(f".{final.name}.{os.getpid()}")
    tmp.write_text(json.dumps(verdict.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, final)


def settle(
    choice: BackendChoice,
    *,
    check: Callable[[BackendChoice], ParityVerdict],
) -> BackendChoice:
    """Walk ``choice`` and its fallbacks until one needs no check or passes ``check``.

    ``check`` builds (or finds) the export of a choice and returns its verdict, cached or
    new. A failed check, or an export that cannot be built here (``GLRetrievalError``: a model
    with a module the exports do not support, a missing extra), logs one notice and moves to
    the next fallback; torch, last in every list, needs no check.
    """
    while needs_parity(choice):
        try:
            verdict = check(choice)
        except GLRetrievalError as e:  # not exportable here (an extra module, a missing extra)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            choice = choice.next(f"could not be built or loaded ({first[:300]})")
            log.warning("notice: %s", choice.notices[-1])
            continue
        if verdict.ok:
            if verdict.note:
                log.info(
                    "%s: %s %s: %s", choice.role, choice.backend, choice.precision, verdict.note
                )
            return replace(choice, parity=verdict.to_dict())
        choice = choice.next(f"failed its parity check ({verdict.why})")
        log.warning("notice: %s", choice.notices[-1])
    return choice
