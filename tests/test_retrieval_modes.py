"""BM25 and hybrid retrieval: fusion math, the analyser, persistence and incremental sync."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from llama_index.core.schema import TextNode

from gl_retrieval import ConfigError, RetrievalPipeline
from gl_retrieval.config import RetrieverConfig
from gl_retrieval.retrieval.lexical import LexicalIndex, analyze, iter_chunks
from gl_retrieval.retrieval.retrievers import (
    convex_fuse,
    fuse_hits,
    normalize_scores,
    rrf_fuse,
)
from tests.conftest import SMALL_CORPUS, write_corpus

# -- fusion math on hand-made score lists -----------------------------------------------------


def test_rrf_on_hand_made_lists() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    lexical = [("c", 20.0), ("a", 5.0)]
    fused = dict(rrf_fuse([dense, lexical], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert [i for i, _ in rrf_fuse([dense, lexical], k=60)] == ["a", "c", "b"]
    weighted = dict(rrf_fuse([dense, lexical], k=1, weights=[2.0, 1.0]))
    assert weighted["c"] == pytest.approx(2 / 4 + 1 / 2)
    # Scores are ignored: only ranks matter.
    assert rrf_fuse([[("x", -5.0), ("y", -9.0)]], k=10) == [("x", 1 / 11), ("y", 1 / 12)]


def test_rrf_ties_keep_first_appearance_order() -> None:
    assert [i for i, _ in rrf_fuse([[("a", 1.0)], [("b", 1.0)]], k=60)] == ["a", "b"]


def test_rrf_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="rrf k must be > 0"):
        rrf_fuse([[("a", 1.0)]], k=0)
    with pytest.raises(ConfigError, match="2 weights for 1 rankings"):
        rrf_fuse([[("a", 1.0)]], weights=[1.0, 2.0])


def test_normalize_scores() -> None:
    assert normalize_scores(np.array([2.0, 4.0, 3.0]), "minmax").tolist() == [0.0, 1.0, 0.5]
    assert normalize_scores(np.array([3.0, 3.0]), "minmax").tolist() == [1.0, 1.0]
    z = normalize_scores(np.array([1.0, 2.0, 3.0]), "zscore")
    assert z.mean() == pytest.approx(0.0) and z.std() == pytest.approx(1.0)
    assert normalize_scores(np.array([7.0, 7.0]), "zscore").tolist() == [0.0, 0.0]
    assert normalize_scores(np.array([]), "minmax").size == 0
    with pytest.raises(ConfigError, match="unknown normalization"):
        normalize_scores(np.array([1.0]), "softmax")  # type: ignore[arg-type]


def test_convex_minmax_on_hand_made_lists() -> None:
    dense = [("a", 0.9), ("b", 0.7), ("c", 0.5)]  # -> a 1.0, b 0.5, c 0.0
    lexical = [("c", 12.0), ("d", 8.0), ("a", 4.0)]  # -> c 1.0, d 0.5, a 0.0
    fused = dict(convex_fuse(dense, lexical, alpha=0.6, normalization="minmax"))
    assert fused == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.4, "d": 0.2})
    assert [i for i, _ in convex_fuse(dense, lexical, alpha=1.0)][:3] == ["a", "b", "c"]
    assert [i for i, _ in convex_fuse(dense, lexical, alpha=0.0)][:3] == ["c", "d", "a"]


def test_convex_zscore_gives_missing_candidates_the_lists_floor() -> None:
    dense = [("a", 3.0), ("b", 2.0), ("c", 1.0)]  # z: 1.2247, 0, -1.2247
    lexical = [("d", 1.0)]  # a single score: z 0
    fused = dict(convex_fuse(dense, lexical, alpha=0.5, normalization="zscore"))
    z = 1.5**0.5
    assert fused["a"] == pytest.approx(0.5 * z + 0.5 * 0.0)
    assert fused["d"] == pytest.approx(0.5 * -z + 0.5 * 0.0)


def test_convex_rejects_alpha_outside_unit_interval() -> None:
    with pytest.raises(ConfigError, match=r"alpha must be within \[0, 1\]"):
        convex_fuse([], [], alpha=1.5)


def test_hybrid_fuse_cuts_to_top_k() -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    dense = [
        NodeWithScore(node=TextNode(id_=i, text=i), score=s) for i, s in [("a", 1.0), ("b", 0.5)]
    ]
    c = TextNode(id_="c", text="c")
    handle: Any = SimpleNamespace()
    cfg = RetrieverConfig(mode="hybrid", fusion="rrf", rrf_k=60)
    import gl_retrieval.retrieval.retrievers as retrievers

    orig = retrievers.iter_chunks
    retrievers.iter_chunks = lambda _h, ids: [c for _ in ids]  # type: ignore[assignment]
    try:
        fused = fuse_hits(handle, cfg, dense, [("c", 2.0)], top_k=2)
    finally:
        retrievers.iter_chunks = orig  # type: ignore[assignment]
    assert [h.node.node_id for h in fused] == ["a", "c"]


def test_retriever_config_defaults_and_validation() -> None:
    cfg = RetrieverConfig(mode="hybrid")
    assert cfg.fusion in ("rrf", "convex") and 0.0 <= cfg.alpha <= 1.0
    with pytest.raises(ValueError):
        RetrieverConfig(mode="hybrid", normalization="softmax")  # type: ignore[arg-type]


# -- the analyser and the lexical index -------------------------------------------------------


def test_analyze_lowercases_drops_stopwords_and_stems() -> None:
    assert analyze("The Rankings of the Documents are ranked") == ["rank", "document", "rank"]
    assert analyze("a I x") == []  # one-letter tokens and stopwords only


def test_lexical_index_masks_before_top_k() -> None:
    lx = LexicalIndex.build(
        [("a#0", "ranking with bm25"), ("b#0", "ranking"), ("c#0", "bm25 misc")]
    )
    assert [i for i, _ in lx.top_k("bm25 ranking", k=1)] == ["a#0"]
    mask = np.array([False, False, True])
    assert [i for i, _ in lx.top_k("bm25 ranking", k=1, mask=mask)] == ["c#0"]
    assert lx.top_k("unrelated words", k=5) == []
    assert lx.top_k("the of", k=5) == []  # nothing left after stopwords


def test_lexical_index_scores_as_bm25s_own_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LexicalIndex.build`` fills bm25s's matrix itself (``_fit_lucene``, for memory): it must
    score every document as ``bm25s.BM25.index`` does, across blocks and with empty texts (a
    bm25s release that changes its internals fails here)."""
    import bm25s

    from gl_retrieval.retrieval import lexical

    monkeypatch.setattr(lexical, "_FIT_BLOCK", 2)  # several blocks even for a few texts
    texts = [str(d["text"]) for d in SMALL_CORPUS] + ["", "the of and", "ranking ranking bm25"]
    ours = LexicalIndex.build([(f"n{i}", t) for i, t in enumerate(texts)])
    theirs = bm25s.BM25(**lexical.BM25_PARAMS)
    theirs.index([analyze(t) for t in texts], show_progress=False)
    for query in ("bm25 ranking", "dense vectors postgres", "term frequency", "unknownword"):
        ids = theirs.get_tokens_ids(analyze(query))
        expected = theirs.get_scores_from_ids(ids) if ids else np.zeros(len(texts))
        np.testing.assert_allclose(ours.scores(query), expected, atol=1e-5)


