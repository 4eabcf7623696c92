"""Bulk jobs get every core under ``runtime.threads: auto``; queries keep their share.

The rule is ``resolve_threads(threads, bulk=True)`` (models/runtimes.py); ``index`` (library and
CLI), ``eval``'s indexing, ``models pull``'s exports and ``finetune`` use it, and the embedder
restores the query threads when the job ends (torch's setting is process-wide).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from gl_retrieval.embedders.huggingface import SentenceTransformerEmbedder
from gl_retrieval.models import runtimes
from gl_retrieval.models.runtimes import default_threads, resolve_threads

MINILM = "packaged:all-MiniLM-L6-v2"


def test_bulk_rule_every_core_for_auto_and_the_integer_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtimes, "cpu_count", lambda: 16)
    assert resolve_threads("auto", bulk=True) == 16
    assert resolve_threads(None, bulk=True) == 16
    assert resolve_threads("auto") == default_threads(cores=16) == 4  # the query default
    assert resolve_threads(3, bulk=True) == resolve_threads(3) == 3


class RecordingEmbedder(SentenceTransformerEmbedder):
    """The real torch embedder, noting torch's threads at every encode."""

    seen: ClassVar[list[int]] = []

    def _encode(self, texts: Sequence[str], *, show_progress: bool) -> np.ndarray:
        import torch

        out = super()._encode(texts, show_progress=show_progress)  # loads the model first
        type(self).seen.append(torch.get_num_threads())
        return out


@pytest.fixture()
def recording() -> Any:
    import torch

    before = torch.get_num_threads()
    RecordingEmbedder.seen = []
    emb = RecordingEmbedder(model=MINILM, threads=1)
    yield emb
    torch.set_num_threads(before)


def _pipe(config: dict[str, Any], emb: Any, threads: int | str = "auto") -> Any:
    from gl_retrieval import RetrievalPipeline

    return RetrievalPipeline.from_config({**config, "runtime": {"threads": threads}}, embedder=emb)


def test_index_runs_on_every_core_and_queries_get_their_share_back(
    small_config: dict[str, Any], recording: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(runtimes, "cpu_count", lambda: 3)
    pipe = _pipe(small_config, recording)
    # The model loads inside the job (nothing loaded it before): it loads with the bulk threads.
    pipe.index(show_progress=False)
    assert set(RecordingEmbedder.seen) == {3}
    assert torch.get_num_threads() == 1  # restored to the query share
    RecordingEmbedder.seen.clear()
    pipe.retrieve("what is BM25?", top_n=2)
    assert RecordingEmbedder.seen == [1]

    # A loaded model: set for the job, restored after; eval's indexing takes the same path.
    RecordingEmbedder.seen.clear()
    pipe.index_documents(
        [*_docs(pipe), _doc("new", "Rerankers reorder candidates.")], show_progress=False
    )
    assert RecordingEmbedder.seen and set(RecordingEmbedder.seen) == {3}
    assert torch.get_num_threads() == 1


def test_serve_style_jobs_and_explicit_threads_keep_their_number(
    small_config: dict[str, Any], recording: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(runtimes, "cpu_count", lambda: 3)
    pipe = _pipe(small_config, recording)
    pipe.index(show_progress=False, threads=1)  # what serve's POST /v1/index passes
    assert set(RecordingEmbedder.seen) == {1}

    RecordingEmbedder.seen.clear()
    pipe = _pipe(small_config, recording, threads=2)  # an integer applies to bulk jobs too
    pipe.index(rebuild=True, show_progress=False)
    assert set(RecordingEmbedder.seen) == {2}
    assert torch.get_num_threads() == 1  # the embedder's own (query) threads


def test_serve_index_job_uses_the_query_share(
    small_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve answers queries while its index job runs: the job keeps the query threads."""
    import time

    from gl_retrieval import RetrievalPipeline
    from gl_retrieval.serve.service import RetrievalService

    monkeypatch.setattr(runtimes, "cpu_count", lambda: 8)
    seen: list[int | None] = []

    class Spy(RetrievalPipeline):
        def index(self, **kw: Any) -> Any:
            seen.append(kw.get("threads"))
            return super().index(**kw)

    pipe = Spy.from_config({**small_config, "runtime": {"threads": "auto"}})
    service = RetrievalService(pipe, None)
    job = service.start_index_job()
    for _ in range(600):
        if job.state != "running":
            break
        time.sleep(0.1)
    assert job.state == "succeeded", job.error
    assert seen == [default_threads(cores=8)]


def test_exported_embedder_opens_a_bulk_session_and_drops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("GL_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    from gl_retrieval.embedders.exported import ExportedEmbedder

    emb = ExportedEmbedder(model=MINILM, backend="onnx", threads=1)
    query = emb.embed_queries(["bm25"])

    def session_threads() -> int:
        run, _ = emb._runner_now()
        return run.session.get_session_options().intra_op_num_threads

    assert session_threads() == 1
    with emb.bulk_threads(2):
        assert session_threads() == 2
        np.testing.assert_allclose(emb.embed_queries(["bm25"]), query, atol=1e-5)
    assert session_threads() == 1
    with emb.bulk_threads(1):  # the same number: no second session
        assert emb._runner_now()[0] is emb._load()[0]

    # A job in a fresh process (the CLI's index) opens only the job's session.
    fresh = ExportedEmbedder(model=MINILM, backend="onnx", threads=1)
    with fresh.bulk_threads(2):
        fresh.embed_documents(["a chunk", "another chunk"])
    assert fresh._runner is None


def test_torch_threads_sets_and_restores() -> None:
    import torch

    before = torch.get_num_threads()
    with runtimes.torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def _doc(doc_id: str, text: str) -> Any:
    from gl_retrieval.ingest.sources import Document

    return Document(doc_id, text)


def _docs(pipe: Any) -> list[Any]:
    from gl_retrieval.ingest.sources import read_sources

    return list(read_sources(pipe.config.sources, []))


def test_index_and_load_never_read_llamaindex_settings_transformations(
    small_config: dict[str, Any], minilm_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty transformations list made LlamaIndex build Settings.transformations (a tiktoken
    SentenceSplitter, about 1 s of CPU) in every process that created or loaded an index."""
    from llama_index.core import Settings

    from gl_retrieval import RetrievalPipeline

    def tripwire(_self: Any) -> Any:
        raise AssertionError("Settings.transformations was read")

    monkeypatch.setattr(type(Settings), "transformations", property(tripwire))
    pipe = RetrievalPipeline.from_config(small_config, embedder=minilm_embedder)
    pipe.index(show_progress=False)
    assert pipe.retrieve("what is BM25?", top_n=1)[0].doc_id == "bm25"
