"""Embeddings from an Ollama server (``POST /api/embed``), batched, checked and fail-fast.

What this adds over LlamaIndex's stock ``OllamaEmbedding``:

* documents go to the server ``batch_size`` at a time, never one request per chunk;
* every request has a timeout (the stock client has none: a hung server hangs ingest forever);
* a missing model, a server that is down, a timeout and a wrong answer (vector count or
  dimension) each raise one clear error instead of a traceback or a silently broken index;
* transient failures (HTTP 5xx, dropped connections) are retried with exponential backoff;
* nothing is truncated silently: requests say ``truncate: false``, lengths are checked against
  ``num_ctx`` before sending when a local tokenizer is configured, and when the server refuses a
  batch as too long the offending input is found (by bisection) and named.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from gl_retrieval._deps import require
from gl_retrieval._progress import make_bar
from gl_retrieval.embedders.base import GLEmbedding
from gl_retrieval.errors import ConfigError, EmbeddingError, ModelLoadError, OllamaError
from gl_retrieval.ollama.client import (
    connection_refused_error,
    is_context_length_error,
    missing_model_error,
    resolve_base_url,
    timeout_error,
)

if TYPE_CHECKING:
    import ollama
    import tokenizers

__all__ = ["DEFAULT_NUM_CTX", "OllamaEmbedder"]

DEFAULT_NUM_CTX = 2048
"""Context assumed when ``num_ctx`` is not set: nomic-embed-text's trained context in Ollama."""

_ASSUMED_SPECIAL_TOKENS = 2  # [CLS] and [SEP] of BERT-family embedders, when no tokenizer says
_SNIPPET_CHARS = 60


class _InputTooLong(Exception):
    """Internal: the server refused a request because an input exceeds the context."""


class _Transient(Exception):
    """Internal: a failure worth retrying (HTTP 5xx, dropped connection)."""


