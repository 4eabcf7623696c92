"""The embedded backend's generations: atomic commits, crash leftovers, the writer lock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gl_retrieval import RetrievalPipeline, StorageError
from gl_retrieval.storage import LocalStorage
from tests.conftest import SMALL_CORPUS, write_corpus


def _storage(cfg: dict[str, Any]) -> LocalStorage:
    return LocalStorage(Path(cfg["storage"]["persist_dir"]))


def test_a_crash_mid_commit_leaves_the_previous_index(
    small_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    RetrievalPipeline.from_config(small_config).index()
    storage = _storage(small_config)
    before = storage.current_generation()

    changed = [{**d, "text": d["text"] + " Changed."} for d in SMALL_CORPUS]
    write_corpus(Path(small_config["sources"][0]["path"]), changed)

    def boom(path: Path, text: str) -> None:
        raise OSError("disk full")

    # Fail at the very last step: the new generation is complete on disk but not yet CURRENT.
    monkeypatch.setattr("gl_retrieval.storage.local.atomic_write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        RetrievalPipeline.from_config(small_config).index()
    monkeypatch.undo()

    assert storage.current_generation() == before
    pipe = RetrievalPipeline.from_config(small_config)
    assert pipe.retrieve("cosine similarity of vectors")[0].doc_id == "dense"
    assert "Changed." not in pipe.retrieve("cosine similarity")[0].node.get_content()

    # The next run completes and cleans the leftover generation up (the previous one is kept).
    summary = RetrievalPipeline.from_config(small_config).index()
    assert summary.updated == 5
    gens = sorted(p.name for p in storage.persist_dir.iterdir() if p.name.startswith("gen-"))
    assert gens == [before.name, storage.current_generation().name]


def test_a_half_written_temporary_generation_is_ignored(small_config: dict[str, Any]) -> None:
    RetrievalPipeline.from_config(small_config).index()
    storage = _storage(small_config)
    junk = storage.persist_dir / ".tmp-gen-000002-99999"
    junk.mkdir()
    (junk / "docstore.json").write_text("{truncated")
    assert RetrievalPipeline.from_config(small_config).retrieve("bm25")[0].doc_id == "bm25"


def test_commit_writes_manifest_and_document_table(small_config: dict[str, Any]) -> None:
    RetrievalPipeline.from_config(small_config).index()
    gen = _storage(small_config).current_generation()
    docs = json.loads((gen / "documents.json").read_text())
    assert docs["ce"]["nodes"] == ["ce#0"]
    assert len(docs["ce"]["hash"]) == 64
    assert json.loads((gen / "manifest.json").read_text())["format"] == 1


def test_one_writer_at_a_time(small_config: dict[str, Any]) -> None:
    storage = _storage(small_config)
    with storage.write_lock(), pytest.raises(StorageError, match="another process is indexing"):
        RetrievalPipeline.from_config(small_config).index()
