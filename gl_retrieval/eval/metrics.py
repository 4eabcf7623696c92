"""Retrieval evaluation on BEIR-format data: loading, nDCG / MRR / recall, latency percentiles.

Pure Python and numpy: nothing here imports LlamaIndex or a model, so a benchmark can score a
run produced anywhere.

Conventions (trec_eval's, checked against ``pytrec_eval`` in the tests):

* **Qrels** map ``query id -> doc id -> gain``. The gain is the judged relevance value itself
  (linear, not ``2**rel - 1``). A gain ``<= 0`` means *not relevant*; a document missing from the
  qrels is unjudged and counts as not relevant.
* **A run** maps ``query id -> [doc id, ...]``, best first (:data:`Run`). A run kept as
  ``doc id -> score`` converts with :func:`run_from_scores`, which breaks score ties the way
  trec_eval does (by doc id, descending); :func:`run_to_scores` goes the other way.
* ``nDCG@k`` is trec_eval's ``ndcg_cut_k``: DCG over the top k with a ``log2(rank + 1)`` discount,
  divided by the DCG of the ideal ordering of *all* judged positive gains for the query.
  ``MRR@k`` is the reciprocal rank of the first relevant document within the top k (trec_eval's
  ``recip_rank`` on a run cut to k). ``Recall@k`` is relevant documents in the top k over all
  relevant documents (``recall_k``).

How :func:`evaluate` averages: over the queries of the qrels that have at least one positive
judgment. A query the run does not contain scores 0 (trec_eval ``-c``); run queries without qrels
are ignored. A query with no positive judgment is skipped, because no ranking can score on it.
This differs from trec_eval, which averages such a query in with a 0 when the run contains it.

Example:
    >>> from gl_retrieval.eval.metrics import evaluate
    >>> qrels = {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1}}
    >>> run = {"q1": ["d2", "d1"], "q2": ["d9", "d3"]}
    >>> evaluate(run, qrels, metrics=("MRR@10", "Recall@1"))
    {'MRR@10': 0.75, 'Recall@1': 0.25}
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import numpy as np

from gl_retrieval.config import limits
from gl_retrieval.errors import ConfigError, SourceError

__all__ = [
    "DEFAULT_METRICS",
    "GAIN_PRESETS",
    "BeirDataset",
    "BeirDocument",
    "Qrels",
    "Run",
    "doc_level_ranking",
    "evaluate",
    "evaluate_per_query",
    "gains_for_dataset",
    "iter_corpus",
    "latency_percentiles",
    "load_beir",
    "mrr_at_k",
    "ndcg_at_k",
    "recall_at_k",
    "run_from_scores",
    "run_to_scores",
]

#: query id -> doc ids, best first.
Run: TypeAlias = Mapping[str, Sequence[str]]
#: query id -> doc id -> gain (``<= 0``: not relevant).
Qrels: TypeAlias = Mapping[str, Mapping[str, float]]

DEFAULT_METRICS: Final[tuple[str, ...]] = ("nDCG@10", "MRR@10", "Recall@10", "Recall@100")

#: Named tables from a qrels score (a judgment code) to a gain. Cranfield's codes run from
#: 1 = most relevant to 4 = least, -1 = not relevant; its README says gain = 5 - code for 1..4.
GAIN_PRESETS: Final[Mapping[str, Mapping[int, float]]] = MappingProxyType(
    {"cranfield": MappingProxyType({1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0, -1: 0.0})}
)

_METRIC_RE = re.compile(r"^(ndcg|mrr|recall)@([1-9][0-9]*)$", re.IGNORECASE)


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeirDocument:
    """One line of a BEIR ``corpus.jsonl``."""

    doc_id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BeirDataset:
    """Queries and judgments of one split of a BEIR-format dataset; the corpus stays on disk.

    Attributes:
        name: Directory name of the dataset, e.g. ``"cranfield"``.
        corpus_path: Path of ``corpus.jsonl``; read it lazily with :meth:`iter_corpus`.
        split: The qrels split loaded, e.g. ``"test"``.
        queries: query id -> text, only for queries judged in this split.
        qrels: query id -> doc id -> gain, after the gain table was applied.
        gains: The score -> gain table applied, or ``None`` where raw scores are the gains.
    """

    name: str
    corpus_path: Path
    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]
    gains: Mapping[int, float] | None = None

    def iter_corpus(self) -> Iterator[BeirDocument]:
        """Yield the corpus documents one at a time (see :func:`iter_corpus`)."""
        return iter_corpus(self.corpus_path)


def gains_for_dataset(path_or_name: str | os.PathLike[str]) -> Mapping[int, float] | None:
    """Return the gain preset for a dataset, matched by its directory name, or ``None``.

    Only an exact (case-insensitive) name in :data:`GAIN_PRESETS` matches: ``"cranfield"`` and
    ``"../data/cranfield"`` do, ``"cranfield-v2"`` does not.

    Args:
        path_or_name: A dataset directory or its bare name.

    Returns:
        The score -> gain table, or ``None`` when the dataset has no preset (raw scores are gains).

    Example:
        >>> gains_for_dataset("data/cranfield")[1]
        4.0
        >>> gains_for_dataset("scifact") is None
        True
    """
    return GAIN_PRESETS.get(Path(path_or_name).name.lower())


def iter_corpus(path: str | os.PathLike[str]) -> Iterator[BeirDocument]:
    """Yield the documents of a BEIR ``corpus.jsonl`` lazily, one per non-blank line.

    Args:
        path: The dataset directory (``corpus.jsonl`` is read from it) or the ``.jsonl`` file.

    Yields:
        One :class:`BeirDocument` per line; ``title`` defaults to ``""`` and ``metadata`` to
        ``{}``.

    Raises:
        SourceError: The file is missing, or a line is not a JSON object with ``_id`` and ``text``.

    Example:
        >>> docs = iter_corpus("../shared/data/cranfield")  # doctest: +SKIP
        >>> next(docs).doc_id  # doctest: +SKIP
        '1'
    """
    file = Path(path)
    if file.is_dir():
        file = file / "corpus.jsonl"
    if not file.exists():
        raise SourceError(f"corpus file {file} does not exist (expected BEIR corpus.jsonl)")
    reason = limits.not_a_file(file)
    if reason is not None:
        raise SourceError(f"corpus file {file} is {reason}")
    return _iter_corpus_file(file)


def _iter_corpus_file(file: Path) -> Iterator[BeirDocument]:
    for lineno, obj in _read_jsonl(file):
        text, title, metadata = obj.get("text"), obj.get("title") or "", obj.get("metadata") or {}
        if not isinstance(text, str) or not isinstance(title, str):
            raise SourceError(f"{file}:{lineno}: 'text' and 'title' must be strings")
        if not isinstance(metadata, dict):
            raise SourceError(f"{file}:{lineno}: 'metadata' must be an object, got {metadata!r}")
        yield BeirDocument(
            doc_id=_doc_id(obj, file, lineno), text=text, title=title, metadata=metadata
        )


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a dataset file: regular files only, lines of at most
    JSONL_LINE_BYTES, UTF-8; anything else is a one-line SourceError naming file and line."""
    reason = limits.not_a_file(file)
    if reason is not None:
        raise SourceError(f"{file} is {reason}")
    with file.open("rb") as fh:
        for lineno, raw in limits.capped_lines(fh):
            if raw is None:
                cap = limits.human_bytes(limits.JSONL_LINE_BYTES)
                raise SourceError(f"{file}:{lineno}: line longer than {cap} (the limit)")
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SourceError(f"{file}:{lineno}: not UTF-8 text (byte {e.start})") from None


