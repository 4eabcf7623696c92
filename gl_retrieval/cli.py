"""The `gl-retrieval` command: a thin typer app over the library API.

Every command takes the config path first. Errors print one line on stderr and exit non-zero;
commands that print results accept ``--json``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gl_retrieval.config import PipelineConfig, load_config
from gl_retrieval.errors import GLRetrievalError
from gl_retrieval.models import quiet_model_loading

__all__ = ["app", "main"]

app = typer.Typer(
    name="gl-retrieval",
    help="Build, query and evaluate LlamaIndex retrieval pipelines from one YAML config.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

ConfigArg = Annotated[Path, typer.Argument(help="The pipeline's YAML config.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and exit code 1 (2 for bad config)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gl_retrieval.errors import ConfigError

        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            _fail(str(e), 2)
        except GLRetrievalError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except ValueError as e:  # bad argument values that reached the library
            _fail(str(e), 2)

    return wrapper  # type: ignore[return-value]


def _pipeline(config: Path) -> Any:
    from gl_retrieval.pipeline import RetrievalPipeline

    quiet_model_loading()
    return RetrievalPipeline.from_config(load_config(config))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _print_results(results: list[Any]) -> None:
    if not results:
        typer.echo("no results")
    for i, r in enumerate(results, 1):
        extra = f" (retrieval {r.retrieval_score:.3f})" if r.rerank_score is not None else ""
        typer.echo(f"{i:2d}. {r.score:.4f}{extra}  {r.doc_id}  {_snippet(r.node.get_content())}")


# -- commands ------------------------------------------------------------------------------------


@app.command()
@handle_errors
def validate(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Check a config file; print the fully resolved config."""
    cfg: PipelineConfig = load_config(config)
    if as_json:
        _print_json(cfg.model_dump(mode="json"))
    else:
        typer.echo(
            f"{config}: ok ({cfg.embedder.provider}:{cfg.embedder.model}, "
            f"{cfg.retriever.mode} top_k={cfg.retriever.top_k}, "
            f"reranker={'none' if cfg.reranker is None else cfg.reranker.model}, "
            f"storage={cfg.storage.backend})"
        )


