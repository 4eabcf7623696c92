"""Helpers for the serve tests: a real uvicorn server on a loopback port, in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr

from gl_retrieval.embedders.base import GLEmbedding


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, *, timeout_s: float = 60.0, path: str = "/healthz") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url}{path} not up after {timeout_s}s")


@contextlib.contextmanager
def running_server(config: Any, *, pipeline: Any = None, **kwargs: Any) -> Iterator[Any]:
    """Start ``create_server`` in a thread; yield it with ``.url``; stop it afterwards."""
    from gl_retrieval.serve.server import create_server

    port = free_port()
    server = create_server(config, port=port, pipeline=pipeline, log_level="warning", **kwargs)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server.url)
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        server.gl_service.close()


class SlowEmbedder(GLEmbedding):
    """Delegates to a real embedder after sleeping ``delay_s`` on every query embed call
    (the sleep releases the GIL, as torch does)."""

    delay_s: float = 0.0
    _inner: Any = PrivateAttr()

    def __init__(self, inner: GLEmbedding, *, delay_s: float) -> None:
        super().__init__(
            provider=inner.provider,
            model_name=inner.model_name,
            query_prefix=inner.query_prefix,
            document_prefix=inner.document_prefix,
            normalize=inner.normalize,
            delay_s=delay_s,
        )
        self._inner = inner

    def warmup(self) -> None:
        self._inner.warmup()

    def _encode(self, texts: Sequence[str], *, show_progress: bool) -> np.ndarray:
        return self._inner._encode(texts, show_progress=show_progress)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        time.sleep(self.delay_s)
        return super().embed_queries(texts)

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def fingerprint(self) -> dict[str, Any]:
        return self._inner.fingerprint()

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        return self._inner.count_tokens(texts)
