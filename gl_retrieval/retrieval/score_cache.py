"""The rerank cache: a bounded, thread-safe LRU of cross-encoder scores, in this process.

Apps repeat queries ("setups like today's", a daily reading); a repeated query should not pay
the cross-encoder again. The reranker (:class:`~.rerankers.CrossEncoderReranker`) looks every
``(query, passage)`` pair up here before its model runs, and only the pairs missing are scored.

A score is keyed by a 16-byte BLAKE2b digest of three things:

- the **scorer's identity**: what the loaded model is and how it computes, as its loader states
  it (resolved model path and revision, backend, precision, device, ``max_length``), so two
  configurations that score differently never share an entry;
- the **query text**, exactly;
- the **passage text** the cross-encoder reads (content with the embed metadata), exactly: a
  document whose text changed gets a new key, so it is never served an old score, whatever its
  node id.

Bounded by entries, each counted at :data:`ENTRY_BYTES` (what an entry takes in CPython:
measured ~180 bytes, ``tests/test_rerank_cache.py`` checks it with ``tracemalloc``); the least
recently used entry goes first.

Example:
    >>> cache = ScoreCache(max_entries=2)
    >>> keys = cache.keys("model-a", [("q", "p1"), ("q", "p2"), ("q", "p3")])
    >>> cache.put_many(keys, [0.1, 0.2, 0.3])
    >>> cache.get_many(keys)
    [None, 0.2, 0.3]
    >>> s = cache.stats()
    >>> (s.hits, s.misses, s.entries, s.evictions)
    (2, 1, 2, 1)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ENTRY_BYTES", "CacheStats", "ScoreCache", "ScoreLookup", "entries_for"]

#: Bytes one cached score is counted at: the 16-byte digest key (49 bytes as a ``bytes``), the
#: float (24) and the ordered dict's slot and link (~105); measured 178 with ``tracemalloc``.
ENTRY_BYTES = 200

_MIB = 1 << 20


def entries_for(*, max_mb: float, max_entries: int | None) -> int:
    """How many scores a cache of ``max_mb`` MiB, capped at ``max_entries``, holds (0: off).

    Example:
        >>> entries_for(max_mb=16, max_entries=None), entries_for(max_mb=16, max_entries=500)
        (83886, 500)
    """
    by_mb = int(max_mb * _MIB) // ENTRY_BYTES
    return by_mb if max_entries is None else min(by_mb, int(max_entries))


@dataclass(frozen=True)
class CacheStats:
    """What the rerank cache has done since it was made.

    Attributes:
        enabled: False when the config turned the cache off (``cache_mb: 0``).
        hits: Pairs whose score came from the cache.
        misses: Pairs looked up and not found (then scored by the model).
        entries: Scores held now.
        max_entries: The most it holds.
        bytes: Memory the entries take, counted at :data:`ENTRY_BYTES` each.
        max_bytes: The most they take.
        evictions: Entries dropped to stay within ``max_entries``.
    """

    enabled: bool
    hits: int
    misses: int
    entries: int
    max_entries: int
    bytes: int
    max_bytes: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0.0 before any)."""
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``hit_rate``."""
        return {**asdict(self), "hit_rate": round(self.hit_rate, 4)}


@dataclass(frozen=True)
class ScoreLookup:
    """Pairs looked up in the cache: the scores found, and the pairs still to score.

    Attributes:
        scores: One per pair looked up: the cached score, or None.
        missing: The pairs to score, each distinct pair once, in order of first appearance.
        slots: For each None in ``scores``, in order, its pair's index in ``missing``.

    Example:
        >>> found = ScoreLookup.nothing_found([("q", "a"), ("q", "b")])
        >>> found.missing, found.complete([0.5, 0.25])
        ((('q', 'a'), ('q', 'b')), [0.5, 0.25])
    """

    scores: tuple[float | None, ...]
    missing: tuple[tuple[str, str], ...]
    slots: tuple[int, ...]

    @classmethod
    def nothing_found(cls, pairs: Sequence[tuple[str, str]]) -> ScoreLookup:
        """Every pair missing, duplicates kept (no cache: the pairs go to the model as given)."""
        n = len(pairs)
        return cls(scores=(None,) * n, missing=tuple(pairs), slots=tuple(range(n)))

    @classmethod
    def of(
        cls,
        pairs: Sequence[tuple[str, str]],
        keys: Sequence[bytes],
        found: Sequence[float | None],
    ) -> ScoreLookup:
        """From the pairs, their keys and what :meth:`ScoreCache.get_many` found."""
        missing: list[tuple[str, str]] = []
        slots: list[int] = []
        where: dict[bytes, int] = {}
        for pair, key, score in zip(pairs, keys, found, strict=True):
            if score is None:
                if key not in where:
                    where[key] = len(missing)
                    missing.append(pair)
                slots.append(where[key])
        return cls(scores=tuple(found), missing=tuple(missing), slots=tuple(slots))

    def complete(self, fresh: Sequence[float]) -> list[float]:
        """Every pair's score: the cached ones, and ``fresh`` (one per ``missing`` pair)."""
        if len(fresh) != len(self.missing):
            raise ValueError(f"got {len(fresh)} scores for {len(self.missing)} missing pairs")
        slots = iter(self.slots)
        return [float(fresh[next(slots)]) if s is None else s for s in self.scores]


