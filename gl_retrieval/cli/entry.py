"""The `gl-retrieval` app: the root group, ``--version``, and every command in help order.

The commands live in modules by topic; this is the one place they are named and registered.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
import typer.core

from gl_retrieval.cli.demo import demo
from gl_retrieval.cli.errors import EXIT_OK, CommandGroup
from gl_retrieval.cli.index_commands import index, info, validate, verify
from gl_retrieval.cli.model_commands import models_list, models_pull
from gl_retrieval.cli.query_commands import ask, eval_, query
from gl_retrieval.cli.train_serve_commands import finetune, serve

__all__ = ["app", "main", "models_app"]


class Command(typer.core.TyperCommand):
    """A command whose usage line names its arguments by their metavar, as click does
    (``query [OPTIONS] CONFIG TEXT``), instead of typer's ``{config} {text}``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = (param.metavar or param.name or "ARG").upper()
            name += "..." if param.nargs != 1 else ""
            pieces.append(name if param.required else f"[{name}]")
        return pieces


def _version(value: bool) -> None:
    if value:
        from gl_retrieval._version import __version__

        typer.echo(f"gl-retrieval {__version__}")
        raise typer.Exit(EXIT_OK)


app = typer.Typer(
    name="gl-retrieval",
    cls=CommandGroup,
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


app.command(cls=Command)(validate)
app.command(cls=Command)(index)
app.command(cls=Command)(query)
app.command(name="eval", cls=Command)(eval_)
app.command(cls=Command)(finetune)
app.command(cls=Command)(ask)
app.command(cls=Command)(info)
app.command(cls=Command)(verify)
app.command(cls=Command)(demo)
app.command(cls=Command)(serve)

models_app = typer.Typer(
    help="Fetch the models a config names (and build their exports), for offline use.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(models_app, name="models")
models_app.command("pull", cls=Command)(models_pull)
models_app.command("list", cls=Command)(models_list)


def main() -> None:
    """Console-script entry point."""
    app()
