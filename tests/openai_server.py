"""A loopback HTTP server that speaks the OpenAI API's chat subset, as vLLM or llama.cpp do.

Tests talk to it through the real ``openai`` client (under ``llama-index-llms-openai-like``) over
real HTTP, so what is on the wire is what a real server would see. It serves, under ``/v1``:

* ``POST /v1/chat/completions``  non-streaming JSON, and streaming server-sent events
  (``data: {chunk}`` lines, then ``data: [DONE]``); the deterministic answer quotes the start of
  the context in the last user or system message (source ``[1]``, or the block between
  LlamaIndex's ``-----`` rules), else echoes the last user message;
* ``POST /v1/completions``  the same for ``is_chat_model: false``;
* ``GET /v1/models``;
* errors as OpenAI's ``{"error": {"message", "type", "param", "code"}}``: 401 when
  :attr:`FakeOpenAI.api_key` is set and the request's Bearer key differs, 404 with
  ``model_not_found`` for a model it does not serve; an unknown path gets FastAPI's
  ``{"detail": "Not Found"}`` (as vLLM answers).

Every request is recorded (method, path, JSON body, Authorization header). Faults are injected
with :meth:`FakeOpenAI.fail_next`, :meth:`~FakeOpenAI.hang_next`, :meth:`~FakeOpenAI.drop_next`
and :meth:`~FakeOpenAI.break_stream_next`.

Fixtures: import ``openai_server`` and ``openai_server_session`` from here into a test module
(``# noqa: F401``) or a conftest.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.loopback import Drop, LoopbackServer, RecordedRequest

__all__ = [
    "DEFAULT_MODELS",
    "FakeOpenAI",
    "RecordedRequest",
    "answer_for",
    "openai_server",
    "openai_server_session",
]

DEFAULT_MODELS = ("local-model",)
_RULE = "---------------------"  # what LlamaIndex's prompts put around the context


class _HTTPError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def _openai_error(
    status: int, message: str, *, kind: str, code: str | None = None, param: str | None = None
) -> _HTTPError:
    return _HTTPError(
        status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


def _text(content: Any) -> str:
    """A message's text, whether a string or OpenAI's list of content parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def answer_for(texts: list[str]) -> str:
    """The deterministic answer to messages (last first is searched for the context).

    ``[1] ...`` line -> ``According to [1], <its start>``; a LlamaIndex context block between
    ``-----`` rules -> ``From the context: <its start>``; otherwise ``You said: <the text>``.
    """
    for text in reversed(texts):
        first = next((ln for ln in text.splitlines() if ln.startswith("[1] ")), None)
        if first is not None:
            return f"According to [1], {first[4:84].strip()}"
    for text in reversed(texts):
        if _RULE in text:
            context = " ".join(text.split(_RULE)[1].split())
            return f"From the context: {context[:80].strip()}"
    return f"You said: {' '.join((texts[-1] if texts else '').split())[:80]}"


class FakeOpenAI(LoopbackServer):
    """An OpenAI-compatible look-alike on ``127.0.0.1`` (port chosen by the OS), in a thread."""

    name = "fake-openai"

    def __init__(self, *, models: tuple[str, ...] = DEFAULT_MODELS) -> None:
        self._default_models = models
        super().__init__()

    @property
    def url(self) -> str:
        """The API root, ``http://127.0.0.1:<port>/v1`` (what ``llm.base_url`` takes)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- knobs -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded requests and faults; restore the default models; no key needed."""
        super().reset()
        with self._lock:
            self.models: set[str] = set(self._default_models)
            self.api_key: str | None = None
            self._break: list[int] = []

    def break_stream_next(self, after: int = 2, n: int = 1) -> None:
        """Cut the next ``n`` streams off after ``after`` chunks (no ``[DONE]``, no end)."""
        with self._lock:
            self._break += [after] * n

    # -- request handling (called from handler threads) --------------------------------------

    def _before(self, method: str, path: str, body: Any, authorization: str | None) -> None:
        fail = self.check_faults(RecordedRequest(method, path, body, authorization))
        if fail:
            status, message = fail
            raise _openai_error(status, message, kind="server_error")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            raise _openai_error(
                401,
                "Incorrect API key provided.",
                kind="invalid_request_error",
                code="invalid_api_key",
            )

    def require_model(self, body: Any) -> str:
        name = body.get("model") if isinstance(body, dict) else None
        if not name:
            raise _openai_error(
                400, "you must provide a model parameter", kind="invalid_request_error"
            )
        if name not in self.models:
            raise _openai_error(
                404,
                f"The model `{name}` does not exist.",
                kind="invalid_request_error",
                code="model_not_found",
                param="model",
            )
        return str(name)

    def chat_answer(self, body: Any) -> tuple[str, str]:
        model = self.require_model(body)
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = [_text(m.get("content")) for m in messages if m.get("role") in ("user", "system")]
        users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        # The context may sit in the system message (chat engines); the echo is of the user.
        answer = answer_for(texts)
        if answer.startswith("You said:"):
            answer = answer_for(users)
        return model, answer

    def completion_answer(self, body: Any) -> tuple[str, str]:
        model = self.require_model(body)
        prompt = body.get("prompt", "")
        prompt = prompt[0] if isinstance(prompt, list) and prompt else prompt
        return model, answer_for([str(prompt)])

    def model_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake-openai"}
                for m in sorted(self.models)
            ],
        }


