"""`embedder.provider: ollama` end to end through the config, against the loopback server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval import IndexMismatchError, OllamaError, RetrievalPipeline
from gl_retrieval.cli import app
from tests.conftest import SMALL_CORPUS, write_corpus
from tests.ollama_server import FakeOllama, minilm_path


def ollama_config(cfg: dict[str, Any], server: FakeOllama, **extra: Any) -> dict[str, Any]:
    embedder = {
        "provider": "ollama",
        "model": "nomic-embed-text",
        "base_url": server.url,
        "timeout_s": 10,
        **extra,
    }
    return {**cfg, "embedder": embedder}


def test_index_and_query_through_ollama(
    small_config: dict[str, Any], ollama_server: FakeOllama
) -> None:
    pipe = RetrievalPipeline.from_config(ollama_config(small_config, ollama_server))
    summary = pipe.index()
    assert summary.chunks_embedded == 5
    embeds = ollama_server.requests_to("/api/embed")
    doc_batches = [b.body["input"] for b in embeds if b.body["input"][0].startswith("search_doc")]
    assert len(doc_batches) == 1 and len(doc_batches[0]) == 5  # one request for the corpus
    assert all(t.startswith("search_document: ") for t in doc_batches[0])
    hits = pipe.retrieve("postgres vector indexes shared by processes")
    assert hits[0].doc_id == "pg"
    assert (
        ollama_server.requests_to("/api/embed")[-1]
        .body["input"][0]
        .startswith("search_query: postgres")
    )
    info = pipe.info()["embedder"]
    assert (info["provider"], info["model"], info["dimension"]) == (
        "ollama",
        "nomic-embed-text",
        384,
    )


def test_an_ollama_index_refuses_the_huggingface_embedder(
    small_config: dict[str, Any], ollama_server: FakeOllama
) -> None:
    RetrievalPipeline.from_config(ollama_config(small_config, ollama_server)).index()
    with pytest.raises(IndexMismatchError, match=r"embedder\.provider: index has 'ollama'"):
        RetrievalPipeline.from_config(small_config).retrieve("x")


def test_a_failure_mid_index_keeps_the_previous_index(
    small_config: dict[str, Any], ollama_server: FakeOllama
) -> None:
    cfg = ollama_config(small_config, ollama_server, max_retries=1)
    RetrievalPipeline.from_config(cfg).index()
    corpus = Path(small_config["sources"][0]["path"])
    write_corpus(corpus, [*SMALL_CORPUS, {"_id": "new", "text": "A brand new document."}])
    ollama_server.fail_next(10, status=500)
    with pytest.raises(OllamaError):
        RetrievalPipeline.from_config(cfg).index()
    ollama_server.reset()
    pipe = RetrievalPipeline.from_config(cfg)
    assert pipe.info()["documents"] == 5
    assert pipe.retrieve("term frequency lexical ranking")[0].doc_id == "bm25"
    assert RetrievalPipeline.from_config(cfg).index().added == 1


def test_over_long_chunks_are_refused_before_sending(
    small_config: dict[str, Any], ollama_server: FakeOllama, tmp_path: Path
) -> None:
    # With a local tokenizer, chunking caps chunks to the context so nothing is refused or lost.
    cfg = ollama_config(small_config, ollama_server, num_ctx=64, tokenizer=str(minilm_path()))
    long_doc = {"_id": "long", "text": " ".join(["retrieval"] * 300)}
    write_corpus(Path(small_config["sources"][0]["path"]), [*SMALL_CORPUS, long_doc])
    summary = RetrievalPipeline.from_config(cfg).index()
    assert summary.warnings and "chunk_size" in summary.warnings[0]
    assert summary.chunks_embedded > 6  # the long document was split, not truncated


def test_cli_server_down_is_one_line(small_config: dict[str, Any], tmp_path: Path) -> None:
    from tests.ollama_server import closed_port

    cfg = {
        **small_config,
        "embedder": {"provider": "ollama", "base_url": f"http://127.0.0.1:{closed_port()}"},
    }
    path = tmp_path / "o.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["index", str(path), "--json"])
    assert r.exit_code == 1
    assert "ollama serve" in r.stderr and r.stderr.count("\n") == 1
    assert r.stdout == "" or json.loads(r.stdout) is None
