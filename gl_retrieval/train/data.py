"""Training and dev data for fine-tuning: loaded, resolved through the index, validated.

Two layouts are accepted:

* **BEIR**: a directory with ``queries.jsonl`` and ``qrels/<split>.tsv`` (``train`` unless the
  path names the ``.tsv`` file itself). Positives are the judged documents (score > 0), looked
  up by id in the config's index.
* **jsonl triples**: one ``{"query": ..., "positive": ..., "negative": ...}`` object per line.
  ``positive`` / ``negative`` are document ids of the index or texts; ``negative`` is optional
  and may be a list. A value without any whitespace is read as an id, so a typo'd id is refused
  rather than silently trained on as a one-word "text". ``{"id": "..."}`` names an id explicitly.

Refused with :class:`~gl_retrieval.errors.TrainingDataError`: ids that are not in the index,
empty queries or positives, duplicate (query, positive) pairs, a dev set that shares queries with
the training set, and any ``test`` split (fine-tuning never looks at test data).

Example:
    >>> from gl_retrieval.train.data import split_dev
    >>> train, dev, note = split_dev(data, dev_size=100, seed=0)  # doctest: +SKIP
    >>> note  # doctest: +SKIP
    'held out 100 of 809 training queries as dev (seed 0)'
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gl_retrieval.errors import TrainingDataError
from gl_retrieval.train.corpus import Corpus

__all__ = ["TrainingData", "TrainingPair", "check_data_path", "load_training_data", "split_dev"]

_TEST_SPLITS = frozenset({"test", "tests"})


@dataclass(frozen=True)
class TrainingPair:
    """One (query, positive[, negatives]) example; ids are ``None`` for texts outside the index."""

    qid: str
    query: str
    positive: str
    positive_id: str | None = None
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingData:
    """Pairs plus the judgments dev evaluation scores against (query id -> doc id -> gain)."""

    pairs: tuple[TrainingPair, ...]
    source: str
    sha256: str
    qrels: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def queries(self) -> dict[str, str]:
        """Query id -> text, in first-seen order."""
        return {p.qid: p.query for p in self.pairs}

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, qids: Iterable[str], *, source: str) -> TrainingData:
        keep = set(qids)
        pairs = tuple(p for p in self.pairs if p.qid in keep)
        qrels = {q: dict(j) for q, j in self.qrels.items() if q in keep}
        return TrainingData(pairs=pairs, source=source, sha256=self.sha256, qrels=qrels)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "queries": len(self.queries),
            "pairs": len(self.pairs),
            "with_negatives": sum(1 for p in self.pairs if p.negatives),
        }


def _sha256(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _qid(text: str) -> str:
    return "q-" + hashlib.sha1(text.strip().encode()).hexdigest()[:12]


def load_training_data(path: str | os.PathLike[str], corpus: Corpus) -> TrainingData:
    """Load BEIR-layout or jsonl training data and resolve every id through ``corpus``.

    Args:
        path: A BEIR directory (``qrels/train.tsv``), a ``qrels/<split>.tsv`` file inside one, or
            a ``.jsonl`` of ``{query, positive, negative?}`` objects.
        corpus: The config's index, read back (see :func:`gl_retrieval.train.corpus.load_corpus`).

    Raises:
        TrainingDataError: the data is missing, malformed, names ids that are not in the index,
            holds empty or duplicate pairs, or is a test split.
    """
    p = check_data_path(path)
    if p.is_dir() or p.suffix == ".tsv":
        return _load_beir(p, corpus)
    return _load_jsonl(p, corpus)


def check_data_path(path: str | os.PathLike[str]) -> Path:
    """The data path, checked for existence and layout without reading it (no index needed).

    ``finetune`` calls this first, so a mistyped ``--train`` fails before the index loads.

    Raises:
        TrainingDataError: the path does not exist, or is neither a directory, a ``.tsv`` nor a
            ``.jsonl``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise TrainingDataError(f"training data {p} does not exist")
    if not (p.is_dir() or p.suffix in (".tsv", ".jsonl")):
        raise TrainingDataError(
            f"{p}: expected a BEIR directory (queries.jsonl + qrels/train.tsv), a qrels .tsv "
            "file, or a .jsonl of {query, positive, negative?} lines"
        )
    return p


