"""Retrieval routes: ``/v1/query`` and ``/v1/query/batch``, in the CLI's JSON shapes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gl_retrieval.serve.responses import FastJSON, RequestLimits
from gl_retrieval.serve.schemas import BatchQueryRequest, QueryRequest
from gl_retrieval.serve.service import RetrievalService

__all__ = ["add_query_routes", "payload"]


def payload(query: str, filters: Any, results: list[Any]) -> dict[str, Any]:
    """One query's results as ``query --json`` prints them."""
    out: dict[str, Any] = {"query": query}
    if filters:
        out["filters"] = [filters] if isinstance(filters, str) else filters
    out["results"] = [r.to_dict() for r in results]
    return out


def add_query_routes(app: FastAPI, service: RetrievalService, limits: RequestLimits) -> None:
    """Register the retrieval routes on ``app``."""
    guarded, check_text, check_items = limits.guarded, limits.check_text, limits.check_items

    @app.post("/v1/query", summary="Retrieve (and rerank): the `query --json` shape")
    async def query(body: QueryRequest) -> Any:
        check_text(body.query, "query")

        async def work() -> Any:
            (results,) = await service.retrieve_many(
                [body.query], filters=body.filters, top_k=body.top_k, top_n=body.top_n
            )
            return FastJSON(payload(body.query, body.filters, results))

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
            return FastJSON(
                {
                    "results": [
                        payload(q, body.filters, r) for q, r in zip(body.queries, many, strict=True)
                    ]
                }
            )

        return await guarded(work)
