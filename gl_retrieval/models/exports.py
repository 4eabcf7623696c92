"""Exported models (ONNX, OpenVINO IR), built once and cached on disk.

An export lives in ``$GL_RETRIEVAL_CACHE/exports`` (default ``~/.cache/gl_retrieval/exports``),
in a directory named after the model, backend and quantization plus a hash of everything that
decides its contents: the model's files (a content key), its revision, the backend, the
quantization, the runtime's version and this module's export format. A changed model or an
upgraded runtime gets a new directory; nothing is ever overwritten in place.

Atomic: an export is written to a temporary sibling directory, a ``complete`` marker is written
last, and the directory is renamed into place with ``os.replace``. A crash leaves only a
``.tmp-*`` directory that is never loaded (and is swept on the next export). Loading only ever
reads a directory that has the marker, so a second process, offline, loads it without exporting.

Why not sentence-transformers' ``backend="onnx"/"openvino"``: that path needs ``optimum``, whose
releases here would downgrade transformers (5.x → 4.57) or pull a CUDA torch. The export below
uses the same pieces optimum uses, directly: ``torch.onnx.export`` of the Hugging Face model,
``onnxruntime.quantization.quantize_dynamic`` for ONNX int8, ``openvino.convert_model`` of that
ONNX graph, and ``nncf.quantize`` (static int8, calibrated on the bundled demo corpus) for
OpenVINO int8. Exporting needs torch; loading an export does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gl_retrieval._deps import require
from gl_retrieval.errors import ModelLoadError
from gl_retrieval.models.weights import resolve_model_path

if TYPE_CHECKING:
    from gl_retrieval.config import PipelineConfig

__all__ = [
    "EXPORT_FORMAT",
    "ExportSpec",
    "configured_exports",
    "ensure_export",
    "exports_dir",
    "find_export",
    "list_exports",
    "model_file",
    "read_meta",
    "spec_dict",
]

EXPORT_FORMAT = 1
Kind = Literal["embedder", "reranker"]
_MARKER = "complete"
_SMALL = 1 << 20  # files up to 1 MiB are hashed by content; larger ones by name, size, mtime
_COPIED = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
_RUNTIME_DIST = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "nncf", "onnx")}
_EXTRA_DIST = {"onnx": "onnx", "openvino": "openvino"}


def exports_dir() -> Path:
    """``$GL_RETRIEVAL_CACHE/exports``, else ``~/.cache/gl_retrieval/exports``."""
    base = os.environ.get("GL_RETRIEVAL_CACHE") or os.path.join("~", ".cache", "gl_retrieval")
    return Path(base).expanduser() / "exports"


@dataclass(frozen=True)
class ExportSpec:
    """What to export: a model (as the config names it), its role, the backend and quantization."""

    model: str
    kind: Kind
    backend: Literal["onnx", "openvino"]
    quantization: Literal["none", "int8", "auto"] = "none"
    revision: str | None = None

    @property
    def weights(self) -> str:
        """What the exported file holds: ``int8`` or ``fp32`` (auto precision is a runtime hint)."""
        return "int8" if self.quantization == "int8" else "fp32"


def configured_exports(cfg: PipelineConfig) -> list[ExportSpec]:
    """The exports a config's embedder and reranker name (none for torch or Ollama; ``auto``'s
    are built where it settles, :meth:`RetrievalPipeline.backends`)."""
    out = []
    emb = cfg.embedder
    if emb.provider == "huggingface" and emb.backend not in ("torch", "auto"):
        out.append(ExportSpec(emb.model, "embedder", emb.backend, emb.quantization, emb.revision))
    rr = cfg.reranker
    if rr is not None and rr.backend not in ("torch", "auto"):
        out.append(ExportSpec(rr.model, "reranker", rr.backend, rr.quantization, rr.revision))
    return out


def _versions(backend: str) -> dict[str, str]:
    out = {}
    for dist in _RUNTIME_DIST[backend]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _content_key(path: Path) -> str:
    """Hash of a model directory: small files by content, weights by name, size and mtime."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts)
    for p in files:
        st = p.stat()
        h.update(str(p.relative_to(path)).encode())
        if st.st_size <= _SMALL:
            h.update(p.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _slug(model: str) -> str:
    tail = model.removeprefix("packaged:").rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail)[:60] or "model"


