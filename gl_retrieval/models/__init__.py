"""Models: where weights come from, and how they run.

Takes a model name from the config (a hub id, a local directory or a ``packaged:`` name); hands
on a local path, a device, a runtime and thread count, or a cached onnx/openvino export, to the
embedders and the reranker. Imports no torch: each module loads what it needs on first use.

- :mod:`.weights`: ``packaged:`` names, local directories, the Hugging Face cache, ``models pull``
  and the one-line "not cached and hub unreachable" error;
- :mod:`.devices`: ``auto`` -> cuda > mps > cpu;
- :mod:`.runtimes`: the thread default, the torch-free onnxruntime / OpenVINO runners and
  tokenizer;
- :mod:`.exports` and :mod:`.export_build`: onnx/openvino exports, built once into an atomic
  on-disk cache;
- :mod:`.backend_choice` and :mod:`.parity`: ``backend: auto``, the runtime and precision
  picked by the CPU's flags from a measured table, a quantized export kept only if it
  scores fixed inputs like fp32;
- :mod:`.stand_in`: the tiny randomly initialised cross-encoder that
  ``packaged:stand-in-cross-encoder`` builds and tests load;
- :mod:`.quiet`: model loads without transformers' bars and advisory logs.

Example:
    >>> from gl_retrieval.models import configured_models
    >>> from gl_retrieval.config import PipelineConfig
    >>> cfg = PipelineConfig.model_validate({"embedder": {"model": "packaged:all-MiniLM-L6-v2"}})
    >>> [(m.role, m.source) for m in configured_models(cfg)]
    [('embedder', 'packaged')]
"""

from __future__ import annotations

from gl_retrieval.models.quiet import apply_quiet, quiet_model_loading, quiet_model_loads
from gl_retrieval.models.weights import (
    PACKAGED_MODELS,
    PACKAGED_ROLES,
    STAND_IN_RERANKER,
    ModelRef,
    PullReport,
    cached_snapshot,
    configured_models,
    hf_cache_dir,
    hub_offline,
    is_hub_id,
    model_load_error,
    not_cached,
    pull_model,
    pull_models,
    resolve_model_path,
    stand_in_dir,
)

__all__ = [
    "PACKAGED_MODELS",
    "PACKAGED_ROLES",
    "STAND_IN_RERANKER",
    "ModelRef",
    "PullReport",
    "apply_quiet",
    "cached_snapshot",
    "configured_models",
    "hf_cache_dir",
    "hub_offline",
    "is_hub_id",
    "model_load_error",
    "not_cached",
    "pull_model",
    "pull_models",
    "quiet_model_loading",
    "quiet_model_loads",
    "resolve_model_path",
    "stand_in_dir",
]
