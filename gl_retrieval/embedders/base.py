"""The embedder contract every provider implements.

An embedder is a LlamaIndex ``BaseEmbedding`` (so it plugs into ``VectorStoreIndex`` and any
retriever) with a few guarantees on top:

* prefixes are applied here, explicitly, exactly once: ``query_prefix`` on queries,
  ``document_prefix`` on documents (see :mod:`gl_retrieval.config.presets`);
* vectors are normalised exactly once (by the model when it ends in a Normalize layer, else here);
* construction is cheap; the model or server connection is made on :meth:`warmup` or first use;
* :meth:`embed_documents` takes a whole corpus at once and returns one float32 matrix, so the
  provider can batch (and sort by length) across all of it, with a progress bar;
* :meth:`fingerprint` says what built the vectors; it goes into the index manifest.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field

__all__ = ["GLEmbedding"]


class GLEmbedding(BaseEmbedding):
    """Base class of gl_retrieval's embedders (a LlamaIndex ``BaseEmbedding``)."""

    provider: str = Field(description="Registry name of the provider, e.g. 'huggingface'.")
    query_prefix: str = Field(default="", description="Prepended to every query.")
    document_prefix: str = Field(default="", description="Prepended to every document chunk.")
    normalize: bool = Field(default=True, description="Return unit-length vectors.")
    backend_choice: dict[str, Any] | None = Field(
        default=None,
        description="How the runtime was chosen (``backend: auto``, gl_retrieval.models."
        "backend_choice): recorded in the manifest beside backend and precision.",
    )

    # -- what subclasses implement -------------------------------------------------------------

    @abstractmethod
    def warmup(self) -> None:
        """Load the model (or check the server) now, so the first request pays nothing."""

    @abstractmethod
    def _encode(self, texts: Sequence[str], *, show_progress: bool) -> np.ndarray:
        """Embed already-prefixed texts; return float32 ``(len(texts), dim)``, normalised iff
        ``self.normalize``."""

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Vector dimension (may load the model or ask the server once)."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of what produces the vectors, recorded in the manifest.

        Must contain at least ``provider``, ``model``, ``query_prefix``, ``document_prefix``,
        ``normalize`` and ``dimension``.
        """

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Token counts in the model's own tokenizer (without special tokens), or None if the
        provider has no local tokenizer."""
        return None

    @property
    def max_tokens(self) -> int | None:
        """Longest input the model embeds without truncating or refusing, if known."""
        return None

    @property
    def unpadded(self) -> bool:
        """True when a batch's padding costs no compute (the padding-free BERT forward of
        :mod:`gl_retrieval.embedders.unpadded`): callers need not split batches by length."""
        return False

    def bulk_threads(self, threads: int) -> contextlib.AbstractContextManager[None]:
        """A ``with`` block in which this embedder runs with ``threads`` intra-op threads (a bulk
        job: indexing), its query threads restored on exit. Default: nothing to set (a remote
        server's threads are its own)."""
        return contextlib.nullcontext()

    def check_lengths(self, texts: Sequence[str], *, ids: Sequence[str] | None = None) -> None:
        """Raise before indexing when a text is longer than the model takes and the provider
        would refuse or silently cut it (the Ollama embedder checks; the others truncate as
        their model does). ``ids`` name the texts in the message."""
        return None

    # -- the public, prefix-applying API -------------------------------------------------------

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed document chunks (document prefix applied) as one float32 matrix."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        prefixed = [self.document_prefix + t for t in texts]
        return self._encode(prefixed, show_progress=show_progress)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (query prefix applied) as one float32 matrix."""
        prefixed = [self.query_prefix + t for t in texts]
        return self._encode(prefixed, show_progress=False)

    def embed_raw(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts exactly as given, no prefix (the TEI ``/embed`` route's contract)."""
        return self._encode(list(texts), show_progress=False)

    # -- LlamaIndex's BaseEmbedding hooks, routed through the API above ------------------------

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.embed_queries([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.embed_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts).tolist()

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)
