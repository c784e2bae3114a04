"""The pre/post_run_cell hooks: what each cell read, created, rebound, mutated and deleted.

Cost follows what the cell touched, never the namespace size: the candidates are the names the
cell's AST mentions, the globals of notebook-defined functions it calls, and the alias groups
of those; only they are fingerprinted. A key-set diff of the namespace (cheap: keys only)
catches names made dynamically (exec, globals()[...], star imports, magics).
"""

from __future__ import annotations

import itertools
import re
import sys
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from . import aliasing, analysis, fingerprint, sideeffects
from .graph import CellExecution, SessionGraph
from .process_objects import process_object_types

DEFER_FINGERPRINT_ABOVE = 16 << 20
"""Values estimated bigger than this are fingerprinted by the checkpoint writer (a forked
process), not in the hook: hashing 1 GB would otherwise add ~0.2 s to the user's cell. Until the
writer reports back, touching such a value counts as a (possible) mutation: errs towards changed."""

_IPYTHON_NAMES = frozenset(
    {"In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh", "exit", "quit", "get_ipython"}
)
_IPYTHON_NUMBERED = re.compile(r"^_i{0,3}\d+$")


def is_user_name(name: str, hidden: Iterable[str] = ()) -> bool:
    """True for names the user made, False for IPython's own bookkeeping (In, Out, _12, _i3...)."""
    if name in _IPYTHON_NAMES or _IPYTHON_NUMBERED.match(name):
        return False
    if name.startswith("__") and name.endswith("__"):
        return False  # the module's own __name__, __builtins__, __spec__...
    return name not in hidden


def cell_facts(shell: Any, raw_cell: str, transformed: str | None) -> analysis.CellNames:
    """The AST facts of a cell; the analysis looks inside %%time/%%capture/%%timeit bodies itself."""
    if transformed is None:
        transformed = shell.transform_cell(raw_cell)
    return analysis.cell_names(transformed, transform=shell.transform_cell)


_SAMPLE = 64


def estimate_size(obj: Any, budget: int = 2000) -> int:
    """Bytes, roughly, with bounded work: enough to choose inline vs forked writes and load costs.

    Iterative, with one `seen` set and one budget for the whole walk: a big container is
    sampled (its first members stand for all of them, weighted), never walked by a nested call,
    since object graphs such as a Comm's (it holds the kernel, hence the whole process) are
    cyclic and made of big dicts, and nested walks with their own budgets never ended."""
    seen: set[int] = set()
    stack: list[tuple[Any, float]] = [(obj, 1.0)]
    total = 0.0
    process_objects = process_object_types()
    while stack and budget > 0:
        item, weight = stack.pop()
        if id(item) in seen or isinstance(item, process_objects):
            continue
        seen.add(id(item))
        budget -= 1
        try:
            nbytes = getattr(item, "nbytes", None)
            own = sys.getsizeof(item)
            attributes = hasattr(item, "__dict__")
        except Exception:
            continue  # a proxy whose attribute access raises: its size is unknown, not an error
        if isinstance(nbytes, int) and not isinstance(item, type):
            total += weight * nbytes
            continue
        total += weight * own
        if isinstance(item, (dict, list, tuple, set, frozenset)):
            members = item.values() if isinstance(item, dict) else item
            if len(item) > budget:
                sample = list(itertools.islice(members, _SAMPLE))
                share = weight * len(item) / max(1, len(sample))
                stack.extend((member, share) for member in sample)
                continue
            stack.extend((member, weight) for member in members)
        elif attributes and not isinstance(item, (type, types.ModuleType, types.FunctionType)):
            stack.append((getattr(item, "__dict__", None), weight))
    return int(total)


@dataclass
class _Pending:
    """What pre_run_cell saw, kept for post_run_cell."""

    raw_cell: str
    facts: analysis.CellNames
    before_ids: dict[str, int]
    candidates: set[str]
    reads: set[str]
    keys_before: set[str] | None
    audit: Any
    started: float


CellListener = Callable[[CellExecution, "Recorder"], None]


