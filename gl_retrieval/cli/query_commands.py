"""Commands that ask the index: `query`, `ask` (with the config's LLM), and `eval` on BEIR data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gl_retrieval.cli.errors import handle_errors
from gl_retrieval.cli.output import (
    ConfigArg,
    JsonOpt,
    TopKOpt,
    checked_config,
    library_warnings,
    open_pipeline,
    print_json,
    print_results,
    snippet,
)
from gl_retrieval.config import limits

__all__ = ["ask", "eval_", "query"]


@handle_errors
def query(
    config: ConfigArg,
    text: Annotated[
        str, typer.Argument(metavar="TEXT", help="The text to search for.", show_default=False)
    ],
    top_n: Annotated[
        int | None,
        typer.Option(min=1, max=limits.TOP_K, metavar="N", help="How many results to show."),
    ] = None,
    top_k: TopKOpt = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="FILTER",
            help="A metadata filter; repeat it to require several. Write key=value, "
            "key!=value, key<value (also <=, >, >=, on numbers or ISO dates), 'key in a,b' or "
            "'key not in a,b'.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve (and rerank) the best chunks for a query."""
    pipe = open_pipeline(checked_config(config))
    # Checked once, before any model loads: a bad query, depth or filter fails here.
    request = pipe.request([text], filters=filters or None, top_k=top_k, top_n=top_n)
    _note_top_n(top_n, request.top_k)
    with library_warnings():
        (results,) = pipe.run(request)
    if as_json:
        payload: dict[str, Any] = {"query": text}
        if filters:
            payload["filters"] = list(filters)
        print_json({**payload, "results": [r.to_dict() for r in results]})
    else:
        print_results(results)


@handle_errors
def ask(
    config: ConfigArg,
    question: Annotated[
        str,
        typer.Argument(metavar="QUESTION", help="The question to answer.", show_default=False),
    ],
    top_n: Annotated[
        int | None,
        typer.Option(
            min=1, max=limits.TOP_K, metavar="N", help="How many sources to give the LLM."
        ),
    ] = None,
    top_k: TopKOpt = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            metavar="FILTER",
            help="A metadata filter on the sources, as for `query`; repeat it to require several.",
            show_default=False,
        ),
    ] = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Print the answer as the LLM writes it (the default when stdout is a "
            "terminal); --no-stream waits for the whole answer. --json never streams.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question with the config's LLM, from the retrieved sources.

    The answer comes first, then its numbered sources; on a terminal the answer appears as it
    is written.
    """
    from gl_retrieval.retrieval.queries import check_query

    check_query(question)
    cfg = checked_config(config, filters=filters)
    pipe = open_pipeline(cfg)
    if pipe.llm is None:
        pipe.ask(question)  # raises the one-line "needs an llm section" error, before any load
    options: dict[str, Any] = {"filters": filters or None, "top_k": top_k, "top_n": top_n}
    _note_top_n(top_n, top_k or cfg.retriever.top_k)
    if as_json:
        with library_warnings():
            answer = pipe.ask(question, **options)
        print_json(answer.to_dict())
        return
    if _stdout_is_terminal() if stream is None else stream:
        with library_warnings():
            sources = _stream_answer(pipe.ask_stream(question, **options))
    else:
        with library_warnings():
            answer = pipe.ask(question, **options)
        typer.echo(answer.answer)
        sources = answer.sources
    typer.echo("\nsources:")
    for i, s in enumerate(sources, 1):
        typer.echo(f"  [{i}] {s.doc_id}  {snippet(s.node.get_content(), 100)}")


def _note_top_n(top_n: int | None, top_k: int) -> None:
    """Say so when --top-n asks for more than the candidates retrieved: it cannot be met."""
    if top_n is not None and top_n > top_k:
        typer.echo(
            f"note: --top-n {top_n} is more than the {top_k} candidates retrieved "
            f"(--top-k, else retriever.top_k), so at most {top_k} come back; pass "
            f"--top-k {top_n} for more",
            err=True,
        )


def _stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (then `ask` streams); tests monkeypatch this."""
    return sys.stdout.isatty()


def _stream_answer(stream: Any) -> list[Any]:
    """Echo an ``AnswerStream``'s text as it arrives; returns its sources.

    The stream is closed however this ends, so an interrupt or an LLM error mid-answer stops
    the generation; a partial answer gets its line ended before the error line on stderr.
    """
    wrote = ""
    try:
        for delta in stream:
            typer.echo(delta, nl=False)
            wrote = delta or wrote
    finally:
        if wrote and not wrote.endswith("\n"):
            typer.echo()
        stream.close()
    return list(stream.sources)


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
            metavar="N",
            help="How many chunks to retrieve per query; the default is max(100, retriever.top_k).",
        ),
    ] = None,
    latency_queries: Annotated[
        int,
        typer.Option(
            min=1, metavar="N", help="How many queries to time on the full single-query path."
        ),
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
    pipe = open_pipeline(checked_config(config))
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
        print_json(result.to_dict())
        return
    typer.echo(result.markdown())
