"""Storage: where a persisted index lives, with the manifest of what built it.

Takes the ``storage`` config and an embedder; hands on an ``IndexHandle`` (a LlamaIndex
``VectorStoreIndex`` over the embedded store or Postgres, with its manifest and document records)
to ingest and retrieval. ``open_storage(config.storage)`` picks the backend from a closed set.
"""

from __future__ import annotations

from gl_retrieval.config import EmbeddedStorageConfig, PostgresStorageConfig
from gl_retrieval.storage.base import DocRecord, IndexHandle, Storage
from gl_retrieval.storage.local import LocalStorage
from gl_retrieval.storage.manifest import Manifest, check_compatible

__all__ = [
    "DocRecord",
    "IndexHandle",
    "LocalStorage",
    "Manifest",
    "Storage",
    "check_compatible",
    "open_storage",
]


def open_storage(cfg: EmbeddedStorageConfig | PostgresStorageConfig) -> Storage:
    """Return the backend for a storage config (cheap: nothing is loaded or connected yet)."""
    if isinstance(cfg, EmbeddedStorageConfig):
        return LocalStorage(cfg.persist_dir)
    from gl_retrieval.storage.postgres.store import PostgresStorage

    return PostgresStorage(cfg)
