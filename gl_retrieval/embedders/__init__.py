"""Embedders: a closed registry from ``embedder.provider`` to a builder.

Takes the ``embedder`` config; hands on a ``GLEmbedding`` (a LlamaIndex embedding with explicit
query/document prefixes and its tokenizer) to ingest, storage and retrieval.

Config never names code to import; adding a provider means adding a builder here. Built embedders
are cached per config, so the index-time and query-time embedder are one loaded model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gl_retrieval.config import HuggingFaceEmbedderConfig, OllamaEmbedderConfig
from gl_retrieval.config.presets import Prefixes, resolve_prefixes
from gl_retrieval.embedders.base import GLEmbedding

if TYPE_CHECKING:
    from gl_retrieval.models.backend_choice import BackendChoice
    from gl_retrieval.models.parity import ParityVerdict

__all__ = ["PROVIDERS", "GLEmbedding", "build_embedder", "get_embedder"]

EmbedderConfig = HuggingFaceEmbedderConfig | OllamaEmbedderConfig

log = logging.getLogger("gl_retrieval")


def _prefixes(cfg: EmbedderConfig) -> Prefixes:
    return resolve_prefixes(
        cfg.model,
        preset=cfg.preset,
        query_prefix=cfg.query_prefix,
        document_prefix=cfg.document_prefix,
    )


def _build_huggingface(cfg: HuggingFaceEmbedderConfig, *, threads: int) -> GLEmbedding:
    p = _prefixes(cfg)
    choice = _choose(cfg, threads=threads)
    if choice.backend != "torch":
        # Not embedders.huggingface: that module imports nothing heavy, but its loader is torch.
        from gl_retrieval.embedders.exported import ExportedEmbedder

        return ExportedEmbedder(
            backend_choice=choice.to_dict(),
            model=cfg.model,
            revision=cfg.revision,
            backend=choice.backend,
            quantization=choice.quantization,
            threads=threads,
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            normalize=cfg.normalize,
            query_prefix=p.query,
            document_prefix=p.document,
        )
    from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(
        backend_choice=choice.to_dict(),
        model=cfg.model,
        revision=cfg.revision,
        device=cfg.device,
        unpad=cfg.unpad,
        threads=threads,
        max_length=cfg.max_length,
        batch_size=cfg.batch_size,
        normalize=cfg.normalize,
        query_prefix=p.query,
        document_prefix=p.document,
    )


def _choose(cfg: HuggingFaceEmbedderConfig, *, threads: int) -> BackendChoice:
    """``embedder.backend`` resolved: ``auto`` by the CPU table
    (:mod:`~gl_retrieval.models.backend_choice`), a quantized export kept only if its vectors of
    :func:`~gl_retrieval.models.parity.parity_texts` match fp32 torch (the verdict cached beside
    the export, so this exports and compares once per machine), else the next candidate."""
    from gl_retrieval.models.backend_choice import resolve_backend

    choice = resolve_backend(
        "embedder", backend=cfg.backend, quantization=cfg.quantization, device=cfg.device
    )
    if cfg.backend != "auto":
        return choice
    from gl_retrieval.models.exports import ensure_export
    from gl_retrieval.models.parity import (
        judge_vectors,
        parity_texts,
        read_verdict,
        settle,
        write_verdict,
    )

    common = {"model": cfg.model, "revision": cfg.revision, "threads": threads}
    reference: list[np.ndarray] = []

    def check(c: BackendChoice) -> ParityVerdict:
        from gl_retrieval.embedders.exported import ExportedEmbedder

        emb = ExportedEmbedder(backend=c.backend, quantization=c.quantization, **common)
        export = ensure_export(emb.spec, log=log.info)
        verdict = read_verdict(export, c.precision)
        if verdict is None:
            if not reference:  # fp32 torch on the CPU, once
                from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder

                ref = SentenceTransformerEmbedder(device="cpu", unpad=False, **common)
                reference.append(ref.embed_documents(parity_texts()))
            got = emb.embed_documents(parity_texts())
            verdict = judge_vectors(reference[0], got, backend=c.backend, precision=c.precision)
            write_verdict(export, verdict)
        return verdict

    return settle(choice, check=check)


def _build_ollama(cfg: OllamaEmbedderConfig, *, threads: int) -> GLEmbedding:
    from gl_retrieval.embedders.ollama import OllamaEmbedder

    p = _prefixes(cfg)
    return OllamaEmbedder(
        model=cfg.model,
        base_url=cfg.base_url,
        timeout_s=cfg.timeout_s,
        keep_alive=cfg.keep_alive,
        num_ctx=cfg.num_ctx,
        batch_size=cfg.batch_size,
        normalize=cfg.normalize,
        max_retries=cfg.max_retries,
        tokenizer=cfg.tokenizer,
        query_prefix=p.query,
        document_prefix=p.document,
    )


PROVIDERS: dict[str, Callable[..., GLEmbedding]] = {
    "huggingface": _build_huggingface,
    "ollama": _build_ollama,
}

_cache: dict[str, GLEmbedding] = {}
_cache_lock = threading.Lock()


def build_embedder(cfg: EmbedderConfig, *, threads: int | str | None = None) -> GLEmbedding:
    """Build a new (not yet loaded) embedder for ``cfg``.

    Args:
        cfg: The ``embedder`` config section.
        threads: Intra-op threads of the model runtime; default: ``runtime.threads``' default.
    """
    from gl_retrieval.models.runtimes import resolve_threads

    return PROVIDERS[cfg.provider](cfg, threads=resolve_threads(threads))


def get_embedder(cfg: EmbedderConfig, *, threads: int | str | None = None) -> GLEmbedding:
    """Return the process-wide embedder for ``cfg``, building it on first use.

    Two pipelines with the same embedder config (and threads) share one loaded model.
    """
    from gl_retrieval.models.runtimes import resolve_threads

    n = resolve_threads(threads)
    key = f"{cfg.model_dump_json()}|{n}"
    with _cache_lock:
        emb = _cache.get(key)
        if emb is None:
            emb = _cache[key] = build_embedder(cfg, threads=n)
        return emb
