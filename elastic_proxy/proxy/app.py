"""`python -m elastic_proxy.proxy -f CONNECTION_FILE`: the process Jupyter starts as the kernel.

Configuration is traitlets, as in every Jupyter app: command line, `elastic_proxy_config.py`
on the Jupyter config path, and environment defaults for the settings users set per session.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys

from jupyter_core.application import JupyterApp
from traitlets import Bool, Float, Integer, Unicode, default

from elastic_proxy import __version__
from elastic_proxy.proxy.child import (
    OWN_IPYKERNEL,
    ChildSpecs,
    KernelChild,
    make_runtime_dir,
    remove_runtime_dir,
)
from elastic_proxy.proxy.state import StormGuard
from elastic_proxy.proxy.supervisor import Supervisor, run_supervisor


def split_child_arguments(argv: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """(the supervisor's arguments, those for the child).

    jupyter_client appends a kernelspec's `extra_arguments` (e.g. `--profile-dir DIR`) to the
    command line of the process it starts: options the supervisor does not know are the child's,
    as they would be for a kernel started directly.
    """
    ours: list[str] = []
    child: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.lstrip("-").split("=", 1)[0]
        if not token.startswith("-") or name in known or name.split(".", 1)[0] in ("SupervisorApp", "Application",
                                                                                   "JupyterApp"):
            ours.append(token)
        else:
            child.append(token)
            takes_value = "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("-")
            if takes_value:
                i += 1
                child.append(argv[i])
        i += 1
    return ours, child


class SupervisorApp(JupyterApp):
    name = "elastic_proxy"
    description = "The elastic-proxy kernel supervisor: owns the client's channels and respawns its child."
    version = __version__

    connection_file = Unicode("", config=True, help="The connection file Jupyter wrote for this kernel.")
    child_kernel = Unicode(
        "", config=True,
        help="Kernelspec to run as the child (empty: this interpreter's ipykernel with the agent).",
    )
    memory_limit = Unicode(
        "", config=True,
        help="Run the child in a memory cgroup of this size (e.g. 2G), so an OOM kills only the child.",
    )
    session = Unicode(config=True, help="Session name (default: JPY_SESSION_NAME, the notebook path "
                                        "relative to the Jupyter root, so every host finds the same one).")
    store = Unicode(config=True, help="Checkpoint store: a path or fsspec URL such as s3://bucket/prefix "
                                      "(default: $ELASTIC_PROXY_STORE, else under the Jupyter data dir).")
    restore = Bool(True, config=True, help="Restore the session's newest checkpoint when a child starts.")
    load_agent = Bool(
        True, config=True,
        help="Load the elastic_proxy.inner_agent extension into Python children (checkpoints, restore).",
    )
    warm_spare = Bool(
        True, config=True,
        help="Keep one idle child started, so a death costs the restore and not a process start (memory: one "
             "idle interpreter).",
    )
    storm_limit = Integer(5, config=True, help="Stop respawning after this many child deaths ...")
    storm_window = Float(60.0, config=True, help="... within this many seconds; then exit non-zero.")

    aliases = {
        "f": "SupervisorApp.connection_file",
        "child-kernel": "SupervisorApp.child_kernel",
        "memory-limit": "SupervisorApp.memory_limit",
        "session": "SupervisorApp.session",
        "store": "SupervisorApp.store",
        "storm-limit": "SupervisorApp.storm_limit",
        "storm-window": "SupervisorApp.storm_window",
        "log-level": "Application.log_level",
    }
    flags = {
        "no-restore": ({"SupervisorApp": {"restore": False}}, "Start every child empty."),
        "no-agent": ({"SupervisorApp": {"load_agent": False}}, "Do not load the agent (replay only)."),
        "no-warm-spare": ({"SupervisorApp": {"warm_spare": False}}, "Start a child only when one is needed."),
        "debug": ({"Application": {"log_level": logging.DEBUG}}, "Log debug messages."),
    }

    child_arguments: list[str] = []
    writer_id = secrets.token_hex(8)
    """Names this kernel in the manifests its children write (all children of one supervisor are
    one writer), so that another kernel writing the same session is detected."""

    def parse_command_line(self, argv: list[str] | None = None) -> None:
        argv = sys.argv[1:] if argv is None else list(argv)
        known = {*self.aliases, *self.flags, "help", "help-all", "version", "h"}
        ours, self.child_arguments = split_child_arguments(argv, known)
        super().parse_command_line(ours)

    @default("session")
    def _session_default(self) -> str:
        from elastic_proxy.session_identity import session_from_environment

        return session_from_environment(os.environ)

    @default("store")
    def _store_default(self) -> str:
        return os.environ.get("ELASTIC_PROXY_STORE", "")

    def child_env(self, generation: int, skip_restore_reason: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["ELASTIC_PROXY_CHILD_GENERATION"] = str(generation)
        # The supervisor asks for the restore once the child answers (supervisor.ChildFactory says why).
        env["ELASTIC_PROXY_RESTORE"] = "deferred" if self.restore and not skip_restore_reason else "off"
        if skip_restore_reason:
            env["ELASTIC_PROXY_RESTORE_SKIPPED"] = skip_restore_reason
        env["ELASTIC_PROXY_SESSION"] = self.session or self.default_session()
        if self.store:
            env["ELASTIC_PROXY_STORE"] = self.store
        env["ELASTIC_PROXY_WRITER"] = self.writer_id
        return env

    def default_session(self) -> str:
        """Without a notebook path (plain jupyter_client, nbclient, papermill), the session is this
        kernel's: named after the connection file, which a restart keeps and every child shares.
        (Each child naming its own would make every respawn start empty.)"""
        base = os.path.splitext(os.path.basename(self.connection_file))[0]
        return "kernel/" + (base[len("kernel-"):] if base.startswith("kernel-") else base)

    def start(self) -> None:
        if not self.connection_file:
            self.log.critical("elastic-proxy: no connection file; Jupyter passes it as -f {connection_file}")
            self.exit(2)
        with open(self.connection_file) as f:
            info = json.load(f)
        specs = ChildSpecs()
        if self.load_agent:
            specs.agent_extension = "elastic_proxy.inner_agent"
        kernel_name = self.child_kernel or OWN_IPYKERNEL
        limit_bytes = 0
        if self.memory_limit:
            from elastic_proxy.proxy.memlimit import MemoryLimit, parse_size

            limit_bytes = parse_size(self.memory_limit)
        runtime_dir = make_runtime_dir()

        def new_child(generation: int, skip_restore_reason: str | None) -> KernelChild:
            limit = None
            if self.memory_limit:
                limit = MemoryLimit.create(limit_bytes, str(generation))
                if limit.warning:
                    self.log.warning("%s", limit.warning)
            return KernelChild(specs=specs, kernel_name=kernel_name, runtime_dir=runtime_dir,
                               extra_arguments=self.child_arguments,
                               generation=generation, env=self.child_env(generation, skip_restore_reason),
                               cwd=os.getcwd(),
                               memory_limit=limit)

        supervisor = Supervisor(info, new_child, storm=StormGuard(self.storm_limit, self.storm_window),
                                log=self.log, memory_limit_text=self.memory_limit or None,
                                restore=self.restore, warm_spare=self.warm_spare)
        try:
            code = run_supervisor(supervisor)
        finally:
            remove_runtime_dir(runtime_dir)
        sys.exit(code)


def main() -> None:
    SupervisorApp.launch_instance()
