"""Model-free checks of a loaded config: what `validate` reports, and what commands check first.

A config that parses can still name things that are not there: a ``packaged:`` model that does
not exist, a local model directory or a source path that is missing, a hub model that is not in
the cache while ``HF_HUB_OFFLINE`` is set. :func:`check_config` finds these by looking at the
disk and the environment only: it loads no model, imports no torch and never touches the
network, so it takes milliseconds. The CLI runs it before anything is loaded, so the real
problem is reported first, instead of a misleading index mismatch or an error after seconds of
model loading.

Example:
    >>> from gl_retrieval.config import parse_config
    >>> cfg = parse_config({"embedder": {"model": "packaged:no-such-model"}})
    >>> [p.line() for p in check_config(cfg) if p.level == "error"]  # doctest: +ELLIPSIS
    ["embedder.model: unknown packaged model 'no-such-model'; known ones are ..."]
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gl_retrieval.config import (
    EmbeddedStorageConfig,
    HuggingFaceEmbedderConfig,
    OllamaEmbedderConfig,
    PipelineConfig,
)
from gl_retrieval.config.limits import source_problem
from gl_retrieval.errors import ConfigError, ModelLoadError, SourceError
from gl_retrieval.models import (
    PACKAGED_MODELS,
    cached_snapshot,
    hub_offline,
    is_hub_id,
    not_cached,
)

__all__ = ["Problem", "check_config", "describe_embedder", "raise_for_problems"]

Level = Literal["error", "note"]

#: Hub ids as the hub accepts them: ``name`` or ``org/name``, letters, digits, ``-``, ``_``, ``.``.
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_URL = re.compile(r"^https?://[^\s/:]+(:\d{1,5})?(/\S*)?$")


@dataclass(frozen=True)
class Problem:
    """One finding: an ``error`` stops the command; a ``note`` is worth knowing."""

    level: Level
    key: str
    message: str
    #: What an error stands for: a bad config value, a bad source path, or a model not here.
    kind: Literal["config", "source", "model"] = "config"

    def line(self) -> str:
        """``key: message``, as `validate` prints it."""
        return f"{self.key}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "key": self.key, "message": self.message}


def describe_embedder(cfg: PipelineConfig) -> str:
    """Which embedder the config means, saying so when it is the unstated default."""
    emb = cfg.embedder
    text = f"{emb.provider}:{emb.model}"
    if "embedder" not in cfg.model_fields_set:
        text += " (the default: no embedder section; a hub model, about 440 MB)"
    return text


def _model(model: str, *, key: str, revision: str | None) -> list[Problem]:
    if model.startswith("packaged:"):
        name = model.removeprefix("packaged:")
        if name not in PACKAGED_MODELS:
            known = ", ".join(f"'packaged:{k}'" for k in PACKAGED_MODELS)
            message = f"unknown packaged model {name!r}; known ones are {known}"
            return [Problem("error", key, message)]
        module, package = PACKAGED_MODELS[name]
        if importlib.util.find_spec(module) is None:
            return [
                Problem(
                    "error",
                    key,
                    f"packaged model {name!r} needs its package: pip install {package}",
                )
            ]
        return []
    if not is_hub_id(model):
        path = Path(model).expanduser()
        if not path.exists():
            return [Problem("error", key, f"local model directory {path} does not exist")]
        if not path.is_dir():
            return [Problem("error", key, f"local model {path} is not a directory")]
        return []
    if not _HUB_ID.match(model):
        return [
            Problem(
                "error",
                key,
                f"{model!r} is neither an existing local path nor a valid hub id: use "
                "'org/name', a directory, or 'packaged:all-MiniLM-L6-v2'",
            )
        ]
    role = key.split(".")[0]
    if cached_snapshot(model, revision=revision) is not None:
        return []
    if hub_offline():
        why = "the hub was not tried (HF_HUB_OFFLINE is set)"
        return [Problem("error", key, str(not_cached(model, role=role, why=why)), "model")]
    return [
        Problem(
            "note",
            key,
            f"hub model {model!r} is not in the Hugging Face cache yet: it is downloaded on "
            "first use (or now, with `gl-retrieval models pull CONFIG`)",
        )
    ]


def _url(url: str | None, key: str) -> list[Problem]:
    if url is None or _URL.match(url):
        return []
    return [Problem("error", key, f"{url!r} is not an http:// or https:// server address")]


def check_config(
    cfg: PipelineConfig,
    *,
    sources: bool = True,
    filters: Sequence[str] | None = None,
) -> list[Problem]:
    """Everything about ``cfg`` that can be checked without loading a model.

    Args:
        cfg: A loaded config (relative paths already resolved, as :func:`load_config` does).
        sources: Check that every source path exists and is a directory or a regular file
            (`index` needs them; `query` on another machine may not have them).
        filters: ``--filter`` strings to parse as `query` would.

    Returns:
        The problems found, errors first, in config order within each level.
    """
    found: list[Problem] = []
    emb = cfg.embedder
    if isinstance(emb, HuggingFaceEmbedderConfig):
        found += _model(emb.model, key="embedder.model", revision=emb.revision)
    elif isinstance(emb, OllamaEmbedderConfig):
        found += _url(emb.base_url, "embedder.base_url")
        if emb.tokenizer is not None and not Path(emb.tokenizer).exists():
            found.append(Problem("error", "embedder.tokenizer", f"{emb.tokenizer} does not exist"))
    if "embedder" not in cfg.model_fields_set:
        found.append(
            Problem(
                "note",
                "embedder",
                f"not set, so the default {emb.model} from the Hugging Face hub is used; name "
                "one to be explicit (e.g. 'packaged:all-MiniLM-L6-v2' offline)",
            )
        )
    if cfg.reranker is not None:
        rr = cfg.reranker
        found += _model(rr.model, key="reranker.model", revision=rr.revision)
    if cfg.llm is not None:
        found += _url(cfg.llm.base_url, "llm.base_url")
    storage = cfg.storage.persist_dir if isinstance(cfg.storage, EmbeddedStorageConfig) else None
    if storage is not None and Path(storage).exists() and not Path(storage).is_dir():
        found.append(
            Problem("error", "storage.persist_dir", f"{storage} exists and is not a directory")
        )
    if sources:
        for i, src in enumerate(cfg.sources):
            path = Path(src.path)
            if not (path.is_dir() or path.is_file()):
                problem = Problem("error", f"sources[{i}].path", source_problem(path), "source")
                found.append(problem)
        if not cfg.sources:
            found.append(Problem("note", "sources", "none: `index` has nothing to read"))
    if filters:
        from gl_retrieval.errors import FilterError
        from gl_retrieval.retrieval.filters import parse_filters

        try:
            parse_filters(list(filters))
        except FilterError as e:
            found.append(Problem("error", "--filter", str(e)))
    return sorted(found, key=lambda p: p.level != "error")


def raise_for_problems(problems: Sequence[Problem], *, source: Any = None) -> None:
    """Raise the first error of ``problems`` as the library error it stands for.

    Raises:
        SourceError: a source path is missing or not a file or directory.
        ModelLoadError: a hub model is not cached while the hub is off limits.
        ConfigError: any other error (names the config file when ``source`` is given).
    """
    for p in problems:
        if p.level != "error":
            continue
        if p.kind == "source":
            raise SourceError(p.message)
        if p.kind == "model":
            raise ModelLoadError(p.message)
        where = f"{source}: " if source is not None else ""
        raise ConfigError(f"{where}{p.line()}")