class OllamaEmbedder(GLEmbedding):
    """Embeddings from a model served by Ollama, e.g. ``nomic-embed-text``.

    Construction makes no network call; :meth:`warmup` (or the first embed) checks the server
    and the model and learns the vector dimension.

    Example:
        >>> embedder = OllamaEmbedder(
        ...     model="nomic-embed-text",
        ...     base_url="http://localhost:11434",
        ...     query_prefix="search_query: ",
        ...     document_prefix="search_document: ",
        ... )
        >>> embedder.base_url
        'http://localhost:11434'
    """

    base_url: str = Field(description="Normalised server URL, e.g. 'http://localhost:11434'.")
    timeout_s: float = Field(description="Timeout of every HTTP request, in seconds.")
    keep_alive: str | float | None = Field(description="How long Ollama keeps the model loaded.")
    num_ctx: int | None = Field(description="Context length in tokens; None means 2048.")
    batch_size: int = Field(description="Inputs per /api/embed request.")
    max_retries: int = Field(description="Retries of a transient failure (5xx, dropped link).")
    backoff_s: float = Field(description="First retry delay; doubles on each retry.")
    tokenizer: str | None = Field(
        description="Local Hugging Face tokenizer (directory or tokenizer.json) matching the "
        "model, for counting tokens offline; None means lengths are checked by the server only."
    )

    _client: ollama.Client | None = PrivateAttr(default=None)
    _dimension: int | None = PrivateAttr(default=None)
    _tokenizer: tokenizers.Tokenizer | None = PrivateAttr(default=None)
    _special_tokens: int | None = PrivateAttr(default=None)
    _requests: int = PrivateAttr(default=0)

    def __init__(
        self,
        *,
        model: str = "nomic-embed-text",
        base_url: str | None = None,
        timeout_s: float = 60.0,
        keep_alive: str | float | None = "5m",
        num_ctx: int | None = None,
        batch_size: int = 64,
        query_prefix: str = "",
        document_prefix: str = "",
        normalize: bool = True,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        tokenizer: str | Path | None = None,
    ) -> None:
        """Configure the embedder; nothing is contacted yet.

        Args:
            model: Ollama model name, e.g. ``"nomic-embed-text"``.
            base_url: Server URL or ``host[:port]``; ``None`` uses ``OLLAMA_HOST``, else
                ``http://localhost:11434``. ``0.0.0.0`` is reached on loopback.
            timeout_s: Timeout of every request, in seconds.
            keep_alive: How long Ollama keeps the model loaded after a request (``"5m"``).
            num_ctx: Context length the server is asked for, in tokens; ``None`` means 2048
                (nomic-embed-text's context). Inputs longer than this are refused, never cut.
            batch_size: Inputs per request.
            query_prefix: Prepended to queries (``"search_query: "`` for nomic).
            document_prefix: Prepended to documents (``"search_document: "`` for nomic).
            normalize: Return unit-length vectors (Ollama's ``/api/embed`` already does).
            max_retries: Retries of a transient failure before giving up.
            backoff_s: Delay before the first retry; doubled for each further retry.
            tokenizer: Local Hugging Face tokenizer of the model (a directory holding
                ``tokenizer.json``, or the file), e.g. bert-base-uncased for nomic-embed-text.
                Enables :meth:`count_tokens` and checking lengths before sending.

        Raises:
            ConfigError: A value is out of range or the address cannot be parsed.
        """
        if not model.strip():
            raise ConfigError("embedder.model must be an Ollama model name, but got ''")
        _check_positive("timeout_s", timeout_s)
        _check_positive("batch_size", batch_size)
        if batch_size > 2048:
            raise ConfigError(f"embedder.batch_size must be <= 2048, but got {batch_size}")
        if num_ctx is not None:
            _check_positive("num_ctx", num_ctx)
        if max_retries < 0:
            raise ConfigError(f"embedder.max_retries must be >= 0, but got {max_retries}")
        if backoff_s < 0:
            raise ConfigError(f"embedder.backoff_s must be >= 0, but got {backoff_s}")
        super().__init__(
            provider="ollama",
            model_name=model,
            base_url=resolve_base_url(base_url, setting="embedder.base_url"),
            timeout_s=float(timeout_s),
            keep_alive=keep_alive,
            num_ctx=num_ctx,
            batch_size=batch_size,
            embed_batch_size=batch_size,
            query_prefix=query_prefix,
            document_prefix=document_prefix,
            normalize=normalize,
            max_retries=max_retries,
            backoff_s=float(backoff_s),
            tokenizer=None if tokenizer is None else str(tokenizer),
        )

    @classmethod
    def class_name(cls) -> str:
        return "GLOllamaEmbedder"

    # -- properties --------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The Ollama model name."""
        return self.model_name

    @property
    def context_length(self) -> int:
        """Context the server is asked for (``num_ctx``, or 2048 when unset), in tokens."""
        return self.num_ctx if self.num_ctx is not None else DEFAULT_NUM_CTX

    @property
    def requests_sent(self) -> int:
        """Number of ``/api/embed`` requests sent so far (retries included)."""
        return self._requests

    @property
    def dimension(self) -> int:
        """Vector dimension, learnt from the server (one tiny embed if nothing was sent yet)."""
        if self._dimension is None:
            self.warmup()
        if self._dimension is None:  # pragma: no cover - warmup always sets it or raises
            raise EmbeddingError(f"Ollama at {self.base_url} returned no embedding dimension")
        return self._dimension

    @property
    def max_tokens(self) -> int:
        """Longest input (prefix included, special tokens excluded) that fits ``num_ctx``."""
        special = self._special_tokens
        if special is None:
            special = _ASSUMED_SPECIAL_TOKENS if self.tokenizer is None else self._specials()
        return self.context_length - special

    def close(self) -> None:
        """Close the HTTP connection pool (a later request opens a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- GLEmbedding contract ----------------------------------------------------------------

    def warmup(self) -> None:
        """Check the server and the model with one tiny embed, and learn the dimension.

        Raises:
            OllamaError: The server is down, timed out, or lacks the model.
            EmbeddingError: The answer is unusable.
        """
        self._encode(["warmup"], show_progress=False)

    def fingerprint(self) -> dict[str, Any]:
        """What produces the vectors; the server address is deliberately not part of it."""
        return {
            "provider": "ollama",
            "model": self.model_name,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "normalize": self.normalize,
            "dimension": self.dimension,
            "num_ctx": self.context_length,
        }

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Token counts (special tokens excluded) with the local tokenizer, or None without one.

        Raises:
            ModelLoadError: The configured tokenizer cannot be loaded.
        """
        if self.tokenizer is None:
            return None
        tok = self._load_tokenizer()
        return [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    def check_lengths(self, texts: Sequence[str], *, ids: Sequence[str] | None = None) -> None:
        """Refuse document chunks that would not fit ``num_ctx`` once the prefix is added.

        Counts offline with the configured ``tokenizer``; without one there is nothing to count
        with and this returns (the server still refuses over-long inputs and
        :meth:`embed_documents` then names them).

        Args:
            texts: Raw chunk texts, as they will be passed to :meth:`embed_documents`.
            ids: One id per text (e.g. node or document ids), named in the error.

        Raises:
            EmbeddingError: At least one chunk is too long; names each (up to five) and by how
                many tokens it is over.
            ConfigError: ``ids`` and ``texts`` differ in length.
        """
        if ids is not None and len(ids) != len(texts):
            raise ConfigError(
                f"check_lengths got {len(texts)} texts but {len(ids)} ids: pass one id per text"
            )
        if self.tokenizer is None:
            return
        labels = (
            [f"chunk {i!r}" for i in ids]
            if ids is not None
            else [f"input #{i}" for i in range(len(texts))]
        )
        self._raise_if_too_long([self.document_prefix + t for t in texts], labels)

    def _encode(self, texts: Sequence[str], *, show_progress: bool) -> np.ndarray:
        texts = list(texts)
        if self.tokenizer is not None:
            self._raise_if_too_long(texts, [f"input #{i}" for i in range(len(texts))])
        starts = range(0, len(texts), self.batch_size)
        bar = make_bar(
            total=len(starts), desc=f"Ollama {self.model_name}", unit="batch", show=show_progress
        )
        parts: list[np.ndarray] = []
        try:
            for start in starts:
                batch = texts[start : start + self.batch_size]
                try:
                    vectors = self._embed_batch(batch)
                except _InputTooLong as e:
                    raise self._locate_too_long(batch, offset=start, cause=str(e)) from None
                parts.append(vectors)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        matrix = np.concatenate(parts) if parts else np.zeros((0, self.dimension), np.float32)
        if self.normalize:
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            matrix = matrix / np.where(norms == 0.0, 1.0, norms)
        return matrix.astype(np.float32, copy=False)

    # -- HTTP ----------------------------------------------------------------------------------

    def _get_client(self) -> ollama.Client:
        if self._client is None:
            ollama_mod = require("ollama", package="ollama")
            self._client = ollama_mod.Client(host=self.base_url, timeout=self.timeout_s)
        return self._client

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        """One ``/api/embed`` round trip with retries; returns a checked float32 matrix."""
        raw = self._request_with_retries(batch)
        if len(raw) != len(batch):
            raise EmbeddingError(
                f"Ollama at {self.base_url} returned {len(raw)} vectors for {len(batch)} inputs "
                f"(model {self.model_name!r}); refusing to build a misaligned index"
            )
        lengths = {len(v) for v in raw}
        if len(lengths) != 1:
            raise EmbeddingError(
                f"Ollama at {self.base_url} returned vectors of mixed dimensions "
                f"{sorted(lengths)} in one answer (model {self.model_name!r})"
            )
        (dim,) = lengths
        if self._dimension is None:
            self._dimension = dim
        elif dim != self._dimension:
            raise EmbeddingError(
                f"Ollama at {self.base_url} returned {dim}-dimensional vectors for model "
                f"{self.model_name!r}, but earlier answers had {self._dimension} dimensions: "
                "the model changed on the server; re-run with a fresh embedder and rebuild"
            )
        matrix = np.asarray(raw, dtype=np.float32)
        if not np.isfinite(matrix).all():
            raise EmbeddingError(
                f"Ollama at {self.base_url} returned NaN or infinite values for model "
                f"{self.model_name!r}"
            )
        return matrix

    def _request_with_retries(self, batch: list[str]) -> Sequence[Sequence[float]]:
        last: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._request(batch)
            except _Transient as e:
                last = e.__cause__ or e
        raise OllamaError(
            f"Ollama at {self.base_url} kept failing for model {self.model_name!r}: "
            f"{self.max_retries + 1} attempts, last error: {last}"
        ) from last

    def _request(self, batch: list[str]) -> Sequence[Sequence[float]]:
        """One request. Raises OllamaError (final), _Transient (retry) or _InputTooLong."""
        import httpx
        import ollama

        client = self._get_client()
        self._requests += 1
        try:
            response = client.embed(
                model=self.model_name,
                input=batch,
                truncate=False,
                options={"num_ctx": self.context_length},
                keep_alive=self.keep_alive,
            )
        except ollama.ResponseError as e:
            if is_context_length_error(str(e.error)):
                raise _InputTooLong(str(e.error)) from None
            if e.status_code == 404:
                raise missing_model_error(model=self.model_name, base_url=self.base_url) from None
            if e.status_code >= 500 or e.status_code == -1:
                raise _Transient() from e
            raise OllamaError(
                f"Ollama at {self.base_url} refused the embed request for model "
                f"{self.model_name!r}: {e.error} (HTTP {e.status_code})"
            ) from None
        except httpx.TimeoutException:
            raise timeout_error(
                base_url=self.base_url, timeout_s=self.timeout_s, setting="embedder.timeout_s"
            ) from None
        except (ConnectionResetError, ConnectionAbortedError, httpx.TransportError) as e:
            raise _Transient() from e
        except ConnectionError:
            # The ollama client raises the builtin ConnectionError for httpx.ConnectError
            # (refused, unknown host): retrying a server that is not there only wastes time.
            raise connection_refused_error(
                base_url=self.base_url, setting="embedder.base_url"
            ) from None
        return response.embeddings

    # -- over-long inputs ----------------------------------------------------------------------

    def _locate_too_long(self, batch: list[str], *, offset: int, cause: str) -> EmbeddingError:
        """The server refused ``batch`` as too long: bisect to the culprits and name them."""
        culprits: list[int] = []

        def search(lo: int, hi: int) -> None:
            if hi - lo == 1:
                culprits.append(lo)
                return
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                try:
                    self._request_with_retries(batch[a:b])
                except _InputTooLong:
                    search(a, b)

        search(0, len(batch))
        if not culprits:  # the server refused the whole but accepted every part
            return EmbeddingError(
                f"Ollama at {self.base_url} refused a batch of {len(batch)} inputs "
                f"(#{offset}..#{offset + len(batch) - 1}) as too long ({cause}) but accepted "
                f"each part alone: lower embedder.batch_size"
            )
        counts = self.count_tokens([batch[i] for i in culprits])
        details = []
        for k, i in enumerate(culprits[:5]):
            size = (
                f"{len(batch[i]):,} chars, over num_ctx={self.context_length} tokens"
                if counts is None
                else _over_by(counts[k], self.max_tokens, self.context_length)
            )
            details.append(f"input #{offset + i} {self._snippet(batch[i])} ({size})")
        more = f" and {len(culprits) - 5} more" if len(culprits) > 5 else ""
        hint = (
            "" if counts is not None else "; set embedder.tokenizer to count tokens before sending"
        )
        return EmbeddingError(
            f"Ollama at {self.base_url} refused {len(culprits)} input(s) longer than the "
            f"context of model {self.model_name!r}: {'; '.join(details)}{more}. Split them into "
            f"smaller chunks or raise embedder.num_ctx if the model supports it{hint}"
        )

    def _raise_if_too_long(self, texts: list[str], labels: list[str]) -> None:
        counts = self.count_tokens(texts)
        if counts is None:
            return
        limit = self.max_tokens
        bad = [i for i, n in enumerate(counts) if n > limit]
        if not bad:
            return
        details = [
            f"{labels[i]} {self._snippet(texts[i])} "
            f"({_over_by(counts[i], limit, self.context_length)})"
            for i in bad[:5]
        ]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise EmbeddingError(
            f"{len(bad)} input(s) do not fit the context of model {self.model_name!r} "
            f"(num_ctx={self.context_length} tokens, prefix and special tokens included): "
            f"{'; '.join(details)}{more}. Split them into smaller chunks or raise "
            "embedder.num_ctx if the model supports it"
        )

    def _snippet(self, text: str) -> str:
        """The start of an input as the caller wrote it (prefix removed), quoted."""
        for prefix in (self.document_prefix, self.query_prefix):
            if prefix and text.startswith(prefix):
                text = text[len(prefix) :]
                break
        flat = " ".join(text.split())
        return repr(flat[:_SNIPPET_CHARS] + ("…" if len(flat) > _SNIPPET_CHARS else ""))

    # -- tokenizer -----------------------------------------------------------------------------

    def _load_tokenizer(self) -> tokenizers.Tokenizer:
        if self._tokenizer is None:
            tokenizers_mod = require("tokenizers", package="tokenizers")
            path = Path(str(self.tokenizer))
            file = path / "tokenizer.json" if path.is_dir() else path
            if not file.is_file():
                raise ModelLoadError(
                    f"embedder.tokenizer must be a directory with tokenizer.json or the file "
                    f"itself, but {str(path)!r} has none: save the model's tokenizer there "
                    "(e.g. bert-base-uncased for nomic-embed-text) or unset embedder.tokenizer"
                )
            try:
                tok = tokenizers_mod.Tokenizer.from_file(str(file))
            except Exception as e:
                raise ModelLoadError(f"cannot load tokenizer {str(file)!r}: {e}") from e
            tok.no_truncation()
            tok.no_padding()
            self._special_tokens = len(tok.encode("", add_special_tokens=True).ids)
            self._tokenizer = tok
        return self._tokenizer

    def _specials(self) -> int:
        self._load_tokenizer()
        return int(self._special_tokens or 0)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"embedder.{name} must be > 0, but got {value!r}")


def _over_by(tokens: int, limit: int, num_ctx: int) -> str:
    special = num_ctx - limit
    return (
        f"{tokens:,} tokens + {special} special = {tokens + special:,} > "
        f"num_ctx={num_ctx}, {tokens - limit:,} over"
    )
