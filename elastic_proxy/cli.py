"""`elastic-proxy`: install or wrap kernelspecs, list and uninstall them, inspect checkpoints.

Built like `jupyter kernelspec`: traitlets Applications with subcommands, so every option is also a
`--Class.trait=value` and can be set in `elastic_proxy_config.py` on the Jupyter config path
(JUPYTER_CONFIG_DIR / JUPYTER_PATH). Errors the user can fix end with a message saying what to do
and an exit code, never a traceback: 2 when the command line is wrong, 1 when the operation failed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Iterator
from copy import deepcopy
from datetime import datetime
from typing import Any, ClassVar

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_core.application import JupyterApp, base_aliases, base_flags
from traitlets import Bool, Instance, Integer, TraitError, Unicode, default
from traitlets.config.application import Application
from traitlets.config.loader import ArgumentError

from elastic_proxy import __version__
from elastic_proxy import kernelspec as specs
from elastic_proxy.proxy.memlimit import parse_size


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""

    exit_code = 1


class UsageError(CliError):
    """The command line is wrong: exit status 2."""

    exit_code = 2


class ElasticApp(JupyterApp):
    """What every elastic-proxy command shares: one config file, quiet logs, errors as exit codes."""

    version = __version__
    aliases: ClassVar[dict[str, Any]] = {key: base_aliases[key] for key in ("log-level", "config")}
    flags: ClassVar[dict[str, Any]] = {"debug": base_flags["debug"]}
    # How many positional arguments the command takes (minimum, maximum), and what they are called.
    arguments: ClassVar[tuple[int, int, str]] = (0, 0, "")

    def _log_level_default(self) -> int:
        return logging.WARNING

    def _config_file_name_default(self) -> str:
        return "elastic_proxy_config"

    def _find_subcommand(self, name: str) -> str:
        """No dispatch to `elastic-proxy-<name>` executables on PATH, as `jupyter <name>` does."""
        return ""

    def initialize(self, argv: list[str] | None = None) -> None:
        """JupyterApp's initialize, stricter: unknown options and wrong arguments are usage errors."""
        argv = sys.argv[1:] if argv is None else list(argv)
        if not (self.subcommands and argv and argv[0] in self.subcommands):
            self._reject_unknown_options(argv)
        try:
            self.parse_command_line(argv)
            if self.subapp is not None:
                return
            command_line = deepcopy(self.config)
            self.load_config_file()
            self.update_config(command_line)
        except (TraitError, ArgumentError) as exc:
            raise UsageError(str(exc)) from None
        low, high, what = self.arguments
        if not self.subcommands and not low <= len(self.extra_args) <= high:
            raise UsageError(
                f"`{self.name}` takes {what or 'no arguments'}, got {self.extra_args or 'none'}"
                f" (see `{self.name} --help`)"
            )

    def parse_command_line(self, argv: list[str] | None = None) -> None:
        """traitlets' parser without its @catch_config_error, which would log a bad value as CRITICAL
        and exit 1: initialize() turns it into a usage error instead."""
        parse = Application.parse_command_line
        getattr(parse, "__wrapped__", parse)(self, argv)

    def _reject_unknown_options(self, argv: list[str]) -> None:
        """traitlets only warns about an unknown ``--option=value``: a typo of --user would then
        install system-wide. ``--Class.trait=value`` stays allowed (traitlets checks those)."""
        known = {"h", "help", "help-all", "version", "V"}
        for key in (*self.aliases, *self.flags):
            known.update(key if isinstance(key, tuple) else (key,))
        end = argv.index("--") if "--" in argv else len(argv)
        for token in argv[:end]:
            name = token.lstrip("-").split("=", 1)[0]
            if token.startswith("-") and name and "." not in name and name not in known:
                option = token.split("=", 1)[0]
                raise UsageError(f"unknown option {option} (see `{self.name} --help`)")

    def emit_description(self) -> Iterator[str]:
        what = "COMMAND" if self.subcommands else self.arguments[2].split(" (")[0]
        yield f"Usage: {self.name} {what + ' ' if what else ''}[options]"
        yield ""
        yield from super().emit_description()

    def start(self) -> None:
        if self.subapp is None:
            choices = ", ".join(self.subcommands)
            given = f"unknown command {self.extra_args[0]!r}" if self.extra_args else "no command given"
            raise UsageError(f"{given}; choose one of: {choices} (see `{self.name} --help`)")
        self.subapp.start()


