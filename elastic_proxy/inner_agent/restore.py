"""Bring a session back from the store: load, recompute, verify, and say exactly what happened.

Order: pick the newest valid generation (falling back past one that fails to load), plan per
alias group, load every migrated group into a scratch dict first (so a bad generation leaves
the namespace untouched), then re-run the recompute cells in order with output captured, then
check every value's fingerprint against the recorded one. A recomputed value that differs is
replaced by the stored one when there is one, and named in the report either way.
"""

from __future__ import annotations

import html
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from ..store import IntegrityError, SerializationError, StoreError
from . import fingerprint
from .graph import CellExecution, SessionGraph
from .optimizer import GroupCost, Plan, plan

_GENERATOR_FRESH = "GEN_CREATED"
NO_CHECKPOINT = "no checkpoint for this session"
SKIPPED_BY_USER = "skipped at your request"
TRUST_LOADED_ABOVE = 16 << 20
"""A loaded value this big is not fingerprinted again: every byte of it was just checked against
its blake3 address, and the recorded fingerprint describes exactly those bytes. Hashing 1 GB a
second time would add ~0.2 s to the restore. Recomputed values are always checked."""


@dataclass
class RestoreReport:
    """What a restore did, by name. Renders as text and as HTML."""

    session: str = ""
    generation: int | None = None
    cell: int | None = None
    restored: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    unverified: dict[str, str] = field(default_factory=dict)
    rerun_cells: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bytes_loaded: int = 0
    seconds: float = 0.0
    execution_count: int = 0

    @property
    def complete(self) -> bool:
        return self.generation is not None and not self.lost and not self.mismatched

    @property
    def found_nothing(self) -> bool:
        """A new session: no checkpoint at all, so nothing the user needs to hear about. A
        checkpoint that existed but could not be used is never "nothing" (its notes say why)."""
        return (self.generation is None and self.notes == [NO_CHECKPOINT] and not self.lost
                and not self.mismatched)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    def headline(self) -> str:
        if self.generation is None:
            return "elastic: nothing to restore" + (f" ({self.notes[-1]})" if self.notes else "")
        where = f"generation {self.generation} (state after cell [{self.cell}])"
        return (
            f"elastic: restored {where}: {len(self.restored)} loaded, {len(self.recomputed)} recomputed, "
            f"{len(self.lost)} lost, {len(self.mismatched)} differ, in {self.seconds:.2f} s"
        )

    def to_text(self) -> str:
        lines = [self.headline()]
        if self.restored:
            lines.append("  loaded: " + ", ".join(self.restored))
        if self.recomputed:
            cells = ", ".join(f"[{c}]" for c in self.rerun_cells)
            lines.append("  recomputed: " + ", ".join(self.recomputed) + f" (re-ran cells {cells})")
        for name, why in sorted(self.lost.items()):
            lines.append(f"  LOST {name}: {why}")
        for name, why in sorted(self.mismatched.items()):
            lines.append(f"  DIFFERS {name}: {why}")
        for name, why in sorted(self.unverified.items()):
            lines.append(f"  unverified {name}: {why}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    __str__ = to_text

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.to_text())

    def _repr_html_(self) -> str:
        rows = []
        for label, names in (("loaded", self.restored), ("recomputed", self.recomputed)):
            if names:
                rows.append(f"<tr><th>{label}</th><td>{html.escape(', '.join(names))}</td></tr>")
        flagged = (("lost", self.lost), ("differs", self.mismatched), ("unverified", self.unverified))
        for label, entries in flagged:
            for name, why in sorted(entries.items()):
                rows.append(
                    f"<tr style='color:#b00'><th>{label}</th><td><code>{html.escape(name)}</code>: "
                    f"{html.escape(why)}</td></tr>"
                )
        for note in self.notes:
            rows.append(f"<tr><th>note</th><td>{html.escape(note)}</td></tr>")
        return (
            f"<div class='elastic-restore'><b>{html.escape(self.headline())}</b>"
            f"<table>{''.join(rows)}</table></div>"
        )

    def mimebundle(self) -> dict[str, str]:
        return {"text/plain": self.to_text(), "text/html": self._repr_html_()}


