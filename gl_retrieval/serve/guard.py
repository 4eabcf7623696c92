"""The ASGI guard in front of every route: auth, the body size limit, admission and metrics.

Routes that take model time are admitted (or refused with 503) before their body is parsed, so
a refusal costs little.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import Any

from gl_retrieval.serve.batching import Overloaded
from gl_retrieval.serve.responses import error_response, status_of
from gl_retrieval.serve.service import RetrievalService

__all__ = ["ADMITTED", "LLM_ROUTES", "OPEN_PATHS", "Guard", "route_label"]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: Routes that take model time: admitted (or refused with 503) before their body is parsed.
ADMITTED = frozenset(
    {
        "/v1/query",
        "/v1/query/batch",
        "/v1/ask",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/embed",
        "/rerank",
    }
)
#: Admitted routes whose answer an LLM writes: they count against ``serve.queue_size`` for as
#: long as they run (a stream included), but not in the throughput that predicts queue waits
#: (one minute-long stream would otherwise make every query look slow).
LLM_ROUTES = frozenset({"/v1/ask", "/v1/chat/completions"})
_ROUTES = (
    "/v1/query/batch",
    "/v1/query",
    "/v1/ask",
    "/v1/chat/completions",
    "/v1/index",
    "/v1/info",
    "/v1/embeddings",
    "/healthz",
    "/readyz",
    "/metrics",
    "/embed",
    "/rerank",
    "/docs",
    "/openapi.json",
)


def route_label(path: str) -> str:
    """The metrics label of a request path: a known route, ``/v1/index/{id}``, or ``other``."""
    if path.startswith("/v1/index/"):
        return "/v1/index/{id}"
    return path if path in _ROUTES else "other"


class Guard:
    """Pure ASGI middleware: auth, the body size limit and the request metrics."""

    def __init__(self, app: Any, *, service: RetrievalService, api_key: str | None) -> None:
        self.app = app
        self.service = service
        self._key = None if not api_key else f"Bearer {api_key}".encode()
        self._max_body = service.config.max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = route_label(path)
        started = time.perf_counter()
        status_box = [500]

        async def send_wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            denied = self._check(scope, path)
            if denied is not None:
                await denied(scope, receive, send_wrapped)
                return
            if path not in ADMITTED or scope.get("method") != "POST":
                await self._call_limited(scope, receive, send_wrapped)
                return
            with contextlib.ExitStack() as admitted:
                try:
                    admitted.enter_context(self.service.admit(measured=path not in LLM_ROUTES))
                except Overloaded as e:
                    status, kind, headers = status_of(e)
                    await error_response(status, kind, str(e), headers)(
                        scope, receive, send_wrapped
                    )
                    return
                await self._call_limited(scope, receive, send_wrapped)
        finally:
            m = self.service.metrics
            m.requests.labels(route, str(status_box[0])).inc()
            m.latency.labels(route).observe(time.perf_counter() - started)

    def _check(self, scope: Any, path: str) -> Any:
        if self._key is not None and path not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self._key):
                return error_response(
                    401,
                    "unauthorized",
                    "missing or wrong API key: send `Authorization: Bearer <key>`",
                    {"WWW-Authenticate": "Bearer"},
                )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return error_response(400, "invalid_request", "bad Content-Length header")
            if n > self._max_body:
                return too_large(self._max_body)
        return None

    async def _call_limited(self, scope: Any, receive: Any, send: Any) -> None:
        seen = 0
        limit = self._max_body
        started = [False]

        async def receive_limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def send_tracked(message: Any) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except BodyTooLarge:
            if not started[0]:
                await too_large(limit)(scope, receive, send)


class BodyTooLarge(Exception):
    pass


def too_large(limit: int) -> Any:
    return error_response(
        413, "payload_too_large", f"request body is over serve.max_body_bytes = {limit}"
    )
