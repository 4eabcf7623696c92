"""Reading sources into documents with stable ids: directories of files and BEIR ``.jsonl``.

* Directories: ``.txt``/``.md``/``.rst`` as text, ``.html``/``.htm`` as their visible text
  (script, style and other non-rendered elements dropped), and ``.pdf`` through LlamaIndex's
  ``PDFReader`` when ``llama-index-readers-file`` is installed. A document's id is its path
  relative to the source directory.
* ``.jsonl`` in the BEIR corpus layout (``_id``/``id``, ``title``?, ``text``, ``metadata``?): the
  id is ``_id`` (or ``id``), the text is ``title + "\\n" + text``, ``metadata`` is carried to the
  nodes.

A document that cannot be read (binary, undecodable, empty, a broken PDF) is skipped and reported
by name; it never aborts the run.

Example:
    >>> from pathlib import Path
    >>> from gl_retrieval.config import SourceConfig
    >>> skipped: list[Skipped] = []
    >>> docs = list(read_sources([SourceConfig(path=Path("docs"))], skipped))  # doctest: +SKIP
    >>> docs[0].doc_id, [s.name for s in skipped]  # doctest: +SKIP
    ('ingestion.md', [])
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from gl_retrieval.config import SourceConfig, limits
from gl_retrieval.errors import SourceError

__all__ = [
    "HTML_SUFFIXES",
    "PDF_SUFFIXES",
    "TEXT_SUFFIXES",
    "Document",
    "Skipped",
    "html_to_text",
    "read_directory",
    "read_jsonl",
    "read_sources",
]

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".text"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
PDF_SUFFIXES = frozenset({".pdf"})
#: What a directory source reads when it has no ``glob``; other files are ignored silently.
READABLE_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES

PDF_INSTALL_HINT = "PDF support needs `pip install llama-index-readers-file pypdf`"


@dataclass(frozen=True)
class Document:
    """One source document. ``doc_id`` is stable across runs (jsonl id or relative path)."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @cached_property
    def content_hash(self) -> str:
        """Hash of the text plus user-facing metadata (never mtimes), to detect changes."""
        h = hashlib.sha256(self.text.encode("utf-8"))
        h.update(b"\0")
        h.update(json.dumps(self.metadata, sort_keys=True, default=str).encode("utf-8"))
        return h.hexdigest()


@dataclass(frozen=True)
class Skipped:
    """A document that was not indexed, and why."""

    name: str
    reason: str


# -- jsonl -------------------------------------------------------------------------------------


