"""The FastAPI app: routes, JSON errors, auth, body limits, CORS and metrics.

Every error is ``{"error": {"type", "message"}}`` with its status; no traceback ever reaches a
response (it goes to the server log).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gl_retrieval._deps import require
from gl_retrieval.errors import (
    FilterError,
    GLRetrievalError,
    IndexMismatchError,
    IndexNotFoundError,
    LLMNotConfiguredError,
    OllamaError,
)
from gl_retrieval.serve.batching import Overloaded
from gl_retrieval.serve.schemas import (
    AskRequest,
    BatchQueryRequest,
    EmbeddingsRequest,
    IndexRequest,
    QueryRequest,
    TEIEmbedRequest,
    TEIRerankRequest,
)
from gl_retrieval.serve.service import JobRunning, RetrievalService

require("fastapi", extra="serve")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

__all__ = ["build_app"]

log = logging.getLogger("gl_retrieval.serve")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: Routes that take model time: admitted (or refused with 503) before their body is parsed.
ADMITTED = frozenset(
    {"/v1/query", "/v1/query/batch", "/v1/ask", "/v1/embeddings", "/embed", "/rerank"}
)
_ROUTES = (
    "/v1/query/batch",
    "/v1/query",
    "/v1/ask",
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


class APIError(Exception):
    """An error with an HTTP status, a type and a message."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def _route_label(path: str) -> str:
    if path.startswith("/v1/index/"):
        return "/v1/index/{id}"
    return path if path in _ROUTES else "other"


def _status_of(e: BaseException) -> tuple[int, str, dict[str, str] | None]:
    if isinstance(e, APIError):
        return e.status, e.kind, e.headers
    if isinstance(e, Overloaded):
        return 503, "overloaded", {"Retry-After": str(max(1, round(e.retry_after_s)))}
    if isinstance(e, JobRunning):
        return 409, "conflict", None
    if isinstance(e, LLMNotConfiguredError):
        return 400, "llm_not_configured", None
    if isinstance(e, (FilterError, ValueError)):
        return 422, "invalid_request", None
    if isinstance(e, (IndexNotFoundError, IndexMismatchError)):
        return 503, "not_ready", {"Retry-After": "5"}
    if isinstance(e, OllamaError):
        return 502, "upstream_error", None
    return 500, "internal_error", None


