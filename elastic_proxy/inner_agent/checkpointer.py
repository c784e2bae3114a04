"""Checkpoints after every cell that changed state, without making the user wait.

Small changes are written inline. Large ones go to a copy-on-write snapshot: `os.fork()` from the
main thread in the hook, the forked process pickles the changed alias groups through the store,
commits the manifest, reports the GroupRefs on a pipe and `os._exit`s. The user's next cell
starts at once. One snapshot writes at a time (the writers serialize on `writer_lock`), so
generations never race. A cell that changes state while a snapshot is being written gets a
*follower*: a second snapshot, taken at that cell's boundary, that waits for the lock and then
writes everything not yet committed. A kernel killed meanwhile loses nothing: both processes
outlive it and commit. A newer cell replaces a follower still waiting (it has done no work), so
there are never more than two. A watcher thread per writer (no SIGCHLD handler) reads its pipe,
reaps it and records the outcome; the hooks start the next snapshot.

The forked process touches no ZMQ socket, thread-owned lock or logging handler: it only pickles,
writes files and writes to its pipe, then leaves with os._exit.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import cloudpickle

from ..store import GroupRef, SerializationError, StoreFullError
from ..store.writers import writer_of
from . import fingerprint
from .filehandles import store_file_reducers
from .graph import CellExecution
from .writer_lock import hold_while_writing

FORK_FIXED_SECONDS = 15e-3
"""Parent pause of a forked write besides the page tables: IPython's at-fork hooks stop and restart its
history thread, and a watcher thread starts (a tiny write cost 17 ms forked, 7 ms inline, on the
2-core VM: `n += 1` in bench/agent_overhead.py)."""
FORK_SECONDS_PER_RSS_BYTE = 12e-3 / (1 << 30)
"""Parent pause of os.fork(), copying page tables: 12 ms per GB resident (measured, docs/peers.md)."""
INLINE_FIXED_SECONDS = 7e-3
"""Cost of an inline write besides pickling: a blob and a manifest, each fsynced (measured as above)."""
INLINE_BYTES_PER_SECOND = 1e9
WRITER_TIMEOUT = 900.0
"""Seconds after which a forked writer is considered hung and killed (checked at each hook)."""
GC_EVERY = 25
GC_KEEP_LAST = 50
"""Retention: every GC_EVERY commits a forked process of its own (never the user's process, never
a write in flight that later cells would queue behind) keeps the newest GC_KEEP_LAST generations
of the session (how far `%elastic restore N` can go back)."""
BACKGROUND_NICENESS = 10
"""The forked writer yields the CPU to the user's kernel: on two cores, a writer hashing 1 GB at
normal priority delayed the user's next replies by tens of milliseconds."""


def prefer_fork(estimated_bytes: int, resident_bytes: int) -> bool:
    """Fork when the parent's pause for it is smaller than writing inline would be. Nominal
    constants, not probes: the choice only moves the work, never changes what is written."""
    fork = FORK_FIXED_SECONDS + resident_bytes * FORK_SECONDS_PER_RSS_BYTE
    return fork < INLINE_FIXED_SECONDS + estimated_bytes / INLINE_BYTES_PER_SECOND


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


@dataclass
class State:
    """What the agent describes when a write starts (in the parent, from the main thread)."""

    groups: dict[str, tuple[str, ...]]
    body: dict[str, Any]
    sizes: dict[str, int]
    deferred: set[str] = field(default_factory=set)
    previous: dict[str, str] = field(default_factory=dict)


@dataclass
class Job:
    """Everything one checkpoint writes: taken in the parent at start, read by the writer."""

    dirty: dict[str, tuple[str, ...]]
    base_groups: dict[str, Any]
    base_problems: dict[str, str]
    body: dict[str, Any]
    changed_names: set[str]
    cell: int
    estimated_bytes: int
    deferred: set[str] = field(default_factory=set)
    previous: dict[str, str] = field(default_factory=dict)
    previous_refs: dict[str, Any] = field(default_factory=dict)
    parent: int | None = None
    forked: bool = False
    ahead_cell: int | None = None  # a follower: the cell of the write in flight when it was forked
    since_ahead: set[str] = field(default_factory=set)  # a follower: names changed since that write's snapshot


@dataclass
class Outcome:
    """What a finished write reports back (the pipe carries it as JSON)."""

    generation: int | None = None
    groups: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, list[Any]] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, StoreFullError) or (isinstance(exc, OSError) and exc.errno == 28):
        return f"disk full: {exc}"
    return f"{type(exc).__name__}: {exc}"


