"""A newcomer's first hour (issue 14): what they run first must work, and say what it shows.

- every offline example config runs under the CLI from a fresh copy of the repository;
- the offline reranker is a labelled stand-in that keeps the retrieval order;
- a retrieval-only query engine's response prints its sources, with scores;
- scores are labelled; dict configs say where relative paths resolve (and take ``base_dir``);
- progress shows where someone is watching, and model loads print no bars.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from llama_index.core.schema import NodeWithScore, TextNode
from typer.testing import CliRunner

from gl_retrieval import RetrievalPipeline
from gl_retrieval.cli import app
from gl_retrieval.config import RerankerConfig
from gl_retrieval.errors import ConfigError
from gl_retrieval.retrieval.rerankers import build_reranker
from gl_retrieval.retrieval.results import SCORE_KINDS, RankedNode, format_results
from tests.conftest import ROOT

STAND_IN = "packaged:stand-in-cross-encoder"
runner = CliRunner()


@pytest.fixture(scope="module")
def stand_in_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the packaged stand-in is built for this module (never the user's cache)."""
    return tmp_path_factory.mktemp("gl-cache")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, stand_in_cache: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GL_RETRIEVAL_CACHE", str(stand_in_cache))


def _hits(n: int = 4) -> list[RankedNode]:
    return [
        RankedNode(
            node=TextNode(id_=f"n{i}", text=f"passage number {i} about apples"),
            score=1.0 - i / 10,
            retrieval_score=1.0 - i / 10,
            retrieval_kind="cosine",
        )
        for i in range(n)
    ]


# -- the packaged stand-in reranker ----------------------------------------------------------------


def test_the_stand_in_is_built_on_demand_and_marked(stand_in_cache: Path) -> None:
    from gl_retrieval.models import resolve_model_path
    from gl_retrieval.models.stand_in import is_stand_in

    path = Path(resolve_model_path(STAND_IN, role="reranker"))
    assert path.parent == stand_in_cache and (path / "config.json").exists()
    assert is_stand_in(path)
    assert resolve_model_path(STAND_IN, role="reranker") == str(path)  # built once, reused
    with pytest.raises(ConfigError, match="packaged for the reranker, not the embedder"):
        resolve_model_path(STAND_IN, role="embedder")
    with pytest.raises(ConfigError, match="packaged for the embedder, not the reranker"):
        resolve_model_path("packaged:all-MiniLM-L6-v2", role="reranker")


def test_a_stand_in_reranker_keeps_retrieval_order_and_says_so() -> None:
    rr = build_reranker(RerankerConfig(model=STAND_IN, top_n=3, device="cpu"))
    assert rr.stand_in
    out = rr.rerank(_hits(), "apples")
    assert [r.node.node_id for r in out] == ["n0", "n1", "n2"]
    for r in out:
        assert r.rerank_stand_in and isinstance(r.rerank_score, float)
        assert r.score == r.retrieval_score and r.score_kind == "cosine"
        assert r.to_dict()["rerank_stand_in"] is True
    lines = format_results(out)
    assert lines[0].startswith(" 1. cosine 1.0000  ")
    assert lines[-1].startswith("note: the reranker is a stand-in with random weights")


def test_a_real_or_injected_reranker_is_no_stand_in() -> None:
    def longest(_q: str, ps: Any) -> list[float]:
        return [float(len(p)) for p in ps]

    rr = build_reranker(RerankerConfig(model="unused", top_n=2), scorer=longest)
    assert not rr.stand_in
    out = rr.rerank(_hits(), "q")
    assert all(r.score_kind == "rerank" and not r.rerank_stand_in for r in out)
    assert "(cosine " in format_results(out)[0] and not format_results(out)[-1].startswith("note")


