"""Caps on what gl_retrieval reads, in one place: far above any real input, far below harm.

Also the few helpers that read within them (a capped file read, capped lines, what kind of
non-file a path is). This module imports nothing of gl_retrieval, so any stage can use it.

Every input path checks its own cap and says which one it hit, naming the file (or key) and the
limit, so a hostile or broken input costs bounded time and memory and gets one clear line.

===========================  ==============  =================================================
cap                          value           where it is checked
===========================  ==============  =================================================
``CONFIG_BYTES``             1 MiB           :func:`gl_retrieval.config.load_config`
``CONFIG_DEPTH``             32 levels       YAML nesting, while composing (and dict configs)
``CONFIG_VALUES``            100,000         values after YAML alias expansion ("billion laughs")
``CONFIG_NODES``             10,000          YAML values as written (composing them is pure Python)
``JSONL_LINE_BYTES``         16 MiB          one line of a ``.jsonl`` source or BEIR file
``SOURCE_FILE_BYTES``        256 MiB         one source file (larger ones are skipped by name)
``METADATA_DEPTH``           8 levels        nesting of a source document's ``metadata``
``DOC_ID_CHARS``             1,024           a document id
``QUERY_CHARS``              10,000          one query
``FILTER_CHARS``             4,096           one filter string
``FILTERS``                  100             filters in one query
``TOP_K``                    10,000          candidates per query (``retriever.top_k``)
``QRELS_BYTES``              256 MiB         a BEIR ``qrels/<split>.tsv`` or ``queries.jsonl``
``CANDIDATE_K``              100,000         ``retriever.candidate_k``
``MAX_TOKENS``               131,072         ``max_length``, ``num_ctx``, ``chunk_size``
``TIMEOUT_S``                3,600 s         every ``timeout_s`` (an infinite one is a hang)
===========================  ==============  =================================================

Example:
    >>> from gl_retrieval.config import limits
    >>> limits.CONFIG_BYTES
    1048576
    >>> limits.human_bytes(limits.JSONL_LINE_BYTES)
    '16 MiB'
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CANDIDATE_K",
    "CONFIG_BYTES",
    "CONFIG_DEPTH",
    "CONFIG_NODES",
    "CONFIG_VALUES",
    "DOC_ID_CHARS",
    "FILTERS",
    "FILTER_CHARS",
    "JSONL_LINE_BYTES",
    "MAX_TOKENS",
    "METADATA_DEPTH",
    "QRELS_BYTES",
    "QUERY_CHARS",
    "SOURCE_FILE_BYTES",
    "TIMEOUT_S",
    "TOP_K",
    "capped_lines",
    "human_bytes",
    "not_a_file",
    "read_capped",
    "source_problem",
]

MiB = 1024 * 1024

CONFIG_BYTES = 1 * MiB
CONFIG_DEPTH = 32
CONFIG_VALUES = 100_000
CONFIG_NODES = 10_000
JSONL_LINE_BYTES = 16 * MiB
SOURCE_FILE_BYTES = 256 * MiB
METADATA_DEPTH = 8
DOC_ID_CHARS = 1_024
QUERY_CHARS = 10_000
FILTER_CHARS = 4_096
FILTERS = 100
TOP_K = 10_000
QRELS_BYTES = 256 * MiB
CANDIDATE_K = 100_000
MAX_TOKENS = 131_072
TIMEOUT_S = 3_600


def human_bytes(n: int) -> str:
    """``1048576`` -> ``'1 MiB'``; used in messages so limits read the same everywhere."""
    for unit, size in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def not_a_file(path: os.PathLike[str] | str) -> str | None:
    """Why ``path`` is not a regular file we may read (a FIFO would block, a device never ends).

    Returns ``None`` for a regular file (symlinks followed), else a short reason such as
    ``"a named pipe (FIFO), not a regular file"``. Raises ``OSError`` when it cannot be stat'ed.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "not a regular file"


def read_capped(path: os.PathLike[str] | str, cap: int) -> bytes | None:
    """The bytes of a regular file, or ``None`` when it holds more than ``cap`` bytes.

    Reads at most ``cap + 1`` bytes, so a file that grows while being read costs no more, and
    allocates by the file's size, not by the cap.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        parts = [f.read(min(size, cap) + 1)]
        total = len(parts[0])
        while parts[-1] and total <= cap:  # it grew: keep reading, a MiB at a time
            parts.append(f.read(min(MiB, cap + 1 - total)))
            total += len(parts[-1])
    return None if total > cap else b"".join(parts)


def capped_lines(f: BinaryIO, cap: int = JSONL_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` of a binary file, reading at most ``cap + 1`` bytes at a time;
    a line longer than ``cap`` comes back as ``None`` (and is read past, not kept)."""
    lineno = 0
    while True:
        raw = f.readline(cap + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > cap and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the line, in bounded reads
                raw = f.readline(cap + 1)
            yield lineno, None
            continue
        yield lineno, raw


def source_problem(path: Path) -> str:
    """Why a configured source path cannot be read: missing, or not a file or directory."""
    try:
        reason = not_a_file(path)
    except FileNotFoundError:
        return f"source {path} does not exist (sources[].path in the config)"
    except OSError as e:
        return f"source {path} cannot be read: {e.strerror} (sources[].path in the config)"
    return f"source {path} is {reason or 'unreadable'} (sources[].path in the config)"
