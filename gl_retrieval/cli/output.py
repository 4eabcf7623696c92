"""What the commands share: the config argument, ``--json``, loading, and printing.

Results go to stdout (with ``--json``, only the JSON document); notes, warnings and progress go
to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from gl_retrieval.config import PipelineConfig, limits, load_config
from gl_retrieval.models import quiet_model_loading

__all__ = [
    "ConfigArg",
    "JsonOpt",
    "TopKOpt",
    "checked_config",
    "library_warnings",
    "open_pipeline",
    "print_json",
    "print_results",
    "snippet",
]

ConfigArg = Annotated[
    Path,
    typer.Argument(metavar="CONFIG", help="The pipeline's YAML config file.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TopKOpt = Annotated[
    int | None,
    typer.Option(min=1, max=limits.TOP_K, metavar="N", help="How many candidates to retrieve."),
]


def checked_config(
    config: Path, *, sources: bool = False, filters: list[str] | None = None
) -> PipelineConfig:
    """Load ``config`` and run the model-free checks, so their errors come before any load."""
    from gl_retrieval.cli.checks import check_config, raise_for_problems

    cfg = load_config(config)
    raise_for_problems(check_config(cfg, sources=sources, filters=filters), source=config)
    return cfg


@contextlib.contextmanager
def library_warnings() -> Iterator[None]:
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


def open_pipeline(config: Path | PipelineConfig) -> Any:
    """The config's :class:`RetrievalPipeline` (nothing loads yet), model loads kept quiet."""
    from gl_retrieval.pipeline import RetrievalPipeline

    quiet_model_loading()
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    return RetrievalPipeline.from_config(cfg)


def print_json(data: Any) -> None:
    """The one JSON document of a ``--json`` run, on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def snippet(text: str, width: int = 160) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_results(results: list[Any]) -> None:
    """Each result on one line with its score labelled, then what each score kind means."""
    from gl_retrieval.retrieval.results import format_results, score_notes

    if not results:
        typer.echo("no results")
        return
    for line in format_results(results):
        typer.echo(line)
    for note in score_notes(results):
        typer.echo(f"score {note}")