class Recorder:
    """Records every cell execution into a SessionGraph and keeps fingerprints and alias groups."""

    def __init__(
        self, shell: Any, listeners: Iterable[CellListener] = (), ignore_prefixes: Iterable[str] = ()
    ) -> None:
        self.shell = shell
        self.ignore_prefixes = tuple(ignore_prefixes)
        self.graph = SessionGraph()
        self.fingerprints: dict[str, bytes] = {}
        self.opaque: set[str] = set()
        self.deferred: set[str] = set()
        self.defer_above = DEFER_FINGERPRINT_ABOVE
        self.adopted: set[str] = set()
        """Names taken over without a producing cell (there before the agent, or restored):
        they can only be loaded. The agent drains it to schedule a checkpoint."""
        self.sizes: dict[str, int] = {}
        self.aliases = aliasing.AliasGroups()
        self.listeners = list(listeners)
        self._paused = False
        self._pending: _Pending | None = None
        self._rng_after: dict[str, Any] | None = None  # the generators as the last recorded cell left them

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        """While paused (a restore re-running cells), the generators move unrecorded."""
        self._paused = value
        self._rng_after = None

    @property
    def namespace(self) -> dict[str, Any]:
        return self.shell.user_ns

    def is_user_name(self, name: str) -> bool:
        return is_user_name(name, getattr(self.shell, "user_ns_hidden", ()))

    def discard_pending(self) -> None:
        """Do not record the running cell (it replaced the whole state, e.g. a time travel)."""
        if self._pending is not None:
            self._pending.audit.stop()
        self._pending = None
        self._rng_after = None

    def reset(self) -> None:
        """Forget everything recorded (the namespace was cleared)."""
        self.discard_pending()
        self.graph = SessionGraph()
        self.fingerprints, self.sizes, self.opaque, self.deferred = {}, {}, set(), set()
        self.adopted = set()
        self.aliases = aliasing.AliasGroups()

    def pre_run_cell(self, info: Any) -> None:
        if self.paused:
            return
        raw = info.raw_cell or ""
        facts = cell_facts(self.shell, raw, getattr(info, "transformed_cell", None))
        ns = self.namespace
        called = analysis.called_globals(facts.calls | facts.loads, ns)
        touched = facts.candidates | facts.deletes | called.names
        if called.dynamic:
            facts.flag_dynamic("a called function uses globals() or exec")
        if facts.dynamic:
            # exec, eval, a magic or globals() can reach any name, mentioned or not.
            touched = set(ns)
        candidates = self._with_aliases({n for n in touched if self.is_user_name(n)})
        before_ids = {name: id(ns[name]) for name in candidates if name in ns}
        keys_before = set(ns) if facts.dynamic else None
        if keys_before is not None:
            reads = {n for n in keys_before if self.is_user_name(n)}
        else:
            used = facts.loads | facts.mutated | facts.calls | called.loads
            reads = {n for n in self._with_aliases({n for n in used if self.is_user_name(n)}) if n in ns}
        audit = sideeffects.AuditRecorder(self.ignore_prefixes)
        audit.start(self._rng_after)
        self._pending = _Pending(
            raw, facts, before_ids, candidates, reads, keys_before, audit, time.perf_counter()
        )

    def post_run_cell(self, result: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self.paused:
            return
        runtime = time.perf_counter() - pending.started
        events = pending.audit.stop(pending.facts.seeds)
        self._rng_after = pending.audit.rng_after
        ns = self.namespace
        candidates = set(pending.candidates)
        if pending.keys_before is not None:
            keys_after = set(ns)
            moved = (keys_after - pending.keys_before) | (pending.keys_before - keys_after)
            candidates |= self._with_aliases({n for n in moved if self.is_user_name(n)})
        created, rebound, mutated, deleted = set(), set(), set(), set()
        untracked: list[str] = []
        for name in sorted(candidates):
            existed = name in pending.before_ids
            if name not in ns:
                if existed or name in self.fingerprints:
                    deleted.add(name)
                    self._forget(name)
                continue
            value = ns[name]
            if existed and name not in self.fingerprints and pending.before_ids[name] == id(value):
                untracked.append(name)  # there before the agent: no cell of ours made it
                continue
            if isinstance(value, types.ModuleType) and existed and pending.before_ids[name] == id(value):
                continue
            size = estimate_size(value)
            big = size > self.defer_above
            new_fp = None if big else self._fingerprint(value)
            if not existed and name not in self.fingerprints:
                created.add(name)
            elif not existed or pending.before_ids[name] != id(value):
                rebound.add(name)
            elif big or new_fp is None or name in self.opaque or self.fingerprints.get(name) != new_fp.digest:
                mutated.add(name)
            else:
                continue
            if big:
                self._defer(name, size)
            else:
                self._remember(name, value, new_fp, size)
        if untracked:
            self.adopt(untracked)
        changed = created | rebound | mutated
        if changed or deleted:
            self.aliases.update(ns, changed, deleted)
        cell = CellExecution(
            index=len(self.graph.cells),
            execution_count=int(getattr(result, "execution_count", None) or self.shell.execution_count),
            code=pending.raw_cell,
            runtime=runtime,
            reads=frozenset(pending.reads),
            created=frozenset(created),
            rebound=frozenset(rebound),
            mutated=frozenset(mutated),
            deleted=frozenset(deleted),
            error=_error_name(result),
            side_effects=tuple(events.side_effects),
            destructive=tuple(events.destructive),
            nondeterministic=tuple(pending.facts.nondeterministic) + tuple(events.nondeterministic),
        )
        self.graph.add_cell(cell)
        for listener in self.listeners:
            listener(cell, self)

    def _with_aliases(self, names: set[str]) -> set[str]:
        out = set(names)
        for name in names:
            out |= set(self.aliases.group_of(name))
        return out

    def _fingerprint(self, value: Any) -> fingerprint.Fingerprint | None:
        try:
            return fingerprint.inspect(value)
        except Exception:
            return None

    def _remember(
        self, name: str, value: Any, fp: fingerprint.Fingerprint | None, size: int | None = None
    ) -> None:
        self.fingerprints[name] = fp.digest if fp is not None else b""
        if fp is None or fp.opaque:
            self.opaque.add(name)
        else:
            self.opaque.discard(name)
        self.deferred.discard(name)
        self.sizes[name] = estimate_size(value) if size is None else size

    def _defer(self, name: str, size: int) -> None:
        """Big value: its fingerprint is computed by the checkpoint writer, off the user's time.
        The last known fingerprint stays, so the writer can tell "touched but unchanged"."""
        self.fingerprints.setdefault(name, b"")
        self.opaque.discard(name)
        self.deferred.add(name)
        self.sizes[name] = size

    def accept_fingerprints(self, prints: dict[str, tuple[bytes, bool]]) -> None:
        """Fingerprints the writer computed for deferred names (unchanged since its snapshot)."""
        for name, (digest, opaque) in prints.items():
            if name in self.deferred:
                self.deferred.discard(name)
                self.fingerprints[name] = digest
                if opaque:
                    self.opaque.add(name)

    def _forget(self, name: str) -> None:
        self.fingerprints.pop(name, None)
        self.sizes.pop(name, None)
        self.opaque.discard(name)
        self.deferred.discard(name)

    def live_variables(self) -> list[str]:
        """The user's names that exist now and that the recorder has seen."""
        ns = self.namespace
        return sorted(name for name in self.fingerprints if name in ns)

    def alias_groups(self) -> dict[str, frozenset[str]]:
        """Current alias groups of live variables, keyed by a stable id (the sorted member names)."""
        live = set(self.live_variables())
        groups: dict[str, frozenset[str]] = {}
        done: set[str] = set()
        for name in sorted(live):
            if name in done:
                continue
            members = frozenset(set(self.aliases.group_of(name)) & live | {name})
            done |= members
            groups[",".join(sorted(members))] = members
        return groups

    def adopt(self, names: Iterable[str], known: Mapping[str, fingerprint.Fingerprint] | None = None) -> None:
        """Start tracking names that appeared outside a recorded cell (after a restore); `known`
        fingerprints (the restore just verified them) are not computed again."""
        ns = self.namespace
        known = known or {}
        names = [n for n in names if n in ns and self.is_user_name(n)]
        for name in names:
            print_ = known.get(name)
            size = estimate_size(ns[name])
            if print_ is None and size > self.defer_above:
                self._defer(name, size)
            else:
                self._remember(name, ns[name], print_ if print_ is not None else self._fingerprint(ns[name]), size)
        self.adopted |= set(names)
        if names:
            self.aliases.update(ns, set(names), set())


def _error_name(result: Any) -> str | None:
    error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    return None if error is None else type(error).__name__
