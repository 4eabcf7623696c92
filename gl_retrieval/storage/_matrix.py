"""The vectors of :class:`~gl_retrieval.storage.embedded.EmbeddedVectorStore` and their scoring.

Rows only ever get appended or marked dead, never rewritten: a loaded store's rows stay in the
read-only memory map (``base``) and new rows go to an in-memory buffer that doubles when full
(``tail``), so a reload reads nothing until a query touches the pages.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["CHUNK", "VectorRows", "top_k"]

CHUNK = 65536


class VectorRows:
    """Float32 row vectors with their L2 norms and a live mask."""

    def __init__(self, base: np.ndarray | None = None, norms: np.ndarray | None = None) -> None:
        self.dim: int | None = base.shape[1] if base is not None else None
        self._base = base
        self._nb = 0 if base is None else len(base)
        self._tail = np.zeros((0, self.dim or 0), np.float32)
        self.n = self._nb
        self._norms = norms if norms is not None else np.zeros(self.n, np.float32)
        self._live = np.ones(self.n, bool)
        self.n_live = self.n

    @property
    def live(self) -> np.ndarray:
        """Boolean mask of live rows (a view; do not modify)."""
        return self._live[: self.n]

    @property
    def norms(self) -> np.ndarray:
        """L2 norm of every row."""
        return self._norms[: self.n]

    def append(self, vectors: np.ndarray) -> int:
        """Append live rows; returns the first new row number."""
        start, end = self.n, self.n + len(vectors)
        self.dim = vectors.shape[1]
        if end - self._nb > len(self._tail):
            tail = np.zeros((max(end - self._nb, 2 * len(self._tail), 1024), self.dim), np.float32)
            if start > self._nb:
                tail[: start - self._nb] = self._tail[: start - self._nb]
            self._tail = tail
        if end > len(self._live):
            grow = max(end, 2 * len(self._live), 1024) - len(self._live)
            self._norms = np.concatenate([self._norms, np.zeros(grow, np.float32)])
            self._live = np.concatenate([self._live, np.zeros(grow, bool)])
        self._tail[start - self._nb : end - self._nb] = vectors
        self._norms[start:end] = np.linalg.norm(vectors, axis=1)
        self._live[start:end] = True
        self.n, self.n_live = end, self.n_live + len(vectors)
        return start

    def kill(self, row: int) -> bool:
        """Mark a row dead; False if it already was."""
        if not self._live[row]:
            return False
        self._live[row] = False
        self.n_live -= 1
        return True

    def vectors_of(self, rows: np.ndarray, *, size: int = CHUNK) -> Iterator[np.ndarray]:
        """Vectors of the ascending ``rows``, in chunks of at most ``size`` rows (copies: a
        writer passes a small ``size`` so that persisting never holds a second copy of the
        whole matrix)."""
        for i in range(0, len(rows), size):
            chunk = rows[i : i + size]
            split = int(np.searchsorted(chunk, self._nb))
            parts = [self._tail[chunk[split:] - self._nb]]
            if split:
                parts.insert(0, self._base[chunk[:split]])  # type: ignore[index]
            yield np.concatenate(parts) if len(parts) > 1 else parts[0]

    def scores(self, q: np.ndarray, rows: np.ndarray | None, *, cosine: bool) -> np.ndarray:
        """Inner product (or cosine) of ``q`` with the ascending ``rows`` (every row if None)."""
        if rows is None:
            parts = [self._tail[: self.n - self._nb] @ q]
            if self._nb:
                parts.insert(0, self._base @ q)  # type: ignore[operator]
            scores = np.concatenate(parts) if len(parts) > 1 else parts[0]
            norms = self.norms
        else:
            scores = np.concatenate([v @ q for v in self.vectors_of(rows)] or [np.zeros(0)])
            norms = self._norms[rows]
        scores = np.asarray(scores, dtype=np.float32)
        if cosine:
            denominator = norms * np.float32(np.linalg.norm(q))
            scores = np.divide(
                scores, denominator, out=np.zeros_like(scores), where=denominator > 0
            )
        return scores


def top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (row, score) pairs, best first; ties broken by row number."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        rows, scores = rows[part], scores[part]
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order]
