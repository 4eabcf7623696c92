"""The exit-code table over every command: 0 ok, 1 runtime failure, 2 bad input, 130 interrupted.

Commands are discovered from the app, so a command added later is checked without editing this
file: each must answer --help with 0, and a missing, a broken and a non-file config with one
`error:` line and exit 2, before loading anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import gl_retrieval
from gl_retrieval import errors
from gl_retrieval.cli import EXIT_CODES, app, exit_code_for, index_commands
from gl_retrieval.cli.errors import CommandGroup

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands() -> list[tuple[list[str], Any]]:
    """(path, click command) of every leaf command, sub-apps (``models pull``) included."""
    root = typer.main.get_command(app)
    out: list[tuple[list[str], Any]] = []

    def walk(group: Any, prefix: list[str]) -> None:
        for name, cmd in sorted(group.commands.items()):
            if getattr(cmd, "commands", None):
                walk(cmd, [*prefix, name])
            else:
                out.append(([*prefix, name], cmd))

    walk(root, [])
    return out


COMMANDS = _commands()
IDS = [" ".join(path) for path, _ in COMMANDS]


def _takes_config(cmd: Any) -> bool:
    return any(p.name == "config" and p.required for p in cmd.params)


def one_error_line(result: Any, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_the_commands_are_found() -> None:
    assert {"validate", "index", "query", "eval", "ask", "info", "demo", "models pull"} <= set(IDS)


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=IDS)
def test_help_exits_0_and_reads_as_sentences(path: list[str]) -> None:
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "╭" not in r.output and "│" not in r.output  # plain text, no boxes
    cmd = dict(zip(IDS, (c for _, c in COMMANDS), strict=True))[" ".join(path)]
    for text in [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]:
        first = text.strip().split("\n\n")[0]
        if first:
            assert first[0].isupper() or first[0] in "`'-", (path, first)
            assert first.rstrip().endswith((".", ")", ":")), (path, first)


@pytest.mark.parametrize(
    "path",
    [p for p, c in COMMANDS if _takes_config(c)],
    ids=[i for (p, c), i in zip(COMMANDS, IDS, strict=True) if _takes_config(c)],
)
def test_every_config_command_maps_bad_configs_to_2(path: list[str], tmp_path: Path) -> None:
    cmd = dict(zip(IDS, (c for _, c in COMMANDS), strict=True))[" ".join(path)]
    data = tmp_path / "beir"  # a valid dataset, so the config is what fails
    (data / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (data / name).write_text('{"_id": "1", "text": "x"}\n')
    (data / "qrels" / "test.tsv").write_text("1\t1\t1\n")
    (data / "qrels" / "train.tsv").write_text("1\t1\t1\n")
    values = {"dataset": str(data), "train": str(data), "output": str(tmp_path / "out")}
    extra: list[str] = []
    for p in cmd.params:
        if not p.required or p.name == "config":
            continue
        if p.name in values:  # a required option (eval --dataset, finetune --train/--output)
            extra += [p.opts[0], values[p.name]]
        else:  # a required argument: the query or the question
            extra.append("x")
    missing = tmp_path / "missing.yaml"
    line = one_error_line(runner.invoke(app, [*path, str(missing), *extra]), 2)
    assert str(missing) in line
    broken = tmp_path / "broken.yaml"
    broken.write_text("retriever: {top_k: [}\n")
    line = one_error_line(runner.invoke(app, [*path, str(broken), *extra]), 2)
    assert str(broken) in line and "not valid YAML" in line
    typo = tmp_path / "typo.yaml"
    typo.write_text("retriever: {top_kk: 5}\n")
    line = one_error_line(runner.invoke(app, [*path, str(typo), *extra]), 2)
    assert "retriever.top_kk: unknown key" in line
    line = one_error_line(runner.invoke(app, [*path, str(tmp_path), *extra]), 2)
    assert "a directory" in line


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=IDS)
def test_usage_errors_are_one_line_exit_2(path: list[str]) -> None:
    line = one_error_line(runner.invoke(app, [*path, "--no-such-option"]), 2)
    assert "--no-such-option" in line and "--help" in line


def test_version_and_bare_invocation() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout == f"gl-retrieval {gl_retrieval.__version__}\n"
    r = runner.invoke(app, [])
    assert r.exit_code == 2 and "Usage:" in r.output and "Commands:" in r.output
    line = one_error_line(runner.invoke(app, ["no-such-command"]), 2)
    assert "No such command 'no-such-command'" in line


def test_runtime_failure_is_1(tmp_path: Path, small_config: dict[str, Any]) -> None:
    import yaml

    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(small_config))
    line = one_error_line(runner.invoke(app, ["info", str(cfg)]), 1)  # no index yet
    assert line.startswith("error: no index at ")


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (RuntimeError("boom"), 1, "error: unexpected RuntimeError: boom (a bug in gl-retrieval"),
        (KeyboardInterrupt(), 130, "error: interrupted"),
        (MemoryError(), 1, "error: out of memory"),
        (PermissionError(13, "Permission denied", "/x/y"), 1, "error: Permission denied: /x/y"),
        (errors.StorageError("db down"), 1, "error: db down"),
        (errors.SourceError("no such dir"), 2, "error: no such dir"),
        (errors.QueryError("too long"), 2, "error: too long"),
        (errors.LLMNotConfiguredError("no llm"), 2, "error: no llm"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_unexpected_errors_are_still_one_line(
    exc: BaseException, code: int, line: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(index_commands, "load_config", explode)
    monkeypatch.delenv("GL_RETRIEVAL_DEBUG", raising=False)
    got = one_error_line(runner.invoke(app, ["validate", str(tmp_path / "x.yaml")]), code)
    assert got.startswith(line), got


def test_a_new_command_gets_the_table_without_the_decorator() -> None:
    extra = typer.Typer(cls=CommandGroup, rich_markup_mode=None)

    @extra.command()
    def boom() -> None:
        """Fail on purpose."""
        raise errors.FilterError("bad filter 'x'")

    @extra.command()
    def other() -> None:
        """Another, so `boom` stays a subcommand."""

    line = one_error_line(runner.invoke(extra, ["boom"]), 2)
    assert line == "error: bad filter 'x'"


def test_every_library_error_has_a_code() -> None:
    kinds = [
        getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)
    ]
    for kind in kinds:
        assert exit_code_for(kind.__new__(kind)) in (1, 2), kind
    assert EXIT_CODES[-1] == (Exception, 1)


def test_troubleshooting_documents_the_table() -> None:
    page = (DOCS / "troubleshooting.md").read_text()
    section = page[page.index("## Exit codes") :]
    rows = dict(re.findall(r"^\| `?(\d+)`? \| (.+)$", section, flags=re.M))
    assert set(rows) == {"0", "1", "2", "130"}
    for kind, code in EXIT_CODES:
        if kind.__module__ == "gl_retrieval.errors":
            assert kind.__name__ in rows[str(code)], (kind.__name__, code)


def test_input_errors_come_before_any_heavy_import(tmp_path: Path) -> None:
    """validate, index, query and eval refuse bad input without importing torch (and all but
    query, which parses its filters with LlamaIndex's types, without LlamaIndex)."""
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text("embedder: {model: 'packaged:all-MiniLM-L6-v2'}\nsources: [{path: /nonexist}]\n")
    script = f"""
import sys
from typer.testing import CliRunner
from gl_retrieval.cli import app
runs = [["validate", {str(cfg)!r}], ["index", {str(cfg)!r}],
        ["eval", {str(cfg)!r}, "--dataset", "/nonexist"]]
for args in runs:
    assert CliRunner().invoke(app, args).exit_code == 2, args
heavy = [m for m in ("torch", "llama_index", "sentence_transformers") if m in sys.modules]
assert not heavy, heavy
assert CliRunner().invoke(app, ["query", {str(cfg)!r}, ""]).exit_code == 2
heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
assert not heavy, heavy
"""
    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_closed_pipe_is_not_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`gl-retrieval query ... | head -1`: the reader went away; exit quietly with 0."""

    def closed(*args: Any, **kwargs: Any) -> Any:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(index_commands, "load_config", closed)
    r = runner.invoke(app, ["validate", str(tmp_path / "x.yaml")])
    assert r.exit_code == 0 and r.stderr == "", r.output
