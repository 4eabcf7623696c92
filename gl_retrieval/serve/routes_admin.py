"""Index jobs and state: ``/v1/index``, ``/v1/info``, ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from gl_retrieval.errors import IndexNotFoundError
from gl_retrieval.serve.responses import APIError, error_response
from gl_retrieval.serve.schemas import IndexRequest
from gl_retrieval.serve.service import RetrievalService

__all__ = ["add_admin_routes"]


def add_admin_routes(app: FastAPI, service: RetrievalService) -> None:
    """Register the index-job, info, health and metrics routes on ``app``."""
    cfg = service.config

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
        data["backends"] = service.pipe.backends()
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
        if service.pipe.reranker is not None:
            data["rerank_cache"] = service.pipe.reranker.cache_stats().to_dict()
        return json.loads(json.dumps(data, default=str))

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", summary="503 until models and an index are loaded")
    async def readyz(request: Request) -> Any:
        # Open to probes: a status word only. The detail (paths, the recovery command, the
        # generation) is for ?detail, which the Guard puts behind the Host check and the key.
        detail = "detail" in request.query_params
        if not service.ready:
            message = service.not_ready_reason or "not ready"
            if not detail:
                message = "not ready (GET /readyz?detail with the API key says why)"
            return error_response(503, "not_ready", message)
        if not detail:
            return {"status": "ready"}
        return {"status": "ready", "generation": service.pipe.generation}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Any:
        data, ctype = service.metrics.render()
        return Response(content=data, media_type=ctype)
