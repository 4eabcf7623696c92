"""The sentence-transformers embedder on the real packaged all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gl_retrieval.config import HuggingFaceEmbedderConfig
from gl_retrieval.embedders import build_embedder, get_embedder
from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder
from gl_retrieval.errors import ModelLoadError
from gl_retrieval.models.devices import resolve_device
from tests.conftest import MINILM


@pytest.fixture(scope="module")
def raw_minilm(minilm_path: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def _spy_encode(emb: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What reaches ``SentenceTransformer.encode`` (the padded path, ``unpad: false``; the
    unpadded path has the same checks in tests/test_unpadded.py)."""
    calls: list[Any] = []
    model = emb.st_model
    real = model.encode

    def spy(texts: Any, **kwargs: Any) -> Any:
        calls.append((list(texts), kwargs))
        return real(texts, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    return calls


def test_prefixes_reach_the_model_exactly_once(
    monkeypatch: pytest.MonkeyPatch, raw_minilm: Any
) -> None:
    emb = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, preset="e5", unpad=False))
    calls = _spy_encode(emb, monkeypatch)
    docs = emb.embed_documents(["alpha", "beta"])
    query = emb.get_query_embedding("gamma")
    assert calls[0][0] == ["passage: alpha", "passage: beta"]
    assert calls[1][0] == ["query: gamma"]
    # The vectors are the model's vectors of the prefixed text, nothing else.
    expected = raw_minilm.encode(["passage: alpha", "query: gamma"])
    np.testing.assert_allclose(docs[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(query, expected[1], atol=1e-5)


def test_llama_index_batch_path_applies_document_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = build_embedder(
        HuggingFaceEmbedderConfig(model=MINILM, document_prefix="doc: ", unpad=False)
    )
    calls = _spy_encode(emb, monkeypatch)
    emb.get_text_embedding_batch(["one", "two", "three"])
    assert [t for c in calls for t in c[0]] == ["doc: one", "doc: two", "doc: three"]


def test_normalises_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # all-MiniLM-L6-v2 ends in a Normalize layer, so sentence-transformers must not normalise again.
    emb = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, unpad=False))
    calls = _spy_encode(emb, monkeypatch)
    vecs = emb.embed_documents(["a short text", "another one"])
    assert calls[0][1]["normalize_embeddings"] is False
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs.dtype == np.float32


def test_normalises_when_the_model_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, unpad=False))
    model = emb.st_model
    emb._model_normalizes = False  # as for a model without a Normalize layer
    calls = _spy_encode(emb, monkeypatch)
    emb.embed_documents(["x"])
    assert calls[0][1]["normalize_embeddings"] is True
    assert model is emb.st_model


def test_batch_size_is_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, batch_size=7, unpad=False))
    calls = _spy_encode(emb, monkeypatch)
    emb.embed_documents(["x"] * 10)
    assert calls[0][1]["batch_size"] == 7


def test_construction_is_cheap_and_models_are_shared() -> None:
    cfg = HuggingFaceEmbedderConfig(model=MINILM)
    a = build_embedder(cfg)
    assert a._st is None  # nothing loaded yet
    assert get_embedder(cfg) is get_embedder(HuggingFaceEmbedderConfig(model=MINILM))


def test_auto_device_is_cpu_here() -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") in (expected, "mps")
    assert resolve_device("cpu") == "cpu"


def test_fingerprint_and_token_limits(minilm_embedder: SentenceTransformerEmbedder) -> None:
    fp = minilm_embedder.fingerprint()
    assert fp["dimension"] == 384 and fp["max_length"] == 256
    assert minilm_embedder.max_tokens == 254  # [CLS] and [SEP] take two of the 256
    assert minilm_embedder.count_tokens(["hello world"]) == [2]


def test_bad_local_path_is_one_clear_error(tmp_path: Path) -> None:
    emb = build_embedder(HuggingFaceEmbedderConfig(model=str(tmp_path / "missing-model")))
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        emb.warmup()
