"""Result objects: LlamaIndex ``NodeWithScore`` that also remember how they were ranked."""

from __future__ import annotations

from typing import Any

from llama_index.core.schema import NodeWithScore

__all__ = ["RankedNode"]


class RankedNode(NodeWithScore):
    """A ``NodeWithScore`` whose ``score`` is the final one, keeping every stage's score.

    ``score`` is the rerank score when a reranker ran, else the retrieval score.
    """

    retrieval_score: float | None = None
    rerank_score: float | None = None

    @classmethod
    def class_name(cls) -> str:
        return "GLRankedNode"

    @classmethod
    def from_retrieved(cls, hit: NodeWithScore) -> RankedNode:
        """Wrap a retriever's hit (the input is not modified)."""
        return cls(node=hit.node, score=hit.score, retrieval_score=hit.score)

    @property
    def doc_id(self) -> str | None:
        """Id of the source document (jsonl ``_id`` / relative file path)."""
        return self.node.ref_doc_id

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints for one result."""
        return {
            "id": self.node.node_id,
            "doc_id": self.doc_id,
            "text": self.node.get_content(),
            "score": self.score,
            "retrieval_score": self.retrieval_score,
            "rerank_score": self.rerank_score,
            "metadata": dict(self.node.metadata),
        }
