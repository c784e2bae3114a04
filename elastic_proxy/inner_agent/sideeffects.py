"""What a cell did outside the namespace: file writes and deletes, subprocesses, network, and
consumption of the global random generators.

Why: a restore must not silently re-run a cell that truncates or deletes files, and must not
"recompute" a random value. File, process and network effects come from `sys.addaudithook`
events. CPython raises no audit event for randomness (os.urandom, random, time), so the global
generators' states are compared before and after the cell instead (cheap: a few KB); the AST
detector in `analysis` covers clocks, uuid4 and unseeded generator objects.

An audit hook cannot be removed: one hook is installed per process, does nothing unless a
recorder is active, and never raises (an exception there would abort the user's operation).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["AuditRecorder", "CellEffects", "default_ignored_prefixes"]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


@dataclass
class CellEffects:
    """Effects of one cell. `nondeterministic` holds the reasons (empty: none seen), so it reads
    as a bool; `destructive` lists what overwrote, truncated, renamed or deleted existing data."""

    writes: set[str] = field(default_factory=set)
    deletes: set[str] = field(default_factory=set)
    subprocess: bool = False
    network: bool = False
    nondeterministic: tuple[str, ...] = ()
    reasons: list[str] = field(default_factory=list)
    truncated: set[str] = field(default_factory=set)
    rng_consumed: set[str] = field(default_factory=set)
    destructive: tuple[str, ...] = ()

    @property
    def side_effects(self) -> tuple[str, ...]:
        """Every effect outside the process (writes, deletes, subprocesses, network)."""
        return tuple(self.reasons)

    @property
    def any(self) -> bool:
        return bool(self.writes or self.deletes or self.subprocess or self.network)


def _home(*parts: str) -> str:
    return os.path.join(os.path.expanduser("~"), *parts)


@functools.lru_cache(maxsize=1)
def default_ignored_prefixes() -> tuple[str, ...]:
    """Writes that are not the user's data: the checkpoint store, Jupyter's and IPython's own
    files (history, runtime, caches), user caches (fonts, downloads), bytecode caches."""
    prefixes = [_home(".cache"), _home(".ipython"), _home(".config", "matplotlib")]
    variables = ("ELASTIC_PROXY_STORE", "IPYTHONDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME", "JUPYTER_RUNTIME_DIR")
    for variable in variables:
        value = os.environ.get(variable)
        if value and "://" not in value:
            prefixes.append(value)
        elif value and value.startswith("file://"):
            prefixes.append(value[len("file://"):])
    try:
        from jupyter_core.paths import jupyter_data_dir, jupyter_runtime_dir

        prefixes += [os.path.join(jupyter_data_dir(), "elastic-proxy"), jupyter_runtime_dir()]
    except ImportError:
        pass
    if "IPython" in sys.modules:
        try:
            from IPython.paths import get_ipython_dir

            prefixes.append(get_ipython_dir())
        except Exception:
            pass
    return tuple(sorted({_normalise(p) for p in prefixes}))


def _normalise(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


@functools.lru_cache(maxsize=8)
def _ignored_prefixes(extra: tuple[str, ...]) -> tuple[str, ...]:
    """Once per set of extra prefixes, not per cell: realpath makes a system call per path part."""
    return tuple(sorted({*default_ignored_prefixes(), *(_normalise(p) for p in extra)}))


# ---------------------------------------------------------------------------------------------
# Global random generators: their states before and after a cell.


def _rng_states() -> dict[str, Any]:
    """The states of the process-wide generators that are already imported (never imports)."""
    states: dict[str, Any] = {}
    random_module = sys.modules.get("random")
    if random_module is not None:
        states["random"] = random_module.getstate()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is None and "numpy" in sys.modules:
        numpy_random = importlib.import_module("numpy.random")  # numpy 2 imports it lazily
    if numpy_random is not None:
        try:
            state = numpy_random.mtrand._rand.get_state(legacy=False)
            states["numpy.random"] = (state["state"]["key"].tobytes(), state["state"]["pos"],
                                      state["has_gauss"], state["gauss"])
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            states["torch"] = bytes(torch.random.get_rng_state().numpy())
        except Exception:
            pass
    return states


def _drawn_since_import(generator: str, state: Any) -> bool:
    """For a generator the cell imported: numpy's MT19937 starts at position 624 with no cached
    gaussian (torch starts from a fixed seed; random is imported long before any cell)."""
    return generator == "numpy.random" and (state[1] != 624 or bool(state[2]))


# ---------------------------------------------------------------------------------------------
# The audit hook.


def _path(value: Any, dir_fd: Any = None) -> str | None:
    """An absolute path; relative to `dir_fd` when given (shutil.rmtree deletes that way)."""
    if isinstance(value, int) or value is None:
        return None  # a file descriptor: its opening was recorded already
    try:
        path = os.fsdecode(value)
        if isinstance(dir_fd, int) and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return _normalise(path)
    except (TypeError, ValueError, OSError):
        return None


class AuditRecorder:
    """Records the audit events of one cell: `start()` before it runs, `stop()` after.

    Only one recorder is active at a time (the last started); events from every thread count,
    since a cell's threads are its effects too. `ignore_prefixes` adds paths (the store root
    when it is not the default) whose writes are the agent's own."""

    _active: AuditRecorder | None = None
    _installed = False
    _install_lock = threading.Lock()

    def __init__(self, ignore_prefixes: Iterable[str] = ()) -> None:
        self.ignored = _ignored_prefixes(tuple(ignore_prefixes))
        self.effects = CellEffects()
        self._destructive: list[str] = []
        self._created: set[str] = set()  # paths this cell made: removing them destroys nothing
        self._rng_before: dict[str, Any] = {}
        self.rng_after: dict[str, Any] = {}
        self._busy = False

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def install(cls) -> None:
        with cls._install_lock:
            if not cls._installed:
                sys.addaudithook(_hook)
                cls._installed = True

    def start(self, rng_before: dict[str, Any] | None = None) -> None:
        """Begin recording. `rng_before` is the generators' states as the previous cell left them
        (its `rng_after`), which saves reading them again (numpy's takes about 50 us). What ran in
        between (a widget's callback) is then counted against this cell: wrongly nondeterministic
        at worst, never wrongly reproducible, unless that code restored the states it found."""
        self.install()
        self.effects = CellEffects()
        self._destructive = []
        self._created = set()
        self._rng_before = _rng_states() if rng_before is None else rng_before
        AuditRecorder._active = self

    def stop(self, seeded: Iterable[str] = ()) -> CellEffects:
        """End the recording. `seeded` names the generators the cell seeded itself
        (`CellNames.seeds`): consuming those is reproducible and not reported."""
        if AuditRecorder._active is self:
            AuditRecorder._active = None
        effects = self.effects
        seeded = set(seeded)
        after = self.rng_after = _rng_states()
        reasons = []
        for generator, state in after.items():
            if generator in self._rng_before:
                used = self._rng_before[generator] != state
            else:  # imported by the cell itself
                used = _drawn_since_import(generator, state)
            if used:
                effects.rng_consumed.add(generator)
                if generator not in seeded:
                    reasons.append(f"used the global {generator} generator without seeding it in this cell")
        effects.nondeterministic = tuple(reasons)
        effects.destructive = tuple(self._destructive)
        return effects

    def __enter__(self) -> AuditRecorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- recording ---------------------------------------------------------------------------

    def _ignored(self, path: str) -> bool:
        if f"{os.sep}__pycache__{os.sep}" in path:
            return True
        return any(path == p or path.startswith(p + os.sep) for p in self.ignored)

    def _note(self, reason: str) -> None:
        if reason not in self.effects.reasons:
            self.effects.reasons.append(reason)

    def _destroy(self, reason: str) -> None:
        self._note(reason)
        if reason not in self._destructive:
            self._destructive.append(reason)

    def write(self, raw_path: Any, *, truncate: bool, why: str, dir_fd: Any = None) -> None:
        path = _path(raw_path, dir_fd)
        if path is None or self._ignored(path):
            return
        self.effects.writes.add(path)
        exists = os.path.lexists(path)
        if not exists:
            self._created.add(path)
        if truncate and exists and not self._made_here(path):
            self.effects.truncated.add(path)
            self._destroy(f"{why} (overwrote an existing file): {path}")
        else:
            self._note(f"{why}: {path}")

    def _made_here(self, path: str) -> bool:
        """The path, or a directory above it, was created by this cell (a temporary file)."""
        while True:
            if path in self._created:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent

    def delete(self, raw_path: Any, why: str, dir_fd: Any = None) -> None:
        path = _path(raw_path, dir_fd)
        if path is None or self._ignored(path):
            return
        self.effects.deletes.add(path)
        if self._made_here(path):
            self._note(f"{why} (made by this cell): {path}")
        else:
            self._destroy(f"{why}: {path}")

    def on_open(self, args: tuple[Any, ...]) -> None:
        path, mode, flags = (*args, None, None, 0)[:3]
        if isinstance(mode, str):
            if not any(c in mode for c in "wax+"):
                return
            self.write(path, truncate="w" in mode, why="opened for writing")
        elif isinstance(flags, int) and flags & _WRITE_FLAGS:
            self.write(path, truncate=bool(flags & os.O_TRUNC), why="opened for writing")

    def on_rename(self, args: tuple[Any, ...]) -> None:
        source, target, source_fd, target_fd = (*args, None, None)[:4]
        self.delete(source, "renamed away", source_fd)
        self.write(target, truncate=True, why="renamed onto", dir_fd=target_fd)

    def on_sqlite(self, database: Any) -> None:
        if database not in (None, "", b"", ":memory:", b":memory:"):
            self.write(database, truncate=False, why="sqlite3 database")

    def on_subprocess(self, what: str) -> None:
        self.effects.subprocess = True
        self._note(f"started a process ({what})")

    def on_network(self, what: str) -> None:
        self.effects.network = True
        self._note(f"network: {what}")


