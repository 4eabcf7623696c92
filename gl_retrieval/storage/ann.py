"""Optional approximate nearest-neighbour search for :class:`EmbeddedVectorStore` (hnswlib).

The graph stores *labels*; ``label_rows`` maps each label to a row of the store (-1 once the row
is deleted), so rows can be deleted (``mark_deleted``) and appended (``add_items``) without a
rebuild. Rows appended after the last sync are not in the graph; the store searches them exactly.
Compared with FAISS and usearch on the same data (see ``docs/scaling.md``), hnswlib built
fastest and had the best recall at equal ``ef``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gl_retrieval.errors import MissingDependencyError

__all__ = ["HnswGraph"]


def _hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError as e:
        raise MissingDependencyError(
            "EmbeddedVectorStore(ann='hnsw') needs hnswlib: pip install 'gl-retrieval[ann]'"
        ) from e
    return hnswlib


class HnswGraph:
    """An hnswlib graph over some rows of the store."""

    def __init__(self, index: Any, *, label_rows: np.ndarray, covered: int, deleted: int) -> None:
        self.index = index
        self.label_rows = label_rows
        self.covered = covered  # rows [0, covered) were offered to the graph
        self.deleted = deleted  # labels marked deleted

    @classmethod
    def build(
        cls,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        *,
        dim: int,
        capacity: int,
        covered: int,
        space: str,
        m: int,
        ef_construction: int,
    ) -> HnswGraph:
        """Build a graph from ``(rows, vectors)`` chunks of the live rows below ``covered``."""
        index = _hnswlib().Index(space=space, dim=dim)
        index.init_index(max_elements=max(capacity, 1), ef_construction=ef_construction, M=m)
        graph = cls(index, label_rows=np.zeros(0, np.int64), covered=covered, deleted=0)
        for rows, vectors in chunks:
            graph._add(rows, vectors)
        return graph

    @property
    def live(self) -> int:
        """Number of searchable labels."""
        return len(self.label_rows) - self.deleted

    def _add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if not len(rows):
            return
        start = len(self.label_rows)
        need = start + len(rows)
        if need > self.index.get_max_elements():
            self.index.resize_index(max(need, 2 * self.index.get_max_elements()))
        self.index.add_items(vectors, np.arange(start, need))
        self.label_rows = np.concatenate([self.label_rows, rows.astype(np.int64)])

    def extend(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Add rows appended to the store since the graph was built (the caller moves
        :attr:`covered`)."""
        self._add(rows, vectors)

    def delete_rows(self, dead: np.ndarray) -> None:
        """Mark the labels of rows that were deleted in the store (``dead`` is a row mask)."""
        rows = self.label_rows
        hit = np.flatnonzero(
            (rows >= 0) & (rows < len(dead)) & dead[np.clip(rows, 0, len(dead) - 1)]
        )
        for label in hit:
            self.index.mark_deleted(int(label))
        self.label_rows[hit] = -1
        self.deleted += len(hit)

    def search(self, query: np.ndarray, *, k: int, ef: int) -> np.ndarray:
        """Rows of (about) the ``k`` nearest labels; fewer if the graph has fewer."""
        k = min(k, self.live)
        if k <= 0:
            return np.zeros(0, np.int64)
        self.index.set_ef(max(ef, k))
        try:
            labels, _ = self.index.knn_query(query[None, :], k=k, num_threads=1)
        except RuntimeError:  # hnswlib could not collect k results; the caller falls back
            return np.zeros(0, np.int64)
        rows = self.label_rows[labels[0].astype(np.int64)]
        return rows[rows >= 0]

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

    @classmethod
    def load(
        cls, path: Path, *, dim: int, space: str, label_rows: np.ndarray, covered: int
    ) -> HnswGraph:
        """Read a graph written by :meth:`save`."""
        index = _hnswlib().Index(space=space, dim=dim)
        index.load_index(str(path))
        deleted = int((label_rows < 0).sum())
        return cls(index, label_rows=label_rows, covered=covered, deleted=deleted)
