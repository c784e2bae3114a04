"""The checkpoint store: content-addressed blobs plus one signed manifest per generation.

Layout under the root (a local path or any fsspec URL)::

    blobs/ab/ab12...ef                    blake3 of the bytes; immutable; shared by all sessions
    <session key>/session.json            the session's name, for `checkpoints list`
    <session key>/manifests/000000000042-1a2b3c4d.json

Blobs are shared across the sessions of one root rather than kept per session: the same data
loaded in two notebooks, a notebook that was renamed or copied, or a time-travel branch then
costs its bytes once, and a blob's content is checked against its address on every load, so
sharing cannot mix one session's data into another. The price is paid by gc, which reads every
session's manifests (signed or not, since another user's secret may have signed them) before
deleting a blob, and never deletes one younger than a grace period: a writer may have just
written or reused it for a manifest it has not committed yet. Reusing an existing blob bumps
its mtime on local disks for the same reason; object stores cannot do that cheaply, so there a
gc that runs while a writer reuses an old unreferenced blob can still race (rare: the blob must
have become unreferenced and then be needed again within seconds of the gc).

The write path is fork-safe (the agent may write from a forked child and then os._exit): no
threads (blake3 too hashes single-threaded, see blob_address), no locks held across calls, no
logging. See backends.py for what a remote filesystem needs after fork.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import blake3
import numpy as np

from .backends import FULL_ERRNOS, TMP_PREFIX, FileInfo, open_backend
from .chunk_reader import read_verified
from .errors import IntegrityError, StoreError, StoreFullError
from .groupref import BufferRef, GroupRef, check_address
from .manifest import (
    Manifest,
    build_document,
    check_document,
    manifest_name,
    parse_manifest_name,
    referenced_addresses,
)
from .paths import resolve_root, session_key
from .retention import GcReport, choose_kept, manifests_to_delete
from .secret import load_secret
from .serialize import pickle_group, unpickle_group
from .sessions import BLOBS_DIR, SESSION_FILE, SessionInfo, list_sessions
from .stats import write_stats
from .writers import SessionConflictError, conflict_message, find_conflict, this_writer

CHUNK_SIZE = 1 << 20
GRACE_SECONDS = 600.0
_AUTO = object()


def blob_address(data: bytes | bytearray | memoryview) -> str:
    """blake3 hex, single-threaded on purpose: blake3's thread pool is Rayon's global one, whose
    threads do not survive fork() (a forked writer would hang), and on 2 cores its threads fight
    the kernel's writeback: a 1 GB checkpoint took 6-7 s with it, about 2 s without."""
    return blake3.blake3(data).hexdigest()