def write_job(store: Any, namespace: Mapping[str, Any], job: Job) -> Outcome:
    """Pickle the dirty groups (one bad group never sinks the rest) and commit one manifest."""
    started = time.perf_counter()
    groups = dict(job.base_groups)
    problems = {gid: why for gid, why in job.base_problems.items() if gid in groups}
    written = 0
    out = Outcome()
    ahead_groups, ahead_variables = _committed_ahead(store, job)
    reused = {gid: ahead_groups[gid] for gid, names in job.dirty.items()
              if gid in ahead_groups and list(names) == ahead_groups[gid].get("names")
              and not set(names) & job.since_ahead}
    reused_names = {name for gid in reused for name in job.dirty[gid]}
    for name in sorted(job.deferred):
        known = ahead_variables.get(name, {}) if name in reused_names else {}
        if known.get("fingerprint"):
            out.fingerprints[name] = [known["fingerprint"], bool(known.get("opaque"))]
            continue
        print_ = fingerprint.inspect(namespace[name])
        out.fingerprints[name] = [print_.hex(), print_.opaque]
    for gid, names in job.dirty.items():
        if gid in reused:
            groups[gid] = out.groups[gid] = reused[gid]
            continue
        if gid in job.previous_refs and _unchanged(names, out.fingerprints, job.previous):
            groups[gid] = job.previous_refs[gid]
            continue
        try:
            with store_file_reducers():
                ref = store.put_group({name: namespace[name] for name in names})
        except SerializationError as exc:
            groups[gid] = None
            problems[gid] = str(exc)
            out.problems[gid] = str(exc)
            out.groups[gid] = None
            continue
        ref_json = ref.to_json()
        groups[gid] = ref_json
        problems.pop(gid, None)
        out.groups[gid] = ref_json
        written += int(ref_json.get("size", 0))
    body = dict(job.body)
    body["groups"] = groups
    variables = {}
    for name, entry in body.get("variables", {}).items():
        entry = dict(entry)
        if entry.get("group") in problems:
            entry["recompute_only"] = problems[entry["group"]]
        if name in out.fingerprints:
            entry["fingerprint"], entry["opaque"] = out.fingerprints[name]
        variables[name] = entry
    body["variables"] = variables
    out.generation = store.commit(body) if job.parent is None else store.commit(body, parent=job.parent)
    out.bytes = written
    out.seconds = time.perf_counter() - started
    return out


def _names_of(job: Job) -> set[str]:
    return job.changed_names | {name for names in job.dirty.values() for name in names}


