"""Exceptions raised by gl_retrieval.

Every error the library raises on purpose derives from :class:`GLRetrievalError`, so an app can
catch one type. The CLI maps it to one line on stderr and a non-zero exit code.

Tree::

    GLRetrievalError
    ├── ConfigError              a config file or value is invalid (names file, key, expectation)
    │   └── TrainingError        a fine-tuning run was asked for wrongly (hyperparameter, --output)
    │       └── TrainingDataError  training or dev data is malformed (unknown ids, duplicates)
    ├── MissingDependencyError   an optional package is not installed (names the extra to install)
    ├── ModelLoadError           a model could not be loaded (not cached, hub unreachable, bad path)
    ├── IndexMismatchError       the persisted index was built by a different embedder / chunking
    ├── IndexNotFoundError       no index at the configured storage location yet
    ├── SourceError              a configured source cannot be read at all
    ├── FilterError              a metadata filter is malformed (unknown operator, type mismatch)
    ├── QueryError               a query is empty, too long or holds a NUL; top_k, temperature or
    │                            max_tokens out of range
    ├── EmbeddingError           the embedder returned something unusable (wrong count or dimension)
    │   └── OllamaError          the Ollama server failed (down, model missing, timeout, 5xx)
    ├── RerankError              the reranker gave NaN or infinite scores
    ├── StorageError             the storage backend failed (connection, credentials, extension)
    │   └── IndexDamagedError    a file of the persisted index is damaged (names it and the fix)
    ├── LLMError                 an OpenAI-compatible LLM server failed (down, 401, no such model,
    │                            timeout, 5xx); Ollama's failures stay OllamaError
    └── LLMNotConfiguredError    `ask` was called without an `llm` section
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EmbeddingError",
    "FilterError",
    "GLRetrievalError",
    "IndexDamagedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "LLMError",
    "LLMNotConfiguredError",
    "MissingDependencyError",
    "ModelLoadError",
    "OllamaError",
    "QueryError",
    "RerankError",
    "SourceError",
    "StorageError",
    "TrainingDataError",
    "TrainingError",
]


class GLRetrievalError(Exception):
    """Base class of every error gl_retrieval raises on purpose."""


class ConfigError(GLRetrievalError, ValueError):
    """A config file or value is invalid."""


class TrainingError(ConfigError):
    """A fine-tuning run was asked for wrongly: a bad hyperparameter, a non-empty ``--output``
    without ``--overwrite``, ``--resume`` with nothing to resume. (A usage error: exit code 2.)"""


class TrainingDataError(TrainingError):
    """Training or dev data is malformed: ids not in the index, empty or duplicate pairs, a dev
    set that overlaps the training set."""


class MissingDependencyError(GLRetrievalError, ImportError):
    """An optional dependency is not installed."""


class ModelLoadError(GLRetrievalError):
    """A model could not be loaded (not in the cache, hub unreachable, bad local path)."""


class IndexMismatchError(GLRetrievalError):
    """The persisted index was built with another embedder or chunking than the config asks."""


class IndexNotFoundError(GLRetrievalError):
    """No index exists at the configured storage location."""


class SourceError(GLRetrievalError):
    """A configured source cannot be read at all."""


class FilterError(GLRetrievalError, ValueError):
    """A metadata filter is malformed: unknown operator, unknown syntax or a type mismatch."""


class QueryError(GLRetrievalError, ValueError):
    """A query cannot be run: empty, too long, a NUL character, or top_k/top_n (or an answer's
    temperature/max_tokens) out of range."""


class EmbeddingError(GLRetrievalError):
    """The embedder returned an unusable result (wrong number of vectors, wrong dimension)."""


class RerankError(GLRetrievalError):
    """The reranker returned an unusable result (NaN or infinite scores)."""


class OllamaError(EmbeddingError):
    """The Ollama server failed: down, model missing, timed out, or kept answering 5xx."""


class StorageError(GLRetrievalError):
    """The storage backend failed: connection refused, bad credentials, missing extension."""


class LLMError(GLRetrievalError):
    """An OpenAI-compatible LLM server failed: down, refused the key, has no such model, timed
    out, or answered an error. The message names the server's URL and the fix."""


class LLMNotConfiguredError(GLRetrievalError):
    """An answer was asked for, but the config has no `llm` section."""


class IndexDamagedError(StorageError):
    """A file of the persisted index is damaged: wrong size or checksum, unreadable JSON, NaN.

    The message names the file and how to recover (rebuild, or fall back to an intact older
    generation). ``path`` is the damaged file, ``problem`` what is wrong with it, and
    ``generation`` the generation it was found in, when known (a query that met a non-finite
    score knows the generation, not the file: its message says to run ``gl-retrieval verify``).
    """

    def __init__(
        self, message: str, *, path: str = "", problem: str = "", generation: str | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem
        self.generation = generation
