"""The padding-free forward pass (gl_retrieval.embedders.unpadded) on the real packaged MiniLM.

It must give sentence-transformers' own vectors, to float tolerance. The inputs are texts of
mixed lengths, texts past the model's limit, empty and non-ASCII texts, and more texts than one
batch holds. It is checked with mean and cls pooling, with and without a Normalize layer, and
with concurrent callers. Anything it cannot reproduce falls back to ``encode``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gl_retrieval.config import HuggingFaceEmbedderConfig
from gl_retrieval.embedders import build_embedder
from gl_retrieval.embedders.unpadded import unpadded_plan
from tests.conftest import MINILM

TEXTS = [
    "what is BM25?",
    "",
    "Ünïcödé and emoji 🚀 in a query",
    "a much longer text about dense retrieval " * 3,
    "word " * 400,  # past max_seq_length (256): truncated exactly as encode() truncates
    "short",
    "Cross-encoders read the query and the passage together; bi-encoders embed them apart.",
]


@pytest.fixture(scope="module")
def st(minilm_path: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def _stack(st: Any, pooling: str, *, normalize: bool) -> Any:
    """A SentenceTransformer over MiniLM's own modules with other pooling / no Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling

    mods = [st[0], Pooling(st[0].get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        mods.append(Normalize())
    return SentenceTransformer(modules=mods, device="cpu")


def test_vectors_equal_sentence_transformers(st: Any) -> None:
    plan = unpadded_plan(st)
    assert plan is not None and plan.pooling == "mean" and plan.normalizes
    texts = TEXTS * 5  # 35 texts in batches of 8: the order must come back as given
    got = plan.encode(texts, batch_size=8, normalize=False)
    want = st.encode(texts, batch_size=8)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("with_normalize_layer", [True, False])
def test_pooling_and_normalisation(st: Any, pooling: str, with_normalize_layer: bool) -> None:
    model = _stack(st, pooling, normalize=with_normalize_layer)
    plan = unpadded_plan(model)
    assert plan is not None and plan.pooling == pooling
    assert plan.normalizes is with_normalize_layer
    for normalize in (False, True):
        got = plan.encode(TEXTS, batch_size=64, normalize=normalize)
        want = model.encode(TEXTS, normalize_embeddings=normalize)
        np.testing.assert_allclose(got, want, atol=1e-5)
        norms = np.linalg.norm(got, axis=1)
        if normalize or with_normalize_layer:
            np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        else:
            assert not np.allclose(norms, 1.0, atol=1e-3)  # left as the model gave it


def test_stacks_it_cannot_reproduce_fall_back(st: Any) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Pooling

    dim = st[0].get_embedding_dimension()
    with_dense = SentenceTransformer(
        modules=[st[0], Pooling(dim, pooling_mode="mean"), Dense(dim, 8)], device="cpu"
    )
    max_pool = SentenceTransformer(modules=[st[0], Pooling(dim, pooling_mode="max")], device="cpu")
    assert unpadded_plan(with_dense) is None
    assert unpadded_plan(max_pool) is None


def test_embedder_uses_it_by_default_and_unpad_false_turns_it_off(st: Any) -> None:
    on = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, preset="e5"))
    off = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, preset="e5", unpad=False))
    assert on.unpadded and not off.unpadded
    # Prefixes still apply exactly once, and both paths give the model's vectors.
    np.testing.assert_allclose(on.embed_documents(TEXTS), off.embed_documents(TEXTS), atol=1e-5)
    np.testing.assert_allclose(on.embed_queries(TEXTS), off.embed_queries(TEXTS), atol=1e-5)
    np.testing.assert_allclose(
        on.embed_queries(["gamma"])[0], st.encode(["query: gamma"])[0], atol=1e-5
    )
    # The fingerprint does not change: an index built either way loads with the other.
    assert on.fingerprint() == off.fingerprint()


def test_prefixed_texts_and_batch_size_reach_it(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, preset="e5", batch_size=7))
    assert emb.unpadded  # loads the model and makes the plan
    plan = emb._unpadded
    calls: list[Any] = []
    real = plan.encode

    def spy(texts: Any, **kwargs: Any) -> Any:
        calls.append((list(texts), kwargs))
        return real(texts, **kwargs)

    monkeypatch.setattr(plan, "encode", spy)
    emb.embed_documents(["alpha", "beta"])
    emb.get_query_embedding("gamma")
    assert [c[0] for c in calls] == [["passage: alpha", "passage: beta"], ["query: gamma"]]
    assert calls[0][1]["batch_size"] == 7


def test_progress_bar_counts_every_text(capsys: pytest.CaptureFixture[str]) -> None:
    emb = build_embedder(HuggingFaceEmbedderConfig(model=MINILM, batch_size=4))
    emb.embed_documents(TEXTS, show_progress=True)
    assert f"{len(TEXTS)}/{len(TEXTS)}" in capsys.readouterr().err


def test_concurrent_callers_agree_with_one_caller() -> None:
    """Two threads encoding (as two serve workers do) while a third counts tokens (as an index
    job does) on the same tokenizer: no 'Already borrowed', the same vectors."""
    emb = build_embedder(HuggingFaceEmbedderConfig(model=MINILM))
    want = emb.embed_queries(TEXTS)
    errors: list[BaseException] = []
    results: list[np.ndarray] = []
    start = threading.Barrier(3)

    def encode() -> None:
        start.wait()
        try:
            for _ in range(5):
                results.append(emb.embed_queries(TEXTS))
        except BaseException as e:  # pragma: no cover - the failure being tested for
            errors.append(e)

    def count() -> None:
        start.wait()
        try:
            for _ in range(50):
                emb.count_tokens(TEXTS)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (encode, encode, count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(results) == 10
    for r in results:
        np.testing.assert_allclose(r, want, atol=1e-5)
