"""The HTTP service (`gl-retrieval serve`), request batching, and the remote client.

Takes a :class:`~gl_retrieval.pipeline.RetrievalPipeline` and hands on HTTP: retrieval,
OpenAI- and TEI-compatible embeddings and rerank, index jobs, health and metrics. Needs the
``serve`` extra (``pip install 'gl-retrieval[serve]'``); importing this package does not import
FastAPI or httpx until they are used.

Example:
    >>> from gl_retrieval.serve import RemotePipeline
    >>> remote = RemotePipeline("http://127.0.0.1:8080")  # doctest: +SKIP
    >>> remote.retrieve("what is BM25?")[0].doc_id  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gl_retrieval.serve.client import RemotePipeline, RemoteRetriever
    from gl_retrieval.serve.server import create_server

__all__ = ["RemotePipeline", "RemoteRetriever", "create_server"]

_LAZY = {
    "RemotePipeline": "gl_retrieval.serve.client",
    "RemoteRetriever": "gl_retrieval.serve.client",
    "create_server": "gl_retrieval.serve.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gl_retrieval.serve' has no attribute {name!r}")
