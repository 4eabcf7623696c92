"""Ingestion: sources, incremental indexing, prune, chunking in the model's tokenizer, the
`index --json` contract, and crash safety under kill -9."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import ChunkingConfig
from gl_retrieval.errors import StorageError
from gl_retrieval.ingest.chunking import Chunker, effective_chunk_size, split_offsets
from gl_retrieval.ingest.sources import Document, Skipped, html_to_text, read_sources
from gl_retrieval.storage import LocalStorage
from tests.conftest import MINILM, ROOT, write_corpus

PY = sys.executable


def _config(tmp_path: Path, source: Path, **chunking: int) -> dict[str, Any]:
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 50},
        "storage": {"persist_dir": str(tmp_path / "index")},
        "sources": [{"path": str(source)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16, **chunking},
    }


def _index(cfg: dict[str, Any], **kwargs: Any) -> Any:
    """Index with a fresh pipeline (so the committed index is re-read from disk each time)."""
    return RetrievalPipeline.from_config(cfg).index(**kwargs)


def _indexed_texts(cfg: dict[str, Any]) -> dict[str, str]:
    """node id -> text of everything in the committed index, through the public query path."""
    hits = RetrievalPipeline.from_config(cfg).retrieve("anything at all", top_k=200)
    return {h.node.node_id: h.node.get_content() for h in hits}


def _docs(summary: Any) -> dict[str, int]:
    return summary.to_dict()["documents"]


@pytest.fixture()
def docs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    (d / "guide").mkdir(parents=True)
    (d / "intro.txt").write_text("BM25 ranks documents by term frequency.", encoding="utf-8")
    (d / "guide" / "dense.md").write_text(
        "# Dense retrieval\n\nQueries and documents become vectors.", encoding="utf-8"
    )
    (d / "page.html").write_text(
        "<html><head><title>Rerankers</title><style>p {color: red}</style></head><body>"
        "<p>A cross-encoder reads query &amp; passage together.</p>"
        "<script>trackEverything()</script></body></html>",
        encoding="utf-8",
    )
    return d


# -- incremental indexing ------------------------------------------------------------------------


def test_counts_added_updated_unchanged_deleted_and_prune(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any
) -> None:
    cfg = _config(tmp_path, docs_dir)
    first = _index(cfg)
    assert _docs(first) == {"added": 3, "updated": 0, "unchanged": 0, "deleted": 0, "skipped": 0}
    assert first.chunks_embedded == 3
    assert set(_indexed_texts(cfg)) == {"intro.txt#0", "guide/dense.md#0", "page.html#0"}

    (docs_dir / "intro.txt").write_text("BM25 is a lexical ranking function.", encoding="utf-8")
    (docs_dir / "page.html").unlink()
    (docs_dir / "new.txt").write_text("Hybrid search fuses BM25 and dense scores.", "utf-8")
    os.utime(docs_dir / "guide" / "dense.md", (1, 1))  # an mtime change is not a change
    second = _index(cfg)
    assert _docs(second) == {"added": 1, "updated": 1, "unchanged": 1, "deleted": 0, "skipped": 0}
    assert second.chunks_embedded == 2
    texts = _indexed_texts(cfg)
    assert texts["intro.txt#0"] == "BM25 is a lexical ranking function."  # old version replaced
    assert "page.html#0" in texts  # without --prune a vanished file stays

    third = _index(cfg, prune=True)
    assert _docs(third) == {"added": 0, "updated": 0, "unchanged": 3, "deleted": 1, "skipped": 0}
    assert third.chunks_embedded == 0
    assert set(_indexed_texts(cfg)) == {"intro.txt#0", "guide/dense.md#0", "new.txt#0"}
    info = RetrievalPipeline.from_config(cfg).info()
    assert (info["documents"], info["chunks"]) == (3, 3)


def test_metadata_only_edit_is_an_update(tmp_path: Path, minilm_embedder: Any) -> None:
    rows = [
        {"_id": "d1", "title": "Catalyst", "text": "Earnings beat.", "metadata": {"ticker": "AA"}},
        {"id": 7, "text": "Guidance raised.", "metadata": {"ticker": "BB", "year": 2024}},
    ]
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    cfg = _config(tmp_path, corpus)
    _index(cfg)
    hits = {h.doc_id: h for h in RetrievalPipeline.from_config(cfg).retrieve("x", top_k=10)}
    assert set(hits) == {"d1", "7"}  # `_id`, else `id`, as a string
    assert hits["d1"].node.get_content() == "Catalyst\nEarnings beat."  # title + "\n" + text
    assert hits["d1"].node.metadata == {"ticker": "AA", "title": "Catalyst"}
    assert hits["7"].node.metadata == {"ticker": "BB", "year": 2024}

    rows[1]["metadata"]["year"] = 2025  # same text, new metadata
    write_corpus(corpus, rows)
    again = _index(cfg)
    assert _docs(again)["updated"] == 1 and _docs(again)["unchanged"] == 1
    assert again.chunks_embedded == 1
    hits = {h.doc_id: h for h in RetrievalPipeline.from_config(cfg).retrieve("x", top_k=10)}
    assert hits["7"].node.metadata["year"] == 2025


def test_no_change_run_reads_neither_model_nor_vectors(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, docs_dir)
    _index(cfg)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a run with nothing to do must not load the index or embed")

    monkeypatch.setattr(LocalStorage, "load", boom)
    monkeypatch.setattr(LocalStorage, "commit", boom)
    monkeypatch.setattr(type(minilm_embedder), "embed_documents", boom)
    again = _index(cfg)
    assert _docs(again)["unchanged"] == 3 and again.chunks_embedded == 0


# -- sources -------------------------------------------------------------------------------------


def test_unreadable_files_are_skipped_by_name_and_the_rest_indexed(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any
) -> None:
    (docs_dir / "logo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (docs_dir / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs_dir / "empty.md").write_text("", encoding="utf-8")
    (docs_dir / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    (docs_dir / "only-script.html").write_text("<script>x()</script>", encoding="utf-8")
    (docs_dir / "image.png").write_bytes(b"\x89PNG\x00")  # unknown suffix: ignored, not skipped
    cfg = _config(tmp_path, docs_dir)
    summary = _index(cfg)
    reasons = {s.name: s.reason for s in summary.skipped}
    assert set(reasons) == {"logo.txt", "latin1.txt", "empty.md", "blank.txt", "only-script.html"}
    assert reasons["logo.txt"] == "binary file"
    assert reasons["latin1.txt"].startswith("not UTF-8 text")
    assert reasons["empty.md"] == "empty file"
    assert _docs(summary)["added"] == 3 and _docs(summary)["skipped"] == 5


def test_bad_jsonl_lines_are_skipped_and_the_rest_read(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(
        b'{"_id": "ok", "text": "fine"}\n'
        b"not json\n"
        b'{"_id": "latin", "text": "caf\xe9"}\n'
        b'{"text": "no id"}\n'
        b'{"_id": "sur", "text": "bad \\ud800 surrogate"}\n'
        b'{"_id": "blank", "text": "  "}\n'
        b"\n"
        b'{"_id": "ok2", "text": "also fine", "metadata": {"k": [1, 2]}}\n'
    )
    skipped: list[Skipped] = []
    docs = list(read_sources([_source(path)], skipped))
    assert [d.doc_id for d in docs] == ["ok", "ok2"]
    assert docs[1].metadata == {"k": [1, 2]}
    assert [s.name.rsplit(":", 1)[-1] for s in skipped] == ["2", "3", "4", "5", "6 (blank)"]
    assert "not UTF-8" in skipped[1].reason and "surrogates" in skipped[3].reason


def _source(path: Path) -> Any:
    from gl_retrieval.config import SourceConfig

    return SourceConfig(path=path)


def test_html_becomes_its_visible_text() -> None:
    text, title = html_to_text(
        "<!doctype html><html><head><title> The  Title </title><meta charset='utf-8'>"
        "<style>body {margin: 0}</style><script>var hidden = 1;</script></head>"
        "<body><nav>Home</nav><h1>Heading</h1><p>One &amp; two,\n   three.</p>"
        "<noscript>enable js</noscript><ul><li>first</li><li>second</li></ul>"
        "<p>tail<br>next line</p></body></html>"
    )
    assert title == "The Title"
    assert text == "Home\n\nHeading\n\nOne & two, three.\n\nfirst\nsecond\n\ntail\nnext line"
    for hidden in ("margin", "hidden", "enable js", "The Title"):
        assert hidden not in text


def test_html_file_is_indexed_with_its_title(tmp_path: Path, docs_dir: Path) -> None:
    skipped: list[Skipped] = []
    (docs_dir / "legacy.htm").write_bytes(
        b'<html><head><meta charset="iso-8859-1"></head><body><p>Caf\xe9</p></body></html>'
    )
    docs = {d.doc_id: d for d in read_sources([_source(docs_dir)], skipped)}
    assert skipped == []
    assert docs["page.html"].text == "A cross-encoder reads query & passage together."
    assert docs["page.html"].metadata == {"file_path": "page.html", "title": "Rerankers"}
    assert docs["legacy.htm"].text == "Café"  # decoded with its declared charset
    assert docs["guide/dense.md"].doc_id == "guide/dense.md"  # ids are relative paths


def test_pdf_needs_the_reader_package_or_is_skipped_saying_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "pdfs"
    d.mkdir()
    (d / "paper.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    monkeypatch.setitem(sys.modules, "llama_index.readers.file", None)  # not installed
    skipped: list[Skipped] = []
    assert list(read_sources([_source(d)], skipped)) == []
    assert skipped[0].name == "paper.pdf"
    assert "pip install llama-index-readers-file" in skipped[0].reason

    class FakePage:
        def __init__(self, text: str) -> None:
            self.text = text

    class FakePDFReader:  # the real one's interface: load_data(file=Path) -> [Document per page]
        def load_data(self, *, file: Path) -> list[FakePage]:
            assert file.name == "paper.pdf"
            return [FakePage("Page one."), FakePage(""), FakePage("Page two.")]

    fake = type(sys)("llama_index.readers.file")
    fake.PDFReader = FakePDFReader  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_index.readers.file", fake)
    skipped = []
    (doc,) = read_sources([_source(d)], skipped)
    assert (doc.doc_id, doc.text, doc.metadata["pages"]) == (
        "paper.pdf",
        "Page one.\n\nPage two.",
        3,
    )


def test_content_hash_ignores_nothing_user_facing() -> None:
    a = Document("x", "text", {"k": 1})
    assert a.content_hash == Document("x", "text", {"k": 1}, source="elsewhere").content_hash
    assert a.content_hash != Document("x", "text", {"k": 2}).content_hash
    assert a.content_hash != Document("x", "text ", {"k": 1}).content_hash


# -- chunking ------------------------------------------------------------------------------------


def _whitespace_offsets(text: str) -> list[tuple[int, int]]:
    import re

    return [m.span() for m in re.finditer(r"\S+", text)]


def test_split_offsets_prefers_sentence_ends_and_overlaps_from_a_sentence_start() -> None:
    sentences = [f"Sentence {i} has exactly six words." for i in range(10)]
    text = " ".join(sentences)
    offsets = _whitespace_offsets(text)
    ranges = split_offsets(text, offsets, size=20, overlap=6)
    pieces = [text[offsets[a][0] : offsets[b - 1][1]] for a, b in ranges]
    assert all(b - a <= 20 for a, b in ranges)
    assert all(p.startswith("Sentence") and p.endswith("words.") for p in pieces)
    assert all(b2 > b1 and a2 < b1 for (_, b1), (a2, b2) in itertools.pairwise(ranges))  # overlap
    assert ranges[0][0] == 0 and ranges[-1][1] == len(offsets)  # everything covered


def test_split_offsets_cuts_an_overlong_sentence_at_words() -> None:
    text = " ".join(f"w{i}" for i in range(50))
    offsets = _whitespace_offsets(text)
    ranges = split_offsets(text, offsets, size=16, overlap=0)
    assert [b - a for a, b in ranges] == [16, 16, 16, 2]


def test_chunk_size_is_capped_to_the_model_with_a_warning(
    tmp_path: Path, minilm_embedder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    long_text = " ".join(
        f"Sentence number {i} talks about retrieval, ranking and embeddings." for i in range(120)
    )
    corpus = write_corpus(tmp_path / "c.jsonl", [{"_id": "long", "text": long_text}])
    cfg = _config(tmp_path, corpus, chunk_size=512, chunk_overlap=64)
    with caplog.at_level(logging.WARNING, logger="gl_retrieval"):
        summary = _index(cfg)
    assert any("chunk_size=512 exceeds" in w and "254" in w for w in summary.warnings)
    assert any("chunk_size=512 exceeds" in r.getMessage() for r in caplog.records)
    chunking = RetrievalPipeline.from_config(cfg).info()["chunking"]
    assert chunking["configured_chunk_size"] == 512
    assert chunking["chunk_size"] == 254  # 256 - [CLS] - [SEP] for all-MiniLM-L6-v2
    assert chunking["chunk_overlap"] <= 254 // 4

    texts = _indexed_texts(cfg)
    assert summary.chunks_embedded == len(texts) > 4
    assert sorted(texts) == [f"long#{i}" for i in range(len(texts))]
    counts = minilm_embedder.count_tokens(list(texts.values()))
    assert max(counts) <= 254  # measured in the model's own tokenizer: nothing truncated


def test_chunks_are_slices_with_offsets_and_no_tiktoken(
    minilm_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_index.core.utils as li_utils

    def no_tiktoken(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the ingest path must not use tiktoken")

    monkeypatch.setitem(sys.modules, "tiktoken", None)  # importing it now fails
    monkeypatch.setattr(li_utils, "get_tokenizer", no_tiktoken)
    text = "\n\n".join(f"Paragraph {i}. " + "Words about vectors. " * 12 for i in range(6))
    doc = Document("d", text, {"source": "unit"})
    plan = effective_chunk_size(ChunkingConfig(chunk_size=64, chunk_overlap=8), minilm_embedder)
    chunks = Chunker(plan, minilm_embedder).split([doc, Document("short", "Tiny.")])
    assert chunks[-1].node_id == "short#0" and chunks[-1].text == "Tiny."
    long = [c for c in chunks if c.doc is doc]
    assert len(long) > 3
    for c in long:
        assert text[c.start : c.end] == c.text
        node = c.to_node()
        assert (node.start_char_idx, node.end_char_idx) == (c.start, c.end)
        assert node.ref_doc_id == "d" and node.metadata == {"source": "unit"}
        assert node.get_content(metadata_mode="embed") == c.text  # metadata not embedded
    assert max(minilm_embedder.count_tokens([c.text for c in long])) <= 64


# -- CLI -----------------------------------------------------------------------------------------


def test_index_json_prints_exactly_the_summary_on_stdout(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any
) -> None:
    from typer.testing import CliRunner

    from gl_retrieval.cli import app

    (docs_dir / "bad.txt").write_bytes(b"\x00\x01binary")
    cfg = _config(tmp_path, docs_dir, chunk_size=1000, chunk_overlap=10)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    runner = CliRunner()

    result = runner.invoke(app, ["index", str(cfg_file), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout is pure JSON
    assert set(data) == {"documents", "chunks_embedded", "seconds"}
    assert data["documents"] == {
        "added": 3,
        "updated": 0,
        "unchanged": 0,
        "deleted": 0,
        "skipped": 1,
    }
    assert data["chunks_embedded"] == 3 and isinstance(data["seconds"], float)
    assert "skipped: bad.txt: binary file" in result.stderr
    assert result.stderr.count("chunk_size=1000 exceeds") == 1  # warned once, on stderr

    (docs_dir / "intro.txt").unlink()
    result = runner.invoke(app, ["index", str(cfg_file), "--prune"])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()  # one summary line
    assert line.startswith("0 added, 0 updated, 2 unchanged, 1 deleted, 1 skipped; 0 chunks")


def test_a_second_writer_is_refused_while_the_lock_is_held(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any
) -> None:
    cfg = _config(tmp_path, docs_dir)
    with (
        LocalStorage(tmp_path / "index").write_lock(),
        pytest.raises(StorageError, match="another process is indexing"),
    ):
        _index(cfg)
    assert _docs(_index(cfg))["added"] == 3  # released on exit


# -- crash safety --------------------------------------------------------------------------------

_CHILD = """
import sys, time
from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder
from gl_retrieval.storage.local import LocalStorage

