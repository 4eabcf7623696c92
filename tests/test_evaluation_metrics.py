"""Evaluation core: metrics against pytrec_eval and by hand, BEIR loading, gain presets."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest

from gl_retrieval.errors import ConfigError, SourceError
from gl_retrieval.eval.metrics import (
    GAIN_PRESETS,
    doc_level_ranking,
    evaluate,
    evaluate_per_query,
    gains_for_dataset,
    iter_corpus,
    latency_percentiles,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    run_from_scores,
    run_to_scores,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

# ../shared/data from the project root; GL_SHARED_DATA points elsewhere (e.g. from a git worktree).
SHARED_DATA = Path(
    os.environ.get("GL_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)
PYTREC_MEASURES = {"ndcg_cut_10", "recall_10", "recall_100"}
OURS_TO_TREC = {"nDCG@10": "ndcg_cut_10", "Recall@10": "recall_10", "Recall@100": "recall_100"}

# Graded judgments (0 = judged not relevant); "u*" documents are unjudged.
QRELS: dict[str, dict[str, int]] = {
    "q1": {"d1": 3, "d2": 2, "d3": 1, "d4": 0, "d9": 2},  # d9 relevant, never retrieved
    "q2": {"d5": 1, "d6": 1, "d7": 0},  # d6 only found at rank 50
    "q3": {"d8": 2, "d10": 0},  # nothing relevant retrieved
    "q4": {"d4": 0, "d11": 0},  # no positive judgment: skipped by us
    "q5": {"d1": 1},  # absent from the run: scores 0
}
RUN: dict[str, list[str]] = {
    "q1": ["d2", "u1", "d1", "d4", "d3", "u2"],
    "q2": ["u3", "d5", "d7", *(f"u{i}" for i in range(100, 147)), "d6", "u200"],
    "q3": ["d10", "u4", "u5"],
    "q4": ["d4", "d11"],
    "q_unjudged": ["d1"],  # not in qrels: ignored
}


def _pytrec(qrels: dict[str, dict[str, int]], run: dict[str, list[str]]) -> dict[str, dict]:
    """pytrec_eval on the same run; recip_rank on the run cut to the top 10."""
    scores = run_to_scores(run)
    full = pytrec_eval.RelevanceEvaluator(qrels, PYTREC_MEASURES).evaluate(scores)
    top10 = run_to_scores({q: r[:10] for q, r in run.items()})
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    for qid, values in full.items():
        values["recip_rank"] = rr[qid]["recip_rank"]
    return full


def _compare_with_pytrec(qrels: dict[str, dict[str, int]], run: dict[str, list[str]]) -> int:
    ours = evaluate_per_query(run, qrels)
    theirs = _pytrec(qrels, run)
    compared = 0
    for qid, values in theirs.items():
        if qid not in ours:  # pytrec_eval scores a query without positives as 0
            assert not any(g > 0 for g in qrels[qid].values())
            assert all(v == 0 for v in values.values())
            continue
        for name, trec_name in OURS_TO_TREC.items():
            assert ours[qid][name] == pytest.approx(values[trec_name], abs=1e-12), (qid, name)
        assert ours[qid]["MRR@10"] == pytest.approx(values["recip_rank"], abs=1e-12), qid
        compared += 1
    return compared


def test_graded_case_matches_pytrec_eval() -> None:
    assert _compare_with_pytrec(QRELS, RUN) == 3


def test_graded_case_matches_hand_computed_values() -> None:
    per_query = evaluate_per_query(RUN, QRELS)
    assert set(per_query) == {"q1", "q2", "q3", "q5"}

    # q1 ranks d2 (2), u1, d1 (3), d4 (0), d3 (1); ideal order 3, 2, 2, 1.
    dcg = 2 / math.log2(2) + 3 / math.log2(4) + 1 / math.log2(6)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 2 / math.log2(4) + 1 / math.log2(5)
    assert per_query["q1"]["nDCG@10"] == pytest.approx(dcg / idcg)
    assert per_query["q1"]["nDCG@10"] == pytest.approx(0.682798, abs=1e-6)
    assert per_query["q1"]["MRR@10"] == 1.0
    assert per_query["q1"]["Recall@10"] == 0.75  # d9 never retrieved
    assert per_query["q2"]["MRR@10"] == 0.5
    assert per_query["q2"]["Recall@10"] == 0.5
    assert per_query["q2"]["Recall@100"] == 1.0
    assert per_query["q3"] == dict.fromkeys(per_query["q3"], 0.0)
    assert per_query["q5"] == dict.fromkeys(per_query["q5"], 0.0)

    means = evaluate(RUN, QRELS)
    assert means["MRR@10"] == pytest.approx((1.0 + 0.5) / 4)
    assert means["Recall@100"] == pytest.approx((0.75 + 1.0) / 4)
    assert means["nDCG@10"] == pytest.approx(sum(q["nDCG@10"] for q in per_query.values()) / 4)


def test_random_graded_runs_match_pytrec_eval() -> None:
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(300)]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, list[str]] = {}
    for q in range(40):
        judged = rng.sample(docs, rng.randint(1, 25))
        qrels[f"q{q}"] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
        if q % 9 != 0:
            run[f"q{q}"] = rng.sample(docs, rng.randint(0, 150))
    assert _compare_with_pytrec(qrels, run) > 25


def test_negative_scores_are_not_relevant_as_in_trec_eval() -> None:
    qrels = {"q1": {"a": 2, "b": -1, "c": 1}}
    run = {"q1": ["b", "c", "a"]}
    assert _compare_with_pytrec(qrels, run) == 1
    assert mrr_at_k(run["q1"], qrels["q1"], k=10) == 0.5


def test_run_from_scores_breaks_ties_like_trec_eval() -> None:
    scores = {"q1": {"a": 1.0, "b": 1.0, "c": 1.0, "z": 0.5}}
    assert run_from_scores(scores) == {"q1": ["c", "b", "a", "z"]}
    assert run_from_scores(scores, k=2) == {"q1": ["c", "b"]}
    qrels = {"q1": {"a": 1}}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(scores)
    ours = evaluate(run_from_scores(scores), qrels, metrics=("MRR@100",))
    assert ours["MRR@100"] == pytest.approx(theirs["q1"]["recip_rank"]) == pytest.approx(1 / 3)


def test_metric_functions_and_errors() -> None:
    assert ndcg_at_k([], {"a": 1}) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}) == 0.0
    assert recall_at_k(["a"], {}) == 0.0
    assert evaluate({"q": ["a"]}, {"q": {"a": 1}}, metrics=("ndcg@1", "RECALL@5")) == {
        "ndcg@1": 1.0,
        "RECALL@5": 1.0,
    }
    with pytest.raises(ConfigError, match="unknown metric 'MAP@10'"):
        evaluate(RUN, QRELS, metrics=("MAP@10",))
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        ndcg_at_k(["a"], {"a": 1}, k=0)
    with pytest.raises(ConfigError, match="appears twice"):
        evaluate({"q1": ["d1", "d1"]}, QRELS)
    with pytest.raises(ConfigError, match="run_from_scores"):
        evaluate({"q1": {"d1": 1.0}}, QRELS)  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate(RUN, {"q4": QRELS["q4"]})


def test_doc_level_ranking_keeps_best_chunk_rank() -> None:
    hits = [("b", 0.91), ("a", 0.90), ("b", 0.80), ("c", None), ("a", 0.10), ("d", 0.05)]
    assert doc_level_ranking(hits) == ["b", "a", "c", "d"]
    assert doc_level_ranking([]) == []


def test_latency_percentiles() -> None:
    assert latency_percentiles([10.0, 20.0, 30.0, 40.0, 50.0]) == {"p50": 30.0, "p95": 48.0}
    assert latency_percentiles(iter([7.0])) == {"p50": 7.0, "p95": 7.0}
    with pytest.raises(ConfigError, match="at least one sample"):
        latency_percentiles([])
    with pytest.raises(ConfigError, match="finite"):
        latency_percentiles([1.0, float("nan")])


# -- BEIR loading ------------------------------------------------------------------------------


def _write_beir(root: Path, qrels_rows: list[tuple[str, str, int]], split: str = "test") -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Chunking", "text": "Split documents into passages."},
        {"_id": "d2", "title": "BM25", "text": "A lexical ranking function."},
        {"_id": 3, "text": "Untitled document with an integer id."},
    ]
    queries = [
        {"_id": "q1", "text": "how to chunk"},
        {"_id": "q2", "text": "lexical ranking"},
        {"_id": "q3", "text": "never judged"},
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    lines = ["query-id\tcorpus-id\tscore", *("\t".join(map(str, r)) for r in qrels_rows)]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_load_beir_tiny_dataset(tmp_path: Path) -> None:
    root = _write_beir(tmp_path / "tiny", [("q1", "d1", 1), ("q1", "d2", 0), ("q2", "d2", 2)])
    ds = load_beir(root)
    assert ds.name == "tiny"
    assert ds.split == "test"
    assert ds.queries == {"q1": "how to chunk", "q2": "lexical ranking"}
    assert ds.qrels == {"q1": {"d1": 1.0, "d2": 0.0}, "q2": {"d2": 2.0}}
    assert ds.gains is None
    docs = ds.iter_corpus()
    assert iter(docs) is docs  # lazy
    first = next(docs)
    assert (first.doc_id, first.title) == ("d1", "Chunking")
    rest = list(docs)
    assert [d.doc_id for d in rest] == ["d2", "3"]
    assert rest[1].title == ""
    assert [d.doc_id for d in iter_corpus(root / "corpus.jsonl")] == ["d1", "d2", "3"]


def test_load_beir_errors(tmp_path: Path) -> None:
    root = _write_beir(tmp_path / "tiny", [("q1", "d1", 1)], split="dev")
    with pytest.raises(ConfigError, match=r"split 'test' not found.*test\.tsv.*splits: dev"):
        load_beir(root)
    with pytest.raises(SourceError, match="does not exist"):
        load_beir(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown gains 'bogus'"):
        load_beir(root, split="dev", gains="bogus")
    (root / "queries.jsonl").unlink()
    with pytest.raises(SourceError, match=r"has no queries\.jsonl"):
        load_beir(root, split="dev")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "ok"}\n{not json\n')
    docs = iter_corpus(bad)
    next(docs)
    with pytest.raises(SourceError, match=r"bad\.jsonl:2: not valid JSON"):
        next(docs)
    with pytest.raises(SourceError, match="does not exist"):
        iter_corpus(tmp_path / "missing.jsonl")


def test_load_beir_rejects_judged_queries_missing_from_queries_file(tmp_path: Path) -> None:
    root = _write_beir(tmp_path / "tiny", [("q1", "d1", 1), ("q9", "d1", 1)])
    with pytest.raises(SourceError, match=r"missing from .*queries\.jsonl: q9"):
        load_beir(root)


def test_cranfield_gain_preset(tmp_path: Path) -> None:
    rows = [("q1", "d1", 1), ("q1", "d2", 4), ("q1", "d3", -1), ("q2", "d2", 3), ("q2", "d1", 2)]
    root = _write_beir(tmp_path / "Cranfield", rows)
    assert gains_for_dataset(root) is GAIN_PRESETS["cranfield"]
    assert gains_for_dataset("scifact") is None
    assert dict(GAIN_PRESETS["cranfield"]) == {1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0, -1: 0.0}

    ds = load_beir(root, gains="auto")
    assert ds.qrels == {"q1": {"d1": 4.0, "d2": 1.0, "d3": 0.0}, "q2": {"d2": 2.0, "d1": 3.0}}
    assert load_beir(root, gains="cranfield").qrels == ds.qrels
    assert load_beir(root, gains={1: 1, 2: 1, 3: 1, 4: 1, -1: 0}).qrels["q1"]["d2"] == 1.0
    # Under the preset the code-1 document ranks first; under raw codes it would rank last.
    assert ndcg_at_k(["d1", "d2"], ds.qrels["q1"]) == 1.0
    assert ndcg_at_k(["d1", "d2"], load_beir(root, gains="raw").qrels["q1"]) < 0.77

    with pytest.warns(UserWarning, match="gains='auto'"):
        raw = load_beir(root)
    assert raw.qrels["q1"] == {"d1": 1.0, "d2": 4.0, "d3": -1.0}
    assert load_beir(root, gains="raw").qrels == raw.qrels
    with pytest.raises(ConfigError, match=r"score -1 has no entry in the gain table"):
        load_beir(root, gains={1: 4, 2: 3, 3: 2, 4: 1})

    plain = _write_beir(tmp_path / "other", [("q1", "d1", 2)])
    assert load_beir(plain, gains="auto").gains is None


@pytest.mark.parametrize(
    ("name", "split", "judged"),
    [("cranfield", "test", 225), ("cisi", "test", 76), ("scifact", "train", 809)],
)
def test_shared_beir_datasets(name: str, split: str, judged: int) -> None:
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} is not present")
    ds = load_beir(root, split=split, gains="auto")
    assert len(ds.queries) == len(ds.qrels) == judged
    assert ds.name == name
    # A perfect run (judged documents by gain) scores 1 on every metric that can reach 1.
    perfect = run_from_scores(ds.qrels)
    scores = evaluate(perfect, ds.qrels, metrics=("nDCG@10", "MRR@10"))
    assert scores == {"nDCG@10": pytest.approx(1.0), "MRR@10": 1.0}
    if name == "cranfield":
        assert ds.gains is GAIN_PRESETS["cranfield"]
        assert {g for judged_docs in ds.qrels.values() for g in judged_docs.values()} == {
            0.0,
            1.0,
            2.0,
            3.0,
            4.0,
        }
        assert sum(1 for _ in ds.iter_corpus()) == 1400
