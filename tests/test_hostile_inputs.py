"""Hostile input, one row per input: the exit code, one line naming the file/key/limit, and a
wall-time and memory bound (tracemalloc for the row's peak, resource for the process), so a
hang or a blow-up fails the row instead of stalling the suite.

The rows that go through the CLI all fail before any model loads; the table in
docs/hostile-inputs.md lists every row and what it now gets.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub.constants  # noqa: F401 - imported now: it freezes HF_HUB_OFFLINE when first imported
import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval.cli import app
from gl_retrieval.config import SourceConfig, limits, parse_config
from gl_retrieval.errors import ConfigError, SourceError
from gl_retrieval.eval.metrics import load_beir
from gl_retrieval.ingest.sources import Skipped, read_sources

runner = CliRunner()

WALL_S = 20.0  # generous: every row takes well under a second when nothing is wrong
PEAK_BYTES = 96 * 1024 * 1024  # Python allocations of one row (the largest reads a 16 MiB line)
RSS_BYTES = 6 * 1024**3  # the whole test process, models included


class Hang(Exception):
    """Raised by the alarm when a row runs past its wall-time bound."""


@contextmanager
def bounded(wall_s: float = WALL_S) -> Iterator[dict[str, float]]:
    """Run a block under an alarm (a hang raises instead of stalling) and measure it."""

    def ring(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {wall_s:.0f} s")

    stats: dict[str, float] = {}
    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, wall_s + 5)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        yield stats
    finally:
        stats["seconds"] = time.perf_counter() - t0
        stats["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert stats["seconds"] < wall_s, stats
    assert stats["peak"] < PEAK_BYTES, stats
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < RSS_BYTES


# -- the table ----------------------------------------------------------------------------------

Setup = Callable[[Path, dict[str, Any]], tuple[list[Any], list[str]]]


@dataclass(frozen=True)
class Row:
    """One hostile input: ``setup`` writes it and returns (CLI args, text the line must hold)."""

    id: str
    setup: Setup
    code: int
    env: dict[str, str] = field(default_factory=dict)


def _config(tmp: Path, base: dict[str, Any], text: str | bytes | None = None, **over: Any) -> Path:
    path = tmp / "pipeline.yaml"
    if text is None:
        text = yaml.safe_dump({**base, **over})
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def validate(text: str | bytes, *needles: str) -> Setup:
    def setup(tmp: Path, base: dict[str, Any]) -> tuple[list[Any], list[str]]:
        path = _config(tmp, base, text)
        return ["validate", path], [str(path), *needles]

    return setup


def validate_with(needles: list[str], **over: Any) -> Setup:
    def setup(tmp: Path, base: dict[str, Any]) -> tuple[list[Any], list[str]]:
        resolved = {k: (v(tmp) if callable(v) else v) for k, v in over.items()}
        path = _config(tmp, base, **resolved)
        return ["validate", path], [str(path), *needles]

    return setup


def laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def special_config(kind: str) -> Setup:
    def setup(tmp: Path, base: dict[str, Any]) -> tuple[list[Any], list[str]]:
        if kind == "fifo":
            path = tmp / "pipe.yaml"
            os.mkfifo(path)
            return ["validate", path], [str(path), "named pipe (FIFO)"]
        if kind == "device":
            return ["validate", "/dev/zero"], ["/dev/zero", "a device"]
        if kind == "directory":
            return ["validate", tmp], [str(tmp), "a directory"]
        if kind == "missing":
            return ["validate", tmp / "nope.yaml"], [str(tmp / "nope.yaml"), "not found"]
        if kind == "sparse":  # 300 MB that costs no disk: only the first 1 MiB + 1 is read
            path = tmp / "huge.yaml"
            with path.open("wb") as f:
                f.truncate(300 * 1024 * 1024)
            return ["validate", path], [str(path), "larger than 1 MiB (the limit)"]
        raise AssertionError(kind)

    return setup


def source(kind: str) -> Setup:
    """`index` with a source path that is missing or not a file: refused before any load."""

    def setup(tmp: Path, base: dict[str, Any]) -> tuple[list[Any], list[str]]:
        if kind == "fifo":
            path = tmp / "feed.jsonl"
            os.mkfifo(path)
            needle = "named pipe (FIFO)"
        elif kind == "device":
            path, needle = Path("/dev/zero"), "a device"
        else:
            path, needle = tmp / "gone", "does not exist"
        cfg = _config(tmp, base, sources=[{"path": str(path)}])
        return ["index", cfg], [str(path), needle, "sources[].path"]

    return setup


def query(text: str, *extra: str, needles: list[str]) -> Setup:
    def setup(tmp: Path, base: dict[str, Any]) -> tuple[list[Any], list[str]]:
        return ["query", _config(tmp, base), text, *extra], needles

    return setup


def dataset(kind: str) -> Setup:
    def setup(tmp: Path, base: dict[str, Any]) -> tuple[list[Any], list[str]]:
        root = tmp / "beir"
        root.mkdir()
        (root / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
        (root / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
        (root / "qrels").mkdir()
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
        split, needles = "test", [str(root)]
        if kind == "missing":
            root = tmp / "nope"
            needles = [str(root), "does not exist"]
        elif kind == "file":
            root = root / "corpus.jsonl"
            needles = [str(root), "not a directory"]
        elif kind == "fifo-queries":
            (root / "queries.jsonl").unlink()
            os.mkfifo(root / "queries.jsonl")
            needles = [str(root / "queries.jsonl"), "named pipe"]
        elif kind == "fifo-qrels":
            (root / "qrels" / "test.tsv").unlink()
            os.mkfifo(root / "qrels" / "test.tsv")
            needles = ["test.tsv", "named pipe"]
        elif kind == "split-path":
            split, needles = "../../../etc/passwd", ["'../../../etc/passwd'", "not a split name"]
        elif kind == "split-missing":
            split, needles = "dev", ["split 'dev' not found", "available splits: test"]
        cmd = ["eval", _config(tmp, base), "--dataset", root, "--split", split]
        return cmd, needles

    return setup


def _missing_model_dir(tmp: Path) -> dict[str, Any]:
    return {"model": str(tmp / "no-model"), "top_n": 3}


ROWS = [
    # -- the config file ------------------------------------------------------------------------
    Row("yaml-billion-laughs", validate(laughs(), "100,000 values (the limit)"), 2),
    Row("yaml-deep-flow", validate("a: " + "[" * 500_000, "32 levels"), 2),
    Row("yaml-many-values", validate("".join(f"k{i}: {i}\n" for i in range(60_000)), "10,000"), 2),
    Row(
        "yaml-deep-block",
        validate("a:\n" + "".join("  " * i + "k:\n" for i in range(1, 200)), "32 levels"),
        2,
    ),
    Row("yaml-recursive-alias", validate("a: &x [*x]\n", "refers to itself"), 2),
    Row("yaml-python-tag", validate('a: !!python/object/apply:os.system ["id"]\n', "not valid"), 2),
    Row("config-2mib", validate("# " + "x" * (2 * 1024 * 1024) + "\n", "1 MiB (the limit)"), 2),
    Row("config-300mb-sparse", special_config("sparse"), 2),
    Row("config-not-utf8", validate(b"retriever:\n  top_k: \xff\xfe5\n", "not UTF-8", "line 2"), 2),
    Row("config-nul-bytes", validate(b"retriever: {top_k: 5}\n\0\0\0", "NUL"), 2),
    Row("config-fifo", special_config("fifo"), 2),
    Row("config-dev-zero", special_config("device"), 2),
    Row("config-directory", special_config("directory"), 2),
    Row("config-missing", special_config("missing"), 2),
    Row("config-top-level-list", validate("- a\n- b\n", "must be a mapping"), 2),
    Row("config-non-string-key", validate("{1: 2}\n", "Keys should be strings"), 2),
    Row(
        "config-100k-char-value",
        validate("retriever: {mode: " + "x" * 100_000 + "}\n", "retriever.mode", "characters)"),
        2,
    ),
    Row(
        "config-top-k-huge",
        validate("retriever: {top_k: 1000000000000}\n", "retriever.top_k", "10000"),
        2,
    ),
    Row(
        "config-negative-chunk", validate("chunking: {chunk_size: -5}\n", "chunking.chunk_size"), 2
    ),
    Row("config-nan-alpha", validate("retriever: {alpha: .nan}\n", "retriever.alpha"), 2),
    Row(
        "config-infinite-timeout",
        validate("llm: {timeout_s: .inf}\n", "llm.timeout_s", "3600"),
        2,
    ),
    Row(
        "config-unknown-packaged",
        validate_with(
            ["embedder.model", "unknown packaged model 'nope'"], embedder={"model": "packaged:nope"}
        ),
        2,
    ),
    Row(
        "config-missing-model-dir",
        validate_with(
            ["embedder.model", "does not exist"],
            embedder=lambda tmp: {"model": str(tmp / "no-such-model")},
        ),
        2,
    ),
    Row(
        "config-missing-reranker-dir",
        validate_with(["reranker.model", "does not exist"], reranker=_missing_model_dir),
        2,
    ),
    Row(
        "config-bad-hub-id",
        validate_with(
            ["embedder.model", "neither an existing local path nor a valid hub id"],
            embedder={"model": "a/b/c d"},
        ),
        2,
    ),
    Row(
        "config-llm-url-not-http",
        validate_with(["llm.base_url", "not an http://"], llm={"base_url": "file:///etc/passwd"}),
        2,
    ),
    Row(
        "config-persist-dir-is-file",
        validate_with(
            ["storage.persist_dir", "not a directory"],
            storage=lambda tmp: {"persist_dir": str(_file(tmp / "f"))},
        ),
        2,
    ),
    Row(
        "config-missing-source",
        validate_with(
            ["sources[0].path", "does not exist"], sources=lambda tmp: [{"path": str(tmp / "gone")}]
        ),
        2,
    ),
    Row(
        "config-offline-hub-model",
        validate_with(
            ["embedder.model", "HF_HUB_OFFLINE is set"], embedder={"model": "acme/not-cached"}
        ),
        1,
        env={"HF_HUB_OFFLINE": "1"},
    ),
    Row(
        "validate-impossible-date-filter",
        lambda tmp, base: (
            ["validate", _config(tmp, base), "--filter", "date<2026-13-01"],
            ["--filter", "'2026-13-01' is not a real date"],
        ),
        2,
    ),
    # -- sources, refused by `index` before any model loads --------------------------------------
    Row("index-source-missing", source("missing"), 2),
    Row("index-source-fifo", source("fifo"), 2),
    Row("index-source-dev-zero", source("device"), 2),
    # -- queries and filters, refused before any model loads ------------------------------------
    Row("query-20k-chars", query("q" * 20_000, needles=["20,000 characters", "10,000"]), 2),
    Row("query-nul", query("a\0b", needles=["NUL"]), 2),
    # a non-UTF-8 byte on the command line arrives as a lone surrogate (issue 24 item 1)
    Row("query-lone-surrogate", query("wing \udcff", needles=["lone surrogate", "UTF-8"]), 2),
    Row(
        "ask-lone-surrogate",
        lambda tmp, base: (["ask", _config(tmp, base), "wing \udcff"], ["lone surrogate"]),
        2,
    ),
    Row("query-empty", query("   ", needles=["non-empty"]), 2),
    Row("query-top-k-huge", query("x", "--top-k", "1000000000", needles=["--top-k"]), 2),
    Row("query-top-k-negative", query("x", "--top-k", "-3", needles=["--top-k"]), 2),
    Row("query-top-n-word", query("x", "--top-n", "many", needles=["--top-n"]), 2),
    Row(
        "query-impossible-date",
        query("x", "--filter", "date<2026-13-01", needles=["'2026-13-01' is not a real date"]),
        2,
    ),
    Row(
        "query-feb-30",
        query("x", "--filter", "date>=2026-02-30", needles=["'2026-02-30' is not a real date"]),
        2,
    ),
    Row(
        "query-infinite-number",
        query("x", "--filter", "year>1e999", needles=["'1e999'", "finite"]),
        2,
    ),
    Row(
        "query-huge-integer",
        query("x", "--filter", "year>" + "9" * 5000, needles=["4,096 characters"]),
        2,
    ),
    Row(
        "query-101-filters",
        query("x", *(["--filter", "a=1"] * 101), needles=["101 filters", "limit of 100"]),
        2,
    ),
    Row(
        "query-filter-nul",
        query("x", "--filter", "a=\0", needles=["NUL"]),
        2,
    ),
    Row(
        "query-filter-garbage",
        query("x", "--filter", "~" * 4000, needles=["cannot parse filter", "characters)"]),
        2,
    ),
    # -- BEIR dataset directories for `eval`, refused before any model loads --------------------
    Row("eval-dataset-missing", dataset("missing"), 2),
    Row("eval-dataset-is-file", dataset("file"), 2),
    Row("eval-queries-fifo", dataset("fifo-queries"), 2),
    Row("eval-qrels-fifo", dataset("fifo-qrels"), 2),
    Row("eval-split-path-traversal", dataset("split-path"), 2),
    Row("eval-split-missing", dataset("split-missing"), 2),
    # -- the command line itself ----------------------------------------------------------------
    Row("cli-unknown-command", lambda tmp, base: (["qurey"], ["No such command", "--help"]), 2),
    Row("cli-unknown-option", lambda tmp, base: (["index", "--bogus"], ["--bogus"]), 2),
    Row("cli-missing-argument", lambda tmp, base: (["query"], ["Missing argument"]), 2),
]


def _file(path: Path) -> Path:
    path.write_text("not a directory")
    return path


@pytest.fixture()
def base_config(small_config: dict[str, Any]) -> dict[str, Any]:
    return small_config


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_hostile_input(
    row: Row, tmp_path: Path, base_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is loaded
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    args, needles = row.setup(tmp_path, base_config)
    with bounded():
        result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == row.code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and all(line.startswith(("error: ", "note: ")) for line in lines), (
        result.stderr
    )
    assert len(errors[0]) < 800, errors[0]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def test_every_row_is_in_the_docs_table() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "hostile-inputs.md").read_text()
    missing = [r.id for r in ROWS if f"`{r.id}`" not in page]
    assert not missing, f"docs/hostile-inputs.md lacks rows: {missing}"


# -- inside the library: bad documents are skipped by name, never abort the run ------------------


def test_bad_jsonl_lines_are_skipped_by_name_and_the_rest_is_read(tmp_path: Path) -> None:
    deep_meta: dict[str, Any] = {"v": 1}
    for _ in range(limits.METADATA_DEPTH + 1):
        deep_meta = {"k": deep_meta}
    lines = [
        json.dumps({"_id": "first", "text": "fine"}),
        '{"_id": "deep", "text": "x", "metadata": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000,
        "[" * 300_000 + "]" * 300_000,
        json.dumps({"_id": "meta", "text": "x", "metadata": deep_meta}),
        json.dumps({"_id": "big", "text": "y" * (limits.JSONL_LINE_BYTES + 10)}),
        json.dumps({"_id": "i" * (limits.DOC_ID_CHARS + 1), "text": "long id"}),
        json.dumps({"_id": {"a": 1}, "text": "object id"}),
        '{"_id": "bad-utf8", "text": "\xff"}',
        "not json at all",
        json.dumps({"_id": "last", "text": "fine too"}),
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(
        "\n".join(lines).replace("\xff", "@@").encode("utf-8").replace(b"@@", b"\xff") + b"\n"
    )
    skipped: list[Skipped] = []
    with bounded():
        docs = list(read_sources([SourceConfig(path=corpus)], skipped))
    assert [d.doc_id for d in docs] == ["first", "last"]
    reasons = {s.name.removeprefix(f"{corpus}:"): s.reason for s in skipped}
    assert reasons == {
        "2": "JSON nested far too deeply (metadata may nest 8 levels)",
        "3": "JSON nested far too deeply (metadata may nest 8 levels)",
        "4": "'metadata' is nested deeper than 8 levels (the limit)",
        "5": "line longer than 16 MiB (the limit)",
        "6": "'_id' is 1,025 characters, over the 1,024-character limit",
        "7": "'_id' must be a string or a number",
        "8": "not UTF-8 text (byte 29 of the line)",
        "9": "not valid JSON (Expecting value at column 1)",
    }


def test_special_files_in_a_source_directory_are_skipped_without_hanging(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "ok.md").write_text("a real document")
    os.mkfifo(root / "pipe.txt")
    (root / "zero.txt").symlink_to("/dev/zero")
    (root / "loop.md").symlink_to(root / "loop.md")
    (root / "dangling.txt").symlink_to(tmp_path / "nowhere")
    (root / "sub" / "up").symlink_to(root)  # a directory loop: not followed
    with (root / "huge.txt").open("wb") as f:  # sparse: no disk, and never read
        f.truncate(limits.SOURCE_FILE_BYTES + 1)
    skipped: list[Skipped] = []
    with bounded():
        docs = list(read_sources([SourceConfig(path=root)], skipped))
    assert [d.doc_id for d in docs] == ["ok.md"]
    assert {s.name: s.reason for s in skipped} == {
        "dangling.txt": "a dangling symlink",
        "huge.txt": "larger than 256 MiB (the limit)",
        "loop.md": "a symlink that loops",
        "pipe.txt": "a named pipe (FIFO), not a regular file",
        "zero.txt": "a device, not a regular file",
    }


def test_a_dict_config_is_bounded_too() -> None:
    shared: list[Any] = ["x"] * 10
    for _ in range(6):
        shared = [shared] * 10  # a million leaves through shared references
    with bounded(), pytest.raises(ConfigError, match="more than 100,000 values"):
        parse_config({"retriever": {"top_k": 5}, "x": shared})
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"k": deep}
    with bounded(), pytest.raises(ConfigError, match="deeper than 32 levels"):
        parse_config({"x": deep})


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("queries.jsonl", '{"_id": "q", "text": ' + "[" * 100_000, "nested far too deeply"),
        ("queries.jsonl", "x" * (limits.JSONL_LINE_BYTES + 1), "line longer than 16 MiB"),
        ("queries.jsonl", b"\xff\xfe\n", "not UTF-8"),
        ("qrels/test.tsv", "q\td\tnan\n", "not a finite number"),
        ("qrels/test.tsv", "q\td\t" + "9" * 5000 + "\n", "is not a finite number"),
    ],
    ids=["deep-json", "long-line", "not-utf8", "nan-score", "huge-score"],
)
def test_beir_files_are_read_in_bounded_time_and_memory(
    tmp_path: Path, name: str, content: str | bytes, needle: str
) -> None:
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (root / "qrels" / "test.tsv").write_text("q\td\t1\n")
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    (root / name).write_bytes(data)
    with bounded(), pytest.raises(SourceError) as info:
        load_beir(root, gains="raw")
    assert needle in str(info.value) and str(root / name) in str(info.value)
    assert "\n" not in str(info.value)


# -- nothing already indexed is lost --------------------------------------------------------------


def test_hostile_sources_leave_the_index_intact(
    small_config: dict[str, Any], tmp_path: Path, minilm_embedder: Any
) -> None:
    from gl_retrieval.pipeline import RetrievalPipeline

    RetrievalPipeline.from_config(small_config).index()
    corpus = Path(small_config["sources"][0]["path"])
    fifo = tmp_path / "feed.jsonl"
    os.mkfifo(fifo)
    cfg = _config(tmp_path, small_config, sources=[*small_config["sources"], {"path": str(fifo)}])
    with bounded():
        r = runner.invoke(app, ["index", str(cfg), "--json"])
    assert r.exit_code == 2 and "named pipe" in r.stderr

    # Bad lines appended to the corpus are skipped by name; the good new one is added.
    with corpus.open("a", encoding="utf-8") as f:
        f.write("[" * 100_000 + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"_id": "new", "text": "a new document about sparse retrieval"}) + "\n")
    cfg = _config(tmp_path, small_config)
    r = runner.invoke(app, ["index", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)["documents"]
    assert (summary["added"], summary["unchanged"], summary["deleted"]) == (1, 5, 0)
    assert f"skipped: {corpus}:6: JSON nested far too deeply" in r.stderr
    assert f"skipped: {corpus}:7: not valid JSON" in r.stderr
    info = json.loads(runner.invoke(app, ["info", str(cfg), "--json"]).stdout)
    assert info["documents"] == 6
