"""How the service answers: JSON errors and their statuses, fast JSON, the per-request limits.

Every error is ``{"error": {"type", "message"}}`` with its status; no traceback ever reaches a
response (it goes to the server log).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gl_retrieval.config import ServeConfig
from gl_retrieval.errors import (
    EmbeddingError,
    FilterError,
    GLRetrievalError,
    IndexDamagedError,
    IndexMismatchError,
    IndexNotFoundError,
    LLMError,
    LLMNotConfiguredError,
    OllamaError,
    QueryError,
    RerankError,
    StorageError,
)
from gl_retrieval.serve.batching import Overloaded
from gl_retrieval.serve.service import JobRunning

__all__ = [
    "APIError",
    "FastJSON",
    "RequestLimits",
    "error_response",
    "install_error_handlers",
    "status_of",
]

log = logging.getLogger("gl_retrieval.serve")

#: ``Retry-After`` of a storage outage's 503: the watcher probes the store every
#: ``serve.reload_interval_s`` and the replica is ready again at the first probe that answers.
STORAGE_RETRY_AFTER_S = 2


class APIError(Exception):
    """An error with an HTTP status, a type and a message."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> Any:
    """The JSON error body, ``{"error": {"type", "message"}}``, with its status."""
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def status_of(e: BaseException) -> tuple[int, str, dict[str, str] | None]:
    """The status, error type and headers an exception answers with (500 for a bug)."""
    if isinstance(e, APIError):
        return e.status, e.kind, e.headers
    if isinstance(e, Overloaded):
        return 503, "overloaded", {"Retry-After": str(max(1, round(e.retry_after_s)))}
    if isinstance(e, JobRunning):
        return 409, "conflict", None
    if isinstance(e, LLMNotConfiguredError):
        return 400, "llm_not_configured", None
    if isinstance(e, (FilterError, QueryError, ValueError)):
        return 422, "invalid_request", None
    if isinstance(e, (IndexNotFoundError, IndexMismatchError)):
        return 503, "not_ready", {"Retry-After": "5"}
    if isinstance(e, IndexDamagedError):  # another replica (or a rebuilt generation) can answer
        return 503, "index_damaged", {"Retry-After": "5"}
    if isinstance(e, StorageError):  # the store is unreachable: the outage may end any second
        return 503, "storage_unavailable", {"Retry-After": str(STORAGE_RETRY_AFTER_S)}
    if isinstance(e, (OllamaError, LLMError)):
        return 502, "upstream_error", None
    if isinstance(e, (EmbeddingError, RerankError)):  # a model gave NaN: say so, it is no bug
        return 500, "model_error", None
    return 500, "internal_error", None


class FastJSON(Response):
    """JSON as ``query --json`` writes it (``default=str``), rendered straight from the dict:
    FastAPI's ``jsonable_encoder`` walk over every result is skipped on the hot routes."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=str, separators=(",", ":")).encode()


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception a route raises into the JSON error body and its status."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail)
        )

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> Any:
        status, kind, headers = status_of(exc)
        if status == 500 and kind != "model_error":
            log.exception("internal error on %s", request.url.path)
            return error_response(500, kind, "internal server error (see the server log)")
        message = exc.message if isinstance(exc, APIError) else str(exc)
        if kind == "model_error":
            log.error("model error on %s: %s", request.url.path, message)
        return error_response(status, kind, message, headers)

    for cls in (APIError, Overloaded, GLRetrievalError, ValueError):
        app.add_exception_handler(cls, _any)


class RequestLimits:
    """The serve section's per-request limits and timeout, as the routes apply them."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg

    async def guarded(self, work: Callable[[], Awaitable[Any]], *, elapsed_s: float = 0.0) -> Any:
        """Run ``work`` under serve.request_timeout_s, less ``elapsed_s`` already spent on the
        request (504 past it)."""
        timeout = self.cfg.request_timeout_s
        # Admission happened in the Guard, before the body was parsed (a refusal costs little).
        try:
            return await asyncio.wait_for(work(), max(0.001, timeout - elapsed_s))
        except asyncio.TimeoutError:
            raise APIError(
                504, "timeout", f"request took over serve.request_timeout_s = {timeout}"
            ) from None

    def check_text(self, value: str, what: str) -> None:
        """422 when ``value`` is over serve.max_query_chars."""
        cfg = self.cfg
        if len(value) > cfg.max_query_chars:
            raise APIError(
                422,
                "limit_exceeded",
                f"{what} has {len(value)} characters; the limit is serve.max_query_chars = "
                f"{cfg.max_query_chars}",
            )

    def check_items(self, n: int, what: str) -> None:
        """413 over serve.max_batch_items, 422 when empty."""
        cfg = self.cfg
        if n > cfg.max_batch_items:
            raise APIError(
                413,
                "limit_exceeded",
                f"{what} has {n} items; the limit is serve.max_batch_items = {cfg.max_batch_items}",
            )
        if n == 0:
            raise APIError(422, "invalid_request", f"{what} is empty")
