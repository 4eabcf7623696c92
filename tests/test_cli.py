"""The CLI through typer's CliRunner: exit codes, one-line errors, --json shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval.cli import app

runner = CliRunner()


@pytest.fixture()
def config_file(small_config: dict[str, Any], tmp_path: Path) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(small_config))
    return p


def invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_validate_ok_and_json(config_file: Path) -> None:
    r = invoke("validate", config_file)
    assert r.exit_code == 0, r.output
    assert "ok (huggingface:packaged:all-MiniLM-L6-v2" in r.stdout
    r = invoke("validate", config_file, "--json")
    assert json.loads(r.stdout)["embedder"]["model"] == "packaged:all-MiniLM-L6-v2"


def test_bad_config_is_one_line_on_stderr_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("retriever: {top_k: -1}\n")
    r = invoke("validate", bad)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"error: {bad}: invalid config: retriever.top_k")


def test_query_before_index_is_one_line(config_file: Path) -> None:
    r = invoke("query", config_file, "anything")
    assert r.exit_code == 1
    assert r.stderr.startswith("error: no index at ") and "gl-retrieval index" in r.stderr
    assert "Traceback" not in r.output


def test_index_query_info_round_trip(config_file: Path) -> None:
    r = invoke("index", config_file, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert set(summary) == {"documents", "chunks_embedded", "seconds"}
    assert summary["documents"]["added"] == 5

    r = invoke(
        "query", config_file, "which method ranks by term frequency?", "--json", "--top-n", 2
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["query"] == "which method ranks by term frequency?"
    assert len(out["results"]) == 2
    first = out["results"][0]
    assert first["doc_id"] == "bm25" and first["id"] == "bm25#0"
    assert set(first) >= {"id", "doc_id", "text", "score", "retrieval_score", "metadata"}
    assert first["metadata"]["topic"] == "lexical"

    r = invoke("query", config_file, "term frequency")
    assert r.exit_code == 0 and " 1. " in r.stdout and "bm25" in r.stdout

    r = invoke("info", config_file, "--json")
    info = json.loads(r.stdout)
    assert (info["documents"], info["chunks"]) == (5, 5)
    assert info["embedder"]["dimension"] == 384
    r = invoke("info", config_file)
    assert "documents: 5" in r.stdout


def test_index_human_output_ends_with_one_summary_line(config_file: Path) -> None:
    r = invoke("index", config_file)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1].startswith("5 added, 0 updated, 0 unchanged")


def test_mismatch_is_one_line_with_the_fix(config_file: Path, small_config: dict[str, Any]) -> None:
    assert invoke("index", config_file).exit_code == 0
    other = {**small_config, "embedder": {**small_config["embedder"], "query_prefix": "q: "}}
    config_file.write_text(yaml.safe_dump(other))
    r = invoke("query", config_file, "x")
    assert r.exit_code == 1
    assert "embedder.query_prefix: index has '', config has 'q: '" in r.stderr
    assert "--rebuild" in r.stderr and r.stderr.count("\n") == 1


def test_demo_runs_offline(tmp_path: Path) -> None:
    r = invoke("demo", "--persist-dir", tmp_path / "demo", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["index"]["documents"]["added"] > 10
    assert len(report["queries"]) >= 3
    hits = [q["results"][0]["doc_id"] == q["expected"] for q in report["queries"]]
    assert sum(hits) >= len(hits) - 1
