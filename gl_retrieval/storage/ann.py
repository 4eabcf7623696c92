"""Optional approximate nearest-neighbour search for :class:`EmbeddedVectorStore` (hnswlib).

The graph stores *labels*; ``label_rows`` maps each label to a row of the store (-1 once the row
is deleted), so rows can be deleted (``mark_deleted``) and appended (``add_items``) without a
rebuild. Rows appended since the last sync are not in the graph; they are scored exactly.
Compared with FAISS (HNSW, IVF) and usearch on the same data (see ``docs/scaling.md``), hnswlib
built fastest and had the best recall at equal ``ef``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from gl_retrieval.errors import MissingDependencyError
from gl_retrieval.storage._matrix import CHUNK, VectorRows

__all__ = ["HnswGraph"]

logger = logging.getLogger(__name__)


def _hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError as e:
        raise MissingDependencyError(
            "EmbeddedVectorStore(ann='hnsw') needs hnswlib: pip install 'gl-retrieval[ann]'"
        ) from e
    return hnswlib


class HnswGraph:
    """An hnswlib graph over the live rows ``[0, covered)`` of a :class:`VectorRows`."""

    def __init__(self, index: Any, *, label_rows: np.ndarray, covered: int) -> None:
        self.index = index
        self.label_rows = label_rows
        self.covered = covered  # rows below this were offered to the graph
        self.deleted = int((label_rows < 0).sum())  # labels marked deleted

    @classmethod
    def build(cls, vectors: VectorRows, *, space: str, m: int, ef_construction: int) -> HnswGraph:
        """Build a graph over every live row (minutes at a million rows)."""
        logger.info("building an HNSW graph over %d rows", vectors.n_live)
        index = _hnswlib().Index(space=space, dim=vectors.dim)
        index.init_index(max_elements=max(vectors.n_live, 1), ef_construction=ef_construction, M=m)
        graph = cls(index, label_rows=np.zeros(0, np.int64), covered=vectors.n)
        graph._add(vectors, np.flatnonzero(vectors.live))
        return graph

    @classmethod
    def load(
        cls, path: Path, *, dim: int, space: str, label_rows: np.ndarray, covered: int
    ) -> HnswGraph:
        """Read a graph written by :meth:`save` (persist syncs it, so it covers every row of
        the loaded store: pass the row count as ``covered``)."""
        index = _hnswlib().Index(space=space, dim=dim)
        index.load_index(str(path))
        return cls(index, label_rows=label_rows, covered=covered)

    @property
    def live(self) -> int:
        """Number of searchable labels."""
        return len(self.label_rows) - self.deleted

    @property
    def stale(self) -> bool:
        """Over a quarter of the labels are deleted: rebuild when convenient."""
        return self.deleted > len(self.label_rows) // 4

    def _add(self, vectors: VectorRows, rows: np.ndarray) -> None:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            first, end = len(self.label_rows), len(self.label_rows) + len(chunk)
            if end > self.index.get_max_elements():
                self.index.resize_index(max(end, 2 * self.index.get_max_elements()))
            self.index.add_items(next(vectors.vectors_of(chunk)), np.arange(first, end))
            self.label_rows = np.concatenate([self.label_rows, chunk.astype(np.int64)])

    def sync(self, vectors: VectorRows, *, deletes: bool, appends: bool) -> None:
        """Mark the labels of dead rows deleted and/or add the rows appended since."""
        if deletes:
            rows = self.label_rows
            dead = (rows >= 0) & ~vectors.live[np.clip(rows, 0, max(vectors.n - 1, 0))]
            for label in np.flatnonzero(dead):
                self.index.mark_deleted(int(label))
            self.label_rows[dead] = -1
            self.deleted += int(dead.sum())
        if appends and vectors.n > self.covered:
            new = np.arange(self.covered, vectors.n)
            self._add(vectors, new[vectors.live[new]])
            self.covered = vectors.n

    def candidates(
        self, q: np.ndarray, *, k: int, ef: int, allowed: np.ndarray, n_allowed: int
    ) -> np.ndarray:
        """Allowed rows near ``q``: graph neighbours, oversampled by the filter's selectivity,
        plus every allowed row appended since the last sync (sorted, unique)."""
        want = min(math.ceil(2 * k * max(self.live, 1) / n_allowed), self.live)
        rows = np.zeros(0, np.int64)
        if want > 0:
            self.index.set_ef(max(ef, want))
            try:
                labels, _ = self.index.knn_query(q[None, :], k=want, num_threads=1)
                rows = self.label_rows[labels[0].astype(np.int64)]
            except RuntimeError:  # hnswlib found fewer than `want`; the caller falls back
                pass
        rows = np.concatenate([rows[rows >= 0], np.arange(self.covered, len(allowed))])
        return np.unique(rows[allowed[rows]])

    def labels_after_compaction(self, kept_rows: np.ndarray, *, n: int) -> np.ndarray:
        """``label_rows`` renumbered for a store that keeps only ``kept_rows`` (ascending)."""
        new_row = np.full(n, -1, np.int64)
        new_row[kept_rows] = np.arange(len(kept_rows))
        rows = self.label_rows
        return np.where(rows >= 0, new_row[np.clip(rows, 0, max(n - 1, 0))], -1)

    def save(self, path: Path) -> int:
        """Write the graph crash-safely (temp name, fsync, rename); returns its size in bytes."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.index.save_index(str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            size = tmp.stat().st_size
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size
