"""Commands over one index: `validate` a config, `index` its sources, `info`, `verify`."""

from __future__ import annotations

from typing import Annotated

import typer

from gl_retrieval.cli.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, handle_errors
from gl_retrieval.cli.output import (
    ConfigArg,
    JsonOpt,
    checked_config,
    library_warnings,
    open_pipeline,
    print_json,
)
from gl_retrieval.config import PipelineConfig, load_config

__all__ = ["index", "info", "validate", "verify"]


@handle_errors
def validate(
    config: ConfigArg,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="FILTER",
            help="Also check these query filters (repeatable), as `query --filter` takes them.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a config without loading any model, and print what it resolves to.

    Besides the schema, it checks that packaged models exist, that local model directories and
    source paths are there, that a hub model is cached when HF_HUB_OFFLINE is set, and that the
    server addresses are URLs. Notes go to stderr; any error exits 2 (1 for a model that is not
    available here).
    """
    from gl_retrieval.cli.checks import check_config, describe_embedder

    cfg: PipelineConfig = load_config(config)
    problems = check_config(cfg, sources=True, filters=filters)
    errors = [p for p in problems if p.level == "error"]
    for p in problems:
        typer.echo(f"{p.level}: {config}: {p.line()}", err=True)
    if errors:
        kinds = {p.kind for p in errors}
        raise typer.Exit(EXIT_BAD_INPUT if kinds - {"model"} else EXIT_RUNTIME)
    if as_json:
        # The config, plus what `backend: auto` resolves to on this machine (nothing loads;
        # imported only now: bad input is refused without LlamaIndex).
        from gl_retrieval.pipeline import RetrievalPipeline

        backends = RetrievalPipeline(cfg).backends()
        print_json({**cfg.model_dump(mode="json"), "backends": backends})
    else:
        typer.echo(
            f"{config}: ok ({describe_embedder(cfg)}, "
            f"{cfg.retriever.mode} top_k={cfg.retriever.top_k}, "
            f"reranker={'none' if cfg.reranker is None else cfg.reranker.model}, "
            f"storage={cfg.storage.backend})"
        )


@handle_errors
def index(
    config: ConfigArg,
    rebuild: Annotated[
        bool, typer.Option(help="Re-embed every document into a fresh index.")
    ] = False,
    prune: Annotated[
        bool, typer.Option(help="Remove documents that are gone from the sources.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index the config's sources, embedding only new or changed documents.

    Only the result (the summary line, or the JSON) goes to stdout; progress, warnings and the
    names of skipped documents go to stderr.
    """
    pipe = open_pipeline(checked_config(config, sources=True))
    with library_warnings():
        summary = pipe.index(rebuild=rebuild, prune=prune, show_progress=not as_json)
    for s in summary.skipped:
        typer.echo(f"skipped: {s.name}: {s.reason}", err=True)
    if as_json:
        print_json(summary.to_dict())
    else:
        typer.echo(summary.line())


@handle_errors
def info(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Show what built the index (manifest) and how big it is. Loads no model."""
    data = open_pipeline(config).info()
    if as_json:
        print_json(data)
        return
    emb = data["embedder"]
    typer.echo(f"index:     {data['location']} ({data['backend']})")
    typer.echo(f"documents: {data['documents']}   chunks: {data['chunks']}")
    typer.echo(
        f"embedder:  {emb.get('provider')}:{emb.get('model')} dim={emb.get('dimension')} "
        f"normalize={emb.get('normalize')}"
    )
    typer.echo(
        f"prefixes:  query={emb.get('query_prefix')!r} document={emb.get('document_prefix')!r}"
    )
    typer.echo(
        f"chunking:  {data['chunking'].get('chunk_size')} / "
        f"{data['chunking'].get('chunk_overlap')} tokens"
    )
    typer.echo(f"built:     {data['created_at']}  updated: {data['updated_at']}")


@handle_errors
def verify(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Check the committed index completely: every file's checksum, the vectors (NaN/inf), the
    BM25 side and the document table. Loads no model. Exits 0 when intact, 1 when damaged.
    """
    report = open_pipeline(config).verify()
    if as_json:
        print_json(report)
    else:
        where = f"{report['location']} ({report.get('generation') or 'no valid generation'})"
        if report["ok"]:
            typer.echo(
                f"{where}: ok ({report['files']} files, {report['bytes']} bytes checked in "
                f"{report['seconds']:.2f}s)"
            )
        for w in report["warnings"]:
            typer.echo(f"warning: {w}", err=True)
        for p in report["problems"]:
            typer.echo(f"damaged: {p['file']}: {p['problem']}", err=True)
        if not report["ok"]:
            typer.echo(f"error: the index at {where} is damaged: {report['recovery']}", err=True)
    if not report["ok"]:
        raise typer.Exit(1)
