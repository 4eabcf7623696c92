"""Crash-safe file writing and a lazily decoded JSON-array file format.

Every file is written to a temporary name in the target directory, flushed, ``fsync``-ed and
only then renamed over its final name with :func:`os.replace`, so a crash can leave a stray
temporary file but never a half-written file under a complete-looking name.

The JSON-rows format stores one JSON value per row as a single JSON array (one element per line,
so the file is readable and ``json.loads`` parses it whole at C speed) plus a ``(n, 2)`` int64
``.npy`` of byte spans, so one row can also be decoded alone straight from a memory map.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gl_retrieval.errors import IndexDamagedError, IndexNotFoundError, StorageError
from gl_retrieval.storage.integrity import read_json

__all__ = [
    "MANIFEST",
    "Generation",
    "JsonRows",
    "atomic_write",
    "dumps",
    "fsync_dir",
    "open_generation",
    "write_json_rows",
    "write_npy_chunks",
]

_UNDECODED = object()
MANIFEST = "manifest.json"
# a generation's files (role.<12 hex>.ext) and the temporary files a crash can leave behind
_GENERATION_FILE = re.compile(r"^\.?[a-z_]+\.[0-9a-f]{12}\.[a-z]+(\.[0-9a-f]{8})?(\.tmp)?$")


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> int:
    """Write a file via a temporary file, ``fsync`` and :func:`os.replace`.

    Args:
        path: Final file name.
        write: Called with the open temporary file (binary mode).

    Returns:
        The size of the written file in bytes.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so that renames inside it survive a power loss (no-op on Windows)."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_npy_chunks(f: BinaryIO, chunks: Iterable[np.ndarray], *, shape: tuple[int, ...]) -> None:
    """Write a float32 C-order ``.npy`` file from row chunks without building the whole array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
    np.lib.format.write_array_header_2_0(f, {**header, "shape": shape})
    for chunk in chunks:
        f.write(memoryview(np.ascontiguousarray(chunk, dtype="<f4")))  # no bytes copy


def write_json_rows(f: BinaryIO, rows: Iterable[bytes]) -> np.ndarray:
    """Write encoded JSON values as one JSON array, one per line.

    Returns:
        The ``(n, 2)`` int64 byte spans ``[start, end)`` of every row in the file.
    """
    spans = array.array("q")  # 16 bytes a row, not a tuple of two ints (~90)
    pos = f.write(b"[")
    for i, raw in enumerate(rows):
        if i:
            pos += f.write(b",")
        pos += f.write(b"\n")
        spans.append(pos)
        spans.append(pos + len(raw))
        pos += f.write(raw)
    f.write(b"\n]\n")
    return np.frombuffer(spans, dtype=np.int64).reshape(-1, 2).copy()


class JsonRows:
    """A list of JSON values, each kept encoded until it is needed decoded.

    Rows read from disk stay as bytes in a memory map; rows appended in memory are kept as their
    encoded bytes. :meth:`raw` never decodes (so persisting a loaded store copies bytes), while
    :meth:`decoded` decodes and caches (used for metadata that filters scan).
    """

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._blob: mmap.mmap | None = None
        self._spans: np.ndarray | None = None
        self._on_disk = 0  # rows [0, _on_disk) came from the file

    @classmethod
    def open(cls, path: Path, *, spans: np.ndarray) -> JsonRows:
        """Map a file written by :func:`write_json_rows`; nothing is decoded yet."""
        rows = cls()
        rows._items = [_UNDECODED] * len(spans)
        if len(spans):
            with open(path, "rb") as f:
                rows._blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        rows._spans = spans
        rows._on_disk = len(spans)
        return rows

    def __len__(self) -> int:
        return len(self._items)

    def append(self, raw: bytes) -> None:
        """Add an encoded row at the end."""
        self._items.append(raw)

    def raw(self, i: int) -> bytes:
        """The row's JSON text, without decoding it."""
        item = self._items[i]
        if item is _UNDECODED:
            start, end = self._spans[i]  # type: ignore[index]
            return self._blob[start:end]  # type: ignore[index]
        if isinstance(item, bytes):
            return item
        return dumps(item)

    def load(self, i: int) -> Any:
        """A freshly decoded copy of the row (the caller may mutate it)."""
        return json.loads(self.raw(i))

    def decoded(self) -> list[Any]:
        """Every row decoded and cached (the file part in one ``json.loads``)."""
        items = self._items
        if self._on_disk and items[0] is _UNDECODED and self._blob is not None:
            items[: self._on_disk] = json.loads(self._blob[:])
        for i, item in enumerate(items):
            if item is _UNDECODED or isinstance(item, bytes):
                items[i] = json.loads(self.raw(i))
        return items

    def iter_raw(self, rows: Iterable[int]) -> Iterator[bytes]:
        """JSON text of the given rows, in order."""
        return (self.raw(int(i)) for i in rows)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class Generation:
    """One crash-safe write of a directory: data files first, ``manifest.json`` last.

    Every file name carries the generation id, so writing never touches the files the current
    manifest names; :meth:`commit` replaces the manifest (the atomic switch) and then deletes the
    files of older generations.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.id = uuid.uuid4().hex[:12]
        self.files: dict[str, dict[str, Any]] = {}
        out.mkdir(parents=True, exist_ok=True)

    def path(self, role: str, ext: str) -> Path:
        """Where the file of ``role`` goes (for writers that need a file name)."""
        return self.out / f"{role}.{self.id}.{ext}"

    def add(self, role: str, path: Path, size: int) -> None:
        """Record a file written at :meth:`path` by someone else, crash-safely."""
        self.files[role] = {"name": path.name, "bytes": size}

    def put(self, role: str, ext: str, write: Callable[[BinaryIO], Any]) -> None:
        """Write the file of ``role`` crash-safely."""
        path = self.path(role, ext)
        self.add(role, path, atomic_write(path, write))

    def put_npy(self, role: str, array: np.ndarray) -> None:
        """Write an array as ``.npy`` (never pickled)."""
        self.put(role, "npy", lambda f: np.save(f, array, allow_pickle=False))

    def put_json_rows(self, role: str, rows: Iterable[bytes]) -> None:
        """Write encoded JSON rows (see :func:`write_json_rows`) and their spans."""
        spans: list[np.ndarray] = []
        self.put(role, "json", lambda f: spans.append(write_json_rows(f, rows)))
        self.put_npy(f"{role}_spans", spans[0])

    def commit(self, manifest: dict[str, Any]) -> None:
        """Write the manifest (naming this generation's files), then remove older files."""
        manifest = {**manifest, "generation": self.id, "files": self.files}
        atomic_write(
            self.out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode())
        )
        fsync_dir(self.out)
        keep = {spec["name"] for spec in self.files.values()}
        for path in self.out.iterdir():
            if _GENERATION_FILE.match(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)


