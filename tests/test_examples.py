"""The examples are tests: every config validates, every script runs offline, the notebook executes.

Scripts run as users run them (``python examples/<script>.py``) in a subprocess with
HF_HUB_OFFLINE=1, writing their indexes to a temp directory (``--index-dir``), never the repo.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gl_retrieval import load_config
from gl_retrieval.models import configured_models
from tests.conftest import ROOT
from tests.ollama_server import FakeOllama, closed_port

EXAMPLES = ROOT / "examples"
CONFIGS = sorted((EXAMPLES / "configs").glob("*.yaml"))
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def _id(p: Path) -> str:
    return p.name


# -- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_validates(path: Path) -> None:
    cfg = load_config(path)  # production configs too: validation loads no model
    for src in cfg.sources:
        assert src.path.exists(), f"{path.name}: source {src.path} does not exist"


@pytest.mark.parametrize("path", [p for p in CONFIGS if ".offline." in p.name], ids=_id)
def test_offline_config_needs_no_network_and_has_a_production_twin(path: Path) -> None:
    offline = load_config(path)
    assert {m.source for m in configured_models(offline)} <= {"packaged", "local"}
    twin = path.with_name(path.name.replace(".offline", ""))
    assert twin.exists(), f"{path.name} has no production config {twin.name}"
    production = load_config(twin)
    assert {m.source for m in configured_models(production)} & {"hub", "ollama"}
    # Same data, another embedder: another index directory (or it would be refused).
    assert offline.sources == production.sources
    assert offline.storage.persist_dir != production.storage.persist_dir
    assert (offline.reranker is None) == (production.reranker is None)


def test_offline_rerankers_are_the_packaged_stand_in() -> None:
    # The library builds it on demand, so the configs also run under the CLI (no script needed).
    for name in ("builddaily.offline.yaml", "paiddaily.offline.yaml"):
        cfg = load_config(EXAMPLES / "configs" / name)
        assert cfg.reranker is not None
        assert cfg.reranker.model == "packaged:stand-in-cross-encoder"


def test_every_script_is_tested() -> None:
    tested = {"builddaily_docs.py", "paiddaily_catalysts.py", "sagedaily_canon.py"}
    assert {p.name for p in SCRIPTS} - {"_common.py"} == tested


# -- scripts ---------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        HF_HUB_OFFLINE="1",
        PYTHONDONTWRITEBYTECODE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        capture_output=True,
        stdin=subprocess.DEVNULL,  # not a terminal: the chat example runs its fixed questions
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_json(name: str, *args: str | Path) -> dict[str, Any]:
    return json.loads(run_script(name, "--json", *args).stdout)


@pytest.fixture(autouse=True)
def _repo_stays_clean() -> Any:
    """The examples write only under --index-dir, never into the repository."""

    def files() -> set[Path]:
        return {p for p in EXAMPLES.rglob("*") if "__pycache__" not in p.parts}

    before = files()
    yield
    assert files() - before == set()


def test_builddaily_indexes_the_docs_and_reranks(tmp_path: Path) -> None:
    report = run_json("builddaily_docs.py", "--index-dir", tmp_path)
    assert report["index"]["documents"]["added"] >= 5
    assert len(report["questions"]) == 3
    assert report["llm"] == "stand-in (no llm section)"  # the offline config has no llm section
    docs = {p.name for p in (ROOT / "docs").glob("*.md")}
    for q in report["questions"]:
        assert q["answer"].startswith("[stand-in LLM: the config has no llm section]")
        assert len(q["results"]) == 3  # reranker.top_n
        for r in q["results"]:
            assert r["doc_id"] in docs
            assert r["rerank_score"] is not None and r["retrieval_score"] is not None
            # The offline reranker is a stand-in: retrieval order and score are kept.
            assert r["rerank_stand_in"] is True and r["score"] == r["retrieval_score"]
        scores = [r["retrieval_score"] for r in q["results"]]
        assert scores == sorted(scores, reverse=True)
    assert (tmp_path / "builddaily-minilm" / "CURRENT").exists()

    # In the terminal: a streamed chat, each answer labelled, its sources after it.
    text = run_script("builddaily_docs.py", "--index-dir", tmp_path, "what is a manifest?")
    lines = text.stdout.splitlines()
    assert lines[0].startswith("index: 0 added") and lines[1] == "llm: stand-in (no llm section)"
    assert lines[3] == "you> what is a manifest?"
    assert lines[4].startswith("assistant> [stand-in LLM: the config has no llm section]")
    assert lines[5].startswith("sources (kept in retrieval order")
    assert len(lines) == 9


def test_builddaily_chats_through_ollama_when_it_answers(
    tmp_path: Path, ollama_server: FakeOllama
) -> None:
    config = yaml.safe_load((EXAMPLES / "configs" / "builddaily.offline.yaml").read_text())
    config["sources"][0]["path"] = str(ROOT / "docs")
    config["sources"][0]["glob"] = "index.md"  # one page: quick to embed
    config["llm"] = {"provider": "ollama", "model": "llama3.2", "base_url": ollama_server.url}
    path = tmp_path / "builddaily.yaml"
    path.write_text(yaml.safe_dump(config))
    q1, q2 = "what do the docs test?", "and the examples?"
    report = run_json("builddaily_docs.py", "--config", path, "--index-dir", tmp_path, q1, q2)
    assert report["llm"] == "ollama llama3.2"
    # The stand-in Ollama echoes the last user message when it holds no "[1] " source line.
    assert [q["answer"] for q in report["questions"]] == [f"You said: {q}" for q in (q1, q2)]
    assert all(len(q["results"]) == 3 for q in report["questions"])
    chat = [r.body for r in ollama_server.requests_to("/api/chat")]
    # condense_plus_context: the first turn answers; the follow-up is condensed, then answered.
    assert len(chat) == 3
    condense = chat[1]["messages"][-1]["content"]
    assert q1 in condense and q2 in condense and "standalone question" in condense.lower()
    assert [m["content"] for m in chat[2]["messages"][1:]] == [q1, f"You said: {q1}", q2]

    ollama_server.reset()
    config["llm"]["base_url"] = f"http://127.0.0.1:{closed_port()}"
    path.write_text(yaml.safe_dump(config))
    text = run_script("builddaily_docs.py", "--config", path, "--index-dir", tmp_path, q1).stdout
    assert f"llm: stand-in (no Ollama at {config['llm']['base_url']})" in text
    assert "assistant> [stand-in LLM: no Ollama reachable at http://127.0.0.1:" in text


def test_paiddaily_filters_by_ticker_and_date_then_reranks(tmp_path: Path) -> None:
    report = run_json("paiddaily_catalysts.py", "--index-dir", tmp_path)
    assert report["index"]["documents"]["added"] == 300
    results = report["results"]
    assert len(results) == 5  # top 20 filtered candidates, reranked to top_n
    for r in results:
        assert r["metadata"]["ticker"] == "PENDLE"
        assert r["metadata"]["date"] < "2026-01-01"
        assert r["rerank_score"] is not None and r["rerank_stand_in"] is True
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)  # retrieval order, not the stand-in's noise
    assert report["median_move_pct"] is not None

    text = run_script(
        "paiddaily_catalysts.py",
        "--index-dir",
        tmp_path,
        "--ticker",
        "SOL",
        "--before",
        "2025-01-01",
    ).stdout
    assert "0 chunks embedded" in text  # the index from the first run is reused
    assert "precedents for SOL before 2025-01-01" in text
    assert "kept in retrieval order: the offline reranker is a stand-in" in text
    assert "reranked" not in text


def test_sagedaily_second_run_embeds_nothing(tmp_path: Path) -> None:
    first = run_json("sagedaily_canon.py", "--index-dir", tmp_path)
    assert first["chunks_embedded"] > 0
    assert first["index"]["documents"]["added"] == 15
    assert len(first["readings"]) == 5
    assert first["readings"][0]["results"][0]["doc_id"] == "01-on-attention.md"

    second = run_script("sagedaily_canon.py", "--index-dir", tmp_path).stdout
    line = second.splitlines()[0]
    assert line.startswith("index: 0 added, 0 updated, 15 unchanged")
    assert re.search(r"; 0 chunks embedded in [\d.]+s \(the persisted index was reused\)$", line)
    assert line.count("chunks embedded") == 1  # said once (issue 24)
    assert "warm-up:" in second


# -- notebook --------------------------------------------------------------------------------------


def test_prototype_notebook_executes(monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(EXAMPLES / "prototype.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    # "python3" is ipykernel's own kernel spec: jupyter_client runs it with this interpreter.
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", {}) for o in outputs] + [o.get("text", "") for o in outputs])
    assert "50 added" in text
    assert "IProgress not found" not in text and "TqdmWarning" not in text  # issue 24
    assert "hybrid-rrf" in text  # the table has the expected top document
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the score plot
    streamed = "".join(o.get("text", "") for o in outputs)  # the tokens, flushed one by one
    assert "[stand-in LLM: offline notebook, no LLM]" in streamed  # as_query_engine(streaming)
