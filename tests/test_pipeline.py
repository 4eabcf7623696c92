from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gl_retrieval import IndexMismatchError, IndexNotFoundError, RetrievalPipeline
from gl_retrieval.retrieval.results import RankedNode
from tests.conftest import ROOT


def test_index_then_query_finds_the_right_document(small_config: dict[str, Any]) -> None:
    pipe = RetrievalPipeline.from_config(small_config)
    summary = pipe.index()
    assert summary.to_dict()["documents"]["added"] == 5
    assert summary.chunks_embedded == 5
    hits = pipe.retrieve("which model reads query and passage together to rerank?")
    assert hits[0].doc_id == "ce"
    assert isinstance(hits[0], RankedNode)
    assert hits[0].retrieval_score == hits[0].score
    assert hits[0].node.metadata["topic"] == "rerank"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_reindex_without_changes_embeds_nothing(small_config: dict[str, Any]) -> None:
    pipe = RetrievalPipeline.from_config(small_config)
    pipe.index()
    again = pipe.index()
    assert again.to_dict()["documents"] == {
        "added": 0,
        "updated": 0,
        "unchanged": 5,
        "deleted": 0,
        "skipped": 0,
    }
    assert again.chunks_embedded == 0


def test_persisted_index_reloads_in_a_new_process_without_reembedding(
    small_config: dict[str, Any], tmp_path: Path
) -> None:
    RetrievalPipeline.from_config(small_config).index()
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(small_config))
    script = f"""
import json
from gl_retrieval import RetrievalPipeline
from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder
calls = []
orig = SentenceTransformerEmbedder.embed_documents
def spy(self, texts, **kw):
    calls.append(len(texts))
    return orig(self, texts, **kw)
SentenceTransformerEmbedder.embed_documents = spy
pipe = RetrievalPipeline.from_config({str(cfg_file)!r}).warmup()
hits = pipe.retrieve("vectors in postgres shared by many processes")
print(json.dumps({{"top": hits[0].doc_id, "doc_embeds": calls}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"top": "pg", "doc_embeds": []}


def test_query_before_index_says_to_run_index(small_config: dict[str, Any]) -> None:
    with pytest.raises(IndexNotFoundError, match="gl-retrieval index"):
        RetrievalPipeline.from_config(small_config).retrieve("anything")


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"query_prefix": "query: "}, "embedder.query_prefix"),
        ({"normalize": False}, "embedder.normalize"),
        ({"preset": "e5"}, "embedder.document_prefix"),
    ],
)
def test_mismatched_embedder_is_refused_with_a_rebuild_hint(
    small_config: dict[str, Any], change: dict[str, Any], mentions: str
) -> None:
    RetrievalPipeline.from_config(small_config).index()
    other = {**small_config, "embedder": {**small_config["embedder"], **change}}
    for action in (lambda p: p.retrieve("x"), lambda p: p.index()):
        with pytest.raises(IndexMismatchError) as err:
            action(RetrievalPipeline.from_config(other))
        assert mentions in str(err.value)
        assert "--rebuild" in str(err.value)


def test_mismatched_model_is_refused(small_config: dict[str, Any], tmp_path: Path) -> None:
    from tests.test_integrity import rewrite_manifest

    RetrievalPipeline.from_config(small_config).index()

    def other_model(manifest: dict[str, Any]) -> None:
        manifest["embedder"]["model"] = "BAAI/bge-base-en-v1.5"
        manifest["embedder"]["dimension"] = 768

    rewrite_manifest(Path(small_config["storage"]["persist_dir"]), other_model)
    with pytest.raises(IndexMismatchError, match=r"'BAAI/bge-base-en-v1\.5'.*config has"):
        RetrievalPipeline.from_config(small_config).retrieve("x")


def test_rebuild_replaces_an_index_built_differently(small_config: dict[str, Any]) -> None:
    RetrievalPipeline.from_config(small_config).index()
    other = {**small_config, "chunking": {"chunk_size": 100, "chunk_overlap": 10}}
    with pytest.raises(IndexMismatchError, match=r"chunking\.chunk_size"):
        RetrievalPipeline.from_config(other).index()
    summary = RetrievalPipeline.from_config(other).index(rebuild=True)
    assert summary.chunks_embedded == 5
    assert RetrievalPipeline.from_config(other).info()["chunking"]["chunk_size"] == 100


def test_query_engine_is_retrieval_only(small_config: dict[str, Any]) -> None:
    # The autouse tripwire makes any read of Settings.llm fail, so no OpenAI fallback can hide.
    pipe = RetrievalPipeline.from_config(small_config)
    pipe.index()
    response = pipe.as_query_engine().query("lexical term frequency ranking")
    assert response.metadata == {"retrieval_only": True}
    assert str(response).startswith("Retrieval only (the config has no llm section)")
    assert response.source_nodes[0].node.ref_doc_id == "bm25"


def test_manifest_records_what_built_the_index(small_config: dict[str, Any]) -> None:
    pipe = RetrievalPipeline.from_config(small_config)
    pipe.index()
    info = pipe.info()
    # backend: auto (the default) records what it chose and why; the suite pins it to torch.
    choice = info["embedder"].pop("backend_choice")
    assert (choice["configured"], choice["backend"]) == ("auto", "torch")
    assert choice["reason"]
    assert info["embedder"] == {
        "provider": "huggingface",
        "model": "packaged:all-MiniLM-L6-v2",
        "revision": None,
        "query_prefix": "",
        "document_prefix": "",
        "normalize": True,
        "dimension": 384,
        "max_length": 256,
        "backend": "torch",
        "precision": "fp32",
    }
    assert info["chunking"]["chunk_size"] == 128
    assert info["chunking"]["chunk_overlap"] == 16
    assert set(info["versions"]) >= {"gl-retrieval", "llama-index-core", "sentence-transformers"}
    assert (info["documents"], info["chunks"]) == (5, 5)


def test_config_round_trips_through_json(small_config: dict[str, Any]) -> None:
    from gl_retrieval.config import PipelineConfig

    pipe = RetrievalPipeline.from_config(small_config)
    dumped = pipe.config.model_dump(mode="json")
    assert PipelineConfig.model_validate(dumped) == pipe.config
    assert PipelineConfig.model_validate(json.loads(json.dumps(dumped))) == pipe.config


def test_top_k_and_top_n_are_validated(small_config: dict[str, Any]) -> None:
    pipe = RetrievalPipeline.from_config(small_config)
    pipe.index()
    with pytest.raises(ValueError, match="top_k must be > 0, but got 0"):
        pipe.retrieve("x", top_k=0)
    with pytest.raises(ValueError, match="query must be a non-empty string"):
        pipe.retrieve("  ")
    assert len(pipe.retrieve("x", top_n=2)) == 2
