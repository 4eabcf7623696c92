"""The embedded backend: one directory, written as generations, switched atomically.

Layout::

    persist_dir/
      CURRENT                     name of the live generation, replaced with os.replace
      gen-000007-1f2e3d4c/        a complete StorageContext + BM25 side + documents.json, and
                                  manifest.json (written last: the checksum of every other file)
      gen-000006-0a9b8c7d/        the previous generation, kept for readers and for falling back
      .lock                       held (flock) while an `index` run writes

A commit writes a whole new generation into a temporary directory (vectors, BM25 side, document
table, then the manifest with every file's size and checksum), fsyncs it, renames it into place
and only then replaces ``CURRENT``. A crash (even ``kill -9``) at any point leaves ``CURRENT``
naming the last complete generation; leftovers are removed by the next commit.

Readers hold a shared ``flock`` on the directory of the generation they loaded (a *lease*, for
as long as the loaded index lives). A commit keeps the current and the previous generation and
removes older ones only when no reader holds them, so a reader never loses files under it. Every
load checks the files against the manifest (:mod:`gl_retrieval.storage.integrity`); damage
raises :class:`~gl_retrieval.errors.IndexDamagedError` naming the file and the way back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import xxhash
from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.vector_stores.types import (
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from gl_retrieval.errors import IndexDamagedError, IndexNotFoundError, StorageError
from gl_retrieval.storage._files import atomic_write, fsync_dir
from gl_retrieval.storage.base import (
    DocRecord,
    GenerationCheck,
    IndexHandle,
    Storage,
    documents_to_json,
    index_kwargs,
)
from gl_retrieval.storage.integrity import (
    ALGORITHM,
    Problem,
    check_files,
    check_seal,
    parse_json,
    read_json,
    record_files,
    seal,
)
from gl_retrieval.storage.manifest import Manifest
from gl_retrieval.storage.vectors import VECTOR_STORE_FNAME, load_vector_store, new_vector_store

if TYPE_CHECKING:
    from gl_retrieval.storage.embedded import EmbeddedVectorStore

__all__ = ["LocalStorage", "atomic_write_text"]

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
DOCUMENTS = "documents.json"
#: gen-<number>[-<first 8 hex of the manifest digest>]; names without the digest are older.
_NAME = re.compile(r"^gen-(\d{6,})(?:-([0-9a-f]{8}))?$")
#: How often a reader retries when a writer moved CURRENT on while it was reading.
_ATTEMPTS = 5

T = TypeVar("T")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    fsync_dir(path.parent)


class _Lease:
    """A shared flock on a generation directory: a writer does not remove it while held."""

    def __init__(self, gen: Path) -> None:
        fd = os.open(gen, os.O_RDONLY)  # FileNotFoundError: a writer removed it already
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            # A writer renames a generation away (holding LOCK_EX) before deleting it.
            if os.stat(gen).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(f"{gen} was replaced")
        except BaseException:
            os.close(fd)
            raise
        self.path = gen
        self._close = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._close()


class LocalStorage(Storage):
    """An index in a local directory (the embedded default backend).

    Args:
        persist_dir: The index directory.
        verify: What every load checks: ``"checksums"`` (default: every file's size and
            checksum; about 0.1 s per 100k chunks, see docs/operations.md) or ``"sizes"``
            (sizes, JSON and NaN checks only; ``gl-retrieval verify`` still checks everything).
            Loads for an ``index`` run (under the write lock) always check checksums.
        keep_previous: Keep the previous generation after a commit (for readers still on it,
            and to fall back to); older ones are removed once no reader holds them.
    """

    def __init__(
        self,
        persist_dir: Path,
        *,
        verify: Literal["checksums", "sizes"] = "checksums",
        keep_previous: bool = True,
    ) -> None:
        self.persist_dir = Path(persist_dir)
        self.location = str(self.persist_dir)
        self.verify_on_load = verify
        self.keep_previous = keep_previous
        self._writing = False

    # -- generations ---------------------------------------------------------------------------

    def generations(self) -> list[Path]:
        """Generation directories on disk, oldest first (complete ones; not necessarily intact)."""
        try:
            entries = list(self.persist_dir.iterdir())
        except FileNotFoundError:
            return []
        gens = [p for p in entries if _NAME.match(p.name) and p.is_dir()]
        return sorted(gens, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]

    def current_generation(self) -> Path | None:
        """The directory of the committed generation, or None if nothing was committed.

        Raises:
            IndexDamagedError: ``CURRENT`` is unreadable or names no generation on disk.
        """
        path = self.persist_dir / CURRENT
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            gens = self.generations()
            if not gens:
                return None
            raise self._damaged(path, f"it is missing, but {gens[-1].name} is on disk") from None
        except OSError as e:
            raise self._damaged(path, f"it cannot be read ({e.strerror})") from None
        name = raw[:-1].decode("ascii", "replace") if raw.endswith(b"\n") else ""
        if not _NAME.match(name):
            raise self._damaged(path, f"it holds {raw[:40]!r}, not a generation name")
        gen = self.persist_dir / name
        if not gen.is_dir():
            raise self._damaged(path, f"it names {name}, which is not on disk")
        return gen

    def exists(self) -> bool:
        return self.current_generation() is not None

    def committed_generation(self) -> str | None:
        """The committed generation's directory name (``gen-000003-…``), or None."""
        gen = self.current_generation()
        return None if gen is None else gen.name

    def _require_generation(self) -> Path:
        gen = self.current_generation()
        if gen is None:
            raise IndexNotFoundError(
                f"no index at {self.persist_dir}: run `gl-retrieval index CONFIG` first"
            )
        return gen

    def _read(self, fn: Callable[[Path], T]) -> T:
        """``fn(current generation)``, again on the new one if a writer moved on meanwhile."""
        for attempt in range(_ATTEMPTS):
            gen = self._require_generation()
            try:
                return fn(gen)
            except (FileNotFoundError, IndexDamagedError):
                if attempt + 1 < _ATTEMPTS and not gen.is_dir():
                    continue  # removed under us: CURRENT names a newer one now
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- damage and recovery -------------------------------------------------------------------

    def _damaged(self, path: Path, problem: str, *, gen: Path | None = None) -> IndexDamagedError:
        return IndexDamagedError(
            f"{path} is damaged ({problem}): {self.recovery(exclude=gen)}",
            path=str(path),
            problem=problem,
        )

    def _rewrap(self, e: IndexDamagedError, gen: Path) -> IndexDamagedError:
        return self._damaged(Path(e.path), e.problem, gen=gen)

    def recovery(self, *, exclude: Path | None = None) -> str:
        """How to get back to a working index: an intact older generation, or a rebuild."""
        for gen in reversed(self.generations()[-4:]):
            if gen == exclude or self._problems(gen, checksums=True, deep=False):
                continue
            return (
                f"the older generation {gen.name} is intact: fall back to it with "
                f"`echo {gen.name} > {self.persist_dir / CURRENT}` (the next `gl-retrieval "
                "index CONFIG` then builds on it), or rebuild with `gl-retrieval index CONFIG "
                "--rebuild`"
            )
        return (
            "no intact older generation is on disk: rebuild with `gl-retrieval index CONFIG "
            "--rebuild` (re-embeds everything)"
        )

    # -- reading -------------------------------------------------------------------------------

    def _manifest_of(self, gen: Path) -> tuple[dict[str, Any], Manifest]:
        path = gen / MANIFEST
        try:
            data = read_json(path)
        except IndexDamagedError as e:
            if not gen.is_dir():
                raise FileNotFoundError(str(path)) from None
            raise self._rewrap(e, gen) from None
        problem = check_seal(data) if isinstance(data, dict) else "it is not a JSON object"
        suffix = _NAME.match(gen.name).group(2)  # type: ignore[union-attr]
        if problem is None and suffix and data.get("integrity", {}).get("digest", "")[:8] != suffix:
            problem = f"it is not the manifest {gen.name} was committed with"
        if problem is None:
            try:
                return data, Manifest.from_dict(data)
            except TypeError as e:
                problem = f"it lacks a field a manifest has ({e})"
        raise self._damaged(path, problem, gen=gen)

    def _documents_of(self, gen: Path, files: dict[str, Any] | None) -> dict[str, DocRecord]:
        path = gen / DOCUMENTS
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if not gen.is_dir():
                raise
            raise self._damaged(path, "the file is missing", gen=gen) from None
        spec = (files or {}).get(DOCUMENTS)
        if spec is not None and (
            len(raw) != spec["bytes"] or xxhash.xxh3_128_hexdigest(raw) != spec[ALGORITHM]
        ):
            raise self._damaged(
                path, "its checksum does not match: it changed after writing", gen=gen
            )
        try:
            return {k: DocRecord(**v) for k, v in parse_json(raw, path).items()}
        except IndexDamagedError as e:
            raise self._rewrap(e, gen) from None
        except (TypeError, AttributeError) as e:
            raise self._damaged(path, f"it is not a document table ({e})", gen=gen) from None

    def read_manifest(self) -> Manifest:
        return self._read(lambda gen: self._manifest_of(gen)[1])

    def read_documents(self) -> dict[str, DocRecord]:
        def read(gen: Path) -> dict[str, DocRecord]:
            data, _ = self._manifest_of(gen)
            return self._documents_of(gen, data.get("integrity", {}).get("files"))

        return self._read(read)

    def metadata_schema(self) -> dict[str, frozenset[str]]:
        """Which kinds of value each metadata key holds: as the manifest records it, or, for a
        generation committed before manifests recorded it, read from the stored metadata (no
        model is loaded either way)."""

        def read(gen: Path) -> dict[str, frozenset[str]]:
            _, manifest = self._manifest_of(gen)
            if manifest.metadata_schema is not None:
                return {k: frozenset(v) for k, v in manifest.metadata_schema.items()}
            try:
                return _open_vector_store(gen).metadata_schema()
            except IndexDamagedError as e:
                raise self._rewrap(e, gen) from None

        return self._read(read)

    def load(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        # A writer may commit and remove this generation while we read CURRENT: then read the
        # new one. Once the lease is held, no writer removes the generation under us.
        for _ in range(_ATTEMPTS):
            gen = self._require_generation()
            try:
                lease = _Lease(gen)
            except FileNotFoundError:
                continue
            try:
                handle = self._load_generation(gen, embed_model=embed_model)
            except BaseException:
                lease.release()
                raise
            handle.extras["lease"] = lease
            return handle
        raise StorageError(
            f"the index at {self.persist_dir} changed {_ATTEMPTS} times while loading it; try again"
        )

    def _load_generation(self, gen: Path, *, embed_model: BaseEmbedding) -> IndexHandle:
        data, manifest = self._manifest_of(gen)
        files = data.get("integrity", {}).get("files")
        checksums = self.verify_on_load == "checksums" or self._writing
        if files is not None:
            problems = check_files(gen, files, checksums=checksums)
            if problems:
                raise self._damaged(problems[0].path, problems[0].problem, gen=gen)
        try:
            for path in _llama_files(gen):
                read_json(path)  # so damage names the file, not LlamaIndex's bare parser message
            vector_store = _open_vector_store(gen)
        except IndexDamagedError as e:
            raise self._rewrap(e, gen) from None
        sc = StorageContext.from_defaults(persist_dir=str(gen), vector_store=vector_store)
        # embed_model is passed explicitly: without it LlamaIndex resolves Settings.embed_model.
        index = load_index_from_storage(sc, **index_kwargs(embed_model))
        if not isinstance(index, VectorStoreIndex):
            raise StorageError(f"{gen} holds a {type(index).__name__}, not a vector index")
        docs = self._documents_of(gen, files)
        chunks = sum(len(r.nodes) for r in docs.values())
        if chunks != vector_store.count():
            raise self._damaged(
                gen / DOCUMENTS,
                f"it lists {chunks} chunks, but the vector store holds {vector_store.count()}",
                gen=gen,
            )
        return IndexHandle(
            index=index,
            storage_context=sc,
            manifest=manifest,
            documents=docs,
            extras={"dir": gen, **_recorded_schema(manifest)},
            generation=gen.name,
        )

    def search(
        self, handle: IndexHandle, query: VectorStoreQuery, *, shared_nodes: bool = False
    ) -> VectorStoreQueryResult:
        store: EmbeddedVectorStore = handle.vector_store
        return store.query(query, shared_nodes=shared_nodes)

    def filter_mask(
        self, handle: IndexHandle, filters: MetadataFilters, *, node_ids: Sequence[str]
    ) -> np.ndarray:
        store: EmbeddedVectorStore = handle.vector_store
        return store.filter_mask(filters, node_ids=node_ids)

    def stored_vectors(self, handle: IndexHandle, node_ids: Sequence[str]) -> np.ndarray:
        """The vectors of ``node_ids`` as stored (raises KeyError for an unknown id)."""
        store: EmbeddedVectorStore = handle.vector_store
        return store.vectors(node_ids)

    def new(self, *, embed_model: BaseEmbedding) -> IndexHandle:
        sc = StorageContext.from_defaults(vector_store=new_vector_store())
        index = VectorStoreIndex(nodes=[], storage_context=sc, **index_kwargs(embed_model))
        return IndexHandle(index=index, storage_context=sc, manifest=None)

    # -- verification --------------------------------------------------------------------------

    def _problems(self, gen: Path, *, checksums: bool, deep: bool) -> list[Problem]:
        """Everything wrong with one generation (empty when intact)."""
        try:
            data, manifest = self._manifest_of(gen)
        except IndexDamagedError as e:
            return [Problem(Path(e.path), e.problem)]
        except FileNotFoundError:
            return [Problem(gen, "the generation was removed while it was checked")]
        files = data.get("integrity", {}).get("files")
        problems = check_files(gen, files, checksums=checksums) if files is not None else []
        if not deep:
            return problems
        seen = {p.path for p in problems}

        def add(path: Path, problem: str) -> None:
            if path not in seen:
                seen.add(path)
                problems.append(Problem(path, problem))

        for path in _llama_files(gen):
            try:
                read_json(path)
            except IndexDamagedError as e:
                add(path, e.problem)
        try:
            store = _open_vector_store(gen)
        except IndexDamagedError as e:
            add(Path(e.path), e.problem)
            return problems
        except Exception as e:  # a damaged file can break a reader in any way
            add(gen / f"default__{VECTOR_STORE_FNAME}", f"it cannot be read ({e})")
            return problems
        for path, problem in store.deep_check():
            add(path, problem)
        try:
            docs = self._documents_of(gen, files)
        except IndexDamagedError as e:
            add(Path(e.path), e.problem)
            return problems
        listed = {nid for rec in docs.values() for nid in rec.nodes}
        stored = set(store.stored_ids())
        if listed != stored:
            add(
                gen / DOCUMENTS,
                f"its chunks and the vector store's differ ({len(listed - stored)} listed but "
                f"not stored, {len(stored - listed)} stored but not listed)",
            )
        if (manifest.documents, manifest.chunks) != (len(docs), len(listed)):
            add(
                gen / MANIFEST,
                f"it counts {manifest.documents} documents and {manifest.chunks} chunks, but "
                f"the index holds {len(docs)} and {len(listed)}",
            )
        return problems

    def check_files(self) -> None:
        """Check every file of the committed generation against its recorded size and checksum
        (no JSON decoding, nothing loaded; ``info`` runs it).

        Raises:
            IndexDamagedError: a file is damaged (the message names it and the way back).
        """

        def check(gen: Path) -> None:
            problems = self._problems(gen, checksums=True, deep=False)
            if problems:
                raise self._damaged(problems[0].path, problems[0].problem, gen=gen)

        self._read(check)

    def verify(self, *, extra: GenerationCheck | None = None) -> dict[str, Any]:
        """Check the committed generation completely: every checksum, every JSON file, NaN/inf,
        and that the document table, the vector store and the manifest agree.

        Args:
            extra: More checks of the generation directory, given the chunk ids its document
                table lists (the pipeline passes the BM25 side's check); run when that table
                reads.

        Returns:
            The ``verify --json`` shape (docs/operations.md): ``ok``, ``generation``, ``files``,
            ``bytes``, ``problems`` (``file``, ``problem``), ``warnings``, ``recovery``.

        Raises:
            IndexNotFoundError: nothing was committed here.
        """
        t0 = time.perf_counter()
        report: dict[str, Any] = {
            "ok": False,
            "backend": "embedded",
            "location": self.location,
            "generation": None,
            "files": 0,
            "bytes": 0,
            "problems": [],
            "warnings": [],
            "recovery": None,
        }
        try:
            gen = self._require_generation()
        except IndexDamagedError as e:
            report["problems"] = [{"file": e.path, "problem": e.problem}]
            report["recovery"] = self.recovery()
            report["seconds"] = round(time.perf_counter() - t0, 3)
            return report
        report["generation"] = gen.name
        problems = self._problems(gen, checksums=True, deep=True)
        try:
            data, _ = self._manifest_of(gen)
            files = data.get("integrity", {}).get("files")
        except (IndexDamagedError, FileNotFoundError):
            files = {}
        if files is None:
            report["warnings"].append(
                "this generation records no checksums (an older gl_retrieval committed it): "
                "its structure was checked, not its bytes; the next commit records them"
            )
            files = {p.relative_to(gen).as_posix(): {"bytes": p.stat().st_size}
                     for p in gen.rglob("*") if p.is_file()}  # fmt: skip
        report["files"] = len(files) + 1
        report["bytes"] = sum(int(s.get("bytes") or 0) for s in files.values())
        report["problems"] = [p.to_dict() for p in problems]
        if extra is not None:
            seen = {p["file"] for p in report["problems"]}
            try:
                docs = self._documents_of(gen, None)  # checksums were checked above
                ids = [nid for rec in docs.values() for nid in rec.nodes]
            except (IndexDamagedError, FileNotFoundError):
                ids = None  # the document table is damaged: already reported
            for path, problem in extra(gen, ids) if ids is not None else ():
                if str(path) not in seen:
                    report["problems"].append({"file": str(path), "problem": problem})
        report["ok"] = not report["problems"]
        problems = report["problems"]
        if problems:
            report["recovery"] = self.recovery(exclude=gen)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return report

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
            self._writing = True  # loads for a writer check every checksum
            try:
                yield
            finally:
                self._writing = False
                fcntl.flock(f, fcntl.LOCK_UN)

    def check_space(self, handle: IndexHandle, *, adding_bytes: int) -> None:
        """A commit writes a whole new generation beside the committed one: the free space
        must hold the size of the generation ``handle`` was loaded from plus ``adding_bytes``."""
        gen = handle.extras.get("dir")
        need = max(0, adding_bytes) + (_tree_bytes(gen) if gen is not None else 0)
        where = self.persist_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        if free < need:
            raise StorageError(
                f"not enough free space for the index at {self.persist_dir}: the new generation "
                f"needs about {_mib(need)} and the disk holding it has {_mib(free)} free; "
                "free some space, or point storage.persist_dir at a larger disk"
            )

    def commit(self, handle: IndexHandle) -> None:
        if handle.manifest is None:
            raise StorageError("cannot commit an index without a manifest")
        self.persist_dir.mkdir(parents=True, exist_ok=True)
        try:
            previous = self.current_generation()
        except IndexDamagedError:
            previous = None  # a rebuild over a damaged index: nothing to build on or keep
        gens = self.generations()
        number = int(_NAME.match(gens[-1].name).group(1)) + 1 if gens else 1  # type: ignore[union-attr]
        tmp = self.persist_dir / f".tmp-gen-{number:06d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            final = self._write_generation(handle, handle.manifest, tmp, number)
        except Exception as e:
            # Nothing half-written stays behind (a full disk, any error): the committed
            # generation is untouched, and the space is given back now, not at the next run.
            # (A crash leaves it to the next run, which removes the temporaries.)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(
                    f"the disk holding {self.persist_dir} is full (or over quota): writing the "
                    f"new generation failed with {e.strerror or e}"
                    + (f" on {e.filename}" if e.filename else "")
                    + "; nothing was committed and the index is as it was. Free some space, "
                    "or point storage.persist_dir at a larger disk"
                ) from None
            raise
        handle.extras["dir"] = final
        handle.generation = final.name
        old = handle.extras.get("lease")
        handle.extras["lease"] = _Lease(final)
        if old is not None:
            old.release()
        keep = {final, *([previous] if previous is not None and self.keep_previous else [])}
        self._remove_stale([g for g in self.generations() if g not in keep])

    def _write_generation(
        self, handle: IndexHandle, next_manifest: Manifest, tmp: Path, number: int
    ) -> Path:
        """Write ``handle`` (whose manifest is ``next_manifest``) into ``tmp``, seal and sync it,
        rename it to its generation name and point ``CURRENT`` at it; the new generation's
        directory. On a failure before ``CURRENT`` names it, it is back at ``tmp``."""
        tmp.mkdir()
        handle.storage_context.persist(persist_dir=str(tmp), vector_store_fname=VECTOR_STORE_FNAME)
        for hook in handle.extras.get("persist_hooks", ()):
            hook(tmp)
        (tmp / DOCUMENTS).write_text(documents_to_json(handle.documents), encoding="utf-8")
        # Last: the manifest, with the size and checksum of every file written above.
        store: EmbeddedVectorStore = handle.vector_store
        kinds = store.metadata_schema()
        next_manifest.metadata_schema = {k: sorted(v) for k, v in sorted(kinds.items())}
        handle.extras.update(_recorded_schema(next_manifest))
        manifest = seal(next_manifest.to_dict(), record_files(tmp))
        name = f"gen-{number:06d}-{manifest['integrity']['digest'][:8]}"
        (tmp / MANIFEST).write_text(manifest_json(manifest), encoding="utf-8")
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        for d in [p for p in tmp.rglob("*") if p.is_dir()]:
            fsync_dir(d)
        fsync_dir(tmp)
        final = self.persist_dir / name
        os.rename(tmp, final)
        try:
            fsync_dir(self.persist_dir)
            atomic_write_text(self.persist_dir / CURRENT, name + "\n")
        except Exception:
            committed = ""
            with contextlib.suppress(OSError):
                committed = (self.persist_dir / CURRENT).read_text(encoding="ascii")
            if committed != name + "\n":
                os.rename(final, tmp)  # not committed: the caller removes it
            raise
        return final

    def _remove_temporaries(self) -> None:
        for p in self.persist_dir.iterdir():
            if p.name.startswith(".tmp-gen-") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".{CURRENT}.tmp-") and p.is_file():
                p.unlink(missing_ok=True)

    def _remove_stale(self, gens: list[Path]) -> None:
        """Remove generations no reader holds a lease on (the others go at a later commit)."""
        for p in gens:
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a reader still uses it
                # Renamed first, so a reader that opened it meanwhile sees it gone, not half.
                dead = self.persist_dir / f".tmp-gen-dead-{p.name}-{os.getpid()}"
                os.rename(p, dead)
                shutil.rmtree(dead, ignore_errors=True)
            finally:
                os.close(fd)


def _tree_bytes(root: Path) -> int:
    """The bytes of the files under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _recorded_schema(manifest: Manifest) -> dict[str, Any]:
    """The handle extra that filter checks read (retrieval.retrievers.index_schema), when the
    manifest records the metadata schema."""
    if manifest.metadata_schema is None:
        return {}
    schema = {k: frozenset(v) for k, v in manifest.metadata_schema.items()}
    return {"gl_metadata_schema": schema}


def _open_vector_store(gen: Path) -> Any:
    try:
        return load_vector_store(gen)
    except IndexNotFoundError:  # inside a committed generation, a missing file is damage
        path = gen / f"default__{VECTOR_STORE_FNAME}" / MANIFEST
        raise IndexDamagedError(
            f"{path} is missing", path=str(path), problem="the file is missing"
        ) from None


def _llama_files(gen: Path) -> list[Path]:
    """The JSON files LlamaIndex's StorageContext reads from a generation directory."""
    return sorted(p for p in gen.iterdir() if p.is_file() and p.name not in (MANIFEST, DOCUMENTS))


def manifest_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
