"""One kernel child: launched through jupyter_client over ipc, watched through a pidfd.

Everything here is process mechanics (launch, exit detection, signals, cleanup); what a
death means for the client is decided in `state.py`.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import sys
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager

from elastic_proxy.proxy.wire import Signer

#: The name under which the supervisor knows its default child: this interpreter's ipykernel.
OWN_IPYKERNEL = "elastic-proxy-own-ipykernel"
PR_SET_PDEATHSIG = 1
CHANNELS = ("shell", "control", "stdin", "iopub")


class ChildSpecs(KernelSpecManager):
    """The host's kernelspecs plus the default child, which must never resolve to a spec on disk.

    (A `python3` spec on JUPYTER_PATH may itself start elastic-proxy: resolving the default
    child through it would start proxies forever.)
    """

    agent_extension: str | None = None

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == OWN_IPYKERNEL:
            argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            if self.agent_extension:
                argv.append(f"--IPKernelApp.extensions={self.agent_extension}")
            return KernelSpec(argv=argv, display_name="Python 3 (elastic child)", language="python",
                              interrupt_mode="signal", resource_dir="")
        return super().get_kernel_spec(kernel_name)


def describe_exit(returncode: int, oom_kills: int, memory_limit: str | None) -> str:
    """A sentence for the user: how the child ended, and the likely reason."""
    if returncode < 0:
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if signum == signal.SIGKILL:
            if oom_kills:
                limit = f" of {memory_limit}" if memory_limit else ""
                return (f"The kernel process was killed by SIGKILL: out of memory (it reached its "
                        f"memory limit{limit} and the OOM killer ended it).")
            return ("The kernel process was killed by SIGKILL, likely out of memory "
                    "(the system's OOM killer) or by another process.")
        if signum == signal.SIGSEGV:
            return "The kernel process crashed with a segmentation fault (SIGSEGV)."
        if signum == signal.SIGABRT:
            return "The kernel process aborted (SIGABRT)."
        if signum == signal.SIGBUS:
            return "The kernel process crashed with a bus error (SIGBUS)."
        return f"The kernel process was killed by {name}."
    return f"The kernel process exited with status {returncode}."


class KernelChild:
    """A single child generation: its KernelManager, process, key and socket addresses."""

    def __init__(self, *, specs: ChildSpecs, kernel_name: str, runtime_dir: str, generation: int,
                 env: dict[str, str], cwd: str | None, memory_limit: Any = None,
                 extra_arguments: list[str] | None = None) -> None:
        self.generation = generation
        self.memory_limit = memory_limit
        prefix = os.path.join(runtime_dir, f"child{generation}")
        self.km = AsyncKernelManager(
            kernel_name=kernel_name, kernel_spec_manager=specs, transport="ipc", ip=prefix,
            connection_file=f"{prefix}.json",
        )
        self._env = env
        self._cwd = cwd
        self._extra_arguments = list(extra_arguments or [])
        self._parent_pid = os.getpid()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.process: Any = None
        self.signer: Signer | None = None
        self.exit_code: asyncio.Future[int] | None = None

    @property
    def interrupt_mode(self) -> str:
        return self.km.kernel_spec.interrupt_mode

    @property
    def language(self) -> str:
        return self.km.kernel_spec.language

    @property
    def pid(self) -> int:
        return self.process.pid

    def urls(self) -> dict[str, str]:
        info = self.km.get_connection_info()
        return {ch: f"ipc://{info['ip']}-{info[f'{ch}_port']}" for ch in CHANNELS}

    def _preexec(self) -> None:
        """In the forked child, before exec: die with the supervisor, be the OOM killer's first pick."""
        self._libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self._parent_pid:
            os._exit(1)  # the supervisor died between fork and prctl
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        if self.memory_limit is not None:
            self.memory_limit.preexec()

    async def start(self) -> None:
        try:
            await self.km.start_kernel(env=self._env, cwd=self._cwd, preexec_fn=self._preexec,
                                       extra_arguments=self._extra_arguments)
        except NoSuchKernel as err:
            raise RuntimeError(f"the wrapped kernelspec is not installed: {err}") from None
        self.process = self.km.provisioner.process
        self.signer = Signer(self.km.session.key, self.km.session.signature_scheme)
        loop = asyncio.get_running_loop()
        self.exit_code = loop.create_future()
        pidfd = os.pidfd_open(self.process.pid)

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not self.exit_code.done():
                self.exit_code.set_result(self.process.wait())

        loop.add_reader(pidfd, reap)

    def oom_kills(self) -> int:
        return self.memory_limit.oom_kill_count() if self.memory_limit is not None else 0

    def interrupt(self) -> None:
        """SIGINT to the child's process group, as jupyter_client does for interrupt_mode=signal."""
        pgid = self.km.provisioner.pgid
        try:
            if pgid:
                os.killpg(pgid, signal.SIGINT)
            else:
                os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def kill(self, signum: int = signal.SIGKILL) -> None:
        pgid = self.km.provisioner.pgid if self.km.provisioner else None
        try:
            if pgid:
                os.killpg(pgid, signum)
            elif self.process is not None:
                os.kill(self.process.pid, signum)
        except ProcessLookupError:
            pass

    async def stop(self, grace: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is reaped."""
        if self.exit_code is None or self.exit_code.done():
            return
        self.kill(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.exit_code), grace)
        except asyncio.TimeoutError:
            self.kill(signal.SIGKILL)
            await self.exit_code

    async def cleanup(self) -> None:
        """Remove the connection file, the ipc socket files and the memory cgroup."""
        await self.km.cleanup_resources(restart=False)
        if self.memory_limit is not None:
            self.memory_limit.remove()


#: A unix socket path holds 107 bytes; the child's ipc files are named `<dir>/child<N>-<port>`.
MAX_RUNTIME_DIR = 107 - len("/child9999-99999")


def make_runtime_dir() -> str:
    """A 0700 directory for the ipc sockets and the child's connection file.

    Under the Jupyter runtime dir, unless that path is too long for a unix socket (deep home
    directories, pytest's tmp_path): then under the system's temp dir.
    """
    import tempfile

    from jupyter_core.paths import jupyter_runtime_dir

    base = jupyter_runtime_dir()
    os.makedirs(base, mode=0o700, exist_ok=True)
    path = tempfile.mkdtemp(prefix="elastic-proxy-", dir=base)
    if len(path) > MAX_RUNTIME_DIR:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="elastic-proxy-")
    os.chmod(path, 0o700)
    return path


def remove_runtime_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
