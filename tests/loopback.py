"""What every loopback stand-in server of the tests shares (Ollama's, OpenAI's).

A ``ThreadingHTTPServer`` on ``127.0.0.1`` (port chosen by the OS) in a daemon thread, every
request recorded, and the faults every stand-in can inject: fail, hang or drop the next
requests. A stand-in subclasses :class:`LoopbackServer`, names its request handler, and calls
:meth:`~LoopbackServer.check_faults` first thing for each request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

__all__ = ["Drop", "LoopbackServer", "RecordedRequest"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    body: Any
    authorization: str | None = None


class Drop(Exception):
    """Close the connection without answering (a crashed or restarted server)."""


class LoopbackServer:
    """The lifecycle, the record and the common faults of a loopback stand-in server."""

    #: The request handler; it finds the server as ``self.fake``.
    handler: ClassVar[type[BaseHTTPRequestHandler]]
    #: Thread name, and the name in "not started" errors.
    name: ClassVar[str] = "loopback"
    #: What ``fail_next`` answers unless told otherwise.
    default_failure: ClassVar[str] = "internal error"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Any:
        """Start serving; returns self."""
        handler = type("_Handler", (self.handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release any hung request."""
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{self.name} is not started: call start() first")
        return int(self._httpd.server_address[1])

    # -- knobs -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded requests and faults (subclasses add their own state)."""
        with self._lock:
            self._requests: list[RecordedRequest] = []
            self._fail: list[tuple[int, str]] = []
            self._hang: list[float] = []
            self._drop: list[bool] = []
            self._release.set()  # wake any request still hanging from an earlier test
            self._release.clear()

    def fail_next(self, n: int = 1, *, status: int = 500, message: str | None = None) -> None:
        """Answer the next ``n`` requests (any path) with ``status`` and the server's error
        body for ``message``."""
        with self._lock:
            self._fail += [(status, message or self.default_failure)] * n

    def drop_next(self, n: int = 1) -> None:
        """Close the connection without an answer on the next ``n`` requests."""
        with self._lock:
            self._drop += [True] * n

    def hang_next(self, seconds: float, n: int = 1) -> None:
        """Let the next ``n`` requests wait ``seconds`` before answering (released on reset
        and stop)."""
        with self._lock:
            self._hang += [seconds] * n

    # -- what was seen -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    # -- request handling (called from handler threads) --------------------------------------

    def _pop(self, queue: list[Any]) -> Any:
        with self._lock:
            return queue.pop(0) if queue else None

    def check_faults(self, request: RecordedRequest) -> tuple[int, str] | None:
        """Record ``request`` and apply the faults queued for it: a hang, then a drop (raises
        :class:`Drop`); returns the ``(status, message)`` to fail it with, or None."""
        with self._lock:
            self._requests.append(request)
        hang = self._pop(self._hang)
        if hang and self._release.wait(hang):
            # Released by reset()/stop(): the client gave up long ago. Answer nothing and
            # consume no fault meant for a later test's requests.
            raise Drop()
        if self._pop(self._drop):
            raise Drop()
        return self._pop(self._fail)
