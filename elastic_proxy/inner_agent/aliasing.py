"""Alias groups: variables whose objects share a reachable mutable object.

Why: names that share state must be checkpointed together (one pickle keeps the sharing) and
checked together (a mutation through `b` changes `a`). The groups are kept incrementally: each
name remembers the ids of the mutable objects reachable from it, an inverted index maps an id
to the names that reach it, and a cell that touched only `x` re-walks only `x`.

No strong references are kept to the objects whose ids are remembered: an id can be reused
after its object dies, which can only merge groups that need not be merged (safe, a little
more work), never split groups that share state. Re-walking a name forgets its stale ids.
"""

from __future__ import annotations

import builtins
import gc
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

from .process_objects import process_object_types

__all__ = ["AliasGroups", "reachable_ids"]

_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis)})
# Shared immutable containers carry no state of their own: descend, but do not record.
_IMMUTABLE_CONTAINERS = (tuple, frozenset)
# Where sharing means nothing for a checkpoint (pickled by reference or not at all).
_STOP_TYPES = (
    type, types.ModuleType, types.CodeType, types.FrameType, types.GeneratorType, types.CoroutineType,
    types.AsyncGeneratorType, types.MethodDescriptorType,
    types.WrapperDescriptorType, types.GetSetDescriptorType, types.MemberDescriptorType,
)
_FLAT_CHECK_MIN = 32
_BUILTINS_DICT_ID = id(builtins.__dict__)
DEFAULT_MAX_OBJECTS = 2_000_000


def _all_atoms(items: Any) -> bool:
    return set(map(type, items)) <= _ATOMS


def reachable_ids(
    obj: Any, namespace: Any = None, max_objects: int = DEFAULT_MAX_OBJECTS
) -> tuple[set[int], bool]:
    """Ids of the mutable objects reachable from `obj`, and False if the walk hit `max_objects`.

    Bounded: it does not descend into array elements, atoms, modules, classes, code or
    frames, nor into module globals (`namespace` and any dict holding `__builtins__`), and
    skips flat runs of atoms in C. Functions count by their closure cells, defaults and
    attributes; numpy arrays by themselves and their `.base` chain (views share a base)."""
    found: set[int] = set()
    seen: set[int] = set()
    stack = [obj]
    numpy = sys.modules.get("numpy")
    skip = {_BUILTINS_DICT_ID} if namespace is None else {_BUILTINS_DICT_ID, id(namespace)}
    stop_types = _STOP_TYPES + process_object_types()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _ATOMS:
            continue
        ident = id(item)
        if ident in seen or ident in skip:
            continue
        seen.add(ident)
        if len(seen) > max_objects:
            return found, False
        if isinstance(item, stop_types):
            continue
        if isinstance(item, types.BuiltinFunctionType):  # `lst.append` shares `lst`
            if not isinstance(item.__self__, types.ModuleType):
                stack.append(item.__self__)
            continue
        if not isinstance(item, _IMMUTABLE_CONTAINERS):
            found.add(ident)
        if numpy is not None and isinstance(item, numpy.ndarray):
            stack.extend(_array_children(item, found))
        elif isinstance(item, dict):
            if "__builtins__" in item:
                continue
            if len(item) < _FLAT_CHECK_MIN or not _all_atoms(item):
                stack.extend(item)
            values = item.values()
            if len(item) < _FLAT_CHECK_MIN or not _all_atoms(values):
                stack.extend(values)
        elif isinstance(item, (list, tuple, set, frozenset)):
            if len(item) < _FLAT_CHECK_MIN or not _all_atoms(item):
                stack.extend(item)
            if kind not in (list, tuple, set, frozenset):
                stack.extend(gc.get_referents(item))
        elif isinstance(item, types.FunctionType):
            stack.extend(c for c in (item.__closure__ or ()))
            stack.extend([item.__defaults__, item.__kwdefaults__, getattr(item, "__dict__", None)])
        elif isinstance(item, types.CellType):
            try:
                stack.append(item.cell_contents)
            except ValueError:
                pass
        else:
            stack.extend(gc.get_referents(item))
    return found, True


def _array_children(arr: Any, found: set[int]) -> list[Any]:
    """A view shares memory with its base: record the whole base chain. Object arrays hold
    Python objects, which are walked like a list's elements."""
    base = arr.base
    while base is not None:
        found.add(id(base))
        base = getattr(base, "base", None)
    children: list[Any] = [vars(arr)] if hasattr(arr, "__dict__") else []
    if arr.dtype.hasobject:
        children.extend(arr.ravel().tolist() if arr.ndim else [arr.item()])
    return children