def _too_deep(value: Any, limit: int) -> bool:
    """True when ``value`` nests dicts/lists deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _jsonl_document(obj: Any, *, where: str) -> Document:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_json_kind(obj)}")
    doc_id = obj.get("_id", obj.get("id"))
    if doc_id is None or str(doc_id) == "":
        raise ValueError("missing '_id' or 'id'")
    if isinstance(doc_id, (dict, list)):
        raise ValueError("'_id' must be a string or a number")
    doc_id = str(doc_id)
    if len(doc_id) > limits.DOC_ID_CHARS:
        raise ValueError(
            f"'_id' is {len(doc_id):,} characters, over the {limits.DOC_ID_CHARS:,}-character limit"
        )
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError("missing 'text' string")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise ValueError("'title' must be a string")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("'metadata' must be an object")
    if _too_deep(meta, limits.METADATA_DEPTH):
        raise ValueError(
            f"'metadata' is nested deeper than {limits.METADATA_DEPTH} levels (the limit)"
        )
    body = f"{title}\n{text}" if title and text else (title or text)
    metadata = dict(meta)
    if title:
        metadata.setdefault("title", title)
    return Document(doc_id=doc_id, text=body, metadata=metadata, source=where)


def _json_kind(obj: Any) -> str:
    names = {"list": "an array", "str": "a string", "int": "a number", "float": "a number"}
    return names.get(type(obj).__name__, "null" if obj is None else type(obj).__name__)


def read_jsonl(path: Path, skipped: list[Skipped]) -> Iterator[Document]:
    """Yield the documents of a BEIR-layout ``.jsonl`` file.

    Lines that are not valid JSON, not UTF-8, longer than
    :data:`~.limits.JSONL_LINE_BYTES`, nested too deeply, or lack an id or text are
    reported in ``skipped`` as ``file:line``; the other lines are still read.

    Raises:
        SourceError: the file cannot be opened at all, or is not a regular file.
    """
    try:
        reason = limits.not_a_file(path)
        if reason is not None:
            raise SourceError(f"source {path} is {reason} (sources[].path in the config)")
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError as e:
        raise SourceError(f"cannot open source {path}: {e.strerror}") from None
    with f:
        for lineno, raw in limits.capped_lines(f):
            where = f"{path}:{lineno}"
            if raw is None:
                line_cap = limits.human_bytes(limits.JSONL_LINE_BYTES)
                skipped.append(Skipped(where, f"line longer than {line_cap} (the limit)"))
                continue
            if not raw.strip():
                continue
            try:
                doc = _jsonl_document(json.loads(raw.decode("utf-8")), where=where)
                doc.content_hash  # noqa: B018 - fails on lone surrogates ("\\ud800"), early
            except UnicodeDecodeError as e:
                skipped.append(Skipped(where, f"not UTF-8 text (byte {e.start} of the line)"))
                continue
            except UnicodeEncodeError:
                skipped.append(Skipped(where, "text has unpaired surrogates (invalid Unicode)"))
                continue
            except RecursionError:
                skipped.append(
                    Skipped(
                        where,
                        "JSON nested far too deeply "
                        f"(metadata may nest {limits.METADATA_DEPTH} levels)",
                    )
                )
                continue
            except json.JSONDecodeError as e:
                skipped.append(Skipped(where, f"not valid JSON ({e.msg} at column {e.colno})"))
                continue
            except ValueError as e:
                skipped.append(Skipped(where, str(e).splitlines()[0]))
                continue
            if not doc.text.strip():
                skipped.append(Skipped(f"{where} ({doc.doc_id})", "empty text"))
                continue
            yield doc


# -- HTML --------------------------------------------------------------------------------------

#: Elements whose content is never rendered as text.
_HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object"})
#: Elements that end a paragraph (a blank line) or a line.
_PARAGRAPH = frozenset(
    {
        *(f"h{i}" for i in range(1, 7)),
        *("p", "div", "section", "article", "header", "footer", "main", "aside", "nav"),
        *("blockquote", "pre", "table", "ul", "ol", "dl", "figure", "form", "hr", "body"),
    }
)
_LINE = frozenset({"br", "li", "tr", "dt", "dd", "caption", "figcaption", "option"})
_CELL = frozenset({"td", "th"})
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "wbr"})


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._hidden = 0
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _VOID:
            self._boundary(tag)
            return
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag == "pre":
            self._pre += 1
        self._boundary(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._boundary(tag)  # <br/>, <hr/>: never opens a hidden element

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in _PARAGRAPH:
            self._boundary(tag)

    def _boundary(self, tag: str) -> None:
        if self._hidden:
            return
        if tag in _PARAGRAPH:
            self.parts.append("\n\n")
        elif tag in _LINE:
            self.parts.append("\n")
        elif tag in _CELL:
            self.parts.append("\t")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
            return
        if self._hidden:
            return
        self.parts.append(data if self._pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> tuple[str, str]:
    """The visible text of an HTML page, and its ``<title>``.

    Block elements become line or paragraph breaks; ``script``, ``style``, ``head`` and other
    non-rendered elements are dropped; entities are decoded.

    Example:
        >>> html_to_text("<title>T</title><p>a &amp; b</p><script>x()</script><p>c</p>")
        ('a & b\\n\\nc', 'T')
    """
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text, " ".join("".join(parser.title).split())


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def _decode_html(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        m = _META_CHARSET.search(raw[:4096])
        if m is None:
            raise ValueError(f"not UTF-8 text (byte {e.start}) and no <meta charset>") from None
        name = m.group(1).decode("ascii")
        try:
            codecs.lookup(name)
            return raw.decode(name)
        except (LookupError, UnicodeDecodeError):
            raise ValueError(f"cannot decode as its declared charset {name!r}") from None


# -- files -------------------------------------------------------------------------------------


def _check_binary(raw: bytes) -> None:
    if b"\0" in raw[:8192]:
        raise ValueError("binary file")


def _read_bytes(path: Path) -> bytes:
    """A source file's bytes: regular files only, at most SOURCE_FILE_BYTES (else ValueError)."""
    reason = limits.not_a_file(path)
    if reason is not None:
        raise ValueError(reason)
    cap = limits.SOURCE_FILE_BYTES
    if path.stat().st_size > cap:
        raise ValueError(f"larger than {limits.human_bytes(cap)} (the limit)")
    raw = limits.read_capped(path, cap)
    if raw is None:
        raise ValueError(f"larger than {limits.human_bytes(cap)} (the limit)")
    return raw


def _read_text_file(path: Path) -> tuple[str, dict[str, Any]]:
    raw = _read_bytes(path)
    _check_binary(raw)
    try:
        return raw.decode("utf-8"), {}
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None


