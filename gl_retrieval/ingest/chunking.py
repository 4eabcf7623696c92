"""Chunking measured in the embedder's own tokenizer (never tiktoken).

Documents go through the model's tokenizer in batched calls of about :data:`WINDOW_CHARS`
characters each. A document that fits in ``chunk_size`` tokens stays whole; a longer one is cut at
token boundaries taken from that same call (its character offsets), so no text is tokenised twice
here:

* a chunk ends at the last sentence or paragraph break that fits, if that keeps it at least half
  full; otherwise at the last word boundary that fits (a sentence longer than a chunk);
* the next chunk starts ``chunk_overlap`` tokens earlier, at a sentence start in that window if
  there is one, else at a word start.

A document longer than :data:`WINDOW_CHARS` is tokenised in windows that end at whitespace: the
chunks of a window are kept except the last one, and the next window starts where that chunk
starts, so the chunks are the ones one call over the whole text would give, while the tokenizer's
per-token state (a few hundred bytes a token) never covers more than one window. Memory for
chunking is therefore bounded by the window, whatever the size of a document;
:meth:`Chunker.iter_split` yields the chunks as they are cut.

Chunks are slices of the original text, so ``start_char_idx``/``end_char_idx`` on each node point
into the document. Node ids are ``<doc_id>#<n>`` and each node's ``ref_doc_id`` is the document
id, so a changed document replaces exactly its own nodes.

Providers without a local tokenizer (a remote server) fall back to a conservative estimate of
about one token per three characters of a word, and one per punctuation mark.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gl_retrieval.config import ChunkingConfig
from gl_retrieval.embedders.base import GLEmbedding
from gl_retrieval.ingest.sources import Document

if TYPE_CHECKING:
    from llama_index.core.schema import TextNode

__all__ = ["Chunk", "ChunkPlan", "Chunker", "effective_chunk_size", "split_offsets"]

log = logging.getLogger(__name__)

#: Characters per tokenizer call: short documents are batched up to this, a longer one is cut
#: into windows of this size (grown when one chunk does not fit in a window).
WINDOW_CHARS = 64 * 1024

Offsets = Sequence[tuple[int, int]]
#: texts -> (token count of each text, offsets of text i on demand)
Tokenize = Callable[[list[str]], tuple[list[int], Callable[[int], Offsets]]]

# The position right after a sentence end (plus closing quotes/brackets) or a line break.
_BREAK = re.compile(r"[.!?。！？…][\"'”’)\]»]*\s+|\n\s*")
_APPROX_TOKEN = re.compile(r"\w{1,3}|[^\w\s]")


@dataclass(frozen=True)
class ChunkPlan:
    """The chunk size actually used, and why it differs from the configured one (if it does)."""

    chunk_size: int
    chunk_overlap: int
    warning: str | None = None


def effective_chunk_size(cfg: ChunkingConfig, embedder: GLEmbedding) -> ChunkPlan:
    """Cap ``chunk_size`` at what the model embeds without truncation (prefix included).

    A chunk longer than the model's max sequence length would be truncated silently by
    sentence-transformers; we cap it instead and log a warning that says so.

    Example:
        >>> plan = effective_chunk_size(ChunkingConfig(chunk_size=512), emb)  # doctest: +SKIP
        >>> plan.chunk_size  # all-MiniLM-L6-v2: 256 - [CLS] - [SEP]  # doctest: +SKIP
        254
    """
    limit = embedder.max_tokens
    if limit is None:
        return ChunkPlan(cfg.chunk_size, cfg.chunk_overlap)
    if embedder.document_prefix:
        prefix = embedder.count_tokens([embedder.document_prefix])
        limit -= prefix[0] if prefix else 0
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


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document: ``doc.text[start:end]``, about ``tokens`` tokens long."""

    doc: Document
    n: int
    text: str
    start: int
    end: int
    tokens: int

    @property
    def node_id(self) -> str:
        return f"{self.doc.doc_id}#{self.n}"

    def to_node(self, *, embedding: list[float] | None = None) -> TextNode:
        """The LlamaIndex node for this chunk (metadata copied; excluded from the embed text)."""
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        meta = dict(self.doc.metadata)
        return TextNode(
            id_=self.node_id,
            text=self.text,
            embedding=embedding,
            metadata=meta,
            # Vectors are of the text alone; the LLM still sees the metadata.
            excluded_embed_metadata_keys=list(meta),
            start_char_idx=self.start,
            end_char_idx=self.end,
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=self.doc.doc_id)},
        )


