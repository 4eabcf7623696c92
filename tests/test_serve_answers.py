"""The answer routes over real HTTP: ``/v1/chat/completions`` with the real ``openai`` client,
SSE ``/v1/ask``, ``RemotePipeline.ask(stream=True)``, disconnects, stalls and admission.

The LLM is the loopback Ollama stand-in (real NDJSON streaming over HTTP) or, where a test
needs a slow or stalling LLM, :class:`SlowLLM` passed in as ``llm=``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import parse_config
from gl_retrieval.serve.client import RemoteAnswerStream, RemoteError, RemotePipeline, sse_events
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.ollama_server import FakeOllama
from tests.serve_helpers import running_server

openai = pytest.importorskip("openai")

KEY = "answers-test-key-41c7"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "what does pgvector add to PostgreSQL?"


class SlowLLM(CustomLLM):
    """A completion LLM that streams ``t0 t1 ...`` one token every ``delay_s``; with
    ``hang_after`` it stops sending after that many tokens (until released). It records how
    many tokens it produced and whether its stream was closed."""

    delay_s: float = 0.05
    n_tokens: int = 200
    hang_after: int | None = None
    _produced: list[int] = PrivateAttr(default_factory=list)
    _closed: threading.Event = PrivateAttr(default_factory=threading.Event)
    _release: threading.Event = PrivateAttr(default_factory=threading.Event)

    def reset(self, *, hang_after: int | None = None) -> None:
        self._release.set()  # free a stream still hanging from an earlier test
        self.hang_after = hang_after
        self._produced = []
        self._closed = threading.Event()
        self._release = threading.Event()

    @property
    def produced(self) -> int:
        return len(self._produced)

    @property
    def closed(self) -> threading.Event:
        return self._closed

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=4096, num_output=256, model_name="slow")

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="a standalone question")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        produced, closed, release = self._produced, self._closed, self._release

        def gen() -> Iterator[CompletionResponse]:
            text = ""
            try:
                for i in range(self.n_tokens):
                    if i == self.hang_after:
                        release.wait(10)
                    else:
                        time.sleep(self.delay_s)
                    produced.append(i)
                    text += f"t{i} "
                    yield CompletionResponse(text=text, delta=f"t{i} ")
            finally:
                closed.set()

        return gen()


def _config(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 5},
        "storage": {"persist_dir": str(tmp / "index")},
        "sources": [{"path": str(tmp / "corpus.jsonl")}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        **extra,
    }


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, minilm_embedder: Any) -> Path:
    """One index over SMALL_CORPUS, shared (read-only) by every server of this module."""
    tmp = tmp_path_factory.mktemp("answers")
    write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS)
    RetrievalPipeline(parse_config(_config(tmp)), embedder=minilm_embedder).index()
    return tmp


@pytest.fixture(scope="module")
def ollama_served(
    index_dir: Path, minilm_embedder: Any, ollama_server_session: FakeOllama
) -> Iterator[Any]:
    """A server whose LLM is the Ollama stand-in."""
    llm = {
        "provider": "ollama",
        "model": "llama3.2",
        "base_url": ollama_server_session.url,
        "timeout_s": 10,
    }
    cfg = parse_config(_config(index_dir, llm=llm, serve={"api_key": KEY}))
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder)
    with running_server(cfg, pipeline=pipe) as server:
        yield server


@pytest.fixture
def ollama(ollama_served: Any, ollama_server: FakeOllama) -> Any:
    """The stand-in server, its recorded requests cleared."""
    return ollama_server


@pytest.fixture(scope="module")
def slow_served(index_dir: Path, minilm_embedder: Any) -> Iterator[tuple[Any, SlowLLM]]:
    """A server whose LLM is :class:`SlowLLM`: one request admitted at once, a short stall
    timeout."""
    serve = {"queue_size": 1, "max_queue_wait_ms": None, "llm_stall_timeout_s": 0.5}
    cfg = parse_config(_config(index_dir, serve=serve))
    llm = SlowLLM()
    pipe = RetrievalPipeline(cfg, embedder=minilm_embedder, llm=llm)
    with running_server(cfg, pipeline=pipe) as server:
        yield server, llm
    llm.reset()


@pytest.fixture
def slow(slow_served: tuple[Any, SlowLLM]) -> Iterator[tuple[Any, SlowLLM]]:
    server, llm = slow_served
    llm.reset()
    yield server, llm
    llm.reset()


def _client(server: Any, key: str | None = KEY) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key or "none", max_retries=0)


def _events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    import json

    for event, data in sse_events(response.iter_lines()):
        yield event, json.loads(data)


# -- /v1/chat/completions with the openai client --------------------------------------------------


def test_chat_completion_answers_with_sources(ollama_served: Any, ollama: FakeOllama) -> None:
    reply = _client(ollama_served).chat.completions.create(
        model="docs-rag",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
        ],
        temperature=0.0,
        max_tokens=64,
    )
    assert reply.model == "docs-rag" and reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == f"You said: {QUESTION}"
    assert reply.choices[0].finish_reason == "stop"
    sources = reply.model_extra["sources"]
    assert sources[0]["doc_id"] == "pg"
    assert {"id", "doc_id", "text", "score", "score_kind", "metadata"} <= set(sources[0])
    (call,) = ollama.requests_to("/api/chat")
    assert call.body["stream"] is True  # one path: the answer is always streamed from the LLM
    assert call.body["options"]["temperature"] == 0.0
    assert call.body["options"]["num_predict"] == 64
    system = call.body["messages"][0]
    assert system["role"] == "system" and "Answer briefly." in system["content"]
    assert "pgvector" in system["content"]  # the retrieved sources are the context


def test_chat_completion_streams_openai_chunks(ollama_served: Any, ollama: FakeOllama) -> None:
    stream = _client(ollama_served).chat.completions.create(
        model="docs-rag", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == f"You said: {QUESTION}"
    assert len([c for c in chunks if c.choices[0].delta.content]) > 3  # token by token
    assert all(c.model == "docs-rag" and c.id == chunks[0].id for c in chunks)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra["sources"][0]["doc_id"] == "pg"
    assert all("sources" not in (c.model_extra or {}) for c in chunks[:-1])


def test_chat_completion_condenses_the_earlier_turns(
    ollama_served: Any, ollama: FakeOllama
) -> None:
    reply = _client(ollama_served).chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "what is BM25?"},
            {"role": "assistant", "content": "A lexical ranking function."},
            {"role": "user", "content": [{"type": "text", "text": "and pgvector?"}]},
        ],
        extra_body={"top_n": 2},
    )
    assert len(reply.model_extra["sources"]) == 2
    condense, answer = ollama.requests_to("/api/chat")
    assert "what is BM25?" in condense.body["messages"][-1]["content"]  # the history, condensed
    assert [m["role"] for m in answer.body["messages"]][-3:] == ["user", "assistant", "user"]


def test_chat_completion_refuses_bad_conversations(ollama_served: Any) -> None:
    client = _client(ollama_served)
    with pytest.raises(openai.UnprocessableEntityError, match="last message must be the user"):
        client.chat.completions.create(
            model="m", messages=[{"role": "assistant", "content": "hello"}]
        )
    with pytest.raises(openai.AuthenticationError):
        _client(ollama_served, key="wrong").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )


def test_without_llm_section_both_routes_are_a_clear_400(
    index_dir: Path, minilm_embedder: Any
) -> None:
    cfg = parse_config(_config(index_dir))
    with running_server(cfg, pipeline=RetrievalPipeline(cfg, embedder=minilm_embedder)) as server:
        with pytest.raises(openai.BadRequestError, match="no `llm` section") as e:
            _client(server).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        assert e.value.body["type"] == "llm_not_configured"
        for stream in (False, True):
            r = httpx.post(server.url + "/v1/ask", json={"question": "hi", "stream": stream})
            assert r.status_code == 400
            assert r.json()["error"]["type"] == "llm_not_configured"


# -- /v1/ask as server-sent events ---------------------------------------------------------------


def test_ask_streams_token_events_then_the_answer(ollama_served: Any, ollama: FakeOllama) -> None:
    body = {"question": QUESTION, "top_n": 2, "stream": True}
    with httpx.stream(
        "POST", ollama_served.url + "/v1/ask", json=body, headers=AUTH, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(_events(r))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"} and len(kinds) > 3
    done = events[-1][1]
    assert set(done) == {"question", "answer", "sources"}  # the `ask --json` shape
    assert done["answer"] == "".join(d["text"] for _, d in events[:-1]).strip()
    assert done["answer"].startswith("According to [1], pgvector")
    assert done["sources"][0]["doc_id"] == "pg" and len(done["sources"]) == 2
    plain = httpx.post(
        ollama_served.url + "/v1/ask", json={**body, "stream": False}, headers=AUTH, timeout=30
    ).json()
    assert plain == done


def test_remote_pipeline_ask_streams_then_has_the_sources(
    ollama_served: Any, ollama: FakeOllama
) -> None:
    with RemotePipeline(ollama_served.url, api_key=KEY) as remote:
        stream = remote.ask(QUESTION, top_n=2, stream=True)
        assert isinstance(stream, RemoteAnswerStream) and stream.sources == []
        deltas = list(stream)
        assert len(deltas) > 3 and stream.done
        assert stream.answer == "".join(deltas).strip()
        assert stream.sources[0].doc_id == "pg"
        answer = remote.ask(QUESTION, top_n=2)
        assert answer.answer == stream.answer
        assert [s.node_id for s in answer.sources] == [s.node_id for s in stream.sources]
        assert stream.to_answer().to_dict() == answer.to_dict()


# -- stopping: disconnects, stalls, admission ----------------------------------------------------


def _read_tokens(events: Iterator[tuple[str, Any]], n: int) -> list[str]:
    """Read the next ``n`` text deltas of /v1/ask's or /v1/chat/completions' ``events`` (keep
    a reference to them: a dropped iterator closes the connection)."""
    got = []
    for event, data in events:
        if event == "token":
            got.append(data["text"])
        elif event == "message" and "choices" in data:
            content = data["choices"][0]["delta"].get("content")
            if content:
                got.append(content)
        if len(got) == n:
            break
    return got


@pytest.mark.parametrize("route", ["/v1/ask", "/v1/chat/completions"])
def test_a_client_that_disconnects_stops_the_generation(
    slow: tuple[Any, SlowLLM], route: str
) -> None:
    server, llm = slow
    body: dict[str, Any] = {"stream": True}
    if route == "/v1/ask":
        body["question"] = QUESTION
    else:
        body["messages"] = [{"role": "user", "content": QUESTION}]
    with httpx.stream("POST", server.url + route, json=body, timeout=30) as r:
        assert r.status_code == 200
        events = _events(r)
        assert len(_read_tokens(events, 3)) == 3
    # Hung up after 3 tokens: the LLM's stream is closed within a couple of tokens.
    assert llm.closed.wait(5), "the generation went on after the client left"
    assert llm.produced < 10 < llm.n_tokens


@pytest.mark.parametrize("route", ["/v1/ask", "/v1/chat/completions"])
def test_a_stalled_llm_is_cut(slow: tuple[Any, SlowLLM], route: str) -> None:
    server, llm = slow
    llm.reset(hang_after=2)
    started = time.monotonic()
    if route == "/v1/chat/completions":
        stream = _client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        got = []
        with pytest.raises(openai.APIError, match="llm_stall_timeout_s"):
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) == "t0 t1 "
    else:
        body = {"question": QUESTION, "stream": True}
        with httpx.stream("POST", server.url + route, json=body, timeout=30) as r:
            events = list(_events(r))
        assert [k for k, _ in events] == ["token", "token", "error"]
        assert events[-1][1]["error"]["type"] == "llm_stalled"
    assert time.monotonic() - started < 5  # cut at 0.5 s, not when the LLM gives up (10 s)
    llm._release.set()  # the LLM wakes up: it must not go on generating
    assert llm.closed.wait(5)
    assert llm.produced == 3


def test_a_streaming_answer_holds_its_place_in_the_queue(slow: tuple[Any, SlowLLM]) -> None:
    """queue_size 1: while an answer streams, a query is refused; once it ends, admitted."""
    server, llm = slow
    query = {"query": "what is BM25?"}
    body = {"question": QUESTION, "stream": True}
    with httpx.stream("POST", server.url + "/v1/ask", json=body, timeout=30) as r:
        events = _events(r)
        assert len(_read_tokens(events, 2)) == 2
        refused = httpx.post(server.url + "/v1/query", json=query)
        assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert llm.closed.wait(5)
    deadline = time.monotonic() + 5
    while (ok := httpx.post(server.url + "/v1/query", json=query)).status_code == 503:
        assert time.monotonic() < deadline, "the stream's place was not given back"
        time.sleep(0.05)
    assert ok.status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'route="/v1/ask",status="200"' in metrics


def test_remote_stream_error_mid_stream_is_a_remote_error(slow: tuple[Any, SlowLLM]) -> None:
    server, llm = slow
    llm.reset(hang_after=1)
    with RemotePipeline(server.url) as remote:
        stream = remote.ask(QUESTION, stream=True)
        got = []
        with pytest.raises(RemoteError, match="llm_stalled"):
            for delta in stream:
                got.append(delta)
        assert got == ["t0 "]


def test_an_openai_like_llm_behind_both_routes(
    index_dir: Path, minilm_embedder: Any, openai_server: Any
) -> None:
    """The service is provider-agnostic: an OpenAI-compatible LLM server (vLLM, llama.cpp,
    LM Studio) answers /v1/chat/completions, streamed and not, and the SSE /v1/ask."""
    llm = {"provider": "openai_like", "model": "local-model", "base_url": openai_server.url}
    cfg = parse_config(_config(index_dir, llm=llm, serve={"api_key": KEY}))
    with running_server(cfg, pipeline=RetrievalPipeline(cfg, embedder=minilm_embedder)) as server:
        client = _client(server)
        messages = [{"role": "user", "content": QUESTION}]
        reply = client.chat.completions.create(model="rag", messages=messages, max_tokens=32)
        assert reply.choices[0].message.content and reply.model_extra["sources"]
        chunks = list(client.chat.completions.create(model="rag", messages=messages, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply.choices[0].message.content
        with httpx.stream(
            "POST",
            f"{server.url}/v1/ask",
            json={"question": QUESTION, "stream": True},
            headers=AUTH,
            timeout=30,
        ) as r:
            events = list(_events(r))
        assert events[0][0] == "token" and events[-1][0] == "done"
        assert events[-1][1]["sources"][0]["doc_id"] == "pg"