def test_lexical_index_round_trips_without_pickle(tmp_path: Path) -> None:
    lx = LexicalIndex.build([("a#0", "term frequency ranking"), ("b#0", "dense vectors")])
    lx.save(tmp_path)
    files = sorted(p.name for p in (tmp_path / "bm25").iterdir())
    assert all(f.endswith((".json", ".npy")) for f in files), files
    for f in (tmp_path / "bm25").glob("*.npy"):
        np.load(f, allow_pickle=False)  # plain numeric arrays
    again = LexicalIndex.load(tmp_path)
    assert again is not None
    assert again.node_ids == lx.node_ids
    assert again.top_k("ranking terms", k=2) == lx.top_k("ranking terms", k=2)


def test_lexical_index_from_another_analyser_is_ignored(tmp_path: Path) -> None:
    LexicalIndex.build([("a#0", "text")]).save(tmp_path)
    meta_file = tmp_path / "bm25" / "gl_bm25.json"
    meta = json.loads(meta_file.read_text())
    meta["analyzer"] = {**meta["analyzer"], "stemmer": "none"}
    meta_file.write_text(json.dumps(meta))
    assert LexicalIndex.load(tmp_path) is None


def test_iter_chunks_reads_a_text_storing_vector_store() -> None:
    nodes = [TextNode(id_=f"d{i}#0", text=f"chunk {i}") for i in range(3)]

    class TextStore:
        stores_text = True

        def get_nodes(self, node_ids: list[str]) -> list[TextNode]:
            return [n for n in reversed(nodes) if n.node_id in node_ids]  # any order

    handle: Any = SimpleNamespace(
        vector_store=TextStore(),
        documents={f"d{i}": SimpleNamespace(nodes=[f"d{i}#0"]) for i in range(3)},
        storage_context=None,  # the docstore must not be needed
    )
    assert [n.node_id for n in iter_chunks(handle)] == ["d0#0", "d1#0", "d2#0"]
    assert [n.get_content() for n in iter_chunks(handle, ["d2#0"])] == ["chunk 2"]


# -- modes over a real index, persistence, incremental sync -----------------------------------


def _cfg(small_config: dict[str, Any], mode: str, **retriever: Any) -> dict[str, Any]:
    return {**small_config, "retriever": {"top_k": 5, "mode": mode, **retriever}}


@pytest.mark.parametrize(
    ("mode", "extra"),
    [("bm25", {}), ("hybrid", {"fusion": "rrf"}), ("hybrid", {"fusion": "convex"})],
)
def test_lexical_modes_find_the_keyword_document(
    small_config: dict[str, Any], mode: str, extra: dict[str, Any]
) -> None:
    pipe = RetrievalPipeline.from_config(_cfg(small_config, mode, **extra))
    pipe.index()
    hits = pipe.retrieve("inverse document frequency")
    assert hits[0].doc_id == "bm25"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.node.node_id for h in hits}) == len(hits)