def _arg(args: tuple[Any, ...], index: int) -> Any:
    return args[index] if len(args) > index else None


def _program(args: tuple[Any, ...]) -> str:
    """The program's name only: command lines can hold secrets."""
    executable, argv = (*args, None, None)[:2]
    program = executable or (argv[0] if isinstance(argv, (list, tuple)) and argv else argv)
    try:
        return os.path.basename(os.fsdecode(program)) if program is not None else "?"
    except (TypeError, ValueError):
        return "?"


def _address(address: Any) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0]) + (f":{address[1]}" if len(address) > 1 else "")
    return str(address) if isinstance(address, (str, bytes)) else "?"


def _host_of(url: Any) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(str(url)).hostname or "?"
    except ValueError:
        return "?"


_Handler = Callable[[AuditRecorder, tuple[Any, ...]], None]
_HANDLERS: dict[str, _Handler] = {
    "open": AuditRecorder.on_open,
    "os.remove": lambda r, a: r.delete(a[0], "deleted", _arg(a, 1)),
    "os.rmdir": lambda r, a: r.delete(a[0], "deleted a directory", _arg(a, 1)),
    "shutil.rmtree": lambda r, a: r.delete(a[0], "deleted a tree", _arg(a, 1)),
    "os.rename": AuditRecorder.on_rename,
    "os.truncate": lambda r, a: r.write(a[0], truncate=True, why="truncated"),
    "shutil.copyfile": lambda r, a: r.write(a[1], truncate=True, why="copied onto"),
    "shutil.copytree": lambda r, a: r.write(a[1], truncate=False, why="copied a tree to"),
    "os.link": lambda r, a: r.write(a[1], truncate=False, why="linked"),
    "os.symlink": lambda r, a: r.write(a[1], truncate=False, why="linked"),
    "os.mkdir": lambda r, a: r.write(a[0], truncate=False, why="made a directory", dir_fd=_arg(a, 2)),
    "subprocess.Popen": lambda r, a: r.on_subprocess(_program(a)),
    "os.system": lambda r, a: r.on_subprocess("os.system"),
    "os.exec": lambda r, a: r.on_subprocess(_program((a[0],))),
    "os.posix_spawn": lambda r, a: r.on_subprocess(_program((a[0],))),
    "os.spawn": lambda r, a: r.on_subprocess(_program((a[1],))),
    "os.kill": lambda r, a: r.on_subprocess("os.kill"),
    "socket.connect": lambda r, a: r.on_network(f"connect {_address(a[1])}"),
    "socket.sendto": lambda r, a: r.on_network(f"sendto {_address(a[1])}"),
    "socket.sendmsg": lambda r, a: r.on_network(f"sendmsg {_address(a[1])}"),
    "socket.bind": lambda r, a: r.on_network(f"bind {_address(a[1])}"),
    "urllib.Request": lambda r, a: r.on_network(f"request to {_host_of(a[0])}"),
    "http.client.connect": lambda r, a: r.on_network(f"http to {a[1]}"),
    "ftplib.connect": lambda r, a: r.on_network(f"ftp to {a[1]}"),
    "smtplib.connect": lambda r, a: r.on_network(f"smtp to {a[1]}"),
    "sqlite3.connect": lambda r, a: r.on_sqlite(a[0] if a else None),
}


def _hook(event: str, args: tuple[Any, ...]) -> None:
    recorder = AuditRecorder._active
    if recorder is None:
        return
    handler = _HANDLERS.get(event)
    if handler is None or recorder._busy:
        return
    recorder._busy = True
    try:
        handler(recorder, args)
    except Exception:
        pass  # never let the recorder break the user's operation
    finally:
        recorder._busy = False
