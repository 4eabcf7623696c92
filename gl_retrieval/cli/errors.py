"""The exit-code table, and the one place a command's errors become a line and a code.

Every command of the app runs inside :class:`CommandGroup`: a usage error, a library error or a
bug each print one ``error: ...`` line on stderr (never a traceback; ``GL_RETRIEVAL_DEBUG=1``
shows it for a bug) and exit with the code :data:`EXIT_CODES` gives. See
docs/troubleshooting.md#exit-codes.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar
from typing import cast as typing_cast

import typer
import typer.core

try:  # typer >= 0.20 carries its own copy of click; older ones use click itself
    from typer import _click as click  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the installed typer
    import click  # type: ignore[no-redef]

from gl_retrieval.errors import (
    ConfigError,
    FilterError,
    GLRetrievalError,
    LLMNotConfiguredError,
    QueryError,
    SourceError,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CODES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "CommandGroup",
    "error_line",
    "exit_code_for",
    "handle_errors",
    "report_error",
]

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


def report_error(exc: BaseException) -> int:
    if os.environ.get("GL_RETRIEVAL_DEBUG") and not isinstance(exc, GLRetrievalError):
        traceback.print_exception(exc, file=sys.stderr)
    typer.echo(f"error: {error_line(exc)}", err=True)
    return exit_code_for(exc)


def handle_errors(fn: F) -> F:
    """Turn any exception of a command into one line on stderr and the code from EXIT_CODES.

    Every command of the app gets this through :class:`CommandGroup` even without the
    decorator;
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
            raise typer.Exit(report_error(e)) from None

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


class _PrefixedLastResort(logging.Handler):
    """Python's last-resort handler (a warning no handler takes goes to stderr), with the
    CLI's ``warning:`` prefix, so every command's warnings read as docs/troubleshooting.md shows.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{record.levelname.lower()}: {self.format(record)}\n")
        except Exception:  # pragma: no cover - as logging's own handlers do
            self.handleError(record)


_LAST_RESORT = _PrefixedLastResort()


class CommandGroup(typer.core.TyperGroup):
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
            code = report_error(e)
        if not standalone_mode:
            return code
        sys.exit(code)

    def invoke(self, ctx: click.Context) -> Any:
        previous, logging.lastResort = logging.lastResort, _LAST_RESORT  # type: ignore[assignment]
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno == errno.EPIPE:  # `gl-retrieval query ... | head`: not an error
                sys.stdout = typing_cast(Any, click.utils.PacifyFlushWrapper(sys.stdout))
                return EXIT_OK
            raise
        finally:
            logging.lastResort = previous