def _writer_options(app: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options of `install` and `wrap` for class ``app``: the location ones are those of
    `jupyter kernelspec install` / `ipykernel install`."""
    aliases = {
        **ElasticApp.aliases,
        "prefix": f"{app}.prefix",
        "name": f"{app}.kernel_name",
        "display-name": f"{app}.display_name",
        "memory-limit": f"{app}.memory_limit",
    }
    flags = {
        **ElasticApp.flags,
        "user": ({app: {"user": True}}, "Install for the current user only (in the Jupyter data dir)."),
        "sys-prefix": ({app: {"sys_prefix": True}}, "Install into this Python environment (sys.prefix)."),
    }
    return aliases, flags


class SpecWriterApp(ElasticApp):
    """Options shared by `install` and `wrap`: where to install, under which name, the memory limit."""

    user = Bool(False, config=True, help="Install for the current user instead of system-wide.")
    sys_prefix = Bool(False, config=True, help="Install into sys.prefix (this virtual or conda env).")
    prefix = Unicode("", config=True, help="Install into PREFIX/share/jupyter/kernels.")
    memory_limit = Unicode(
        "", config=True,
        help="Run the kernel child in a memory cgroup of this size (e.g. 2G, 512M): an OOM then kills "
        "only the child, and the supervisor restores the session.",
    )
    kernel_spec_manager = Instance(KernelSpecManager)

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return KernelSpecManager(parent=self, data_dir=self.data_dir)

    def checked_memory_limit(self) -> str | None:
        """The --memory-limit as written, once we know the supervisor will accept it."""
        value = self.memory_limit.strip()
        if not value:
            return None
        try:
            parse_size(value)
        except ValueError as exc:
            raise UsageError(f"--memory-limit: {exc}") from None
        return value

    def location(self) -> tuple[bool, str | None]:
        """(user, prefix) for KernelSpecManager.install_kernel_spec; one choice at most."""
        chosen = [opt for opt, on in (("--user", self.user), ("--sys-prefix", self.sys_prefix),
                                      ("--prefix", bool(self.prefix))) if on]
        if len(chosen) > 1:
            raise UsageError(f"{' and '.join(chosen)} contradict each other: choose one")
        return self.user, (sys.prefix if self.sys_prefix else self.prefix or None)

    def install(self, name: str, spec: dict[str, Any], resources_dir: str | None = None) -> None:
        """Install ``spec`` as ``name``, replacing an elastic spec of that name but never another one."""
        user, prefix = self.location()
        existing = self.kernel_spec_manager.find_kernel_specs().get(name.lower())
        if existing and specs.elastic_info(self.kernel_spec_manager.get_kernel_spec(name.lower())) is None:
            raise UsageError(
                f"a kernelspec named {name!r} that is not elastic-proxy's is installed in {existing}; "
                "choose another --name"
            )
        try:
            destination = specs.install_spec(
                self.kernel_spec_manager, spec, name,
                resources_dir=resources_dir, user=user, prefix=prefix,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise CliError(
                    f"cannot write {exc.filename}: {exc.strerror}; install with --user, --sys-prefix "
                    "or --prefix DIR, or as a user who may write there"
                ) from None
            raise CliError(f"installing {name!r} failed: {exc}") from None
        print(f"Installed kernelspec {name} ({spec['display_name']}) in {destination}")


class InstallApp(SpecWriterApp):
    name = "elastic-proxy install"
    description = (
        f"Install the {specs.DISPLAY_NAME!r} kernelspec: the elastic-proxy supervisor running this "
        "Python's ipykernel with the checkpointing agent. System-wide unless --user, --sys-prefix or "
        "--prefix is given."
    )
    examples = """
elastic-proxy install --user
elastic-proxy install --sys-prefix --memory-limit 8G
elastic-proxy install --prefix /opt/env --name py-elastic --display-name "Python (safe)"

"""
    aliases, flags = _writer_options("InstallApp")

    kernel_name = Unicode(specs.KERNEL_NAME, config=True, help="Name of the kernelspec to write.")
    display_name = Unicode(specs.DISPLAY_NAME, config=True, help="Name shown in the notebook's kernel menu.")

    def start(self) -> None:
        self.install(self.kernel_name, specs.python_spec(self.display_name, self.checked_memory_limit()))


class WrapApp(SpecWriterApp):
    name = "elastic-proxy wrap"
    description = (
        "Make an elastic version of an installed kernelspec (Python or not): KERNEL-elastic, shown as "
        "'<its display name> (elastic)', runs KERNEL under the supervisor, which survives its death "
        "and replays or restores the session."
    )
    examples = """
elastic-proxy wrap bash --user
elastic-proxy wrap ir --name r-safe --display-name "R (safe)" --memory-limit 4G

"""
    arguments = (1, 1, "KERNEL (the name of an installed kernelspec)")
    kernel_name = Unicode("", config=True, help="Name of the kernelspec to write (default: KERNEL-elastic).")
    display_name = Unicode(
        "", config=True,
        help="Name shown in the notebook's kernel picker (default: KERNEL's display name + ' (elastic)').",
    )
    aliases, flags = _writer_options("WrapApp")

    def start(self) -> None:
        child_name = self.extra_args[0]
        manager = self.kernel_spec_manager
        try:
            child = manager.get_kernel_spec(child_name)
        except NoSuchKernel:
            available = ", ".join(sorted(manager.find_kernel_specs())) or "none"
            raise UsageError(
                f"no kernelspec named {child_name!r}; installed: {available} "
                "(`jupyter kernelspec list` shows where they are)"
            ) from None
        if specs.elastic_info(child) is not None:
            raise UsageError(
                f"{child_name!r} is already an elastic-proxy kernelspec; wrap the kernel it runs instead"
            )
        name = self.kernel_name or f"{child_name}{specs.WRAPPED_SUFFIX}"
        if name == child_name:
            raise UsageError(f"--name must differ from {child_name!r}, the kernel being wrapped")
        spec = specs.wrapped_spec(child_name, child, self.display_name or None, self.checked_memory_limit())
        self.install(name, spec, resources_dir=child.resource_dir)


def _elastic_specs(manager: KernelSpecManager) -> dict[str, dict[str, Any]]:
    """Installed elastic-proxy kernelspecs: name -> {resource_dir, spec, info}."""
    found = {}
    for name, entry in manager.get_all_specs().items():
        info = specs.elastic_info(entry["spec"])
        if info is not None:
            found[name] = {**entry, "info": info}
    return found


def _child_label(info: dict[str, Any]) -> str:
    return info.get("child_kernel") or "ipykernel (same Python)"


class ListApp(ElasticApp):
    name = "elastic-proxy list"
    description = "List the installed elastic-proxy kernelspecs, the kernel each runs and its memory limit."
    json_output = Bool(False, config=True, help="Print JSON instead of a table.")
    flags: ClassVar[dict[str, Any]] = {
        **ElasticApp.flags,
        "json": ({"ListApp": {"json_output": True}}, "Print JSON instead of a table."),
    }

    def start(self) -> None:
        found = _elastic_specs(KernelSpecManager(parent=self, data_dir=self.data_dir))
        if self.json_output:
            print(json.dumps({"kernelspecs": {
                name: {
                    "display_name": entry["spec"]["display_name"],
                    "child_kernel": entry["info"].get("child_kernel"),
                    "memory_limit": entry["info"].get("memory_limit"),
                    "resource_dir": entry["resource_dir"],
                } for name, entry in sorted(found.items())
            }}, indent=2))
            return
        if not found:
            print("No elastic-proxy kernelspecs installed; `elastic-proxy install --user` adds one.")
            return
        rows = [("NAME", "DISPLAY NAME", "CHILD", "MEMORY LIMIT", "LOCATION")]
        rows += [
            (name, entry["spec"]["display_name"], _child_label(entry["info"]),
             entry["info"].get("memory_limit") or "none", entry["resource_dir"])
            for name, entry in sorted(found.items())
        ]
        _print_table(rows)


class UninstallApp(ElasticApp):
    name = "elastic-proxy uninstall"
    description = "Remove elastic-proxy kernelspecs by name (never any other kernelspec)."
    examples = "elastic-proxy uninstall python3-elastic bash-elastic"
    arguments = (1, sys.maxsize, "NAME...")

    def start(self) -> None:
        manager = KernelSpecManager(parent=self, data_dir=self.data_dir)
        installed = manager.find_kernel_specs()
        elastic = _elastic_specs(manager)
        for name in self.extra_args:
            if name not in installed:
                choices = ", ".join(sorted(elastic)) or "none"
                raise UsageError(f"no kernelspec named {name!r}; elastic ones installed: {choices}")
            if name not in elastic:
                raise UsageError(
                    f"{name!r} is not an elastic-proxy kernelspec; remove it with `jupyter kernelspec remove`"
                )
        for name in self.extra_args:
            try:
                path = manager.remove_kernel_spec(name)
            except OSError as exc:
                raise CliError(f"cannot remove {name!r} from {exc.filename}: {exc.strerror}") from None
            print(f"Removed kernelspec {name} from {path}")


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds") if timestamp else "-"


def _print_table(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]))


class StoreApp(ElasticApp):
    """A checkpoints command: reads the store (imported only here, so the other commands stay light)."""

    store = Unicode(
        "", config=True,
        help="The checkpoint store: a local path or an fsspec URL (default: $ELASTIC_PROXY_STORE, "
        "else elastic-proxy/sessions under the Jupyter data dir).",
    )
    aliases: ClassVar[dict[str, Any]] = {**ElasticApp.aliases, "store": "StoreApp.store"}

    def sessions(self) -> list[Any]:
        from elastic_proxy.store import StoreError, list_sessions

        try:
            return list_sessions(self.store or None)
        except (StoreError, OSError) as exc:
            raise CliError(f"cannot read the store: {exc}") from None

    def open_session(self, wanted: str) -> Any:
        """The store of the session named ``wanted`` (its notebook path, or the key `list` shows)."""
        from elastic_proxy.store import StoreError, open_store

        known = self.sessions()
        match = [info for info in known if wanted in (info.name, info.key)]
        if not match:
            names = ", ".join(sorted(info.name or info.key for info in known)) or "none"
            raise UsageError(f"no checkpoints for session {wanted!r}; sessions in the store: {names}")
        if match[0].name is None:
            raise CliError(f"session {wanted!r} has no recorded name, so its manifests cannot be verified")
        try:
            return open_store(match[0].name, self.store or None)
        except (StoreError, OSError) as exc:
            raise CliError(f"cannot open the store: {exc}") from None


class CheckpointsListApp(StoreApp):
    name = "elastic-proxy checkpoints list"
    description = (
        "List the sessions that have checkpoints, or with SESSION the generations of one session "
        "(newest first, with whether each is valid)."
    )
    arguments = (0, 1, "[SESSION]")

    def start(self) -> None:
        if self.extra_args:
            self.list_generations(self.extra_args[0])
            return
        sessions = sorted(self.sessions(), key=lambda info: info.updated or 0, reverse=True)
        if not sessions:
            print("No checkpoints in the store.")
            return
        _print_table([("SESSION", "GENERATIONS", "NEWEST", "UPDATED")] + [
            (info.name or info.key, str(info.generations), str(info.newest), _when(info.updated))
            for info in sessions
        ])

    def list_generations(self, session: str) -> None:
        rows = [("GENERATION", "CREATED", "CELL", "VARIABLES", "STATUS")]
        for manifest in self.open_session(session).generations():
            body = manifest.body
            status = "valid" if manifest.valid else f"INVALID: {manifest.problem}"
            rows.append((
                str(manifest.generation), _when(manifest.created), str(body.get("execution_count", "-")),
                str(len(body.get("variables") or {})), status,
            ))
        _print_table(rows)


class CheckpointsShowApp(StoreApp):
    name = "elastic-proxy checkpoints show"
    description = (
        "Show one checkpoint of SESSION (the newest valid one unless --generation): its variables, what "
        "was lost, and with --verify whether every stored byte still matches its hash. Never unpickles."
    )
    arguments = (1, 1, "SESSION")
    generation = Integer(-1, config=True, help="The generation to show (default: the newest valid one).")
    verify = Bool(False, config=True, help="Read and hash every blob of the checkpoint.")
    aliases: ClassVar[dict[str, Any]] = {**StoreApp.aliases, "generation": "CheckpointsShowApp.generation"}
    flags: ClassVar[dict[str, Any]] = {
        **StoreApp.flags,
        "verify": ({"CheckpointsShowApp": {"verify": True}}, "Read and hash every blob of the checkpoint."),
    }

    def start(self) -> None:
        from elastic_proxy.store import StoreError

        store = self.open_session(self.extra_args[0])
        try:
            manifest = store.read_manifest(self.generation) if self.generation >= 0 else store.latest()
            if manifest is None:
                raise CliError(f"session {store.session!r} has no valid checkpoint "
                               f"(`elastic-proxy checkpoints list {store.session}` shows why)")
            problems = store.verify(manifest) if self.verify and manifest.valid else []
        except StoreError as exc:
            raise CliError(str(exc)) from None
        body = manifest.body
        status = "valid" if manifest.valid else f"INVALID: {manifest.problem}"
        if self.verify and manifest.valid:
            status += ", every blob verified"
        print(f"session:     {store.session}")
        print(f"generation:  {manifest.generation} (parent {manifest.parent}), {status}")
        print(f"created:     {_when(manifest.created)}")
        print(f"cell:        {body.get('execution_count', '-')}")
        variables = body.get("variables") or {}
        if variables:
            print()
            _print_table([("VARIABLE", "TYPE", "BYTES", "GROUP")] + [
                (name, str(entry.get("type", "?")), str(entry.get("size", "?")), str(entry.get("group", "-")))
                for name, entry in sorted(variables.items())
            ])
        for name, reason in sorted((body.get("lost") or {}).items()):
            print(f"lost: {name}: {reason}")
        for problem in problems:
            print(f"problem: {problem}")
        if problems or not manifest.valid:
            raise CliError(f"generation {manifest.generation} of {store.session!r} cannot be restored")


class CheckpointsForgetApp(StoreApp):
    name = "elastic-proxy checkpoints forget"
    description = "Delete every checkpoint of SESSION, then the stored data no other session uses."
    arguments = (1, 1, "SESSION")
    flags: ClassVar[dict[str, Any]] = {**StoreApp.flags, "y": base_flags["y"]}

    def start(self) -> None:
        from elastic_proxy.store import StoreError

        store = self.open_session(self.extra_args[0])
        if not self.answer_yes:
            if not sys.stdin.isatty():
                raise UsageError(f"deleting every checkpoint of {store.session!r} needs -y to confirm")
            answer = input(f"Delete every checkpoint of {store.session!r}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise CliError("nothing deleted")
        try:
            report = store.forget()
        except (StoreError, OSError) as exc:
            raise CliError(f"forgetting {store.session!r} failed: {exc}") from None
        print(f"Forgot session {store.session}: "
              f"{report.blobs_deleted} blobs deleted, {report.bytes_freed} bytes freed")


class CheckpointsGcApp(StoreApp):
    name = "elastic-proxy checkpoints gc"
    description = (
        "Delete old checkpoints of SESSION (or of every session): keep the newest --keep-last valid "
        "generations, fewer if they exceed --max-size; then delete stored data no checkpoint uses."
    )
    arguments = (0, 1, "[SESSION]")
    keep_last = Integer(20, config=True, help="How many newest valid generations to keep (at least 1).")
    max_size = Unicode("", config=True, help="Keep fewer generations if theirs exceed this size (e.g. 10G).")
    aliases: ClassVar[dict[str, Any]] = {
        **StoreApp.aliases,
        "keep-last": "CheckpointsGcApp.keep_last",
        "max-size": "CheckpointsGcApp.max_size",
    }

    def start(self) -> None:
        from elastic_proxy.store import StoreError, open_store

        if self.keep_last < 1:
            raise UsageError("--keep-last must be at least 1 (the newest valid checkpoint is always kept)")
        try:
            max_bytes = parse_size(self.max_size) if self.max_size else None
        except ValueError as exc:
            raise UsageError(f"--max-size: {exc}") from None
        if self.extra_args:
            stores = [self.open_session(self.extra_args[0])]
        else:
            stores = [open_store(info.name, self.store or None) for info in self.sessions() if info.name]
        for store in stores:
            try:
                report = store.gc(keep_last=self.keep_last, max_bytes=max_bytes)
            except (StoreError, OSError) as exc:
                raise CliError(f"gc of {store.session!r} failed: {exc}") from None
            print(f"{store.session}: kept generations {report.kept}, deleted {report.manifests_deleted} "
                  f"manifests and {report.blobs_deleted} blobs ({report.bytes_freed} bytes)")


class CheckpointsApp(ElasticApp):
    name = "elastic-proxy checkpoints"
    description = "Inspect and clean up the checkpoints of notebook sessions."
    subcommands: ClassVar[dict[str, Any]] = {
        "list": (CheckpointsListApp, "List sessions, or the generations of one session."),
        "show": (CheckpointsShowApp, "Show one checkpoint: variables, what was lost, integrity."),
        "forget": (CheckpointsForgetApp, "Delete every checkpoint of a session."),
        "gc": (CheckpointsGcApp, "Delete old checkpoints and unused data."),
    }


class ElasticProxyApp(ElasticApp):
    name = "elastic-proxy"
    description = (
        "elastic-proxy: a Jupyter kernel that never loses a notebook's variables. A supervisor keeps the "
        "notebook's connection while the kernel child checkpoints its namespace after every cell, and "
        "brings it back after a crash, an OOM kill or a restart."
    )
    examples = """
elastic-proxy install --user
elastic-proxy wrap bash --user
elastic-proxy list
elastic-proxy checkpoints list

"""
    subcommands: ClassVar[dict[str, Any]] = {
        "install": (InstallApp, f"Install the {specs.DISPLAY_NAME!r} kernelspec ({specs.KERNEL_NAME})."),
        "wrap": (WrapApp, "Make an elastic version of an installed kernelspec (KERNEL-elastic)."),
        "list": (ListApp, ListApp.description),
        "uninstall": (UninstallApp, UninstallApp.description),
        "checkpoints": (CheckpointsApp, CheckpointsApp.description),
    }


def _clear_instances(cls: type[ElasticApp] = ElasticApp) -> None:
    """Forget the singleton apps, so that main() can run again in the same process."""
    for subclass in cls.__subclasses__():
        subclass.clear_instance()
        _clear_instances(subclass)


def main(argv: list[str] | None = None) -> None:
    try:
        app = ElasticProxyApp.instance()
        app.initialize(argv)
        app.start()
    except CliError as exc:
        print(f"elastic-proxy: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # `elastic-proxy --help | head`: the reader left; say nothing more (Python's documented recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        _clear_instances()
