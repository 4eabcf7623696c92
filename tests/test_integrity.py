"""A damaged index is refused, never served; readers survive writers; `verify` finds damage.

Every kind of file of a generation is damaged in several ways (flipped bytes, truncation, zeroed
rows, NaN rows, deletion); each must give a clean :class:`IndexDamagedError` naming the file and
the way back, and a `verify` failure, never a result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval import EmbeddingError, IndexDamagedError, RetrievalPipeline
from gl_retrieval.cli import app
from gl_retrieval.storage import LocalStorage
from tests.conftest import ROOT, SMALL_CORPUS, write_corpus

QUERY = "HNSW indexes in PostgreSQL"


def _config(root: Path, *, mode: str = "hybrid") -> dict[str, Any]:
    return {
        "embedder": {"provider": "huggingface", "model": "packaged:all-MiniLM-L6-v2"},
        "retriever": {"top_k": 5, "mode": mode},
        "storage": {"persist_dir": str(root / "index")},
        "sources": [{"path": str(root / "corpus.jsonl")}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, minilm_embedder: Any) -> Path:
    """An index with two generations (so a previous, intact one is on disk)."""
    root = tmp_path_factory.mktemp("pristine")
    write_corpus(root / "corpus.jsonl", SMALL_CORPUS[:4])
    RetrievalPipeline.from_config(_config(root)).index()
    write_corpus(root / "corpus.jsonl", SMALL_CORPUS)
    RetrievalPipeline.from_config(_config(root)).index()
    return root


@pytest.fixture()
def copy(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _gen(root: Path) -> Path:
    index = root / "index"
    return index / (index / "CURRENT").read_text().strip()


def rewrite_manifest(persist_dir: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Edit the current generation's manifest as a real commit would have written it: sealed
    again, the directory renamed to match and CURRENT updated (not damage, a different index)."""
    from gl_retrieval.storage.integrity import seal

    gen = persist_dir / (persist_dir / "CURRENT").read_text().strip()
    manifest = json.loads((gen / "manifest.json").read_text())
    files = manifest.pop("integrity")["files"]
    edit(manifest)
    sealed = seal(manifest, files)
    (gen / "manifest.json").write_text(json.dumps(sealed))
    renamed = gen.with_name(f"{gen.name.rsplit('-', 1)[0]}-{sealed['integrity']['digest'][:8]}")
    gen.rename(renamed)
    (persist_dir / "CURRENT").write_text(renamed.name + "\n")
    return renamed


def _one(gen: Path, pattern: str) -> Path:
    found = sorted(gen.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


# -- ways to damage a file ------------------------------------------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _delete(path: Path) -> None:
    path.unlink()


def _npy_offset(path: Path) -> int:
    """Where the data of a ``.npy`` file starts (its header ends with a newline)."""
    return path.read_bytes().index(b"\n", 8) + 1


def _zero_row(path: Path) -> None:
    """Zero the first row of a float32 matrix, keeping the size (as a bad disk block would)."""
    arr = np.load(path, mmap_mode="r")
    row = arr.shape[1] * 4 if arr.ndim == 2 else 4
    data = bytearray(path.read_bytes())
    start = _npy_offset(path)
    data[start : start + row] = bytes(row)
    path.write_bytes(bytes(data))


def _nan_row(path: Path) -> None:
    arr = np.load(path, mmap_mode="r")
    n = arr.shape[1] if arr.ndim == 2 else 1
    data = bytearray(path.read_bytes())
    start = _npy_offset(path) + 4 * n  # the second row
    data[start : start + 4 * n] = np.full(n, np.nan, "<f4").tobytes()
    path.write_bytes(bytes(data))


def _garbage_json(path: Path) -> None:
    """Same size, not JSON (a block of another file landed here)."""
    path.write_bytes(b"{not json".ljust(max(path.stat().st_size, 9), b"\0"))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped": _flip,
    "truncated": _truncate,
    "empty": _empty,
    "deleted": _delete,
}
FILES = {  # kind of file -> glob inside the generation
    "vectors": "default__vector_store/vectors.*.npy",
    "norms": "default__vector_store/norms.*.npy",
    "ids": "default__vector_store/rows.*.json",
    "metadata": "default__vector_store/metadata.*.json",
    "nodes": "default__vector_store/nodes.*.json",
    "spans": "default__vector_store/nodes_spans.*.npy",
    "store-manifest": "default__vector_store/manifest.json",
    "documents": "documents.json",
    "docstore": "docstore.json",
    "index-store": "index_store.json",
    "bm25-arrays": "bm25/data.csc.index.npy",
    "bm25-vocab": "bm25/vocab.index.json",
    "bm25-meta": "bm25/gl_bm25.json",
    "manifest": "manifest.json",
}
CASES = [(f, d) for f in FILES for d in DAMAGE] + [
    ("vectors", "zeroed-row"),
    ("vectors", "nan-row"),
    ("norms", "nan-row"),
    ("ids", "garbage-json"),
    ("documents", "garbage-json"),
    ("manifest", "garbage-json"),
]
MORE: dict[str, Callable[[Path], None]] = {
    "zeroed-row": _zero_row,
    "nan-row": _nan_row,
    "garbage-json": _garbage_json,
}