def _pieces(answer: str) -> list[str]:
    words = answer.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _usage(answer: str) -> dict[str, int]:
    out = len(answer.split())
    return {"prompt_tokens": 10, "completion_tokens": out, "total_tokens": 10 + out}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAI  # set on the subclass made in FakeOpenAI.start

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def handle(self) -> None:
        # A connection cut on purpose (drop, break) or by the client's timeout is no error.
        with contextlib.suppress(OSError):
            super().handle()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        path = self.path.split("?", 1)[0]
        fake = self.fake
        try:
            fake._before(method, path, body, self.headers.get("Authorization"))
            if isinstance(body, str):
                raise _openai_error(400, "invalid JSON body", kind="invalid_request_error")
            if (method, path) == ("GET", "/v1/models"):
                self._json(200, fake.model_list())
            elif (method, path) == ("POST", "/v1/chat/completions"):
                self._chat(body)
            elif (method, path) == ("POST", "/v1/completions"):
                self._completion(body)
            else:
                raise _HTTPError(404, {"detail": "Not Found"})
        except _HTTPError as e:
            self._json(e.status, e.body)
        except Drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout fired)

    def _chat(self, body: Any) -> None:
        model, answer = self.fake.chat_answer(body)
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
                "logprobs": None,
            }
            reply = {**base, "object": "chat.completion", "choices": [choice]}
            self._json(200, {**reply, "usage": _usage(answer)})
            return
        chunks = []
        for i, piece in enumerate(_pieces(answer)):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            chunks.append({"index": 0, "delta": delta, "finish_reason": None})
        chunks.append({"index": 0, "delta": {}, "finish_reason": "stop"})
        self._stream([{**base, "object": "chat.completion.chunk", "choices": [c]} for c in chunks])

    def _completion(self, body: Any) -> None:
        model, answer = self.fake.completion_answer(body)
        base = {"id": "cmpl-fake", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            choice = {"index": 0, "text": answer, "finish_reason": "stop", "logprobs": None}
            reply = {**base, "object": "text_completion", "choices": [choice]}
            self._json(200, {**reply, "usage": _usage(answer)})
            return
        chunks = [
            {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
            for piece in _pieces(answer)
        ]
        chunks.append({"index": 0, "text": "", "finish_reason": "stop", "logprobs": None})
        self._stream([{**base, "object": "text_completion", "choices": [c]} for c in chunks])

    def _stream(self, events: list[dict[str, Any]]) -> None:
        cut = self.fake._pop(self.fake._break)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, event in enumerate(events):
            if cut is not None and i >= cut:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


FakeOpenAI.handler = _Handler


# -- pytest fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def openai_server_session() -> Iterator[FakeOpenAI]:
    """One fake OpenAI-compatible server for the whole session."""
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def openai_server(openai_server_session: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The session's fake server, with requests, faults, models and key reset for this test."""
    openai_server_session.reset()
    yield openai_server_session
    openai_server_session.reset()
