"""The server's Prometheus metrics, in a registry of its own (never the process-global one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gl_retrieval._deps import require
from gl_retrieval.retrieval.score_cache import CacheStats

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    """Requests by route and status, latencies, queue waits, batch sizes, generation, loads."""

    def __init__(self) -> None:
        pc = require("prometheus_client", extra="serve")
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter(
            "gl_retrieval_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = pc.Histogram(
            "gl_retrieval_request_seconds",
            "Request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = pc.Histogram(
            "gl_retrieval_queue_wait_seconds",
            "Time an item waited for its batch, by stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = pc.Histogram(
            "gl_retrieval_batch_size",
            "Requests merged into one model call, by stage.",
            ["stage"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_cost = pc.Histogram(
            "gl_retrieval_batch_cost",
            "Texts (embed) or tokens (rerank) in one model call.",
            ["stage"],
            buckets=(*_BATCH_BUCKETS, 4096, 16384, 65536),
            registry=r,
        )
        self.rejected = pc.Counter(
            "gl_retrieval_rejected",
            "Requests refused with 503: at serve.queue_size, or over serve.max_queue_wait_ms.",
            registry=r,
        )
        self.in_flight = pc.Gauge(
            "gl_retrieval_in_flight", "Requests admitted and not yet answered.", registry=r
        )
        self.predicted_wait = pc.Gauge(
            "gl_retrieval_predicted_wait_seconds",
            "How long the requests in flight would take to drain at the measured throughput.",
            registry=r,
        )
        self.generation = pc.Gauge(
            "gl_retrieval_generation",
            "1 for the index generation being served.",
            ["generation"],
            registry=r,
        )
        self.generation_switches = pc.Counter(
            "gl_retrieval_generation_switches", "New index generations loaded.", registry=r
        )
        self.model_load = pc.Gauge(
            "gl_retrieval_model_load_seconds",
            "Seconds it took to load each model at start.",
            ["model"],
            registry=r,
        )

    def watch_rerank_cache(self, stats: Callable[[], CacheStats]) -> None:
        """Export the rerank cache's counts, read from ``stats`` at each scrape:
        ``gl_retrieval_rerank_cache_{hits,misses,evictions}_total`` and the gauges
        ``gl_retrieval_rerank_cache_{entries,max_entries,bytes}``."""
        core = require("prometheus_client.core", extra="serve")

        class _Collector:
            def collect(self) -> Any:
                s = stats()
                name = "gl_retrieval_rerank_cache"
                for field, doc in (
                    ("hits", "Rerank pairs whose score came from the cache."),
                    ("misses", "Rerank pairs looked up and not cached (scored by the model)."),
                    ("evictions", "Cached rerank scores dropped to stay within the bound."),
                ):
                    yield core.CounterMetricFamily(f"{name}_{field}", doc, value=getattr(s, field))
                for field, doc in (
                    ("entries", "Rerank scores cached now."),
                    ("max_entries", "Rerank scores the cache holds at most (0: off)."),
                    ("bytes", "Memory the cached rerank scores take (estimated)."),
                ):
                    yield core.GaugeMetricFamily(f"{name}_{field}", doc, value=getattr(s, field))

        self.registry.register(_Collector())

    def observe_batch(self, stage: str) -> Any:
        """A ``MicroBatcher`` ``observe`` callback for ``stage``."""

        def observe(size: int, cost: int, waits: list[float]) -> None:
            self.batch_size.labels(stage).observe(size)
            self.batch_cost.labels(stage).observe(cost)
            for w in waits:
                self.queue_wait.labels(stage).observe(w)

        return observe

    def set_generation(self, generation: str | None) -> None:
        self.generation.clear()
        if generation is not None:
            self.generation.labels(generation).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
