"""onnx / openvino backends: vectors close to torch, cached atomic exports reused offline, the
torch-free query path, threads reaching each runtime, and the mixed-backend rule.

Exports are built once per session into a temporary cache (MiniLM: onnx fp32 and openvino; the
tiny cross-encoder: every backend), so the whole file stays well under a minute.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gl_retrieval.config import HuggingFaceEmbedderConfig, RerankerConfig
from gl_retrieval.embedders import build_embedder
from gl_retrieval.errors import ConfigError, IndexMismatchError, MissingDependencyError
from gl_retrieval.storage.manifest import Manifest, check_compatible
from tests.conftest import MINILM, ROOT, SMALL_CORPUS, write_corpus

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

TEXTS = ["what is BM25?", "Dense retrieval ranks by cosine similarity. " * 40, "x"]


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = tmp_path_factory.mktemp("gl-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GL_RETRIEVAL_CACHE", str(cache))
        yield cache


def _emb(backend: str, quantization: str = "auto", **kw: Any) -> Any:
    cfg = HuggingFaceEmbedderConfig(model=MINILM, backend=backend, quantization=quantization)
    return build_embedder(cfg, **kw)


@pytest.fixture(scope="session")
def onnx_embedder(export_cache: Path) -> Any:
    emb = _emb("onnx")
    emb.warmup()
    return emb


@pytest.fixture(scope="session")
def openvino_embedder(export_cache: Path) -> Any:
    # f32 forced: `auto` is bf16 on CPUs with bf16 units (AMX, AVX-512 BF16), tested below.
    emb = _emb("openvino", "none")
    emb.warmup()
    return emb


def _scorer(model: Path, backend: str, quantization: str = "auto", threads: int = 1) -> Any:
    from gl_retrieval.retrieval.rerankers import _shared_scorer

    return _shared_scorer(
        str(model),
        device="cpu",
        batch_size=2,
        max_length=64,
        revision=None,
        backend=backend,
        quantization=quantization,
        threads=threads,
    )


# -- vectors and scores close to torch -----------------------------------------------------------


@pytest.mark.parametrize("which", ["onnx_embedder", "openvino_embedder"])
def test_vectors_close_to_torch(which: str, minilm_embedder: Any, request: Any) -> None:
    emb = request.getfixturevalue(which)
    ref = minilm_embedder.embed_documents(TEXTS)
    got = emb.embed_documents(TEXTS)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # The same tokenizer, limits and identity as the torch embedder.
    assert emb.count_tokens(TEXTS) == minilm_embedder.count_tokens(TEXTS)
    assert emb.max_tokens == minilm_embedder.max_tokens
    assert emb.tokenize_fn()(TEXTS[0]) == minilm_embedder.tokenize_fn()(TEXTS[0])
    fp, ref_fp = emb.fingerprint(), minilm_embedder.fingerprint()
    runtime = ("backend", "precision", "backend_choice")
    assert {k: v for k, v in fp.items() if k not in runtime} == {
        k: v for k, v in ref_fp.items() if k not in runtime
    }
    assert fp["backend"] == which.split("_")[0] and ref_fp["backend"] == "torch"


def test_openvino_auto_precision_is_recorded_and_close(
    export_cache: Path, minilm_embedder: Any
) -> None:
    import openvino as ov

    emb = _emb("openvino")
    hint = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    # OpenVINO's own default, recorded in the fingerprint so an index knows what built it.
    assert emb.precision == ("bf16" if "bfloat16" in hint or "bf16" in hint else "fp32")
    assert emb.fingerprint()["precision"] == emb.precision
    ref, got = minilm_embedder.embed_documents(TEXTS), emb.embed_documents(TEXTS)
    # bf16 keeps ~3 significant digits: vectors agree to a cosine of 0.999, not to 1e-4.
    assert np.min(np.sum(ref * got, axis=1)) > 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("backend", "quantization", "tol"),
    [
        ("onnx", "none", 1e-4),
        ("openvino", "none", 1e-4),
        ("onnx", "int8", 0.05),
        ("openvino", "int8", 0.05),
    ],
)
def test_reranker_scores_close_to_torch(
    backend: str, quantization: str, tol: float, tiny_cross_encoder: Path, export_cache: Path
) -> None:
    passages = [d["text"] for d in SMALL_CORPUS]
    ref = np.asarray(_scorer(tiny_cross_encoder, "torch")("what is BM25?", passages))
    got = np.asarray(_scorer(tiny_cross_encoder, backend, quantization)("what is BM25?", passages))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < tol


def test_reranker_sorts_by_length_and_warns_once_on_truncation(
    tiny_cross_encoder: Path, export_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    score = _scorer(tiny_cross_encoder, "onnx", "none")
    short, long = "bm25 ranks", "a very long passage " * 40  # > max_length=64 tokens
    alone = [float(score("q", [p])[0]) for p in (short, long, short + " more")]
    with caplog.at_level(logging.WARNING, logger="gl_retrieval"):
        together = [float(s) for s in score("q", [short, long, short + " more"])]
        score("q", [long])
    # Sorting by length for batching must not change which score belongs to which passage.
    assert together == pytest.approx(alone, abs=1e-5)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "max_length=64" in warnings[0].getMessage()


# -- the cache -----------------------------------------------------------------------------------


def test_cache_reused_by_a_second_process_offline_without_torch(
    onnx_embedder: Any, export_cache: Path
) -> None:
    from gl_retrieval.models.exports import list_exports

    before = {r["path"]: r["created_at"] for r in list_exports()}
    code = (
        "import sys, json\n"
        "from gl_retrieval.config import HuggingFaceEmbedderConfig as C\n"
        "from gl_retrieval.embedders import build_embedder\n"
        f"e = build_embedder(C(model={MINILM!r}, backend='onnx'))\n"
        "v = e.embed_queries(['what is BM25?'])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'v': v[0, :4].tolist()}))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GL_RETRIEVAL_CACHE": str(export_cache),
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False  # exporting needs torch: nothing was exported
    assert got["v"] == pytest.approx(
        onnx_embedder.embed_queries(["what is BM25?"])[0, :4].tolist(), abs=1e-5
    )
    assert {r["path"]: r["created_at"] for r in list_exports()} == before


def test_export_is_atomic(
    tiny_cross_encoder: Path, export_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import gl_retrieval.models.export_build as build
    from gl_retrieval.models import exports

    monkeypatch.setenv("GL_RETRIEVAL_CACHE", str(tmp_path))
    spec = exports.ExportSpec(str(tiny_cross_encoder), "reranker", "onnx", "none")
    real = build.build_export

    def crash(spec: Any, tdir: Path, source: Path, out: Path, **kw: Any) -> Any:
        real(spec, tdir, source, out, **kw)  # the model file is fully written ...
        raise KeyboardInterrupt  # ... and the process dies before the export is committed

    monkeypatch.setattr(build, "build_export", crash)
    with pytest.raises(KeyboardInterrupt):
        exports.ensure_export(spec)
    assert exports.find_export(spec) is None
    assert list((tmp_path / "exports").iterdir()) == []  # no half-written export left behind
    # A directory without the completion marker (a crash from an older layout) is never used.
    monkeypatch.setattr(build, "build_export", real)
    name, _ = exports._key(spec, tiny_cross_encoder)
    (tmp_path / "exports" / name).mkdir()
    (tmp_path / "exports" / name / "model.onnx").write_bytes(b"half")
    assert exports.find_export(spec) is None
    path = exports.ensure_export(spec)
    assert path.name == name and (path / "complete").exists()
    assert exports.find_export(spec) == path
    assert [r["path"] for r in exports.list_exports()] == [str(path)]


# -- torch-free query path -----------------------------------------------------------------------


def test_query_path_never_imports_torch(
    onnx_embedder: Any, tiny_cross_encoder: Path, export_cache: Path, tmp_path: Path
) -> None:
    import yaml

    from gl_retrieval import RetrievalPipeline

    corpus = write_corpus(tmp_path / "corpus.jsonl", SMALL_CORPUS)
    cfg = {
        "embedder": {"model": MINILM, "backend": "onnx"},
        "reranker": {"model": str(tiny_cross_encoder), "backend": "onnx", "top_n": 2},
        "retriever": {"top_k": 5},
        "storage": {"persist_dir": str(tmp_path / "index")},
        "sources": [{"path": str(corpus)}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    pipe = RetrievalPipeline.from_config(tmp_path / "c.yaml")
    pipe.index()
    pipe.warmup()  # builds the reranker's export (exporting is the one step that needs torch)
    code = (
        "import sys, json\n"
        "from gl_retrieval.cli import app\n"
        f"app(['query', {str(tmp_path / 'c.yaml')!r}, 'what is BM25?', '--json'],"
        " standalone_mode=False)\n"
        "from gl_retrieval import RetrievalPipeline\n"
        f"hits = RetrievalPipeline.from_config({str(tmp_path / 'c.yaml')!r}).retrieve('BM25')\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers', 'nncf')"
        " if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'hits': len(hits)}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"heavy": [], "hits": 2}
    assert '"rerank_score"' in out.stdout  # the CLI printed reranked results


# -- threads -------------------------------------------------------------------------------------


def test_threads_reach_each_runtime(tiny_cross_encoder: Path, export_cache: Path) -> None:
    import torch

    from gl_retrieval.models.exports import ExportSpec, ensure_export, model_file
    from gl_retrieval.models.runtimes import default_threads, load_runner, resolve_threads

    run = load_runner(
        "onnx",
        model_file(ensure_export(ExportSpec(str(tiny_cross_encoder), "reranker", "onnx"))),
        threads=3,
    )
    assert run.session.get_session_options().intra_op_num_threads == 3
    ov = load_runner(
        "openvino",
        model_file(ensure_export(ExportSpec(str(tiny_cross_encoder), "reranker", "openvino"))),
        threads=1,  # OpenVINO caps the setting at the core count; 1 differs from its default
    )
    assert int(ov.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    before = torch.get_num_threads()
    try:
        _scorer(tiny_cross_encoder, "torch", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert resolve_threads("auto") == default_threads() >= 1
    assert [default_threads(cores=c, workers=w) for c, w in ((2, 1), (8, 1), (64, 1), (8, 4))] == [
        1,
        4,
        4,
        1,
    ]


def test_serve_threads_give_a_batching_server_the_cores_and_an_unbatched_one_the_default() -> None:
    from gl_retrieval.models.runtimes import serve_threads

    assert [serve_threads(batching=True, cores=c) for c in (1, 2, 8)] == [1, 2, 4]
    assert [serve_threads(batching=False, cores=c) for c in (1, 2, 8)] == [1, 1, 4]
    # Two embed workers share the cores: each gets its half, still up to 4.
    assert [serve_threads(batching=True, cores=c, workers=2) for c in (1, 2, 8, 16)] == [
        1,
        1,
        4,
        4,
    ]


def test_runtime_threads_config_reaches_embedder_and_reranker(tiny_cross_encoder: Path) -> None:
    from gl_retrieval import RetrievalPipeline

    pipe = RetrievalPipeline.from_config(
        {
            "embedder": {"model": MINILM, "backend": "onnx"},
            "reranker": {"model": str(tiny_cross_encoder), "backend": "openvino", "top_n": 2},
            "retriever": {"top_k": 5},
            "runtime": {"threads": 3},
        }
    )
    assert pipe.embedder.threads == 3 and pipe.reranker.threads == 3
    with pytest.raises(ConfigError, match="threads"):
        RetrievalPipeline.from_config({"runtime": {"threads": 0}})


# -- config, extras, the mismatch rule -----------------------------------------------------------


def test_config_rules() -> None:
    with pytest.raises(ValueError, match=r"int8.*needs backend 'onnx' or 'openvino'"):
        HuggingFaceEmbedderConfig(model=MINILM, backend="torch", quantization="int8")
    # backend auto with int8: only int8 exports are tried (then torch)
    assert HuggingFaceEmbedderConfig(model=MINILM, quantization="int8").backend == "auto"
    with pytest.raises(ValueError, match="runs on the CPU"):
        RerankerConfig(backend="openvino", device="cuda")
    assert RerankerConfig(backend="onnx", quantization="int8").backend == "onnx"


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [("onnx", "onnxruntime", "onnx"), ("openvino", "openvino", "openvino")],
)
def test_missing_extra_names_the_pip_line(
    backend: str,
    module: str,
    extra: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_cross_encoder: Path,
) -> None:
    from gl_retrieval.models.exports import ExportSpec, ensure_export

    monkeypatch.setenv("GL_RETRIEVAL_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'gl-retrieval\[{extra}\]'"):
        ensure_export(ExportSpec(str(tiny_cross_encoder), "reranker", backend))  # type: ignore[arg-type]


def _manifest(**embedder: Any) -> Manifest:
    base = {
        "provider": "huggingface",
        "model": MINILM,
        "revision": None,
        "query_prefix": "",
        "document_prefix": "",
        "normalize": True,
        "dimension": 384,
    }
    return Manifest(embedder={**base, **embedder}, chunking={})


def test_mixed_backend_is_allowed_with_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    old = _manifest()  # a manifest from before backends: torch, fp32
    cfg = _manifest(backend="onnx", precision="int8").embedder
    with caplog.at_level(logging.WARNING, logger="gl_retrieval"):
        check_compatible(old, embedder=cfg, chunking=None, where="/idx-a")
        check_compatible(old, embedder=cfg, chunking=None, where="/idx-a")
    notices = [r.getMessage() for r in caplog.records if "notice" in r.getMessage()]
    assert len(notices) == 1 and "torch/fp32" in notices[0] and "onnx/int8" in notices[0]
    # A different model is still a mismatch, whatever the backend.
    with pytest.raises(IndexMismatchError, match=r"embedder\.model"):
        check_compatible(old, embedder={**cfg, "model": "other"}, chunking=None, where="/idx")


def test_mixed_backend_refused_when_the_rule_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from gl_retrieval.storage import manifest

    monkeypatch.setattr(manifest, "MIXED_RUNTIME_ALLOWED", False)
    with pytest.raises(IndexMismatchError, match=r"embedder\.precision: index has 'fp32'"):
        check_compatible(
            _manifest(backend="onnx", precision="fp32"),
            embedder=_manifest(backend="onnx", precision="int8").embedder,
            chunking=None,
            where="/idx",
        )


def test_cli_models_pull_and_list(onnx_embedder: Any, export_cache: Path, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from gl_retrieval.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"embedder": {"model": MINILM, "backend": "onnx"}}))
    runner = CliRunner()
    pulled = runner.invoke(app, ["models", "pull", str(cfg), "--json"])
    assert pulled.exit_code == 0, pulled.output
    data = json.loads(pulled.stdout)
    assert data["exports"][0]["backend"] == "onnx"
    assert Path(data["exports"][0]["path"]).parent == export_cache / "exports"
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["exports"]
    assert data["exports"][0]["path"] in [r["path"] for r in rows]
    text = runner.invoke(app, ["models", "list"]).stdout
    assert "embedder" in text and "onnx" in text