def test_each_mode_names_its_score_kind(small_config: dict[str, Any]) -> None:
    pipe = RetrievalPipeline.from_config(_cfg(small_config, "hybrid"))
    pipe.index()
    assert {h.retrieval_kind for h in pipe.retrieve("inverse document frequency")} == {"hybrid"}
    bm25 = RetrievalPipeline.from_config(_cfg(small_config, "bm25"))
    assert {h.score_kind for h in bm25.retrieve("inverse document frequency")} == {"bm25"}


def _gen(small_config: dict[str, Any]) -> Path:
    root = Path(small_config["storage"]["persist_dir"])
    return root / (root / "CURRENT").read_text().strip()


def test_bm25_side_is_persisted_in_the_generation_and_loaded_without_rebuilding(
    small_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    RetrievalPipeline.from_config(_cfg(small_config, "bm25")).index()
    gen = _gen(small_config)
    meta = json.loads((gen / "bm25" / "gl_bm25.json").read_text())
    assert sorted(meta["node_ids"]) == sorted(f"{d['_id']}#0" for d in SMALL_CORPUS)
    assert not list(gen.rglob("*.pkl")) and not list(gen.rglob("*.pickle"))

    def no_build(*a: Any, **k: Any) -> None:
        raise AssertionError("the BM25 side was rebuilt instead of loaded")

    monkeypatch.setattr(LexicalIndex, "build", no_build)
    fresh = RetrievalPipeline.from_config(_cfg(small_config, "bm25")).warmup()
    assert fresh.retrieve("HNSW indexes in PostgreSQL")[0].doc_id == "pg"
    # A re-index that changes nothing commits nothing, so it must not rebuild BM25 either.
    assert fresh.index().chunks_embedded == 0
    assert _gen(small_config) == gen


def test_bm25_follows_incremental_add_update_delete_across_reloads(
    small_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = _cfg(small_config, "bm25")
    RetrievalPipeline.from_config(cfg).index()
    corpus = Path(small_config["sources"][0]["path"])
    docs = [dict(d) for d in SMALL_CORPUS]
    docs.append({"_id": "zebra", "text": "Zebras graze on the savanna grasslands."})  # add
    docs[4] = {**docs[4], "text": "pgvector stores quokka embeddings in PostgreSQL."}  # update
    del docs[0]  # delete "bm25"
    write_corpus(corpus, docs)
    summary = RetrievalPipeline.from_config(cfg).index(prune=True)
    assert (summary.added, summary.updated, summary.deleted) == (1, 1, 1)

    reloaded = RetrievalPipeline.from_config(cfg)
    assert [h.doc_id for h in reloaded.retrieve("zebras savanna")] == ["zebra"]
    assert [h.doc_id for h in reloaded.retrieve("quokka")] == ["pg"]
    assert reloaded.retrieve("HNSW indexes") == []  # the old pg text is gone
    assert all(h.doc_id != "bm25" for h in reloaded.retrieve("inverse document frequency"))
    meta = json.loads((_gen(small_config) / "bm25" / "gl_bm25.json").read_text())
    assert "zebra#0" in meta["node_ids"] and "bm25#0" not in meta["node_ids"]


def test_index_without_bm25_side_is_rebuilt_in_memory(
    small_config: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # as an index committed before BM25 existed
        m.setattr(RetrievalPipeline, "_before_commit", lambda self: None)
        RetrievalPipeline.from_config(_cfg(small_config, "bm25")).index()
    assert not (_gen(small_config) / "bm25").exists()
    with caplog.at_level(logging.WARNING, logger="gl_retrieval.retrieval.lexical"):
        hits = RetrievalPipeline.from_config(_cfg(small_config, "bm25")).retrieve("HNSW indexes")
    assert hits[0].doc_id == "pg"
    assert "no up-to-date BM25 side" in caplog.text


def test_a_bm25_side_lost_after_commit_is_damage_not_a_silent_rebuild(
    small_config: dict[str, Any],
) -> None:
    import shutil

    from gl_retrieval import IndexDamagedError

    RetrievalPipeline.from_config(_cfg(small_config, "bm25")).index()
    shutil.rmtree(_gen(small_config) / "bm25")
    with pytest.raises(IndexDamagedError, match=r"bm25/.* is damaged \(the file is missing\)"):
        RetrievalPipeline.from_config(_cfg(small_config, "bm25")).retrieve("HNSW indexes")


def test_hybrid_never_touches_an_llm_or_global_settings(small_config: dict[str, Any]) -> None:
    # The autouse tripwire makes Settings.llm / Settings.embed_model raise; a query engine over
    # a hybrid retriever must still answer (retrieval-only, no query generation).
    pipe = RetrievalPipeline.from_config(_cfg(small_config, "hybrid"))
    pipe.index()
    response = pipe.as_query_engine().query("cross-encoder reranking")
    assert response.source_nodes[0].node.ref_doc_id == "ce"
