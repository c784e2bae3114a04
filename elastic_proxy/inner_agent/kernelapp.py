"""The default kernel child's entry point: ipykernel, without its shell-channel thread.

ipykernel 7 reads the shell socket in a thread of its own and hands every request to the main
thread, and every reply back, over inproc sockets: two thread switches per request, there to
serve kernel subshells. The supervisor never offers subshells (a subshell id would not survive
a respawn, see `proxy/state.py`), so its child runs ipykernel's single-thread shell instead, as
ipykernel 6 always did. On the development VM that takes 0.9 ms off each `x = 1` round trip
(`bench/proxy_overhead.py`, the `child` row). ipykernel 6 has no such thread: nothing changes.

Started as `python -m elastic_proxy.inner_agent.kernelapp -f CONNECTION_FILE [options]`, with
the same options as `ipykernel_launcher`.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from functools import partial
from pathlib import Path

import zmq
from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from traitlets import Type

#: The dummy message ipykernel 7's dispatch_shell takes as "stop aborting" (see Kernel._abort_queues).
STOP_ABORTING = b"stop aborting"


class NoShellChannelThread:
    """Stands where ipykernel 7 keeps its shell-channel thread, and is false.

    ipykernel tests `if kernel.shell_channel_thread:` to choose its single-thread path, but one
    line (running a cell with top-level `await`) reads `shell_channel_thread.parent_thread`
    unguarded: with None there, every such cell would fail with AttributeError.
    """

    parent_thread = threading.main_thread()

    def __bool__(self) -> bool:
        return False


class ElasticChildKernel(IPythonKernel):
    """IPythonKernel that knows it has no subshells (ipykernel infers them from the thread's presence)."""

    @property
    def _supports_kernel_subshells(self) -> bool:
        return False

    def _abort_queues(self, subshell_id: str | None = None) -> None:
        """After an error with stop_on_error: abort the requests that came before this point, then stop.

        ipykernel 7's single-thread path stops aborting on the next loop turn, before the requests
        that arrived during an `await` cell (waiting for the shell lock) had their turn: they ran
        instead of being aborted (its test_execute_stop_on_error fails). Its threaded path posts a
        "stop aborting" marker behind them instead; this does the same on the shell lock, through
        the same two-step dispatch that the shell stream gives each request, so the marker queues last.
        """
        if subshell_id is not None or not isinstance(getattr(self, "shell_channel_thread", None),
                                                     NoShellChannelThread):
            super()._abort_queues(subshell_id)
            return
        from ipykernel.utils import _async_in_context  # ipykernel 7, where the stand-in is used

        self._aborting = True
        self.log.info("Aborting queue")
        self.shell_stream.flush()  # requests waiting in the socket are dispatched (and queue on the lock) first
        stop_aborting = _async_in_context(partial(self.shell_main, None))
        self._stop_aborting = asyncio.ensure_future(stop_aborting([zmq.Frame(STOP_ABORTING)]))


class ElasticChildKernelApp(IPKernelApp):
    """IPKernelApp whose kernel reads its shell socket on the main thread."""

    name = "elastic-proxy-child"
    kernel_class = Type(ElasticChildKernel, klass="ipykernel.kernelbase.Kernel",
                        help="The Kernel subclass to be used; another one keeps ipykernel's shell-channel thread.",
                        ).tag(config=True)

    def init_sockets(self) -> None:
        super().init_sockets()
        # A kernel class set by the user's own config keeps ipykernel's stock shell.
        single_thread = issubclass(self.kernel_class, ElasticChildKernel)
        if single_thread and getattr(self, "shell_channel_thread", None) is not None:
            self.shell_channel_thread = NoShellChannelThread()


def main() -> None:
    # As ipykernel_launcher: the working directory leaves sys.path while ipykernel loads
    # (IPython puts it back for the user's code).
    if sys.path[0] == "" or Path(sys.path[0]) == Path.cwd():
        del sys.path[0]
    ElasticChildKernelApp.launch_instance()


if __name__ == "__main__":
    main()
