"""LLMs from config: the closed registry, per-request options and one-line server errors.

The OpenAI-compatible provider is tested through the real ``llama-index-llms-openai-like``
client over real HTTP against the loopback stand-in in ``tests/openai_server.py``; the autouse
``settings_tripwire`` fails any test that touches LlamaIndex's global ``Settings``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage, MessageRole, MockLLM

from gl_retrieval.answers.llms import (
    NO_API_KEY,
    PROVIDERS,
    aguard_stream,
    build_llm,
    guard_stream,
    llm_errors,
    with_options,
)
from gl_retrieval.config import OllamaLLMConfig, OpenAILikeLLMConfig, parse_config
from gl_retrieval.errors import (
    ConfigError,
    LLMError,
    MissingDependencyError,
    OllamaError,
    QueryError,
)
from tests.ollama_server import closed_port
from tests.openai_server import FakeOpenAI

CHAT = "/v1/chat/completions"
MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer from the numbered sources."),
    ChatMessage(
        role=MessageRole.USER,
        content="Sources:\n[1] Cross-encoders read the query and passage together.\n\n"
        "Question: what does a cross-encoder do?",
    ),
]
ANSWER = "According to [1], Cross-encoders read the query and passage together."


def cfg(base_url: str, **changes: Any) -> OpenAILikeLLMConfig:
    values: dict[str, Any] = {
        "provider": "openai_like",
        "model": "local-model",
        "base_url": base_url,
        "max_retries": 0,
        **changes,
    }
    return OpenAILikeLLMConfig(**values)


def raised(llm: Any, call: Any, kind: type[Exception] = LLMError) -> str:
    """Run ``call`` inside llm_errors and return the one-line message it raised."""
    with pytest.raises(kind) as info, llm_errors(llm, action="answer"):
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# -- talking to the server ------------------------------------------------------------------------


def test_chat_and_complete(openai_server: FakeOpenAI) -> None:
    llm = build_llm(cfg(openai_server.url))
    assert type(llm).__name__ == "OpenAILike"
    assert openai_server.requests == []  # building contacts nothing

    assert llm.chat(MESSAGES).message.content == ANSWER
    assert llm.complete("hello there").text == "You said: hello there"

    sent = openai_server.requests_to(CHAT)
    assert len(sent) == 2
    assert sent[0].body["model"] == "local-model"
    assert sent[0].body["temperature"] == 0.1
    assert "max_tokens" not in sent[0].body
    assert not sent[0].body.get("stream")
    assert [m["role"] for m in sent[0].body["messages"]] == ["system", "user"]


def test_stream_chat_yields_deltas(openai_server: FakeOpenAI) -> None:
    llm = build_llm(cfg(openai_server.url))
    chunks = list(llm.stream_chat(MESSAGES))
    deltas = [c.delta for c in chunks]
    assert len(deltas) > 3
    assert "".join(deltas) == ANSWER
    assert chunks[-1].message.content == ANSWER
    assert openai_server.requests_to(CHAT)[0].body["stream"] is True


def test_async_stream_chat(openai_server: FakeOpenAI) -> None:
    llm = build_llm(cfg(openai_server.url))

    async def run() -> list[str]:
        stream = await llm.astream_chat(MESSAGES)
        return [c.delta async for c in aguard_stream(stream, llm=llm)]

    assert "".join(asyncio.run(run())) == ANSWER


def test_completion_endpoint_when_not_a_chat_model(openai_server: FakeOpenAI) -> None:
    llm = build_llm(cfg(openai_server.url, is_chat_model=False, max_tokens=50))
    assert llm.complete("hello").text == "You said: hello"
    (sent,) = openai_server.requests_to("/v1/completions")
    assert sent.body["max_tokens"] == 50
    assert openai_server.requests_to(CHAT) == []


def test_build_from_a_mapping_and_metadata(openai_server: FakeOpenAI) -> None:
    llm = build_llm(
        {"provider": "openai_like", "model": "local-model", "base_url": openai_server.url + "/"}
    )
    assert llm.api_base == openai_server.url  # trailing slash dropped
    meta = llm.metadata
    assert (meta.context_window, meta.is_chat_model, meta.model_name) == (
        8192,
        True,
        "local-model",
    )
    assert llm.timeout == 120.0


# -- keys ---------------------------------------------------------------------------------------


def test_api_key_is_sent_as_bearer(openai_server: FakeOpenAI) -> None:
    openai_server.api_key = "sk-local-1"
    llm = build_llm(cfg(openai_server.url, api_key="sk-local-1"))
    assert llm.chat(MESSAGES).message.content == ANSWER
    assert openai_server.requests[-1].authorization == "Bearer sk-local-1"


def test_api_key_env_is_sent_as_bearer(
    openai_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    openai_server.api_key = "sk-from-env"
    monkeypatch.setenv("MY_LLM_KEY", "sk-from-env")
    llm = build_llm(cfg(openai_server.url, api_key_env="MY_LLM_KEY"))
    assert llm.complete("hi").text == "You said: hi"
    assert openai_server.requests[-1].authorization == "Bearer sk-from-env"


def test_no_key_never_sends_openai_api_key(
    openai_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-meant-for-openai")
    llm = build_llm(cfg(openai_server.url))
    llm.complete("hi")
    assert openai_server.requests[-1].authorization == f"Bearer {NO_API_KEY}"


def test_api_key_env_unset_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_LLM_KEY") as info:
        build_llm(cfg("http://127.0.0.1:8000/v1", api_key_env="MY_LLM_KEY"))
    assert "export MY_LLM_KEY=" in str(info.value)


def test_the_key_is_never_printed() -> None:
    c = cfg("http://127.0.0.1:8000/v1", api_key="sk-secret-123")
    assert "sk-secret-123" not in repr(c) + str(c) + str(c.model_dump(mode="json"))
    with pytest.raises(ConfigError) as info:
        parse_config({"llm": {**c.model_dump(mode="json"), "api_key": ["sk-secret-123"]}})
    assert "sk-secret-123" not in str(info.value)


# -- one-line errors ------------------------------------------------------------------------------


def test_wrong_key_is_one_line(openai_server: FakeOpenAI) -> None:
    openai_server.api_key = "sk-right"
    llm = build_llm(cfg(openai_server.url, api_key="sk-wrong"))
    message = raised(llm, lambda: llm.chat(MESSAGES))
    assert message == (
        f"the OpenAI-compatible server at {openai_server.url} refused the API key (HTTP 401): "
        "check the key llm.api_key_env (or llm.api_key) gives"
    )
    keyless = build_llm(cfg(openai_server.url))
    assert "set llm.api_key_env" in raised(keyless, lambda: keyless.complete("hi"))


def test_unknown_model_is_one_line(openai_server: FakeOpenAI) -> None:
    llm = build_llm(cfg(openai_server.url, model="no-such-model"))
    message = raised(llm, lambda: llm.chat(MESSAGES))
    assert message == (
        f"the OpenAI-compatible server at {openai_server.url} has no model 'no-such-model': "
        f"set llm.model to one that GET {openai_server.url}/models lists"
    )


def test_base_url_without_v1_is_one_line(openai_server: FakeOpenAI) -> None:
    root = openai_server.url.removesuffix("/v1")
    llm = build_llm(cfg(root))
    message = raised(llm, lambda: llm.chat(MESSAGES))
    assert message == (
        f"the OpenAI-compatible server at {root} answered 404 for /chat/completions: "
        "check llm.base_url (it usually ends in /v1)"
    )


def test_server_down_is_one_line() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = build_llm(cfg(url))
    message = raised(llm, lambda: llm.chat(MESSAGES))
    assert message.startswith(f"cannot connect to the OpenAI-compatible server at {url}: ")
    assert "llm.base_url" in message


def test_timeout_is_one_line(openai_server: FakeOpenAI) -> None:
    openai_server.hang_next(5.0)
    llm = build_llm(cfg(openai_server.url, timeout_s=0.3))
    start = time.perf_counter()
    message = raised(llm, lambda: llm.chat(MESSAGES))
    assert time.perf_counter() - start < 3
    assert message == (
        f"the OpenAI-compatible server at {openai_server.url} did not answer within 0.3 s "
        "(request timed out): check the server's load and logs, or raise llm.timeout_s"
    )


def test_server_error_is_one_line(openai_server: FakeOpenAI) -> None:
    openai_server.fail_next(status=500, message="CUDA out of memory.\nTraceback: ...")
    llm = build_llm(cfg(openai_server.url))
    message = raised(llm, lambda: llm.chat(MESSAGES))
    assert message == (
        f"the OpenAI-compatible server at {openai_server.url} failed to answer with model "
        "'local-model': CUDA out of memory. Traceback: ... (HTTP 500)"
    )


def test_errors_while_iterating_a_stream(openai_server: FakeOpenAI) -> None:
    llm = build_llm(cfg(openai_server.url, model="no-such-model"))
    with pytest.raises(LLMError, match="has no model 'no-such-model'"):
        list(guard_stream(llm.stream_chat(MESSAGES), llm=llm))

    llm = build_llm(cfg(openai_server.url))
    openai_server.break_stream_next(after=2)
    seen: list[str] = []
    with pytest.raises(LLMError) as info:
        for chunk in guard_stream(llm.stream_chat(MESSAGES), llm=llm):
            seen.append(chunk.delta)
    assert seen and "".join(seen) != ANSWER
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"the OpenAI-compatible server at {openai_server.url} dropped the connection"
    )

    # Iterating inside the block works as well as the wrapper.
    openai_server.hang_next(5.0)
    slow = build_llm(cfg(openai_server.url, timeout_s=0.3))
    assert "did not answer within 0.3 s" in raised(slow, lambda: list(slow.stream_chat(MESSAGES)))


def test_async_errors_are_one_line(openai_server: FakeOpenAI) -> None:
    llm = build_llm(cfg(openai_server.url, model="no-such-model"))

    async def run() -> None:
        # One event loop: the LLM's async client stays bound to the loop it first ran on.
        with pytest.raises(LLMError, match="has no model 'no-such-model'"):
            async with llm_errors(llm):
                await llm.achat(MESSAGES)
        with pytest.raises(LLMError, match="has no model 'no-such-model'"):
            async for _ in aguard_stream(await llm.astream_chat(MESSAGES), llm=llm):
                pass

    asyncio.run(run())


def test_ollama_failures_stay_ollama_errors() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    llm = build_llm(OllamaLLMConfig(base_url=url, timeout_s=5))
    message = raised(llm, lambda: llm.chat(MESSAGES), kind=OllamaError)
    assert message.startswith(f"cannot connect to Ollama at {url}: ")
    assert "llm.base_url" in message


def test_other_llms_pass_through() -> None:
    with pytest.raises(RuntimeError, match="mine"), llm_errors(MockLLM()):
        raise RuntimeError("mine")


# -- per-request options --------------------------------------------------------------------------


def test_with_options_copies_openai_like(openai_server: FakeOpenAI) -> None:
    shared = build_llm(cfg(openai_server.url))
    tuned = with_options(shared, temperature=0.7, max_tokens=7)
    assert tuned is not shared
    assert (tuned.temperature, tuned.max_tokens) == (0.7, 7)
    assert (shared.temperature, shared.max_tokens) == (0.1, None)
    tuned.complete("hi")
    shared.complete("hi")
    first, second = openai_server.requests_to(CHAT)
    assert (first.body["temperature"], first.body["max_tokens"]) == (0.7, 7)
    assert second.body["temperature"] == 0.1
    assert "max_tokens" not in second.body
    assert with_options(shared) is shared


def test_with_options_copies_ollama(ollama_server: Any) -> None:
    shared = build_llm(OllamaLLMConfig(base_url=ollama_server.url))
    tuned = with_options(shared, temperature=0.0, max_tokens=32)
    assert (tuned.temperature, tuned.additional_kwargs) == (0.0, {"num_predict": 32})
    assert (shared.temperature, shared.additional_kwargs) == (0.1, {})
    with llm_errors(tuned):
        assert tuned.chat(MESSAGES).message.content == ANSWER
    shared.chat(MESSAGES)
    first, second = (r.body["options"] for r in ollama_server.requests_to("/api/chat"))
    assert (first["temperature"], first["num_predict"]) == (0.0, 32)
    assert second["temperature"] == 0.1
    assert "num_predict" not in second


def test_with_options_on_other_llms_and_bad_values() -> None:
    mock = MockLLM(max_tokens=5)
    assert with_options(mock, max_tokens=2).max_tokens == 2
    assert mock.max_tokens == 5
    assert with_options(mock, temperature=0.5) is mock  # no such field: left out
    with pytest.raises(QueryError, match="temperature must be between 0 and 2, but got 3"):
        with_options(mock, temperature=3)
    with pytest.raises(QueryError, match="max_tokens must be > 0, but got 0"):
        with_options(mock, max_tokens=0)


# -- config ---------------------------------------------------------------------------------------


def test_both_keys_is_a_config_error() -> None:
    llm = {"provider": "openai_like", "model": "m", "base_url": "http://h/v1"}
    with pytest.raises(ConfigError) as info:
        parse_config({"llm": {**llm, "api_key": "a", "api_key_env": "B"}})
    assert str(info.value) == (
        "<config>: invalid config: llm: api_key and api_key_env are both set: keep one "
        "(api_key_env keeps the key out of the file)"
    )


def test_unknown_provider_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"llm": {"provider": "openai", "model": "gpt-4o"}})
    assert "llm.provider: expected one of 'ollama', 'openai_like' (got 'openai')" in str(info.value)
    assert PROVIDERS == ("ollama", "openai_like")
    with pytest.raises(
        ConfigError, match=r"llm\.provider: expected one of 'ollama', 'openai_like'"
    ):
        build_llm({"provider": "anthropic"})


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"base_url": "localhost:8000"}, "llm.base_url"),
        ({"base_url": "ftp://h/v1"}, "llm.base_url"),
        ({"model": ""}, "llm.model"),
        ({"temperature": 2.5}, "llm.temperature"),
        ({"max_tokens": 0}, "llm.max_tokens"),
        ({"context_window": 0}, "llm.context_window"),
        ({"api_key_env": "NOT A NAME"}, "llm.api_key_env"),
        ({"timeout": 5}, "llm.timeout"),
    ],
)
def test_openai_like_values_are_checked(changes: dict[str, Any], key: str) -> None:
    llm = {"provider": "openai_like", "model": "m", "base_url": "http://h/v1", **changes}
    with pytest.raises(ConfigError, match=key):
        parse_config({"llm": llm})


def test_llm_config_round_trips() -> None:
    data = {
        "llm": {
            "provider": "openai_like",
            "model": "m",
            "base_url": "http://h:8000/v1",
            "api_key_env": "K",
            "max_tokens": 256,
            "is_chat_model": False,
        }
    }
    c = parse_config(data)
    assert isinstance(c.llm, OpenAILikeLLMConfig)
    assert parse_config(c.model_dump(mode="json")) == c
    assert isinstance(parse_config({"llm": {}}).llm, OllamaLLMConfig)  # ollama stays the default


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_index.llms.openai_like", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'gl-retrieval\[openai-like\]'"):
        build_llm(cfg("http://127.0.0.1:8000/v1"))


def test_models_pull_leaves_an_openai_like_server_alone() -> None:
    from gl_retrieval.models.weights import configured_models

    llm = {"provider": "openai_like", "model": "qwen2.5-7b", "base_url": "http://h:8000/v1"}
    cfg = parse_config({"embedder": {"model": "packaged:all-MiniLM-L6-v2"}, "llm": llm})
    assert [m.role for m in configured_models(cfg)] == ["embedder"]
