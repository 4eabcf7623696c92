"""The answering LLM from config or code: a closed registry, per-request options, one-line errors.

:func:`build_llm` turns the ``llm`` section into a LlamaIndex ``LLM`` (Ollama, or any server that
speaks OpenAI's API through ``llama-index-llms-openai-like``); nothing is contacted until the
first call, and LlamaIndex's global ``Settings`` is never read or set. :func:`with_options`
gives a per-request copy (temperature, max tokens) without touching the shared LLM.
:func:`llm_errors` turns a server's failures (down, 401, no such model, timeout) into one line
that names the URL and the fix, for plain calls and, with :func:`guard_stream` /
:func:`aguard_stream`, for streams whose errors surface while they are iterated.

Example:
    >>> from gl_retrieval.config import OpenAILikeLLMConfig
    >>> cfg = OpenAILikeLLMConfig(
    ...     provider="openai_like", model="qwen2.5-7b", base_url="http://127.0.0.1:8000/v1"
    ... )
    >>> llm = build_llm(cfg)
    >>> llm.api_base, llm.metadata.context_window, llm.metadata.is_chat_model
    ('http://127.0.0.1:8000/v1', 8192, True)
    >>> with_options(llm, temperature=0.7).temperature, llm.temperature
    (0.7, 0.1)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from gl_retrieval._deps import require
from gl_retrieval.config.schema import OllamaLLMConfig, OpenAILikeLLMConfig
from gl_retrieval.errors import ConfigError, LLMError, QueryError
from gl_retrieval.ollama.client import translate_ollama_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Iterable

    from llama_index.core.llms import LLM

__all__ = [
    "NO_API_KEY",
    "PROVIDERS",
    "aguard_stream",
    "build_llm",
    "guard_stream",
    "llm_errors",
    "translate_llm_error",
    "with_options",
]

T = TypeVar("T")

#: Sent as the key when none is configured (what vLLM's docs use); ``$OPENAI_API_KEY`` is never
#: read, so a key meant for OpenAI cannot leak to another server.
NO_API_KEY = "EMPTY"
_MESSAGE_CHARS = 300  # longest server message quoted in an error
# class_name() of the LlamaIndex LLM classes whose failures are translated here.
_OLLAMA = "Ollama_llm"
_OPENAI = ("OpenAILike", "openai_llm")


# -- building -------------------------------------------------------------------------------------


def _build_ollama(cfg: OllamaLLMConfig) -> LLM:
    from gl_retrieval.ollama.llm import build_ollama_llm

    return build_ollama_llm(
        model=cfg.model,
        base_url=cfg.base_url,
        timeout_s=cfg.timeout_s,
        temperature=cfg.temperature,
    )


def _api_key(cfg: OpenAILikeLLMConfig) -> str:
    if cfg.api_key is not None:
        return cfg.api_key.get_secret_value()
    if cfg.api_key_env is not None:
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"llm.api_key_env names {cfg.api_key_env}, but that environment variable is "
                f"not set or empty: export {cfg.api_key_env}=<key>, or drop llm.api_key_env if "
                f"the server at {cfg.base_url} needs no key"
            )
        return key
    return NO_API_KEY


def _build_openai_like(cfg: OpenAILikeLLMConfig) -> LLM:
    module = require(
        "llama_index.llms.openai_like",
        extra="openai-like",
        package="llama-index-llms-openai-like",
    )
    return module.OpenAILike(
        model=cfg.model,
        api_base=cfg.base_url,
        api_key=_api_key(cfg),
        timeout=cfg.timeout_s,
        max_retries=cfg.max_retries,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        context_window=cfg.context_window,
        is_chat_model=cfg.is_chat_model,
        is_function_calling_model=False,
    )


#: The closed registry: ``llm.provider`` -> builder. No class is ever loaded by name.
_BUILDERS: dict[str, Callable[[Any], LLM]] = {
    "ollama": _build_ollama,
    "openai_like": _build_openai_like,
}
PROVIDERS: tuple[str, ...] = tuple(_BUILDERS)


def build_llm(cfg: OllamaLLMConfig | OpenAILikeLLMConfig | Mapping[str, Any]) -> LLM:
    """Build the LlamaIndex LLM the ``llm`` section describes; nothing is contacted yet.

    Args:
        cfg: An :class:`~gl_retrieval.config.OllamaLLMConfig` or
            :class:`~gl_retrieval.config.OpenAILikeLLMConfig`, or the same as a mapping (as in
            YAML: ``{"provider": "openai_like", "model": ..., "base_url": ...}``).

    Returns:
        ``llama_index.llms.ollama.Ollama`` or ``llama_index.llms.openai_like.OpenAILike``.

    Raises:
        ConfigError: The mapping is invalid, the provider unknown, or ``api_key_env`` names an
            unset variable.
        MissingDependencyError: ``llama-index-llms-openai-like`` is not installed (the
            ``[openai-like]`` extra).

    Example:
        >>> llm = build_llm({"provider": "ollama", "model": "llama3.2", "base_url": "gpu-box"})
        >>> type(llm).__name__, llm.base_url
        ('Ollama', 'http://gpu-box:11434')
    """
    if isinstance(cfg, Mapping):
        from gl_retrieval.config.loader import parse_config

        llm_cfg = parse_config({"llm": dict(cfg)}, source="build_llm").llm
        if llm_cfg is None:  # pragma: no cover - a mapping always yields a section
            raise ConfigError("llm: expected a mapping with a provider")
        cfg = llm_cfg
    builder = _BUILDERS.get(getattr(cfg, "provider", ""))
    if builder is None:
        raise ConfigError(
            f"llm.provider must be one of {', '.join(PROVIDERS)}, but got "
            f"{getattr(cfg, 'provider', type(cfg).__name__)!r}"
        )
    return builder(cfg)


# -- per-request options --------------------------------------------------------------------------


def with_options(
    llm: LLM, *, temperature: float | None = None, max_tokens: int | None = None
) -> LLM:
    """A copy of ``llm`` with per-request options; ``llm`` itself is never changed.

    Ollama gets ``temperature`` and ``num_predict`` (its name for max tokens); OpenAI-compatible
    LLMs and any other LLM with ``temperature`` / ``max_tokens`` fields get those. An option the
    LLM has no field for is left out. With no options, ``llm`` itself is returned. The copy
    shares the HTTP client, so it costs no new connection.

    Args:
        llm: The shared LLM.
        temperature: Sampling temperature, 0..2; ``None`` keeps the LLM's.
        max_tokens: Most tokens in the answer, > 0; ``None`` keeps the LLM's.

    Returns:
        The copy (or ``llm`` when nothing changes).

    Raises:
        QueryError: An option is out of range.

    Example:
        >>> from gl_retrieval.ollama.llm import build_ollama_llm
        >>> shared = build_ollama_llm(model="llama3.2", temperature=0.1)
        >>> fast = with_options(shared, temperature=0.0, max_tokens=64)
        >>> fast.temperature, fast.additional_kwargs, shared.temperature, shared.additional_kwargs
        (0.0, {'num_predict': 64}, 0.1, {})
    """
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise QueryError(f"temperature must be between 0 and 2, but got {temperature!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens <= 0):
        raise QueryError(f"max_tokens must be > 0, but got {max_tokens!r}")
    fields = type(llm).model_fields
    update: dict[str, Any] = {}
    if temperature is not None and "temperature" in fields:
        update["temperature"] = float(temperature)
    if max_tokens is not None:
        if type(llm).class_name() == _OLLAMA:
            extra = dict(llm.additional_kwargs)  # type: ignore[attr-defined]
            update["additional_kwargs"] = {**extra, "num_predict": int(max_tokens)}
        elif "max_tokens" in fields:
            update["max_tokens"] = int(max_tokens)
    if not update:
        return llm
    return llm.model_copy(update=update)


# -- one-line errors ------------------------------------------------------------------------------


def _one_line(text: object) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 1] + "…"


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            return _one_line(inner.get("message") or inner.get("detail") or inner)
        return _one_line(body.get("message") or body.get("detail") or inner)
    return _one_line(getattr(exc, "message", "") or exc)


def _is_missing_model(exc: Any) -> bool:
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, Mapping) else None
    code = inner.get("code") if isinstance(inner, Mapping) else None
    if code == "model_not_found":
        return True
    return "model" in _server_message(exc).lower()


def translate_llm_error(
    exc: BaseException,
    *,
    base_url: str,
    model: str,
    timeout_s: float,
    keyed: bool = True,
    action: str = "answer",
) -> LLMError | None:
    """Map an exception from the ``openai`` client (or ``httpx`` under it) to one line.

    Args:
        exc: What the client raised.
        base_url: The server's API root, named in every message.
        model: The model asked for.
        timeout_s: The timeout in force (named in the timeout message).
        keyed: Whether a key was configured (the 401 message says what to set).
        action: What the call was doing, for the generic message ("answer", "condense").

    Returns:
        The error to raise (``from exc``), or ``None`` if ``exc`` is not a server failure.

    Example:
        >>> import httpx
        >>> err = translate_llm_error(
        ...     httpx.ReadTimeout("timed out"), base_url="http://h:8000/v1", model="m", timeout_s=5
        ... )
        >>> str(err).partition(" (request")[0]
        'the OpenAI-compatible server at http://h:8000/v1 did not answer within 5 s'
    """
    import httpx
    import openai

    where = f"the OpenAI-compatible server at {base_url}"
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
        return LLMError(
            f"{where} did not answer within {timeout_s:g} s (request timed out): check the "
            "server's load and logs, or raise llm.timeout_s"
        )
    if isinstance(exc, openai.APIConnectionError) and (
        exc.__cause__ is None or isinstance(exc.__cause__, httpx.ConnectError)
    ):
        return LLMError(
            f"cannot connect to {where}: start it (e.g. `vllm serve <model>` or llama.cpp's "
            "`llama-server`), or point llm.base_url at the machine that runs it"
        )
    if isinstance(exc, httpx.ConnectError):
        return LLMError(
            f"cannot connect to {where}: start it, or point llm.base_url at the machine that "
            "runs it"
        )
    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
        cause = exc.__cause__ or exc
        return LLMError(
            f"{where} dropped the connection for model {model!r}: "
            f"{type(cause).__name__}: {_one_line(cause)}"
        )
    if isinstance(exc, openai.AuthenticationError):
        fix = (
            "check the key llm.api_key_env (or llm.api_key) gives"
            if keyed
            else "set llm.api_key_env (or llm.api_key) to the key it expects"
        )
        return LLMError(f"{where} refused the API key (HTTP 401): {fix}")
    if isinstance(exc, openai.NotFoundError):
        if _is_missing_model(exc):
            return LLMError(
                f"{where} has no model {model!r}: set llm.model to one that "
                f"GET {base_url}/models lists"
            )
        return LLMError(
            f"{where} answered 404 for {exc.request.url.path}: check llm.base_url (it "
            "usually ends in /v1)"
        )
    if isinstance(exc, openai.APIStatusError):
        return LLMError(
            f"{where} failed to {action} with model {model!r}: {_server_message(exc)} "
            f"(HTTP {exc.status_code})"
        )
    if isinstance(exc, openai.APIError):  # e.g. an error event in the middle of a stream
        return LLMError(f"{where} failed to {action} with model {model!r}: {_server_message(exc)}")
    return None


class _LLMErrors:
    """The context :func:`llm_errors` returns: ``with`` and ``async with`` alike."""

    def __init__(self, translate: Callable[[BaseException], Exception | None] | None) -> None:
        self._translate = translate

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or self._translate is None or not isinstance(exc, Exception):
            return False
        error = self._translate(exc)
        if error is None:
            return False
        raise error from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(kind, exc, tb)


def llm_errors(llm: LLM, *, action: str = "answer") -> _LLMErrors:
    """A context in which ``llm``'s server failures become one-line errors.

    OpenAI-compatible LLMs raise :class:`~gl_retrieval.errors.LLMError`, Ollama raises
    :class:`~gl_retrieval.errors.OllamaError`; each names the server's URL and the fix. Other
    LLMs (``MockLLM``, your own) pass through unchanged. Works with ``with`` and ``async with``;
    for a stream, iterate it inside the block or wrap it in :func:`guard_stream`.

    Args:
        llm: The LLM about to be called.
        action: What the call does, named in the generic message ("answer", "condense").

    Returns:
        A context manager (sync and async).

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> with llm_errors(MockLLM(), action="answer"):
        ...     print(MockLLM().complete("hi").text)
        hi
    """
    name = type(llm).class_name()
    if name == _OLLAMA:
        model, base_url = str(llm.model), str(llm.base_url)  # type: ignore[attr-defined]
        timeout_s = float(llm.request_timeout)  # type: ignore[attr-defined]

        def ollama(exc: BaseException) -> Exception | None:
            return translate_ollama_error(
                exc, model=model, base_url=base_url, timeout_s=timeout_s, setting_prefix="llm"
            )

        return _LLMErrors(ollama)
    if name in _OPENAI:
        model, base_url = str(llm.model), str(llm.api_base)  # type: ignore[attr-defined]
        timeout_s = float(llm.timeout)  # type: ignore[attr-defined]
        keyed = llm.api_key not in (NO_API_KEY, "", None)  # type: ignore[attr-defined]

        def openai_like(exc: BaseException) -> Exception | None:
            return translate_llm_error(
                exc,
                base_url=base_url,
                model=model,
                timeout_s=timeout_s,
                keyed=keyed,
                action=action,
            )

        return _LLMErrors(openai_like)
    return _LLMErrors(None)


def guard_stream(stream: Iterable[T], *, llm: LLM, action: str = "answer") -> Iterator[T]:
    """Iterate ``stream`` with :func:`llm_errors` around every step (and its start).

    Args:
        stream: E.g. ``llm.stream_chat(...)`` or a ``StreamingResponse.response_gen``.
        llm: The LLM producing the stream.
        action: As in :func:`llm_errors`.

    Yields:
        The stream's items, unchanged.

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> llm = MockLLM()
        >>> [r.delta for r in guard_stream(llm.stream_complete("a b"), llm=llm)]
        ['a', ' ', 'b']
    """
    guard = llm_errors(llm, action=action)
    with guard:
        iterator = iter(stream)
    try:
        while True:
            with guard:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item
    finally:  # closed early (a client went away): close the LLM's stream too, now
        close = getattr(iterator, "close", None)  # a generator has one; an iterator may not
        if close is not None:
            close()


async def aguard_stream(
    stream: AsyncIterable[T], *, llm: LLM, action: str = "answer"
) -> AsyncIterator[T]:
    """The async :func:`guard_stream`, for ``astream_chat`` and friends.

    Args:
        stream: An async iterable of chunks.
        llm: The LLM producing the stream.
        action: As in :func:`llm_errors`.

    Yields:
        The stream's items, unchanged.
    """
    guard = llm_errors(llm, action=action)
    async with guard:
        iterator = stream.__aiter__()
    while True:
        async with guard:
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return
        yield item
