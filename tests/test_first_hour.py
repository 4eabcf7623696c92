"""The first hour, tried again (issue 24, items 10-14): what a new user runs says what it does.

- the README lists every extra and every command;
- `serve` on a taken port fails in a second with one line, exit 1, before any model loads;
- `finetune` checks its inputs before loading the index, and a failed start leaves --output alone;
- a dict config that leaves chunking out opens an index quietly (the getting-started example);
- `query --top-n` beyond top_k says so; `index` names --prune, counts "1 chunk" and keeps the
  model load apart from the embedding time; every command's warnings read `warning: ...`;
  help shows CONFIG, N and FILTER, not `{config}`, `<int range>` or `<list[str]>`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from importlib.metadata import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval import RetrievalPipeline
from gl_retrieval.cli import app
from gl_retrieval.errors import GLRetrievalError
from tests.conftest import MINILM, ROOT, SMALL_CORPUS, write_corpus

runner = CliRunner()
CLI = [sys.executable, "-c", "from gl_retrieval.cli import main; main()"]


def invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# -- 10: the README ------------------------------------------------------------------------------


def test_readme_lists_every_extra_and_every_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    extras = metadata("gl-retrieval").get_all("Provides-Extra") or []
    assert "serve" in extras
    rows = set(re.findall(r"^\| `\[([\w-]+)\]` \|", readme, flags=re.M))
    assert set(extras) <= rows, sorted(set(extras) - rows)
    assert "still to come" not in readme and "arrive with those features" not in readme

    table = readme.split("## The command line", 1)[1].split("\n\n", 2)[1]
    listed = set(re.findall(r"^\| `gl-retrieval ([a-z]+(?: [a-z]+)?)", table, flags=re.M))
    commands = set()
    for group in app.registered_groups:
        commands |= {f"{group.name} {c.name}" for c in group.typer_instance.registered_commands}
    commands |= {c.name or c.callback.__name__ for c in app.registered_commands}
    listed = {c if c in commands else c.split()[0] for c in listed}
    assert commands <= listed, sorted(commands - listed)


# -- 11: serve on a taken port -------------------------------------------------------------------


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_check_port_free_names_the_port() -> None:
    from gl_retrieval.serve.server import check_port_free

    with _listening() as held:
        port = held.getsockname()[1]
        with pytest.raises(GLRetrievalError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again
    check_port_free("127.0.0.1", 0)  # any free port: nothing to check


@pytest.mark.slow
def test_serve_on_a_taken_port_fails_before_loading_with_one_line_exit_1(
    tmp_path: Path,
) -> None:
    cfg = write_yaml(
        tmp_path / "serve.yaml",
        {"embedder": {"model": MINILM}, "storage": {"persist_dir": str(tmp_path / "index")}},
    )
    with _listening() as held:
        port = held.getsockname()[1]
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*CLI, "serve", str(cfg), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        )
        took = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"error: port {port} on 127.0.0.1 is already in use (another `gl-retrieval serve`?): "
        "stop what listens there, or pass another --port"
    ], proc.stderr
    assert "Errno 98" not in proc.stderr
    print(f"serve on a taken port: exit {proc.returncode} after {took:.1f}s")


# -- 12: finetune checks its inputs first --------------------------------------------------------


def _finetune_config(tmp_path: Path) -> Path:
    corpus = write_corpus(tmp_path / "corpus.jsonl", SMALL_CORPUS)
    return write_yaml(
        tmp_path / "ft.yaml",
        {
            "embedder": {"model": MINILM},
            "storage": {"persist_dir": str(tmp_path / "index")},
            "sources": [{"path": str(corpus)}],
        },
    )


def test_finetune_with_a_missing_train_file_fails_first_and_writes_nothing(
    tmp_path: Path,
) -> None:
    cfg = _finetune_config(tmp_path)  # no index either: the data must be checked before it
    out = tmp_path / "out"
    r = invoke("finetune", cfg, "--train", tmp_path / "nope.jsonl", "--output", out)
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"error: training data {tmp_path / 'nope.jsonl'} does not exist"
    assert not out.exists()
    r = invoke("finetune", cfg, "--train", tmp_path, "--dev", tmp_path / "d.tsv", "--output", out)
    assert "training data" in r.stderr and "d.tsv does not exist" in r.stderr
    assert not out.exists()


def test_a_failed_finetune_start_leaves_output_as_it_was(tmp_path: Path) -> None:
    cfg = _finetune_config(tmp_path)
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "q", "positive": "bm25"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    r = invoke("finetune", cfg, "--train", train, "--output", out)  # no index yet
    assert r.exit_code != 0 and r.stderr.startswith("error: no index at "), r.output
    assert not out.exists()  # nothing left behind: a corrected re-run is not "not empty"
    out.mkdir()
    r = invoke("finetune", cfg, "--train", train, "--output", out)
    assert r.stderr.startswith("error: no index at "), r.output
    assert list(out.iterdir()) == []


# -- 13: a dict config without chunking opens the index quietly ----------------------------------


def test_a_config_without_chunking_opens_an_index_without_a_warning(
    small_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    RetrievalPipeline.from_config(small_config).index()  # chunk_size 128
    reader = {k: v for k, v in small_config.items() if k in ("embedder", "storage")}
    caplog.clear()  # the index run's own INFO lines are not what this test is about
    with caplog.at_level(logging.WARNING, logger="gl_retrieval"):
        hits = RetrievalPipeline.from_config(reader).retrieve("cross-encoder", top_n=1)
    warned = [
        r
        for r in caplog.records
        if r.name.startswith("gl_retrieval") and r.levelno >= logging.WARNING
    ]
    assert hits and not warned
    caplog.clear()
    other = {**reader, "chunking": {"chunk_size": 100, "chunk_overlap": 10}}
    with caplog.at_level(logging.WARNING, logger="gl_retrieval"):
        RetrievalPipeline.from_config(other).retrieve("cross-encoder", top_n=1)
    assert "chunked differently" in caplog.text  # a section that differs still warns


def test_getting_started_dict_example_matches_the_index_it_opens() -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    demo = yaml.safe_load((ROOT / "examples" / "configs" / "demo.yaml").read_text("utf-8"))
    chunking = demo["chunking"]
    shown = (
        f'"chunking": {{"chunk_size": {chunking["chunk_size"]}, '
        f'"chunk_overlap": {chunking["chunk_overlap"]}}}'
    )
    assert shown in page


# -- 14: the small ones ----------------------------------------------------------------------------


def test_query_top_n_beyond_top_k_says_so(small_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "p.yaml", small_config)  # top_k 5
    assert invoke("index", cfg).exit_code == 0
    r = invoke("query", cfg, "cross-encoder", "--top-n", 50, "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["results"]) == 5
    assert "note: --top-n 50 is more than the 5 candidates retrieved" in r.stderr
    assert "--top-k 50" in r.stderr
    r = invoke("query", cfg, "cross-encoder", "--top-n", 3)
    assert "note:" not in r.stderr


def test_index_line_names_prune_counts_one_chunk_and_keeps_the_model_load_apart(
    tmp_path: Path,
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("Rotate the API keys every 90 days.\n")
    cfg = write_yaml(
        tmp_path / "notes.yaml",
        {
            "embedder": {"model": MINILM},
            "storage": {"persist_dir": str(tmp_path / "index")},
            "sources": [{"path": str(notes), "glob": "*.md"}],
            "chunking": {"chunk_size": 128, "chunk_overlap": 16},
        },
    )
    r = invoke("index", cfg)
    assert r.exit_code == 0, r.output
    assert re.search(r"; 1 chunk embedded in [\d.]+s( \(\+[\d.]+s loading the model\))?$", r.stdout)
    (notes / "b.md").write_text("Deploy with blue green.\n")
    r = invoke("index", cfg)
    assert "1 added" in r.stdout and "1 chunk embedded" in r.stdout
    (notes / "a.md").unlink()
    r = invoke("index", cfg)
    assert "0 deleted (1 gone from the sources, kept: --prune removes it)" in r.stdout
    assert "0 chunks embedded" in r.stdout
    r = invoke("index", cfg, "--prune")
    assert "1 deleted, 0 skipped" in r.stdout and "gone" not in r.stdout


def test_summary_line_keeps_the_model_load_out_of_the_embedding_time() -> None:
    from gl_retrieval.ingest.indexer import IndexSummary

    line = IndexSummary(added=3, chunks_embedded=3, seconds=7.1, timings={"model": 6.5}).line()
    assert line.endswith("; 3 chunks embedded in 0.6s (+6.5s loading the model)")


@pytest.mark.slow
def test_every_command_prefixes_its_warnings(tmp_path: Path) -> None:
    """`eval` had no handler of its own: its chunk-size warning was a bare line."""
    ds = tmp_path / "beir"
    (ds / "qrels").mkdir(parents=True)
    write_corpus(ds / "corpus.jsonl", SMALL_CORPUS)
    (ds / "queries.jsonl").write_text('{"_id": "q1", "text": "cross-encoder"}\n')
    (ds / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tce\t1\n")
    cfg = write_yaml(
        tmp_path / "ev.yaml",
        {
            "embedder": {"model": MINILM},
            "storage": {"persist_dir": str(tmp_path / "index")},
            "chunking": {"chunk_size": 512, "chunk_overlap": 20},
        },
    )
    # A real process: under pytest, caplog's root handler would take the record instead.
    r = subprocess.run(
        [*CLI, "eval", str(cfg), "--dataset", str(ds), "--latency-queries", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr
    capped = [ln for ln in r.stderr.splitlines() if "chunking.chunk_size=512 exceeds" in ln]
    assert capped and all(ln.startswith("warning: chunking.chunk_size=512") for ln in capped)


def _help_texts() -> dict[str, str]:
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    for group in app.registered_groups:
        names += [f"{group.name} {c.name}" for c in group.typer_instance.registered_commands]
    return {n: invoke(*n.split(), "--help").output for n in names}


def test_help_shows_plain_metavars() -> None:
    texts = _help_texts()
    assert len(texts) >= 12
    for name, text in texts.items():
        assert not re.search(r"\{\w+\}", text), f"`{name} --help` shows {{arg}}:\n{text}"
        for placeholder in ("<list[", "<int range>", "<float range>"):
            assert placeholder not in text, f"`{name} --help` shows {placeholder!r}:\n{text}"
    assert texts["query"].startswith("Usage: gl-retrieval query [OPTIONS] CONFIG TEXT")
    assert "--top-n N " in texts["query"] and "--filter FILTER " in texts["query"]
    assert "--port PORT " in texts["serve"]
