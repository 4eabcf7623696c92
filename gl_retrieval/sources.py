"""Reading sources into documents with stable ids: directories of text files and BEIR ``.jsonl``.

A file that cannot be read (binary, undecodable, empty) is skipped and reported by name; it never
aborts the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gl_retrieval.config import SourceConfig
from gl_retrieval.errors import SourceError

__all__ = ["TEXT_SUFFIXES", "Document", "Skipped", "read_jsonl", "read_sources"]

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".text"})


@dataclass(frozen=True)
class Document:
    """One source document. ``doc_id`` is stable across runs (jsonl id or relative path)."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def content_hash(self) -> str:
        """Hash of the text plus user-facing metadata (no mtimes), to detect changes."""
        h = hashlib.sha256(self.text.encode("utf-8"))
        h.update(b"\0")
        h.update(json.dumps(self.metadata, sort_keys=True, default=str).encode("utf-8"))
        return h.hexdigest()


@dataclass(frozen=True)
class Skipped:
    """A document that was not indexed, and why."""

    name: str
    reason: str


def _jsonl_document(obj: Any, *, where: str) -> Document:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    doc_id = obj.get("_id", obj.get("id"))
    if doc_id is None or str(doc_id) == "":
        raise ValueError("missing '_id' or 'id'")
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError("missing 'text' string")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise ValueError("'title' must be a string")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("'metadata' must be an object")
    body = f"{title}\n{text}" if title and text else (title or text)
    metadata = dict(meta)
    if title:
        metadata.setdefault("title", title)
    return Document(doc_id=str(doc_id), text=body, metadata=metadata, source=where)


def read_jsonl(path: Path, skipped: list[Skipped]) -> Iterator[Document]:
    """Yield documents of a BEIR-layout ``.jsonl`` (``_id``/``id``, ``title``?, ``text``,
    ``metadata``?). Bad lines are reported in ``skipped`` as ``file:line``."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the `with` below
    except OSError as e:
        raise SourceError(f"cannot open source {path}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                doc = _jsonl_document(json.loads(line), where=where)
            except (ValueError, UnicodeDecodeError) as e:
                skipped.append(Skipped(where, str(e).splitlines()[0]))
                continue
            if not doc.text.strip():
                skipped.append(Skipped(f"{where} ({doc.doc_id})", "empty text"))
                continue
            yield doc


def _read_file(path: Path, root: Path) -> Document:
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        raise ValueError("binary file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise ValueError("empty file")
    rel = path.relative_to(root).as_posix()
    return Document(doc_id=rel, text=text, metadata={"file_path": rel}, source=str(path))


def read_directory(
    root: Path, skipped: list[Skipped], *, glob: str | None = None
) -> Iterator[Document]:
    """Yield the text documents under ``root`` in a stable (sorted) order."""
    paths = sorted(root.glob(glob)) if glob else sorted(root.rglob("*"))
    for p in paths:
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if glob is None and p.suffix.lower() not in TEXT_SUFFIXES:
            continue
        try:
            yield _read_file(p, root)
        except (ValueError, OSError) as e:
            skipped.append(Skipped(p.relative_to(root).as_posix(), str(e)))


def read_sources(sources: Iterable[SourceConfig], skipped: list[Skipped]) -> Iterator[Document]:
    """Yield the documents of every source; unreadable documents go to ``skipped``.

    Raises:
        SourceError: a source path does not exist, or two documents share an id.
    """
    seen: set[str] = set()
    for src in sources:
        path = Path(src.path)
        if path.is_dir():
            docs = read_directory(path, skipped, glob=src.glob)
        elif path.is_file():
            if path.suffix.lower() == ".jsonl":
                docs = read_jsonl(path, skipped)
            else:
                docs = read_directory(path.parent, skipped, glob=path.name)
        else:
            raise SourceError(f"source {path} does not exist (sources[].path in the config)")
        for doc in docs:
            if doc.doc_id in seen:
                raise SourceError(
                    f"duplicate document id {doc.doc_id!r} (in {doc.source}): ids must be unique "
                    "across all sources"
                )
            seen.add(doc.doc_id)
            yield doc