def _unknown_ids(missing: list[tuple[str, str]], where: Path, corpus: Corpus) -> None:
    if missing:
        shown = ", ".join(f"{doc!r} ({at})" for doc, at in missing[:3])
        raise TrainingDataError(
            f"{where}: {len(missing)} document id(s) are not in the index ({len(corpus.doc_ids)} "
            f"documents), e.g. {shown}; index those documents first, or fix the ids"
        )


def _load_beir(p: Path, corpus: Corpus) -> TrainingData:
    if p.is_dir():
        root, qrels_file = p, p / "qrels" / "train.tsv"
    else:
        qrels_file, root = p, p.parent.parent
    split = qrels_file.stem
    if split.lower() in _TEST_SPLITS:
        raise TrainingDataError(
            f"{qrels_file}: refusing a test split; fine-tune and select on train/dev splits only "
            "and keep the test split for the final `gl-retrieval eval`"
        )
    queries_file = root / "queries.jsonl"
    for f in (qrels_file, queries_file):
        if not f.exists():
            raise TrainingDataError(
                f"{f} not found: a BEIR dataset needs queries.jsonl and qrels/{split}.tsv"
            )
    qrels: dict[str, dict[str, float]] = {}
    with qrels_file.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (lineno == 1 and row[0] in ("query-id", "query_id", "qid")):
                continue
            if len(row) < 3:
                raise TrainingDataError(
                    f"{qrels_file}:{lineno}: expected query-id, corpus-id, score"
                )
            try:
                score = float(row[2])
            except ValueError:
                raise TrainingDataError(
                    f"{qrels_file}:{lineno}: score {row[2]!r} is not a number"
                ) from None
            qid, doc = row[0].strip(), row[1].strip()
            if doc in qrels.get(qid, {}):
                raise TrainingDataError(
                    f"{qrels_file}:{lineno}: duplicate pair (query {qid!r}, document {doc!r})"
                )
            qrels.setdefault(qid, {})[doc] = score
    texts: dict[str, str] = {}
    with queries_file.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise TrainingDataError(f"{queries_file}:{lineno}: not JSON ({e})") from None
            qid = str(obj.get("_id", obj.get("id", "")))
            if qid in qrels:
                texts[qid] = str(obj.get("text", ""))
    missing: list[tuple[str, str]] = []
    pairs: list[TrainingPair] = []
    for qid, judged in qrels.items():
        if qid not in texts:
            raise TrainingDataError(f"{qrels_file}: query {qid!r} is not in {queries_file}")
        if not texts[qid].strip():
            raise TrainingDataError(f"{queries_file}: query {qid!r} is empty")
        for doc, score in judged.items():
            if score <= 0:
                continue
            if not corpus.has_doc(doc):
                missing.append((doc, f"query {qid}"))
                continue
            pairs.append(TrainingPair(qid, texts[qid], corpus.doc_text(doc), doc))
    _unknown_ids(missing, qrels_file, corpus)
    if not pairs:
        raise TrainingDataError(f"{qrels_file}: no judgment with a score > 0; nothing to train on")
    return TrainingData(
        pairs=tuple(pairs),
        source=str(qrels_file),
        sha256=_sha256([qrels_file, queries_file]),
        qrels={q: {d: s for d, s in j.items() if s > 0} for q, j in qrels.items()},
    )


def _resolve(value: Any, corpus: Corpus, *, what: str, at: str) -> tuple[str, str | None]:
    """(text, doc id or None) of a jsonl positive / negative; raises on an unknown id."""
    if isinstance(value, Mapping) and set(value) == {"id"}:
        doc = str(value["id"])
        if not corpus.has_doc(doc):
            raise _Unknown(doc)
        return corpus.doc_text(doc), doc
    if not isinstance(value, str):
        raise TrainingDataError(f"{at}: {what} must be a text or a document id, not {value!r}")
    text = value.strip()
    if not text:
        raise TrainingDataError(f"{at}: {what} is empty")
    if corpus.has_doc(text):
        return corpus.doc_text(text), text
    if not any(ch.isspace() for ch in text):
        raise _Unknown(text)
    return text, corpus.doc_of_text.get(text)


class _Unknown(Exception):
    def __init__(self, doc: str) -> None:
        self.doc = doc