def _hf_tokenize(tokenizer: Any) -> Tokenize:
    def run(texts: list[str]) -> tuple[list[int], Callable[[int], Offsets]]:
        enc = tokenizer(
            texts,
            add_special_tokens=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        encodings = enc.encodings
        return [len(e) for e in encodings], lambda i: encodings[i].offsets

    return run


def _approx_offsets(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _APPROX_TOKEN.finditer(text)]


def _approx_tokenize(embedder: GLEmbedding) -> Tokenize:
    def run(texts: list[str]) -> tuple[list[int], Callable[[int], Offsets]]:
        counts = embedder.count_tokens(texts)
        if counts is None:
            counts = [len(_APPROX_TOKEN.findall(t)) for t in texts]
        return counts, lambda i: _approx_offsets(texts[i])

    return run


def _tokenizer_for(embedder: GLEmbedding) -> Tokenize:
    """Token counts and offsets in ``embedder``'s own tokenizer (a fast HF tokenizer when the
    provider has one), else the conservative estimate."""
    try:
        tok = embedder.st_model.tokenizer  # type: ignore[attr-defined]
    except AttributeError:
        tok = None
    if tok is not None and getattr(tok, "is_fast", False):
        return _hf_tokenize(tok)
    return _approx_tokenize(embedder)


def _window_end(text: str, pos: int, window: int) -> int:
    """Where a tokenizer window starting at ``pos`` ends: the end of the text, or just after the
    last whitespace in the window's second half (so no word is cut), else ``pos + window``."""
    end = pos + window
    if end >= len(text):
        return len(text)
    half = pos + window // 2
    cut = max(text.rfind(c, half, end) for c in " \n\t\r")
    return cut + 1 if cut >= half else end


def split_offsets(text: str, offsets: Offsets, *, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of the chunks of one document (see the module docstring)."""
    n = len(offsets)
    starts = [a for a, _ in offsets]
    # Token indices at which a sentence, line or paragraph starts.
    breaks = sorted({bisect_left(starts, m.end()) for m in _BREAK.finditer(text)} - {0, n})

    def word_start(t: int) -> bool:
        return offsets[t][0] > offsets[t - 1][1]

    ranges: list[tuple[int, int]] = []
    s = 0
    while True:
        limit = s + size
        if limit >= n:
            ranges.append((s, n))
            return ranges
        half = s + max(1, size // 2)
        i = bisect_right(breaks, limit) - 1
        if i >= 0 and breaks[i] >= half:
            e = breaks[i]
        else:
            e = next((t for t in range(limit, half - 1, -1) if word_start(t)), limit)
        ranges.append((s, e))
        nxt = e
        if overlap:
            lo = max(s + 1, e - overlap)
            j = bisect_left(breaks, lo)
            if j < len(breaks) and breaks[j] < e:
                nxt = breaks[j]
            else:
                nxt = next((t for t in range(lo, e) if word_start(t)), e)
        s = nxt


class Chunker:
    """Turns documents into chunks (and LlamaIndex nodes) with stable ids ``<doc_id>#<n>``.

    Example:
        >>> plan = effective_chunk_size(ChunkingConfig(chunk_size=128), emb)  # doctest: +SKIP
        >>> chunks = Chunker(plan, emb).split(docs)  # doctest: +SKIP
        >>> chunks[0].node_id, chunks[0].tokens <= 128  # doctest: +SKIP
        ('doc-1#0', True)
    """

    def __init__(self, plan: ChunkPlan, embedder: GLEmbedding) -> None:
        self.plan = plan
        self._tokenize = _tokenizer_for(embedder)

    def split(self, docs: Sequence[Document]) -> list[Chunk]:
        """Chunk ``docs`` into a list (see :meth:`iter_split`); documents that fit stay whole."""
        return list(self.iter_split(docs))

    def iter_split(self, docs: Iterable[Document]) -> Iterator[Chunk]:
        """Yield the chunks of ``docs`` in order, tokenising about :data:`WINDOW_CHARS`
        characters at a time, so memory does not grow with the size of a document."""
        batch: list[Document] = []
        chars = 0
        for doc in docs:
            if len(doc.text) > WINDOW_CHARS:
                yield from self._split_batch(batch)
                batch, chars = [], 0
                yield from self._split_long(doc)
                continue
            batch.append(doc)
            chars += len(doc.text)
            if chars >= WINDOW_CHARS:
                yield from self._split_batch(batch)
                batch, chars = [], 0
        yield from self._split_batch(batch)

    def _split_batch(self, docs: Sequence[Document]) -> Iterator[Chunk]:
        """Chunk a few short documents with one batched tokenizer call."""
        if not docs:
            return
        counts, offsets_of = self._tokenize([d.text for d in docs])
        size, overlap = self.plan.chunk_size, self.plan.chunk_overlap
        for k, (doc, n_tokens) in enumerate(zip(docs, counts, strict=True)):
            if n_tokens <= size:
                if doc.text.strip():
                    yield Chunk(doc, 0, doc.text, 0, len(doc.text), n_tokens)
                continue
            offsets = offsets_of(k)
            n = 0
            for a, b in split_offsets(doc.text, offsets, size=size, overlap=overlap):
                start, end = offsets[a][0], offsets[b - 1][1]
                piece = doc.text[start:end]
                if piece.strip():
                    yield Chunk(doc, n, piece, start, end, b - a)
                    n += 1

    def _split_long(self, doc: Document) -> Iterator[Chunk]:
        """Chunk one long document window by window (see the module docstring)."""
        text = doc.text
        size, overlap = self.plan.chunk_size, self.plan.chunk_overlap
        pos, n, window = 0, 0, WINDOW_CHARS
        while pos < len(text):
            end = _window_end(text, pos, window)
            last = end == len(text)
            piece = text[pos:end]
            counts, offsets_of = self._tokenize([piece])
            if last and pos == 0 and counts[0] <= size:
                if text.strip():
                    yield Chunk(doc, 0, text, 0, len(text), counts[0])
                return
            offsets = offsets_of(0)
            if not offsets:
                return
            ranges = split_offsets(piece, offsets, size=size, overlap=overlap)
            if not last:
                if len(ranges) < 2:  # not even one whole chunk in this window: widen it
                    window *= 2
                    continue
                ranges, follow = ranges[:-1], ranges[-1][0]
            for a, b in ranges:
                start, stop = pos + offsets[a][0], pos + offsets[b - 1][1]
                chunk_text = text[start:stop]
                if chunk_text.strip():
                    yield Chunk(doc, n, chunk_text, start, stop, b - a)
                    n += 1
            if last:
                return
            pos += offsets[follow][0]
            del piece, offsets, offsets_of, ranges

    def chunk(self, docs: Sequence[Document]) -> list[TextNode]:
        """Chunk ``docs`` into LlamaIndex nodes (without embeddings)."""
        return [c.to_node() for c in self.split(docs)]
