"""Hard negatives mined from the current index with the configured retriever.

For every training query the configured first stage (hybrid by default) ranks the index; every
document judged positive for that query, and every document whose text is one of its positive
texts, is excluded. Within what is left, a **rank window** skips the first ``skip`` documents
(the likeliest unjudged positives) and looks ``depth`` documents deep; a **relative margin**
(as in sentence-transformers' ``mine_hard_negatives``) also drops a candidate whose dense
similarity to the query is above ``(1 - relative_margin)`` times the positive's. The first
``count`` survivors become the pair's negatives.

Example:
    >>> mined, stats = mine_hard_negatives(train, stages=pipe.stages(), corpus=c,
    ...                                    embedder=emb, chunk_vectors=v, count=1)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gl_retrieval.config import RetrieverConfig
from gl_retrieval.errors import TrainingError
from gl_retrieval.eval.metrics import doc_level_ranking
from gl_retrieval.train.corpus import Corpus
from gl_retrieval.train.data import TrainingData

__all__ = ["MiningOptions", "MiningStats", "mine_hard_negatives"]


@dataclass(frozen=True)
class MiningOptions:
    """How many negatives per pair, and where in the ranking they may come from."""

    count: int = 1
    skip: int = 3
    depth: int = 50
    relative_margin: float | None = 0.05

    def check(self) -> None:
        if self.count < 0:
            raise TrainingError(f"negatives must be >= 0, but got {self.count}")
        if self.skip < 0:
            raise TrainingError(f"mine_skip must be >= 0, but got {self.skip}")
        if self.depth < max(1, self.count):
            raise TrainingError(
                f"mine_depth must be >= negatives ({self.count}), but got {self.depth}"
            )
        m = self.relative_margin
        if m is not None and not 0.0 <= m < 1.0:
            raise TrainingError(f"relative_margin must be within [0, 1), but got {m}")


@dataclass(frozen=True)
class MiningStats:
    """What mining did, for training.json."""

    queries: int
    pairs: int
    negatives: int
    short: int
    dropped_by_margin: int
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "pairs": self.pairs,
            "negatives": self.negatives,
            "pairs_short_of_negatives": self.short,
            "dropped_by_margin": self.dropped_by_margin,
            **self.options,
        }


def mine_hard_negatives(
    data: TrainingData,
    *,
    stages: Any,
    corpus: Corpus,
    embedder: Any,
    chunk_vectors: np.ndarray | None,
    options: MiningOptions = MiningOptions(),
) -> tuple[TrainingData, MiningStats]:
    """Give every pair up to ``options.count`` mined negatives (replacing any it had).

    Args:
        data: Training pairs (``qrels`` says which documents are positive per query).
        stages: The pipeline's two stages (:meth:`RetrievalPipeline.stages`): their first
            stage (the configured retriever over the loaded index) finds the candidates.
        corpus: Its chunks (for texts and documents).
        embedder: The base embedder (queries are embedded with its query prefix).
        chunk_vectors: Base-model vectors of every chunk, for the margin guard.
        options: Count, rank window and margin.
    """
    from gl_retrieval.retrieval.flow import SearchRequest

    retriever: RetrieverConfig = stages.retriever
    options.check()
    if options.count == 0:
        return data, MiningStats(len(data.queries), len(data), 0, 0, 0, _opts(options, retriever))
    qids = list(data.queries)
    qvecs = embedder.embed_queries([data.queries[q] for q in qids])
    qvec_of = dict(zip(qids, qvecs, strict=True))
    positives: dict[str, set[str]] = {q: set(data.qrels.get(q, {})) for q in qids}
    pos_texts: dict[str, set[str]] = {q: set() for q in qids}
    for p in data.pairs:
        pos_texts[p.qid].add(p.positive.strip())
        if p.positive_id is not None:
            positives[p.qid].add(p.positive_id)
    for q, texts in pos_texts.items():
        positives[q].update(corpus.doc_of_text[t] for t in texts if t in corpus.doc_of_text)

    window = options.skip + options.depth
    chunk_k = min(len(corpus), max(window * 3, window + 20))
    candidates: dict[str, list[str]] = {}
    for q in qids:
        req = SearchRequest(queries=(data.queries[q],), filters=None, top_k=chunk_k, top_n=None)
        (hits,) = stages.candidates(req, [qvec_of[q]])
        ranking = doc_level_ranking(
            (str(h.node.ref_doc_id or h.node.node_id), h.score) for h in hits
        )
        ranking = [d for d in ranking if d not in positives[q]]
        candidates[q] = ranking[options.skip : window]

    dropped = 0
    pos_vec: dict[str, np.ndarray] = {}
    margin = options.relative_margin
    if margin is not None and chunk_vectors is not None:
        outside = sorted(
            {p.positive for p in data.pairs if p.positive.strip() not in corpus.doc_of_text}
        )
        if outside:
            pos_vec.update(zip(outside, embedder.embed_documents(outside), strict=True))
    out_pairs = []
    short = total = 0
    for p in data.pairs:
        chosen: list[str] = []
        q = qvec_of[p.qid]
        pos_sim = None
        if margin is not None and chunk_vectors is not None:
            doc = corpus.doc_of_text.get(p.positive.strip())
            pv = chunk_vectors[corpus.chunks_of[doc][0]] if doc is not None else pos_vec[p.positive]
            pos_sim = float(q @ pv)
        for d in candidates[p.qid]:
            if len(chosen) == options.count:
                break
            if pos_sim is not None:
                sim = float(q @ chunk_vectors[corpus.chunks_of[d][0]])  # type: ignore[index]
                if sim > (1.0 - margin) * pos_sim:
                    dropped += 1
                    continue
            chosen.append(corpus.doc_text(d))
        if len(chosen) < options.count:
            short += 1
        total += len(chosen)
        out_pairs.append(replace(p, negatives=tuple(chosen)))
    mined = replace(data, pairs=tuple(out_pairs))
    return mined, MiningStats(
        len(qids), len(out_pairs), total, short, dropped, _opts(options, retriever)
    )


def _opts(options: MiningOptions, retriever: RetrieverConfig) -> dict[str, Any]:
    return {
        "count": options.count,
        "skip": options.skip,
        "depth": options.depth,
        "relative_margin": options.relative_margin,
        "retriever_mode": retriever.mode,
    }
