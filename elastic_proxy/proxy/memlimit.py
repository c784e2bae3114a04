"""Put the kernel child in its own memory cgroup, so that an OOM kills the child and never the supervisor.

The kernel's OOM killer picks the biggest process of the cgroup that ran out of memory; a cgroup of
its own makes that the child (the user's code), while the supervisor, which must survive to restore
the session, stays outside. Without a writable memory cgroup we fall back to RLIMIT_AS, which is a
much weaker tool (it limits address space, not memory, and gives MemoryError instead of a kill).

Where things live:
- cgroup v1: ``<memory mount>/<our cgroup>/elastic-proxy/<name>`` with ``memory.limit_in_bytes`` and,
  when the kernel accounts swap, ``memory.memsw.limit_in_bytes`` (so swapping cannot hide the OOM).
- cgroup v2: ``<parent>/elastic-proxy/<name>`` with ``memory.max`` and ``memory.swap.max = 0``, where
  ``<parent>`` is our own cgroup if it may delegate the memory controller (the root of the
  namespace), else its parent: a v2 cgroup that holds processes (the supervisor) cannot enable
  controllers for its children.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable

import psutil

log = logging.getLogger(__name__)

BASE_DIR_NAME = "elastic-proxy"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|(b))?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_size(text: str) -> int:
    """Parse a memory size such as ``2G``, ``512MiB``, ``1.5g`` or ``1048576`` into bytes.

    Units are binary (K = 1024), as in docker, systemd and ulimit: a memory limit is compared with
    page counts, and "2G" meaning 2 GiB is what users of those tools expect.
    """
    match = _SIZE_RE.match(str(text))
    if match is None:
        raise ValueError(
            f"invalid memory size {text!r}: use a number of bytes or a number with a unit "
            "K, M, G, T (or KiB, MiB, GiB, TiB), e.g. 2G or 512M"
        )
    number, unit, _bytes = match.groups()
    size = int(float(number) * _UNITS[(unit or "").lower()])
    if size <= 0:
        raise ValueError(f"invalid memory size {text!r}: must be more than 0 bytes")
    return size


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup filesystem mount from /proc/self/mountinfo."""

    version: int
    root: str
    mount_point: str
    controllers: frozenset[str]


@dataclass(frozen=True)
class CgroupLocation:
    """Where our own memory cgroup is: its directory and the mount (namespace root) it lives under."""

    version: int
    directory: Path
    mount_point: Path


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup v1 and v2 mounts listed in a /proc/<pid>/mountinfo text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, super_options = tail[0], tail[2]
        root, mount_point = _unescape_mountinfo(fields[3]), _unescape_mountinfo(fields[4])
        if fstype == "cgroup":
            mounts.append(CgroupMount(1, root, mount_point, frozenset(super_options.split(","))))
        elif fstype == "cgroup2":
            mounts.append(CgroupMount(2, root, mount_point, frozenset()))
    return mounts


def parse_proc_cgroup(text: str) -> list[tuple[int, frozenset[str], str]]:
    """(hierarchy id, controllers, path) for each line of a /proc/<pid>/cgroup text."""
    entries = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        entries.append((int(hierarchy), frozenset(c for c in controllers.split(",") if c), path))
    return entries


def _join_under_mount(mount: CgroupMount, cgroup_path: str) -> Path | None:
    """The directory of ``cgroup_path`` inside ``mount``, or None when the mount does not show it."""
    root = mount.root.rstrip("/")
    if cgroup_path != root and not cgroup_path.startswith(root + "/"):
        return None
    relative = cgroup_path[len(root) :].lstrip("/")
    return Path(mount.mount_point) / relative if relative else Path(mount.mount_point)


def memory_cgroup_locations(proc_cgroup: str, mountinfo: str) -> list[CgroupLocation]:
    """Candidate memory cgroups of this process, v1 first (on a hybrid host the memory controller is
    bound to exactly one hierarchy, so at most one of them really has it; v2 is checked on disk)."""
    mounts = parse_mountinfo(mountinfo)
    locations = []
    for hierarchy, controllers, path in parse_proc_cgroup(proc_cgroup):
        if "memory" in controllers:
            version, candidates = 1, [m for m in mounts if m.version == 1 and "memory" in m.controllers]
        elif hierarchy == 0 and not controllers:
            version, candidates = 2, [m for m in mounts if m.version == 2]
        else:
            continue
        for mount in candidates:
            directory = _join_under_mount(mount, path)
            if directory is not None:
                locations.append(CgroupLocation(version, directory, Path(mount.mount_point)))
                break
    return sorted(locations, key=lambda location: location.version)


