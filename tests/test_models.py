"""Model cache and offline operation: `models pull`, cached loading, one-line errors, fast failure.

No test here needs the network. "The hub is unreachable" is real: HF_ENDPOINT points at a closed
loopback port (connection refused), or HF_HUB_OFFLINE=1. "The hub answers" is a loopback HTTP
server speaking the hub's error headers, or a monkeypatched ``HfApi.model_info`` /
``snapshot_download`` for the download path. Tests that really download are marked ``hub``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import huggingface_hub
import pytest
import yaml
from typer.testing import CliRunner

from gl_retrieval import ModelLoadError, RetrievalPipeline
from gl_retrieval.cli import app
from gl_retrieval.config import PipelineConfig
from gl_retrieval.models import (
    cached_snapshot,
    configured_models,
    hf_cache_dir,
    pull_models,
    resolve_model_path,
)
from tests.conftest import MINILM, ROOT

runner = CliRunner()
HUB_EMBEDDER = "BAAI/bge-base-en-v1.5"
HUB_RERANKER = "BAAI/bge-reranker-base"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, and HF_HUB_OFFLINE=1."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture()
def unreachable_hub(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Online mode, but the hub endpoint refuses connections (nothing listens there)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    return url


def cache_model(home: Path, repo: str, source: Path, *, sha: str = "a" * 40) -> Path:
    """Lay ``source`` out in the hub cache as ``repo`` at ``main``, as snapshot_download would."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    snapshot = folder / "snapshots" / sha
    shutil.copytree(source, snapshot)
    return snapshot


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == "" or "error:" not in result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


# -- where the cache is ---------------------------------------------------------------------------


def test_cache_dir_follows_hf_hub_cache_then_hf_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hf_cache_dir() == Path("~/.cache/huggingface/hub").expanduser()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hf_cache_dir() == tmp_path / "cache"


# -- loading -------------------------------------------------------------------------------------


def test_cached_hub_model_loads_from_the_cache_without_the_network(
    unreachable_hub: str, hf_home: Path, minilm_path: Path, small_config: dict[str, Any]
) -> None:
    snapshot = cache_model(hf_home, "acme/mini-embedder", minilm_path)
    assert cached_snapshot("acme/mini-embedder") == snapshot
    assert resolve_model_path("acme/mini-embedder") == str(snapshot)
    cfg = {**small_config, "embedder": {"model": "acme/mini-embedder"}}
    pipe = RetrievalPipeline.from_config(cfg)
    pipe.index()
    assert pipe.retrieve("which model reads query and passage together?")[0].doc_id == "ce"
    # The manifest records the config's model name, not the cache path.
    assert pipe.info()["embedder"]["model"] == "acme/mini-embedder"


def test_offline_missing_model_fails_every_command_with_one_line(
    hf_home: Path, tmp_path: Path, small_config: dict[str, Any]
) -> None:
    hub = {**small_config, "embedder": {"model": HUB_EMBEDDER}}
    hub_cfg = write_config(tmp_path, hub)
    # `query` needs an index first (any embedder: the model loads before the manifest check).
    RetrievalPipeline.from_config(small_config).index()
    new_cfg = write_config(
        tmp_path, {**hub, "storage": {"persist_dir": str(tmp_path / "new")}}, "new.yaml"
    )
    expected = (
        f"error: embedder model '{HUB_EMBEDDER}' is not in the Hugging Face cache "
        f"({hf_home / 'hub'}) and the hub was not tried (HF_HUB_OFFLINE is set): run "
        "`gl-retrieval models pull CONFIG`"
    )
    for args in (["index", new_cfg], ["query", hub_cfg, "q"]):
        t0 = time.perf_counter()
        line = one_line_error(runner.invoke(app, [str(a) for a in args]))
        assert time.perf_counter() - t0 < 10
        assert line.startswith(expected), (args, line)
        assert line.endswith("or set embedder.model to a local directory")
    # `models pull` itself says what blocks it and how to bring a cache over (issue 24).
    line = one_line_error(runner.invoke(app, ["models", "pull", str(hub_cfg)]))
    assert line.startswith(f"error: cannot pull embedder model '{HUB_EMBEDDER}'"), line
    assert "(HF_HUB_OFFLINE is set)" in line and "run `gl-retrieval models pull" not in line
    assert "copy DIR here and set HF_HOME=DIR" in line
    assert "docs/operations.md#offline-machines" in line


