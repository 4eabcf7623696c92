"""The `gl-retrieval` command line: thin typer commands over the library API.

Takes a config path and a command's arguments; hands on what the library returns, printed: a
line per result on stdout, or with ``--json`` only the JSON document there. Notes, warnings and
progress go to stderr. Every error is one ``error: ...`` line on stderr and an exit code from
:data:`EXIT_CODES` (0 ok, 1 runtime failure, 2 bad input, 130 interrupted), usage errors
included.

The rooms: ``entry`` (the app, every command registered in help order, ``main``), ``errors``
(the exit-code table and the error handling), ``output`` (the shared arguments, loading and
printing), ``index_commands`` (validate, index, info, verify), ``query_commands`` (query, ask,
eval), ``model_commands`` (models pull / list), ``train_serve_commands`` (finetune, serve),
``checks`` (what can be checked without a model), ``demo`` (the offline demo).

Example:
    >>> from typer.testing import CliRunner
    >>> from gl_retrieval.cli import app
    >>> CliRunner().invoke(app, ["--version"]).output.startswith("gl-retrieval ")
    True
"""

from __future__ import annotations

from gl_retrieval.cli.entry import app, main
from gl_retrieval.cli.errors import EXIT_CODES, exit_code_for, handle_errors

__all__ = ["EXIT_CODES", "app", "exit_code_for", "handle_errors", "main"]
