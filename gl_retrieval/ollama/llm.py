"""The Ollama chat LLM: built from the config with a request timeout, its errors made one line.

Answers are written by :mod:`gl_retrieval.answers` (LlamaIndex's engines).

The LLM is always passed explicitly; LlamaIndex's global ``Settings.llm`` is never read or set.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from gl_retrieval._deps import require
from gl_retrieval.errors import ConfigError
from gl_retrieval.ollama.client import ollama_errors, resolve_base_url

if TYPE_CHECKING:
    from llama_index.core.llms import LLM
    from llama_index.llms.ollama import Ollama

__all__ = ["NO_SOURCES_ANSWER", "build_ollama_llm", "ollama_llm_errors"]

NO_SOURCES_ANSWER = "No relevant sources were found, so there is nothing to answer from."


def build_ollama_llm(
    *,
    model: str,
    base_url: str | None = None,
    timeout_s: float = 120.0,
    keep_alive: str | float | None = "5m",
    temperature: float | None = None,
    context_window: int | None = None,
) -> Ollama:
    """Build LlamaIndex's Ollama chat LLM with a request timeout; nothing is contacted yet.

    Args:
        model: Ollama model name, e.g. ``"llama3.2"``.
        base_url: Server URL or ``host[:port]``; ``None`` uses ``OLLAMA_HOST``, else
            ``http://localhost:11434``.
        timeout_s: Timeout of every request, in seconds.
        keep_alive: How long Ollama keeps the model loaded after a request.
        temperature: Sampling temperature; ``None`` keeps the model's default.
        context_window: Context in tokens; ``None`` asks the server (``/api/show``) on first use.

    Returns:
        A ``llama_index.llms.ollama.Ollama`` instance.

    Raises:
        MissingDependencyError: ``llama-index-llms-ollama`` is not installed.
        ConfigError: A value is out of range or the address cannot be parsed.

    Example:
        >>> llm = build_ollama_llm(model="llama3.2", base_url="localhost:11434", timeout_s=30)
        >>> llm.base_url, llm.request_timeout
        ('http://localhost:11434', 30.0)
    """
    if not model.strip():
        raise ConfigError("llm.model must be an Ollama model name, but got ''")
    if not timeout_s > 0:
        raise ConfigError(f"llm.timeout_s must be > 0, but got {timeout_s!r}")
    if context_window is not None and context_window <= 0:
        raise ConfigError(f"llm.context_window must be > 0, but got {context_window!r}")
    module = require("llama_index.llms.ollama", package="llama-index-llms-ollama")
    return module.Ollama(
        model=model,
        base_url=resolve_base_url(base_url, setting="llm.base_url"),
        request_timeout=float(timeout_s),
        keep_alive=keep_alive,
        temperature=temperature,
        context_window=-1 if context_window is None else context_window,
    )


def ollama_llm_errors(llm: LLM) -> AbstractContextManager[None]:
    """A context in which the Ollama client's failures become one-line ``OllamaError``.

    For an LLM that is not LlamaIndex's ``Ollama`` this is a no-op context.

    Args:
        llm: The LLM about to be called.

    Returns:
        A context manager.

    Example:
        >>> from llama_index.core.llms import MockLLM
        >>> with ollama_llm_errors(MockLLM()):
        ...     pass
    """
    if type(llm).class_name() != "Ollama_llm":
        return nullcontext()
    return ollama_errors(
        model=str(llm.model),  # type: ignore[attr-defined]
        base_url=str(llm.base_url),  # type: ignore[attr-defined]
        timeout_s=float(llm.request_timeout),  # type: ignore[attr-defined]
        setting_prefix="llm",
    )
