"""Bi-encoders run from an ONNX or OpenVINO export: no torch at query time.

The same model as :mod:`gl_retrieval.embedders.huggingface`, with the same tokenizer (its
``tokenizer.json``, through the ``tokenizers`` library), the same pooling and normalisation read
from the sentence-transformers files, the same ``max_seq_length`` and the same prefixes. Only
the runtime differs: onnxruntime or OpenVINO, fp32 or int8, on the CPU. The export is built once
and cached (:mod:`gl_retrieval.models.exports`); a process that finds it cached never imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from gl_retrieval._progress import make_bar
from gl_retrieval.embedders.base import GLEmbedding
from gl_retrieval.models.exports import ExportSpec, ensure_export, model_file, read_meta
from gl_retrieval.models.runtimes import FastTokenizer, Runner, load_runner, openvino_precision

__all__ = ["ExportedEmbedder", "pool"]

log = logging.getLogger("gl_retrieval")


def pool(hidden: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    """Pool token vectors ``(n, seq, dim)`` as sentence-transformers' Pooling module does."""
    if how == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(hidden.dtype)
    if how == "max":
        return np.where(m > 0, hidden, -1e9).max(axis=1)
    return (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)


class ExportedEmbedder(GLEmbedding):
    """A sentence-transformers bi-encoder run by onnxruntime or OpenVINO.

    Example:
        >>> emb = ExportedEmbedder(model="packaged:all-MiniLM-L6-v2", backend="onnx")
        >>> emb.embed_queries(["what is BM25?"]).shape  # doctest: +SKIP
        (1, 384)
    """

    provider: str = "huggingface"
    model: str = Field(description="Hub id, local path or packaged: name.")
    revision: str | None = None
    backend: str = "onnx"
    quantization: str = "none"
    threads: int = 1
    max_length: int | None = None

    _runner: Runner | None = PrivateAttr(default=None)
    _tok: FastTokenizer | None = PrivateAttr(default=None)
    _meta: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _bulk: int | None = PrivateAttr(default=None)  # threads of a running bulk job
    _bulk_runner: Runner | None = PrivateAttr(default=None)

    def __init__(self, *, model: str, batch_size: int = 64, **data: Any) -> None:
        super().__init__(model=model, model_name=model, embed_batch_size=batch_size, **data)

    @classmethod
    def class_name(cls) -> str:
        return "GLExportedEmbedder"

    @property
    def spec(self) -> ExportSpec:
        return ExportSpec(
            model=self.model,
            kind="embedder",
            backend=self.backend,  # type: ignore[arg-type]
            quantization=self.quantization,  # type: ignore[arg-type]
            revision=self.revision,
        )

    def _files(self) -> FastTokenizer:
        """The export (built first if none is cached), its tokenizer and meta; no session."""
        if self._tok is None:
            with self._lock:
                if self._tok is None:
                    export = ensure_export(self.spec, log=log.info)
                    meta = read_meta(export)
                    self._meta = meta
                    self._tok = FastTokenizer(
                        export / "tokenizer.json",
                        pad_id=meta["pad_id"],
                        input_names=meta["input_names"],
                    )
        return self._tok

    def _session(self, threads: int) -> Runner:
        return load_runner(
            self.backend,
            model_file(ensure_export(self.spec, log=log.info)),
            threads=threads,
            quantization=self.quantization,
        )

    def _load(self) -> tuple[Runner, FastTokenizer]:
        tok = self._files()
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = self._session(self.threads)
        return self._runner, tok

    def warmup(self) -> None:
        """Load (exporting first if nothing is cached) and embed one tiny batch."""
        self._encode(["warmup"], show_progress=False)

    @contextlib.contextmanager
    def bulk_threads(self, threads: int) -> Iterator[None]:
        """Embed with ``threads`` threads in the block. A runtime session's threads are fixed
        when it opens, so a second session of the same export opens on the block's first batch
        and is dropped on exit (the model's memory twice, for the job's duration)."""
        if threads == self.threads:
            yield
            return
        self._bulk = threads  # a job in a fresh process never opens the query session
        try:
            yield
        finally:
            with self._lock:
                self._bulk, self._bulk_runner = None, None

    def _runner_now(self) -> tuple[Runner, FastTokenizer]:
        """The bulk job's session while one runs, else the query session."""
        bulk = self._bulk
        if bulk is None:
            return self._load()
        tok = self._files()
        with self._lock:
            if self._bulk_runner is None:
                self._bulk_runner = self._session(bulk)
            return self._bulk_runner, tok

    @property
    def seq_length(self) -> int:
        self._files()
        return int(self.max_length or self._meta["max_length"])

    def _encode(self, texts: Sequence[str], *, show_progress: bool) -> np.ndarray:
        run, tok = self._runner_now()
        encs, _ = tok.encode(list(texts), max_length=self.seq_length)
        order = np.argsort([-len(e.ids) for e in encs], kind="stable")
        out = np.zeros((len(encs), self.dimension), dtype=np.float32)
        step = self.embed_batch_size
        bar = make_bar(total=len(order), desc="embedding", unit="chunk", show=show_progress)
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            feeds = tok.feeds([encs[i] for i in idx])
            hidden = run(feeds).astype(np.float32)
            out[idx] = pool(hidden, feeds["attention_mask"], self._meta["pooling"])
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        if self.normalize or self._meta.get("model_normalizes"):
            out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out

    @property
    def dimension(self) -> int:
        self._files()
        return int(self._meta["dimension"])

    @property
    def precision(self) -> str:
        if self.backend == "openvino":
            return openvino_precision(self.quantization)
        return "int8" if self.quantization == "int8" else "fp32"

    @property
    def max_tokens(self) -> int | None:
        tok = self._files()
        return self.seq_length - tok.num_special

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        tok = self._files()
        return tok.count(list(texts))

    def tokenize_fn(self) -> Any:
        """A ``str -> list[int]`` callable in the model's tokenizer (for LlamaIndex splitters)."""
        tok = self._files()
        return tok.ids

    def fingerprint(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "revision": self.revision,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "normalize": self.normalize,
            "dimension": self.dimension,
            "max_length": self.seq_length,
            "backend": self.backend,
            "precision": self.precision,
            **({"backend_choice": self.backend_choice} if self.backend_choice else {}),
        }
