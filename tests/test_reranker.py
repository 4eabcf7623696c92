"""The cross-encoder stage: real loading path on a tiny model, ranking order on a fake scorer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from gl_retrieval import RetrievalPipeline
from gl_retrieval.config import RerankerConfig
from gl_retrieval.retrieval.rerankers import CrossEncoderReranker, build_reranker
from gl_retrieval.retrieval.results import RankedNode


def keyword_scorer(query: str, passages: Sequence[str]) -> list[float]:
    """Deterministic fake: the number of query words in the passage."""
    words = set(query.lower().split())
    return [float(sum(w in words for w in p.lower().split())) for p in passages]


def hits() -> list[NodeWithScore]:
    texts = ["apples and pears", "nothing relevant", "pears pears apples", "only apples"]
    return [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=1.0 - i / 10)
        for i, t in enumerate(texts)
    ]


def test_fake_scorer_orders_and_cuts_to_top_n() -> None:
    rr = CrossEncoderReranker(model="unused", top_n=2, scorer=keyword_scorer)
    out = rr.rerank(hits(), "apples pears")
    assert [r.node.node_id for r in out] == ["n2", "n0"]
    assert [r.rerank_score for r in out] == [3.0, 2.0]


def test_scores_are_kept_and_inputs_are_not_mutated() -> None:
    inputs = hits()
    before = [(h.node.node_id, h.score) for h in inputs]
    rr = CrossEncoderReranker(model="unused", top_n=4, scorer=keyword_scorer)
    out = rr.postprocess_nodes(inputs, query_bundle=QueryBundle("apples pears"))
    assert [(h.node.node_id, h.score) for h in inputs] == before
    assert all(isinstance(r, RankedNode) for r in out)
    by_id = {r.node.node_id: r for r in out}
    assert by_id["n2"].retrieval_score == pytest.approx(0.8)
    assert by_id["n2"].rerank_score == 3.0 and by_id["n2"].score == 3.0
    assert all(r not in inputs for r in out)


def test_first_stage_weight_blends_min_max_normalised_scores() -> None:
    """rerank 2,0,3,1 -> 2/3,0,1,1/3; retrieval 1.0..0.7 -> 1,2/3,1/3,0; w 0.5 -> n0 n2 n1 n3."""
    cfg = RerankerConfig(model="unused", top_n=4, first_stage_weight=0.5)
    out = build_reranker(cfg, scorer=keyword_scorer).rerank(hits(), "apples pears")
    assert [r.node.node_id for r in out] == ["n0", "n2", "n1", "n3"]
    assert [r.score for r in out] == pytest.approx([5 / 6, 2 / 3, 1 / 3, 1 / 6])
    assert [r.rerank_score for r in out] == [2.0, 3.0, 0.0, 1.0]  # the model's, unblended
    assert out[0].retrieval_score == pytest.approx(1.0) and out[0].score_kind == "rerank"
    plain = build_reranker(RerankerConfig(model="unused", top_n=4), scorer=keyword_scorer)
    plain_ids = [r.node.node_id for r in plain.rerank(hits(), "apples pears")]
    assert plain_ids == ["n2", "n0", "n3", "n1"]


def test_ties_keep_retrieval_order() -> None:
    rr = CrossEncoderReranker(model="unused", top_n=4, scorer=lambda q, ps: [0.0] * len(ps))
    assert [r.node.node_id for r in rr.rerank(hits(), "q")] == ["n0", "n1", "n2", "n3"]


def test_real_cross_encoder_loading_path(tiny_cross_encoder: Path) -> None:
    rr = build_reranker(RerankerConfig(model=str(tiny_cross_encoder), top_n=3, device="cpu"))
    rr.warmup()
    out = rr.rerank(hits(), "apples")
    assert len(out) == 3
    assert all(isinstance(r.rerank_score, float) for r in out)
    assert [r.rerank_score for r in out] == sorted((r.rerank_score for r in out), reverse=True)


def test_pipeline_with_reranker_keeps_both_scores(
    small_config: dict[str, Any], tiny_cross_encoder: Path
) -> None:
    cfg = {**small_config, "reranker": {"model": str(tiny_cross_encoder), "top_n": 2}}
    pipe = RetrievalPipeline.from_config(cfg)
    pipe.index()
    pipe.warmup()
    out = pipe.retrieve("cosine similarity of vectors")
    assert len(out) == 2
    for r in out:
        assert r.rerank_score is not None and r.retrieval_score is not None
        assert r.score == r.rerank_score
        assert r.to_dict()["retrieval_score"] == r.retrieval_score


def test_pipeline_reranks_with_injected_scorer(small_config: dict[str, Any]) -> None:
    cfg = {**small_config, "reranker": {"model": "unused", "top_n": 3}}
    rr = build_reranker(RerankerConfig(model="unused", top_n=3), scorer=keyword_scorer)
    pipe = RetrievalPipeline.from_config(cfg, reranker=rr)
    pipe.index()
    out = pipe.retrieve("pgvector postgresql hnsw indexes")
    assert out[0].doc_id == "pg"
    assert len(pipe.retrieve("pgvector", top_n=1)) == 1


def test_a_classifier_with_several_labels_is_refused(tmp_path: Path) -> None:
    from gl_retrieval.errors import ModelLoadError
    from gl_retrieval.models.stand_in import make_tiny_cross_encoder

    model = make_tiny_cross_encoder(tmp_path / "three-labels", num_labels=3)
    rr = build_reranker(RerankerConfig(model=str(model), top_n=1, device="cpu"))
    with pytest.raises(ModelLoadError, match="3 output labels"):
        rr.warmup()