phase = sys.argv[1]

def stall(what):
    print(what, flush=True)
    time.sleep(120)

if phase == "embed":
    SentenceTransformerEmbedder.embed_documents = lambda self, texts, **kw: stall("EMBEDDING")
else:
    commit = LocalStorage.commit
    def slow_commit(self, handle):
        # persist hooks run after the StorageContext is written into the temporary generation
        handle.extras.setdefault("persist_hooks", []).append(lambda tmp: stall("PERSISTING"))
        commit(self, handle)
    LocalStorage.commit = slow_commit

from gl_retrieval.cli import main
sys.argv = ["gl-retrieval", "index", sys.argv[2]]
main()
"""


@pytest.mark.parametrize("phase", ["embed", "commit"])
def test_kill_9_mid_index_keeps_the_last_index_and_the_next_run_completes(
    tmp_path: Path, minilm_embedder: Any, phase: str
) -> None:
    rows = [{"_id": f"d{i}", "text": f"Document {i} is about topic {i}."} for i in range(4)]
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    cfg = _config(tmp_path, corpus)
    _index(cfg)
    before = _indexed_texts(cfg)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    write_corpus(corpus, [*rows, {"_id": "new", "text": "Fresh news arrives."}])

    child = subprocess.Popen(
        [PY, "-c", _CHILD, phase, str(cfg_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        marker = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert marker == {"embed": "EMBEDDING", "commit": "PERSISTING"}[phase]
        persist_dir = tmp_path / "index"
        if phase == "commit":  # the new generation is half written
            assert any(p.name.startswith(".tmp-gen-") for p in persist_dir.iterdir())
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert _indexed_texts(cfg) == before  # the last complete index loads and answers
    summary = _index(cfg)  # the dead writer's flock and temporaries do not block
    assert _docs(summary) == {"added": 1, "updated": 0, "unchanged": 4, "deleted": 0, "skipped": 0}
    assert "new#0" in _indexed_texts(cfg)
    names = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert names[:2] == [".lock", "CURRENT"]  # no temporaries left; current and previous kept
    assert [n.rsplit("-", 1)[0] for n in names[2:]] == ["gen-000001", "gen-000002"]


def test_crash_between_new_generation_and_current_swap(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gl_retrieval.storage.local as local

    cfg = _config(tmp_path, docs_dir)
    _index(cfg)
    before = _indexed_texts(cfg)
    (docs_dir / "more.txt").write_text("More text about sparse retrieval.", encoding="utf-8")

    def die(path: Path, text: str) -> None:
        raise KeyboardInterrupt  # stands in for a crash right before CURRENT is replaced

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(local, "atomic_write_text", die)
        _index(cfg)
    # complete but never made current
    assert [p.name[:10] for p in (tmp_path / "index").glob("gen-000002-*")] == ["gen-000002"]
    assert _indexed_texts(cfg) == before
    assert _docs(_index(cfg))["added"] == 1
    assert "more.txt#0" in _indexed_texts(cfg)
    assert (tmp_path / "index" / "CURRENT").read_text().startswith("gen-000003-")


def test_progress_bar_goes_to_stderr(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    RetrievalPipeline.from_config(_config(tmp_path, docs_dir)).index(show_progress=True)
    captured = capsys.readouterr()
    # The bar counts the changed documents' characters (chunks are not known up front).
    assert "embedding" in captured.err and "char/s" in captured.err
    assert re.search(r"\| (\d+)/\1 \[", captured.err), captured.err  # it reaches its total
    assert captured.out == ""


def test_a_reader_racing_a_commit_keeps_the_generation_it_leased(
    tmp_path: Path, docs_dir: Path, minilm_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, docs_dir)
    _index(cfg)
    (docs_dir / "more.txt").write_text("More text about sparse retrieval.", encoding="utf-8")
    load_generation = LocalStorage._load_generation
    raced: list[Path] = []

    def racing(self: LocalStorage, gen: Path, *, embed_model: Any) -> Any:
        if not raced:  # between reading CURRENT and reading the files, a writer commits
            raced.append(gen)
            _index(cfg)  # ... twice: without the reader's lease this would remove gen 1
            (docs_dir / "more.txt").write_text("Changed.", encoding="utf-8")
            _index(cfg)
        return load_generation(self, gen, embed_model=embed_model)

    monkeypatch.setattr(LocalStorage, "_load_generation", racing)
    handle = LocalStorage(tmp_path / "index").load(embed_model=minilm_embedder)
    assert raced[0].name.startswith("gen-000001-") and raced[0].exists()
    assert "more.txt" not in handle.documents and handle.extras["dir"] == raced[0]
    monkeypatch.undo()
    newer = LocalStorage(tmp_path / "index").load(embed_model=minilm_embedder)
    assert newer.extras["dir"].name.startswith("gen-000003-") and "more.txt" in newer.documents


# -- memory: streamed through chunking and embedding ---------------------------------------------


def _random_prose(n_chars: int, *, seed: int = 0) -> str:
    """Sentences of made-up words: many word pieces per character, the tokenizer's worst case."""
    import random

    rnd = random.Random(seed)
    words = [
        "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 9))) for _ in range(3000)
    ]
    parts: list[str] = []
    size = 0
    while size < n_chars:
        sentence = " ".join(rnd.choices(words, k=rnd.randint(6, 20))).capitalize() + ". "
        parts.append(sentence + ("\n\n" if rnd.random() < 0.2 else ""))
        size += len(parts[-1])
    return "".join(parts)