def test_offline_missing_reranker_fails_query_with_one_line(
    hf_home: Path, tmp_path: Path, small_config: dict[str, Any]
) -> None:
    RetrievalPipeline.from_config(small_config).index()
    cfg = write_config(tmp_path, {**small_config, "reranker": {"model": HUB_RERANKER}})
    line = one_line_error(runner.invoke(app, ["query", str(cfg), "anything"]))
    assert line.startswith(f"error: reranker model '{HUB_RERANKER}' is not in the Hugging Face")
    assert "or set reranker.model to a local directory" in line


def test_unreachable_hub_fails_fast_with_the_reason(
    unreachable_hub: str, tmp_path: Path, small_config: dict[str, Any]
) -> None:
    cfg = write_config(tmp_path, {**small_config, "embedder": {"model": HUB_EMBEDDER}})
    t0 = time.perf_counter()
    line = one_line_error(runner.invoke(app, ["index", str(cfg)]))
    assert time.perf_counter() - t0 < 10  # no retry loop with back-off
    assert f"embedder model '{HUB_EMBEDDER}' is not in the Hugging Face cache" in line
    assert "the hub could not be reached (ConnectError" in line


def test_unreachable_hub_in_a_real_process_prints_one_line(
    tmp_path: Path, small_config: dict[str, Any]
) -> None:
    """The whole CLI in a fresh process: no retries, no traceback, one line, exit 1."""
    cfg = write_config(tmp_path, {**small_config, "embedder": {"model": HUB_EMBEDDER}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        PYTHONPATH=str(ROOT),
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from gl_retrieval.cli import main; main()", "index", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: embedder model '{HUB_EMBEDDER}' is not in the Hugging")
    assert elapsed < 60, elapsed  # before: ~90 s of retries with back-off


def test_broken_cached_snapshot_says_so(
    hf_home: Path, tmp_path: Path, minilm_path: Path, small_config: dict[str, Any]
) -> None:
    source = tmp_path / "partial"
    source.mkdir()
    shutil.copy(minilm_path / "config.json", source / "config.json")  # no weights, no tokenizer
    snapshot = cache_model(hf_home, "acme/broken", source)
    cfg = write_config(tmp_path, {**small_config, "embedder": {"model": "acme/broken"}})
    line = one_line_error(runner.invoke(app, ["index", str(cfg)]))
    assert line.startswith(
        f"error: embedder model 'acme/broken' is in the Hugging Face cache ({snapshot}) but "
        "could not be loaded from it ("
    )
    assert line.endswith("to complete it")


class _FakeHub(BaseHTTPRequestHandler):
    """Answers every request the way the hub answers an unknown repository or revision."""

    error_code = "RepoNotFound"

    def do_GET(self) -> None:
        body = json.dumps({"error": "Repository Not Found"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", self.server.error_code)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def fake_hub(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    server.error_code = "RepoNotFound"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


def test_unknown_model_and_revision_on_the_hub(
    fake_hub: ThreadingHTTPServer, tmp_path: Path, small_config: dict[str, Any]
) -> None:
    cfg = write_config(tmp_path, {**small_config, "embedder": {"model": "BAAI/bge-base-en-v1.6"}})
    line = one_line_error(runner.invoke(app, ["index", str(cfg)]))
    assert line.startswith(
        "error: embedder model 'BAAI/bge-base-en-v1.6' was not found on the Hugging Face hub ("
    )
    assert "check embedder.model, or log in with `hf auth login`" in line

    fake_hub.error_code = "RevisionNotFound"  # type: ignore[attr-defined]
    cfg = write_config(
        tmp_path, {**small_config, "embedder": {"model": HUB_EMBEDDER, "revision": "v9"}}
    )
    line = one_line_error(runner.invoke(app, ["index", str(cfg)]))
    assert line == (
        f"error: embedder model '{HUB_EMBEDDER}' has no revision 'v9' on the Hugging Face hub: "
        "fix embedder.revision (a branch, tag or commit of that repository)"
    )


# -- models pull ---------------------------------------------------------------------------------


@pytest.fixture()
def fake_download(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, minilm_path: Path
) -> list[dict[str, Any]]:
    """The hub answers model_info; snapshot_download 'downloads' by copying the packaged MiniLM."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[dict[str, Any]] = []
    files = [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "onnx/model.onnx",
        "tf_model.h5",
        "tokenizer.json",
    ]

    def model_info(self: Any, repo_id: str, **kwargs: Any) -> Any:
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in files])

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        folder = Path(kwargs["cache_dir"]) / f"models--{repo_id.replace('/', '--')}"
        if not (folder / "refs" / "main").exists():
            cache_model(hf_home, repo_id, minilm_path)
        return str(cached_snapshot(repo_id))

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_pull_downloads_each_hub_model_into_the_hf_cache(
    fake_download: list[dict[str, Any]], hf_home: Path, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        {
            "embedder": {"model": HUB_EMBEDDER},
            "reranker": {"model": HUB_RERANKER},
            "llm": {"model": "llama3.2"},
        },
    )
    r = runner.invoke(app, ["models", "pull", str(cfg)])
    assert r.exit_code == 0, r.output
    assert [c["repo_id"] for c in fake_download] == [HUB_EMBEDDER, HUB_RERANKER]
    call = fake_download[0]
    assert call["cache_dir"] == str(hf_home / "hub")
    assert set(call["ignore_patterns"]) == {
        "onnx/*",
        "*.onnx",
        "*.h5",
        "tf_model*",
        "pytorch_model*.bin",
    }
    lines = r.stdout.splitlines()
    snapshot = hf_home / "hub" / "models--BAAI--bge-base-en-v1.5" / "snapshots" / ("a" * 40)
    assert lines[0] == f"embedder  {HUB_EMBEDDER}  downloaded -> {snapshot}"
    assert lines[1].startswith(f"reranker  {HUB_RERANKER}  downloaded -> ")
    assert lines[2] == "llm       llama3.2  served by Ollama: run `ollama pull llama3.2`"
    assert f"pulling embedder model '{HUB_EMBEDDER}' into {hf_home / 'hub'} ..." in r.stderr

    # Pulled models now load offline, from the cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert resolve_model_path(HUB_EMBEDDER) == str(snapshot)

    again = runner.invoke(app, ["models", "pull", str(cfg), "--json"])
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["cache"] == str(hf_home / "hub")
    assert [(m["role"], m["source"], m["status"]) for m in data["models"]] == [
        ("embedder", "hub", "cached"),
        ("reranker", "hub", "cached"),
        ("llm", "ollama", "ollama"),
    ]
    assert data["models"][0]["path"] == str(snapshot)
    assert data["models"][2]["command"] == "ollama pull llama3.2"


def test_pull_reports_local_packaged_and_ollama_models(hf_home: Path, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {
            "embedder": {
                "provider": "ollama",
                "model": "nomic-embed-text",
                "base_url": "http://gpu-box:11434",
            },
        },
    )
    r = runner.invoke(app, ["models", "pull", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    (model,) = json.loads(r.stdout)["models"]
    assert model["command"] == "OLLAMA_HOST=http://gpu-box:11434 ollama pull nomic-embed-text"

    cfg = write_config(tmp_path, {"embedder": {"model": MINILM}})
    r = runner.invoke(app, ["models", "pull", str(cfg)])
    assert r.exit_code == 0, r.output
    auto = "embedder: backend auto -> torch fp32 (GL_RETRIEVAL_AUTO_BACKEND=torch)\n"
    assert r.stdout == f"embedder  {MINILM}  local, nothing to pull\n" + auto

    cfg = write_config(tmp_path, {"embedder": {"model": MINILM}, "reranker": {"model": "./nope"}})
    line = one_line_error(runner.invoke(app, ["models", "pull", str(cfg)]))
    assert line == (
        f"error: reranker model '{tmp_path / 'nope'}' is a local path that does not exist "
        f"({tmp_path / 'nope'}): fix reranker.model"
    )


def test_pull_with_hf_hub_offline_refuses_what_is_not_cached(
    hf_home: Path, tmp_path: Path, minilm_path: Path
) -> None:
    cfg = write_config(tmp_path, {"embedder": {"model": HUB_EMBEDDER}})
    line = one_line_error(runner.invoke(app, ["models", "pull", str(cfg)]))
    assert "the hub was not tried (HF_HUB_OFFLINE is set)" in line

    snapshot = cache_model(hf_home, HUB_EMBEDDER, minilm_path)
    r = runner.invoke(app, ["models", "pull", str(cfg)])
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        f"embedder  {HUB_EMBEDDER}  already cached -> {snapshot} "
        "(HF_HUB_OFFLINE is set: not checked for updates)\n"
        # backend: auto shows its choice (the suite pins auto to torch).
        "embedder: backend auto -> torch fp32 (GL_RETRIEVAL_AUTO_BACKEND=torch)\n"
    )


def test_pull_with_the_hub_unreachable(
    unreachable_hub: str, hf_home: Path, tmp_path: Path, minilm_path: Path
) -> None:
    cfg = write_config(tmp_path, {"embedder": {"model": HUB_EMBEDDER}})
    line = one_line_error(runner.invoke(app, ["models", "pull", str(cfg)]))
    assert "is not in the Hugging Face cache" in line
    assert "the hub could not be reached (ConnectError" in line
    # Not "run models pull where the hub is reachable" (issue 24): how to copy a cache here.
    assert line.startswith(f"error: cannot pull embedder model '{HUB_EMBEDDER}'"), line
    assert "run `gl-retrieval models pull" not in line
    assert "copy DIR here and set HF_HOME=DIR" in line

    cache_model(hf_home, HUB_EMBEDDER, minilm_path)
    reports = pull_models(PipelineConfig.model_validate({"embedder": {"model": HUB_EMBEDDER}}))
    assert reports[0].status == "cached"
    assert reports[0].note == "the hub could not be reached: not checked for updates"


def test_configured_models_lists_every_section() -> None:
    cfg = PipelineConfig.model_validate(
        {
            "embedder": {"model": MINILM},
            "reranker": {"model": HUB_RERANKER, "revision": "main"},
            "llm": {"model": "llama3.2"},
        }
    )
    assert [(m.role, m.model, m.source, m.revision) for m in configured_models(cfg)] == [
        ("embedder", MINILM, "packaged", None),
        ("reranker", HUB_RERANKER, "hub", "main"),
        ("llm", "llama3.2", "ollama", None),
    ]


def test_model_load_error_is_a_gl_retrieval_error() -> None:
    from gl_retrieval import GLRetrievalError

    assert issubclass(ModelLoadError, GLRetrievalError)


# -- opt-in: the real hub ------------------------------------------------------------------------


@pytest.fixture()
def hub_opt_in(request: pytest.FixtureRequest) -> None:
    """Skip unless the run selected hub tests (``pytest -m hub``): they need the network."""
    expr = request.config.getoption("markexpr") or ""
    if "hub" not in expr or "not hub" in expr:
        pytest.skip("needs the Hugging Face hub: run `pytest -m hub` on a connected machine")


@pytest.mark.hub
def test_real_pull_then_offline_index(
    hub_opt_in: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_config: dict[str, Any]
) -> None:
    """Pull a small real model from the hub, then index with HF_HUB_OFFLINE=1 (needs network)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = "sentence-transformers/all-MiniLM-L6-v2"
    cfg = write_config(tmp_path, {**small_config, "embedder": {"model": model}})
    r = runner.invoke(app, ["models", "pull", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["models"][0]["status"] == "downloaded"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["index", str(cfg)])
    assert r.exit_code == 0, r.output
