"""A full disk during `index` (issue 24, item 7): found before the embedding, the error names
the path, and no ``.tmp-gen-*`` directory is left behind."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from gl_retrieval import RetrievalPipeline, StorageError
from gl_retrieval.config import parse_config
from gl_retrieval.storage import local
from tests.conftest import SMALL_CORPUS, write_corpus


def _grow(small_config: dict[str, Any], tmp_path: Path) -> None:
    extra = {"_id": "zebra", "text": "Zebras are striped animals of the savanna."}
    write_corpus(tmp_path / "corpus.jsonl", [*SMALL_CORPUS, extra])


def test_too_little_free_space_is_found_before_embedding_and_names_the_path(
    small_config: dict[str, Any], minilm_embedder: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    pipe = RetrievalPipeline(parse_config(small_config), embedder=minilm_embedder)
    pipe.index()
    before = pipe.committed_generation()
    _grow(small_config, tmp_path)

    real = local.shutil.disk_usage
    monkeypatch.setattr(local.shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    embedded: list[int] = []
    original = type(minilm_embedder).embed_documents

    def counting(self: Any, texts: Any, **kw: Any) -> Any:
        embedded.append(len(texts))
        return original(self, texts, **kw)

    monkeypatch.setattr(type(minilm_embedder), "embed_documents", counting)
    with pytest.raises(StorageError) as info:
        pipe.index()
    message = str(info.value)
    assert str(tmp_path / "index") in message
    assert "free" in message and "MiB" in message
    assert embedded == []  # refused before any embedding
    assert not list((tmp_path / "index").glob(".tmp-gen-*"))
    assert pipe.committed_generation() == before


def test_a_disk_that_fills_during_the_commit_names_the_path_and_leaves_no_temporary(
    small_config: dict[str, Any], minilm_embedder: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    pipe = RetrievalPipeline(parse_config(small_config), embedder=minilm_embedder)
    pipe.index()
    before = pipe.committed_generation()
    _grow(small_config, tmp_path)

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "record_files", full)  # after the data files are written
    with pytest.raises(StorageError) as info:
        pipe.index()
    message = str(info.value)
    assert str(tmp_path / "index") in message and "full" in message
    assert "nothing was committed" in message
    assert not list((tmp_path / "index").glob(".tmp-gen-*"))
    monkeypatch.undo()

    # The committed index is as it was, and serves.
    fresh = RetrievalPipeline(parse_config(small_config), embedder=minilm_embedder)
    assert fresh.committed_generation() == before
    assert fresh.retrieve("lexical term frequency")[0].doc_id == "bm25"
