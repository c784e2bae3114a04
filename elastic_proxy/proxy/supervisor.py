"""The supervisor's I/O edge: client sockets, child sockets, heartbeat, child lifecycle.

All decisions come from `ProtocolState`; this module receives frames, parses them, feeds the
state machine and sends what it returns. It never runs user code and never exits because a
child died: only a shutdown request, SIGTERM or a restart storm end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

import zmq

from elastic_proxy.proxy.child import KernelChild, describe_exit
from elastic_proxy.proxy.pumps import ChildOutbox, PumpSet, SocketPump, send_to_client
from elastic_proxy.proxy.state import (
    CONTROL,
    IOPUB,
    SHELL,
    STDIN,
    Exit,
    Interrupt,
    Phase,
    ProtocolState,
    Send,
    StormGuard,
    UsageRequested,
)
from elastic_proxy.proxy.wire import ReplayGuard, Signer, WireError, parse

#: Longest IOPub subscription topic accepted; a 12.5 MB topic made a stock kernel hold 1.5 GB.
MAX_TOPIC_BYTES = 1024
PROBE_INTERVAL = 0.25
START_TIMEOUT = 60.0
SHUTDOWN_GRACE = 3.0
PARENT_POLL_INTERVAL = 1.0
#: After a child's death: wait until its sockets were quiet this long (at most SETTLE_MAX).
SETTLE_QUIET = 0.05
SETTLE_MAX = 0.5

#: (generation, skip_restore_reason) -> a child not yet started. A reason means: start it empty.
#: Every child starts without restoring, and restores when the supervisor asks, once it answers:
#: so kernel_info is answered at once, even while a restore waits for a dead kernel's writer.
ChildFactory = Callable[[int, "str | None"], KernelChild]


def client_url(info: dict[str, Any], channel: str) -> str:
    port = int(info[f"{channel}_port"])
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


class Heartbeat(threading.Thread):
    """Echo heartbeats in a thread of their own, as ipykernel does, so a busy loop never looks dead."""

    def __init__(self, url: str) -> None:
        super().__init__(name="elastic-proxy-heartbeat", daemon=True)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.bind(url)

    def run(self) -> None:
        with contextlib.suppress(zmq.ContextTerminated, zmq.ZMQError):
            zmq.proxy(self.socket, self.socket)

    def stop(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


class Supervisor:
    """Owns the client's channels for the lifetime of the kernel, across any number of children."""

    def __init__(self, connection_info: dict[str, Any], new_child: ChildFactory, *,
                 storm: StormGuard, log: logging.Logger, memory_limit_text: str | None = None,
                 restore: bool = True, warm_spare: bool = True) -> None:
        self.info = connection_info
        self.new_child = new_child
        self.storm = storm
        self.log = log
        self.memory_limit_text = memory_limit_text
        self.restore = restore
        self.warm_spare = warm_spare
        self.spare: KernelChild | None = None
        self._spare_starting = False
        key = connection_info.get("key", "")
        self.client_signer = Signer(key.encode() if isinstance(key, str) else key,
                                    connection_info.get("signature_scheme", "hmac-sha256"))
        self.replay_guard = ReplayGuard()
        self.state = ProtocolState(client_ports={
            f"{ch}_port": int(connection_info[f"{ch}_port"]) for ch in ("shell", "iopub", "stdin", "hb", "control")
        })
        self.context = zmq.Context()
        self.client: dict[str, zmq.Socket] = {}
        self.child: KernelChild | None = None
        self.child_sockets: dict[str, zmq.Socket] = {}
        self.child_outboxes: dict[str, ChildOutbox] = {}
        self.pumps = PumpSet(log)
        self._child_pumps: list[SocketPump] = []
        self.child_identity = f"elastic-proxy-{os.getpid()}".encode()
        # Read now, before any child exists: a server that dies as soon as it sees the child would
        # otherwise be gone already when the parent watch first asks (it then sees init for ever).
        self._parent_pid = os.getppid()
        self.generation = 0
        self._child_tasks: list[asyncio.Task] = []
        self._tasks: list[asyncio.Task] = []
        self._exit: asyncio.Future[int] | None = None
        self._last_child_traffic = 0.0
        self._skip_restore_reason: str | None = None
        self._silent_child: KernelChild | None = None
        self.heartbeat: Heartbeat | None = None

    # --- lifecycle ----------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        self._bind_client_sockets()
        loop.add_signal_handler(signal.SIGTERM, self._request_exit, 0)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        for channel in (SHELL, CONTROL, STDIN):
            self.pumps.watch(self.client[channel], self._client_handler(channel))
        self.pumps.watch(self.client[IOPUB], self._subscription, multipart=False)
        self._tasks.append(asyncio.ensure_future(self._spawn_child()))
        self._tasks.append(asyncio.ensure_future(self._exit_with_parent()))
        code = await self._exit
        await self._shutdown()
        return code

    async def _exit_with_parent(self) -> None:
        """Exit when the process that started us (the Jupyter server) is gone, as ipykernel does.

        jupyter_client sets JPY_PARENT_PID; a supervisor orphaned by a crashed server would
        otherwise hold its ports and its child forever. The rule is ipykernel's ParentPollerUnix:
        gone when the parent changes, or, if the parent was not the server from the start (a
        wrapper, or a server that died at once), when the parent is init.
        """
        server = int(os.environ.get("JPY_PARENT_PID") or 0)
        if server in (0, 1):  # no server to watch; init never goes away
            return
        expected = server if self._parent_pid == server else 0
        while True:
            parent = os.getppid()
            if (parent != expected) if expected else (parent == 1):
                self.log.warning("the process that started this kernel is gone; exiting")
                self._request_exit(0)
                return
            await asyncio.sleep(PARENT_POLL_INTERVAL)

    def _request_exit(self, code: int) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    def _bind_client_sockets(self) -> None:
        kinds = {SHELL: zmq.ROUTER, CONTROL: zmq.ROUTER, STDIN: zmq.ROUTER, IOPUB: zmq.XPUB}
        for channel, kind in kinds.items():
            sock = self.context.socket(kind)
            sock.linger = 1000
            if kind == zmq.ROUTER:
                sock.router_handover = 1
            else:
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
                sock.setsockopt(zmq.XPUB_MANUAL, 1)
                # Inbound IOPub traffic is only subscriptions: a peer sending a bigger one is cut off
                # by libzmq before the bytes are buffered.
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_TOPIC_BYTES + 1)
            sock.bind(client_url(self.info, channel))
            self.client[channel] = sock
        self.heartbeat = Heartbeat(client_url(self.info, "hb"))
        self.heartbeat.start()

    async def _shutdown(self) -> None:
        for task in self._tasks + self._child_tasks:
            task.cancel()
        if self.spare is not None:
            await self.spare.stop(grace=0.5)
            await self.spare.cleanup()
        if self.child is not None:
            await self.child.stop(grace=1.0)
            await self._close_child()
        for pump in list(self.pumps.pumps.values()):
            self.pumps.remove(pump)
        for sock in self.client.values():
            sock.close(linger=200)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.context.destroy(linger=0)  # closes whatever a failed child start left open; term() would wait

    # --- the child ---------------------------------------------------------------------
    async def _spawn_child(self) -> None:
        """Bring up the next child: the warm spare when there is one, else a new process."""
        spare, self.spare = self.spare, None
        if spare is not None and not self._skip_restore_reason and not spare.exit_code.done():
            self.log.info("kernel child %d (the warm spare) takes over", spare.generation)
            await self._adopt(spare, restore_on_ready=self.restore)
            return
        if spare is not None:
            await spare.stop(grace=0.5)
            await spare.cleanup()
        child = self.new_child(self.generation, self._skip_restore_reason)
        self.generation += 1
        self.child = child
        try:
            await child.start()
        except Exception as err:
            self.log.error("could not start the kernel child: %s", err)
            await self._child_gone(child, f"The kernel child could not be started: {err}")
            return
        self.log.info("kernel child %d started (pid %d)", child.generation, child.pid)
        await self._adopt(child, restore_on_ready=self.restore and not self._skip_restore_reason)

    async def _adopt(self, child: KernelChild, *, restore_on_ready: bool) -> None:
        self.child = child
        self._connect_child(child)
        self.state.child_interrupt_mode = child.interrupt_mode
        self._execute(self.state.child_started(child.language, restore_on_ready=restore_on_ready))
        self._child_tasks.append(asyncio.ensure_future(self._watch_child(child)))
        self._child_tasks.append(asyncio.ensure_future(self._probe_until_ready(child)))

    async def _start_spare(self) -> None:
        """Keep one idle child ready (interpreter, ipykernel, agent loaded; nothing restored), so a
        death costs the restore, not a process start."""
        self._spare_starting = True
        try:
            spare = self.new_child(self.generation, None)
            self.generation += 1
            await spare.start()
        except Exception as err:
            self.log.warning("could not start a warm spare: %s", err)
            return
        finally:
            self._spare_starting = False
        if self.state.phase is Phase.STOPPED:
            await spare.stop(grace=0.5)
            await spare.cleanup()
            return
        self.spare = spare
        self._tasks.append(asyncio.ensure_future(self._forget_dead_spare(spare)))

    async def _forget_dead_spare(self, spare: KernelChild) -> None:
        await spare.exit_code
        if self.spare is spare:
            self.log.warning("the warm spare (pid %d) died; another starts with the next cell", spare.pid)
            self.spare = None
            await spare.cleanup()

    def _connect_child(self, child: KernelChild) -> None:
        urls = child.urls()
        kinds = {SHELL: zmq.DEALER, CONTROL: zmq.DEALER, STDIN: zmq.DEALER, IOPUB: zmq.SUB}
        for channel, kind in kinds.items():
            sock = self.context.socket(kind)
            sock.linger = 0
            if channel in (SHELL, STDIN):
                # One identity for both, or input_request never finds its way back.
                sock.setsockopt(zmq.IDENTITY, self.child_identity)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(urls[channel])
            self.child_sockets[channel] = sock
            if kind == zmq.DEALER:
                self.child_outboxes[channel] = ChildOutbox(sock, self.log, self.pumps.poke)
            self._child_pumps.append(self.pumps.watch(sock, self._child_handler(channel)))

    async def _probe_until_ready(self, child: KernelChild) -> None:
        """Ask until the child answers. One silent for START_TIMEOUT is killed; one that sends
        anything (a restore's progress, while it waits for a writer or loads gigabytes) is not."""
        started = time.monotonic()
        while self.child is child and self.state.phase is Phase.STARTING:
            await asyncio.sleep(PROBE_INTERVAL)
            if self.child is not child or self.state.phase is not Phase.STARTING:
                return
            if time.monotonic() - max(started, self._last_child_traffic) > START_TIMEOUT:
                self.log.error("kernel child was silent for %.0f s while starting; killing it", START_TIMEOUT)
                self._silent_child = child
                child.kill()
                return
            self._execute([self.state.probe()])

    async def _watch_child(self, child: KernelChild) -> None:
        assert child.exit_code is not None
        returncode = await child.exit_code
        oom_kills = child.oom_kills()
        cause = describe_exit(returncode, oom_kills, self.memory_limit_text)
        restoring = self.state.phase in (Phase.STARTING, Phase.RESTORING)
        silenced = child is self._silent_child  # our own SIGKILL: not the kernel's out-of-memory killer
        if silenced:
            cause = f"The kernel process sent nothing for {START_TIMEOUT:.0f} s while starting, so it was stopped."
        likely_oom = oom_kills or (returncode == -signal.SIGKILL and not self.memory_limit_text and not silenced)
        if restoring and likely_oom and not self.state.shutting_down:
            # Loading the state is what ran out of memory: loading it again would loop.
            self._skip_restore_reason = "restoring the last checkpoint ran out of memory"
            cause += (" It died while restoring the session's checkpoint, likely for lack of memory, so the next "
                      "kernel process starts empty: its first cell lists the largest variables, and "
                      "`%elastic restore --skip NAME ...` brings the rest back.")
        else:
            self._skip_restore_reason = None
        await self._child_gone(child, cause)

    async def _child_gone(self, child: KernelChild, cause: str) -> None:
        """Answer what the dead child owed, then respawn (or stop, on shutdown or a storm)."""
        await self._settle_child_traffic()
        shutting_down = self.state.shutting_down
        respawn = not shutting_down and self.storm.record_death(time.monotonic())
        if not shutting_down:
            self.log.warning("kernel child %d died: %s", child.generation, cause)
            if respawn:
                cause += " " + self._recovery_plan()
            else:
                cause += (f" It died {self.storm.limit} times within {self.storm.window:.0f} s, so "
                          "elastic-proxy stops restarting it and exits; Jupyter will offer a restart.")
        actions = self.state.child_died(cause, respawn=respawn)
        await self._close_child()
        self._execute(actions)
        if respawn:
            self._tasks.append(asyncio.ensure_future(self._spawn_child()))
        elif not shutting_down:
            self._request_exit(1)

    def _recovery_plan(self) -> str:
        """What the new child will bring back, for the killed cell's error (the details follow in the
        first cell on the new child, once the restore has run)."""
        checkpoint = self.state.last_checkpoint
        if checkpoint and self.state.child_language == "python":
            return (f"A new kernel process is restoring the state after cell [{checkpoint.get('cell')}] "
                    f"(checkpoint generation {checkpoint.get('generation')}) and re-running the cells "
                    "completed after it; the next cell runs there and shows what came back.")
        if self.state.cell_log:
            return ("A new kernel process was started; the completed cells are re-run there before the next cell, "
                    "which shows what came back.")
        return "A new kernel process was started; the next cell runs there."

    async def _settle_child_traffic(self) -> None:
        """Let the readers forward what the child sent just before it died.

        The pidfd can report the exit before the child's last messages (its busy status, the
        output printed before the crash) are read. Answering first would put the error before
        those outputs, or take a started cell for a queued one and run it again.
        """
        deadline = time.monotonic() + SETTLE_MAX
        while time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_QUIET / 2)
            if time.monotonic() - self._last_child_traffic >= SETTLE_QUIET:
                return

    async def _close_child(self) -> None:
        current = asyncio.current_task()  # the watcher that noticed the death must finish its answer
        for task in self._child_tasks:
            if task is not current:
                task.cancel()
        self._child_tasks.clear()
        for pump in self._child_pumps:
            self.pumps.remove(pump)  # before the sockets close: their fds could be reused at once
        self._child_pumps.clear()
        for outbox in self.child_outboxes.values():
            outbox.close()
        self.child_outboxes.clear()
        for sock in self.child_sockets.values():
            sock.close(linger=0)
        self.child_sockets.clear()
        child, self.child = self.child, None
        if child is not None and child.process is not None:
            with contextlib.suppress(Exception):
                await child.cleanup()

    # --- handlers, called by the pumps for each message ---------------------------------
    def _client_handler(self, channel: str) -> Callable[[list[bytes]], None]:
        def handle(raw: list[bytes]) -> None:
            try:
                msg = parse(raw, self.client_signer, self.replay_guard)
            except WireError as err:
                self.log.warning("dropped a message from the client on %s: %s", channel, err)
                return
            self._execute(self.state.client_message(channel, msg))

        return handle

    def _child_handler(self, channel: str) -> Callable[[list[bytes]], None]:
        def handle(raw: list[bytes]) -> None:
            self._last_child_traffic = time.monotonic()
            try:
                msg = parse(raw, None)  # ipc in our 0700 runtime dir: only our child can be there
            except WireError as err:
                self.log.warning("dropped a message from the kernel child on %s: %s", channel, err)
                return
            self._execute(self.state.child_message(channel, msg))

        return handle

    def _subscription(self, raw: list[bytes]) -> None:
        """XPUB_MANUAL: accept each subscription ourselves, refuse oversized ones, welcome the rest."""
        sock = self.client[IOPUB]
        frame = raw[0]
        if not frame:
            return
        subscribe, topic = frame[0] == 1, frame[1:]
        if len(topic) > MAX_TOPIC_BYTES:
            self.log.warning("refused an IOPub subscription of %d bytes (limit %d)", len(topic), MAX_TOPIC_BYTES)
            return
        if not subscribe:
            sock.setsockopt(zmq.UNSUBSCRIBE, topic)
            return
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        try:
            text = topic.decode()
        except UnicodeDecodeError:
            return
        welcome = self.state.announce("iopub_welcome", {"subscription": text})
        welcome.msg.idents = [topic] if topic else []
        self._execute([welcome])

    # --- carrying out the state machine's actions ----------------------------------------
    def _execute(self, actions: list[Any]) -> None:
        """Carry out the actions now, in order; nothing here waits (sends never block)."""
        self._send_actions(actions)
        if (self.warm_spare and self.spare is None and not self._spare_starting
                and self.state.phase is Phase.READY and self.child is not None):
            self._spare_starting = True
            self._tasks.append(asyncio.ensure_future(self._start_spare()))

    def _send_actions(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, Interrupt):
                if self.child is not None:
                    self.child.interrupt()
            elif isinstance(action, UsageRequested):
                content = self._usage()
                for reply in self.state.reply_locally(action.request, CONTROL, "usage_reply", content):
                    self._send(reply)
            elif isinstance(action, Exit):
                self._request_exit(action.code)

    def _send(self, action: Send) -> None:
        if action.to == "client":
            sock = self.client[action.channel]
            send_to_client(sock, action.msg.to_frames(self.client_signer), self.log)
            self.pumps.poke(sock)
            return
        outbox = self.child_outboxes.get(action.channel)
        if outbox is None or self.child is None:
            self.log.debug("no child socket for %s; message dropped", action.channel)
            return
        outbox.send(action.msg.to_frames(self.child.signer))
        if action.msg.msg_type == "shutdown_request":
            self._tasks.append(asyncio.ensure_future(self._kill_if_lingering(self.child)))

    async def _kill_if_lingering(self, child: KernelChild) -> None:
        """A child asked to shut down gets SHUTDOWN_GRACE seconds, then SIGKILL (Jupyter waits 5 s)."""
        assert child.exit_code is not None
        try:
            await asyncio.wait_for(asyncio.shield(child.exit_code), SHUTDOWN_GRACE)
        except asyncio.TimeoutError:
            self.log.warning("kernel child %d ignored shutdown_request; killing it", child.generation)
            child.kill()

    def _usage(self) -> dict[str, Any]:
        """usage_reply as ipykernel shapes it, but for the child: the process users care about."""
        import psutil

        content: dict[str, Any] = {"hostname": socket.gethostname(), "cpu_count": psutil.cpu_count()}
        if self.child is None or self.child.process is None:
            return content
        content["pid"] = self.child.pid
        try:
            proc = psutil.Process(self.child.pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return content
        content.update(process_tree_usage(procs))
        content["host_virtual_memory"] = dict(psutil.virtual_memory()._asdict())
        return content


def process_tree_usage(procs: list[Any]) -> dict[str, float]:
    """CPU percent and RSS summed over the child and its processes (psutil.Process objects).

    One that ended since it was listed is left out: the child's checkpoint writers are short-lived,
    and one ending at the wrong moment must not take the whole figure with it.
    """
    import psutil

    cpu = memory = 0.0
    for proc in procs:
        try:
            with proc.oneshot():
                cpu += proc.cpu_percent(None)
                memory += proc.memory_info().rss
        except psutil.Error:
            continue
    return {"kernel_cpu": cpu, "kernel_memory": int(memory)}


def run_supervisor(supervisor: Supervisor) -> int:
    return asyncio.run(supervisor.run())

