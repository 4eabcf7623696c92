"""The embedded backend: one directory, written as generations, switched atomically.

Layout::

    persist_dir/
      CURRENT            name of the live generation ("gen-000007"), replaced with os.replace
      gen-000007/        a complete StorageContext + manifest.json + documents.json
      .lock              held (flock) while an `index` run writes

A commit writes a whole new generation into a temporary directory, fsyncs it, renames it into
place and only then replaces ``CURRENT``. A crash (even ``kill -9``) at any point leaves
``CURRENT`` naming the last complete generation; leftovers are removed by the next commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.embeddings.base import BaseEmbedding

from gl_retrieval.errors import IndexNotFoundError, StorageError
from gl_retrieval.storage._files import atomic_write, fsync_dir
from gl_retrieval.storage.base import (
    DocRecord,
    IndexHandle,
    documents_from_json,
    documents_to_json,
    index_kwargs,
)
from gl_retrieval.storage.manifest import Manifest
from gl_retrieval.storage.vectors import VECTOR_STORE_FNAME, load_vector_store, new_vector_store

__all__ = ["LocalStorage", "atomic_write_text"]

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
DOCUMENTS = "documents.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    fsync_dir(path.parent)


class LocalStorage:
    """An index in a local directory (the embedded default backend)."""

    def __init__(self, persist_dir: Path) -> None:
        self.persist_dir = Path(persist_dir)
        self.location = str(self.persist_dir)

    # -- reading -------------------------------------------------------------------------------

    def current_generation(self) -> Path | None:
        """The directory of the committed generation, or None if nothing was committed."""
        try:
            name = (self.persist_dir / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        gen = self.persist_dir / name
        return gen if gen.is_dir() else None

    def exists(self) -> bool:
        return self.current_generation() is not None

    def _require_generation(self) -> Path:
        gen = self.current_generation()
        if gen is None:
            raise IndexNotFoundError(
                f"no index at {self.persist_dir}: run `gl-retrieval index CONFIG` first"
            )
        return gen

    def read_manifest(self) -> Manifest:
        gen = self._require_generation()
        return Manifest.from_json((gen / MANIFEST).read_text(encoding="utf-8"))

    def read_documents(self) -> dict[str, DocRecord]:
        gen = self._require_generation()
        return documents_from_json((gen / DOCUMENTS).read_text(encoding="utf-8"))

    def load(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        # A writer may commit and remove this generation while we read it: then read the new one.
        gen = self._require_generation()
        for _ in range(2):
            try:
                return self._load_generation(gen, embed_model=embed_model)
            except FileNotFoundError:
                newer = self.current_generation()
                if newer is None or newer == gen:
                    raise
                gen = newer
        return self._load_generation(gen, embed_model=embed_model)

    def _load_generation(self, gen: Path, *, embed_model: BaseEmbedding) -> IndexHandle:
        manifest = Manifest.from_json((gen / MANIFEST).read_text(encoding="utf-8"))
        vector_store = load_vector_store(gen)
        sc = StorageContext.from_defaults(persist_dir=str(gen), vector_store=vector_store)
        # embed_model is passed explicitly: without it LlamaIndex resolves Settings.embed_model.
        index = load_index_from_storage(sc, **index_kwargs(embed_model))
        if not isinstance(index, VectorStoreIndex):
            raise StorageError(f"{gen} holds a {type(index).__name__}, not a vector index")
        docs = documents_from_json((gen / DOCUMENTS).read_text(encoding="utf-8"))
        return IndexHandle(
            index=index, storage_context=sc, manifest=manifest, documents=docs, extras={"dir": gen}
        )

    def new(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        sc = StorageContext.from_defaults(vector_store=new_vector_store())
        index = VectorStoreIndex(nodes=[], storage_context=sc, **index_kwargs(embed_model))
        return IndexHandle(index=index, storage_context=sc, manifest=None)

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the directory's writer lock: one `index` run at a time per persist_dir."""
        self.persist_dir.mkdir(parents=True, exist_ok=True)
        with open(self.persist_dir / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageError(
                    f"another process is indexing into {self.persist_dir}; wait for it to finish"
                ) from None
            # The kernel drops a flock when its holder dies (even by kill -9), so holding it
            # means any temporary left here belongs to a dead writer.
            self._remove_temporaries()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def commit(self, handle: IndexHandle) -> None:
        if handle.manifest is None:
            raise StorageError("cannot commit an index without a manifest")
        self.persist_dir.mkdir(parents=True, exist_ok=True)
        current = self.current_generation()
        number = int(current.name.split("-")[1]) + 1 if current else 1
        name = f"gen-{number:06d}"
        tmp = self.persist_dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        handle.storage_context.persist(persist_dir=str(tmp), vector_store_fname=VECTOR_STORE_FNAME)
        for hook in handle.extras.get("persist_hooks", ()):
            hook(tmp)
        (tmp / DOCUMENTS).write_text(documents_to_json(handle.documents), encoding="utf-8")
        (tmp / MANIFEST).write_text(handle.manifest.to_json(), encoding="utf-8")
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        final = self.persist_dir / name
        shutil.rmtree(final, ignore_errors=True)  # a leftover of a crashed commit, never CURRENT
        os.rename(tmp, final)
        fsync_dir(self.persist_dir)
        atomic_write_text(self.persist_dir / CURRENT, name + "\n")
        handle.extras["dir"] = final
        self._remove_stale(keep=name)

    def _remove_temporaries(self) -> None:
        for p in self.persist_dir.iterdir():
            if p.name.startswith(".tmp-gen-") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".{CURRENT}.tmp-") and p.is_file():
                p.unlink(missing_ok=True)

    def _remove_stale(self, *, keep: str) -> None:
        for p in self.persist_dir.iterdir():
            if p.name == keep or not p.is_dir():
                continue
            if p.name.startswith(("gen-", ".tmp-gen-")):
                shutil.rmtree(p, ignore_errors=True)
