"""The Storage contract: one table of calls, run against every backend.

Everything a caller uses is declared on :class:`gl_retrieval.storage.base.Storage`; both the
embedded store and Postgres implement it, and nothing outside ``storage/`` probes a backend
(``getattr``), calls its private methods or tests its concrete type (checked with ``ast``).
"""

from __future__ import annotations

import ast
import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.vector_stores.types import VectorStoreQuery

import gl_retrieval
from gl_retrieval import IndexNotFoundError, RetrievalPipeline, StorageError
from gl_retrieval.storage.base import Storage
from tests.conftest import MINILM, SMALL_CORPUS, write_corpus
from tests.test_postgres import PG, pg  # noqa: F401  (the session's Postgres fixture)

ROOT = Path(gl_retrieval.__file__).parent


def _config(tmp: Path, storage: dict[str, Any]) -> dict[str, Any]:
    return {
        "embedder": {"provider": "huggingface", "model": MINILM},
        "retriever": {"top_k": 3, "mode": "dense"},
        "storage": storage,
        "sources": [{"path": str(write_corpus(tmp / "corpus.jsonl", SMALL_CORPUS))}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
    }


@pytest.fixture(params=["embedded", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, minilm_embedder: Any
) -> Iterator[tuple[RetrievalPipeline, RetrievalPipeline]]:
    """(an indexed pipeline, a pipeline over an empty place of the same backend)."""
    if request.param == "embedded":
        full = {"persist_dir": str(tmp_path / "index")}
        empty = {"persist_dir": str(tmp_path / "empty")}
    else:
        server: PG = request.getfixturevalue("pg")
        table = f"t_{uuid.uuid4().hex[:10]}"
        full = {"backend": "postgres", "url": server.url, "table": table}
        empty = {"backend": "postgres", "url": server.url, "table": f"{table}_none"}
    pipe = RetrievalPipeline.from_config(_config(tmp_path, full), embedder=minilm_embedder)
    pipe.index(show_progress=False)
    none = RetrievalPipeline.from_config(_config(tmp_path, empty), embedder=minilm_embedder)
    yield pipe, none


def test_every_backend_implements_the_whole_contract() -> None:
    from gl_retrieval.storage.local import LocalStorage
    from gl_retrieval.storage.postgres.store import PostgresStorage

    declared = {n for n, v in vars(Storage).items() if getattr(v, "__isabstractmethod__", False)}
    assert {
        "read_documents",
        "verify",
        "write_lock",
        "recovery",
        "committed_generation",
        "search",
        "filter_mask",
        "metadata_schema",
    } <= declared
    for cls in (LocalStorage, PostgresStorage):
        assert issubclass(cls, Storage)
        assert not getattr(cls, "__abstractmethods__", set()), cls
        for name in declared:  # same keyword names as the contract
            want = set(inspect.signature(getattr(Storage, name)).parameters)
            assert want <= set(inspect.signature(getattr(cls, name)).parameters), (cls, name)


def test_the_contract_on_a_committed_index(
    backend: tuple[RetrievalPipeline, RetrievalPipeline],
) -> None:
    pipe, _ = backend
    storage = pipe.storage
    assert storage.exists()
    manifest = storage.read_manifest()
    docs = storage.read_documents()
    assert set(docs) == {d["_id"] for d in SMALL_CORPUS}
    assert manifest.documents == len(docs)
    assert manifest.chunks == sum(len(r.nodes) for r in docs.values())
    gen = storage.committed_generation()
    assert gen is not None
    storage.check_files()
    report = storage.verify(extra=lambda _dir, ids: [])
    assert report["ok"] and report["generation"] == gen and report["problems"] == []
    assert isinstance(storage.recovery(), str) and "rebuild" in storage.recovery()

    handle = storage.load(embed_model=pipe.embedder)
    assert handle.generation == gen == pipe.committed_generation()
    vec = pipe.embedder.embed_queries(["a cross-encoder reranks"])[0]
    ids = list(handle.index.index_struct.nodes_dict.values())
    result = storage.search(
        handle, VectorStoreQuery(query_embedding=vec.tolist(), similarity_top_k=2, node_ids=ids)
    )
    assert result.nodes and len(result.nodes) == 2
    assert result.nodes[0].ref_doc_id == "ce"
    assert result.similarities[0] >= result.similarities[1]
    schema = storage.metadata_schema()
    assert schema["year"] == frozenset({"number"}) and schema["topic"] == frozenset({"string"})
    from gl_retrieval.retrieval.filters import parse_filters

    doc_of = {nid: d for d, rec in docs.items() for nid in rec.nodes}
    chunk_ids = list(doc_of)
    mask = storage.filter_mask(handle, parse_filters(["year>=2020"]), node_ids=chunk_ids)
    assert mask.dtype == bool and mask.shape == (len(chunk_ids),)
    assert [doc_of[n] for n, m in zip(chunk_ids, mask, strict=True) if m] == [
        doc_of[n] for n in chunk_ids if doc_of[n] in ("dense", "chunk", "pg")
    ]
    stored = storage.stored_vectors(handle, [result.nodes[0].node_id])
    if stored is not None:  # embedded reads them back; postgres keeps them on the server
        assert np.allclose(stored[0] @ vec, result.similarities[0], atol=1e-5)
    with storage.write_lock(), pytest.raises(StorageError, match="another process"):  # noqa: SIM117
        with RetrievalPipeline(pipe.config).storage.write_lock():
            pass


def test_the_contract_on_an_empty_place(
    backend: tuple[RetrievalPipeline, RetrievalPipeline],
) -> None:
    _, none = backend
    storage = none.storage
    assert not storage.exists()
    assert storage.committed_generation() is None
    for call in (storage.read_manifest, storage.read_documents, storage.verify):
        with pytest.raises(IndexNotFoundError):
            call()


def _outside_storage() -> Iterator[tuple[Path, ast.AST]]:
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in ("storage", "config"):  # config holds settings, not backends
            yield rel, ast.parse(path.read_text(encoding="utf-8"))


def test_no_caller_outside_storage_probes_or_names_a_concrete_backend() -> None:
    concrete = {"LocalStorage", "PostgresStorage", "EmbeddedVectorStore", "StagedPGVectorStore"}
    found = []
    for rel, tree in _outside_storage():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in concrete:
                found.append(f"{rel}:{node.lineno} names {node.id}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("gl_retrieval.storage.postgres", "gl_retrieval.storage.embedded")
            ):
                found.append(f"{rel}:{node.lineno} imports {node.module}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and "storage" in ast.unparse(node.args[0])
            ):
                found.append(f"{rel}:{node.lineno} probes {ast.unparse(node)}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("_read_state", "_handle", "_load_handle")
                and any(w in ast.unparse(node.value) for w in ("storage", "pipe"))
            ):
                found.append(f"{rel}:{node.lineno} calls {ast.unparse(node)}")
    assert found == [], "\n".join(found)