def _load_jsonl(p: Path, corpus: Corpus) -> TrainingData:
    pairs: list[TrainingPair] = []
    seen: dict[tuple[str, str], int] = {}
    missing: list[tuple[str, str]] = []
    qrels: dict[str, dict[str, float]] = {}
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            at = f"{p}:{lineno}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise TrainingDataError(f"{at}: not JSON ({e})") from None
            if not isinstance(obj, dict) or "query" not in obj or "positive" not in obj:
                raise TrainingDataError(f"{at}: expected an object with 'query' and 'positive'")
            extra = set(obj) - {"query", "positive", "negative", "negatives", "qid"}
            if extra:
                raise TrainingDataError(
                    f"{at}: unknown key(s) {sorted(extra)}; use query, positive, negative"
                )
            query = obj["query"]
            if not isinstance(query, str) or not query.strip():
                raise TrainingDataError(f"{at}: query is empty")
            qid = str(obj.get("qid") or _qid(query))
            try:
                positive, pos_id = _resolve(obj["positive"], corpus, what="positive", at=at)
                raw = obj.get("negative", obj.get("negatives"))
                raw_list = [] if raw is None else raw if isinstance(raw, list) else [raw]
                negatives = tuple(_resolve(n, corpus, what="negative", at=at)[0] for n in raw_list)
            except _Unknown as e:
                missing.append((e.doc, f"line {lineno}"))
                continue
            key = (query.strip(), positive.strip())
            if key in seen:
                raise TrainingDataError(
                    f"{at}: duplicate pair (same query and positive as line {seen[key]})"
                )
            seen[key] = lineno
            if positive.strip() in (n.strip() for n in negatives):
                raise TrainingDataError(f"{at}: the negative is the positive")
            pairs.append(TrainingPair(qid, query.strip(), positive, pos_id, negatives))
            if pos_id is not None:
                qrels.setdefault(qid, {})[pos_id] = 1.0
    _unknown_ids(missing, p, corpus)
    if not pairs:
        raise TrainingDataError(f"{p}: no (query, positive) pairs; nothing to train on")
    return TrainingData(pairs=tuple(pairs), source=str(p), sha256=_sha256([p]), qrels=qrels)


def check_disjoint(train: TrainingData, dev: TrainingData) -> None:
    """Refuse a dev set that shares a query (by id or by text) with the training set."""
    train_q = train.queries
    texts = {t.strip().lower() for t in train_q.values()}
    shared = [q for q, t in dev.queries.items() if q in train_q or t.strip().lower() in texts]
    if shared:
        raise TrainingDataError(
            f"the dev set {dev.source} shares {len(shared)} of its {len(dev.queries)} queries "
            f"with the training set {train.source} (e.g. {shared[0]!r}); dev metrics would "
            "reward memorisation: drop them from one side, or omit --dev to split one off"
        )
    if not dev.qrels:
        raise TrainingDataError(
            f"the dev set {dev.source} has no positive that is a document of the index, so "
            "retrieval on it cannot be scored; give positives as document ids"
        )


def split_dev(
    data: TrainingData, *, dev_size: int | None = None, seed: int = 0
) -> tuple[TrainingData, TrainingData, str]:
    """Hold out a seeded random sample of queries (all their pairs) as the dev set.

    Only queries whose positives are documents of the index can be scored, so only those are
    drawn. Default size: 10% of the queries, at least 1, at most 100.

    Returns:
        ``(train, dev, note)``; the note says how many were held out.

    Raises:
        TrainingDataError: too few queries to split.
    """
    scorable = [q for q in data.queries if data.qrels.get(q)]
    n_all = len(data.queries)
    size = dev_size if dev_size is not None else max(1, min(100, round(0.1 * n_all)))
    if size <= 0:
        raise TrainingDataError(f"dev_size must be > 0, but got {size}")
    if size >= n_all or size > len(scorable):
        raise TrainingDataError(
            f"cannot hold out {size} dev queries from {n_all} training queries "
            f"({len(scorable)} with positives in the index); pass a smaller dev size or a --dev set"
        )
    dev_q = random.Random(seed).sample(sorted(scorable), size)
    dev = data.subset(dev_q, source=f"{data.source} (held out, seed {seed})")
    train = data.subset([q for q in data.queries if q not in set(dev_q)], source=data.source)
    note = f"held out {size} of {n_all} training queries as dev (seed {seed})"
    return train, dev, note
