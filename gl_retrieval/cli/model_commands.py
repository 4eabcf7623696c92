"""`models pull` and `models list`: fetch what a config names, build its exports, show them."""

from __future__ import annotations

import typer

from gl_retrieval.cli.errors import error_line, exit_code_for, handle_errors
from gl_retrieval.cli.output import ConfigArg, JsonOpt, print_json
from gl_retrieval.config import load_config
from gl_retrieval.errors import GLRetrievalError
from gl_retrieval.models import quiet_model_loading

__all__ = ["models_list", "models_pull"]


@handle_errors
def models_pull(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Download the config's hub models (embedder, reranker) and build their exports.

    Honours HF_HOME / HF_HUB_CACHE. Ollama models print the `ollama pull` command to run;
    packaged and local models need nothing. With `backend: onnx` or `openvino`, the export is
    built once into $GL_RETRIEVAL_CACHE/exports (default ~/.cache/gl_retrieval/exports), so
    later processes, offline, load it without torch. With `backend: auto` (the default), the
    exports it picks on this machine are built and checked against fp32 now (the parity
    verdict is cached with them), and `backends` says what was chosen and why.
    """
    from gl_retrieval.models import configured_models, hf_cache_dir, pull_model
    from gl_retrieval.models.exports import (
        configured_exports,
        ensure_export,
        exports_dir,
        spec_dict,
    )
    from gl_retrieval.models.runtimes import resolve_threads, torch_threads
    from gl_retrieval.pipeline import RetrievalPipeline

    cfg = load_config(config)
    reports, failures = [], []
    for ref in configured_models(cfg):
        try:  # every model is tried: a failing embedder must not hide the reranker
            report = pull_model(ref, log=lambda line: typer.echo(line, err=True))
        except GLRetrievalError as e:
            failures.append(e)
            typer.echo(f"error: {error_line(e)}", err=True)
            continue
        reports.append(report)
        if not as_json:
            typer.echo(report.line())
    exports = []
    # Building exports is a bulk job: torch (the exporter) gets every core under
    # runtime.threads auto (a model that loads meanwhile applies its own threads).
    with torch_threads(resolve_threads(cfg.runtime.threads, bulk=True)):
        for spec in configured_exports(cfg):
            quiet_model_loading()
            path = ensure_export(spec, log=lambda line: typer.echo(line, err=True))
            exports.append({**spec_dict(spec), "path": str(path)})
            if not as_json:
                typer.echo(f"{spec.kind}: {spec.model} -> {spec.backend} {spec.weights}: {path}")
        # backend auto: the chosen exports, built and checked against fp32 (parity) now.
        backends = RetrievalPipeline(cfg).backends(settle=not failures)
    for role, choice in backends.items():
        if choice is not None and not as_json:
            typer.echo(
                f"{role}: backend {choice['configured']} -> {choice['backend']} "
                f"{choice['precision']} ({choice['reason']})"
            )
    if as_json:
        print_json(
            {
                "cache": str(hf_cache_dir()),
                "models": [r.to_dict() for r in reports],
                "exports_cache": str(exports_dir()),
                "exports": exports,
                "backends": backends,
            }
        )
    if failures:
        raise typer.Exit(max(exit_code_for(e) for e in failures))


@handle_errors
def models_list(as_json: JsonOpt = False) -> None:
    """Show the cached onnx/openvino exports (built by `models pull` or on first use)."""
    from gl_retrieval.models.exports import exports_dir, list_exports

    rows = list_exports()
    if as_json:
        print_json({"exports_cache": str(exports_dir()), "exports": rows})
        return
    typer.echo(f"exports in {exports_dir()}:" if rows else f"no exports in {exports_dir()}")
    for r in rows:
        typer.echo(
            f"  {r.get('kind', '?'):<8} {r.get('backend', '?'):<8} {r.get('weights', '?'):<4} "
            f"{r['bytes'] / 1e6:7.1f} MB  {r.get('model', '?')}  ({r.get('created_at', '?')})"
        )