@dataclass
class Restored:
    """The pieces a restore hands back to the agent so recording continues where it left off."""

    report: RestoreReport
    graph: SessionGraph
    prints: dict[str, fingerprint.Fingerprint]
    groups: dict[str, Any]
    problems: dict[str, str]
    names: list[str]


def restore(
    shell: Any, store: Any, generation: int | None = None, skip: Collection[str] = ()
) -> RestoreReport:
    """Agent API: restore the newest valid generation (or `generation`) into `shell.user_ns`,
    without the variables named in `skip` (neither loaded nor recomputed)."""
    return restore_session(shell, store, generation, skip=skip).report


def restore_session(
    shell: Any,
    store: Any,
    generation: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    skip: Collection[str] = (),
) -> Restored:
    started = time.perf_counter()
    report = RestoreReport(session=getattr(store, "session", ""))
    for manifest in _candidates(store, generation, report):
        try:
            restored = _restore_manifest(shell, store, manifest, report, progress, frozenset(skip))
        except (IntegrityError, StoreError) as exc:
            report.notes.append(
                f"generation {manifest.generation} failed verification ({exc}); trying the previous one"
            )
            continue
        report.seconds = time.perf_counter() - started
        return restored
    if not report.notes:
        report.notes.append(NO_CHECKPOINT)
    report.seconds = time.perf_counter() - started
    return Restored(report, SessionGraph(), {}, {}, {}, [])


def _candidates(store: Any, generation: int | None, report: RestoreReport) -> list[Any]:
    if generation is not None:
        manifest = store.read_manifest(generation)
        if not manifest.valid:
            report.notes.append(f"generation {generation} is not valid ({manifest.problem})")
            return []
        return [manifest]
    out = []
    for manifest in store.generations():
        if manifest.valid:
            out.append(manifest)
        else:
            report.notes.append(f"skipped generation {manifest.generation}: {manifest.problem}")
    return out


def _group_costs(
    body: Mapping[str, Any], refs: Mapping[str, Any], lost: dict[str, str]
) -> dict[str, GroupCost]:
    variables = body.get("variables", {})
    members: dict[str, set[str]] = {}
    for name, entry in variables.items():
        members.setdefault(entry["group"], set()).add(name)
    groups = {}
    for gid, names in sorted(members.items()):
        ref = refs.get(gid)
        if ref is None:
            states = {variables[n].get("generator_state") for n in names}
            if states - {None, _GENERATOR_FRESH}:
                for name in names:
                    lost[name] = (
                        "a partially consumed generator cannot be stored, and re-running its cell would "
                        "start it over"
                    )
                continue
        size = ref.size if ref is not None else sum(int(variables[n].get("size", 0)) for n in names)
        groups[gid] = GroupCost(frozenset(names), size, serializable=ref is not None)
    return groups


PROGRESS_STEP_BYTES = 32 << 20


def _byte_progress(progress: Callable[[str, int, int], None] | None, done: int,
                   total: int) -> Callable[[int], None] | None:
    """Progress within one group, every PROGRESS_STEP_BYTES: a large group streamed from S3 takes
    a while, and a per-group report would say nothing until it ends."""
    if progress is None:
        return None
    state = {"done": done, "said": done}

    def on_bytes(count: int) -> None:
        state["done"] += count
        if state["done"] - state["said"] >= PROGRESS_STEP_BYTES:
            state["said"] = state["done"]
            progress("load", min(state["done"], total), total)

    return on_bytes