def _committed_ahead(store: Any, job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """A follower's view of what the write ahead of it committed (its groups and variables), if
    it did: those groups, unchanged since, are not pickled again. A big value changed in one cell
    would otherwise be written again by every follower while quick cells come after it."""
    if job.ahead_cell is None:
        return {}, {}
    latest = store.latest()
    if (latest is None or latest.body.get("execution_count") != job.ahead_cell
            or writer_of(latest).get("id") != store.writer.id):
        return {}, {}
    groups = {gid: ref for gid, ref in latest.body.get("groups", {}).items() if isinstance(ref, dict)}
    return groups, latest.body.get("variables", {})


def _unchanged(names: tuple[str, ...], prints: Mapping[str, list[Any]], previous: Mapping[str, str]) -> bool:
    """Every member was only touched, not changed: its fresh fingerprint equals the last known one."""
    return all(
        name in prints and not prints[name][1] and previous.get(name) == prints[name][0] for name in names
    )


class Checkpointer:
    """Keeps the store in step with the namespace, one write in flight at a time."""

    def __init__(
        self,
        store: Any,
        namespace: Callable[[], Mapping[str, Any]],
        describe_state: Callable[[], State],
        publish: Callable[[dict[str, Any]], None] | None = None,
        inline_limit: int | None = None,
        allow_fork: bool = True,
        on_fingerprints: Callable[[dict[str, list[Any]]], None] | None = None,
    ) -> None:
        """`describe_state()` is called in the parent when a write starts; `on_fingerprints`
        receives the fingerprints the writer computed for deferred (big) values. `inline_limit`
        (bytes) overrides the cost rule of `prefer_fork`, for tests."""
        self.on_fingerprints = on_fingerprints
        self.store = store
        self._namespace = namespace
        self._describe_state = describe_state
        self.publish = publish
        self.inline_limit = inline_limit
        self.allow_fork = allow_fork and hasattr(os, "fork")
        self.groups: dict[str, Any] = {}
        self.problems: dict[str, str] = {}
        self.changed: set[str] = set()
        self.needs_commit = False
        self.last: Outcome | None = None
        self.last_cell: int | None = None
        self.last_error: str | None = None
        self.forks = 0
        self.failures = 0  # writes that ended in an error since the kernel started (%elastic status)
        self.writer_timeout = WRITER_TIMEOUT
        self.parent: int | None = None
        self._commits_since_gc = 0
        self._last_committed_cell: int | None = None
        self._lock = threading.Lock()
        self._inflight: Job | None = None
        self._inflight_pid: int | None = None
        self._inflight_started = 0.0
        self._follower: Job | None = None
        self._follower_pid: int | None = None
        self._abandoned: set[int] = set()
        self._finished: list[tuple[Job, Outcome]] = []
        self._watcher: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def reset(self) -> None:
        """Forget what was written (after `%elastic reset`): the next write starts from scratch."""
        self.wait()
        self.groups, self.problems, self.changed = {}, {}, set()
        self.needs_commit = False
        self.last, self.last_cell, self.last_error = None, None, None
        self.parent = None

    def adopt(self, groups: Mapping[str, Any], problems: Mapping[str, str], generation: int | None) -> None:
        """Take the GroupRefs of a restored generation as the base, so unchanged groups are not rewritten."""
        self.groups = dict(groups)
        self.problems = dict(problems)
        self.parent = generation

    # hooks -----------------------------------------------------------------------------------
    def on_cell(self, cell: CellExecution, *_: Any) -> None:
        """post_run_cell listener: note what changed, then write if nothing is in flight."""
        self.changed |= set(cell.written)
        if cell.written:
            self.needs_commit = True
        self.last_cell = cell.execution_count
        self.poll()

    def poll(self) -> None:
        """Collect a finished write, and start the next one if there is something to write."""
        self._collect()
        self._kill_if_hung()
        if not self.needs_commit:
            return
        if self._inflight is None:
            self._start()
        elif self._inflight.forked and self.allow_fork:
            self._replace_follower()

    def _replace_follower(self) -> None:
        """Snapshot this cell boundary now, to be written after the snapshot in flight."""
        if self._follower is not None and self._follower_pid is not None:
            self._abandoned.add(id(self._follower))  # still waiting for the lock: nothing lost
            try:
                os.kill(self._follower_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._start(follower=True)

    def _kill_if_hung(self) -> None:
        """A writer stuck past WRITER_TIMEOUT (say, a lock inherited held at fork) would stop all
        checkpoints for good: kill it; the watcher then reports the failure and the changes retry."""
        pid = self._inflight_pid
        if pid is not None and time.perf_counter() - self._inflight_started > self.writer_timeout:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until everything changed so far is committed (for tests, magics and shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        started_one = False
        while True:
            self._collect()
            if self._inflight is None and not self.needs_commit:
                return True
            if self._inflight is None:
                if started_one and self.last_error is not None:
                    return False
                started_one = True
                self._start()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._idle.wait(0.1 if remaining is None else min(remaining, 0.1))

    def status(self) -> dict[str, Any]:
        inflight = self._inflight
        return {
            "last_generation": None if self.last is None else self.last.generation,
            "last_cell": None if self.last is None else self._last_committed_cell,
            "last_bytes": None if self.last is None else self.last.bytes,
            "last_seconds": None if self.last is None else self.last.seconds,
            "in_flight": None
            if inflight is None
            else {
                "cell": inflight.cell,
                "groups": sorted(inflight.dirty),
                "forked": inflight.forked,
                "seconds": time.perf_counter() - self._inflight_started,
            },
            "pending_names": sorted(self.changed),
            "unserializable": dict(sorted(self.problems.items())),
            "last_error": self.last_error,
            "failures": self.failures,
        }

    # writing ---------------------------------------------------------------------------------
    def _start(self, follower: bool = False) -> None:
        state = self._describe_state()
        groups, body, sizes = state.groups, state.body, state.sizes
        changed = set(self.changed)
        since_ahead: set[str] = set()
        ahead_cell = None
        if follower:  # what the writers ahead of it carry is not committed yet: include it
            since_ahead = set(changed)
            if self._follower is not None:  # replaced, so it never commits
                changed |= _names_of(self._follower)
                since_ahead |= self._follower.since_ahead
            if self._inflight is not None:
                changed |= _names_of(self._inflight)
                ahead_cell = self._inflight.cell
        dirty = {
            gid: names
            for gid, names in groups.items()
            if gid not in self.groups or set(names) & changed
        }
        base = {gid: self.groups[gid] for gid in groups if gid not in dirty}
        estimated = sum(sizes.get(name, 0) for names in dirty.values() for name in names)
        job = Job(
            dirty=dirty,
            base_groups=base,
            base_problems=dict(self.problems),
            body=body,
            changed_names=changed,
            cell=int(body.get("execution_count", 0)),
            estimated_bytes=estimated,
            deferred={name for names in dirty.values() for name in names if name in state.deferred},
            previous=dict(state.previous),
            previous_refs={gid: self.groups[gid] for gid in dirty if self.groups.get(gid) is not None},
            parent=None if follower else self.parent,  # a follower's parent is whatever commits first
            ahead_cell=ahead_cell,
            since_ahead=since_ahead,
        )
        self.changed = set()
        self.needs_commit = False
        if follower:
            self._follower = job
            self._follower_pid = self._start_forked(job, join_watcher=False)
            return
        self._inflight = job
        self._inflight_started = time.perf_counter()
        self._idle.clear()
        if getattr(self.store, "remote", False):
            fork = True  # an upload never runs on the cell's path
        elif self.inline_limit is not None:
            fork = estimated > self.inline_limit
        else:
            fork = prefer_fork(estimated, resident_bytes())
        if self.allow_fork and fork:
            self._inflight_pid = self._start_forked(job)
        else:
            self._run_inline(job)

    def _run_inline(self, job: Job) -> None:
        try:
            outcome = write_job(self.store, self._namespace(), job)
        except Exception as exc:
            outcome = Outcome(error=describe_error(exc))
        with self._lock:
            self._finished.append((job, outcome))
        self._idle.set()
        self._announce(job, outcome)
        self._collect()

    def _fork(self, join_watcher: bool = True) -> int:
        if join_watcher and self._watcher is not None:
            self._watcher.join(timeout=1.0)  # it may still be announcing: fork with no thread mid-call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid:
            self.forks += 1
        return pid

    def _start_forked(self, job: Job, join_watcher: bool = True) -> int:
        job.forked = True
        read_fd, write_fd = os.pipe()
        namespace = self._namespace()
        track_notebook_classes(namespace)
        pid = self._fork(join_watcher)
        if pid == 0:
            _snapshot_process(self.store, namespace, job, read_fd, write_fd)
        os.close(write_fd)
        self._watcher = threading.Thread(
            target=self._watch, args=(job, pid, read_fd), name="elastic-checkpoint-watch", daemon=True
        )
        self._watcher.start()
        return pid

    def _start_retention(self) -> None:
        """Apply retention in a forked process that nothing waits for. The store's gc is safe beside
        writers (it spares young blobs), and it takes no writer lock: a restore need not wait for it."""
        pid = self._fork()
        if pid == 0:
            _retention_process(self.store)
        threading.Thread(target=os.waitpid, args=(pid, 0), name="elastic-retention-reaper", daemon=True).start()

    def _watch(self, job: Job, pid: int, read_fd: int) -> None:
        chunks = []
        with os.fdopen(read_fd, "rb") as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        try:
            outcome = Outcome(**json.loads(b"".join(chunks).decode()))
        except (ValueError, TypeError):
            outcome = Outcome(error=f"checkpoint process ended without a result ({_exit_reason(status)})")
        with self._lock:
            self._finished.append((job, outcome))
        self._idle.set()
        if id(job) not in self._abandoned:
            self._announce(job, outcome)

    def _announce(self, job: Job, outcome: Outcome) -> None:
        """Tell the supervisor at once (IOPub sends are thread-safe in ipykernel)."""
        if self.publish is None or outcome.error is not None:
            return
        try:
            self.publish(
                {
                    "generation": outcome.generation,
                    "cell": job.cell,
                    "bytes": outcome.bytes,
                    "seconds": round(outcome.seconds, 6),
                }
            )
        except Exception as exc:
            self.last_error = f"could not publish elastic_checkpoint: {describe_error(exc)}"

    def _collect(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        for job, outcome in finished:
            self._settle(job, outcome)

    def _settle(self, job: Job, outcome: Outcome) -> None:
        if id(job) in self._abandoned:
            self._abandoned.discard(id(job))
            return
        if job is self._follower:  # it overtook nothing: writers commit in lock order
            self._follower, self._follower_pid = None, None
        else:
            self._inflight, self._inflight_pid = None, None
            if self._follower is not None:  # the follower now writes (or soon will): it is in flight
                self._inflight, self._inflight_pid = self._follower, self._follower_pid
                self._follower, self._follower_pid = None, None
                self._inflight_started = time.perf_counter()
                self._idle.clear()
        if outcome.error is not None:
            if self.last_error is None:  # said once when checkpoints start failing, not after every cell
                print(f"elastic-proxy: checkpoint failed, the previous one is kept: {outcome.error}", file=sys.stderr)
            self.last_error = outcome.error
            self.failures += 1
            self.changed |= job.changed_names
            self.needs_commit = True
            return
        self.groups = dict(job.base_groups)
        self.groups.update(outcome.groups)
        if job.forked:
            for ref in outcome.groups.values():
                if ref is not None:
                    self.store.remember(GroupRef.from_json(ref))
        self.problems = {gid: why for gid, why in self.problems.items() if gid in self.groups}
        for gid in outcome.groups:
            self.problems.pop(gid, None)
        self.problems.update(outcome.problems)
        self.last = outcome
        self.parent = outcome.generation
        self._commits_since_gc += 1
        if self._commits_since_gc >= GC_EVERY and self.allow_fork:
            self._commits_since_gc = 0
            self._start_retention()
        self._last_committed_cell = job.cell
        if self.on_fingerprints is not None and outcome.fingerprints:
            fresh = {n: fp for n, fp in outcome.fingerprints.items() if n not in self.changed}
            self.on_fingerprints(fresh)
        self.last_error = None


def track_notebook_classes(namespace: Mapping[str, Any], per_container: int = 100) -> None:
    """Give the notebook's classes their cloudpickle tracker ids in THIS process before forking.

    cloudpickle pickles a notebook class by value with a random tracker id, remembered only in
    the process that pickled it; unpickling reuses one class per id. An id made in a forked
    writer dies with it, so the class and its instances, written by different writers, would
    come back as two different classes (`type(p) is Point` False)."""
    tracker = getattr(cloudpickle.cloudpickle, "_get_or_create_tracker_id", None)
    if tracker is None:
        return
    for value in list(namespace.values()):
        candidates = [value, type(value)]
        if isinstance(value, (list, tuple, set, frozenset)):
            candidates += [type(item) for item in itertools.islice(value, per_container)]
        elif isinstance(value, dict):
            candidates += [type(item) for item in itertools.islice(value.values(), per_container)]
        for cls in candidates:
            if isinstance(cls, type) and cls.__module__ == "__main__":
                tracker(cls)


def _leave_the_kernel() -> None:
    """In a forked writer or retention process. Its own process group: the signals meant for the
    kernel (an interrupt's SIGINT, the SIGTERM/SIGKILL of a shutdown, sent to the kernel's group)
    must not end a write that a restart is about to need. With no kernel left to watch it, it
    limits its own lifetime."""
    gc.disable()
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.alarm(int(WRITER_TIMEOUT))


def _snapshot_process(
    store: Any, namespace: Mapping[str, Any], job: Job, read_fd: int, write_fd: int
) -> None:
    """Runs in the forked process; never returns."""
    code = 1
    try:
        os.close(read_fd)
        _leave_the_kernel()
        hold_while_writing(store)  # first: a restore after the kernel's death waits for this write
        os.nice(BACKGROUND_NICENESS)
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the process ends with os._exit)
        warnings.simplefilter("ignore")
        try:
            store.after_fork()
            outcome = write_job(store, namespace, job)
            code = 0
        except Exception as exc:
            outcome = Outcome(error=describe_error(exc))
        payload = json.dumps(outcome.to_json()).encode()
        view = memoryview(payload)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(code)


def _retention_process(store: Any) -> None:
    """Runs in the forked process; never returns."""
    code = 1
    try:
        _leave_the_kernel()
        os.nice(BACKGROUND_NICENESS)
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the process ends with os._exit)
        store.after_fork()
        store.gc(keep_last=GC_KEEP_LAST)  # best effort: a failed pass is retried GC_EVERY commits later
        code = 0
    finally:
        os._exit(code)


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