class CgroupUnavailable(Exception):
    """This cgroup hierarchy cannot hold the child's memory limit (reason in the message)."""


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii")


def _write(path: Path, value: str) -> None:
    """Write one value to a cgroup control file (no truncation games: cgroupfs wants one write)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def _sweep_dead_owners(base: Path) -> None:
    """Remove empty leaves whose supervisor died without removing them (SIGKILLed by Jupyter's
    shutdown timer, say). rmdir refuses a leaf that still has processes, so a live kernel is safe."""
    for leaf in base.iterdir():
        owner = leaf.name.split("-", 1)[0]
        dead = owner.isdigit() and int(owner) != os.getpid() and not psutil.pid_exists(int(owner))
        if dead and leaf.is_dir():
            try:
                leaf.rmdir()
            except OSError:
                pass


def _make_leaf(base: Path, name: str, prepare_base: Callable[[Path], None] | None = None) -> Path:
    """Create ``base/<our pid>-name``, replacing an empty leaf of that name left by an earlier try.

    The pid in the name lets a later supervisor sweep leaves of dead ones. ``base`` is shared and
    removed by the last child that leaves it, so it may vanish between its mkdir and ours: then
    create it again.
    """
    leaf = base / f"{os.getpid()}-{name}"
    for _ in range(3):
        base.mkdir(exist_ok=True)
        if prepare_base is not None:
            prepare_base(base)
        _sweep_dead_owners(base)
        try:
            leaf.mkdir()
        except FileNotFoundError:
            continue
        except FileExistsError:
            leaf.rmdir()
            leaf.mkdir()
        return leaf
    raise CgroupUnavailable(f"{base} keeps disappearing")


def _enable_memory(cgroup: Path) -> None:
    """Let the children of a v2 cgroup have memory limits."""
    if "memory" not in _read(cgroup / "cgroup.subtree_control").split():
        _write(cgroup / "cgroup.subtree_control", "+memory")


def _keyed_value(text: str, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed cgroup file (``key value`` per line)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


def _v2_delegating_parent(location: CgroupLocation) -> Path:
    """The nearest cgroup (ours, else our parent) whose children can have the memory controller."""
    candidates = [location.directory]
    if location.directory != location.mount_point:
        candidates.append(location.directory.parent)
    problems = []
    for parent in candidates:
        try:
            if "memory" not in _read(parent / "cgroup.controllers").split():
                problems.append(f"{parent}: memory controller not available")
                continue
            _enable_memory(parent)
            return parent
        except OSError as exc:
            problems.append(f"{parent}: {exc.strerror or exc}")
    raise CgroupUnavailable("; ".join(problems))


def _remove_dir(path: Path, attempts: int = 50) -> bool:
    """rmdir a cgroup, waiting briefly while the kernel finishes tearing down exited tasks."""
    for _ in range(attempts):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise
            time.sleep(0.02)
    return False


class MemoryLimit:
    """A memory limit for one kernel child: create it, pass ``preexec`` to the child's Popen, read
    ``oom_kill_count()`` when the child dies, then ``remove()``.

    ``mechanism`` is "cgroup-v1", "cgroup-v2" or "rlimit"; ``warning`` says why a weaker mechanism
    than a cgroup is in use (None when a cgroup is).
    """

    def __init__(
        self,
        limit_bytes: int,
        mechanism: str,
        cgroup: Path | None = None,
        warning: str | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.mechanism = mechanism
        self.cgroup = cgroup
        self.warning = warning
        self._procs_path = os.fsencode(cgroup / "cgroup.procs") if cgroup is not None else None
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        self._rlimit = (limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard), hard)

    def __repr__(self) -> str:
        return f"MemoryLimit({self.limit_bytes}, mechanism={self.mechanism!r}, cgroup={self.cgroup!r})"

    @classmethod
    def create(cls, limit_bytes: int, name: str) -> MemoryLimit:
        """A cgroup ``<our pid>-<name>`` for the child (``name`` unique among this supervisor's live
        children), else an RLIMIT_AS fallback."""
        if limit_bytes <= 0:
            raise ValueError(f"memory limit must be more than 0 bytes, not {limit_bytes}")
        if not _NAME_RE.match(name) or name in (".", ".."):
            raise ValueError(f"invalid cgroup name {name!r}: use letters, digits, '_', '.', '-'")
        try:
            locations = memory_cgroup_locations(
                _read(Path("/proc/self/cgroup")), _read(Path("/proc/self/mountinfo"))
            )
        except OSError as exc:
            locations, problems = [], [f"cannot read /proc/self: {exc}"]
        else:
            problems = [] if locations else ["no cgroup filesystem mounted"]
        for location in locations:
            try:
                if location.version == 1:
                    return cls.in_cgroup_v1(location.directory, name, limit_bytes)
                return cls.in_cgroup_v2(location, name, limit_bytes)
            except (OSError, CgroupUnavailable) as exc:
                problems.append(f"cgroup v{location.version} at {location.directory}: {exc}")
        return cls.with_rlimit(limit_bytes, "no writable memory cgroup (" + "; ".join(problems) + ")")

    @classmethod
    def in_cgroup_v1(cls, own_cgroup: Path, name: str, limit_bytes: int) -> MemoryLimit:
        """A v1 memory cgroup ``own_cgroup/elastic-proxy/name``: v1 has no rule against processes in
        inner cgroups, so ours can be the parent and the child stays inside any limit set on us."""
        if not (own_cgroup / "memory.limit_in_bytes").exists():
            raise CgroupUnavailable(f"{own_cgroup} is not a memory cgroup")
        cgroup = _make_leaf(own_cgroup / BASE_DIR_NAME, name)
        try:
            _write(cgroup / "memory.limit_in_bytes", str(limit_bytes))
            memsw = cgroup / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, str(limit_bytes))
        except OSError:
            _remove_dir(cgroup, attempts=1)
            raise
        return cls(limit_bytes, "cgroup-v1", cgroup)

    @classmethod
    def in_cgroup_v2(cls, location: CgroupLocation, name: str, limit_bytes: int) -> MemoryLimit:
        """A v2 memory cgroup ``<delegating parent>/elastic-proxy/name`` with swap turned off for it."""
        cgroup = _make_leaf(_v2_delegating_parent(location) / BASE_DIR_NAME, name, _enable_memory)
        try:
            _write(cgroup / "memory.max", str(limit_bytes))
            if (cgroup / "memory.swap.max").exists():
                _write(cgroup / "memory.swap.max", "0")
        except OSError:
            _remove_dir(cgroup, attempts=1)
            raise
        return cls(limit_bytes, "cgroup-v2", cgroup)

    @classmethod
    def with_rlimit(cls, limit_bytes: int, reason: str) -> MemoryLimit:
        """The fallback: RLIMIT_AS in the child. Logged, and kept in ``warning`` for the user."""
        warning = (
            f"{reason}; limiting the kernel's address space with RLIMIT_AS instead. That is weaker: "
            "it counts reserved virtual memory, not memory in use (threads and numpy can hit it early), "
            "and the kernel gets MemoryError instead of being killed when it is reached"
        )
        log.warning("memory limit: %s", warning)
        return cls(limit_bytes, "rlimit", None, warning)

    def preexec(self) -> None:
        """Run in the forked child before exec: join the cgroup, or set RLIMIT_AS.

        Only open/write/close or one setrlimit: no locks, no logging, no allocation worth the name,
        because the parent may have had other threads at fork time.
        """
        if self._procs_path is None:
            resource.setrlimit(resource.RLIMIT_AS, self._rlimit)
            return
        fd = os.open(self._procs_path, os.O_WRONLY)
        try:
            os.write(fd, b"%d" % os.getpid())
        finally:
            os.close(fd)

    def oom_kill_count(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup (compare before/after a death).

        On v1 kernels older than 4.13 there is no ``oom_kill`` counter; ``memory.failcnt`` (times the
        limit was hit) is returned as a hint instead. Always 0 with RLIMIT_AS, which never kills.
        """
        if self.cgroup is None:
            return 0
        if self.mechanism == "cgroup-v2":
            return _keyed_value(_read(self.cgroup / "memory.events"), "oom_kill") or 0
        count = _keyed_value(_read(self.cgroup / "memory.oom_control"), "oom_kill")
        if count is None:
            count = int(_read(self.cgroup / "memory.failcnt"))
        return count

    def usage_bytes(self) -> int | None:
        """Memory charged to the child's cgroup now; None with RLIMIT_AS (no group to ask)."""
        if self.cgroup is None:
            return None
        name = "memory.current" if self.mechanism == "cgroup-v2" else "memory.usage_in_bytes"
        return int(_read(self.cgroup / name))

    def remove(self) -> None:
        """rmdir the cgroup once the child is dead (moves no process), and the shared
        ``elastic-proxy`` parent when no other child uses it, so nothing is left behind."""
        if self.cgroup is None:
            return
        if not _remove_dir(self.cgroup):
            log.warning("memory limit: cgroup %s still busy, left in place", self.cgroup)
            return
        try:
            self.cgroup.parent.rmdir()
        except OSError:
            pass

    def __enter__(self) -> MemoryLimit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
