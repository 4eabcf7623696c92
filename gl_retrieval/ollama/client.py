"""What the Ollama embedder and the Ollama LLM share: the server address and the error mapping.

Both :mod:`gl_retrieval.embedders.ollama` and :mod:`gl_retrieval.ollama.llm` talk to an Ollama
server through the official ``ollama`` client (an ``httpx`` client underneath). This module
turns its host setting into one canonical URL and its exceptions into one-line
:class:`~gl_retrieval.errors.OllamaError` messages that say what failed, where, and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

from gl_retrieval.errors import ConfigError, OllamaError

__all__ = [
    "DEFAULT_OLLAMA_URL",
    "connection_refused_error",
    "is_context_length_error",
    "missing_model_error",
    "ollama_errors",
    "resolve_base_url",
    "timeout_error",
    "translate_ollama_error",
]

DEFAULT_OLLAMA_URL = "http://localhost:11434"
_DEFAULT_PORT = 11434
# Addresses a server binds to mean "every interface"; a client reaches them on loopback.
_BIND_ALL = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}


def resolve_base_url(base_url: str | None, *, setting: str = "base_url") -> str:
    """Turn a configured Ollama address (or ``OLLAMA_HOST``) into ``scheme://host:port[/path]``.

    Follows the Ollama server's own rules for ``OLLAMA_HOST``: no scheme means ``http`` on port
    11434; ``http://host`` means port 80 and ``https://host`` port 443. A bind-all address
    (``0.0.0.0``, ``::``), which is what ``OLLAMA_HOST`` holds on the machine running
    ``ollama serve`` for remote access, is reached on loopback.

    Args:
        base_url: The configured address; ``None`` or empty falls back to ``OLLAMA_HOST``, then
            to ``http://localhost:11434``.
        setting: The config key named in error messages.

    Returns:
        The normalised URL, without a trailing slash.

    Raises:
        ConfigError: The address cannot be parsed (e.g. a non-numeric port).

    Example:
        >>> resolve_base_url("0.0.0.0:11434")
        'http://127.0.0.1:11434'
        >>> resolve_base_url("gpu-box")
        'http://gpu-box:11434'
    """
    source = setting
    raw = (base_url or "").strip()
    if not raw:
        raw = os.environ.get("OLLAMA_HOST", "").strip()
        source = "the OLLAMA_HOST environment variable"
    if not raw:
        return DEFAULT_OLLAMA_URL

    scheme, sep, hostport = raw.partition("://")
    default_port = _DEFAULT_PORT
    if not sep:
        scheme, hostport = "http", raw
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    else:
        raise ConfigError(
            f"{source} must be an http(s) URL or host[:port], but got {raw!r}: "
            "use e.g. 'http://localhost:11434'"
        )
    split = urllib.parse.urlsplit(f"{scheme}://{hostport}")
    try:
        port = split.port or default_port
    except ValueError as e:
        raise ConfigError(
            f"{source} has an invalid port in {raw!r} ({e}): use e.g. 'localhost:11434'"
        ) from e
    host = split.hostname or "localhost"
    host = _BIND_ALL.get(host, host)
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass  # a host name, not an address
    path = split.path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


# -- error messages (one line each) -------------------------------------------------------------


def missing_model_error(*, model: str, base_url: str) -> OllamaError:
    """The error for a 404 'model not found' answer."""
    return OllamaError(
        f"Ollama at {base_url} has no model {model!r}: run `ollama pull {model}` "
        "on the machine serving it"
    )


def connection_refused_error(*, base_url: str, setting: str) -> OllamaError:
    """The error for a server that cannot be reached at all."""
    return OllamaError(
        f"cannot connect to Ollama at {base_url}: start it with `ollama serve`, or point "
        f"{setting} (or OLLAMA_HOST) at the machine that runs it"
    )


def timeout_error(*, base_url: str, timeout_s: float, setting: str) -> OllamaError:
    """The error for a request that got no answer within the timeout."""
    return OllamaError(
        f"Ollama at {base_url} did not answer within {timeout_s:g} s (request timed out): "
        f"check the server's load and logs, or raise {setting}"
    )


def is_context_length_error(message: str) -> bool:
    """Whether an Ollama error message says the input is longer than the model's context.

    Ollama >= 0.13.5 answers ``"the input length exceeds the context length"``; older versions,
    asked not to truncate, answered ``"input length exceeds maximum context length"``.
    """
    text = message.lower()
    return "exceeds" in text and "context length" in text


def translate_ollama_error(
    exc: BaseException,
    *,
    model: str,
    base_url: str,
    timeout_s: float,
    setting_prefix: str,
) -> OllamaError | None:
    """Map an exception from the ``ollama`` client to a one-line :class:`OllamaError`.

    Args:
        exc: What the client raised.
        model: The model asked for.
        base_url: The server asked.
        timeout_s: The timeout in force.
        setting_prefix: Config section named in hints, e.g. ``"embedder"`` or ``"llm"``.

    Returns:
        The error to raise (``from exc``), or ``None`` if ``exc`` is not an Ollama/HTTP failure.
    """
    import httpx
    import ollama

    if isinstance(exc, ollama.ResponseError):
        if exc.status_code == 404:
            return missing_model_error(model=model, base_url=base_url)
        return OllamaError(
            f"Ollama at {base_url} failed for model {model!r}: {exc.error} (HTTP {exc.status_code})"
        )
    if isinstance(exc, httpx.TimeoutException):
        return timeout_error(
            base_url=base_url, timeout_s=timeout_s, setting=f"{setting_prefix}.timeout_s"
        )
    if isinstance(exc, ConnectionError) and not isinstance(
        exc, (ConnectionResetError, ConnectionAbortedError)
    ):
        # The ollama client turns httpx.ConnectError into the builtin ConnectionError.
        return connection_refused_error(base_url=base_url, setting=f"{setting_prefix}.base_url")
    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return OllamaError(
            f"Ollama at {base_url} dropped the connection for model {model!r}: "
            f"{type(exc).__name__}: {exc}"
        )
    return None


@contextmanager
def ollama_errors(
    *, model: str, base_url: str, timeout_s: float, setting_prefix: str = "llm"
) -> Iterator[None]:
    """Re-raise Ollama client failures inside the block as one-line :class:`OllamaError`.

    Args:
        model: The model the block asks for.
        base_url: The server the block talks to.
        timeout_s: The timeout in force (named in the timeout message).
        setting_prefix: Config section named in hints, e.g. ``"llm"``.

    Raises:
        OllamaError: The server is down, lacks the model, timed out or answered an error.

    Example:
        >>> with ollama_errors(model="llama3.2", base_url="http://localhost:11434", timeout_s=60):
        ...     pass
    """
    try:
        yield
    except OllamaError:
        raise
    except Exception as e:
        error = translate_ollama_error(
            e, model=model, base_url=base_url, timeout_s=timeout_s, setting_prefix=setting_prefix
        )
        if error is None:
            raise
        raise error from e