def open_generation(
    root: Path, *, format: str, version: int
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read and check the manifest of a directory written by :class:`Generation`.

    Returns:
        The manifest and the path of every file role.

    Raises:
        IndexNotFoundError: The directory has no manifest.
        StorageError: Another format or version.
        IndexDamagedError: The manifest is unreadable, or a file is missing or has the wrong size.
    """
    if not (root / MANIFEST).is_file():
        raise IndexNotFoundError(f"no index at {root} (no {MANIFEST}); build and persist one")
    manifest = read_json(root / MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        problem = "it is not a vector store manifest (no file table)"
        raise IndexDamagedError(
            f"{root / MANIFEST}: {problem}; rebuild the index",
            path=str(root / MANIFEST),
            problem=problem,
        )
    if manifest.get("format") != format or manifest.get("version") != version:
        raise StorageError(
            f"{root / MANIFEST} is format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}, but this gl_retrieval reads {format!r} version "
            f"{version}; rebuild the index"
        )
    paths = {}
    for role, spec in manifest["files"].items():
        path = root / str(spec.get("name"))
        size = path.stat().st_size if path.is_file() else None
        if size != spec.get("bytes"):
            problem = (
                "the file is missing"
                if size is None
                else f"it is {size} bytes, but was written as {spec.get('bytes')} bytes"
            )
            raise IndexDamagedError(
                f"{path} is damaged ({problem}); rebuild the index", path=str(path), problem=problem
            )
        paths[role] = path
    return manifest, paths
