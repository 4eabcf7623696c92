"""Embedders: a closed registry from ``embedder.provider`` to a builder.

Takes the ``embedder`` config; hands on a ``GLEmbedding`` (a LlamaIndex embedding with explicit
query/document prefixes and its tokenizer) to ingest, storage and retrieval.

Config never names code to import; adding a provider means adding a builder here. Built embedders
are cached per config, so the index-time and query-time embedder are one loaded model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from gl_retrieval.config import HuggingFaceEmbedderConfig, OllamaEmbedderConfig
from gl_retrieval.config.presets import Prefixes, resolve_prefixes
from gl_retrieval.embedders.base import GLEmbedding

__all__ = ["PROVIDERS", "GLEmbedding", "build_embedder", "get_embedder"]

EmbedderConfig = HuggingFaceEmbedderConfig | OllamaEmbedderConfig


def _prefixes(cfg: EmbedderConfig) -> Prefixes:
    return resolve_prefixes(
        cfg.model,
        preset=cfg.preset,
        query_prefix=cfg.query_prefix,
        document_prefix=cfg.document_prefix,
    )


def _build_huggingface(cfg: HuggingFaceEmbedderConfig, *, threads: int) -> GLEmbedding:
    p = _prefixes(cfg)
    if cfg.backend != "torch":
        # Not embedders.huggingface: that module imports nothing heavy, but its loader is torch.
        from gl_retrieval.embedders.exported import ExportedEmbedder

        return ExportedEmbedder(
            model=cfg.model,
            revision=cfg.revision,
            backend=cfg.backend,
            quantization=cfg.quantization,
            threads=threads,
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            normalize=cfg.normalize,
            query_prefix=p.query,
            document_prefix=p.document,
        )
    from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(
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