class AliasGroups:
    """Connected components of names over shared reachable mutable objects."""

    def __init__(self, max_objects: int = DEFAULT_MAX_OBJECTS) -> None:
        self.max_objects = max_objects
        self._reach: dict[str, set[int]] = {}
        self._holders: dict[int, set[str]] = {}
        self._component_of: dict[str, int] = {}
        self._components: dict[int, set[str]] = {}
        self._next_component = 0
        self.truncated: set[str] = set()  # names whose walk hit max_objects (groups may miss sharing)

    # -- queries ---------------------------------------------------------------------------------

    def group_of(self, name: str) -> frozenset[str]:
        """The names sharing state with `name`, itself included (just itself when unknown)."""
        component = self._component_of.get(name)
        return frozenset(self._components[component]) if component is not None else frozenset({name})

    def groups(self) -> list[set[str]]:
        return [set(members) for members in self._components.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._reach

    # -- changes -----------------------------------------------------------------------------------

    def update(self, objects: Mapping[str, Any], names: Iterable[str] | None = None,
               removed: Iterable[str] = ()) -> None:
        """(Re)walk `names` (default: every key of `objects`), reading their objects from
        `objects`, which may be the whole namespace; forget `removed` and names that are no
        longer in `objects`. Only the components of the names involved are recomputed."""
        targets = list(objects) if names is None else list(names)
        gone = {n for n in removed if n in self._reach}
        gone |= {n for n in targets if n not in objects and n in self._reach}
        walked: list[str] = []
        shrank = bool(gone)
        for name in targets:
            if name not in objects:
                continue
            new, complete = reachable_ids(objects[name], objects, self.max_objects)
            if complete:
                self.truncated.discard(name)
            else:
                self.truncated.add(name)
            shrank = shrank or not self._reach.get(name, set()) <= new
            self._set_reach(name, new)
            walked.append(name)
        if shrank:
            zone = set(gone)
            for name in [*gone, *walked]:
                zone |= self._members(name)
            for name in walked:
                zone |= self._sharers(name)
            for name in gone:
                self._set_reach(name, set())
                del self._reach[name]
            self.truncated -= gone
            self._recompute(zone)
        else:
            for name in walked:
                self._merge(self._members(name) | self._sharers(name))

    def remove(self, name: str) -> None:
        self.update({}, (), removed=[name])

    # -- internals ----------------------------------------------------------------------------------

    def _members(self, name: str) -> set[str]:
        component = self._component_of.get(name)
        return set(self._components[component]) if component is not None else {name}

    def _sharers(self, name: str) -> set[str]:
        """Names reaching any object `name` reaches, with their whole components."""
        found: set[str] = set()
        for ident in self._reach.get(name, ()):
            for holder in self._holders.get(ident, ()):
                if holder not in found:
                    found |= self._members(holder)
        return found

    def _set_reach(self, name: str, new: set[int]) -> None:
        old = self._reach.get(name, set())
        for ident in old - new:
            holders = self._holders.get(ident)
            if holders is not None:
                holders.discard(name)
                if not holders:
                    del self._holders[ident]
        for ident in new - old:
            self._holders.setdefault(ident, set()).add(name)
        self._reach[name] = new

    def _detach(self, names: set[str]) -> None:
        for name in names:
            component = self._component_of.pop(name, None)
            if component is not None:
                members = self._components.get(component)
                if members is not None:
                    members.discard(name)
                    if not members:
                        del self._components[component]

    def _assign(self, members: set[str]) -> None:
        component = self._next_component
        self._next_component += 1
        self._components[component] = members
        for name in members:
            self._component_of[name] = component

    def _merge(self, names: set[str]) -> None:
        """Only new sharing appeared: `names` (whole components) become one component."""
        live = {n for n in names if n in self._reach}
        if live:
            self._detach(live)
            self._assign(live)

    def _recompute(self, names: set[str]) -> None:
        """Some sharing may have gone: split `names` (closed under sharing) into components."""
        self._detach(names)
        pending = {n for n in names if n in self._reach}
        while pending:
            start = pending.pop()
            members = {start}
            frontier = [start]
            while frontier:
                name = frontier.pop()
                for ident in self._reach[name]:
                    for other in self._holders.get(ident, ()):
                        if other not in members:
                            members.add(other)
                            frontier.append(other)
            pending -= members
            self._detach(members)
            self._assign(members)