# -- query engine, labels, base_dir ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pipe(tmp_path_factory: pytest.TempPathFactory) -> RetrievalPipeline:
    """One small hybrid index shared by the tests below (SMALL_CORPUS, packaged MiniLM)."""
    from tests.conftest import MINILM, SMALL_CORPUS, write_corpus

    root = tmp_path_factory.mktemp("small")
    corpus = write_corpus(root / "corpus.jsonl", SMALL_CORPUS)
    cfg = {
        "embedder": {"model": MINILM},
        "retriever": {"top_k": 5, "mode": "hybrid"},
        "storage": {"persist_dir": "index"},
        "sources": [{"path": corpus.name}],
        "chunking": {"chunk_size": 128, "chunk_overlap": 16},
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    pipe = RetrievalPipeline.from_config(cfg, base_dir=root)
    pipe.index(show_progress=False)
    return pipe


def test_a_retrieval_only_response_prints_its_sources(small_pipe: RetrievalPipeline) -> None:
    response = small_pipe.as_query_engine(top_n=2).query("lexical term frequency ranking")
    text = str(response)
    assert text != "None" and response.response == text
    lines = text.splitlines()
    assert lines[0] == "Retrieval only (the config has no llm section): 2 sources, best first."
    assert lines[1].startswith(" 1. hybrid ") and "  bm25  " in lines[1]
    assert len(lines) == 3 and len(response.source_nodes) == 2
    assert response.metadata == {"retrieval_only": True}


def test_cli_query_labels_and_explains_the_scores(small_pipe: RetrievalPipeline) -> None:
    config = small_pipe.config.storage.persist_dir.parent / "pipeline.yaml"
    r = runner.invoke(app, ["query", str(config), "term frequency", "--top-n", "2"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith(" 1. hybrid ") and "bm25" in lines[0]
    assert f"score hybrid: {SCORE_KINDS['hybrid']}" in lines
    r = runner.invoke(app, ["query", str(config), "term frequency", "--json"])
    first = json.loads(r.stdout)["results"][0]
    assert (first["score_kind"], first["retrieval_kind"]) == ("hybrid", "hybrid")


def test_dict_configs_resolve_against_cwd_or_base_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {"storage": {"persist_dir": "idx"}, "sources": [{"path": "docs"}]}
    monkeypatch.chdir(tmp_path)
    here = RetrievalPipeline.from_config(cfg).config
    assert here.storage.persist_dir == tmp_path / "idx"
    there = RetrievalPipeline.from_config(cfg, base_dir=tmp_path / "app").config
    assert there.storage.persist_dir == tmp_path / "app" / "idx"
    assert there.sources[0].path == tmp_path / "app" / "docs"
    with pytest.raises(ConfigError, match="base_dir applies to a mapping config only"):
        RetrievalPipeline.from_config(ROOT / "examples" / "configs" / "demo.yaml", base_dir="/x")


# -- progress and quiet model loads ----------------------------------------------------------------


def test_progress_shows_where_someone_is_watching(monkeypatch: pytest.MonkeyPatch) -> None:
    import gl_retrieval._progress as progress

    assert progress.want_progress(False) is False and progress.want_progress(True) is True
    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    assert progress.want_progress(None) is False  # pytest captures stderr: nobody watches
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    assert progress.want_progress(None) is True


def test_model_loads_print_no_bars_and_restore_transformers_settings(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    from gl_retrieval.models.stand_in import make_tiny_cross_encoder
    from gl_retrieval.retrieval.rerankers import _load_cross_encoder

    before = (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity())
    path = make_tiny_cross_encoder(tmp_path / "ce", stand_in=False)
    score = _load_cross_encoder(str(path), device="cpu", batch_size=4, max_length=64, revision=None)
    assert len(score("q", ["a", "b"])) == 2
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()) == before


# -- a fresh clone runs every offline example config through the CLI ----------------------------

OFFLINE_CONFIGS = sorted(
    p.name
    for p in (ROOT / "examples" / "configs").glob("*.yaml")
    if ".offline." in p.name or p.name == "demo.yaml"
)
QUERIES = {
    "builddaily.offline.yaml": "how do I run without internet?",
    "paiddaily.offline.yaml": "token unlock after a long base",
    "sagedaily.offline.yaml": "the value of quiet",
    "demo.yaml": "how do I combine keyword search with vector search?",
}


def _keep_lines(path: Path, n: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:n]), encoding="utf-8")


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the configs read, copied as a clone has it: no index, no reranker directory.

    The configs are copied unchanged; the data they read is cut to a few documents each (the
    three smallest docs pages, 40 catalysts, 4 essays, 15 demo notes), because what is under
    test is that the configs resolve and run under the CLI, and embedding the full corpora
    (about 600 chunks) would take minutes on a CI machine. test_examples.py runs the full ones.
    """
    root = tmp_path_factory.mktemp("clone")
    skip = shutil.ignore_patterns(".gl_index", "__pycache__", "*.pyc", ".ipynb_checkpoints")
    for part in ("examples", "docs", "gl_retrieval/data"):
        shutil.copytree(ROOT / part, root / part, ignore=skip)
    pages = sorted((root / "docs").glob("*.md"), key=lambda p: p.stat().st_size)
    for page in pages[3:]:
        page.unlink()
    for essay in sorted((root / "examples" / "data" / "canon").glob("*.md"))[4:]:
        essay.unlink()
    _keep_lines(root / "examples" / "data" / "catalysts.jsonl", 40)
    _keep_lines(root / "gl_retrieval" / "data" / "demo_corpus.jsonl", 15)
    return root


def test_every_offline_config_is_queried_here() -> None:
    assert set(OFFLINE_CONFIGS) == set(QUERIES)


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE_CONFIGS)
def test_offline_config_runs_under_the_cli_from_a_fresh_clone(
    fresh_clone: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fresh_clone)  # as a newcomer runs it: from the clone's root
    config = Path("examples") / "configs" / name
    r = runner.invoke(app, ["index", str(config), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["documents"]["added"] > 0

    r = runner.invoke(app, ["query", str(config), QUERIES[name], "--json"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert results
    has_reranker = yaml.safe_load(config.read_text()).get("reranker") is not None
    for hit in results:
        assert hit["score_kind"] in SCORE_KINDS
        assert hit["rerank_stand_in"] is has_reranker  # the offline rerankers are stand-ins
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)  # retrieval order, labelled as such

    r = runner.invoke(app, ["query", str(config), QUERIES[name]])
    assert r.exit_code == 0, r.output
    assert any(line.startswith("score ") for line in r.stdout.splitlines())
    assert ("note: the reranker is a stand-in" in r.stdout) is has_reranker
    labels = [m.group(1) for m in re.finditer(r"^ ?\d+\. (\S+) ", r.stdout, re.MULTILINE)]
    assert labels and "rerank" not in labels  # nothing is shown as a rerank score


def test_the_fresh_clone_configs_need_no_helper_directory(fresh_clone: Path) -> None:
    # The reranker is a packaged name the library resolves: no path inside the clone.
    for name in OFFLINE_CONFIGS:
        cfg = yaml.safe_load((fresh_clone / "examples" / "configs" / name).read_text())
        model = (cfg.get("reranker") or {}).get("model", STAND_IN)
        assert model == STAND_IN


def test_plain_node_with_score_formats_too() -> None:
    hit = NodeWithScore(node=TextNode(id_="x", text="hello"), score=0.5)
    assert format_results([hit]) == [" 1. score 0.5000  None  hello"]