class _Guard:
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
        route = _route_label(path)
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
                    admitted.enter_context(self.service.admit())
                except Overloaded as e:
                    status, kind, headers = _status_of(e)
                    await _error(status, kind, str(e), headers)(scope, receive, send_wrapped)
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
                return _error(
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
                return _error(400, "invalid_request", "bad Content-Length header")
            if n > self._max_body:
                return _too_large(self._max_body)
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
                    raise _BodyTooLarge
            return message

        async def send_tracked(message: Any) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except _BodyTooLarge:
            if not started[0]:
                await _too_large(limit)(scope, receive, send)


class _Fast(Response):
    """JSON as ``query --json`` writes it (``default=str``), rendered straight from the dict:
    FastAPI's ``jsonable_encoder`` walk over every result is skipped on the hot routes."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=str, separators=(",", ":")).encode()


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> Any:
    return _error(413, "payload_too_large", f"request body is over serve.max_body_bytes = {limit}")


def build_app(service: RetrievalService, *, api_key: str | None = None) -> FastAPI:
    """The HTTP app over a started :class:`RetrievalService`.

    Args:
        service: The service (models and index loaded).
        api_key: Bearer key every route but ``/healthz`` and ``/readyz`` needs; None: open.
    """
    cfg = service.config
    app = FastAPI(
        title="gl-retrieval",
        summary="Retrieval (dense / BM25 / hybrid + cross-encoder rerank) over one warm index.",
        version=_version(),
    )
    timeout = cfg.request_timeout_s

    # -- errors ------------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> Any:
        status, kind, headers = _status_of(exc)
        if status == 500:
            log.exception("internal error on %s", request.url.path)
            return _error(500, kind, "internal server error (see the server log)")
        message = exc.message if isinstance(exc, APIError) else str(exc)
        return _error(status, kind, message, headers)

    for cls in (APIError, Overloaded, GLRetrievalError, ValueError):
        app.add_exception_handler(cls, _any)

    async def guarded(work: Callable[[], Awaitable[Any]]) -> Any:
        # Admission happened in _Guard, before the body was parsed (a refusal costs little).
        try:
            return await asyncio.wait_for(work(), timeout)
        except asyncio.TimeoutError:
            raise APIError(
                504, "timeout", f"request took over serve.request_timeout_s = {timeout}"
            ) from None

    def check_text(value: str, what: str) -> None:
        if len(value) > cfg.max_query_chars:
            raise APIError(
                422,
                "limit_exceeded",
                f"{what} has {len(value)} characters; the limit is serve.max_query_chars = "
                f"{cfg.max_query_chars}",
            )

    def check_items(n: int, what: str) -> None:
        if n > cfg.max_batch_items:
            raise APIError(
                413,
                "limit_exceeded",
                f"{what} has {n} items; the limit is serve.max_batch_items = {cfg.max_batch_items}",
            )
        if n == 0:
            raise APIError(422, "invalid_request", f"{what} is empty")

    def payload(query: str, filters: Any, results: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"query": query}
        if filters:
            out["filters"] = [filters] if isinstance(filters, str) else filters
        out["results"] = [r.to_dict() for r in results]
        return out

    # -- retrieval ---------------------------------------------------------------------------------

    @app.post("/v1/query", summary="Retrieve (and rerank): the `query --json` shape")
    async def query(body: QueryRequest) -> Any:
        check_text(body.query, "query")

        async def work() -> Any:
            (results,) = await service.retrieve_many(
                [body.query], filters=body.filters, top_k=body.top_k, top_n=body.top_n
            )
            return _Fast(payload(body.query, body.filters, results))

        return await guarded(work)

    @app.post("/v1/query/batch", summary="Many queries, results in the same order")
    async def query_batch(body: BatchQueryRequest) -> Any:
        check_items(len(body.queries), "queries")
        for q in body.queries:
            check_text(q, "a query")

        async def work() -> Any:
            many = await service.retrieve_many(
                body.queries, filters=body.filters, top_k=body.top_k, top_n=body.top_n
            )
            return _Fast(
                {
                    "results": [
                        payload(q, body.filters, r) for q, r in zip(body.queries, many, strict=True)
                    ]
                }
            )

        return await guarded(work)

    @app.post("/v1/ask", summary="The configured LLM's answer: the `ask --json` shape")
    async def ask(body: AskRequest) -> Any:
        check_text(body.question, "question")
        if service.pipe.config.llm is None:
            raise LLMNotConfiguredError(
                "/v1/ask needs an LLM, but the config has no `llm` section: add "
                "`llm: {provider: ollama, model: llama3.2}` (retrieval works without one: "
                "use /v1/query)"
            )

        async def work() -> Any:
            answer = await service.run(
                service.pipe.ask,
                body.question,
                filters=body.filters,
                top_k=body.top_k,
                top_n=body.top_n,
            )
            return answer.to_dict()

        return await guarded(work)

    # -- indexing and state ------------------------------------------------------------------------

    @app.post("/v1/index", status_code=202, summary="Start an incremental index job")
    async def start_index(body: IndexRequest | None = None) -> Any:
        job = service.start_index_job(prune=bool(body and body.prune))
        return job.to_dict()

    @app.get("/v1/index/{job_id}", summary="An index job's state and summary")
    async def index_job(job_id: str) -> Any:
        job = service.job(job_id)
        if job is None:
            raise APIError(404, "not_found", f"no index job {job_id!r}")
        return job.to_dict()

    @app.get("/v1/info", summary="Manifest, counts and the generation served")
    async def info() -> Any:
        try:
            data = await service.run(service.pipe.info)
        except IndexNotFoundError:
            data = {"documents": 0, "chunks": 0}
        data["generation"] = service.pipe.generation
        data["ready"] = service.ready
        data["serve"] = {
            "batching": cfg.batching,
            "max_batch_size": cfg.max_batch_size,
            "max_wait_ms": cfg.max_wait_ms,
            "queue_size": cfg.queue_size,
            "max_queue_wait_ms": cfg.max_queue_wait_ms,
            "threads": service.pipe.config.runtime.threads,
            "embed_workers": service.embed_workers,
            "reranker": service.pipe.reranker is not None,
            "retriever_mode": service.pipe.config.retriever.mode,
        }
        return json.loads(json.dumps(data, default=str))

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", summary="503 until models and an index are loaded")
    async def readyz() -> Any:
        if not service.ready:
            return _error(
                503, "not_ready", service.last_reload_error or "no index generation loaded yet"
            )
        return {"status": "ready", "generation": service.pipe.generation}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Any:
        data, ctype = service.metrics.render()
        return Response(content=data, media_type=ctype)

    # -- embeddings: OpenAI and TEI ----------------------------------------------------------------

    def texts_of(value: str | list[str], what: str) -> list[str]:
        texts = [value] if isinstance(value, str) else list(value)
        check_items(len(texts), what)
        for t in texts:
            check_text(t, f"an item of {what}")
        return texts

    @app.post("/v1/embeddings", summary="OpenAI's embeddings schema (+ input_type)")
    async def embeddings(body: EmbeddingsRequest) -> Any:
        texts = texts_of(body.input, "input")
        dim = service.pipe.embedder.dimension
        if body.dimensions is not None and body.dimensions != dim:
            raise APIError(
                422,
                "invalid_request",
                f"dimensions must be {dim} for this model, got {body.dimensions}",
            )

        async def work() -> Any:
            vecs = await service.embed(body.input_type, texts)
            data = []
            for i, v in enumerate(vecs):
                emb: Any = (
                    base64.b64encode(v.astype("<f4").tobytes()).decode()
                    if body.encoding_format == "base64"
                    else [float(x) for x in v]
                )
                data.append({"object": "embedding", "index": i, "embedding": emb})
            tokens = service.pipe.embedder.count_tokens(texts)
            n = sum(tokens) if tokens is not None else sum(len(t.split()) for t in texts)
            return {
                "object": "list",
                "data": data,
                "model": body.model,
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }

        return await guarded(work)

    def refuse_too_long(embedder: Any, texts: list[str], kind: str) -> None:
        limit = embedder.max_tokens
        prefix = {"query": embedder.query_prefix, "document": embedder.document_prefix}
        counts = embedder.count_tokens([prefix.get(kind, "") + t for t in texts])
        if limit is None or counts is None:
            return
        longest = max(counts)
        if longest > limit:
            raise APIError(
                413,
                "validation",
                f"truncate: false, but an input has {longest} tokens; the model takes {limit} "
                "(send truncate: true to cut it)",
            )

    @app.post("/embed", summary="text-embeddings-inference's /embed")
    async def tei_embed(body: TEIEmbedRequest) -> Any:
        texts = texts_of(body.inputs, "inputs")
        kind = body.prompt_name if body.prompt_name in ("query", "document") else "raw"
        embedder = service.pipe.embedder
        if not body.normalize and embedder.normalize:
            raise APIError(
                422,
                "invalid_request",
                "normalize: false is not available: this server's embedder returns unit vectors "
                "(embedder.normalize: true in its config)",
            )
        if body.truncate is False:  # TEI's own default; omitted: truncate, as --auto-truncate
            await service.run(refuse_too_long, embedder, texts, kind)

        async def work() -> Any:
            vecs = await service.embed(kind, texts)
            return [[float(x) for x in v] for v in vecs]

        return await guarded(work)

    @app.post("/rerank", summary="text-embeddings-inference's /rerank")
    async def tei_rerank(body: TEIRerankRequest) -> Any:
        check_text(body.query, "query")
        texts = texts_of(body.texts, "texts")
        reranker = service.pipe.reranker
        if reranker is None:
            raise APIError(
                400, "no_reranker", "the config has no `reranker` section: /rerank needs one"
            )

        async def work() -> Any:
            pairs = [(body.query, t) for t in texts]
            tokens = await service.run(reranker.count_pair_tokens, pairs)
            scores = await service.score_pairs(pairs, tokens=sum(tokens))
            order = sorted(range(len(texts)), key=lambda i: -scores[i])
            out = []
            for i in order:
                item: dict[str, Any] = {"index": i, "score": float(scores[i])}
                if body.return_text:
                    item["text"] = texts[i]
                out.append(item)
            return out

        return await guarded(work)

    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_Guard, service=service, api_key=api_key)
    return app


def _version() -> str:
    from gl_retrieval._version import __version__

    return __version__