def _read_html_file(path: Path) -> tuple[str, dict[str, Any]]:
    raw = _read_bytes(path)
    _check_binary(raw)
    text, title = html_to_text(_decode_html(raw))
    return text, ({"title": title} if title else {})


def _read_pdf_file(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        from llama_index.readers.file import PDFReader
    except ImportError:
        raise ValueError(PDF_INSTALL_HINT) from None
    _read_bytes(path)  # the same checks (regular file, size cap) before the parser opens it
    try:
        pages = PDFReader().load_data(file=path)
    except Exception as e:  # a third-party parser: any failure skips this one file
        raise ValueError(f"PDF could not be read: {type(e).__name__}: {e}") from None
    text = "\n\n".join(p.text.strip() for p in pages if p.text and p.text.strip())
    return text, {"pages": len(pages)}


_READERS: dict[str, Callable[[Path], tuple[str, dict[str, Any]]]] = {
    **dict.fromkeys(HTML_SUFFIXES, _read_html_file),
    **dict.fromkeys(PDF_SUFFIXES, _read_pdf_file),
}


def _read_file(path: Path, root: Path) -> Document:
    read = _READERS.get(path.suffix.lower(), _read_text_file)
    text, extra = read(path)
    if not text.strip():
        raise ValueError("empty file" if path.stat().st_size == 0 else "no text in the file")
    rel = path.relative_to(root).as_posix()
    return Document(doc_id=rel, text=text, metadata={"file_path": rel, **extra}, source=str(path))


def read_directory(
    root: Path,
    skipped: list[Skipped],
    *,
    glob: str | None = None,
    follow_symlinks: bool = False,
) -> Iterator[Document]:
    """Yield the documents under ``root`` in a stable (sorted) order.

    Without ``glob``, files with a known suffix are read (see :data:`READABLE_SUFFIXES`) and
    others are ignored; with ``glob``, every matching file is read as text (or HTML/PDF by its
    suffix). Hidden files and directories are ignored. Unreadable files go to ``skipped``, and
    so does a file whose real path (symlinks resolved) is outside ``root``, unless
    ``follow_symlinks``.
    """
    real_root = root.resolve()
    paths = sorted(root.glob(glob)) if glob else sorted(root.rglob("*"))
    for p in paths:
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if glob is None and p.suffix.lower() not in READABLE_SUFFIXES:
            continue
        try:
            if p.is_dir():
                continue
            if not p.is_file():  # a FIFO, a device, a socket, a dangling or looping symlink
                reason = _special_file(p)
                if reason is not None:
                    skipped.append(Skipped(p.relative_to(root).as_posix(), reason))
                continue
            if not follow_symlinks and not p.resolve().is_relative_to(real_root):
                skipped.append(Skipped(p.relative_to(root).as_posix(), OUTSIDE_ROOT))
                continue
            yield _read_file(p, root)
        except (ValueError, OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            skipped.append(Skipped(p.relative_to(root).as_posix(), reason))


#: Why a symlink out of a source directory is skipped.
OUTSIDE_ROOT = (
    "a symlink to a file outside the source directory, not read "
    "(set sources[].follow_symlinks: true to read it)"
)


def _special_file(p: Path) -> str | None:
    try:
        return limits.not_a_file(p)
    except OSError as e:
        if not p.is_symlink():
            return e.strerror or str(e)
        return "a symlink that loops" if e.errno == errno.ELOOP else "a dangling symlink"


def glob_escape(name: str) -> str:
    """A file name as a glob pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def read_sources(sources: Iterable[SourceConfig], skipped: list[Skipped]) -> Iterator[Document]:
    """Yield the documents of every source; unreadable documents go to ``skipped``.

    Raises:
        SourceError: a source path does not exist, or two documents share an id.
    """
    seen: set[str] = set()
    for src in sources:
        path = Path(src.path)
        if path.is_dir():
            docs = read_directory(path, skipped, glob=src.glob, follow_symlinks=src.follow_symlinks)
        elif path.is_file():
            if path.suffix.lower() == ".jsonl":
                docs = read_jsonl(path, skipped)
            else:
                # A file named in the config is read wherever it links to.
                docs = read_directory(
                    path.parent, skipped, glob=glob_escape(path.name), follow_symlinks=True
                )
        else:
            raise SourceError(limits.source_problem(path))
        for doc in docs:
            if doc.doc_id in seen:
                raise SourceError(
                    f"duplicate document id {doc.doc_id!r} (in {doc.source}): ids must be unique "
                    "across all sources"
                )
            seen.add(doc.doc_id)
            yield doc
