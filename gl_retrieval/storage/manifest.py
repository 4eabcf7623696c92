"""The manifest: what built an index, written beside it as JSON and checked on every load."""

from __future__ import annotations

import json
import logging
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

#: How the same model's vectors were computed (torch | onnx | openvino; fp32 | fp16 | bf16 |
#: int8). Manifests from before backends existed mean torch, fp32.
RUNTIME_KEYS = {"backend": "torch", "precision": "fp32"}

#: Whether documents and queries of one model may come from different backends or precisions.
#: Allowed, with a one-line notice, on an earlier measurement (fp32 documents, int8 queries:
#: nDCG@10 loss <= 0.002). The re-measurement (bench/backends.py, the `_fp32_docs` rows) did not
#: finish in this session; see docs/performance.md. Set False to refuse it as a mismatch.
MIXED_RUNTIME_ALLOWED = True

log = logging.getLogger("gl_retrieval")
_noticed: set[tuple[str, str, str]] = set()


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
    #: Metadata key -> the kinds of value the index holds under it (sorted; see
    #: :func:`gl_retrieval.storage.filters.kind`), so filters are checked before any model loads.
    #: Recorded at commit by the embedded backend; None in older indexes and on Postgres, which
    #: read it from the data instead (:meth:`~gl_retrieval.storage.base.Storage.metadata_schema`).
    metadata_schema: dict[str, list[str]] | None = None

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
    same_model = not diffs and "model" in embedder
    runtime = [
        (key, manifest.embedder.get(key, default), embedder[key])
        for key, default in RUNTIME_KEYS.items()
        if key in embedder and embedder[key] != manifest.embedder.get(key, default)
    ]
    if runtime and same_model and MIXED_RUNTIME_ALLOWED:
        built = "/".join(str(old) for _, old, _ in runtime)
        now = "/".join(str(new) for _, _, new in runtime)
        if (where, built, now) not in _noticed:
            _noticed.add((where, built, now))
            log.warning(
                "notice: the index at %s was embedded with %s and is queried with %s (same "
                "model; allowed: see docs/performance.md)",
                where,
                built,
                now,
            )
    elif runtime:
        diffs += [
            f"embedder.{k}: index has {_show(old)}, config has {_show(new)}"
            for k, old, new in runtime
        ]
    if chunking is not None:
        diffs.extend(chunking_differences(manifest, chunking))
    if diffs:
        raise IndexMismatchError(
            f"the index at {where} was built differently than the config asks: "
            + "; ".join(diffs)
            + ". Rebuild it with `gl-retrieval index CONFIG --rebuild` (re-embeds everything), "
            "or point storage at another location"
        )