def _restore_manifest(
    shell: Any,
    store: Any,
    manifest: Any,
    report: RestoreReport,
    progress: Callable[[str, int, int], None] | None,
    skip: frozenset[str] = frozenset(),
) -> Restored:
    body = manifest.body
    refs = manifest.groups()
    variables: dict[str, Any] = body.get("variables", {})
    graph = SessionGraph.from_json({"cells": cell_log(store, body)})
    lost: dict[str, str] = {}
    groups = _group_costs(body, refs, lost)
    blocked = _skip_groups(graph, groups, skip, lost)
    unknown = sorted(skip - set(variables))
    if unknown:
        report.notes.append(f"not in generation {manifest.generation}, so not skipped: " + ", ".join(unknown))
    the_plan = plan(graph, groups, blocked_cells=blocked)
    lost.update(the_plan.lost)

    total = sum(refs[gid].size for gid in the_plan.migrate)
    loaded: dict[str, Any] = {}
    done = 0
    for gid in sorted(the_plan.migrate, key=lambda g: refs[g].size):
        try:
            objs = store.load_group(refs[gid], on_bytes=_byte_progress(progress, done, total))
        except SerializationError as exc:
            for name in groups[gid].names:
                lost[name] = f"stored, but could not be loaded: {exc}"
            continue
        loaded.update({name: objs[name] for name in groups[gid].names if name in objs})
        done += refs[gid].size
        if progress is not None:
            progress("load", done, total)

    ns = shell.user_ns
    ns.update(loaded)
    report.generation = manifest.generation
    report.cell = int(body.get("execution_count", 0))
    report.bytes_loaded = done
    report.restored = sorted(loaded)

    recomputed_names = sorted(n for gid in the_plan.recompute for n in groups[gid].names)
    failed = _rerun(shell, graph, the_plan, report)
    live = set(variables)
    for cell in (graph.cells[i] for i in the_plan.rerun_cells):
        for name in cell.written - live:
            ns.pop(name, None)
    for name in lost:
        if name not in loaded:
            ns.pop(name, None)

    prints: dict[str, fingerprint.Fingerprint] = {}
    stored_instead: dict[str, dict[str, Any]] = {}  # groups loaded after a re-run gave other values
    for name in recomputed_names:
        if name not in ns:
            lost[name] = "re-running its cells did not recreate it" + (f" ({failed})" if failed else "")
    for name in sorted(set(loaded) | {n for n in recomputed_names if n in ns}):
        expected = variables[name].get("fingerprint", "")
        if name in loaded and expected and not variables[name].get("opaque") and (
            int(variables[name].get("size", 0)) > TRUST_LOADED_ABOVE
        ):
            prints[name] = fingerprint.Fingerprint(bytes.fromhex(expected))
            continue
        print_ = _inspect(ns[name])
        actual = "" if print_ is None else print_.hex()
        if print_ is not None:
            prints[name] = print_
        if variables[name].get("opaque"):
            report.unverified[name] = (
                f"a {variables[name].get('type', 'value')} has no value fingerprint: back, not verified"
            )
            continue
        if not expected or actual == expected:
            continue
        how = "recomputed" if name in recomputed_names else "loaded"
        gid = variables[name]["group"]
        if how == "recomputed" and refs.get(gid) is not None:
            if gid not in stored_instead:
                try:
                    stored_instead[gid] = store.load_group(refs[gid])
                except (SerializationError, StoreError):
                    stored_instead[gid] = {}
                # All the group's names from one unpickle: they share objects again, as they did.
                ns.update(stored_instead[gid])
            if name in stored_instead[gid]:
                prints.pop(name, None)
                report.mismatched[name] = "re-running its cells gave a different value; loaded the stored one"
                _mark_nondeterministic(graph, the_plan, name)
                continue
        report.mismatched[name] = f"{how} value's fingerprint differs from the one recorded at checkpoint"
        _mark_nondeterministic(graph, the_plan, name)
    report.recomputed = [n for n in recomputed_names if n in ns and n not in lost]
    report.rerun_cells = [graph.cells[i].execution_count for i in the_plan.rerun_cells]
    report.notes.extend(the_plan.side_effect_cells.values())
    report.lost = dict(sorted(lost.items()))
    _restore_history(shell, graph, report)
    _restore_outputs(shell, store, body.get("outputs", {}), refs, report)
    problems = {gid: "not serializable" for gid, ref in refs.items() if ref is None}
    names = [n for n in variables if n in ns]
    return Restored(report, graph, prints, dict(manifest.get("groups", {})), problems, names)


