"""Admission: how many requests the server takes in, so that latency stays bounded.

Two bounds, both answered with 503 + ``Retry-After`` at the door (a refused request costs the
server microseconds and the client one round trip, never a wait):

* ``serve.queue_size``: requests admitted at once (running or waiting), a hard cap;
* ``serve.max_queue_wait_ms``: the time the requests already admitted would take to drain at
  the throughput measured just now. A fixed ``queue_size`` cannot do this on its own: 32
  admitted requests are 0.1 s of work for a GPU and several seconds on two CPU cores.

The throughput is measured, not configured: completions per second of *busy* time (time with
at least one request in flight) over the last :data:`WINDOW` completions. It needs no knowledge
of batching or of the model (a batching server that answers 16 requests per encode simply shows
16 times the rate), and idle time does not dilute it. A new request then waits about
``in_flight / rate``; when that is over the budget it is refused.

Requests whose answer an LLM writes (``measured=False``) count against ``queue_size`` for as
long as they run, but neither in the rate nor in the predicted wait: one stream of a minute would
otherwise turn the measured throughput into one request a minute and refuse every query.

Example:
    >>> a = Admission(queue_size=8, max_wait_s=0.5)
    >>> for i in range(3):                       # one client, 0.2 s per request
    ...     _ = a.enter(now=0.2 * i); a.leave(now=0.2 * (i + 1))
    >>> a.rate()                                 # requests per busy second
    5.0
    >>> a.predicted_wait_s(in_flight=3)          # three ahead: 0.6 s, over the 0.5 s budget
    0.6
"""

from __future__ import annotations

import math
import time
from collections import deque

from gl_retrieval.serve.batching import Overloaded

__all__ = ["Admission"]

#: Completions the rate is measured over.
WINDOW = 64


class Admission:
    """Counts requests in and out; refuses the ones that would wait too long.

    Only used from the event loop thread, so it needs no lock.

    Args:
        queue_size: Requests admitted at once.
        max_wait_s: Longest predicted queue wait to admit; None: ``queue_size`` only.
    """

    def __init__(self, *, queue_size: int, max_wait_s: float | None) -> None:
        self.queue_size = queue_size
        self.max_wait_s = max_wait_s
        self.in_flight = 0  # every admitted request
        self.measured = 0  # those the rate is measured on
        self._busy = 0.0  # seconds with >= 1 request in flight, ever
        self._mark = 0.0  # when _busy was last brought up to date
        self._done: deque[float] = deque(maxlen=WINDOW)  # _busy at each recent completion

    def _account(self, now: float) -> None:
        if self.measured > 0:
            self._busy += max(0.0, now - self._mark)
        self._mark = now

    def rate(self) -> float | None:
        """Requests answered per busy second, recently; None until two have been answered."""
        if len(self._done) < 2 or self._done[-1] <= self._done[0]:
            return None
        return round((len(self._done) - 1) / (self._done[-1] - self._done[0]), 6)

    def predicted_wait_s(self, in_flight: int | None = None) -> float:
        """Seconds until the measured requests in flight now are answered, at the measured rate."""
        n = self.measured if in_flight is None else in_flight
        rate = self.rate()
        if n == 0 or rate is None:
            return 0.0
        return round(n / rate, 6)

    def enter(self, *, now: float | None = None, measured: bool = True) -> float:
        """Admit one request (returns the time) or raise :class:`Overloaded`.

        ``measured=False``: a long request (an LLM answer) that counts against ``queue_size``
        but not in the rate."""
        now = time.perf_counter() if now is None else now
        if self.in_flight >= self.queue_size:
            raise Overloaded(
                f"the server is at serve.queue_size = {self.queue_size} requests; retry shortly",
                retry_after_s=1.0,
            )
        if self.max_wait_s is not None:
            wait = self.predicted_wait_s()
            if wait > self.max_wait_s:
                raise Overloaded(
                    f"the {self.measured} requests ahead would take about {wait:.1f} s, over "
                    f"serve.max_queue_wait_ms = {self.max_wait_s * 1000:g}; retry shortly",
                    retry_after_s=max(1.0, math.ceil(wait - self.max_wait_s)),
                )
        self._account(now)
        self.in_flight += 1
        self.measured += measured
        return now

    def leave(self, *, now: float | None = None, measured: bool = True) -> None:
        """Count one request out, and learn the rate from it (a measured one)."""
        self._account(time.perf_counter() if now is None else now)
        self.in_flight = max(0, self.in_flight - 1)
        if measured:
            self.measured = max(0, self.measured - 1)
            self._done.append(self._busy)