def _key(spec: ExportSpec, source: Path) -> tuple[str, dict[str, Any]]:
    ident = {
        "model": spec.model,
        "kind": spec.kind,
        "revision": spec.revision,
        "content": _content_key(source),
        "backend": spec.backend,
        "weights": spec.weights,
        "versions": _versions(spec.backend),
        "format": EXPORT_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return f"{_slug(spec.model)}-{spec.kind}-{spec.backend}-{spec.weights}-{digest}", ident


def model_file(export: Path) -> Path:
    """The model file inside an export directory (``model.onnx`` or ``model.xml``)."""
    for name in ("model.xml", "model.onnx"):
        if (export / name).exists():
            return export / name
    raise ModelLoadError(f"export {export} holds no model.onnx or model.xml: delete it")


def find_export(spec: ExportSpec) -> Path | None:
    """The cached, complete export for ``spec``, or None. Never exports, never uses the network
    beyond what resolving the model's path does (nothing, for a cached or local model)."""
    source = Path(resolve_model_path(spec.model, revision=spec.revision, role=spec.kind))
    name, _ = _key(spec, source)
    found = exports_dir() / name
    return found if (found / _MARKER).exists() else None


def ensure_export(spec: ExportSpec, *, log: Callable[[str], None] | None = None) -> Path:
    """Return the cached export for ``spec``, building it first when there is none.

    Raises:
        MissingDependencyError: the backend's extra (or torch, to export) is not installed.
        ModelLoadError: the model cannot be loaded or exported.
    """
    source = Path(resolve_model_path(spec.model, revision=spec.revision, role=spec.kind))
    name, ident = _key(spec, source)
    root = exports_dir()
    final = root / name
    if (final / _MARKER).exists():
        return final
    for dist in _RUNTIME_DIST[spec.backend]:
        require(dist, extra=_EXTRA_DIST[spec.backend])
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.perf_counter()
    if log:
        log(f"exporting {spec.model} ({spec.kind}) to {spec.backend} {spec.weights} ...")
    try:
        info = _build(spec, source, tmp)
        meta = {
            **ident,
            **info,
            "source": str(source),
            "export_seconds": round(time.perf_counter() - started, 2),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "exporter": _exporter_versions(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        (tmp / _MARKER).write_text("ok\n")
        _fsync_tree(tmp)
        if (final / _MARKER).exists():  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover without the marker
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log:
        log(f"exported to {final} in {time.perf_counter() - started:.1f}s")
    return final


def list_exports() -> list[dict[str, Any]]:
    """Every complete export in the cache, with its meta.json (``models list``)."""
    root = exports_dir()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d / _MARKER).exists():
            continue
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        out.append({"path": str(d), "bytes": size, **meta})
    return out


def _sweep(root: Path, *, older_than_s: float = 3600.0) -> None:
    """Remove temporary directories of crashed exports (older than an hour)."""
    now = time.time()
    for d in root.glob(".tmp-*"):
        try:
            if now - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exporter_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "sentence-transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# -- building -----------------------------------------------------------------------------------


def _transformer_dir(source: Path) -> Path:
    """Where a sentence-transformers model keeps its Transformer module (usually the root)."""
    modules = source / "modules.json"
    if modules.exists():
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith("Transformer"):
                return source / m.get("path", "")
    return source


def _build(spec: ExportSpec, source: Path, out: Path) -> dict[str, Any]:
    from gl_retrieval.models.export_build import build_export

    try:
        # The exporters print progress on stdout (nncf's bars): stdout belongs to `--json`.
        with contextlib.redirect_stdout(sys.stderr):
            return build_export(spec, _transformer_dir(source), source, out, copied=_COPIED)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(
            f"could not export {spec.model!r} ({spec.kind}) to {spec.backend}: {e}"
        ) from e


def read_meta(export: Path) -> dict[str, Any]:
    """The meta.json of an export directory."""
    return json.loads((export / "meta.json").read_text())


def spec_dict(spec: ExportSpec) -> dict[str, Any]:
    """``spec`` as JSON-able data."""
    return asdict(spec)
