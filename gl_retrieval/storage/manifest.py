"""The manifest: what built an index, written beside it as JSON and checked on every load."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from gl_retrieval.errors import IndexMismatchError

__all__ = [
    "MANIFEST_FORMAT",
    "Manifest",
    "check_compatible",
    "chunking_differences",
    "package_versions",
]

MANIFEST_FORMAT = 1

#: Embedder keys that change the vectors; any difference makes an index unusable.
EMBEDDER_KEYS = ("provider", "model", "revision", "query_prefix", "document_prefix", "normalize")


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes an index."""
    out = {}
    for dist in ("gl-retrieval", "llama-index-core", "sentence-transformers", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """What built an index: embedder fingerprint, chunking, versions and counts."""

    embedder: dict[str, Any]
    chunking: dict[str, Any]
    retrieval: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    documents: int = 0
    chunks: int = 0
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """From a parsed manifest; keys this version does not know are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))


def _show(value: Any) -> str:
    return repr(value) if value not in (None, "") else ("none" if value is None else "''")


def chunking_differences(manifest: Manifest, chunking: dict[str, Any]) -> list[str]:
    """How the configured chunking differs from the one that built the index (empty: same)."""
    diffs = []
    for key in ("chunk_size", "chunk_overlap"):
        stored = manifest.chunking.get(f"configured_{key}", manifest.chunking.get(key))
        if key in chunking and stored is not None and chunking[key] != stored:
            diffs.append(f"chunking.{key}: index has {stored}, config has {chunking[key]}")
    return diffs


def check_compatible(
    manifest: Manifest,
    *,
    embedder: dict[str, Any],
    chunking: dict[str, Any] | None,
    where: str,
) -> None:
    """Raise :class:`IndexMismatchError` when the index was built differently than configured.

    Args:
        manifest: The stored manifest.
        embedder: The configured embedder's fingerprint; ``dimension`` is compared when present.
        chunking: The configured chunking (``chunk_size``, ``chunk_overlap``), or None to skip.
        where: The index location, for the message.
    """
    diffs = []
    for key in (*EMBEDDER_KEYS, "dimension"):
        if key not in embedder or key not in manifest.embedder:
            continue
        if embedder[key] != manifest.embedder[key]:
            diffs.append(
                f"embedder.{key}: index has {_show(manifest.embedder[key])}, "
                f"config has {_show(embedder[key])}"
            )
    if chunking is not None:
        diffs.extend(chunking_differences(manifest, chunking))
    if diffs:
        raise IndexMismatchError(
            f"the index at {where} was built differently than the config asks: "
            + "; ".join(diffs)
            + ". Rebuild it with `gl-retrieval index CONFIG --rebuild` (re-embeds everything), "
            "or point storage at another location"
        )
