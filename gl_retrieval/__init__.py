"""gl_retrieval: LlamaIndex retrieval pipelines from one typed config.

``import gl_retrieval`` is light: torch, sentence-transformers and the LlamaIndex integrations
load inside the builders that need them, on first use.

Example:
    >>> from gl_retrieval import RetrievalPipeline
    >>> pipe = RetrievalPipeline.from_config("examples/configs/demo.yaml")  # doctest: +SKIP
    >>> pipe.index()                                                         # doctest: +SKIP
    >>> pipe.retrieve("what does a cross-encoder do?")[0].doc_id             # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gl_retrieval._version import __version__
from gl_retrieval.config import PipelineConfig, load_config
from gl_retrieval.errors import (
    ConfigError,
    EmbeddingError,
    FilterError,
    GLRetrievalError,
    IndexDamagedError,
    IndexMismatchError,
    IndexNotFoundError,
    LLMError,
    LLMNotConfiguredError,
    MissingDependencyError,
    ModelLoadError,
    OllamaError,
    QueryError,
    RerankError,
    SourceError,
    StorageError,
    TrainingDataError,
    TrainingError,
)

if TYPE_CHECKING:
    from gl_retrieval.ingest.indexer import IndexSummary
    from gl_retrieval.pipeline import RetrievalPipeline
    from gl_retrieval.retrieval.results import RankedNode
    from gl_retrieval.serve.client import RemotePipeline


__all__ = [
    "ConfigError",
    "EmbeddingError",
    "FilterError",
    "GLRetrievalError",
    "IndexDamagedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexSummary",
    "LLMError",
    "LLMNotConfiguredError",
    "MissingDependencyError",
    "ModelLoadError",
    "OllamaError",
    "PipelineConfig",
    "QueryError",
    "RankedNode",
    "RemotePipeline",
    "RerankError",
    "RetrievalPipeline",
    "SourceError",
    "StorageError",
    "TrainingDataError",
    "TrainingError",
    "__version__",
    "load_config",
]

_LAZY = {
    "RetrievalPipeline": "gl_retrieval.pipeline",
    "IndexSummary": "gl_retrieval.ingest.indexer",
    "RankedNode": "gl_retrieval.retrieval.results",
    "RemotePipeline": "gl_retrieval.serve.client",
}


def __getattr__(name: str) -> Any:
    # The pipeline pulls in llama-index-core; keep `import gl_retrieval` cheap until it is used.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gl_retrieval' has no attribute {name!r}")
