"""The long-running commands: `finetune` the embedder or reranker, and `serve` over HTTP."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from gl_retrieval.cli.errors import handle_errors
from gl_retrieval.cli.output import ConfigArg, JsonOpt, print_json
from gl_retrieval.config import load_config
from gl_retrieval.errors import GLRetrievalError
from gl_retrieval.models import quiet_model_loading

__all__ = ["finetune", "serve"]


@handle_errors
def finetune(
    config: ConfigArg,
    train: Annotated[
        Path,
        typer.Option(
            help="Training data: a BEIR directory (queries.jsonl + qrels/train.tsv), a qrels "
            ".tsv inside one, or a .jsonl of {query, positive, negative?} (texts or doc ids).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option(help="Directory for the model and reports.", show_default=False)
    ],
    dev: Annotated[
        Path | None,
        typer.Option(
            help="Dev data, same layouts; default: a seeded split of --train.", show_default=False
        ),
    ] = None,
    stage: Annotated[
        str,
        typer.Option(
            help="What to train: `embedder` (the bi-encoder) or `reranker` (the cross-encoder)."
        ),
    ] = "embedder",
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Passes over the training pairs; default 3 (embedder), 1 (reranker).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Pairs per step; default 32 (embedder), 16 (reranker).", show_default=False
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate; default 2e-5 (the embedder, and a reranker that starts "
            "from a trained cross-encoder), 2e-4 (a reranker with a fresh head).",
            show_default=False,
        ),
    ] = None,
    negatives: Annotated[
        int | None,
        typer.Option(
            help="Hard negatives mined per pair with the configured retriever; default 0 for "
            "the embedder, 2 for the reranker.",
            show_default=False,
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            help="Embedder: mnrl | cached_mnrl (default mnrl). Reranker: mnrl | bce | listnet "
            "(default mnrl).",
            show_default=False,
        ),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="Reranker only: the starting point, a cross-encoder or any encoder (local "
            "directory, hub id, packaged:all-MiniLM-L6-v2; a bi-encoder gets a fresh head); "
            "default the config's reranker.model.",
            show_default=False,
        ),
    ] = None,
    random_negatives: Annotated[
        int | None,
        typer.Option(
            help="Reranker only: random negatives per pair besides the mined ones (bce, listnet: "
            "from the corpus; mnrl: in-batch); default 3.",
            show_default=False,
        ),
    ] = None,
    first_stage_weight: Annotated[
        float | None,
        typer.Option(
            help="Reranker only: also measure dev with this score blend (reranker."
            "first_stage_weight) and select the epoch by it; default the config's, or 0.5 for a "
            "fresh head (noted); 0: the reranker alone.",
            show_default=False,
        ),
    ] = None,
    warmup_ratio: Annotated[
        float, typer.Option(help="Fraction of the steps warming the learning rate up.")
    ] = 0.1,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps.", show_default=False)
    ] = None,
    max_seq_length: Annotated[
        int | None,
        typer.Option(help="Token limit while training; default the model's.", show_default=False),
    ] = None,
    dev_size: Annotated[
        int | None,
        typer.Option(help="Queries held out as dev without --dev.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds everything, the dev split included.")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --output from its last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output.")] = False,
    eval_each_epoch: Annotated[
        bool,
        typer.Option(
            "--eval-each-epoch/--eval-at-end",
            help="Evaluate dev after every epoch (keeps the best) or only at the end (faster).",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the config's embedder (or reranker) on your corpus; select on dev only.

    The config's index must exist: ids resolve through it and negatives are mined from it.
    Prints the config change to use the new model; the index must then be rebuilt.
    """
    from gl_retrieval.train import FinetuneOptions
    from gl_retrieval.train import finetune as run_finetune

    opts = FinetuneOptions(
        stage=stage,  # type: ignore[arg-type]
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        negatives=negatives,
        loss=loss,
        base_model=base_model,
        random_negatives=random_negatives,
        first_stage_weight=first_stage_weight,
        warmup_ratio=warmup_ratio,
        max_steps=max_steps,
        max_seq_length=max_seq_length,
        dev_size=dev_size,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        eval_each_epoch=eval_each_epoch,
        show_progress=not as_json,
    )
    opts.check()  # a bad hyperparameter fails before any model loads
    quiet_model_loading()
    # Whatever a library prints while training (the trainer's loss dicts, bars) goes to
    # stderr: stdout carries only the result (one JSON document with --json).
    with contextlib.redirect_stdout(sys.stderr):
        result = run_finetune(
            load_config(config),
            train=train,
            dev=dev,
            output=output,
            options=opts,
            progress=lambda msg: typer.echo(msg, err=True),
        )
    if as_json:
        print_json(result.to_dict())
        return
    typer.echo(f"model: {result.model_dir}  ({result.steps} steps, {result.train_seconds:.0f}s)")
    if result.before and result.after:
        if result.stage == "reranker":
            b = result.before["first_stage"]["nDCG@10"]
            a = result.after["reranked"]["nDCG@10"]
            typer.echo(
                f"dev nDCG@10 first stage alone {b:.4f} -> with the new reranker {a:.4f} "
                f"({a - b:+.4f}, best epoch {result.best_epoch:g})"
            )
            if "blended" in result.after:
                m = result.after["blended"]["nDCG@10"]
                typer.echo(f"dev nDCG@10 with the score blend {m:.4f} ({m - b:+.4f})")
            if "configured_reranker" in result.before:
                c = result.before["configured_reranker"]["nDCG@10"]
                typer.echo(f"dev nDCG@10 with the configured reranker {c:.4f}")
        else:
            for mode in result.after:
                b, a = result.before[mode]["nDCG@10"], result.after[mode]["nDCG@10"]
                typer.echo(f"dev {mode:<7} nDCG@10 {b:.4f} -> {a:.4f} ({a - b:+.4f})")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"report: {result.output / 'report.md'}")
    if result.improved is False:
        typer.echo("\nNot an improvement on dev: keep the config as it is.")
        return
    typer.echo("\nTo use it, change the config:\n")
    typer.echo(result.config_change)


@handle_errors
def serve(
    config: ConfigArg,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port to bind (0: any free one).")
    ] = 8080,
    insecure: Annotated[
        bool,
        typer.Option(help="Allow a non-loopback --host without an API key (serve.api_key)."),
    ] = False,
) -> None:
    """Serve the pipeline over HTTP (FastAPI + uvicorn): models and index load first.

    Needs the serve extra. The API key comes from serve.api_key or $GL_RETRIEVAL_API_KEY;
    SIGTERM drains in-flight requests and exits 0. See docs/serving.md.
    """
    import logging

    from gl_retrieval._deps import require

    require("fastapi", extra="serve")
    from gl_retrieval.serve.server import create_server

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    quiet_model_loading()
    # A port that is already taken fails here, in a second, before any model loads.
    server = create_server(load_config(config), host=host, port=port, insecure=insecure)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits 3 when the bind fails (a port taken while loading)
        if e.code in (0, None):
            raise
        raise GLRetrievalError(
            f"could not listen on {host}:{port} (uvicorn's line above says why): free the port "
            "or pass another --port"
        ) from None
