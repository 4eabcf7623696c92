"""The `gl-retrieval` command: a thin typer app over the library API.

Every command takes the config path first. Errors print one line on stderr and exit non-zero;
commands that print results accept ``--json``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar
from typing import cast as typing_cast

import typer
import typer.core

try:  # typer >= 0.20 carries its own copy of click; older ones use click itself
    from typer import _click as click  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the installed typer
    import click  # type: ignore[no-redef]

from gl_retrieval.config import PipelineConfig, limits, load_config
from gl_retrieval.errors import (
    ConfigError,
    FilterError,
    GLRetrievalError,
    LLMNotConfiguredError,
    QueryError,
    SourceError,
)
from gl_retrieval.models import quiet_model_loading

__all__ = ["EXIT_CODES", "app", "exit_code_for", "handle_errors", "main"]

F = TypeVar("F", bound=Callable[..., Any])

#: The exit-code table, the one place exceptions become codes (first match wins; see
#: docs/troubleshooting.md#exit-codes). 0 is success; click's usage errors are 2 as well.
EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, EXIT_BAD_INPUT),  # the config file or a value in it
    (FilterError, EXIT_BAD_INPUT),  # a --filter
    (QueryError, EXIT_BAD_INPUT),  # an empty, over-long or NUL-holding query; top_k too large
    (SourceError, EXIT_BAD_INPUT),  # a source path, a dataset directory
    (LLMNotConfiguredError, EXIT_BAD_INPUT),  # `ask` on a config without an llm section
    (GLRetrievalError, EXIT_RUNTIME),  # models, Ollama, storage, the index itself
    (KeyboardInterrupt, EXIT_INTERRUPTED),
    (Exception, EXIT_RUNTIME),  # a bug: still one line (GL_RETRIEVAL_DEBUG=1 shows the traceback)
)


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception, from :data:`EXIT_CODES`."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_RUNTIME


def error_line(exc: BaseException) -> str:
    """The one line printed for an exception (without the ``error:`` prefix)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, GLRetrievalError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    elif isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    else:
        text = (
            f"unexpected {type(exc).__name__}: {exc} (a bug in gl-retrieval; set "
            "GL_RETRIEVAL_DEBUG=1 to see where)"
        )
    return " ".join(text.split())


def _report(exc: BaseException) -> int:
    if os.environ.get("GL_RETRIEVAL_DEBUG") and not isinstance(exc, GLRetrievalError):
        traceback.print_exception(exc, file=sys.stderr)
    typer.echo(f"error: {error_line(exc)}", err=True)
    return exit_code_for(exc)


