"""Query / document prefixes per model family: data, not code.

sentence-transformers and Ollama embed exactly the text they are given, so a model trained with
instructions ("query: ", "search_document: ", ...) silently loses quality when they are missing.
The table below is the single place where they live. A config picks a family explicitly with
``embedder.preset`` or overrides the prefixes with ``query_prefix`` / ``document_prefix``; a hub id
or Ollama model name is matched against ``MATCHERS``. A local directory matches nothing unless the
config names a preset: a directory's name says nothing reliable about what is inside it.

Example:
    >>> from gl_retrieval.config.presets import resolve_prefixes
    >>> resolve_prefixes("intfloat/e5-base-v2")
    Prefixes(family='e5', query='query: ', document='passage: ')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MATCHERS", "PRESETS", "Prefixes", "match_family", "resolve_prefixes"]

_BGE_EN = "Represent this sentence for searching relevant passages: "
_BGE_ZH = "为这个句子生成表示以用于检索相关文章："

#: family -> (query prefix, document prefix)
PRESETS: dict[str, tuple[str, str]] = {
    "none": ("", ""),
    "bge": (_BGE_EN, ""),
    "bge-zh": (_BGE_ZH, ""),
    "e5": ("query: ", "passage: "),
    "nomic": ("search_query: ", "search_document: "),
    "gte": ("", ""),
    "mxbai": (_BGE_EN, ""),
    "arctic": (_BGE_EN, ""),
    "minilm": ("", ""),
}

#: (family, pattern on the lower-cased model name without any ``org/`` part or ``:tag``)
MATCHERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bge-zh", re.compile(r"^bge-(small|base|large)-zh(-v1\.5)?$")),
    ("bge", re.compile(r"^bge-(small|base|large)-en(-v1\.5)?$")),
    ("none", re.compile(r"^bge-m3$")),  # bge-m3 was trained without the instruction
    ("e5", re.compile(r"^(multilingual-)?e5-(small|base|large)(-v2)?$")),
    ("nomic", re.compile(r"^nomic-embed-text(-v1(\.5)?)?$")),
    ("gte", re.compile(r"^gte-(small|base|large)(-en-v1\.5)?$")),
    ("mxbai", re.compile(r"^mxbai-embed-(large|2d-large)(-v1)?$")),
    ("arctic", re.compile(r"^snowflake-arctic-embed(-[a-z0-9.]+)*$")),
    ("minilm", re.compile(r"^(all|paraphrase(-multilingual)?)-minilm-l(6|12)-v2$")),
)


@dataclass(frozen=True)
class Prefixes:
    """The prefixes one embedder applies, and the family they came from."""

    family: str
    query: str
    document: str


def match_family(model: str) -> str:
    """Return the preset family of a hub id or Ollama model name, or ``"none"``.

    A path to an existing local directory never matches: use ``embedder.preset`` for those.

    Args:
        model: A hub id (``BAAI/bge-base-en-v1.5``), an Ollama name (``nomic-embed-text:v1.5``),
            a ``packaged:`` name, or a local path.
    """
    if model.startswith("packaged:"):
        model = model.removeprefix("packaged:")
    elif Path(model).expanduser().exists():
        return "none"
    name = model.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    for family, pattern in MATCHERS:
        if pattern.match(name):
            return family
    return "none"


def resolve_prefixes(
    model: str,
    *,
    preset: str | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
) -> Prefixes:
    """Resolve the prefixes for a model: explicit values beat the preset, which beats matching.

    Args:
        model: Model name or path (see :func:`match_family`).
        preset: A key of :data:`PRESETS`; ``None`` means match by name.
        query_prefix: Overrides the preset's query prefix when not ``None`` (``""`` disables it).
        document_prefix: Overrides the preset's document prefix when not ``None``.

    Raises:
        KeyError: ``preset`` is not a key of :data:`PRESETS` (config validation prevents this).
    """
    family = preset if preset is not None else match_family(model)
    query, document = PRESETS[family]
    return Prefixes(
        family=family,
        query=query if query_prefix is None else query_prefix,
        document=document if document_prefix is None else document_prefix,
    )
