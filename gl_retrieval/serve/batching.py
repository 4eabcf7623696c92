"""Batching across requests: a bounded queue in front of a model's worker threads.

Requests on the event loop :meth:`MicroBatcher.submit` a payload and await its result. A free
worker thread (one by default, or ``workers`` side by side) takes everything that is waiting,
up to ``max_cost`` (texts or tokens), and waits at most ``max_wait_s`` for more while other
requests are on their way. It runs one model call for the whole batch and hands each request
its share; when that call fails, the batch is retried in halves until the one item that
fails alone is found, and only its request gets the error. Model work never runs on the event
loop, so ``/healthz`` and ``/metrics`` answer while a batch runs.

Example:
    >>> b = MicroBatcher(lambda xs: [x * 2 for x in xs], name="double", max_cost=8)
    >>> import asyncio
    >>> asyncio.run(b.submit(21))
    42
    >>> b.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MicroBatcher", "Overloaded", "split_by_length"]

log = logging.getLogger("gl_retrieval.serve")


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 with ``Retry-After``."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Item:
    payload: Any
    cost: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


_EMPTY = object()

#: With several workers, a batch may always take this many requests, whatever its fair share.
#: On one thread, 8 short queries already amortise reading MiniLM's weights (6.6 ms a query in
#: a batch of 8, 6.5 in 16, 12.6 alone), and a fair share of 4 measured 2% slower than 8.
MIN_SHARE = 8


def _deliver(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():  # the request timed out or was cancelled meanwhile
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class MicroBatcher:
    """Merge concurrent submissions into one call of ``fn`` on a worker thread.

    Args:
        fn: Takes the payloads of one batch, returns one result per payload, in order.
        name: For the thread name, logs and metrics.
        max_cost: A batch holds items until their summed ``cost`` reaches this (an item that
            alone exceeds it runs alone).
        max_wait_s: How long a batch that is not full waits for more items, while
            ``pending()`` says more are on their way.
        max_queue: Items waiting at most; beyond it :meth:`submit` raises :class:`Overloaded`.
        pending: How many requests are in flight anywhere (admitted and unanswered); the
            batcher only waits for more when more exist. Default: always wait.
        observe: Called as ``observe(batch_size, cost, waits)`` after each batch (metrics).
        workers: Threads that each take a batch and run ``fn`` on it, concurrently; ``fn`` must
            be thread-safe when this is above 1.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        name: str,
        max_cost: int,
        max_wait_s: float = 0.002,
        max_queue: int = 1024,
        pending: Callable[[], int] | None = None,
        observe: Callable[[int, int, list[float]], None] | None = None,
        workers: int = 1,
    ) -> None:
        self._fn = fn
        self.name = name
        self._max_cost = max(1, int(max_cost))
        self._max_wait_s = max(0.0, float(max_wait_s))
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_queue)
        self._pending = pending
        self._observe = observe
        self._local = threading.local()  # each worker's carried-over item
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"gl-batch-{name}-{i}", daemon=True)
            for i in range(max(1, int(workers)))
        ]
        for t in self._threads:
            t.start()

    async def submit(self, payload: Any, *, cost: int = 1) -> Any:
        """Queue ``payload`` for the next batch and wait for its result.

        Raises:
            Overloaded: the queue is full.
        """
        if self._closed:
            raise Overloaded(f"the {self.name} batcher is shutting down")
        loop = asyncio.get_running_loop()
        item = _Item(
            payload=payload, cost=max(1, int(cost)), loop=loop, future=loop.create_future()
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise Overloaded(f"the {self.name} queue is full") from None
        return await item.future

    def close(self) -> None:
        """Stop the worker after the items already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    # -- worker thread ---------------------------------------------------------------------------

    def _next(self, timeout: float | None) -> _Item | object | None:
        """The next item, ``None`` when closed, or ``_EMPTY`` when nothing came in time."""
        carry = getattr(self._local, "carry", None)
        if carry is not None:
            self._local.carry = None
            return carry
        try:
            return self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return _EMPTY

    def _share(self) -> int | None:
        """With several workers, the requests one batch takes at most: its fair share of those
        in flight (at least :data:`MIN_SHARE`). A burst is then split over the workers at once,
        instead of going whole to the first one awake while the others idle: at 16 clients on
        2 workers, 199 req/s against 186 (docs/serving.md)."""
        if len(self._threads) < 2 or self._pending is None:
            return None
        return max(MIN_SHARE, -(-self._pending() // len(self._threads)))

    def _collect(self, first: _Item) -> list[_Item]:
        batch, cost = [first], first.cost
        deadline = time.perf_counter() + self._max_wait_s
        share = self._share()
        while cost < self._max_cost and (share is None or len(batch) < share):
            item = self._next(0)  # everything already waiting joins at once
            if item is _EMPTY:
                more = self._pending() > len(batch) if self._pending is not None else True
                remaining = deadline - time.perf_counter()
                if not more or remaining <= 0:
                    break
                item = self._next(remaining)
                if item is _EMPTY:
                    break
            if item is None:  # close(): finish this batch, then stop
                self._queue.put(None)
                break
            if not isinstance(item, _Item):
                continue
            if item.future.done():  # timed out while waiting
                continue
            if cost + item.cost > self._max_cost:
                self._local.carry = item
                break
            batch.append(item)
            cost += item.cost
        return batch

    def _run(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                self._queue.put(None)  # and the next worker stops too
                return
            if not isinstance(first, _Item) or first.future.done():
                continue
            batch = self._collect(first)
            started = time.perf_counter()
            waits = [started - it.enqueued for it in batch]
            self._answer(batch)
            if self._observe is not None:
                self._observe(len(batch), sum(it.cost for it in batch), waits)

    def _call(self, batch: list[_Item]) -> list[Any]:
        results = list(self._fn([it.payload for it in batch]))
        if len(results) != len(batch):
            raise RuntimeError(
                f"{self.name} batch returned {len(results)} results for {len(batch)} items"
            )
        return results

    def _answer(self, batch: list[_Item]) -> None:
        """Run ``batch`` and hand each item its result. When the merged call fails, the batch
        is split in halves and each half retried, down to the single item that fails alone:
        only that request gets the error, never a request that would have succeeded alone
        (a bad item in a batch of n costs about 2·log2(n) extra, smaller calls)."""
        try:
            results: list[Any] = self._call(batch)
            error: BaseException | None = None
        except Exception as e:  # never kills the worker
            if len(batch) > 1:
                live = [it for it in batch if not it.future.done()]
                log.warning(
                    "%s batch of %d failed (%s: %s): retrying it in halves",
                    self.name,
                    len(batch),
                    type(e).__name__,
                    e,
                )
                half = (len(live) + 1) // 2
                for part in (live[:half], live[half:]):
                    if part:
                        self._answer(part)
                return
            log.warning("%s item failed alone: %s: %s", self.name, type(e).__name__, e)
            results, error = [None], e
        for it, res in zip(batch, results, strict=True):
            with contextlib.suppress(RuntimeError):  # the loop closed
                it.loop.call_soon_threadsafe(_deliver, it.future, res, error)


def split_by_length(lengths: Sequence[int], *, call_cost: int) -> list[list[int]]:
    """Group texts into model calls so that padding wastes the least: indices per call.

    A merged batch pads every text to its longest, and transformer compute grows with the padded
    tokens; each extra call costs about ``call_cost`` tokens' worth (reading the weights once
    more, per-call overhead). With the texts sorted by length, the cheapest split into runs is
    found exactly by dynamic programming (O(n²) for n texts, microseconds at batch sizes).

    Example:
        >>> split_by_length([40, 10, 11, 42, 12], call_cost=30)
        [[1, 2, 4], [0, 3]]
        >>> split_by_length([40, 10, 11, 42, 12], call_cost=1000)
        [[1, 2, 4, 0, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + call_cost + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
