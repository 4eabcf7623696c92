"""The ASGI guard in front of every route: the Host and Origin checks, auth, the body limits,
admission and metrics.

In order: a ``Host`` outside ``serve.allowed_hosts`` gets 400 (DNS rebinding), a foreign
``Origin`` 403, a missing key 401, a POST that is not ``application/json`` 415 (a cross-site
form or ``fetch`` cannot send one without a CORS preflight). Then the whole body is read, within
``serve.max_body_bytes`` (413) and ``serve.body_timeout_s`` (408), and only then does a route
that takes model time take an admission slot (or get 503): a client that sends its body slowly
holds a connection for at most ``body_timeout_s``, never a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from typing import Any
from urllib.parse import urlsplit

from gl_retrieval.serve.batching import Overloaded
from gl_retrieval.serve.responses import error_response, status_of
from gl_retrieval.serve.service import RetrievalService

__all__ = ["ADMITTED", "LLM_ROUTES", "OPEN_PATHS", "Guard", "host_allowed", "route_label"]

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


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``) matches one of
    ``patterns``: exact names, ``*.example.com`` (subdomains), or ``*`` (any).

    Example:
        >>> host_allowed("LOCALHOST:8080", ("localhost",)), host_allowed("[::1]:80", ("::1",))
        (True, True)
        >>> host_allowed("a.example.com", ("*.example.com",)), host_allowed("evil.com", ())
        (True, False)
    """
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    name = name.rstrip(".")
    for pattern in patterns:
        p = pattern.lower()
        if p == "*" or p == name or (p.startswith("*.") and name.endswith(p[1:])):
            return bool(name)
    return False


def route_label(path: str) -> str:
    """The metrics label of a request path: a known route, ``/v1/index/{id}``, or ``other``."""
    if path.startswith("/v1/index/"):
        return "/v1/index/{id}"
    return path if path in _ROUTES else "other"


class Guard:
    """Pure ASGI middleware: Host, Origin, auth, content type, the body limits, admission and the
    request metrics.

    Args:
        app: The app behind it.
        service: The service (its config, admission and metrics).
        api_key: Bearer key every route but the open probes needs; None: open.
        allowed_hosts: ``Host`` names answered (see :func:`host_allowed`); None: any.
    """

    def __init__(
        self,
        app: Any,
        *,
        service: RetrievalService,
        api_key: str | None,
        allowed_hosts: tuple[str, ...] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        cfg = service.config
        self._key = None if not api_key else f"Bearer {api_key}".encode()
        self._max_body = cfg.max_body_bytes
        self._body_timeout = cfg.body_timeout_s
        self._hosts = allowed_hosts
        self._origins = frozenset(cfg.cors_origins)
        # Bodies held at once (read, or being read): at most queue_size full ones.
        self._body_budget = cfg.queue_size * cfg.max_body_bytes
        self._buffered = 0

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

        held = [0]
        try:
            denied = self._check(scope, path)
            if denied is not None:
                await denied(scope, receive, send_wrapped)
                return
            if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
                await self._call_limited(scope, receive, send_wrapped)
                return
            try:
                body = await self._read_body(receive, held)
            except _BodyRefused as e:
                await e.response(scope, receive, send_wrapped)
                return
            except _ClientGone:
                status_box[0] = 499  # closed before its body arrived: nothing to answer
                return
            receive = _replay(body, receive)
            if path not in ADMITTED or scope.get("method") != "POST":
                await self.app(scope, receive, send_wrapped)
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
                await self.app(scope, receive, send_wrapped)
        finally:
            self._buffered -= held[0]
            m = self.service.metrics
            m.requests.labels(route, str(status_box[0])).inc()
            m.latency.labels(route).observe(time.perf_counter() - started)

    def _check(self, scope: Any, path: str) -> Any:
        headers = dict(scope.get("headers") or [])
        method = scope.get("method")
        # The probes answer a status word to anyone (load balancers probe by IP); their detail
        # (?detail) is behind the Host check and the key like every other route.
        probe = path in OPEN_PATHS and b"detail" not in scope.get("query_string", b"")
        host = headers.get(b"host", b"").decode("latin-1")
        if self._hosts is not None and not probe and not host_allowed(host, self._hosts):
            return error_response(
                400,
                "invalid_host",
                f"Host {host!r} is not in serve.allowed_hosts {list(self._hosts)}: add it there "
                "to serve that name",
            )
        origin = headers.get(b"origin")
        if origin is not None and method != "OPTIONS" and not self._origin_ok(origin, host):
            return error_response(
                403,
                "forbidden_origin",
                f"Origin {origin.decode('latin-1')!r} is not in serve.cors_origins: list it "
                "there to let pages from it call this server",
            )
        if self._key is not None and not probe and method != "OPTIONS":
            got = headers.get(b"authorization", b"")
            if not hmac.compare_digest(got, self._key):
                return error_response(
                    401,
                    "unauthorized",
                    "missing or wrong API key: send `Authorization: Bearer <key>`",
                    {"WWW-Authenticate": "Bearer"},
                )
        if method == "POST":
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            if ctype.split(";", 1)[0].strip().lower() != "application/json":
                return error_response(
                    415,
                    "unsupported_media_type",
                    f"POST bodies are JSON: send `Content-Type: application/json` "
                    f"(got {ctype or 'none'!r})",
                )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return error_response(400, "invalid_request", "bad Content-Length header")
            if n > self._max_body:
                return too_large(self._max_body)
        return None

    def _origin_ok(self, origin: bytes, host: str) -> bool:
        value = origin.decode("latin-1")
        if value in self._origins or "*" in self._origins:
            return True
        # Same origin (this server's own pages, /docs): the Origin names the Host it was sent to.
        return bool(host) and urlsplit(value).netloc.lower() == host.strip().lower()

    async def _read_body(self, receive: Any, held: list[int]) -> bytes:
        """The whole body, within max_body_bytes and body_timeout_s; ``held[0]`` counts its
        bytes against the guard's body budget (released when the request ends)."""
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self._body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    if held[0] + len(chunk) > self._max_body:
                        raise _BodyRefused(too_large(self._max_body))
                    if self._buffered + len(chunk) > self._body_budget:
                        raise _BodyRefused(
                            error_response(
                                503,
                                "overloaded",
                                "too many request bodies in flight; retry shortly",
                                {"Retry-After": "1"},
                            )
                        )
                    held[0] += len(chunk)
                    self._buffered += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise _BodyRefused(
                error_response(
                    408,
                    "body_timeout",
                    f"the request body did not arrive within serve.body_timeout_s = "
                    f"{self._body_timeout}",
                    {"Connection": "close"},
                )
            ) from None

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


class _BodyRefused(Exception):
    """The body broke a limit; ``response`` says which."""

    def __init__(self, response: Any) -> None:
        super().__init__()
        self.response = response


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the app the body already read, then the client's own messages
    (a disconnect, which streamed answers watch for)."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def too_large(limit: int) -> Any:
    return error_response(
        413, "payload_too_large", f"request body is over serve.max_body_bytes = {limit}"
    )
