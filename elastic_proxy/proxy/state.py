"""The supervisor's protocol state machine: no sockets, no processes, no clocks.

Fed with parsed messages and lifecycle events, it answers with the messages to send. That is
where the promises to the client live: a killed cell gets exactly one error, one error reply
and one idle; requests behind it are aborted or kept for the next child; kernel_info is
answered while the child is away; comms open before a death are closed; the execution
counter never goes back. The socket code in `supervisor.py` only carries out `Send`s.
"""

from __future__ import annotations

import ast
import enum
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from elastic_proxy.proxy.wire import PROTOCOL_VERSION, WireMessage, new_message

SHELL = "shell"
CONTROL = "control"
STDIN = "stdin"
IOPUB = "iopub"

#: Features a respawned child cannot honour: subshell ids and debugger sessions die with it.
STRIPPED_FEATURES = frozenset({"kernel subshells", "debugger"})
#: Control requests of the features in STRIPPED_FEATURES, answered with an error: (ename, evalue).
UNOFFERED_REQUESTS = {
    "debug_request": ("DebuggerUnavailable", "elastic-proxy does not offer the debugger: debugger sessions "
                                             "would not survive a respawn of the kernel child."),
    **{f"{verb}_subshell_request": ("SubshellsUnavailable", "elastic-proxy does not offer kernel subshells: "
                                    "subshell ids would not survive a respawn of the kernel child.")
       for verb in ("create", "delete", "list")},
}
#: Messages whose execution_count the supervisor shifts so numbering continues across children.
COUNTED_TYPES = frozenset({"execute_input", "execute_result", "execute_reply"})
#: Restores smaller than this finish in about the time a progress display would take to notice.
PROGRESS_MIN_BYTES = 256 * 2**20
#: Comm messages from the restore (a replayed cell re-creating a widget) reach the client, unlike its other output.
COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})
#: Supervisor <-> agent messages: consumed, never shown to the client.
AGENT_TYPES = frozenset({"elastic_checkpoint", "elastic_restore"})


class Phase(enum.Enum):
    STARTING = "starting"  # a child is being launched or probed
    RESTORING = "restoring"  # the child answers; asking its agent what it restored, replaying cells
    READY = "ready"  # requests flow to the child
    DEAD = "dead"  # the child died; waiting for the respawn
    STOPPED = "stopped"  # shutdown requested, or respawning given up


@dataclass(frozen=True)
class Send:
    """One message to send: to the client or the child, on a channel."""

    to: Literal["client", "child"]
    channel: str
    msg: WireMessage


@dataclass(frozen=True)
class Interrupt:
    """Interrupt the child by signal (its spec says interrupt_mode=signal)."""


@dataclass(frozen=True)
class Exit:
    """Stop the supervisor after sending what came before; `code` is its exit status."""

    code: int


@dataclass(frozen=True)
class UsageRequested:
    """The edge measures the child's pid and memory and answers with `reply_locally`."""

    request: WireMessage


Action = Any  # Send | Interrupt | Exit | UsageRequested


@dataclass
class Request:
    """A client request forwarded to the child, until its reply and its idle are both seen."""

    channel: str
    msg: WireMessage
    started: bool = False
    replied: bool = False
    idle: bool = False


@dataclass
class _Probe:
    msg_id: str
    replied: bool = False


@dataclass(frozen=True)
class LoggedCell:
    """A cell that completed: what replay-only recovery re-runs."""

    execution_count: int
    code: str


#: What the supervisor asks a Python child after it starts (a user expression, so no cell is used up).
AGENT_SUMMARY_EXPRESSION = (
    "__import__('elastic_proxy.inner_agent.supervisor_link', fromlist=['_'])"
    ".summary({count}, restore_now={restore}, pending={pending!r})"
)


