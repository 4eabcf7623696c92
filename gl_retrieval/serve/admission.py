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

Heavy requests are priced by their predicted **cost** (the service uses predicted tokens), not
as one each: 256 texts of 300 words are a thousand times a short query's work. A request over
``chunk`` is heavy: it runs in model calls of about ``chunk`` at a time, so a light request
arriving meanwhile waits for at most one such call per heavy request in flight, and heavy work
has its own rate (cost per second of time with a heavy request in flight). A light request's
predicted wait is the light requests ahead at the light rate plus one call per heavy request at
the heavy rate. A heavy request is refused when its calls and the other heavy ones' would keep a
light request waiting over half of ``max_wait_s``, when it would not finish within ``timeout_s``
behind the heavy work in flight, or (heavy rate not yet measured) when another heavy request is
in flight; the first heavy one is admitted.

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
    >>> a.chunk = 10; _ = a.enter(now=1.0, cost=100)  # heavy: the first is admitted
    >>> try:
    ...     a.enter(now=1.0, cost=100)               # a second, before its rate is known
    ... except Overloaded as e:
    ...     print(str(e)[:34])
    another heavy request is in flight
    >>> _ = a.enter(now=1.0)                     # a light one still passes
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
    """Counts requests in and out (heavy ones by cost); refuses the ones that would wait too long.

    Only used from the event loop thread, so it needs no lock.

    Args:
        queue_size: Requests admitted at once.
        max_wait_s: Longest predicted queue wait to admit; None: ``queue_size`` only.
        chunk: The cost of one model call of a heavy request; a request over it is heavy.
        timeout_s: A heavy request predicted to finish later than this is refused.
    """

    def __init__(
        self,
        *,
        queue_size: int,
        max_wait_s: float | None,
        chunk: float = math.inf,
        timeout_s: float | None = None,
    ) -> None:
        self.queue_size = queue_size
        self.max_wait_s = max_wait_s
        self.chunk = chunk
        self.timeout_s = timeout_s
        self.in_flight = 0  # every admitted request
        self.measured = 0  # the light ones the rate is measured on
        self.heavy = 0  # heavy requests in flight
        self.heavy_cost = 0.0  # their predicted cost
        self._busy = 0.0  # seconds with >= 1 light request in flight, ever
        self._mark = 0.0  # when _busy was last brought up to date
        self._done: deque[float] = deque(maxlen=WINDOW)  # _busy at each recent completion
        self._hbusy = 0.0  # the same for heavy requests
        self._hmark = 0.0
        self._hserved = 0.0  # heavy cost answered, ever
        self._hdone: deque[tuple[float, float]] = deque([(0.0, 0.0)], maxlen=WINDOW // 4)

    def _account(self, now: float) -> None:
        if self.measured > 0:
            self._busy += max(0.0, now - self._mark)
        self._mark = now
        if self.heavy > 0:
            self._hbusy += max(0.0, now - self._hmark)
        self._hmark = now

    def rate(self) -> float | None:
        """Light requests answered per busy second, recently; None until two were answered."""
        if len(self._done) < 2 or self._done[-1] <= self._done[0]:
            return None
        return round((len(self._done) - 1) / (self._done[-1] - self._done[0]), 6)

    def heavy_rate(self) -> float | None:
        """Heavy cost answered per second with a heavy request in flight; None until one was."""
        (b0, s0), (b1, s1) = self._hdone[0], self._hdone[-1]
        if len(self._hdone) < 2 or b1 <= b0:
            return None
        return round((s1 - s0) / (b1 - b0), 6)

    def _heavy_turns_s(self, heavy: int) -> float:
        hrate = self.heavy_rate()
        return 0.0 if heavy == 0 or hrate is None else heavy * min(self.chunk, 1e300) / hrate

    def predicted_wait_s(self, in_flight: int | None = None) -> float:
        """Seconds until a light newcomer's model call, at the measured rates: the light
        requests in flight (or ``in_flight`` of them), and one call per heavy request."""
        n = self.measured if in_flight is None else in_flight
        rate = self.rate()
        light = 0.0 if n == 0 or rate is None else n / rate
        return round(light + self._heavy_turns_s(self.heavy), 6)

    def _refusal(self, cost: float) -> Overloaded | None:
        """Why a measured request of ``cost`` cannot come in now, or None (slots aside)."""
        if cost <= self.chunk:
            if self.max_wait_s is None:
                return None
            wait = self.predicted_wait_s()
            if wait <= self.max_wait_s:
                return None
            return Overloaded(
                f"the {self.measured + self.heavy} requests ahead would take about {wait:.1f} s, "
                f"over serve.max_queue_wait_ms = {self.max_wait_s * 1000:g}; retry shortly",
                retry_after_s=max(1.0, math.ceil(wait - self.max_wait_s)),
            )
        if self.heavy == 0:
            return None
        hrate = self.heavy_rate()
        if hrate is None:
            return Overloaded(
                "another heavy request is in flight and this server's throughput for heavy "
                "requests is not measured yet; retry shortly",
                retry_after_s=1.0,
            )
        drain = self.heavy_cost / hrate
        retry = max(1.0, math.ceil(drain))
        turns = self._heavy_turns_s(self.heavy + 1)
        if self.max_wait_s is not None and turns > self.max_wait_s / 2:
            return Overloaded(
                f"the heavy requests in flight hold the model for about {drain:.1f} s more; "
                f"this one (predicted cost {cost:,.0f}) would delay light requests past half of "
                f"serve.max_queue_wait_ms = {self.max_wait_s * 1000:g}; retry later or send "
                "fewer texts at once",
                retry_after_s=retry,
            )
        finish = (cost + self.heavy_cost) / hrate
        if self.timeout_s is not None and finish > self.timeout_s:
            return Overloaded(
                f"this request (predicted cost {cost:,.0f}) would finish in about {finish:.1f} s "
                f"behind the heavy work in flight, over serve.request_timeout_s = "
                f"{self.timeout_s:g}; retry later or send fewer texts at once",
                retry_after_s=retry,
            )
        return None

    def enter(self, *, now: float | None = None, measured: bool = True, cost: float = 1.0) -> float:
        """Admit one request (returns the time) or raise :class:`Overloaded`.

        ``measured=False``: a long request (an LLM answer) that counts against ``queue_size``
        but not in the rates. ``cost``: its predicted cost (see :meth:`charge` when it is known
        only later)."""
        now = time.perf_counter() if now is None else now
        if self.in_flight >= self.queue_size:
            raise Overloaded(
                f"the server is at serve.queue_size = {self.queue_size} requests; retry shortly",
                retry_after_s=1.0,
            )
        refused = self._refusal(cost) if measured else None
        if refused is not None:
            raise refused
        self._account(now)
        self.in_flight += 1
        if measured:
            self._add(cost, +1)
        return now

    def _add(self, cost: float, sign: int) -> None:
        if cost > self.chunk:
            self.heavy = max(0, self.heavy + sign)
            self.heavy_cost = max(0.0, self.heavy_cost + sign * cost)
        else:
            self.measured = max(0, self.measured + sign)

    def charge(self, old: float, new: float, *, now: float | None = None) -> None:
        """Re-price an admitted, measured request from ``old`` to ``new`` once its body says
        what it asks (raises :class:`Overloaded`, ``old`` kept, if it cannot stay)."""
        if (old > self.chunk) == (new > self.chunk):
            if new > self.chunk:
                self.heavy_cost += new - old
            return
        self._account(time.perf_counter() if now is None else now)
        self._add(old, -1)
        refused = self._refusal(new)
        if refused is not None:
            self._add(old, +1)
            raise refused
        self._add(new, +1)

    def leave(self, *, now: float | None = None, measured: bool = True, cost: float = 1.0) -> None:
        """Count one request out, and learn a rate from it (a measured one, of ``cost``)."""
        self._account(time.perf_counter() if now is None else now)
        self.in_flight = max(0, self.in_flight - 1)
        if not measured:
            return
        self._add(cost, -1)
        if cost > self.chunk:
            self._hserved += cost
            self._hdone.append((self._hbusy, self._hserved))
        else:
            self._done.append(self._busy)