def _refused(cfg: dict[str, Any], path: Path) -> IndexDamagedError:
    """Querying fails cleanly, naming the damaged file and the way back; verify fails too."""
    with pytest.raises(IndexDamagedError) as info:
        RetrievalPipeline.from_config(cfg).retrieve(QUERY)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "--rebuild" in message
    report = RetrievalPipeline.from_config(cfg).verify()
    assert report["ok"] is False
    assert any(p["file"] == str(path) for p in report["problems"]), report["problems"]
    assert report["recovery"]
    return info.value


@pytest.mark.parametrize(("kind", "damage"), CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_damage_is_refused_not_served(copy: Path, kind: str, damage: str) -> None:
    gen = _gen(copy)
    path = _one(gen, FILES[kind])
    (DAMAGE | MORE)[damage](path)
    error = _refused(_config(copy), path)
    # the previous generation is intact, and the message says how to fall back to it
    previous = LocalStorage(copy / "index").generations()[0]
    assert f"echo {previous.name} > " in str(error)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty", "deleted", "zeroed"])
def test_damaged_current_is_refused(copy: Path, damage: str) -> None:
    current = copy / "index" / "CURRENT"
    if damage == "zeroed":
        current.write_bytes(bytes(current.stat().st_size))
    else:
        DAMAGE[damage](current)
    cfg = _config(copy)
    with pytest.raises(IndexDamagedError, match="CURRENT is damaged") as info:
        RetrievalPipeline.from_config(cfg).retrieve(QUERY)
    newest = LocalStorage(copy / "index").generations()[-1]
    assert f"echo {newest.name} > {current}" in str(info.value)
    report = RetrievalPipeline.from_config(cfg).verify()
    assert not report["ok"] and report["problems"][0]["file"] == str(current)
    # index refuses to build on it (a fresh gen-000001 here would throw everything away)
    with pytest.raises(IndexDamagedError):
        RetrievalPipeline.from_config(cfg).index()


def test_following_the_fall_back_advice_serves_the_previous_generation(copy: Path) -> None:
    _flip(_one(_gen(copy), FILES["vectors"]))
    cfg = _config(copy)
    with pytest.raises(IndexDamagedError) as info:
        RetrievalPipeline.from_config(cfg).retrieve(QUERY)
    previous = str(info.value).split("echo ")[1].split(" > ")[0]
    (copy / "index" / "CURRENT").write_text(previous + "\n")  # what the advice says to run
    assert RetrievalPipeline.from_config(cfg).verify()["ok"]
    hits = RetrievalPipeline.from_config(cfg).retrieve("cosine similarity of vectors")
    assert hits[0].doc_id == "dense"  # the previous generation had the first four documents
    assert RetrievalPipeline.from_config(cfg).index().added == 1  # and index builds on it


def test_index_refuses_to_build_on_a_damaged_generation(copy: Path) -> None:
    gen = _gen(copy)
    _zero_row(_one(gen, FILES["vectors"]))
    write_corpus(copy / "corpus.jsonl", [*SMALL_CORPUS, {"_id": "new", "text": "New text."}])
    before = sorted(p.name for p in (copy / "index").iterdir())
    with pytest.raises(IndexDamagedError, match="vectors"):
        RetrievalPipeline.from_config(_config(copy)).index()
    assert sorted(p.name for p in (copy / "index").iterdir()) == before  # nothing written
    summary = RetrievalPipeline.from_config(_config(copy)).index(rebuild=True)  # the way out
    assert summary.added == 6
    assert RetrievalPipeline.from_config(_config(copy)).verify()["ok"]


def test_a_size_preserving_change_is_caught_even_when_loads_check_sizes_only(copy: Path) -> None:
    gen = _gen(copy)
    vectors = _one(gen, FILES["vectors"])
    _nan_row(vectors)
    cfg = _config(copy)
    storage = LocalStorage(copy / "index", verify="sizes")
    with pytest.raises(IndexDamagedError, match="row 1 holds NaN or infinity"):
        RetrievalPipeline.from_config(cfg, storage=storage).retrieve(QUERY)
    assert not RetrievalPipeline.from_config(cfg, storage=storage).verify()["ok"]


def _make_legacy(root: Path) -> Path:
    """Turn the current generation into one an older gl_retrieval wrote: no checksums."""
    gen = _gen(root)
    manifest = json.loads((gen / "manifest.json").read_text())
    del manifest["integrity"]
    (gen / "manifest.json").write_text(json.dumps(manifest))
    legacy = gen.with_name(gen.name.rsplit("-", 1)[0])
    gen.rename(legacy)
    (root / "index" / "CURRENT").write_text(legacy.name + "\n")
    return legacy


def test_an_index_without_checksums_still_loads_and_its_damage_is_named(copy: Path) -> None:
    gen = _make_legacy(copy)
    cfg = _config(copy)
    assert RetrievalPipeline.from_config(cfg).retrieve(QUERY)[0].doc_id == "pg"
    report = RetrievalPipeline.from_config(cfg).verify()
    assert report["ok"] and "no checksums" in report["warnings"][0]
    docstore = gen / "docstore.json"
    _garbage_json(docstore)
    with pytest.raises(IndexDamagedError) as info:
        RetrievalPipeline.from_config(cfg).retrieve(QUERY)
    assert f"{docstore} is damaged (it is not valid JSON" in str(info.value)


def test_legacy_nan_rows_are_rejected_at_load(copy: Path) -> None:
    gen = _make_legacy(copy)
    _nan_row(_one(gen, FILES["vectors"]))
    with pytest.raises(IndexDamagedError, match="NaN or infinity"):
        RetrievalPipeline.from_config(_config(copy)).retrieve(QUERY)


def test_nan_vectors_are_refused_at_write_time(
    tmp_path: Path, minilm_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_corpus(tmp_path / "corpus.jsonl", SMALL_CORPUS)
    cls = type(minilm_embedder)
    real = cls.embed_documents

    def poisoned(self: Any, texts: list[str], **kw: Any) -> np.ndarray:
        out = np.array(real(self, texts, **kw))
        out[1, 3] = np.nan
        return out

    monkeypatch.setattr(cls, "embed_documents", poisoned)
    with pytest.raises(EmbeddingError, match="NaN or infinite vectors for 1 chunks"):
        RetrievalPipeline.from_config(_config(tmp_path)).index()
    assert not (tmp_path / "index" / "CURRENT").exists()


def test_a_nan_query_vector_is_refused_not_scored() -> None:
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from gl_retrieval.storage.embedded import EmbeddedVectorStore

    store = EmbeddedVectorStore()
    store.add([TextNode(id_="a", text="hi", embedding=[1.0, 0.0])])
    with pytest.raises(EmbeddingError, match="NaN or infinity"):
        store.query(VectorStoreQuery(query_embedding=[float("nan"), 0.0], similarity_top_k=1))


# -- verify on the command line -------------------------------------------------------------------


def test_verify_cli_exit_codes_and_json_shape(copy: Path) -> None:
    cfg_file = copy / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(_config(copy)))
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(cfg_file)])
    assert ok.exit_code == 0, ok.output
    assert ": ok (" in ok.output
    _flip(_one(_gen(copy), FILES["bm25-arrays"]))
    bad = runner.invoke(app, ["verify", str(cfg_file), "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert set(report) >= {"ok", "backend", "location", "generation", "files", "bytes",
                           "problems", "warnings", "recovery", "seconds"}  # fmt: skip
    assert report["ok"] is False and report["problems"][0]["file"].endswith("data.csc.index.npy")
    line = runner.invoke(app, ["verify", str(cfg_file)])
    assert line.exit_code == 1 and "is damaged" in line.stderr
    info = runner.invoke(app, ["info", str(cfg_file)])  # info no longer says all is well
    assert info.exit_code == 1 and "data.csc.index.npy is damaged" in info.stderr


# -- chunking ------------------------------------------------------------------------------------


def test_a_chunking_mismatch_is_served_with_a_warning_and_refused_by_index(
    pristine: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Vectors stay comparable, so queries are right (and a reader with an old config keeps
    # working while a writer rebuilds with a new chunking); only `index` refuses, because an
    # incremental run would mix two chunkings in one index.
    cfg = {**_config(pristine), "chunking": {"chunk_size": 100, "chunk_overlap": 10}}
    with caplog.at_level(logging.WARNING, logger="gl_retrieval.pipeline"):
        hits = RetrievalPipeline.from_config(cfg).retrieve(QUERY)
    assert hits[0].doc_id == "pg"
    assert "chunked differently" in caplog.text and "chunk_size: index has 128" in caplog.text
    from gl_retrieval import IndexMismatchError

    with pytest.raises(IndexMismatchError, match=r"chunking\.chunk_size"):
        RetrievalPipeline.from_config(cfg).index()


# -- readers during commits ----------------------------------------------------------------------


def test_a_leased_generation_outlives_later_commits(copy: Path) -> None:
    cfg = _config(copy)
    held = RetrievalPipeline.from_config(cfg)
    held.warmup()
    first = _gen(copy)
    for i in range(3):
        RetrievalPipeline.from_config(cfg).index_documents(
            [*_docs(), _doc(f"extra{i}")], prune=True
        )
    assert first.is_dir()  # a reader still holds it
    assert held.retrieve(QUERY)[0].doc_id == "pg"
    del held
    import gc

    gc.collect()
    RetrievalPipeline.from_config(cfg).index_documents([*_docs(), _doc("last")], prune=True)
    assert not first.exists()
    assert len(LocalStorage(copy / "index").generations()) == 2  # current and previous


def _docs() -> list[Any]:
    from gl_retrieval.ingest.sources import Document

    return [
        Document(d["_id"], f"{d['title']}\n\n{d['text']}", metadata=d["metadata"])
        for d in SMALL_CORPUS
    ]


def _doc(name: str) -> Any:
    from gl_retrieval.ingest.sources import Document

    return Document(name, f"{name} is a short extra document about commits.")


_READER = """
import json, logging, sys, time
from pathlib import Path
from gl_retrieval import RetrievalPipeline
from gl_retrieval.retrieval.lexical import LexicalIndex

builds = []
real_build = LexicalIndex.build.__func__
LexicalIndex.build = classmethod(lambda cls, chunks: builds.append(1) or real_build(cls, chunks))
warnings = []
class Count(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("gl_retrieval").addHandler(Count(level=logging.WARNING))

pipe = RetrievalPipeline.from_config(sys.argv[1]).warmup()
stop = Path(sys.argv[2])
print("READY", flush=True)
queries, failures, gens = 0, [], set()
while not stop.exists():
    pipe.reload()
    try:
        hits = pipe.retrieve("HNSW indexes in PostgreSQL")
        assert hits and hits[0].doc_id == "pg", [h.doc_id for h in hits]
        gens.add(pipe._handle.extras["dir"].name)
    except BaseException as e:
        failures.append(f"{type(e).__name__}: {e}")
    queries += 1
print(json.dumps({"queries": queries, "failures": failures, "builds": len(builds),
                  "warnings": warnings, "generations": len(gens)}), flush=True)
"""


def test_hybrid_readers_never_fail_or_rebuild_bm25_while_a_writer_commits(
    copy: Path, minilm_embedder: Any
) -> None:
    cfg = _config(copy)
    cfg_file = copy / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    stop = copy / "stop"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(cfg_file), str(stop)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "READY", reader.stderr.read()  # type: ignore[union-attr]
        writer = RetrievalPipeline.from_config(cfg)
        t0, commits = time.perf_counter(), 0
        while commits < 24 or time.perf_counter() - t0 < 3:
            writer.index_documents([*_docs(), _doc(f"commit{commits}")], prune=True)
            commits += 1
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["failures"] == [], result["failures"][:3]
    assert result["builds"] == 0, "a reader rebuilt the BM25 side in memory"
    assert not [w for w in result["warnings"] if "BM25" in w], result["warnings"]
    assert result["queries"] >= 20 and result["generations"] >= 3, result
    assert len(LocalStorage(copy / "index").generations()) <= 3  # old ones were removed