def parse_agent_summary(reply_content: dict[str, Any]) -> dict[str, Any] | None:
    """The agent's summary from an execute_reply's user_expressions; None where there is no agent."""
    value = reply_content.get("user_expressions", {}).get("elastic", {})
    if value.get("status") != "ok":
        return None
    try:
        summary = ast.literal_eval(value.get("data", {}).get("text/plain", ""))
    except (ValueError, SyntaxError):
        return None
    return summary if isinstance(summary, dict) else None


@dataclass
class ProtocolState:
    """What the supervisor knows about the conversation between the client and its child."""

    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    child_interrupt_mode: str = "signal"
    phase: Phase = Phase.STARTING
    kernel_info: dict[str, Any] | None = None
    execution_count: int = 0
    count_offset: int = 0
    in_flight: dict[str, Request] = field(default_factory=dict)
    queued: deque = field(default_factory=deque)
    open_comms: dict[str, str] = field(default_factory=dict)
    pending_input: WireMessage | None = None
    shutting_down: bool = False
    child_language: str = "python"
    restore_on_ready: bool = False  # a warm spare was started empty: its agent restores when asked
    client_ports: dict[str, int] = field(default_factory=dict)
    cell_log: list[LoggedCell] = field(default_factory=list)
    last_checkpoint: dict[str, Any] | None = None
    recovery_notice: str | None = None
    _replaying: dict[str, LoggedCell] = field(default_factory=dict)
    _replayed: list[int] = field(default_factory=list)
    _not_replayed: list[str] = field(default_factory=list)
    _replay_failures: list[str] = field(default_factory=list)
    _replay_by_agent: bool = False
    _summary_id: str | None = None
    _progress_parent: str | None = None
    _child_count: int = 0
    _probe: _Probe | None = None
    _internal_ids: set[str] = field(default_factory=set)
    _child_comms: set[str] = field(default_factory=set)  # opened by the live child: not stale at child_ready

    # --- messages from the client ------------------------------------------------------
    def client_message(self, channel: str, msg: WireMessage) -> list[Action]:
        kind = msg.msg_type
        if channel == STDIN:
            return self._client_input(msg)
        if kind == "kernel_info_request" and self.phase is not Phase.READY and self.kernel_info is not None:
            return self.reply_locally(msg, channel, "kernel_info_reply", self.kernel_info)
        if kind == "connect_request":
            # The child would name its own ipc endpoints; the client needs the ones it connected to.
            return self.reply_locally(msg, channel, "connect_reply", {"status": "ok", **self.client_ports})
        if channel == CONTROL:
            if kind == "interrupt_request" and (self.child_interrupt_mode != "message"
                                                or self.phase is not Phase.READY):
                # A child still starting has no cell to interrupt, and SIGINT could kill it.
                stop = [Interrupt()] if self.phase is Phase.READY else self._interrupt_waiting_cell()
                return [*stop, *self.reply_locally(msg, channel, "interrupt_reply", {"status": "ok"})]
            if kind == "usage_request":
                return [UsageRequested(msg)]
            if kind == "shutdown_request":
                return self._client_shutdown(msg)
            if kind in UNOFFERED_REQUESTS:
                ename, evalue = UNOFFERED_REQUESTS[kind]
                content = {"status": "error", "ename": ename, "evalue": evalue, "traceback": []}
                return self.reply_locally(msg, channel, kind[: -len("request")] + "reply", content)
        if kind == "comm_open":
            self.open_comms[msg.content.get("comm_id", "")] = msg.content.get("target_name", "")
        elif kind == "comm_close":
            self.open_comms.pop(msg.content.get("comm_id", ""), None)
        if self.phase is Phase.STOPPED:
            return self._abort(channel, msg, "the kernel is stopping")
        if self.phase is not Phase.READY:
            self.queued.append((channel, msg))
            return []
        return self._forward(channel, msg)

    def _forward(self, channel: str, msg: WireMessage) -> list[Action]:
        self.in_flight[msg.msg_id] = Request(channel, msg)
        actions: list[Action] = []
        if self.recovery_notice and msg.msg_type == "execute_request":
            notice = {"name": "stderr", "text": self.recovery_notice + "\n"}
            actions.append(self._new(IOPUB, "stream", notice, parent=msg))
            self.recovery_notice = None
        actions.append(Send("child", channel, msg))
        return actions

    def _client_input(self, msg: WireMessage) -> list[Action]:
        if msg.msg_type != "input_reply" or self.pending_input is None or self.phase is not Phase.READY:
            return []
        self.pending_input = None
        return [Send("child", STDIN, msg)]

    def _client_shutdown(self, msg: WireMessage) -> list[Action]:
        self.shutting_down = True
        if self.phase is Phase.READY:
            return self._forward(CONTROL, msg)
        restart = bool(msg.content.get("restart", False))
        self.phase = Phase.STOPPED
        return [
            *self.reply_locally(msg, CONTROL, "shutdown_reply", {"status": "ok", "restart": restart}),
            Exit(0),
        ]

    # --- messages from the child -------------------------------------------------------
    def child_message(self, channel: str, msg: WireMessage) -> list[Action]:
        kind = msg.msg_type
        if channel == IOPUB:
            return self._child_iopub(msg)
        parent_id = msg.parent_msg_id
        if parent_id in self._internal_ids:
            return self._internal_reply(msg)
        if channel == STDIN:
            if kind == "input_request":
                self.pending_input = msg
            return [Send("client", STDIN, msg)]
        request = self.in_flight.get(parent_id)
        if request is not None:
            request.replied = True
            self._retire(request)
        if kind == "execute_reply":
            msg = self._shift_count(msg)
            if request is not None:
                self._log_cell(request.msg, msg.content)
        elif kind == "kernel_info_reply":
            msg = msg.with_content(self._advertised(msg.content))
            self.kernel_info = msg.content
        return [Send("client", channel, msg)]

    def _log_cell(self, request: WireMessage, reply: dict[str, Any]) -> None:
        content = request.content
        if reply.get("status") != "ok" or content.get("silent") or not content.get("store_history", True):
            return
        self.cell_log.append(LoggedCell(int(reply.get("execution_count") or 0), content.get("code", "")))

    def _child_iopub(self, msg: WireMessage) -> list[Action]:
        kind = msg.msg_type
        if kind == "elastic_checkpoint":
            self.last_checkpoint = dict(msg.content)
        elif kind == "elastic_restore" and self.phase is not Phase.READY:
            return self._restore_progress(msg.content)
        if kind == "iopub_welcome" or kind in AGENT_TYPES:
            return []
        parent_id = msg.parent_msg_id
        if parent_id in self._internal_ids and kind not in COMM_TYPES:
            if self._probe is not None and self._probe.msg_id == parent_id and self._probe.replied:
                return self._became_ready()
            return []
        if kind == "status":
            state = msg.content.get("execution_state")
            if state == "starting":
                return []
            request = self.in_flight.get(parent_id)
            if request is not None:
                if state == "busy":
                    request.started = True
                elif state == "idle":
                    request.idle = True
                    self._retire(request)
        elif kind in COUNTED_TYPES:
            msg = self._shift_count(msg)
        elif kind == "comm_open":
            self.open_comms[msg.content.get("comm_id", "")] = msg.content.get("target_name", "")
            self._child_comms.add(msg.content.get("comm_id", ""))
        elif kind == "comm_close":
            self.open_comms.pop(msg.content.get("comm_id", ""), None)
        return [Send("client", IOPUB, msg)]

    def _restore_progress(self, content: dict[str, Any]) -> list[Action]:
        """Show a large restore's progress in the first cell waiting for it (an updating display)."""
        total = int(content.get("total_bytes") or 0)
        waiting = next((m for _, m in self.queued if m.msg_type == "execute_request"), None)
        if waiting is None or total < PROGRESS_MIN_BYTES:
            return []
        done = int(content.get("done_bytes") or 0)
        phase = content.get("phase", "")
        text = (f"elastic-proxy: restoring the session ({phase}): {done / 2**20:,.0f} of {total / 2**20:,.0f} MiB"
                if phase != "done" else f"elastic-proxy: restored {total / 2**20:,.0f} MiB")
        first = self._progress_parent != waiting.msg_id
        self._progress_parent = waiting.msg_id
        display = {"data": {"text/plain": text}, "metadata": {},
                   "transient": {"display_id": f"elastic-restore-{self.session}"}}
        shown = self._new(IOPUB, "display_data" if first else "update_display_data", display, parent=waiting)
        # The kernel is working for this cell: without `busy`, JupyterLab's indicator says Idle
        # through the whole restore. The child's own busy and idle for the cell follow.
        return [self._status("busy", waiting), shown] if first else [shown]

    def _retire(self, request: Request) -> None:
        if request.idle and (request.replied or not _expects_reply(request.msg.msg_type)):
            self.in_flight.pop(request.msg.msg_id, None)

    def _shift_count(self, msg: WireMessage) -> WireMessage:
        count = msg.content.get("execution_count")
        if not isinstance(count, int):
            return msg
        shown = count + self.count_offset
        self.execution_count = max(self.execution_count, shown)
        if self.count_offset == 0:
            return msg
        return msg.with_content({"execution_count": shown})

    @staticmethod
    def _advertised(content: dict[str, Any]) -> dict[str, Any]:
        """The changes to a child's kernel_info: without the features a respawn would break."""
        features = [f for f in content.get("supported_features", []) if f not in STRIPPED_FEATURES]
        return {"supported_features": features, "debugger": False}

    # --- child lifecycle ---------------------------------------------------------------
    def child_started(self, language: str = "python", *, restore_on_ready: bool = False) -> list[Action]:
        """A new child process is up: probe it until its reply AND an IOPub message arrive."""
        self.phase = Phase.STARTING
        self.child_language = language
        self.restore_on_ready = restore_on_ready
        return [self.probe()]

    def probe(self) -> Send:
        """(Re)send the readiness probe; the edge calls this again when IOPub stays silent."""
        msg = new_message("kernel_info_request", {}, parent=None, session=self.session)
        self._probe = _Probe(msg.msg_id)
        self._internal_ids.add(msg.msg_id)
        return Send("child", SHELL, msg)

    def _internal_reply(self, msg: WireMessage) -> list[Action]:
        parent_id = msg.parent_msg_id
        if self._probe is not None and parent_id == self._probe.msg_id:
            self._probe.replied = True
            self.kernel_info = {**msg.content, **self._advertised(msg.content)}
            return self._answer_queued_kernel_info(self.kernel_info)
        elif parent_id == self._summary_id and msg.msg_type == "execute_reply":
            self._summary_id = None
            return self._recover(parse_agent_summary(msg.content))
        elif parent_id in self._replaying and msg.msg_type == "execute_reply":
            cell = self._replaying.pop(parent_id)
            if msg.content.get("status") != "ok":
                self._replay_failures.append(f"[{cell.execution_count}] ({msg.content.get('ename', 'error')})")
            if not self._replaying:
                return self._recovered()
        return []

    def _answer_queued_kernel_info(self, info: dict[str, Any]) -> list[Action]:
        """kernel_info requests sent before any child answered: replied to now, from the probe's reply.

        Those sent from now on are answered as they come; forwarding these after the restore would
        answer them after later ones, and their busy/idle would reach the client after
        wait_for_ready's IOPub flush (ipykernel 6's slow first execute made that the rule).
        """
        waiting = [(channel, msg) for channel, msg in self.queued if msg.msg_type == "kernel_info_request"]
        self.queued = deque(item for item in self.queued if item[1].msg_type != "kernel_info_request")
        return [action for channel, msg in waiting
                for action in self.reply_locally(msg, channel, "kernel_info_reply", info)]

    def _became_ready(self) -> list[Action]:
        """The child answers: find out what its agent restored (Python), then replay what is missing."""
        self._probe = None
        self.phase = Phase.RESTORING
        if self.child_language != "python":
            return self._recover(None)
        # The cells after the last checkpoint the agent announced: the agent says which are unsafe to re-run.
        since = int((self.last_checkpoint or {}).get("cell") or 0)
        pending = [(c.execution_count, c.code) for c in self.cell_log if c.execution_count > since]
        expression = AGENT_SUMMARY_EXPRESSION.format(count=self.execution_count, restore=self.restore_on_ready,
                                                     pending=pending)
        query = self._internal_execute("", {"elastic": expression})
        self._summary_id = query.msg.msg_id
        return [query]

    def _internal_execute(self, code: str, user_expressions: dict[str, str] | None = None) -> Send:
        content = {"code": code, "silent": True, "store_history": False, "allow_stdin": False,
                   "stop_on_error": False, "user_expressions": user_expressions or {}}
        msg = new_message("execute_request", content, parent=None, session=self.session)
        self._internal_ids.add(msg.msg_id)
        return Send("child", SHELL, msg)

    def _recover(self, summary: dict[str, Any] | None) -> list[Action]:
        """Replay the completed cells the new child lacks.

        With an agent: those after the checkpoint it restored (none if restore is off). Without
        one (another language, or a Python without elastic-proxy): every completed cell.
        """
        self._replay_by_agent = summary is not None
        if summary is None:
            replay = list(self.cell_log)
            self._child_count = 0
        else:
            self._child_count = int(summary.get("execution_count") or 0)
            restored = summary.get("restored_cell")
            if not summary.get("restore", True):
                replay = []
            else:
                after = int(restored) if restored is not None else 0
                replay = [c for c in self.cell_log if c.execution_count > after]
                unsafe = {int(k): v for k, v in (summary.get("unsafe") or {}).items()}
                since = int((self.last_checkpoint or {}).get("cell") or 0)
                for cell in replay:
                    if cell.execution_count <= since:
                        unsafe.setdefault(cell.execution_count, "its checkpoint could not be used")
                self._not_replayed = [f"[{c.execution_count}] ({unsafe[c.execution_count]})"
                                      for c in replay if c.execution_count in unsafe]
                replay = [c for c in replay if c.execution_count not in unsafe]
        self._replay_failures = []
        if not replay:
            return self._recovered()
        sends = []
        for cell in replay:
            send = self._internal_execute(cell.code)
            self._replaying[send.msg.msg_id] = cell
            sends.append(send)
        self._replayed = [c.execution_count for c in replay]
        return sends

    def _recovered(self) -> list[Action]:
        notices = []
        if self._not_replayed:
            notices.append("elastic-proxy: not re-run, so what they made is missing: "
                           + "; ".join(self._not_replayed) + ". Run them again if you want their results.")
        if self._replayed:
            cells = ", ".join(f"[{n}]" for n in self._replayed)
            what = ("Re-ran the cells completed after the checkpoint " if self._replay_by_agent else
                    "No checkpoint agent in this kernel: its state was rebuilt by re-running the completed cells ")
            notice = f"elastic-proxy: {what}{cells}."
            if self._replay_failures:
                failed = ", ".join(self._replay_failures)
                notice += f" These failed when re-run, so their effects are missing: {failed}."
            notices.insert(0, notice)
        self.recovery_notice = "\n".join(notices) or None
        self._replayed = []
        self._not_replayed = []
        return self.child_ready(self._child_count)

    def child_ready(self, child_execution_count: int = 0) -> list[Action]:
        """The child answers and its IOPub is live: close stale comms, then drain the queue.

        `child_execution_count` is the count the child itself will show for its last cell
        (0 for a fresh child, or the restored count when the agent brought it back).
        """
        self.phase = Phase.READY
        # A restored child may be ahead (a new supervisor after a restart starts at 0): never go back.
        self.count_offset = max(self.execution_count - child_execution_count, 0)
        self.execution_count = max(self.execution_count, child_execution_count)
        actions: list[Action] = []
        # A comm the client opened while no child was up is not stale: its comm_open waits in the queue for
        # this child. Closing it would make JupyterLab drop it (ipywidgets' jupyter.widget.control comm).
        # Nor is one this child opened while restoring (a widget re-created by a replayed cell).
        waiting = {m.content.get("comm_id", "") for _, m in self.queued if m.msg_type == "comm_open"}
        for comm_id in [c for c in self.open_comms if c not in waiting | self._child_comms]:
            close = new_message("comm_close", {"comm_id": comm_id, "data": {}}, parent=None,
                                session=self.session)
            actions.append(Send("client", IOPUB, close))
            del self.open_comms[comm_id]
        while self.queued and self.phase is Phase.READY:
            channel, msg = self.queued.popleft()
            actions.extend(self.client_message(channel, msg))
        return actions

    def child_died(self, cause: str, *, respawn: bool) -> list[Action]:
        """Answer everything the dead child owed, as a live kernel would have.

        `cause` says how it died (and, later, what was restored). With respawn=False the
        queued requests are aborted too, since no child will take them.
        """
        was_shutting_down = self.shutting_down
        self.phase = Phase.DEAD if respawn and not was_shutting_down else Phase.STOPPED
        self.pending_input = None
        self._probe = None
        self._summary_id = None
        self._replaying.clear()
        self._internal_ids.clear()
        self._child_comms.clear()
        actions: list[Action] = []
        crashed_stops = False
        requeue: list[tuple[str, WireMessage]] = []
        for request in list(self.in_flight.values()):
            msg = request.msg
            if request.started:
                # A cell that had already replied finished; only its idle is missing. It did not crash.
                crashed_stops |= (not request.replied and msg.msg_type == "execute_request"
                                  and msg.content.get("stop_on_error", True))
                actions.extend(self._answer_killed(request, cause))
            elif msg.msg_type == "kernel_info_request" and self.kernel_info is not None:
                info = self.kernel_info
                actions.extend(self.reply_locally(msg, request.channel, "kernel_info_reply", info))
            elif msg.msg_type.startswith("comm_"):
                continue  # the comm died with the child; the client gets comm_close after the respawn
            elif msg.msg_type == "shutdown_request":
                restart = bool(msg.content.get("restart", False))
                actions.extend(self.reply_locally(msg, request.channel, "shutdown_reply",
                                                  {"status": "ok", "restart": restart}))
            else:
                requeue.append((request.channel, msg))
        self.in_flight.clear()
        requeue.extend(self.queued)
        self.queued.clear()
        for channel, msg in requeue:
            if self.phase is Phase.STOPPED or (crashed_stops and msg.msg_type == "execute_request"):
                actions.extend(self._abort(channel, msg, cause))
            else:
                self.queued.append((channel, msg))
        if was_shutting_down:
            actions.append(Exit(0))
        return actions

    def _answer_killed(self, request: Request, cause: str) -> list[Action]:
        actions = [] if request.replied else self._failed(request.channel, request.msg, "KernelDied", cause)
        if not request.idle:
            actions.append(self._status("idle", request.msg))
        return actions

    def _interrupt_waiting_cell(self) -> list[Action]:
        """An interrupt while no child runs cells (starting, restoring, respawning) stops the first cell
        waiting for one: it ends with KeyboardInterrupt, unrun, as an interrupt at its start would end it
        in any kernel, and with stop_on_error the cells queued behind it are aborted, as after any error.
        (Dropped, the interrupt would leave that cell to run later, and a cell blocked in input() for ever.)
        """
        waiting = [item for item in self.queued if item[1].msg_type == "execute_request"]
        if not waiting:
            return []
        channel, msg = waiting[0]
        cause = "the cell was interrupted before it started, while the kernel was starting or restoring"
        aborted = waiting[1:] if msg.content.get("stop_on_error", True) else []
        dropped = {id(item[1]) for item in [waiting[0], *aborted]}
        self.queued = deque(item for item in self.queued if id(item[1]) not in dropped)
        actions = [self._status("busy", msg), *self._failed(channel, msg, "KeyboardInterrupt", cause),
                   self._status("idle", msg)]
        for channel, msg in aborted:
            actions.extend(self._abort(channel, msg, cause))
        return actions

    def _failed(self, channel: str, msg: WireMessage, ename: str, cause: str) -> list[Action]:
        """The error a request ends with when the supervisor ends it: an error output (for a cell), the reply."""
        error = {"ename": ename, "evalue": cause, "traceback": [_red(f"{ename}: {cause}")]}
        actions: list[Action] = []
        content = {"status": "error", **error}
        if msg.msg_type == "execute_request":
            actions.append(self._new(IOPUB, "error", error, parent=msg))
            content["execution_count"] = self.execution_count
        reply_type = msg.msg_type.rsplit("_", 1)[0] + "_reply"
        actions.append(self._new(channel, reply_type, content, parent=msg, idents=msg.idents,
                                 metadata={"status": "error"}))
        return actions

    def _abort(self, channel: str, msg: WireMessage, cause: str) -> list[Action]:
        """ipykernel's abort: busy, a reply with status aborted, idle (clients wait for the idle)."""
        if not _expects_reply(msg.msg_type):
            return [self._status("busy", msg), self._status("idle", msg)]
        reply_type = msg.msg_type.rsplit("_", 1)[0] + "_reply"
        content: dict[str, Any] = {"status": "aborted"}
        if msg.msg_type == "kernel_info_request":
            # Clients read these fields from any kernel_info_reply (wait_for_ready does): say why instead.
            content = {"status": "error", "protocol_version": PROTOCOL_VERSION, "implementation": "elastic-proxy",
                       "implementation_version": "", "language_info": {"name": self.child_language},
                       "banner": f"elastic-proxy: no kernel: {cause}", "ename": "KernelDied", "evalue": cause}
        return [
            self._status("busy", msg),
            self._new(channel, reply_type, content, parent=msg, idents=msg.idents,
                      metadata={"status": content["status"]}),
            self._status("idle", msg),
        ]

    # --- messages the supervisor writes itself -----------------------------------------
    def reply_locally(self, request: WireMessage, channel: str, reply_type: str,
                      content: dict[str, Any]) -> list[Action]:
        """busy, reply, idle: what a kernel sends for a request, answered by the supervisor."""
        return [
            self._status("busy", request),
            self._new(channel, reply_type, content, parent=request, idents=request.idents),
            self._status("idle", request),
        ]

    def announce(self, msg_type: str, content: dict[str, Any], parent: WireMessage | None = None) -> Send:
        """An IOPub message from the supervisor (welcome, progress, notices)."""
        return self._new(IOPUB, msg_type, content, parent=parent)

    def _status(self, state: str, parent: WireMessage) -> Send:
        return self._new(IOPUB, "status", {"execution_state": state}, parent=parent)

    def _new(self, channel: str, msg_type: str, content: dict[str, Any], *, parent: WireMessage | None,
             idents: list[bytes] | None = None, metadata: dict[str, Any] | None = None) -> Send:
        msg = new_message(msg_type, content, parent=parent, session=self.session,
                          idents=idents if channel != IOPUB else [msg_type.encode()],
                          metadata=metadata)
        return Send("client", channel, msg)


def _expects_reply(msg_type: str) -> bool:
    return msg_type.endswith("_request")


def _red(text: str) -> str:
    return f"\x1b[0;31m{text}\x1b[0m"


@dataclass
class StormGuard:
    """K child deaths within T seconds means respawning only burns CPU: stop and say why."""

    limit: int = 5
    window: float = 60.0
    _deaths: deque = field(default_factory=deque)

    def record_death(self, now: float) -> bool:
        """Record a death at `now`; True while respawning is still allowed."""
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.window:
            self._deaths.popleft()
        return len(self._deaths) < self.limit
