"""Embeddings and rerank in other servers' schemas: OpenAI's ``/v1/embeddings``, and
text-embeddings-inference's ``/embed`` and ``/rerank``."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import FastAPI

from gl_retrieval.serve.responses import APIError, RequestLimits
from gl_retrieval.serve.schemas import EmbeddingsRequest, TEIEmbedRequest, TEIRerankRequest
from gl_retrieval.serve.service import RetrievalService

__all__ = ["add_openai_routes"]


def add_openai_routes(app: FastAPI, service: RetrievalService, limits: RequestLimits) -> None:
    """Register the OpenAI- and TEI-compatible embedding and rerank routes on ``app``."""
    guarded, check_text, check_items = limits.guarded, limits.check_text, limits.check_items

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
            scores = await service.score_pairs(pairs)
            order = sorted(range(len(texts)), key=lambda i: -scores[i])
            out = []
            for i in order:
                item: dict[str, Any] = {"index": i, "score": float(scores[i])}
                if body.return_text:
                    item["text"] = texts[i]
                out.append(item)
            return out

        return await guarded(work)
