"""`gl-retrieval eval` and evaluate_pipeline on a small slice of a shared BEIR dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gl_retrieval.cli import app
from gl_retrieval.config import RerankerConfig, RetrieverConfig
from gl_retrieval.errors import ConfigError
from gl_retrieval.eval.metrics import load_beir
from gl_retrieval.eval.runner import evaluate_pipeline, parse_modes
from tests.conftest import MINILM, SMALL_CORPUS, shared_dataset, write_corpus

SLICE_DOCS = 150


def _slice(src: Path, dst: Path, *, n_docs: int, split: str = "test") -> Path:
    """The first n_docs of a BEIR dataset, with the queries whose judged docs are in it."""
    dst.joinpath("qrels").mkdir(parents=True)
    lines = src.joinpath("corpus.jsonl").read_text(encoding="utf-8").splitlines()[:n_docs]
    ids = {json.loads(line)["_id"] for line in lines}
    dst.joinpath("corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    header, *rows = src.joinpath("qrels", f"{split}.tsv").read_text().splitlines()
    kept = [r for r in rows if r.split("\t")[1] in ids]
    dst.joinpath("qrels", f"{split}.tsv").write_text("\n".join([header, *kept]) + "\n")
    qids = {r.split("\t")[0] for r in kept}
    queries = [
        q
        for q in src.joinpath("queries.jsonl").read_text(encoding="utf-8").splitlines()
        if q.strip() and json.loads(q)["_id"] in qids
    ]
    dst.joinpath("queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def cranfield_slice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = _slice(shared_dataset("cranfield"), root / "cranfield", n_docs=SLICE_DOCS)
    cfg = root / "eval.yaml"
    cfg.write_text(
        f'embedder: {{model: "{MINILM}"}}\nstorage: {{persist_dir: index}}\n'
        "retriever: {mode: dense}\n",
        encoding="utf-8",
    )
    return {"data": data, "config": cfg}


def _judged_queries(data: Path) -> int:
    qrels = load_beir(data, gains="auto").qrels
    return sum(1 for judged in qrels.values() if any(g > 0 for g in judged.values()))


def test_eval_json_on_a_cranfield_slice(cranfield_slice: dict[str, Path]) -> None:
    runner = CliRunner()
    args = ["eval", str(cranfield_slice["config"]), "--dataset", str(cranfield_slice["data"])]
    result = runner.invoke(app, [*args, "--json", "--latency-queries", "5"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout is pure JSON; progress went to stderr
    assert {"dataset", "split", "queries", "metrics", "latency_ms"} <= set(data)
    assert data["dataset"] == "cranfield" and data["split"] == "test"
    assert data["queries"] == _judged_queries(cranfield_slice["data"]) > 20
    assert set(data["metrics"]) == {"nDCG@10", "MRR@10", "Recall@10", "Recall@100"}
    assert all(0.0 <= v <= 1.0 for v in data["metrics"].values())
    assert data["metrics"]["nDCG@10"] > 0.3  # a sane dense pipeline on an easy slice
    assert data["metrics"]["Recall@100"] >= data["metrics"]["Recall@10"]
    assert set(data["latency_ms"]) == {"p50", "p95"}
    assert 0 < data["latency_ms"]["p50"] <= data["latency_ms"]["p95"]
    assert data["mode"] == "dense" and data["top_k"] == 100
    assert "cranfield preset applied automatically" in data["gains"]
    assert any("top_k=100" in n and "config says 20" in n for n in data["notes"])
    assert data["index"]["documents"]["added"] == SLICE_DOCS
    assert "embedded" in result.stderr


def test_eval_modes_reuse_the_index_and_write_a_report(
    cranfield_slice: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gl_retrieval.embedders.base import GLEmbedding

    calls: list[int] = []
    original = GLEmbedding.embed_queries

    def spy(self: GLEmbedding, texts: Any) -> Any:
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(GLEmbedding, "embed_queries", spy)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(cranfield_slice["config"]),
            "--dataset",
            str(cranfield_slice["data"]),
            "--modes",
            "dense,bm25,hybrid:rrf,hybrid:convex",
            "--latency-queries",
            "3",
            "--report",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["index"]["chunks_embedded"] == 0  # the stored index already holds the corpus
    assert [r["name"] for r in data["runs"]] == ["dense", "bm25", "hybrid:rrf", "hybrid:convex"]
    assert data["metrics"] == data["runs"][0]["metrics"]
    n = data["queries"]
    assert calls[0] == n - 3  # the untimed queries in one batch; then one per timed query
    assert calls[1:] == [1] * 3 * 3  # 3 timed queries x the 3 modes that embed (not bm25)
    md = (out / "report.md").read_text()
    assert "| dense |" in md and "| hybrid:convex |" in md and "nDCG@10" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["runs"][1]["mode"] == "bm25"


def test_eval_refuses_an_index_that_holds_other_documents(
    cranfield_slice: dict[str, Path], tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "app.jsonl", SMALL_CORPUS)
    cfg = tmp_path / "app.yaml"
    cfg.write_text(
        f'embedder: {{model: "{MINILM}"}}\nstorage: {{persist_dir: index}}\n'
        f"sources: [{{path: {corpus}}}]\n"
    )
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(cfg)]).exit_code == 0
    result = runner.invoke(app, ["eval", str(cfg), "--dataset", str(cranfield_slice["data"])])
    assert result.exit_code == 2
    assert "holds 5 documents that are not in" in result.stderr
    assert "dedicated directory" in result.stderr


def test_eval_errors_are_one_line(cranfield_slice: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["eval", str(cranfield_slice["config"]), "--dataset"]
    bad_mode = runner.invoke(app, [*base, str(cranfield_slice["data"]), "--modes", "sparse"])
    assert bad_mode.exit_code == 2
    assert "unknown mode 'sparse'" in bad_mode.stderr
    bad_split = runner.invoke(app, [*base, str(cranfield_slice["data"]), "--split", "dev"])
    assert bad_split.exit_code == 2 and "available splits: test" in bad_split.stderr
    missing = runner.invoke(app, [*base, str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr  # bad input, like a split
    for r in (bad_mode, bad_split, missing):
        assert "Traceback" not in r.output


def test_evaluate_pipeline_python_api(cranfield_slice: dict[str, Path]) -> None:
    from gl_retrieval.config import load_config

    cfg = load_config(cranfield_slice["config"])
    report = evaluate_pipeline(
        cfg, cranfield_slice["data"], modes=["bm25"], top_k=50, latency_queries=2
    )
    assert report.top_k == 50 and report.primary.name == "bm25"
    assert max(report.primary.recall_curve) == 50
    assert not any("config says" in n for n in report.notes)


def test_parse_modes() -> None:
    base = RetrieverConfig(mode="hybrid", fusion="convex", alpha=0.3)
    assert [n for n, _ in parse_modes(None, base)] == ["hybrid:convex"]
    named = dict(parse_modes("dense, hybrid:rrf,hybrid", base))
    assert list(named) == ["dense", "hybrid:rrf", "hybrid:convex"]
    assert named["hybrid:rrf"].fusion == "rrf" and named["hybrid:convex"].alpha == 0.3
    with pytest.raises(ConfigError, match="unknown mode"):
        parse_modes(["colbert"], base)


def test_eval_reports_retrieval_and_rerank_stages(cranfield_slice: dict[str, Path]) -> None:
    from gl_retrieval.config import load_config
    from gl_retrieval.pipeline import RetrievalPipeline
    from gl_retrieval.retrieval.rerankers import build_reranker

    cfg = load_config(cranfield_slice["config"]).model_copy(update={"reranker": RerankerConfig()})
    assert cfg.reranker is not None

    def reverse_scorer(query: str, passages: list[str]) -> list[float]:
        return [float(i) for i in range(len(passages))]  # reverses the first stage's order

    pipe = RetrievalPipeline(cfg, reranker=build_reranker(cfg.reranker, scorer=reverse_scorer))
    report = evaluate_pipeline(pipe, cranfield_slice["data"], top_k=20, latency_queries=2)
    assert [r.name for r in report.runs] == ["dense", "dense + rerank"]
    first, reranked = report.runs
    assert report.primary is reranked and reranked.stage == "rerank"
    # The reranker reorders all 20 candidates: same recall at 20, worse top of the list.
    assert reranked.recall_curve[20] == pytest.approx(first.recall_curve[20])
    assert reranked.metrics["nDCG@10"] < first.metrics["nDCG@10"]
    assert reranked.latency_ms["p50"] >= first.latency_ms["p50"]
    assert "| dense + rerank |" in report.markdown()


def test_eval_json_reports_each_stage_cost_and_the_report_sets_them_side_by_side(
    cranfield_slice: dict[str, Path], tiny_cross_encoder: Path, tmp_path: Path
) -> None:
    """Per-stage latency and process CPU per query, from the same TwoStage.run calls that
    produce the rankings; the real cross-encoder path (a tiny random model), stdout pure JSON."""
    cfg = tmp_path / "rerank.yaml"
    cfg.write_text(
        f'embedder: {{model: "{MINILM}"}}\n'
        f"storage: {{persist_dir: {cranfield_slice['config'].parent / 'index'}}}\n"
        f'reranker: {{model: "{tiny_cross_encoder}", backend: torch, top_n: 5}}\n',
        encoding="utf-8",
    )
    out = tmp_path / "report"
    args = ["eval", str(cfg), "--dataset", str(cranfield_slice["data"]), "--top-k", "20"]
    result = CliRunner().invoke(
        app, [*args, "--latency-queries", "4", "--report", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but the JSON on stdout
    first, reranked = data["runs"]
    assert (first["stage"], reranked["stage"]) == ("retrieval", "rerank")
    for run in (first, reranked):
        assert set(run["stage_cpu_ms"]) == {"mean", "p50", "p95"}
        assert set(run["stage_latency_ms"]) == {"p50", "p95"}
        assert all(v >= 0 for v in run["stage_cpu_ms"].values())
        assert 0 < run["stage_latency_ms"]["p50"] <= run["stage_latency_ms"]["p95"]
    # The first stage alone is the retrieval run's whole path; the rerank run's path adds
    # the cross-encoder, which has 20 pairs a query to score.
    assert first["stage_latency_ms"] == first["latency_ms"]
    assert reranked["latency_ms"]["p50"] >= reranked["stage_latency_ms"]["p50"]
    assert reranked["stage_cpu_ms"]["mean"] > 0
    assert any("process CPU time" in n for n in data["notes"])
    md = (out / "report.md").read_text()
    assert "Stages side by side" in md
    side = md.split("Stages side by side")[1]
    assert f"| {first['name']} |" in side and "nDCG@10 first" in side
    assert "rerank CPU ms/q" in side
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("GL_QUALITY_BAR"),
    reason="embeds all of Cranfield (2-5 min on 2 cores): set GL_QUALITY_BAR=1 to run",
)
def test_quality_bar_on_full_cranfield(tmp_path: Path) -> None:
    """Plumbing and the quality bar on a whole dataset: dense MiniLM lands on the reference
    nDCG@10 (0.382, measured outside this library) and default hybrid beats dense and BM25."""
    data = shared_dataset("cranfield")
    cfg = {"embedder": {"model": MINILM}, "storage": {"persist_dir": str(tmp_path / "index")}}
    report = evaluate_pipeline(cfg, data, modes="dense,bm25,hybrid", latency_queries=1)
    ndcg = {r.name: r.metrics["nDCG@10"] for r in report.runs}
    assert ndcg["dense"] == pytest.approx(0.382, abs=0.01)
    assert ndcg["hybrid:convex"] > max(ndcg["dense"], ndcg["bm25"]) + 0.02