class ScoreCache:
    """A bounded LRU of scores by key digest; safe to share between threads.

    Args:
        max_entries: Scores kept at most (0: a cache that holds nothing, ``enabled`` False).
    """

    def __init__(self, *, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, but got {max_entries}")
        self.max_entries = int(max_entries)
        self._data: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    @property
    def enabled(self) -> bool:
        """False when the cache may hold nothing."""
        return self.max_entries > 0

    @staticmethod
    def keys(identity: str, pairs: Sequence[tuple[str, str]]) -> list[bytes]:
        """The key of each ``(query, passage)`` pair under a scorer's ``identity``.

        Each text is length-prefixed, so no two different triples hash the same input.
        """
        ident = hashlib.blake2b(_utf8(identity), digest_size=32).digest()
        out = []
        for query, passage in pairs:
            q, p = _utf8(query), _utf8(passage)
            h = hashlib.blake2b(key=ident, digest_size=16)
            h.update(len(q).to_bytes(8, "little"))
            h.update(q)
            h.update(p)
            out.append(h.digest())
        return out

    def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """The score of each key, or None where it is missing; counts hits and misses."""
        if not self.enabled:
            return [None] * len(keys)
        out: list[float | None] = []
        with self._lock:
            data = self._data
            for k in keys:
                score = data.get(k)
                if score is not None:
                    data.move_to_end(k)
                out.append(score)
            found = sum(1 for s in out if s is not None)
            self._hits += found
            self._misses += len(out) - found
        return out

    def put_many(self, keys: Sequence[bytes], scores: Sequence[float]) -> None:
        """Store ``scores`` (one per key), dropping the least recently used beyond the bound."""
        if not self.enabled:
            return
        with self._lock:
            data = self._data
            for k, s in zip(keys, scores, strict=True):
                data[k] = float(s)
                data.move_to_end(k)
            over = len(data) - self.max_entries
            for _ in range(max(0, over)):
                data.popitem(last=False)
            self._evictions += max(0, over)

    def clear(self) -> None:
        """Drop every entry (the counts stay)."""
        with self._lock:
            self._data.clear()

    def stats(self) -> CacheStats:
        """The counts and the size now."""
        with self._lock:
            entries = len(self._data)
            return CacheStats(
                enabled=self.enabled,
                hits=self._hits,
                misses=self._misses,
                entries=entries,
                max_entries=self.max_entries,
                bytes=entries * ENTRY_BYTES,
                max_bytes=self.max_entries * ENTRY_BYTES,
                evictions=self._evictions,
            )


def _utf8(text: str) -> bytes:
    # Inputs are checked at the entry (no lone surrogates in queries); a passage read from an
    # index may still hold one, and must hash rather than fail.
    return text.encode("utf-8", "surrogatepass")