def _skip_groups(
    graph: SessionGraph, groups: dict[str, GroupCost], skip: frozenset[str], lost: dict[str, str]
) -> dict[int, str]:
    """Take the skipped variables out of the plan: their alias groups are neither loaded (a
    group is one pickle, loaded whole) nor rebuilt, and the cells that make or read them may
    not re-run (that would bring back what was skipped, often to run out of memory again).
    Returns those cells with the reason, for the planner."""
    dropped: set[str] = set()
    for gid, group in list(groups.items()):
        named = sorted(group.names & skip)
        if not named:
            continue
        del groups[gid]
        dropped |= group.names
        for name in group.names:
            lost[name] = SKIPPED_BY_USER if name in skip else (
                f"shares its objects with skipped {', '.join(named)} (stored together, loaded together)"
            )
    blocked: dict[int, str] = {}
    for index, cell in graph.cells.items():
        made, read = sorted(cell.written & dropped), sorted(cell.reads & dropped)
        if made or read:
            how = f"makes skipped {', '.join(made)}" if made else f"reads skipped {', '.join(read)}"
            blocked[index] = f"its cell [{cell.execution_count}] {how}"
    return blocked


def cell_log(store: Any, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The whole cell log of a manifest: its sealed segments (verified blobs), then its tail."""
    cells: list[dict[str, Any]] = []
    for ref in body.get("cell_segments", []):
        cells.extend(store.load_group(ref)["cells"])
    cells.extend(body.get("cells", []))
    return cells


def _rerun(shell: Any, graph: SessionGraph, the_plan: Plan, report: RestoreReport) -> str:
    """Re-run the plan's cells in order, silently, output captured; returns the first failure."""
    from IPython.utils.capture import capture_output

    failure = ""
    for index in the_plan.rerun_cells:
        cell = graph.cells[index]
        with capture_output():
            result = shell.run_cell(cell.code, store_history=False, silent=True)
        error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        if error is not None and not failure:
            failure = f"cell [{cell.execution_count}] raised {type(error).__name__}: {error}"
            report.notes.append(failure)
    return failure


def _mark_nondeterministic(graph: SessionGraph, the_plan: Plan, name: str) -> None:
    """A recompute gave a different value: never recompute those cells again in this session."""
    for index in the_plan.rerun_cells:
        cell: CellExecution = graph.cells[index]
        if name in cell.written and "recompute differed" not in cell.nondeterministic:
            cell.nondeterministic = (*cell.nondeterministic, "recompute differed")


def _inspect(value: Any) -> fingerprint.Fingerprint | None:
    try:
        return fingerprint.inspect(value)
    except Exception:
        return None


def _restore_outputs(
    shell: Any, store: Any, outputs: Mapping[str, str], refs: Mapping[str, Any], report: RestoreReport
) -> None:
    """Out[n] (and _n) come back from their own groups; one that cannot is named in the notes."""
    history = getattr(shell, "history_manager", None)
    if history is None:
        return
    missing = []
    for number, gid in sorted(outputs.items(), key=lambda item: int(item[0])):
        ref = refs.get(gid)
        try:
            value = store.load_group(ref)[gid] if ref is not None else None
        except (SerializationError, StoreError):
            ref = None
        if ref is None:
            missing.append(number)
            continue
        history.output_hist[int(number)] = value
        shell.user_ns[f"_{number}"] = value
    if missing:
        report.notes.append("Out[" + "], Out[".join(missing) + "] not restored (could not be stored)")


def _restore_history(shell: Any, graph: SessionGraph, report: RestoreReport) -> None:
    """Execution counter and In come back: the next cell is numbered after the last recorded one."""
    last = max((c.execution_count for c in graph.cells.values()), default=report.cell or 0)
    last = max(last, report.cell or 0)
    report.execution_count = last
    if shell.execution_count <= last:
        shell.execution_count = last + 1
    history = getattr(shell, "history_manager", None)
    if history is None:
        return
    codes = {c.execution_count: c.code for c in graph.cells.values()}
    for hist in (history.input_hist_parsed, history.input_hist_raw):
        while len(hist) <= last:
            hist.append("")
        for count, code in codes.items():
            if 0 < count < len(hist) and not hist[count]:
                hist[count] = code
