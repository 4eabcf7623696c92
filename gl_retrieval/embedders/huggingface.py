"""sentence-transformers bi-encoders (bge, e5, gte, MiniLM, ...): lazy, explicitly prefixed.

Why not LlamaIndex's ``HuggingFaceEmbedding``: it loads the model in ``__init__`` (so
construction is not cheap), guesses prompts from exact hub ids (and falls back to that guess when
a prefix is ``""``), retries failures with 4-10 s sleeps that hide the real error, and asks
sentence-transformers to normalise again on top of a model's own ``Normalize`` layer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from gl_retrieval._deps import require
from gl_retrieval._progress import make_bar
from gl_retrieval.embedders.base import GLEmbedding
from gl_retrieval.models import (
    apply_quiet,
    model_load_error,
    quiet_model_loads,
    resolve_model_path,
)
from gl_retrieval.models.devices import resolve_device
from gl_retrieval.models.runtimes import apply_torch_threads

__all__ = ["SentenceTransformerEmbedder", "encode_with_bar", "load_sentence_transformer"]

#: Batches per ``encode`` call while a bar is shown: the bar moves once per call.
BAR_BATCHES = 8


def load_sentence_transformer(
    model: str,
    *,
    device: str = "auto",
    revision: str | None = None,
    role: str = "embedder",
    threads: int | None = None,
) -> Any:
    """Load a ``SentenceTransformer`` from a hub id, local path or ``packaged:`` name.

    fp16 on CUDA (embedding quality is unchanged, throughput roughly doubles). ``threads`` sets
    torch's intra-op threads (``runtime.threads``).

    Raises:
        ModelLoadError: the model is not cached and the hub is unreachable, or the path is bad.
    """
    st = require("sentence_transformers", package="sentence-transformers")
    apply_quiet()
    if threads is not None:
        apply_torch_threads(threads)
    path = resolve_model_path(model, revision=revision, role=role)
    dev = resolve_device(device)
    try:
        with quiet_model_loads():  # no "Loading weights" bar in scripts and notebooks
            m = st.SentenceTransformer(path, device=dev, revision=revision, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise model_load_error(model, e, role=role) from e
    if dev == "cuda":
        m.half()
    return m


class SentenceTransformerEmbedder(GLEmbedding):
    """A sentence-transformers bi-encoder behind LlamaIndex's ``BaseEmbedding`` interface.

    Example:
        >>> emb = SentenceTransformerEmbedder(model="packaged:all-MiniLM-L6-v2")
        >>> emb.embed_queries(["what is BM25?"]).shape  # doctest: +SKIP
        (1, 384)
    """

    provider: str = "huggingface"
    model: str = Field(description="Hub id, local path or packaged: name.")
    revision: str | None = None
    device: str = "auto"
    threads: int | None = None
    max_length: int | None = None
    unpad: bool = Field(
        default=True,
        description="Pack a batch's tokens past the padding (BERT-family models; "
        "see gl_retrieval.embedders.unpadded).",
    )

    _st: Any = PrivateAttr(default=None)
    _unpadded: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    # Every use of the tokenizer outside encode() (see embedders.unpadded for why).
    _tok_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _model_normalizes: bool = PrivateAttr(default=False)
    _bulk: int | None = PrivateAttr(default=None)  # threads of a running bulk job

    def __init__(self, *, model: str, batch_size: int = 64, **data: Any) -> None:
        super().__init__(model=model, model_name=model, embed_batch_size=batch_size, **data)

    @classmethod
    def class_name(cls) -> str:
        return "GLSentenceTransformerEmbedder"

    # -- loading -------------------------------------------------------------------------------

    @property
    def st_model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loads it on first access)."""
        if self._st is None:
            with self._lock:
                if self._st is None:
                    m = load_sentence_transformer(
                        self.model,
                        device=self.device,
                        revision=self.revision,
                        threads=self._bulk if self._bulk is not None else self.threads,
                    )
                    if self.max_length is not None:
                        m.max_seq_length = self.max_length
                    normalize_cls = require("sentence_transformers.models").Normalize
                    self._model_normalizes = any(isinstance(mod, normalize_cls) for mod in m)
                    if self.unpad:
                        from gl_retrieval.embedders.unpadded import unpadded_plan

                        self._unpadded = unpadded_plan(m, lock=self._tok_lock)
                    self._st = m
        return self._st

    def warmup(self) -> None:
        """Load the model and run one tiny batch, so the first request pays nothing."""
        self._encode(["warmup"], show_progress=False)

    @contextlib.contextmanager
    def bulk_threads(self, threads: int) -> Iterator[None]:
        """torch runs with ``threads`` threads in the block (the model loads with them if it
        loads there), then with the query threads again. torch's setting is process-wide (see
        :func:`gl_retrieval.models.runtimes.torch_threads`). An embedder built without
        ``threads`` leaves torch's setting alone."""
        if self.threads is None:
            yield
            return
        self._bulk = threads
        if self._st is not None:
            apply_torch_threads(threads)
        try:
            yield
        finally:
            self._bulk = None
            if self._st is not None:
                apply_torch_threads(self.threads)

    # -- the contract --------------------------------------------------------------------------

    @property
    def unpadded(self) -> bool:
        """True when batches skip their padding (``unpad`` on and a BERT-family model), so that
        merging texts of different lengths into one call costs nothing extra."""
        self.st_model  # noqa: B018 - the plan is made when the model loads
        return self._unpadded is not None

    def _encode(self, texts: Sequence[str], *, show_progress: bool) -> np.ndarray:
        m = self.st_model
        if self._unpadded is not None:
            bar = make_bar(total=len(texts), desc="embedding", unit="text", show=show_progress)
            try:
                return self._unpadded.encode(
                    texts,
                    batch_size=self.embed_batch_size,
                    normalize=self.normalize,
                    progress=bar.update if bar is not None else None,
                )
            finally:
                if bar is not None:
                    bar.close()
        return encode_with_bar(
            m,
            texts,
            batch_size=self.embed_batch_size,
            # Normalise once: skip it when the model ends in its own Normalize layer.
            normalize=self.normalize and not self._model_normalizes,
            show_progress=show_progress,
        )

    @property
    def dimension(self) -> int:
        m = self.st_model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_tokens(self) -> int | None:
        # max_seq_length counts the [CLS]/[SEP] special tokens; chunks are measured without them.
        n = int(self.st_model.max_seq_length)
        return n - self._num_special_tokens()

    def _num_special_tokens(self) -> int:
        tok = self.st_model.tokenizer
        return len(tok("", add_special_tokens=True)["input_ids"])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        tok = self.st_model.tokenizer
        with self._tok_lock:
            enc = tok(
                list(texts),
                add_special_tokens=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        return [len(ids) for ids in enc["input_ids"]]

    def tokenize_fn(self) -> Any:
        """A ``str -> list[int]`` callable in the model's tokenizer (for LlamaIndex splitters)."""
        tok = self.st_model.tokenizer
        lock = self._tok_lock

        def encode(text: str) -> list[int]:
            with lock:
                return tok(text, add_special_tokens=False, verbose=False)["input_ids"]

        return encode

    def fingerprint(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "revision": self.revision,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "normalize": self.normalize,
            "dimension": self.dimension,
            "max_length": int(self.st_model.max_seq_length),
            "backend": "torch",
            "precision": "fp16" if str(self.st_model.device).startswith("cuda") else "fp32",
            **({"backend_choice": self.backend_choice} if self.backend_choice else {}),
        }


def encode_with_bar(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    normalize: bool,
    show_progress: bool | None,
) -> np.ndarray:
    """``SentenceTransformer.encode`` as a float32 matrix, with the package's progress bar.

    sentence-transformers' own bar is never asked for (it builds it with ``tqdm.autonotebook``).
    Without a bar this is one ``encode`` call. With one, the texts go longest first, as
    ``encode`` orders them itself, in runs of :data:`BAR_BATCHES` whole batches: the batches
    are those of one call (ties in length aside), and the bar moves after each run.
    """
    texts = list(texts)
    bar = make_bar(total=len(texts), desc="embedding", unit="text", show=show_progress)

    def encode(part: list[str]) -> np.ndarray:
        vecs = model.encode(
            part,
            batch_size=batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=normalize,
        )
        return np.asarray(vecs, dtype=np.float32)

    if bar is None:
        return encode(texts)
    try:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        run = max(1, int(batch_size)) * BAR_BATCHES
        parts: list[np.ndarray] = []
        for start in range(0, len(order), run):
            part = encode([texts[i] for i in order[start : start + run]])
            parts.append(part)
            bar.update(len(part))
        stacked = np.concatenate(parts)
        out = np.empty_like(stacked)
        out[order] = stacked  # back to the callers' order
        return out
    finally:
        bar.close()