@pytest.mark.parametrize("mb", [1, 3])
def test_indexing_one_large_document_holds_a_bounded_working_set(
    mb: int, tmp_path: Path, minilm_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24 item 8: the chunker used to tokenise a whole document at once and keep every
    token's offsets as Python tuples (~140 traced bytes a token, ~700 with the tokenizer's own),
    then held every chunk before embedding; a 20 MB file took 3 GB. Now the run's traced
    working set, beyond the document's own text, stays under one bound for 1 and 3 MB alike.
    The vector store is replaced by a counter (what the index holds is not the working set) and
    the model by a cheap stand-in (the tokenizer is the real one)."""
    import tracemalloc

    import numpy as np

    import gl_retrieval.ingest.indexer as indexer
    from gl_retrieval.config import PipelineConfig
    from gl_retrieval.ingest.indexer import index_documents

    def encode(self: Any, texts: Any, *, show_progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), 384), np.float32)
        out[:, 0] = 1.0
        return out

    stored: list[int] = []
    monkeypatch.setattr(type(minilm_embedder), "_encode", encode)
    monkeypatch.setattr(indexer, "_add_nodes", lambda handle, nodes: stored.append(len(nodes)))
    cfg = PipelineConfig.model_validate(
        {"embedder": {"model": MINILM}, "chunking": {"chunk_size": 254, "chunk_overlap": 32}}
    )
    text = _random_prose(mb * 1024 * 1024, seed=mb)
    docs = [Document("big.txt", text), Document("small.txt", "A short one.")]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        summary = index_documents(
            iter(docs), config=cfg, embedder=minilm_embedder, storage=LocalStorage(tmp_path / "i")
        )
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert summary.chunks_embedded == sum(stored) > 1000 * mb
    assert peak < 24 * 2**20, f"{peak / 2**20:.1f} MiB traced for a {mb} MB document"


# -- symlinks out of a source directory ----------------------------------------------------------


def _linked_source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "own.txt").write_text("A document of its own.", encoding="utf-8")
    (tmp_path / "outside_secret.txt").write_text("the secret next door", encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.md").write_text("a file in another folder", encoding="utf-8")
    (root / "leak.txt").symlink_to("../outside_secret.txt")
    (root / "inside.txt").symlink_to("own.txt")  # stays inside: read as usual
    (root / "sub" / "far.md").symlink_to(tmp_path / "elsewhere" / "far.md")
    (root / "linked_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    return root


def test_symlinks_out_of_a_source_directory_are_skipped_with_a_note(tmp_path: Path) -> None:
    """Issue 24 item 9: `leak.txt -> ../outside_secret.txt` used to be indexed and served."""
    from gl_retrieval.config import SourceConfig

    root = _linked_source(tmp_path)
    skipped: list[Skipped] = []
    docs = {d.doc_id: d.text for d in read_sources([SourceConfig(path=root)], skipped)}
    assert docs == {"inside.txt": "A document of its own.", "own.txt": "A document of its own."}
    notes = {s.name: s.reason for s in skipped}
    assert set(notes) == {"leak.txt", "sub/far.md"}
    assert all(
        "outside the source directory" in r and "follow_symlinks" in r for r in notes.values()
    )
    # A glob that walks through a linked directory is held to the same rule.
    skipped = []
    glob = SourceConfig(path=root, glob="linked_dir/*.md")
    assert list(read_sources([glob], skipped)) == []
    assert [s.name for s in skipped] == ["linked_dir/far.md"]


def test_follow_symlinks_reads_them(tmp_path: Path) -> None:
    from gl_retrieval.config import SourceConfig

    root = _linked_source(tmp_path)
    skipped: list[Skipped] = []
    source = SourceConfig(path=root, follow_symlinks=True)
    docs = {d.doc_id: d.text for d in read_sources([source], skipped)}
    assert docs["leak.txt"] == "the secret next door"
    assert docs["sub/far.md"] == "a file in another folder"
    assert skipped == []


def test_the_index_summary_names_each_skipped_link(tmp_path: Path, minilm_embedder: Any) -> None:
    root = _linked_source(tmp_path)
    summary = _index(_config(tmp_path, root))
    assert {s.name for s in summary.skipped} == {"leak.txt", "sub/far.md"}
    texts = _indexed_texts(_config(tmp_path, root))
    assert not any("secret" in t for t in texts.values())