def handle_errors(fn: F) -> F:
    """Turn any exception of a command into one line on stderr and the code from EXIT_CODES.

    Every command of :data:`app` gets this through :class:`_Group` even without the decorator;
    applying it directly also keeps a command's errors one line when it is called on its own.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (*_CONTROL, BrokenPipeError):  # BrokenPipe: the group treats `| head` as success
            raise
        except BaseException as e:  # the one place errors become exit codes
            if isinstance(e, SystemExit):
                raise
            raise typer.Exit(_report(e)) from None

    return wrapper  # type: ignore[return-value]


_EXIT = (typer.Exit, getattr(click.exceptions, "Exit", typer.Exit))
_ABORT = (typer.Abort, getattr(click.exceptions, "Abort", typer.Abort))
_CONTROL = (*_EXIT, *_ABORT, click.exceptions.ClickException)
# click >= 8.2 raises this for a bare group (it prints the help); older clicks print it directly.
_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _usage_line(e: click.exceptions.UsageError) -> str:
    ctx = e.ctx
    command = ctx.command_path if ctx is not None else "gl-retrieval"
    message = " ".join(e.format_message().split())
    return f"error: {message} (see `{command} --help`)"


class _Group(typer.core.TyperGroup):
    """The app's command group: usage errors and every escaped exception become one line."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            code = rv if isinstance(rv, int) else EXIT_OK
        except _NoArgsIsHelp as e:
            typer.echo(e.ctx.get_help() if e.ctx is not None else str(e), err=True)
            code = EXIT_BAD_INPUT
        except click.exceptions.UsageError as e:
            typer.echo(_usage_line(e), err=True)
            code = EXIT_BAD_INPUT
        except click.exceptions.ClickException as e:
            typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            code = e.exit_code
        except _ABORT:
            typer.echo("error: aborted", err=True)
            code = EXIT_RUNTIME
        except _EXIT as e:
            code = e.exit_code
        except BaseException as e:  # escaped a command without @handle_errors
            if isinstance(e, SystemExit):
                raise
            code = _report(e)
        if not standalone_mode:
            return code
        sys.exit(code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno == errno.EPIPE:  # `gl-retrieval query ... | head`: not an error
                sys.stdout = typing_cast(Any, click.utils.PacifyFlushWrapper(sys.stdout))
                return EXIT_OK
            raise


def _version(value: bool) -> None:
    if value:
        from gl_retrieval._version import __version__

        typer.echo(f"gl-retrieval {__version__}")
        raise typer.Exit(EXIT_OK)


app = typer.Typer(
    name="gl-retrieval",
    cls=_Group,
    help="Build, query and evaluate LlamaIndex retrieval pipelines from one YAML config. "
    "Exit codes: 0 success, 1 runtime failure (a model, a server, the index), 2 bad input "
    "(the config, an argument, a filter, a source or dataset path).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Build, query and evaluate LlamaIndex retrieval pipelines from one YAML config."""


ConfigArg = Annotated[
    Path, typer.Argument(help="The pipeline's YAML config file.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _checked(
    config: Path, *, sources: bool = False, filters: list[str] | None = None
) -> PipelineConfig:
    """Load ``config`` and run the model-free checks, so their errors come before any load."""
    from gl_retrieval.checks import check_config, raise_for_problems

    cfg = load_config(config)
    raise_for_problems(check_config(cfg, sources=sources, filters=filters), source=config)
    return cfg


@contextlib.contextmanager
def _library_warnings() -> Iterator[None]:
    """Show the library's warnings (a capped chunk_size, a mixed-backend notice) on stderr."""
    import logging

    warn = logging.StreamHandler(sys.stderr)
    warn.setLevel(logging.WARNING)
    warn.setFormatter(logging.Formatter("warning: %(message)s"))
    lib_log = logging.getLogger("gl_retrieval")
    lib_log.addHandler(warn)
    try:
        yield
    finally:
        lib_log.removeHandler(warn)


def _pipeline(config: Path | PipelineConfig) -> Any:
    from gl_retrieval.pipeline import RetrievalPipeline

    quiet_model_loading()
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    return RetrievalPipeline.from_config(cfg)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _print_results(results: list[Any]) -> None:
    """Each result on one line with its score labelled, then what each score kind means."""
    from gl_retrieval.retrieval.results import format_results, score_notes

    if not results:
        typer.echo("no results")
        return
    for line in format_results(results):
        typer.echo(line)
    for note in score_notes(results):
        typer.echo(f"score {note}")


# -- commands ------------------------------------------------------------------------------------


@app.command()
@handle_errors
def validate(
    config: ConfigArg,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
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
    from gl_retrieval.checks import check_config, describe_embedder

    cfg: PipelineConfig = load_config(config)
    problems = check_config(cfg, sources=True, filters=filters)
    errors = [p for p in problems if p.level == "error"]
    for p in problems:
        typer.echo(f"{p.level}: {config}: {p.line()}", err=True)
    if errors:
        kinds = {p.kind for p in errors}
        raise typer.Exit(EXIT_BAD_INPUT if kinds - {"model"} else EXIT_RUNTIME)
    if as_json:
        _print_json(cfg.model_dump(mode="json"))
    else:
        typer.echo(
            f"{config}: ok ({describe_embedder(cfg)}, "
            f"{cfg.retriever.mode} top_k={cfg.retriever.top_k}, "
            f"reranker={'none' if cfg.reranker is None else cfg.reranker.model}, "
            f"storage={cfg.storage.backend})"
        )


@app.command()
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
    pipe = _pipeline(_checked(config, sources=True))
    with _library_warnings():
        summary = pipe.index(rebuild=rebuild, prune=prune, show_progress=not as_json)
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
    text: Annotated[str, typer.Argument(help="The text to search for.", show_default=False)],
    top_n: Annotated[
        int | None, typer.Option(min=1, max=limits.TOP_K, help="How many results to show.")
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(min=1, max=limits.TOP_K, help="How many candidates to retrieve."),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="A metadata filter; repeat it to require several. Write key=value, "
            "key!=value, key<value (also <=, >, >=, on numbers or ISO dates), 'key in a,b' or "
            "'key not in a,b'.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve (and rerank) the best chunks for a query."""
    from gl_retrieval.retrieval.filters import parse_filters
    from gl_retrieval.retrieval.queries import check_query

    check_query(text)  # a bad query or filter fails before any model loads
    parsed = parse_filters(filters or None)
    pipe = _pipeline(_checked(config))
    with _library_warnings():
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
            help="The BEIR-layout dataset directory: corpus.jsonl, queries.jsonl and "
            "qrels/<split>.tsv.",
            show_default=False,
        ),
    ],
    split: Annotated[
        str, typer.Option(help="Which split to score, that is which qrels/<split>.tsv.")
    ] = "test",
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
            help="How qrels scores become gains. 'auto' applies a dataset's documented preset "
            "(Cranfield: 5 - code) and else uses raw scores; 'raw' uses the scores as they are; "
            "or name a preset."
        ),
    ] = "auto",
    top_k: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=limits.TOP_K,
            help="How many chunks to retrieve per query; the default is max(100, retriever.top_k).",
        ),
    ] = None,
    latency_queries: Annotated[
        int, typer.Option(min=1, help="How many queries to time on the full single-query path.")
    ] = 100,
    rebuild: Annotated[
        bool, typer.Option(help="Re-embed the corpus into a fresh index at the configured storage.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="A directory to write report.md, report.json and report.png into.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Index a BEIR dataset with the config and report nDCG@10, MRR@10, Recall and latency.

    The dataset supplies the corpus (the config's sources are ignored); the stored index is
    reused when it already holds that corpus, so comparing modes embeds it once.
    """
    from gl_retrieval.eval.metrics import check_dataset
    from gl_retrieval.eval.runner import evaluate_pipeline, write_report

    check_dataset(dataset, split=split)  # a missing dataset or split fails before any load
    pipe = _pipeline(_checked(config))
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
        str,
        typer.Option(
            help="What to train: `embedder` (the bi-encoder) or `reranker` (the cross-encoder)."
        ),
    ] = "embedder",
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 3,
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
    question: Annotated[str, typer.Argument(help="The question to answer.", show_default=False)],
    top_n: Annotated[
        int | None,
        typer.Option(min=1, max=limits.TOP_K, help="How many sources to give the LLM."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question with the config's LLM, from the retrieved sources."""
    from gl_retrieval.retrieval.queries import check_query

    check_query(question)
    cfg = _checked(config)
    if cfg.llm is None:
        _pipeline(cfg).ask(question)  # raises the one-line "needs an llm section" error
    pipe = _pipeline(cfg)
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
def verify(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Check the committed index completely: every file's checksum, the vectors (NaN/inf), the
    BM25 side and the document table. Loads no model. Exits 0 when intact, 1 when damaged.
    """
    report = _pipeline(config).verify()
    if as_json:
        _print_json(report)
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


@app.command()
@handle_errors
def demo(
    persist_dir: Annotated[
        Path, typer.Option(help="The directory where the demo index is kept.")
    ] = Path(".gl_index/demo"),
    as_json: JsonOpt = False,
) -> None:
    """Index a small bundled corpus with the packaged MiniLM and answer a few queries, offline."""
    from gl_retrieval.demo import run_demo

    quiet_model_loading()
    report = run_demo(persist_dir=persist_dir, show_progress=not as_json)
    if as_json:
        _print_json(report)
        return
    from gl_retrieval.retrieval.results import SCORE_KINDS

    typer.echo(report["summary"])
    kinds: list[str] = []
    for q in report["queries"]:
        typer.echo(f"\n? {q['query']}")
        for i, r in enumerate(q["results"], 1):
            kind = r.get("score_kind") or "score"
            kinds += [kind] if kind not in kinds else []
            typer.echo(
                f"  {i}. {kind} {r['score']:.3f}  [{r['doc_id']}] {_snippet(r['text'], 100)}"
            )
    for kind in kinds:
        if kind in SCORE_KINDS:
            typer.echo(f"\nscore {kind}: {SCORE_KINDS[kind]}")


@app.command()
@handle_errors
def serve(
    config: ConfigArg,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind.")] = 8080,
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
    server = create_server(load_config(config), host=host, port=port, insecure=insecure)
    server.run()


# -- models ---------------------------------------------------------------------------------------

models_app = typer.Typer(
    help="Fetch the models a config names (and build their exports), for offline use.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(models_app, name="models")


@models_app.command("pull")
@handle_errors
def models_pull(config: ConfigArg, as_json: JsonOpt = False) -> None:
    """Download the config's hub models (embedder, reranker) and build their exports.

    Honours HF_HOME / HF_HUB_CACHE. Ollama models print the `ollama pull` command to run;
    packaged and local models need nothing. With `backend: onnx` or `openvino`, the export is
    built once into $GL_RETRIEVAL_CACHE/exports (default ~/.cache/gl_retrieval/exports), so
    later processes, offline, load it without torch.
    """
    from gl_retrieval.models import configured_models, hf_cache_dir, pull_model
    from gl_retrieval.models.exports import (
        configured_exports,
        ensure_export,
        exports_dir,
        spec_dict,
    )

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
    for spec in configured_exports(cfg):
        quiet_model_loading()
        path = ensure_export(spec, log=lambda line: typer.echo(line, err=True))
        exports.append({**spec_dict(spec), "path": str(path)})
        if not as_json:
            typer.echo(f"{spec.kind}: {spec.model} -> {spec.backend} {spec.weights}: {path}")
    if as_json:
        _print_json(
            {
                "cache": str(hf_cache_dir()),
                "models": [r.to_dict() for r in reports],
                "exports_cache": str(exports_dir()),
                "exports": exports,
            }
        )
    if failures:
        raise typer.Exit(max(exit_code_for(e) for e in failures))


@models_app.command("list")
@handle_errors
def models_list(as_json: JsonOpt = False) -> None:
    """Show the cached onnx/openvino exports (built by `models pull` or on first use)."""
    from gl_retrieval.models.exports import exports_dir, list_exports

    rows = list_exports()
    if as_json:
        _print_json({"exports_cache": str(exports_dir()), "exports": rows})
        return
    typer.echo(f"exports in {exports_dir()}:" if rows else f"no exports in {exports_dir()}")
    for r in rows:
        typer.echo(
            f"  {r.get('kind', '?'):<8} {r.get('backend', '?'):<8} {r.get('weights', '?'):<4} "
            f"{r['bytes'] / 1e6:7.1f} MB  {r.get('model', '?')}  ({r.get('created_at', '?')})"
        )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
