"""The agent: wires the recorder, the checkpointer and the store into one IPython shell.

Lives for the life of the kernel process. It is the one place that knows about ipykernel
(IOPub publishing, the connection file, the parent of the current request); the parts it wires
know only the shell's namespace and the store.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import time
import types
from collections import ChainMap, deque
from collections.abc import Collection, Mapping
from typing import Any, Union

from . import fingerprint
from .checkpointer import WRITER_TIMEOUT, Checkpointer, State
from .optimizer import NOMINAL_BANDWIDTH
from .recorder import Recorder, estimate_size
from .restore import NO_CHECKPOINT, RestoreReport, restore_session
from .skipped import SkippedRestore, skipped_restore
from .writer_lock import wait_for_writers

MESSAGE_CHECKPOINT = "elastic_checkpoint"
CELL_SEGMENT = 64
OUT_MAX_BYTES = 16 << 20
MESSAGE_RESTORE = "elastic_restore"
Notice = Union[RestoreReport, SkippedRestore]

#: How long a restore waits for a checkpoint writer that outlived its kernel (then it takes what is there).
WRITER_WAIT_SECONDS = WRITER_TIMEOUT
"""A restore waits for a dead kernel's writers as long as a writer may live: giving up earlier would
restore an older state while the newer one is still being committed."""


def session_name(environ: Any = os.environ) -> str:
    """ELASTIC_PROXY_SESSION, else JPY_SESSION_NAME relative to the Jupyter root (the same on every
    host that opens the notebook: see session_identity), else one derived from the connection file."""
    from ..session_identity import session_from_environment

    name = session_from_environment(environ)
    if name:
        return name
    try:
        from ipykernel.connect import get_connection_file

        base = os.path.basename(get_connection_file())
    except Exception:
        return f"ipython-{os.getpid()}"
    for prefix in ("kernel-",):
        base = base[len(prefix) :] if base.startswith(prefix) else base
    return "kernel/" + os.path.splitext(base)[0]


class Agent:
    """One per shell: records, checkpoints, restores, answers %elastic."""

    def __init__(self, shell: Any, store: Any, allow_fork: bool = True) -> None:
        self.shell = shell
        self.store = store
        root = str(getattr(store, "root", ""))
        self.recorder = Recorder(shell, ignore_prefixes=[root] if root and "://" not in root else [])
        self.checkpointer = Checkpointer(
            store,
            namespace=self._namespace,
            describe_state=self.describe_state,
            publish=self._publish_checkpoint,
            allow_fork=allow_fork,
            on_fingerprints=self._accept_fingerprints,
        )
        self.recorder.listeners.append(self._on_cell)
        self.pending_report: Notice | None = None
        self.last_report: RestoreReport | None = None
        self.skipped_generation: int | None = None
        """The generation a skipped restore listed: `%elastic restore --skip` restores that one,
        even after cells of the new child have committed newer generations."""
        self._parent: Any = None
        self._pre_seconds = 0.0
        self.overhead: deque[float] = deque(maxlen=1000)
        """Seconds the agent's hooks took, per cell (the user-visible cost; the bench reads it)."""
        self._cells_json_of: Any = None
        self._cells_json: dict[int, dict[str, Any]] = {}
        self._segments: list[dict[str, Any]] = []
        self._out_sizes: dict[int, int] = {}
        self._out_values: dict[str, Any] = {}

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Hook in; variables that exist already (loaded mid-session) are taken over as they are."""
        self.recorder.adopt([n for n in self.shell.user_ns if n not in self.recorder.fingerprints])
        self.shell.events.register("pre_run_cell", self._before_cell)
        self.shell.events.register("post_run_cell", self._after_cell)
        atexit.register(self._hand_over)

    def _hand_over(self) -> None:
        """At the kernel's exit (shutdown, restart): start writing what is not committed, without
        waiting. Otherwise a restart right after a big cell loses the cells since the last commit;
        forked writers outlive the kernel, and the next kernel's restore waits for them."""
        try:
            self.checkpointer.poll()
        except Exception as exc:
            self._hook_failed("exit", exc)

    def stop(self) -> None:
        atexit.unregister(self._hand_over)
        for event, hook in (("pre_run_cell", self._before_cell), ("post_run_cell", self._after_cell)):
            try:
                self.shell.events.unregister(event, hook)
            except ValueError:
                pass
        self.checkpointer.wait(timeout=30)

    def _before_cell(self, info: Any) -> None:
        started = time.perf_counter()
        try:
            self._parent = self._current_parent()
            self.checkpointer.poll()
            if self.pending_report is not None:
                report, self.pending_report = self.pending_report, None
                if not report.found_nothing:
                    self.display(report.mimebundle())
            self.recorder.pre_run_cell(info)
        except Exception as exc:
            self._hook_failed("before the cell", exc)
        self._pre_seconds = time.perf_counter() - started

    def _on_cell(self, cell: Any, recorder: Recorder) -> None:
        if recorder.adopted:
            recorder.adopted.clear()
            self.checkpointer.needs_commit = True
        self.checkpointer.on_cell(cell)

    def _after_cell(self, result: Any) -> None:
        started = time.perf_counter()
        try:
            with fingerprint.at_one_moment():  # no user code runs here: `fig` and `ax` draw one figure once
                self.recorder.post_run_cell(result)
                self.checkpointer.poll()
        except Exception as exc:
            self._hook_failed("after the cell", exc)
        self.overhead.append(self._pre_seconds + time.perf_counter() - started)

    def _hook_failed(self, where: str, exc: Exception) -> None:
        """An agent bug must not break the user's cell: one line on stderr, kept for %elastic status."""
        message = f"elastic agent failed {where}: {type(exc).__name__}: {exc}"
        self.checkpointer.last_error = message
        self.checkpointer.needs_commit = True
        print(message + " (this cell's effects may be missing from checkpoints)", file=sys.stderr)

    # state for the checkpoint ----------------------------------------------------------------
    def describe_state(self) -> State:
        """Alias groups, the manifest body (without groups), and size estimates, for one write."""
        rec = self.recorder
        groups = {gid: tuple(sorted(names)) for gid, names in rec.alias_groups().items()}
        ns = self.shell.user_ns
        variables: dict[str, Any] = {}
        for gid, names in groups.items():
            for name in names:
                value = ns[name]
                entry = {
                    "group": gid,
                    "fingerprint": None if name in rec.deferred else rec.fingerprints.get(name, b"").hex(),
                    "type": f"{type(value).__module__}.{type(value).__qualname__}",
                    "size": rec.sizes.get(name, 0),
                    "opaque": name in rec.opaque,
                }
                if isinstance(value, types.GeneratorType):
                    entry["generator_state"] = inspect.getgeneratorstate(value)
                variables[name] = entry
        outputs = self._outputs()
        groups.update({gid: (gid,) for gid in outputs.values()})
        segments, cells = self._cell_log()
        count = max((c.execution_count for c in rec.graph.cells.values()), default=0)
        body = {
            "cells": cells,
            "cell_segments": segments,
            "outputs": {str(n): gid for n, gid in sorted(outputs.items())},
            "graph": {"format": 1, "nominal_bandwidth": NOMINAL_BANDWIDTH},
            "plan": {},
            "variables": variables,
            "execution_count": count,
            "lost": {},
        }
        previous = {n: rec.fingerprints[n].hex() for n in rec.deferred if rec.fingerprints.get(n)}
        return State(groups, body, dict(rec.sizes), set(rec.deferred), previous)

    def _outputs(self) -> dict[int, str]:
        """Out[n] entries worth storing (each its own group "Out[n]", written once): they ride
        along with checkpoints that state changes trigger, never trigger one themselves."""
        history = getattr(self.shell, "history_manager", None)
        out = getattr(history, "output_hist", None) or {}
        kept: dict[int, str] = {}
        self._out_values = {}
        for number, value in list(out.items()):
            if number not in self._out_sizes:
                self._out_sizes[number] = estimate_size(value)
            if self._out_sizes[number] <= OUT_MAX_BYTES:
                gid = f"Out[{number}]"
                self._out_values[gid] = value
                kept[number] = gid
        return kept

    def _namespace(self) -> Mapping[str, Any]:
        return ChainMap(self._out_values, self.shell.user_ns)

    def _cell_log(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(sealed segments as GroupRef JSON, the unsealed tail of cells as JSON).

        A manifest carrying the whole cell log would make every commit cost O(cells); full
        segments of CELL_SEGMENT cells are written once as content-addressed blobs instead."""
        graph = self.recorder.graph
        if self._cells_json_of is not graph:
            self._cells_json_of, self._cells_json, self._segments = graph, {}, []
        for index, cell in graph.cells.items():
            if index not in self._cells_json:
                self._cells_json[index] = cell.to_json()
        order = sorted(self._cells_json)
        sealed = len(self._segments) * CELL_SEGMENT
        while len(order) - sealed >= 2 * CELL_SEGMENT:
            chunk = [self._cells_json[i] for i in order[sealed : sealed + CELL_SEGMENT]]
            self._segments.append(self.store.put_group({"cells": chunk}).to_json())
            sealed += CELL_SEGMENT
        return list(self._segments), [self._cells_json[i] for i in order[sealed:]]

    def _accept_fingerprints(self, prints: dict[str, list[Any]]) -> None:
        self.recorder.accept_fingerprints({n: (bytes.fromhex(h), bool(o)) for n, (h, o) in prints.items()})

    # restore ---------------------------------------------------------------------------------
    def restore(self, generation: int | None = None, skip: Collection[str] = ()) -> RestoreReport:
        """Restore into the shell and continue recording from the restored state."""
        self.checkpointer.wait(timeout=60)
        wait_for_writers(self.store, timeout=WRITER_WAIT_SECONDS,  # a dead kernel's writer may be finishing
                         on_wait=lambda _: self._publish_progress("waiting for a checkpoint being written", 0, 0))
        self.recorder.paused = True
        try:
            restored = restore_session(self.shell, self.store, generation, progress=self._publish_progress,
                                       skip=skip)
        finally:
            self.recorder.paused = False
        rec = self.recorder
        rec.graph = restored.graph
        rec.adopt(restored.names, restored.prints)
        self.checkpointer.adopt(restored.groups, restored.problems, restored.report.generation)
        self.last_report = restored.report
        self._publish(MESSAGE_RESTORE, {"phase": "done", "done_bytes": restored.report.bytes_loaded,
                                        "total_bytes": restored.report.bytes_loaded,
                                        "report": restored.report.to_json()})
        return restored.report

    def restore_or_report(self) -> RestoreReport:
        """The restore at kernel start: a failure becomes a report, never a kernel without the agent."""
        try:
            return self.restore()
        except Exception as exc:
            report = RestoreReport(session=str(getattr(self.store, "session", "")))
            report.notes.append(f"restore failed, starting empty: {type(exc).__name__}: {exc}")
            self.last_report = report
            return report

    def skipped_notice(self, reason: str) -> SkippedRestore:
        """The supervisor skipped the restore (ELASTIC_PROXY_RESTORE_SKIPPED): say why and list
        the newest checkpoint's biggest variables, for `%elastic restore --skip`."""
        try:
            notice = skipped_restore(self.store, reason)
        except Exception as exc:  # the kernel must start with its agent even so
            notice = SkippedRestore(f"{reason} (and the checkpoints could not be read: {exc})")
        self.skipped_generation = notice.generation
        return notice

    def time_travel(self, cell: int, skip: Collection[str] = ()) -> RestoreReport:
        """The state after cell N: the newest valid generation whose last cell is <= N."""
        self.checkpointer.wait(timeout=60)
        target = None
        for manifest in self.store.generations():
            if manifest.valid and int(manifest.get("execution_count", 0)) <= cell:
                target = manifest.generation
                break
        if target is None:
            report = RestoreReport(session=self.store.session)
            report.notes.append(f"no checkpoint at or before cell [{cell}]")
            return report
        return self._replace_namespace(target, skip)

    def restore_skipping(self, skip: Collection[str]) -> RestoreReport:
        """`%elastic restore --skip NAME ...`: the generation a skipped restore listed (else the
        newest), without those variables, in place of the current namespace."""
        self.checkpointer.wait(timeout=60)
        target = self.skipped_generation
        if target is None:
            newest = self.store.latest()
            target = None if newest is None else newest.generation
        if target is None or not self.store.read_manifest(target).valid:
            report = RestoreReport(session=self.store.session)
            report.notes.append(NO_CHECKPOINT if target is None else f"generation {target} is no longer valid")
            return report
        return self._replace_namespace(target, skip)

    def _replace_namespace(self, generation: int, skip: Collection[str] = ()) -> RestoreReport:
        """The user's names give way to a restored generation; the result is committed as the
        newest generation, so the next restore starts from it."""
        self._clear_user_names()
        report = self.restore(generation, skip)
        self.recorder.discard_pending()
        self.checkpointer.needs_commit = True
        self.checkpointer.poll()
        return report

    def reset(self) -> None:
        """Forget this session's checkpoints and clear the namespace."""
        self.checkpointer.wait(timeout=60)
        self.store.forget()
        self.skipped_generation = None
        self._clear_user_names()
        self.recorder.reset()
        self.checkpointer.reset()

    def _clear_user_names(self) -> None:
        ns = self.shell.user_ns
        for name in [n for n in ns if self.recorder.is_user_name(n)]:
            del ns[name]

    # messages to the supervisor and the user ---------------------------------------------------
    def display(self, bundle: dict[str, str]) -> None:
        from IPython.display import display

        display(bundle, raw=True)

    def _current_parent(self) -> Any:
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None:
            return None
        try:
            return kernel.get_parent("shell")
        except Exception:
            return None

    def _publish(self, msg_type: str, content: dict[str, Any], parent: Any = None) -> None:
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None or getattr(kernel, "iopub_socket", None) is None:
            return
        kernel.session.send(
            kernel.iopub_socket,
            msg_type,
            content,
            parent=parent if parent is not None else (self._parent or {}),
            ident=kernel._topic(msg_type),
        )

    def _publish_checkpoint(self, content: dict[str, Any]) -> None:
        self._publish(MESSAGE_CHECKPOINT, content)

    def _publish_progress(self, phase: str, done: int, total: int) -> None:
        content = {"phase": phase, "done_bytes": done, "total_bytes": total, "report": None}
        self._publish(MESSAGE_RESTORE, content)
