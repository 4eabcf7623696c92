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
