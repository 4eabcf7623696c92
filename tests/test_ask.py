"""Answer synthesis through an Ollama LLM, over real HTTP against the loopback Ollama server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval import LLMNotConfiguredError, OllamaError, RetrievalPipeline
from gl_retrieval.cli import app
from tests.ollama_server import FakeOllama, closed_port


def with_llm(cfg: dict[str, Any], url: str) -> dict[str, Any]:
    return {
        **cfg,
        "llm": {"provider": "ollama", "model": "llama3.2", "base_url": url, "timeout_s": 10},
    }


def test_ask_answers_from_the_retrieved_sources(
    small_config: dict[str, Any], ollama_server: FakeOllama
) -> None:
    pipe = RetrievalPipeline.from_config(with_llm(small_config, ollama_server.url))
    pipe.index()
    answer = pipe.ask("what does pgvector add to PostgreSQL?", top_n=2)
    assert answer.answer
    assert answer.sources[0].doc_id == "pg"
    chat = ollama_server.requests_to("/api/chat")
    assert len(chat) == 1
    user = chat[0].body["messages"][-1]["content"]
    assert "[1] pgvector" in user and "Question: what does pgvector add to PostgreSQL?" in user
    out = answer.to_dict()
    assert set(out) == {"question", "answer", "sources"}
    assert set(out["sources"][0]) == {"id", "doc_id", "text", "score"}


def test_query_engine_with_llm_returns_the_answer_and_sources(
    small_config: dict[str, Any], ollama_server: FakeOllama
) -> None:
    pipe = RetrievalPipeline.from_config(with_llm(small_config, ollama_server.url))
    pipe.index()
    response = pipe.as_query_engine(top_n=2).query("what is BM25?")
    assert response.response
    assert len(response.source_nodes) == 2


def test_ask_without_llm_section_is_a_clear_error(small_config: dict[str, Any]) -> None:
    pipe = RetrievalPipeline.from_config(small_config)
    with pytest.raises(LLMNotConfiguredError, match="no `llm` section"):
        pipe.ask("anything")


def test_ask_with_the_llm_server_down_names_the_url(small_config: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    pipe = RetrievalPipeline.from_config(with_llm(small_config, url))
    pipe.index()
    with pytest.raises(OllamaError, match="ollama serve"):
        pipe.ask("what is BM25?")


def test_cli_ask_json(
    small_config: dict[str, Any], ollama_server: FakeOllama, tmp_path: Path
) -> None:
    cfg = tmp_path / "ask.yaml"
    cfg.write_text(yaml.safe_dump(with_llm(small_config, ollama_server.url)))
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(cfg)]).exit_code == 0
    r = runner.invoke(app, ["ask", str(cfg), "what is dense retrieval?", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["question"] == "what is dense retrieval?"
    assert out["answer"] and out["sources"][0]["doc_id"] == "dense"


def test_cli_ask_without_llm_is_one_line(small_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(yaml.safe_dump(small_config))
    r = CliRunner().invoke(app, ["ask", str(cfg), "q"])
    assert r.exit_code == 2  # the config lacks an llm section: bad config
    assert r.stderr.startswith("error: `ask` needs an LLM") and r.stderr.count("\n") == 1


# -- `ask` on a terminal: the answer streams ------------------------------------------------------


@pytest.fixture
def ask_config(small_config: dict[str, Any], ollama_server: FakeOllama, tmp_path: Path) -> Path:
    cfg = tmp_path / "ask.yaml"
    cfg.write_text(yaml.safe_dump(with_llm(small_config, ollama_server.url)))
    assert CliRunner().invoke(app, ["index", str(cfg)]).exit_code == 0
    ollama_server.reset()
    return cfg


def streamed(server: FakeOllama) -> list[bool]:
    """Whether each chat request asked for a stream (Ollama's default is to stream)."""
    return [r.body.get("stream", True) for r in server.requests_to("/api/chat")]


def test_cli_ask_streams_on_a_terminal_and_prints_what_no_stream_prints(
    ask_config: Path, ollama_server: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gl_retrieval.cli import query_commands

    args = ["ask", str(ask_config), "what is dense retrieval?"]
    waited = CliRunner().invoke(app, args)  # CliRunner's stdout is no terminal: no streaming
    assert waited.exit_code == 0, waited.output
    assert streamed(ollama_server) == [False]

    monkeypatch.setattr(query_commands, "_stdout_is_terminal", lambda: True)
    ollama_server.reset()
    live = CliRunner().invoke(app, args)
    assert live.exit_code == 0, live.output
    assert streamed(ollama_server) == [True]  # NDJSON, token by token
    assert live.stdout == waited.stdout  # same text, same layout: answer, then sources
    answer, _, sources = live.stdout.partition("\nsources:\n")
    assert answer.startswith("According to [1],") and answer.endswith("\n")
    assert sources.startswith("  [1] dense  ")
    assert live.stderr == ""

    ollama_server.reset()
    assert CliRunner().invoke(app, [*args, "--no-stream"]).exit_code == 0
    assert streamed(ollama_server) == [False]  # --no-stream waits, even on a terminal


def test_cli_ask_stream_flag_and_json(ask_config: Path, ollama_server: FakeOllama) -> None:
    args = ["ask", str(ask_config), "what is dense retrieval?", "--top-n", "2"]
    r = CliRunner().invoke(app, [*args, "--stream"])  # forced, though not a terminal
    assert r.exit_code == 0, r.output
    assert streamed(ollama_server) == [True]
    assert r.stdout.count("  [") == 2  # --top-n 2 sources

    ollama_server.reset()
    r = CliRunner().invoke(app, [*args, "--stream", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # --json is one JSON document: it never streams
    assert set(out) == {"question", "answer", "sources"} and len(out["sources"]) == 2
    assert out["answer"].startswith("According to [1],")
    assert streamed(ollama_server) == [False]


def test_cli_ask_filter_and_top_k(ask_config: Path, ollama_server: FakeOllama) -> None:
    args = ["ask", str(ask_config), "what ranks by term frequency?", "--json"]
    r = CliRunner().invoke(app, [*args, "--filter", "topic=dense", "--top-k", "3"])
    assert r.exit_code == 0, r.output
    assert [s["doc_id"] for s in json.loads(r.stdout)["sources"]] == ["dense"]
    r = CliRunner().invoke(app, [*args, "--filter", "topic"])  # no operator
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert len(ollama_server.requests_to("/api/chat")) == 1  # the bad filter called no LLM


@pytest.mark.parametrize("mode", ["--stream", "--no-stream"])
def test_cli_ask_llm_errors_are_one_line(
    ask_config: Path, ollama_server: FakeOllama, mode: str
) -> None:
    ollama_server.models.discard("llama3.2:latest")
    r = CliRunner().invoke(app, ["ask", str(ask_config), "what is dense retrieval?", mode])
    assert r.exit_code == 1, r.output  # a runtime error: the server lacks the model
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "llama3.2" in r.stderr
    assert "sources:" not in r.stdout
