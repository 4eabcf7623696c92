"""Result objects: LlamaIndex ``NodeWithScore`` that also remember how they were ranked.

What the scores mean (also in README "Scores" and docs/getting-started.md):

- ``cosine`` (``mode: dense``): cosine similarity of the query's and the chunk's vectors, at most
  1. Its range depends on the model (MiniLM: roughly 0.1 to 0.8 for related text).
- ``bm25`` (``mode: bm25``): the BM25 keyword score, 0 and up with no fixed top; it grows with
  rare query words in the chunk. Compare it only within one query.
- ``hybrid`` (``mode: hybrid``, convex fusion): ``alpha * dense + (1 - alpha) * bm25`` after each
  list is normalised over this query's candidates. With ``normalization: zscore`` (the default)
  0 is an average candidate and 2 to 4 a standout, so 3.14 means "far above the rest", not a
  probability; with ``minmax`` it lies in 0..1. Compare it only within one query.
- ``hybrid-rrf`` (``fusion: rrf``): reciprocal rank fusion, ``sum 1 / (rrf_k + rank)``: only
  the ranks count (at most 2 / 61 ≈ 0.033 with ``rrf_k: 60``).
- ``rerank``: the cross-encoder's relevance score for the (query, chunk) pair, a logit or a
  probability depending on the model; higher is more relevant. A stand-in reranker
  (``rerank_stand_in``) has random weights: its number means nothing and the retrieval order
  is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.schema import NodeWithScore

__all__ = [
    "SCORE_KINDS",
    "STAND_IN_NOTE",
    "RankedNode",
    "format_result",
    "format_results",
    "retrieval_kind",
    "score_notes",
]

#: Said wherever stand-in rerank results are shown.
STAND_IN_NOTE = (
    "the reranker is a stand-in with random weights: its scores mean nothing, so the results "
    "keep their retrieval order"
)

#: What each score kind means, in one line (the CLI prints these; the docs say more).
SCORE_KINDS: dict[str, str] = {
    "cosine": "cosine similarity of query and chunk vectors (at most 1; higher is closer)",
    "bm25": "BM25 keyword score (0 and up, no fixed top; compare within one query)",
    "hybrid": "hybrid fusion: alpha * dense + (1 - alpha) * BM25, each z-scored over this "
    "query's candidates (0 = average candidate, 2-4 = a standout; not a probability)",
    "hybrid-minmax": "hybrid fusion: alpha * dense + (1 - alpha) * BM25, each min-max scaled "
    "over this query's candidates (0..1)",
    "hybrid-rrf": "reciprocal rank fusion of dense and BM25 ranks: sum of 1 / (rrf_k + rank)",
    "rerank": "cross-encoder relevance of the (query, chunk) pair (higher is more relevant)",
}


def retrieval_kind(mode: str, *, fusion: str = "convex", normalization: str = "zscore") -> str:
    """The :data:`SCORE_KINDS` key of a first-stage score for these retriever settings.

    Example:
        >>> retrieval_kind("hybrid", fusion="convex", normalization="zscore")
        'hybrid'
        >>> retrieval_kind("dense")
        'cosine'
    """
    if mode == "dense":
        return "cosine"
    if mode == "bm25":
        return "bm25"
    if fusion == "rrf":
        return "hybrid-rrf"
    return "hybrid" if normalization == "zscore" else "hybrid-minmax"


class RankedNode(NodeWithScore):
    """A ``NodeWithScore`` whose ``score`` is the final one, keeping every stage's score.

    ``score`` is the rerank score when a (real) reranker ran, else the retrieval score.
    ``retrieval_kind`` says what the retrieval score is (a :data:`SCORE_KINDS` key);
    ``rerank_stand_in`` is True when the reranker was a stand-in with random weights, whose
    ``rerank_score`` means nothing (the retrieval order and score were kept).
    """

    retrieval_score: float | None = None
    rerank_score: float | None = None
    retrieval_kind: str | None = None
    rerank_stand_in: bool = False

    @classmethod
    def class_name(cls) -> str:
        return "GLRankedNode"

    @classmethod
    def from_retrieved(cls, hit: NodeWithScore, *, kind: str | None = None) -> RankedNode:
        """Wrap a retriever's hit (the input is not modified); ``kind`` names its score."""
        return cls(node=hit.node, score=hit.score, retrieval_score=hit.score, retrieval_kind=kind)

    @property
    def doc_id(self) -> str | None:
        """Id of the source document (jsonl ``_id`` / relative file path)."""
        return self.node.ref_doc_id

    @property
    def score_kind(self) -> str | None:
        """What ``score`` is: ``"rerank"`` after a real reranker, else the retrieval kind."""
        if self.rerank_score is not None and not self.rerank_stand_in:
            return "rerank"
        return self.retrieval_kind

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankedNode:
        """Rebuild a result from its :meth:`to_dict` shape (what ``RemotePipeline`` reads):
        every field that shape carries comes back equal.

        Example:
            >>> hit = RankedNode.from_dict({"id": "n1", "doc_id": "d1", "text": "BM25 ...",
            ...     "score": 0.5, "retrieval_score": 0.5, "retrieval_kind": "cosine"})
            >>> again = RankedNode.from_dict(hit.to_dict())
            >>> hit.doc_id, hit.score_kind, again.to_dict() == hit.to_dict()
            ('d1', 'cosine', True)
        """
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        node = TextNode(
            id_=data["id"], text=data["text"], metadata=dict(data.get("metadata") or {})
        )
        if data.get("doc_id") is not None:
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=data["doc_id"])
        return cls(
            node=node,
            score=data["score"],
            retrieval_score=data.get("retrieval_score"),
            rerank_score=data.get("rerank_score"),
            retrieval_kind=data.get("retrieval_kind"),
            rerank_stand_in=bool(data.get("rerank_stand_in", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI, ``serve`` and ``RemotePipeline`` use for one result."""
        return {
            "id": self.node.node_id,
            "doc_id": self.doc_id,
            "text": self.node.get_content(),
            "score": self.score,
            "score_kind": self.score_kind,
            "retrieval_score": self.retrieval_score,
            "retrieval_kind": self.retrieval_kind,
            "rerank_score": self.rerank_score,
            "rerank_stand_in": self.rerank_stand_in,
            "metadata": dict(self.node.metadata),
        }


def _snippet(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_result(rank: int, hit: Any, *, width: int = 160) -> str:
    """One result as one line: rank, labelled score(s), document id, a snippet of the text.

    ``" 1. rerank 4.2100 (cosine 0.612)  doc  text…"`` after a real reranker, else
    ``" 1. cosine 0.6120  doc  text…"`` (a stand-in's score is not shown: it means nothing).
    """
    score = f"{hit.score:.4f}" if hit.score is not None else "-"
    if isinstance(hit, RankedNode):
        label = hit.score_kind or "score"
        extra = ""
        if label == "rerank" and hit.retrieval_score is not None:
            extra = f" ({hit.retrieval_kind or 'retrieval'} {hit.retrieval_score:.3f})"
        doc = hit.doc_id
    else:  # a plain NodeWithScore
        label, extra, doc = "score", "", hit.node.ref_doc_id
    text = _snippet(hit.node.get_content(), width)
    return f"{rank:2d}. {label} {score}{extra}  {doc}  {text}"


def format_results(hits: Any, *, width: int = 160) -> list[str]:
    """:func:`format_result` for each hit, best first; a note when the reranker was a stand-in."""
    lines = [format_result(i, h, width=width) for i, h in enumerate(hits, 1)]
    if any(getattr(h, "rerank_stand_in", False) for h in hits):
        lines.append(f"note: {STAND_IN_NOTE}")
    return lines


def score_notes(hits: Any) -> list[str]:
    """One ``kind: meaning`` line per score kind shown in ``hits`` (for a legend)."""
    kinds: list[str] = []
    for h in hits:
        for kind in (getattr(h, "score_kind", None), getattr(h, "retrieval_kind", None)):
            if kind and kind not in kinds:
                kinds.append(kind)
    return [f"{k}: {SCORE_KINDS[k]}" for k in kinds if k in SCORE_KINDS]
