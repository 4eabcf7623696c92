"""The FastAPI app: the routes in groups, JSON errors, auth, body limits, CORS and metrics.

Every error is ``{"error": {"type", "message"}}`` with its status; no traceback ever reaches a
response (it goes to the server log). The pieces: ``responses`` (errors, statuses, limits),
``guard`` (auth, body size, admission, request metrics), ``routes_query`` (query, batch),
``routes_answers`` (ask, OpenAI chat completions; streamed through ``streaming``),
``routes_admin`` (index jobs, info, health, metrics), ``routes_openai`` (OpenAI and TEI
embeddings, TEI rerank).
"""

from __future__ import annotations

from gl_retrieval._deps import require

require("fastapi", extra="serve")

from fastapi import FastAPI  # noqa: E402

from gl_retrieval.serve.guard import Guard  # noqa: E402
from gl_retrieval.serve.responses import RequestLimits, install_error_handlers  # noqa: E402
from gl_retrieval.serve.routes_admin import add_admin_routes  # noqa: E402
from gl_retrieval.serve.routes_answers import add_answer_routes  # noqa: E402
from gl_retrieval.serve.routes_openai import add_openai_routes  # noqa: E402
from gl_retrieval.serve.routes_query import add_query_routes  # noqa: E402
from gl_retrieval.serve.service import RetrievalService  # noqa: E402

__all__ = ["build_app"]


def build_app(
    service: RetrievalService,
    *,
    api_key: str | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
) -> FastAPI:
    """The HTTP app over a started :class:`RetrievalService`.

    Args:
        service: The service (models and index loaded).
        api_key: Bearer key every route but ``/healthz`` and ``/readyz`` needs; None: open.
        allowed_hosts: ``Host`` names answered; None: ``serve.allowed_hosts``, and when that
            is unset too, any (``create_server`` passes the loopback names on a loopback bind).
    """
    cfg = service.config
    app = FastAPI(
        title="gl-retrieval",
        summary="Retrieval (dense / BM25 / hybrid + cross-encoder rerank) over one warm index.",
        version=_version(),
    )
    install_error_handlers(app)
    limits = RequestLimits(cfg)
    add_query_routes(app, service, limits)  # registered in this order: the OpenAPI page's
    add_answer_routes(app, service, limits)
    add_admin_routes(app, service)
    add_openai_routes(app, service, limits)

    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    hosts = allowed_hosts if allowed_hosts is not None else cfg.allowed_hosts
    app.add_middleware(Guard, service=service, api_key=api_key, allowed_hosts=hosts)
    return app


def _version() -> str:
    from gl_retrieval._version import __version__

    return __version__
