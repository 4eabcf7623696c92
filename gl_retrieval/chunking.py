"""Chunking measured in the embedder's own tokenizer.

A document that fits in one chunk is not split at all (one batched tokenizer call decides), so
most short documents cost no splitter work. Longer ones go through LlamaIndex's
``SentenceSplitter`` with the embedder's tokenizer, never tiktoken.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from gl_retrieval.config import ChunkingConfig
from gl_retrieval.embedders.base import GLEmbedding
from gl_retrieval.sources import Document

__all__ = ["Chunker", "effective_chunk_size"]

log = logging.getLogger(__name__)


def _approx_tokens(text: str) -> list[int]:
    # Conservative stand-in when the provider has no local tokenizer: ~3 UTF-8 bytes per token.
    return [0] * math.ceil(len(text.encode("utf-8")) / 3)


@dataclass(frozen=True)
class ChunkPlan:
    """The chunk size actually used, and why it differs from the configured one (if it does)."""

    chunk_size: int
    chunk_overlap: int
    warning: str | None = None


def effective_chunk_size(cfg: ChunkingConfig, embedder: GLEmbedding) -> ChunkPlan:
    """Cap ``chunk_size`` at what the model embeds without truncation (prefix included).

    A chunk longer than the model's max sequence length would be truncated silently by
    sentence-transformers; we cap it instead and say so.
    """
    limit = embedder.max_tokens
    if limit is None:
        return ChunkPlan(cfg.chunk_size, cfg.chunk_overlap)
    prefix = embedder.count_tokens([embedder.document_prefix])
    limit -= prefix[0] if prefix and embedder.document_prefix else 0
    if cfg.chunk_size <= limit:
        return ChunkPlan(cfg.chunk_size, cfg.chunk_overlap)
    overlap = min(cfg.chunk_overlap, limit // 4)
    warning = (
        f"chunking.chunk_size={cfg.chunk_size} exceeds what {embedder.model_name!r} embeds "
        f"without truncation ({limit} tokens after its prefix and special tokens); "
        f"using chunk_size={limit}, chunk_overlap={overlap}. Set chunking.chunk_size <= {limit} "
        "to silence this"
    )
    log.warning(warning)
    return ChunkPlan(limit, overlap, warning)


class Chunker:
    """Turns documents into nodes with stable ids ``<doc_id>#<n>``."""

    def __init__(self, plan: ChunkPlan, embedder: GLEmbedding) -> None:
        self.plan = plan
        self._embedder = embedder
        tokenize: Callable[[str], Sequence[object]] = getattr(
            embedder, "tokenize_fn", lambda: _approx_tokens
        )()
        self._splitter = SentenceSplitter(
            chunk_size=plan.chunk_size,
            chunk_overlap=plan.chunk_overlap,
            tokenizer=tokenize,
            include_metadata=False,
            include_prev_next_rel=False,
        )

    def _token_counts(self, texts: list[str]) -> list[int]:
        counts = self._embedder.count_tokens(texts)
        if counts is None:
            return [len(_approx_tokens(t)) for t in texts]
        return counts

    def chunk(self, docs: Sequence[Document]) -> list[TextNode]:
        """Chunk ``docs``; documents that fit in one chunk are kept whole."""
        texts = [d.text for d in docs]
        counts = self._token_counts(texts) if texts else []
        nodes: list[TextNode] = []
        for doc, n_tokens in zip(docs, counts, strict=True):
            pieces = (
                [doc.text]
                if n_tokens <= self.plan.chunk_size
                else self._splitter.split_text(doc.text)
            )
            keys = list(doc.metadata)
            for i, piece in enumerate(p for p in pieces if p.strip()):
                nodes.append(
                    TextNode(
                        id_=f"{doc.doc_id}#{i}",
                        text=piece,
                        metadata=dict(doc.metadata),
                        # Vectors are of the text alone; the LLM still sees the metadata.
                        excluded_embed_metadata_keys=keys,
                        relationships={
                            NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc.doc_id)
                        },
                    )
                )
        return nodes
