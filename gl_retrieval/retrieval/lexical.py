"""The lexical (BM25) side of an index: built from the chunk texts, persisted with the index.

:class:`LexicalIndex` wraps ``bm25s`` with a fixed, recorded analyser (lowercase, word tokens of
two or more characters, Lucene's English stopwords, Snowball English stemming via PyStemmer).
It is rebuilt from every stored chunk whenever an ``index`` run commits a change
(:func:`attach_lexical`), and written into the generation directory beside the vector store:
``bm25/`` holds bm25s's own files (``.npy`` arrays and JSON, saved with ``allow_pickle=False``)
plus ``gl_bm25.json`` (the analyser, the BM25 parameters and the chunk ids in row order). No
pickle anywhere. :func:`lexical_index` loads it with the index, or rebuilds it in memory when an
index was committed without one (or by another analyser version).

:func:`iter_chunks` is the one place that reads chunks back from an index, so it works whether
the vector store keeps the text (``stores_text=True``, ``get_nodes()``) or the docstore does.

Example:
    >>> lx = LexicalIndex.build([("a#0", "BM25 ranks by term frequency"), ("b#0", "dense vectors")])
    >>> [(node_id, round(score, 3)) for node_id, score in lx.top_k("ranking terms", k=5)]
    [('a#0', 0.482)]
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from llama_index.core.schema import BaseNode, MetadataMode

from gl_retrieval._deps import require
from gl_retrieval.errors import IndexDamagedError, StorageError
from gl_retrieval.storage import IndexHandle
from gl_retrieval.storage.integrity import read_json

__all__ = [
    "ANALYZER",
    "LexicalIndex",
    "analyze",
    "attach_lexical",
    "check_lexical",
    "chunk_ids",
    "chunk_metadata",
    "iter_chunks",
    "lexical_index",
]

log = logging.getLogger(__name__)

LEXICAL_DIR: Final = "bm25"
META_FILE: Final = "gl_bm25.json"
FORMAT: Final = 1
#: The analyser, recorded with every persisted BM25 side; a different one forces a rebuild.
ANALYZER: Final[dict[str, Any]] = {
    "pattern": r"(?u)\b\w\w+\b",
    "lowercase": True,
    "stopwords": "lucene-en",
    "stemmer": "snowball-english",
}
#: BM25 parameters (bm25s's Lucene variant with its defaults).
BM25_PARAMS: Final[dict[str, Any]] = {"method": "lucene", "k1": 1.5, "b": 0.75}

_TOKEN = re.compile(ANALYZER["pattern"])
_state_lock = threading.Lock()
_analyzer_lock = threading.Lock()
_stem_cache: dict[str, str] = {}
_stemmer: Any = None
_stopwords: frozenset[str] | None = None


# -- analysis ---------------------------------------------------------------------------------


def _tools() -> tuple[Any, frozenset[str]]:
    global _stemmer, _stopwords
    if _stemmer is None:
        with _analyzer_lock:
            if _stemmer is None:
                stemmer_mod = require("Stemmer", package="PyStemmer")
                _stopwords = frozenset(require("bm25s.stopwords", package="bm25s").STOPWORDS_EN)
                _stemmer = stemmer_mod.Stemmer("english")
    return _stemmer, _stopwords  # type: ignore[return-value]


def analyze(text: str) -> list[str]:
    """The BM25 terms of ``text``: lowercased, stopwords dropped, stemmed.

    Example:
        >>> analyze("The Rankings of documents")
        ['rank', 'document']
    """
    stemmer, stopwords = _tools()
    words = [w for w in _TOKEN.findall(text.lower()) if w not in stopwords]
    unknown = [w for w in set(words) if w not in _stem_cache]
    if unknown:
        with _analyzer_lock:  # PyStemmer objects are not thread-safe
            for w, s in zip(unknown, stemmer.stemWords(unknown), strict=True):
                _stem_cache[w] = s
    return [_stem_cache[w] for w in words]


# -- the index --------------------------------------------------------------------------------


#: Chunks per block while the BM25 matrix is built (bounds the temporary arrays).
_FIT_BLOCK = 16384


def _fit_lucene(bm25: Any, docs: list[np.ndarray], vocab: dict[str, int]) -> None:
    """Fill ``bm25`` (a ``bm25s.BM25`` with :data:`BM25_PARAMS`) from term ids, in numpy.

    The same matrix as ``bm25.index(list_of_token_lists)`` (Lucene's BM25: idf
    ``ln(1 + (N - df + 0.5) / (df + 0.5))``, term weight ``tf / (tf + k1 (1 - b + b dl / avgdl))``,
    a CSC matrix of documents x terms, the empty term last), without bm25s's per-token Python
    objects: its own build holds several of those per term of the corpus, which made the BM25
    rebuild the largest memory cost of indexing one big file (docs/hostile-inputs.md).
    ``docs`` is emptied as it is consumed.
    """
    k1, b = float(BM25_PARAMS["k1"]), float(BM25_PARAMS["b"])
    n_docs = len(docs)
    lengths = np.fromiter((len(d) for d in docs), np.int64, n_docs)
    avg_len = float(lengths.mean())
    vocab.setdefault("", len(vocab))  # bm25s's empty term: scores documents with no terms
    n_terms = len(vocab)
    # (term, doc, tf) for every distinct term of every document, a block of documents at a time.
    term_parts, doc_parts, tf_parts = [], [], []
    for start in range(0, n_docs, _FIT_BLOCK):
        block = docs[start : start + _FIT_BLOCK]
        docs[start : start + _FIT_BLOCK] = [None] * len(block)  # type: ignore[list-item]
        sizes = np.fromiter((len(d) for d in block), np.int64, len(block))
        if not sizes.sum():
            continue
        flat = np.concatenate(block).astype(np.int64)
        doc = np.repeat(np.arange(start, start + len(block), dtype=np.int64), sizes)
        keys, tf = np.unique(doc * n_terms + flat, return_counts=True)
        doc_parts.append((keys // n_terms).astype(np.int32))
        term_parts.append((keys % n_terms).astype(np.int32))
        tf_parts.append(tf.astype(np.float32))
    docs.clear()
    term = np.concatenate(term_parts) if term_parts else np.zeros(0, np.int32)
    doc = np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int32)
    tf = np.concatenate(tf_parts) if tf_parts else np.zeros(0, np.float32)
    del term_parts, doc_parts, tf_parts
    df = np.bincount(term, minlength=n_terms).astype(np.float32)
    idf = np.log(
        np.float32(1) + (np.float32(n_docs) - df + np.float32(0.5)) / (df + np.float32(0.5))
    )
    # In place where it can be: these arrays have one entry per (document, distinct term).
    weight = (k1 * (1 - b + b * lengths / avg_len)).astype(np.float32)[doc]
    weight += tf
    np.divide(tf, weight, out=tf)
    del weight
    tf *= idf[term]  # now the BM25 weight of every (document, term)
    order = np.argsort(term, kind="stable")  # by term, then (already) by document
    indptr = np.zeros(n_terms + 1, np.int64)
    np.cumsum(np.bincount(term, minlength=n_terms), out=indptr[1:])
    del term
    data = tf[order]
    del tf
    indices = doc[order]
    del doc, order
    bm25.scores = {
        "data": data,
        "indices": indices,
        "indptr": indptr,
        "num_docs": n_docs,
    }
    bm25.vocab_dict = vocab
    bm25.unique_token_ids_set = set(vocab.values())
    bm25.nonoccurrence_array = None


class LexicalIndex:
    """BM25 over a fixed list of chunks (``node_ids``, in row order)."""

    def __init__(self, node_ids: Sequence[str], bm25: Any) -> None:
        self.node_ids: list[str] = list(node_ids)
        self._bm25 = bm25
        self._row = {nid: i for i, nid in enumerate(self.node_ids)}

    def __len__(self) -> int:
        return len(self.node_ids)

    @classmethod
    def build(cls, chunks: Iterable[tuple[str, str]]) -> LexicalIndex:
        """Index ``(node_id, text)`` pairs.

        Example:
            >>> len(LexicalIndex.build([("a#0", "one text"), ("b#0", "another")]))
            2
        """
        bm25s = require("bm25s")
        ids: list[str] = []
        vocab: dict[str, int] = {}
        docs: list[np.ndarray] = []  # each chunk's term ids: 4 bytes a term
        for node_id, text in chunks:
            ids.append(node_id)
            terms = analyze(text)
            docs.append(
                np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), np.int32, len(terms))
            )
        bm25 = bm25s.BM25(**BM25_PARAMS)
        if ids:
            _fit_lucene(bm25, docs, vocab)
        return cls(ids, bm25)

    def row(self, node_id: str) -> int | None:
        """Row of ``node_id`` in :meth:`scores`, or None when it is not indexed."""
        return self._row.get(node_id)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query`` (row order of ``node_ids``)."""
        if not self.node_ids:
            return np.zeros(0, dtype=np.float32)
        ids = self._bm25.get_tokens_ids(analyze(query))
        if not ids:
            return np.zeros(len(self.node_ids), dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def top_k(
        self, query: str, *, k: int, mask: np.ndarray | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` best chunks with a positive score, best first; ``mask`` restricts the rows.

        Masking happens before the top ``k`` is taken, so a filter never starves the result.
        Ties are broken by row order, so results are deterministic.
        """
        scores = self.scores(query)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        positive = np.flatnonzero(scores > 0)
        if positive.size == 0:
            return []
        if positive.size > k:
            part = np.argpartition(-scores[positive], k - 1)[:k]
            positive = positive[part]
        order = positive[np.lexsort((positive, -scores[positive]))]
        return [(self.node_ids[i], float(scores[i])) for i in order]

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write into ``directory/bm25/`` (JSON and ``.npy`` arrays only, no pickle)."""
        out = Path(directory) / LEXICAL_DIR
        out.mkdir(parents=True, exist_ok=True)
        if self.node_ids:
            self._bm25.save(str(out), corpus=None, allow_pickle=False)
        meta = {
            "format": FORMAT,
            "analyzer": ANALYZER,
            "bm25": BM25_PARAMS,
            "node_ids": self.node_ids,
        }
        (out / META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex | None:
        """Load from ``directory/bm25/``; None when absent or built by another analyser.

        Raises:
            IndexDamagedError: a file of the BM25 side is unreadable (names it).
        """
        src = Path(directory) / LEXICAL_DIR
        if not (src / META_FILE).is_file():
            return None
        meta = read_json(src / META_FILE)
        if not isinstance(meta, dict) or not isinstance(meta.get("node_ids"), list):
            problem = "it is not a BM25 side description (no node_ids)"
            raise IndexDamagedError(
                f"{src / META_FILE} is damaged ({problem}); rebuild the index",
                path=str(src / META_FILE),
                problem=problem,
            )
        if (
            meta.get("format") != FORMAT
            or meta.get("analyzer") != ANALYZER
            or meta.get("bm25") != BM25_PARAMS
        ):
            return None
        bm25s = require("bm25s")
        node_ids = meta["node_ids"]
        if not node_ids:
            return cls([], bm25s.BM25(**BM25_PARAMS))
        try:
            bm25 = bm25s.BM25.load(str(src), load_corpus=False, mmap=False, allow_pickle=False)
        except Exception as e:  # bm25s reads .npy and JSON: damage surfaces as many types
            problem = f"bm25s cannot read it ({type(e).__name__}: {str(e)[:120]})"
            raise IndexDamagedError(
                f"{src} is damaged ({problem}); rebuild the index", path=str(src), problem=problem
            ) from None
        return cls(node_ids, bm25)


def check_lexical(directory: Path, node_ids: Sequence[str]) -> list[tuple[Path, str]]:
    """What a full verification finds wrong with the BM25 side of a generation directory."""
    try:
        lexical = LexicalIndex.load(directory)
    except IndexDamagedError as e:
        return [(Path(e.path), e.problem)]
    if lexical is None:
        return []
    if sorted(lexical.node_ids) != sorted(node_ids):
        path = Path(directory) / LEXICAL_DIR / META_FILE
        return [(path, "its chunk ids differ from the index's")]
    if lexical.node_ids:
        try:
            lexical.scores("verification probe")
        except Exception as e:
            path = Path(directory) / LEXICAL_DIR
            return [(path, f"scoring fails ({type(e).__name__}: {str(e)[:120]})")]
    return []


# -- reading chunks back from an index --------------------------------------------------------


def chunk_ids(handle: IndexHandle) -> list[str]:
    """Ids of every chunk in the index, in document order."""
    return [nid for rec in handle.documents.values() for nid in rec.nodes]


def iter_chunks(
    handle: IndexHandle, node_ids: Sequence[str] | None = None, *, batch: int = 1000
) -> Iterator[BaseNode]:
    """Yield the chunks (nodes with text and metadata) of ``handle``, in ``node_ids`` order.

    Reads from the vector store when it keeps the text (``stores_text``), else from the
    docstore, so it works across vector-store backends.

    Args:
        handle: A loaded (or freshly updated) index.
        node_ids: Which chunks; default all (:func:`chunk_ids`).
        batch: How many nodes to fetch per store call.
    """
    ids = chunk_ids(handle) if node_ids is None else list(node_ids)
    store = handle.vector_store
    from_vector_store = bool(getattr(store, "stores_text", False))
    for start in range(0, len(ids), batch):
        part = ids[start : start + batch]
        if from_vector_store:
            got = {n.node_id: n for n in store.get_nodes(node_ids=part)}
        else:
            got = {n.node_id: n for n in handle.storage_context.docstore.get_nodes(part)}
        for nid in part:
            node = got.get(nid)
            if node is None:
                raise StorageError(f"chunk {nid!r} is listed in the index but not stored")
            yield node


def chunk_metadata(handle: IndexHandle) -> dict[str, dict[str, Any]]:
    """node id -> metadata of every chunk, read once per loaded index and cached on it."""
    cached = handle.extras.get("gl_chunk_metadata")
    if cached is None:
        with _state_lock:
            cached = handle.extras.get("gl_chunk_metadata")
            if cached is None:
                cached = {n.node_id: dict(n.metadata) for n in iter_chunks(handle)}
                handle.extras["gl_chunk_metadata"] = cached
    return cached


def _build_from_handle(handle: IndexHandle) -> LexicalIndex:
    return LexicalIndex.build(
        (n.node_id, n.get_content(metadata_mode=MetadataMode.NONE)) for n in iter_chunks(handle)
    )


def attach_lexical(handle: IndexHandle) -> None:
    """Rebuild the BM25 side from all chunks of ``handle`` and persist it on the next commit.

    Pass it as ``on_handle`` to :func:`gl_retrieval.ingest.indexer.index_documents`: it runs
    only when an ``index`` run changed something (a no-change run commits nothing, costs nothing).
    """
    t0 = time.perf_counter()
    lexical = _build_from_handle(handle)
    log.info("BM25 side rebuilt over %d chunks in %.2fs", len(lexical), time.perf_counter() - t0)
    handle.extras["gl_lexical"] = lexical
    handle.extras.pop("gl_chunk_metadata", None)
    hooks = [h for h in handle.extras.get("persist_hooks", ()) if not _is_ours(h)]
    handle.extras["persist_hooks"] = [*hooks, _PersistBM25(lexical)]


class _PersistBM25:
    """The persist hook: writes the BM25 side into the new generation directory."""

    def __init__(self, lexical: LexicalIndex) -> None:
        self.lexical = lexical

    def __call__(self, directory: Path) -> None:
        self.lexical.save(Path(directory))


def _is_ours(hook: Any) -> bool:
    return isinstance(hook, _PersistBM25)


def lexical_index(handle: IndexHandle) -> LexicalIndex:
    """The BM25 side of a loaded index: from its generation directory, else built in memory.

    Cached on the handle, so it loads once per loaded index.
    """
    cached = handle.extras.get("gl_lexical")
    if cached is not None:
        return cached
    with _state_lock:
        cached = handle.extras.get("gl_lexical")
        if cached is not None:
            return cached
        expected = chunk_ids(handle)
        directory = handle.extras.get("dir")
        lexical = LexicalIndex.load(Path(directory)) if directory else None
        if lexical is not None and sorted(lexical.node_ids) != sorted(expected):
            lexical = None  # written by an older commit path; never trust a stale side
        if lexical is None:
            t0 = time.perf_counter()
            lexical = _build_from_handle(handle)
            log.warning(
                "the index at %s has no up-to-date BM25 side; built it in memory over %d chunks "
                "in %.1fs (the next `index` run that changes something persists it)",
                directory or "(not persisted)",
                len(lexical),
                time.perf_counter() - t0,
            )
        handle.extras["gl_lexical"] = lexical
        return lexical