@app.command()
@handle_errors
def index(
    config: ConfigArg,
    rebuild: Annotated[bool, typer.Option(help="Re-embed everything into a fresh index.")] = False,
    prune: Annotated[bool, typer.Option(help="Remove documents gone from the sources.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Index the config's sources: embeds only new or changed documents.

    stdout carries only the result (the summary line, or the JSON); progress, warnings and the
    names of skipped documents go to stderr.
    """
    import logging

    pipe = _pipeline(config)
    # The library logs its warnings (e.g. a capped chunk_size); show each once, on stderr.
    warn = logging.StreamHandler(sys.stderr)
    warn.setLevel(logging.WARNING)
    warn.setFormatter(logging.Formatter("warning: %(message)s"))
    lib_log = logging.getLogger("gl_retrieval")
    lib_log.addHandler(warn)
    try:
        summary = pipe.index(rebuild=rebuild, prune=prune, show_progress=not as_json)
    finally:
        lib_log.removeHandler(warn)
    for s in summary.skipped:
        typer.echo(f"skipped: {s.name}: {s.reason}", err=True)
    if as_json:
        _print_json(summary.to_dict())
    else:
        typer.echo(summary.line())


@app.command()
@handle_errors
def query(
    config: ConfigArg,
    text: Annotated[str, typer.Argument(help="The query.", show_default=False)],
    top_n: Annotated[int | None, typer.Option(min=1, help="Results to show.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Candidates to retrieve.")] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="Metadata filter, repeatable (all must hold): key=value, key!=value, "
            "key<value (<=, >, >=; numbers or ISO dates), 'key in a,b', 'key not in a,b'.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve (and rerank) the best chunks for a query."""
    from gl_retrieval.retrieval.filters import parse_filters

    parsed = parse_filters(filters or None)  # a bad filter fails before any model loads
    pipe = _pipeline(config)
    results = pipe.retrieve(text, top_k=top_k, top_n=top_n, filters=parsed)
    if as_json:
        payload: dict[str, Any] = {"query": text}
        if filters:
            payload["filters"] = list(filters)
        _print_json({**payload, "results": [r.to_dict() for r in results]})
    else:
        _print_results(results)


@app.command(name="eval")
@handle_errors
def eval_(
    config: ConfigArg,
    dataset: Annotated[
        Path,
        typer.Option(
            help="BEIR-layout directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.",
            show_default=False,
        ),
    ],
    split: Annotated[str, typer.Option(help="Which qrels/<split>.tsv to score.")] = "test",
    modes: Annotated[
        str | None,
        typer.Option(
            help="Retriever modes to compare on one index, comma-separated: dense, bm25, "
            "hybrid (the config's fusion), hybrid:rrf, hybrid:convex. Default: the config's.",
            show_default=False,
        ),
    ] = None,
    gains: Annotated[
        str,
        typer.Option(
            help="auto: a dataset's documented preset (Cranfield: 5 - code), else raw scores; "
            "raw: qrels scores as gains; or a preset name."
        ),
    ] = "auto",
    top_k: Annotated[
        int | None,
        typer.Option(min=1, help="Chunks per query; default max(100, retriever.top_k)."),
    ] = None,
    latency_queries: Annotated[
        int, typer.Option(min=1, help="Queries timed on the full single-query path.")
    ] = 100,
    rebuild: Annotated[
        bool, typer.Option(help="Re-embed the corpus into a fresh index at the storage.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write report.md, report.json and report.png here.", show_default=False),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Index a BEIR dataset with the config and score nDCG@10, MRR@10, Recall@10/100, latency.

    The dataset supplies the corpus (the config's sources are ignored); the stored index is
    reused when it already holds that corpus, so comparing modes embeds it once.
    """
    from gl_retrieval.eval.runner import evaluate_pipeline, write_report

    pipe = _pipeline(config)
    result = evaluate_pipeline(
        pipe,
        dataset,
        split=split,
        gains=gains,
        modes=modes,
        top_k=top_k,
        latency_queries=latency_queries,
        rebuild=rebuild,
        progress=lambda msg: typer.echo(msg, err=True),
        show_progress=not as_json,
    )
    if report is not None:
        for path in write_report(result, report):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        _print_json(result.to_dict())
        return
    typer.echo(result.markdown())


@app.command()
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
        str, typer.Option(help="embedder (the bi-encoder) or reranker (the cross-encoder).")
    ] = "embedder",
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (in-batch negatives).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-5,
    negatives: Annotated[
        int | None,
        typer.Option(
            help="Hard negatives mined per pair with the configured retriever; default 0 for "
            "the embedder, 3 for the reranker.",
            show_default=False,
        ),
    ] = None,
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
        max_steps=max_steps,
        max_seq_length=max_seq_length,
        dev_size=dev_size,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        show_progress=not as_json,
    )
    opts.check()  # a bad hyperparameter fails before any model loads
    quiet_model_loading()
    result = run_finetune(
        load_config(config),
        train=train,
        dev=dev,
        output=output,
        options=opts,
        progress=lambda msg: typer.echo(msg, err=True),
    )
    if as_json:
        _print_json(result.to_dict())
        return
    typer.echo(f"model: {result.model_dir}  ({result.steps} steps, {result.train_seconds:.0f}s)")
    if result.before and result.after:
        for mode in result.after:
            b, a = result.before[mode]["nDCG@10"], result.after[mode]["nDCG@10"]
            typer.echo(f"dev {mode:<7} nDCG@10 {b:.4f} -> {a:.4f} ({a - b:+.4f})")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"report: {result.output / 'report.md'}")
    typer.echo("\nTo use it, change the config:\n")
    typer.echo(result.config_change)


@app.command()
@handle_errors
def ask(
    config: ConfigArg,
    question: Annotated[str, typer.Argument(help="The question.", show_default=False)],
    top_n: Annotated[int | None, typer.Option(min=1, help="Sources given to the LLM.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question with the config's LLM, from the retrieved sources."""
    pipe = _pipeline(config)
    answer = pipe.ask(question, top_n=top_n)
    if as_json:
        _print_json(answer.to_dict())
        return
    typer.echo(answer.answer)
    typer.echo("\nsources:")
    for i, s in enumerate(answer.sources, 1):
        typer.echo(f"  [{i}] {s.doc_id}  {_snippet(s.node.get_content(), 100)}")


@app.command()
@handle_errors
def info(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Show what built the index (manifest) and how big it is. Loads no model."""
    data = _pipeline(config).info()
    if as_json:
        _print_json(data)
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


@app.command()
@handle_errors
def demo(
    persist_dir: Annotated[Path, typer.Option(help="Where the demo index is kept.")] = Path(
        ".gl_index/demo"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Index a small bundled corpus with the packaged MiniLM and answer a few queries, offline."""
    from gl_retrieval.demo import run_demo

    quiet_model_loading()
    report = run_demo(persist_dir=persist_dir, show_progress=not as_json)
    if as_json:
        _print_json(report)
        return
    typer.echo(report["summary"])
    for q in report["queries"]:
        typer.echo(f"\n? {q['query']}")
        for i, r in enumerate(q["results"], 1):
            typer.echo(f"  {i}. {r['score']:.3f}  [{r['doc_id']}] {_snippet(r['text'], 110)}")


# -- models ---------------------------------------------------------------------------------------

models_app = typer.Typer(
    help="Fetch the models a config names into the Hugging Face cache, for offline use.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


@models_app.command("pull")
@handle_errors
def models_pull(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Download the config's hub models (embedder, reranker) into the Hugging Face cache.

    Honours HF_HOME / HF_HUB_CACHE. Ollama models print the `ollama pull` command to run;
    packaged and local models need nothing.
    """
    from gl_retrieval.models import configured_models, hf_cache_dir, pull_model

    reports = []
    for ref in configured_models(load_config(config)):
        report = pull_model(ref, log=lambda line: typer.echo(line, err=True))
        reports.append(report)
        if not as_json:
            typer.echo(report.line())
    if as_json:
        _print_json({"cache": str(hf_cache_dir()), "models": [r.to_dict() for r in reports]})


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except GLRetrievalError as e:  # raised outside a command body (should not happen)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
