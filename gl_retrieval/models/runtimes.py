"""Threads for every runtime, and the two exported-model runtimes (onnxruntime, OpenVINO).

One number, ``runtime.threads``, reaches torch (``torch.set_num_threads``), onnxruntime
(``intra_op_num_threads``, with one inter-op thread) and OpenVINO (``INFERENCE_NUM_THREADS``).

Why the default is what it is: each runtime's own default is "every core", which is right for one
process on an idle machine and badly wrong as soon as anything else runs. Measured on a 2-core box
shared with other processes, one query encode took p50 607 ms with torch's default threads and
35 ms with one thread (see docs/performance.md). Oversubscription costs far more than an unused
core. So the default is **half the cores, divided by the worker processes, clamped to 1..4**:
it leaves room for the other stage, the HTTP server and the neighbours, and beyond 4 threads the
small models used here gain little per query. Under ``serve`` pass ``workers=`` so N workers
together never ask for more than half the machine.

Bulk jobs are the exception: ``index`` (CLI and ``RetrievalPipeline.index``), the indexing inside
``eval``, ``models pull``'s exports and ``finetune`` own the machine while they run, so ``auto``
gives them **every core** (``resolve_threads(threads, bulk=True)``; on 2 cores, one thread made
``index`` of Cranfield run at 0.48x raw sentence-transformers, see docs/performance.md). An
explicit integer applies to bulk jobs and queries alike. torch's threads are process-wide, so a
bulk job sets them for its duration and puts the query share back afterwards
(:func:`torch_threads`, ``GLEmbedding.bulk_threads``); ``serve``'s index jobs keep the query
share, since the process goes on answering queries while they run.

Nothing here imports torch: the onnxruntime and OpenVINO paths must stay torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gl_retrieval._deps import require

__all__ = [
    "Runner",
    "apply_torch_threads",
    "cpu_count",
    "default_threads",
    "load_runner",
    "openvino_precision",
    "resolve_threads",
    "serve_threads",
    "torch_threads",
]

#: ``feeds -> first output``: what an exported model looks like to the embedder and reranker.
Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]

MAX_DEFAULT_THREADS = 4


def cpu_count() -> int:
    """Cores this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(*, workers: int = 1, cores: int | None = None) -> int:
    """Half the cores divided by ``workers``, clamped to 1..4 (see the module docstring).

    Example:
        >>> [default_threads(cores=c, workers=w) for c, w in ((2, 1), (16, 1), (16, 4))]
        [1, 4, 2]
    """
    cores = cpu_count() if cores is None else cores
    return max(1, min(MAX_DEFAULT_THREADS, cores // 2 // max(1, workers)))


def serve_threads(*, batching: bool, cores: int | None = None, workers: int = 1) -> int:
    """``runtime.threads: auto`` under ``gl-retrieval serve``.

    With batching on, ``workers`` threads per model make the model calls, one batch each at a
    time, so each may use its share of the cores (up to 4) without oversubscribing them. With
    batching off, every request calls the model from its own thread at once, so each call keeps
    to the per-process default (:func:`default_threads`). See docs/serving.md for the
    measurement.

    Example:
        >>> [serve_threads(batching=b, cores=c) for b, c in ((True, 2), (False, 2), (True, 16))]
        [2, 1, 4]
        >>> serve_threads(batching=True, cores=2, workers=2)
        1
    """
    cores = cpu_count() if cores is None else cores
    if batching:
        return max(1, min(MAX_DEFAULT_THREADS, cores // max(1, workers)))
    return default_threads(cores=cores)


def resolve_threads(threads: int | str | None, *, workers: int = 1, bulk: bool = False) -> int:
    """Threads for a ``runtime.threads`` value: an int, or ``auto``/None for the default.

    Args:
        threads: ``runtime.threads``.
        workers: Processes (or model workers) sharing the machine (query path only).
        bulk: A bulk job (indexing, exports, training): ``auto`` is every core
            (:func:`cpu_count`) instead of the query default (:func:`default_threads`).

    Example:
        >>> resolve_threads(3, bulk=True), resolve_threads("auto", bulk=True) == cpu_count()
        (3, True)
    """
    if threads is None or threads == "auto":
        return cpu_count() if bulk else default_threads(workers=workers)
    return int(threads)


_torch_lock = threading.Lock()


def apply_torch_threads(threads: int) -> None:
    """Set torch's intra-op threads (process-wide; torch has no per-model setting)."""
    torch = require("torch")
    with _torch_lock:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the ``with`` block, then put back.

    For a bulk job in a process that also answers queries. Process-wide: queries that run in
    other threads meanwhile use ``threads`` too. Does nothing where torch is not installed (an
    onnx/openvino-only install runs no torch).
    """
    if importlib.util.find_spec("torch") is None:
        yield
        return
    torch = require("torch")
    with _torch_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        with _torch_lock:
            torch.set_num_threads(before)


@functools.lru_cache(maxsize=4)
def openvino_precision(quantization: str) -> str:
    """The OpenVINO inference precision hint for a ``quantization`` value.

    ``auto`` leaves OpenVINO its default (bf16 on CPUs with bf16 units, else f32); ``none``
    forces f32; ``int8`` runs the int8 model with f32 for what is not quantized.
    """
    if quantization == "auto":
        ov = require("openvino", extra="openvino")
        hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
        name = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        return {"f32": "fp32", "f16": "fp16"}.get(name, name)
    return "int8" if quantization == "int8" else "fp32"


def load_runner(
    backend: str, model_file: Path, *, threads: int, quantization: str = "none"
) -> Runner:
    """Open an exported model file and return ``feeds -> first output``.

    Args:
        backend: ``onnx`` (onnxruntime) or ``openvino``.
        model_file: ``model.onnx`` or ``model.xml``.
        threads: Intra-op threads (``runtime.threads``).
        quantization: For openvino: ``auto`` keeps its default precision, else f32 is forced.
    """
    if backend == "onnx":
        ort = require("onnxruntime", extra="onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(
            str(model_file), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in sess.get_inputs()}

        def run_onnx(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
            return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]

        run_onnx.session = sess  # type: ignore[attr-defined]  # tests read the options back
        return run_onnx
    if backend == "openvino":
        ov = require("openvino", extra="openvino")
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if quantization != "auto":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = core.compile_model(core.read_model(str(model_file)), "CPU", config)
        names = {n for port in compiled.inputs for n in port.get_names()}

        def run_openvino(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
            request = compiled.create_infer_request()  # one per call: thread-safe
            out = request.infer({k: v for k, v in feeds.items() if k in names})
            return np.asarray(out[compiled.outputs[0]])

        run_openvino.compiled = compiled  # type: ignore[attr-defined]
        return run_openvino
    raise ValueError(f"unknown backend {backend!r}: expected 'onnx' or 'openvino'")


class FastTokenizer:
    """A ``tokenizers`` tokenizer (no torch, no transformers) that pads batches in numpy.

    Args:
        path: ``tokenizer.json`` of an export.
        pad_id: The padding token id.
        input_names: Which arrays the model takes (``token_type_ids`` only where it has them).
    """

    def __init__(self, path: Path, *, pad_id: int, input_names: list[str]) -> None:
        tokenizers = require("tokenizers", package="tokenizers")
        self._tok = tokenizers.Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._pad_id = pad_id
        self._names = input_names
        # Truncation is state on the tokenizer: one caller at a time (serve measures pairs on
        # one thread while another scores).
        self._lock = threading.Lock()
        self.num_special = len(self._tok.encode("", add_special_tokens=True).ids)
        self.num_special_pair = len(self._tok.encode("", "", add_special_tokens=True).ids)

    def count(self, texts: list[str]) -> list[int]:
        """Token counts without special tokens."""
        with self._lock:
            encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def ids(self, text: str) -> list[int]:
        with self._lock:
            return self._tok.encode(text, add_special_tokens=False).ids

    def encode(self, inputs: list[Any], *, max_length: int) -> tuple[list[Any], list[bool]]:
        """Encode texts (or ``(a, b)`` pairs), truncated to ``max_length``; says which were cut."""
        with self._lock:
            self._tok.enable_truncation(max_length, strategy="longest_first")
            try:
                encs = self._tok.encode_batch(inputs, add_special_tokens=True)
            finally:
                self._tok.no_truncation()
        return encs, [bool(e.overflowing) for e in encs]

    def feeds(self, encs: list[Any]) -> dict[str, np.ndarray]:
        """Pad a batch of encodings to its longest one: the model's int64 inputs."""
        n, width = len(encs), max(len(e.ids) for e in encs)
        ids = np.full((n, width), self._pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        out = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._names:
            out["token_type_ids"] = types
        return out