class Store:
    def __init__(self, session: str, root: str | None = None, *, secret_file: str | None = None,
                 grace_seconds: float = GRACE_SECONDS, chunk_size: int = CHUNK_SIZE,
                 storage_options: dict[str, Any] | None = None):
        self.session = session
        self.key = session_key(session)
        self.root = resolve_root(root)
        self.grace_seconds = grace_seconds
        self.chunk_size = chunk_size
        self._storage_options = storage_options
        self._backend = open_backend(self.root, storage_options)
        base = self._backend.root
        self._blobs_dir = self._backend.join(base, BLOBS_DIR)
        self.session_dir = self._backend.join(base, self.key)
        self._manifests_dir = self._backend.join(self.session_dir, "manifests")
        self._secret = load_secret(secret_file)
        self._known: dict[str, float] = {}  # address -> when we last saw it on the store
        self.writer = this_writer()
        self._horizon: int | None = None  # newest generation when this writer first looked
        self._writer_checked = False

    @property
    def remote(self) -> bool:
        """An object store: uploads belong in a background process, never on the cell's path."""
        return bool(getattr(self._backend, "remote", False))

    # ---- writing -------------------------------------------------------------------------

    def put_group(self, objs: Mapping[str, Any]) -> GroupRef:
        """Pickle one alias group together and write its blobs; unchanged chunks are skipped."""
        if not self._writer_checked:  # before uploading anything: a refused writer uploads nothing
            self._refuse_if_another_writer(None)
            self._writer_checked = True
        pickled = pickle_group(objs)
        written: set[str] = set()
        try:
            stream = self._put_blob(pickled.stream, written)
            buffers = []
            for view in pickled.buffers:
                chunks = tuple(
                    self._put_blob(view[start:start + self.chunk_size], written)
                    for start in range(0, view.nbytes, self.chunk_size)
                )
                buffers.append(BufferRef(view.nbytes, chunks))
            self._backend.flush()
        except BaseException as exc:
            self._fail(exc, f"writing variables {sorted(objs)}")
        now = time.time()
        self._known.update(dict.fromkeys(written, now))
        return GroupRef(tuple(objs), pickled.pickler, stream, len(pickled.stream), self.chunk_size,
                        tuple(buffers))

    def _put_blob(self, data: bytes | memoryview, written: set[str]) -> str:
        address = blob_address(data)
        seen = self._known.get(address)
        if address in written or (seen is not None and time.time() - seen < self.grace_seconds / 2):
            write_stats.blobs_skipped += 1
            return address
        path = self._blob_path(address)
        if self._backend.exists_refresh(path):
            self._known[address] = time.time()
            write_stats.blobs_skipped += 1
            return address
        count = self._backend.write_new(path, [data])
        if count is None:  # another writer put it first
            write_stats.blobs_skipped += 1
        else:
            write_stats.blob_bytes_written += count
            write_stats.blobs_written += 1
            written.add(address)
        return address

    def commit(self, body: dict[str, Any], parent: Any = _AUTO) -> int:
        """Write one signed, immutable manifest; returns its generation.

        The generation is one more than any on the store (so it sorts last even after a
        tampered one); the parent is the newest valid generation unless given.
        """
        existing = [generation for generation, _ in self._manifest_files()]
        generation = max(existing, default=0) + 1
        self._refuse_if_another_writer(None if parent is _AUTO else parent)
        if parent is _AUTO:
            newest = self.latest()
            parent = newest.generation if newest else None
        try:
            raw = build_document(body, session=self.session, generation=generation, parent=parent,
                                 created=time.time(), secret=self._secret, writer=self.writer.to_json())
        except (TypeError, ValueError) as exc:
            raise StoreError(f"manifest body is not plain JSON: {exc}") from exc
        try:
            self._write_session_file()
            path = self._backend.join(self._manifests_dir, manifest_name(generation))
            write_stats.manifest_bytes_written += self._backend.write_new(path, [raw]) or 0
            self._backend.flush()
        except BaseException as exc:
            self._fail(exc, f"writing manifest {generation}")
        write_stats.manifests_written += 1
        return generation

    def _refuse_if_another_writer(self, parent: int | None) -> None:
        """Raise SessionConflictError if another kernel committed since this one's base."""
        if self._horizon is None:
            self._manifest_files()
        base = max(self._horizon or 0, parent or 0)
        other = find_conflict(self._read_manifests(above=base), self.writer.id, base)
        if other is not None:
            raise SessionConflictError(conflict_message(self.session, other, base))

    def _write_session_file(self) -> None:
        path = self._backend.join(self.session_dir, SESSION_FILE)
        if not self._backend.exists_refresh(path):
            self._backend.write_new(path, [json.dumps({"session": self.session}).encode("utf-8")])

    def _fail(self, exc: BaseException, doing: str) -> None:
        self._backend.abort()
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            raise StoreFullError(
                f"the checkpoint store at {self.root} is full ({os.strerror(exc.errno)}) while {doing}. "
                "Free space on that disk, delete old checkpoints (`elastic-proxy checkpoints gc`, or "
                "`%elastic reset` for this notebook), or set ELASTIC_PROXY_STORE to a directory on a "
                "larger disk. The previous checkpoint is kept."
            ) from exc
        if isinstance(exc, (OSError, ValueError)):
            raise StoreError(f"{doing} in {self.root} failed: {exc}") from exc
        raise exc

    def remember(self, ref: GroupRef) -> None:
        """Record blobs a forked writer wrote, so this process skips them too."""
        now = time.time()
        self._known.update((address, now) for address, _ in ref.blobs())

    def after_fork(self) -> None:
        """Call in a forked child before writing (a remote filesystem needs a fresh client)."""
        self._backend.after_fork()
        self._writer_checked = False

    # ---- reading -------------------------------------------------------------------------

    def generations(self, check_blobs: bool = False) -> list[Manifest]:
        """Every manifest, newest first; invalid ones are listed with `.problem`, not dropped.

        check_blobs also marks manifests whose blobs are missing (one listing of the blobs).
        """
        manifests = list(self._read_manifests())
        if check_blobs:
            present = {info.name for info in self._backend.list_files(self._blobs_dir, recursive=True)}
            for manifest in manifests:
                if manifest.valid:
                    missing = self._missing(manifest, present)
                    if missing:
                        manifest.mark_invalid(missing)
        return manifests

    def latest(self) -> Manifest | None:
        """The newest manifest whose signature verifies."""
        return next((m for m in self._read_manifests() if m.valid), None)

    def read_manifest(self, generation: int) -> Manifest:
        """That generation's manifest: a valid one if any, else an invalid one with its problem."""
        found = [m for m in self._read_manifests(only=generation)]
        if not found:
            raise StoreError(f"session {self.session!r} has no generation {generation}")
        return next((m for m in found if m.valid), found[0])

    def load_group(self, ref: GroupRef | dict[str, Any],
                   on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Read and verify every blob of the group, then unpickle it.

        `ref` must come from `Manifest.groups()` of a valid manifest: the hash check proves the
        bytes are the ones it names, the manifest's signature proves the names are ours.
        `on_bytes(n)` is called as bytes arrive (restore progress), in the calling thread.
        Chunks are read straight into the buffers pickle gets, on a few threads (chunk_reader.py).
        """
        if not isinstance(ref, GroupRef):
            ref = GroupRef.from_json(ref)
        self._backend.prefetch([(self._blob_path(address), size) for address, size in ref.blobs()])
        stream = self._read_blob(ref.stream, ref.stream_size)
        if on_bytes:
            on_bytes(len(stream))
        buffers = []
        jobs = []
        for buffer in ref.buffers:
            data = _uninitialized(buffer.size)
            view = memoryview(data)
            jobs.extend((address, view[index * ref.chunk_size:(index + 1) * ref.chunk_size])
                        for index, address in enumerate(buffer.chunks))
            buffers.append(pickle.PickleBuffer(data))  # what was pickled out of band was a PickleBuffer
        read_verified(jobs, self._read_blob_into, on_bytes)
        return unpickle_group(ref.pickler, stream, buffers)

    def verify(self, manifest: Manifest) -> list[str]:
        """Problems with a manifest and every blob it references (read and hashed); [] if good.

        A manifest with problems is marked invalid, so a restore can fall back to an older one.
        """
        if not manifest.valid:
            return [manifest.problem or "invalid"]
        problems: list[str] = []
        try:
            refs = [ref for ref in manifest.groups().values() if ref is not None]
        except IntegrityError as exc:
            refs, problems = [], [str(exc)]
        scratch = bytearray(max([r.chunk_size for r in refs], default=0))
        checked: set[str] = set()
        for ref in refs:
            for address, size in ref.blobs():
                if address in checked:
                    continue
                checked.add(address)
                try:
                    if address == ref.stream:
                        self._read_blob(address, size)
                    else:
                        self._read_blob_into(address, memoryview(scratch)[:size])
                except IntegrityError as exc:
                    problems.append(str(exc))
        if problems:
            manifest.mark_invalid(problems[0])
        return problems

    def _read_manifests(self, only: int | None = None, above: int | None = None) -> Iterator[Manifest]:
        newest_first = sorted(self._manifest_files(), key=lambda gi: (gi[0], gi[1].name), reverse=True)
        for generation, info in newest_first:
            if only is not None and generation != only:
                continue
            if above is not None and generation <= above:
                break
            try:
                raw = self._backend.read_bytes(info.path)
            except FileNotFoundError:  # removed by a concurrent gc since the listing
                continue
            doc, problem = check_document(raw, secret=self._secret, session=self.session,
                                          generation=generation)
            yield Manifest(generation, info.path, doc, problem is None, problem)

    def _manifest_files(self) -> list[tuple[int, FileInfo]]:
        found = []
        for info in self._backend.list_files(self._manifests_dir):
            generation = parse_manifest_name(info.name)
            if generation is not None:
                found.append((generation, info))
        if self._horizon is None:
            self._horizon = max((generation for generation, _ in found), default=0)
        return found

    def _missing(self, manifest: Manifest, present: set[str]) -> str | None:
        try:
            refs = manifest.groups().values()
        except IntegrityError as exc:
            return str(exc)
        for ref in refs:
            if ref is not None:
                for address, _ in ref.blobs():
                    if address not in present:
                        return f"missing blob {address}"
        return None

    def _blob_path(self, address: str) -> str:
        return self._backend.join(self._blobs_dir, address[:2], address)

    def _read_blob(self, address: str, size: int) -> bytes:
        try:
            data = self._backend.read_bytes(self._blob_path(check_address(address)))
        except FileNotFoundError:
            raise IntegrityError(f"missing blob {address}") from None
        if len(data) != size or blob_address(data) != address:
            raise IntegrityError(f"blob {address}: content does not match its hash (corrupted)")
        return data

    def _read_blob_into(self, address: str, part: memoryview) -> None:
        try:
            count = self._backend.read_into(self._blob_path(check_address(address)), part)
        except FileNotFoundError:
            raise IntegrityError(f"missing blob {address}") from None
        if count != len(part):
            raise IntegrityError(f"blob {address}: truncated ({count} of {len(part)} bytes)")
        if blob_address(part) != address:
            raise IntegrityError(f"blob {address}: content does not match its hash (corrupted)")

    # ---- retention -----------------------------------------------------------------------

    def gc(self, keep_last: int = 20, max_bytes: int | None = None) -> GcReport:
        """Keep this session's newest `keep_last` valid generations (always the newest valid one),
        fewer if their blobs exceed `max_bytes`; delete older manifests and blobs that no
        manifest of any session references and that are older than the grace period.

        Safe while other processes write: see the module docstring.
        """
        report = GcReport()
        manifests = list(self._read_manifests())
        keep = choose_kept(manifests, keep_last, max_bytes)
        report.kept = [m.generation for m in keep]
        for manifest in manifests_to_delete(manifests, keep):
            self._backend.remove(manifest.path)
            report.manifests_deleted += 1
        self._sweep(report)
        return report

    def forget(self) -> GcReport:
        """Delete this whole session (`%elastic reset`, the CLI), then the blobs only it used."""
        self._backend.remove_tree(self.session_dir)
        self._horizon = 0
        report = GcReport()
        self._sweep(report)
        return report

    def _sweep(self, report: GcReport) -> None:
        cutoff = time.time() - self.grace_seconds
        referenced = self._all_referenced(report, cutoff)
        for info in self._backend.list_files(self._blobs_dir, recursive=True):
            if info.mtime >= cutoff:
                continue
            if info.name.startswith(TMP_PREFIX):
                self._backend.remove(info.path)
                report.temps_deleted += 1
            elif info.name not in referenced and len(info.name) == 64:
                mtime = self._backend.mtime(info.path)  # a writer may have reused it since the listing
                if mtime is None or mtime >= cutoff:
                    continue
                self._backend.remove(info.path)
                self._known.pop(info.name, None)
                report.blobs_deleted += 1
                report.bytes_freed += info.size

    def _all_referenced(self, report: GcReport, cutoff: float) -> set[str]:
        """Addresses named by any manifest of any session of this root, verified or not."""
        referenced: set[str] = set()
        base = self._backend.root
        for key in self._backend.list_dirs(base):
            if key == BLOBS_DIR or key.startswith("."):
                continue
            for info in self._backend.list_files(self._backend.join(base, key, "manifests")):
                if info.name.startswith(TMP_PREFIX):
                    if info.mtime < cutoff:
                        self._backend.remove(info.path)
                        report.temps_deleted += 1
                    continue
                try:
                    doc = json.loads(self._backend.read_bytes(info.path))
                except (FileNotFoundError, ValueError, UnicodeDecodeError):
                    continue
                referenced.update(referenced_addresses(doc))
        return referenced

    # ---- sessions ------------------------------------------------------------------------

    def sessions(self) -> list[SessionInfo]:
        return list_sessions(self.root, self._storage_options)


def _uninitialized(size: int) -> Any:
    """A writable buffer to fill from disk: numpy's allocator neither zero-fills it nor faults it
    in 4 KiB pages (it asks for huge pages), which halves the cost of a large restore."""
    return np.empty(size, dtype=np.uint8)


def open_store(session: str, root: str | None = None, **options: Any) -> Store:
    """The store of one session; root None means $ELASTIC_PROXY_STORE or the default."""
    return Store(session, root, **options)


__all__ = ["CHUNK_SIZE", "GRACE_SECONDS", "GcReport", "Store", "blob_address", "open_store"]
