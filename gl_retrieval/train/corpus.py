"""The indexed corpus as fine-tuning sees it: chunk ids, texts, their documents, the BM25 side.

Training data names documents by the ids they have in the config's index, so the corpus is read
back from the index (never re-read from the sources): what is trained on is what is retrieved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from gl_retrieval.retrieval.lexical import LexicalIndex, chunk_ids, iter_chunks, lexical_index
from gl_retrieval.storage import IndexHandle

__all__ = ["Corpus", "load_corpus"]


@dataclass
class Corpus:
    """Every chunk of an index, in index order, with the document each belongs to."""

    chunk_ids: list[str]
    texts: list[str]
    doc_of: list[str]
    lexical: LexicalIndex | None = None
    chunks_of: dict[str, list[int]] = field(default_factory=dict)
    doc_of_text: dict[str, str] = field(default_factory=dict)
    row_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.row_of = {cid: i for i, cid in enumerate(self.chunk_ids)}
        for row, doc in enumerate(self.doc_of):
            self.chunks_of.setdefault(doc, []).append(row)
        for text, doc in zip(self.texts, self.doc_of, strict=True):
            self.doc_of_text.setdefault(text.strip(), doc)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @property
    def doc_ids(self) -> list[str]:
        """Document ids, in index order."""
        return list(self.chunks_of)

    def has_doc(self, doc_id: str) -> bool:
        return doc_id in self.chunks_of

    def doc_text(self, doc_id: str) -> str:
        """The text a document is trained on: its first chunk (what a one-chunk-per-document
        index holds whole; a longer document's opening, which the model reads first anyway)."""
        return self.texts[self.chunks_of[doc_id][0]]

    def fingerprint(self) -> str:
        """sha256 over chunk ids and texts: which corpus the dev metrics were measured on."""
        h = hashlib.sha256()
        for cid, text in zip(self.chunk_ids, self.texts, strict=True):
            h.update(cid.encode())
            h.update(b"\0")
            h.update(text.encode())
            h.update(b"\0")
        return h.hexdigest()


def load_corpus(handle: IndexHandle, *, lexical: bool = True) -> Corpus:
    """Read every chunk of ``handle`` (and its BM25 side when ``lexical``)."""
    ids = chunk_ids(handle)
    texts: list[str] = []
    docs: list[str] = []
    for node in iter_chunks(handle, ids):
        texts.append(node.get_content())
        docs.append(str(node.ref_doc_id or node.node_id))
    lex: Any = lexical_index(handle) if lexical else None
    return Corpus(chunk_ids=ids, texts=texts, doc_of=docs, lexical=lex)
