"""Config: the typed, frozen, strict tree that picks every stage, and how it is read.

Takes a YAML file or a mapping; hands on a :class:`PipelineConfig` that every other stage reads.

- :mod:`.schema`: the pydantic tree (unknown keys fail, every value is checked);
- :mod:`.loader`: the bounded YAML reader, :func:`load_config` and :func:`parse_config`;
- :mod:`.presets`: query/document prefixes per model family, a visible table;
- :mod:`.limits`: every cap on what is read, and the capped readers (imports nothing else).

Example:
    >>> from gl_retrieval.config import PipelineConfig
    >>> cfg = PipelineConfig.model_validate({"embedder": {"model": "BAAI/bge-base-en-v1.5"}})
    >>> cfg.retriever.top_k, cfg.storage.backend
    (20, 'embedded')
"""

from __future__ import annotations

from gl_retrieval.config.loader import load_config, parse_config
from gl_retrieval.config.schema import (
    ChunkingConfig,
    EmbeddedStorageConfig,
    HuggingFaceEmbedderConfig,
    OllamaEmbedderConfig,
    OllamaLLMConfig,
    OpenAILikeLLMConfig,
    PipelineConfig,
    PostgresStorageConfig,
    RerankerConfig,
    RetrieverConfig,
    RuntimeConfig,
    ServeConfig,
    SourceConfig,
)

__all__ = [
    "ChunkingConfig",
    "EmbeddedStorageConfig",
    "HuggingFaceEmbedderConfig",
    "OllamaEmbedderConfig",
    "OllamaLLMConfig",
    "OpenAILikeLLMConfig",
    "PipelineConfig",
    "PostgresStorageConfig",
    "RerankerConfig",
    "RetrieverConfig",
    "RuntimeConfig",
    "ServeConfig",
    "SourceConfig",
    "load_config",
    "parse_config",
]