def _check_size(file: Path) -> None:
    if file.stat().st_size > limits.QRELS_BYTES:
        raise SourceError(
            f"{file} is larger than {limits.human_bytes(limits.QRELS_BYTES)} (the limit for "
            "queries and qrels files)"
        )


def _read_jsonl(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in _lines(file):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{file}:{lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise SourceError(f"{file}:{lineno}: JSON nested far too deeply") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{file}:{lineno}: expected a JSON object, got {obj!r:.60}")
        yield lineno, obj


def _doc_id(obj: Mapping[str, Any], file: Path, lineno: int) -> str:
    value = obj.get("_id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise SourceError(f"{file}:{lineno}: missing or invalid '_id' (got {value!r})")
    return str(value)


def check_dataset(path: str | os.PathLike[str], *, split: str = "test") -> Path:
    """Check a BEIR dataset's layout without reading it; return its ``qrels/<split>.tsv``.

    Raises:
        SourceError: the directory or a file is missing, or a file is a FIFO, a device or a
            directory (any of which would hang or mislead a reader).
        ConfigError: the split does not exist (the error lists those that do).
    """
    root = Path(path)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise SourceError(f"BEIR dataset directory {root} {what} (--dataset)")
    for required, kind in (("corpus.jsonl", "file"), ("queries.jsonl", "file"), ("qrels", "dir")):
        entry = root / required
        if not entry.exists():
            raise SourceError(
                f"BEIR dataset {root} has no {required}: expected corpus.jsonl, queries.jsonl "
                "and qrels/<split>.tsv"
            )
        if kind == "file" and limits.not_a_file(entry) is not None:
            raise SourceError(f"BEIR dataset file {entry} is {limits.not_a_file(entry)}")
        if kind == "dir" and not entry.is_dir():
            raise SourceError(f"BEIR dataset {root}: {entry} is not a directory")
    if not re.fullmatch(r"[\w.-]{1,64}", split) or split.startswith("."):
        raise ConfigError(f"split {split!r} is not a split name: use letters, digits, - _ .")
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.exists():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise ConfigError(
            f"split {split!r} not found: {qrels_file} does not exist; "
            f"available splits: {', '.join(available) or '(none)'}"
        )
    reason = limits.not_a_file(qrels_file)
    if reason is not None:
        raise SourceError(f"qrels file {qrels_file} is {reason}")
    _check_size(qrels_file)
    _check_size(root / "queries.jsonl")
    return qrels_file


def load_beir(
    path: str | os.PathLike[str],
    *,
    split: str = "test",
    gains: Mapping[int, float] | str | None = None,
) -> BeirDataset:
    """Load the queries and qrels of one split of a BEIR-format dataset.

    Layout: ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl`` (``{"_id",
    "text"}``) and ``qrels/<split>.tsv`` (tab-separated, header ``query-id corpus-id score``).

    Args:
        path: The dataset directory.
        split: Which ``qrels/<split>.tsv`` to read.
        gains: How qrels scores become gains. ``None`` (default): the score is the gain
            (trec_eval semantics); a warning is issued when the directory has a preset, since
            raw codes can invert the meaning (Cranfield's 1 is its *best* grade). ``"raw"``: the
            same, without the warning. ``"auto"``: the preset for the directory name
            (:func:`gains_for_dataset`), else raw scores. A key of :data:`GAIN_PRESETS`: that
            preset. A mapping: ``int(score) -> gain``; every score in the file must be a key.

    Returns:
        The dataset, with only the queries that have judgments in this split.

    Raises:
        SourceError: The directory or one of its files is missing or malformed.
        ConfigError: The split does not exist (the error lists those that do), ``gains`` names
            no preset, or the gain table lacks a score found in the qrels.

    Example:
        >>> ds = load_beir("../shared/data/cranfield", gains="auto")  # doctest: +SKIP
        >>> len(ds.queries), ds.gains[1]  # doctest: +SKIP
        (225, 4.0)
    """
    root = Path(path)
    qrels_file = check_dataset(root, split=split)
    name = root.resolve().name
    table = _resolve_gains(gains, root=root, name=name)
    qrels = _read_qrels(qrels_file, table)
    queries = _read_queries(root / "queries.jsonl", wanted=qrels)
    return BeirDataset(
        name=name,
        corpus_path=root / "corpus.jsonl",
        split=split,
        queries=queries,
        qrels=qrels,
        gains=table,
    )


def _resolve_gains(
    gains: Mapping[int, float] | str | None, *, root: Path, name: str
) -> Mapping[int, float] | None:
    if isinstance(gains, Mapping):
        return MappingProxyType(dict(gains))
    preset = gains_for_dataset(name)
    if gains is None:
        if preset is not None:
            warnings.warn(
                f"{root} has a gain preset ({name!r}) but gains=None uses raw qrels scores as "
                "gains; pass gains='auto' to apply the preset or gains='raw' to silence this",
                UserWarning,
                stacklevel=3,
            )
        return None
    if gains == "raw":
        return None
    if gains == "auto":
        return preset
    if gains in GAIN_PRESETS:
        return GAIN_PRESETS[gains]
    valid = ", ".join(["'auto'", "'raw'", *(repr(k) for k in GAIN_PRESETS)])
    raise ConfigError(f"unknown gains {gains!r}; use one of: {valid}, or a code-to-gain table")


def _read_qrels(file: Path, table: Mapping[int, float] | None) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    for lineno, line in _lines(file):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 3:
            parts = line.split()
        if len(parts) != 3:
            raise SourceError(
                f"{file}:{lineno}: expected 'query-id corpus-id score', got {line.strip()!r:.80}"
            )
        qid, doc_id, raw = parts
        try:
            score = float(raw)
        except ValueError:
            if lineno == 1:  # the header line
                continue
            raise SourceError(f"{file}:{lineno}: score {raw!r:.40} is not a number") from None
        if not math.isfinite(score):
            raise SourceError(f"{file}:{lineno}: score {raw!r:.40} is not a finite number")
        gain = score if table is None else _apply_gain(table, score, file, lineno)
        judged = qrels.setdefault(qid, {})
        if judged.get(doc_id, gain) != gain:
            raise SourceError(
                f"{file}:{lineno}: ({qid}, {doc_id}) is judged twice with different scores"
            )
        judged[doc_id] = gain
    return qrels


def _apply_gain(table: Mapping[int, float], score: float, file: Path, lineno: int) -> float:
    code = int(score) if score.is_integer() else None
    if code is None or code not in table:
        raise ConfigError(
            f"{file}:{lineno}: score {score:g} has no entry in the gain table "
            f"(keys: {sorted(table)}); add it or pass gains='raw'"
        )
    return float(table[code])


def _read_queries(file: Path, *, wanted: Mapping[str, object]) -> dict[str, str]:
    queries: dict[str, str] = {}
    for lineno, obj in _read_jsonl(file):
        qid, text = _doc_id(obj, file, lineno), obj.get("text")
        if qid in wanted:
            if not isinstance(text, str):
                raise SourceError(f"{file}:{lineno}: query {qid!r} has no string 'text'")
            queries[qid] = text
    missing = [q for q in wanted if q not in queries]
    if missing:
        raise SourceError(
            f"{len(missing)} judged queries are missing from {file}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return {qid: queries[qid] for qid in wanted}


# -- runs -------------------------------------------------------------------------------------


def run_from_scores(
    scores: Mapping[str, Mapping[str, float]], *, k: int | None = None
) -> dict[str, list[str]]:
    """Turn ``query id -> doc id -> score`` into a ranked :data:`Run`, best first.

    Ties are broken by doc id, descending, as trec_eval does, so both rank the same.

    Args:
        scores: query id -> doc id -> score (higher is better).
        k: Keep only the top k documents per query; ``None`` keeps all.

    Returns:
        query id -> doc ids, best first.

    Example:
        >>> run_from_scores({"q1": {"a": 0.2, "b": 0.9, "c": 0.2}})
        {'q1': ['b', 'c', 'a']}
    """
    if k is not None:
        _check_k(k)
    run: dict[str, list[str]] = {}
    for qid, by_doc in scores.items():
        ranked = sorted(by_doc.items(), key=lambda item: (item[1], item[0]), reverse=True)
        run[qid] = [doc_id for doc_id, _ in ranked[:k]]
    return run


def run_to_scores(run: Run) -> dict[str, dict[str, float]]:
    """Turn a ranked :data:`Run` into strictly decreasing scores (``n, n-1, ..., 1``).

    Useful for tools that want scores (``pytrec_eval``, TREC run files); no ties are introduced.

    Example:
        >>> run_to_scores({"q1": ["b", "a"]})
        {'q1': {'b': 2.0, 'a': 1.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for qid in run:
        ranking = _ranking(run, qid)
        out[qid] = {doc_id: float(len(ranking) - i) for i, doc_id in enumerate(ranking)}
    return out


def doc_level_ranking(chunk_results: Iterable[tuple[str, float | None]]) -> list[str]:
    """Turn ranked chunk hits into a document ranking: each document at its best chunk's rank.

    The hits are taken in the order given (best first, as a retriever or reranker returns them);
    scores are not re-sorted. Later chunks of an already ranked document are dropped.

    Args:
        chunk_results: ``(doc_id, score)`` per chunk hit, best first.

    Returns:
        Doc ids, best first, each once.

    Example:
        >>> doc_level_ranking([("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.5)])
        ['a', 'b', 'c']
    """
    return list(dict.fromkeys(doc_id for doc_id, _ in chunk_results))


# -- metrics ----------------------------------------------------------------------------------


def ndcg_at_k(ranking: Sequence[str], judgments: Mapping[str, float], *, k: int = 10) -> float:
    """nDCG@k of one ranking, as trec_eval's ``ndcg_cut_k``.

    Args:
        ranking: Doc ids, best first, each once.
        judgments: doc id -> gain for this query (``<= 0`` or absent: not relevant).
        k: Cutoff.

    Returns:
        A value in [0, 1]; 0 when the query has no positive judgment.

    Example:
        >>> round(ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, k=10), 4)
        0.8597
    """
    _check_k(k)
    _check_ranking(ranking)
    dcg = sum(_gain(judgments, d) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((g for g in judgments.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], judgments: Mapping[str, float], *, k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the top k (0 if none).

    Example:
        >>> mrr_at_k(["x", "a"], {"a": 1}, k=10)
        0.5
    """
    _check_k(k)
    _check_ranking(ranking)
    for i, doc_id in enumerate(ranking[:k]):
        if _gain(judgments, doc_id) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking: Sequence[str], judgments: Mapping[str, float], *, k: int = 10) -> float:
    """Relevant documents in the top k over all relevant documents (0 if none are relevant).

    Example:
        >>> recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 2}, k=2)
        0.3333333333333333
    """
    _check_k(k)
    _check_ranking(ranking)
    num_rel = sum(1 for g in judgments.values() if g > 0)
    if num_rel == 0:
        return 0.0
    return sum(1 for d in ranking[:k] if _gain(judgments, d) > 0) / num_rel


_METRIC_FUNCS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k}


def evaluate_per_query(
    run: Run, qrels: Qrels, *, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
    """Score every evaluable query: query id -> metric name -> value.

    Queries are those of ``qrels`` with at least one positive judgment, in qrels order; a query
    absent from ``run`` scores 0. See the module docstring for how this compares to trec_eval.

    Args:
        run: query id -> doc ids, best first (see :func:`run_from_scores`).
        qrels: query id -> doc id -> gain.
        metrics: Names like ``"nDCG@10"``, ``"MRR@10"``, ``"Recall@100"`` (case-insensitive);
            results are keyed by the names as given.

    Raises:
        ConfigError: A metric name is unknown, or a ranking is not a list of unique doc ids.

    Example:
        >>> evaluate_per_query({"q1": ["x", "a"]}, {"q1": {"a": 1}}, metrics=("MRR@10",))
        {'q1': {'MRR@10': 0.5}}
    """
    parsed = [(name, *_parse_metric(name)) for name in metrics]
    empty: Sequence[str] = ()
    scores: dict[str, dict[str, float]] = {}
    for qid, judgments in qrels.items():
        if not any(g > 0 for g in judgments.values()):
            continue
        ranking = _ranking(run, qid) if qid in run else empty
        scores[qid] = {name: func(ranking, judgments, k=k) for name, func, k in parsed}
    return scores


def evaluate(
    run: Run, qrels: Qrels, *, metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """Mean of each metric over the evaluable queries (see :func:`evaluate_per_query`).

    Raises:
        ConfigError: No query in ``qrels`` has a positive judgment, or as
            :func:`evaluate_per_query`.

    Example:
        >>> evaluate({"q1": ["a"]}, {"q1": {"a": 1}, "q2": {"b": 1}}, metrics=("Recall@10",))
        {'Recall@10': 0.5}
    """
    per_query = evaluate_per_query(run, qrels, metrics=metrics)
    if not per_query:
        raise ConfigError(
            f"none of the {len(qrels)} queries in qrels has a positive judgment; "
            "there is nothing to evaluate"
        )
    n = len(per_query)
    return {name: math.fsum(s[name] for s in per_query.values()) / n for name in metrics}


def latency_percentiles(samples_ms: Iterable[float]) -> dict[str, float]:
    """Median and 95th percentile of latency samples (linear interpolation, numpy's default).

    Args:
        samples_ms: Latencies in milliseconds.

    Returns:
        ``{"p50": ..., "p95": ...}`` in milliseconds.

    Raises:
        ConfigError: There are no samples, or one is negative or not finite.

    Example:
        >>> latency_percentiles([10.0, 20.0, 30.0, 40.0, 50.0])
        {'p50': 30.0, 'p95': 48.0}
    """
    values = np.asarray(list(samples_ms), dtype=float)
    if values.size == 0:
        raise ConfigError("latency_percentiles needs at least one sample, but got none")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ConfigError("latency samples must be finite and >= 0 milliseconds")
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": float(p50), "p95": float(p95)}


# -- helpers ----------------------------------------------------------------------------------


def _gain(judgments: Mapping[str, float], doc_id: str) -> float:
    gain = judgments.get(doc_id, 0.0)
    return gain if gain > 0 else 0.0


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ConfigError(f"k must be a positive integer, but got {k!r}")


def _parse_metric(name: str) -> tuple[Callable[..., float], int]:
    match = _METRIC_RE.match(name.strip())
    if match is None:
        raise ConfigError(
            f"unknown metric {name!r}; use nDCG@k, MRR@k or Recall@k with k > 0, e.g. 'nDCG@10'"
        )
    return _METRIC_FUNCS[match.group(1).lower()], int(match.group(2))


def _ranking(run: Run, qid: str) -> Sequence[str]:
    ranking = run[qid]
    if isinstance(ranking, Mapping):
        raise ConfigError(
            f"run[{qid!r}] maps doc ids to scores; a run is query id -> ranked "
            "doc ids: convert it with run_from_scores(run)"
        )
    return ranking


def _check_ranking(ranking: Sequence[str]) -> None:
    if isinstance(ranking, (str, Mapping)):
        raise ConfigError(f"a ranking is a sequence of doc ids, best first; got {ranking!r:.60}")
    if len(set(ranking)) == len(ranking):
        return
    seen: set[str] = set()
    for doc_id in ranking:
        if doc_id in seen:
            raise ConfigError(
                f"doc id {doc_id!r} appears twice in a ranking; rank documents "
                "once (doc_level_ranking() dedupes chunk hits)"
            )
        seen.add(doc_id)
