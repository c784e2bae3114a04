"""The protocol state machine, fed with message tuples: no sockets, no processes."""

from __future__ import annotations

import json

import pytest

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
from elastic_proxy.proxy.wire import WireMessage, new_message

CLIENT = [b"client-a"]


def request(msg_type: str, content: dict | None = None, idents=CLIENT) -> WireMessage:
    return new_message(msg_type, content or {}, parent=None, session="client", idents=list(idents))


def from_child(msg_type: str, content: dict, parent: WireMessage, idents=CLIENT) -> WireMessage:
    return new_message(msg_type, content, parent=parent, session="child", idents=list(idents))


def agent_summary(query: Send, *, restored_cell=None, execution_count=0, restore=True) -> WireMessage:
    """The child's reply to the supervisor's summary query, as an agent would give it."""
    summary = {"restored_cell": restored_cell, "execution_count": execution_count, "restore": restore}
    content = {"status": "ok", "execution_count": execution_count,
               "user_expressions": {"elastic": {"status": "ok", "data": {"text/plain": repr(summary)},
                                                "metadata": {}}}}
    return from_child("execute_reply", content, query.msg, idents=[])


def start_child(state: ProtocolState, language: str = "python") -> list:
    """Probe a new child until it answers; return what the state sends next (the summary query)."""
    (probe,) = state.child_started(language)
    info = {"status": "ok", "protocol_version": "5.4", "implementation": "ipython",
            "language_info": {"name": language}, "banner": "",
            "supported_features": ["kernel subshells", "debugger", "xpub"], "debugger": True}
    assert state.child_message(SHELL, from_child("kernel_info_reply", info, probe.msg, idents=[])) == []
    return state.child_message(IOPUB, from_child("status", {"execution_state": "idle"}, probe.msg, []))


def ready_state(**kw) -> ProtocolState:
    """A state whose child answered the probe and whose (agent-less) restore finished."""
    state = ProtocolState(**kw)
    (query,) = start_child(state)
    assert query.msg.content["user_expressions"] and state.phase is Phase.RESTORING
    assert state.child_message(SHELL, agent_summary(query)) == []
    assert state.phase is Phase.READY
    return state


def sends(actions, to=None, channel=None):
    return [a for a in actions if isinstance(a, Send) and (to is None or a.to == to)
            and (channel is None or a.channel == channel)]


def types(actions):
    return [(a.channel, a.msg.msg_type) for a in sends(actions)]


def parent_of(send: Send) -> str:
    return json.loads(send.msg.frames[1]).get("msg_id", "")


def run_started(state: ProtocolState, code: str = "1", **content) -> WireMessage:
    req = request("execute_request", {"code": code, **content})
    (fwd,) = state.client_message(SHELL, req)
    assert fwd.to == "child" and fwd.msg is req
    state.child_message(IOPUB, from_child("status", {"execution_state": "busy"}, req, [b"status"]))
    return req


def test_probe_iopub_and_reply_traffic_never_reaches_the_client():
    state = ProtocolState()
    (probe,) = state.child_started()
    assert probe.to == "child" and probe.msg.msg_type == "kernel_info_request"
    busy = from_child("status", {"execution_state": "busy"}, probe.msg, [b"status"])
    assert state.child_message(IOPUB, busy) == []  # reply not seen yet: not ready
    assert state.phase is Phase.STARTING


def test_requests_wait_for_readiness_then_drain_in_order():
    state = ProtocolState()
    first, second = request("execute_request", {"code": "a"}), request("complete_request", {"code": "a"})
    (probe,) = state.child_started()
    assert state.client_message(SHELL, first) == []
    state.child_message(SHELL, from_child("kernel_info_reply", {"status": "ok"}, probe.msg, []))
    (query,) = state.child_message(IOPUB, from_child("status", {"execution_state": "idle"}, probe.msg, []))
    assert state.client_message(SHELL, second) == []  # still restoring
    drained = state.child_message(SHELL, agent_summary(query))
    assert [a.msg for a in drained] == [first, second]
    assert all(a.to == "child" for a in drained)


def test_kernel_info_sent_before_the_first_child_answers_is_answered_first():
    """wait_for_ready sends kernel_info every second while the kernel starts: the early ones must not
    be answered after a later one (the client would then see their busy/idle after its IOPub flush)."""
    state = ProtocolState()
    early, cell = request("kernel_info_request"), request("execute_request", {"code": "a"})
    (probe,) = state.child_started()
    assert state.client_message(SHELL, early) == [] and state.client_message(SHELL, cell) == []
    info = {"status": "ok", "supported_features": ["kernel subshells", "xpub"]}
    answered = state.child_message(SHELL, from_child("kernel_info_reply", info, probe.msg, []))
    assert types(answered) == [(IOPUB, "status"), (SHELL, "kernel_info_reply"), (IOPUB, "status")]
    assert {parent_of(a) for a in answered} == {early.msg_id}
    assert answered[1].msg.content["supported_features"] == ["xpub"]
    (query,) = state.child_message(IOPUB, from_child("status", {"execution_state": "idle"}, probe.msg, []))
    later = request("kernel_info_request")
    assert {parent_of(a) for a in state.client_message(SHELL, later)} == {later.msg_id}
    assert [a.msg for a in state.child_message(SHELL, agent_summary(query))] == [cell]


def test_late_iopub_of_the_supervisors_own_requests_never_reaches_the_client():
    """A child sends a request's idle after its reply: the summary query's and the last replayed
    cell's must be dropped like the rest of their traffic, though the restore is over by then."""
    state = ready_state()
    complete(state, "a = 1", 1)
    state.child_died("killed", respawn=True)
    (query,) = start_child(state)
    (replay,) = state.child_message(SHELL, agent_summary(query, restored_cell=0))
    assert state.child_message(SHELL, from_child("execute_reply", {"status": "ok"}, replay.msg, [])) == []
    assert state.phase is Phase.READY
    for internal in (query, replay):
        idle = from_child("status", {"execution_state": "idle"}, internal.msg, [b"status"])
        assert state.child_message(IOPUB, idle) == []


def test_kernel_info_strips_subshells_and_debugger_and_is_answered_while_child_is_down():
    state = ready_state()
    assert "kernel subshells" not in state.kernel_info["supported_features"]
    assert state.kernel_info["debugger"] is False
    state.child_died("gone", respawn=True)
    req = request("kernel_info_request")
    actions = state.client_message(CONTROL, req)
    assert types(actions) == [(IOPUB, "status"), (CONTROL, "kernel_info_reply"), (IOPUB, "status")]
    reply = actions[1]
    assert reply.msg.idents == CLIENT and parent_of(reply) == req.msg_id
    assert reply.msg.content["supported_features"] == ["xpub"]
    assert [a.msg.content["execution_state"] for a in (actions[0], actions[2])] == ["busy", "idle"]


def test_forwarded_kernel_info_reply_is_rewritten_too():
    state = ready_state()
    req = request("kernel_info_request")
    state.client_message(SHELL, req)
    reply = from_child("kernel_info_reply", {"supported_features": ["kernel subshells"], "debugger": True}, req)
    (out,) = state.child_message(SHELL, reply)
    assert out.msg.content == {"supported_features": [], "debugger": False}


def test_killed_cell_gets_one_error_one_error_reply_then_idle():
    state = ready_state()
    req = run_started(state)
    state.child_message(IOPUB, from_child("execute_input", {"code": "1", "execution_count": 7}, req))
    actions = state.child_died("killed by SIGKILL", respawn=True)
    assert types(actions) == [(IOPUB, "error"), (SHELL, "execute_reply"), (IOPUB, "status")]
    error, reply, idle = actions
    assert error.msg.content["ename"] == "KernelDied" and "SIGKILL" in error.msg.content["evalue"]
    assert reply.msg.idents == CLIENT and reply.msg.content["status"] == "error"
    assert reply.msg.content["execution_count"] == 7
    assert idle.msg.content["execution_state"] == "idle"
    assert {parent_of(a) for a in actions} == {req.msg_id}
    assert state.phase is Phase.DEAD and state.in_flight == {}


def test_idle_kill_sends_nothing_and_keeps_waiting_requests_for_the_next_child():
    state = ready_state()
    assert state.child_died("killed", respawn=True) == []
    req = request("execute_request", {"code": "x"})
    assert state.client_message(SHELL, req) == []
    (query,) = start_child(state)
    drained = state.child_message(SHELL, agent_summary(query))
    assert [a.msg for a in drained] == [req]


def test_requests_behind_a_killed_cell_are_aborted_with_stop_on_error():
    state = ready_state()
    run_started(state)
    waiting = request("execute_request", {"code": "2"})
    other = request("complete_request", {"code": "x", "cursor_pos": 1})
    state.client_message(SHELL, waiting)
    state.client_message(SHELL, other)
    actions = state.child_died("killed", respawn=True)
    aborted = [a for a in sends(actions, channel=SHELL) if a.msg.content.get("status") == "aborted"]
    assert [parent_of(a) for a in aborted] == [waiting.msg_id]
    assert [m for _, m in state.queued] == [other]  # not an execution: re-sent to the next child


def test_a_cell_that_replied_before_the_death_is_no_crash_and_aborts_nothing():
    """Its idle was still on the way when the child died: the client gets that idle, no error, and
    the cell sent after it runs on the next child (it was aborted, a race seen in CI)."""
    state = ready_state()
    done = run_started(state)
    reply = from_child("execute_reply", {"status": "ok", "execution_count": 1}, done)
    assert sends(state.child_message(SHELL, reply), channel=SHELL)
    waiting = request("execute_request", {"code": "print(kept)"})
    state.client_message(SHELL, waiting)
    actions = state.child_died("killed", respawn=True)
    assert [(a.msg.msg_type, a.msg.content) for a in sends(actions)] == [("status", {"execution_state": "idle"})]
    assert parent_of(sends(actions)[0]) == done.msg_id
    assert [m for _, m in state.queued] == [waiting]


def test_requests_behind_a_killed_cell_survive_without_stop_on_error():
    state = ready_state()
    run_started(state, stop_on_error=False)
    waiting = request("execute_request", {"code": "2"})
    state.client_message(SHELL, waiting)
    state.child_died("killed", respawn=True)
    assert [m for _, m in state.queued] == [waiting]


def test_no_respawn_aborts_everything_and_stops():
    state = ready_state()
    state.child_died("storm", respawn=False)
    req = request("execute_request", {"code": "2"})
    actions = state.client_message(SHELL, req)
    assert types(actions) == [(IOPUB, "status"), (SHELL, "execute_reply"), (IOPUB, "status")]
    assert actions[1].msg.content == {"status": "aborted"}


def test_execution_count_continues_on_a_new_child():
    state = ready_state()
    req = run_started(state)
    state.child_message(IOPUB, from_child("execute_input", {"code": "1", "execution_count": 3}, req))
    state.child_died("killed", respawn=True)
    (query,) = start_child(state)
    state.child_message(SHELL, agent_summary(query, restore=False))
    req2 = run_started(state)
    (shown,) = state.child_message(IOPUB, from_child("execute_input", {"code": "1", "execution_count": 1}, req2))
    assert shown.msg.content["execution_count"] == 4
    (reply,) = state.child_message(SHELL, from_child("execute_reply", {"status": "ok", "execution_count": 1}, req2))
    assert reply.msg.content["execution_count"] == 4


def test_restored_child_count_is_not_shifted_twice():
    state = ready_state()
    state.execution_count = 10
    state.child_died("killed", respawn=True)
    state.child_started()
    state.child_ready(child_execution_count=10)
    req = run_started(state)
    (shown,) = state.child_message(IOPUB, from_child("execute_input", {"execution_count": 11}, req))
    assert shown.msg.content["execution_count"] == 11


def test_comms_open_before_a_death_are_closed_after_the_respawn():
    state = ready_state()
    req = run_started(state)
    state.child_message(IOPUB, from_child("comm_open", {"comm_id": "w1", "target_name": "jupyter.widget"}, req))
    state.client_message(SHELL, request("comm_open", {"comm_id": "c2", "target_name": "t"}))
    assert set(state.open_comms) == {"w1", "c2"}
    state.child_died("killed", respawn=True)
    actions = state.child_ready()
    closes = [a.msg.content["comm_id"] for a in sends(actions, "client", IOPUB) if a.msg.msg_type == "comm_close"]
    assert sorted(closes) == ["c2", "w1"] and state.open_comms == {}


def test_stdin_round_trip_and_late_input_reply_after_death_is_dropped():
    state = ready_state()
    req = run_started(state, code="input()")
    ask = from_child("input_request", {"prompt": "?", "password": False}, req)
    (out,) = state.child_message(STDIN, ask)
    assert out.to == "client" and out.channel == STDIN and out.msg.idents == CLIENT
    answer = request("input_reply", {"value": "x"})
    assert [a.to for a in state.client_message(STDIN, answer)] == ["child"]
    assert state.client_message(STDIN, request("input_reply", {"value": "again"})) == []
    state.child_message(STDIN, from_child("input_request", {"prompt": "?"}, req))
    state.child_died("killed", respawn=True)
    assert state.client_message(STDIN, request("input_reply", {"value": "late"})) == []


def test_interrupt_by_signal_is_answered_by_the_supervisor():
    state = ready_state(child_interrupt_mode="signal")
    actions = state.client_message(CONTROL, request("interrupt_request"))
    assert isinstance(actions[0], Interrupt)
    assert types(actions[1:]) == [(IOPUB, "status"), (CONTROL, "interrupt_reply"), (IOPUB, "status")]


def test_interrupt_by_message_is_forwarded():
    state = ready_state(child_interrupt_mode="message")
    req = request("interrupt_request")
    (fwd,) = state.client_message(CONTROL, req)
    assert fwd.to == "child" and fwd.channel == CONTROL and fwd.msg is req


def test_usage_request_is_left_to_the_edge():
    state = ready_state()
    req = request("usage_request")
    assert state.client_message(CONTROL, req) == [UsageRequested(req)]


@pytest.mark.parametrize("kind, ename", [("debug_request", "DebuggerUnavailable"),
                                          ("create_subshell_request", "SubshellsUnavailable"),
                                          ("list_subshell_request", "SubshellsUnavailable")])
def test_requests_of_unoffered_features_get_a_clear_error(kind, ename):
    state = ready_state()
    actions = state.client_message(CONTROL, request(kind, {}))
    (reply,) = sends(actions, channel=CONTROL)
    assert reply.to == "client"
    assert reply.msg.msg_type == kind.replace("_request", "_reply")
    assert reply.msg.content["status"] == "error" and reply.msg.content["ename"] == ename


def test_shutdown_is_forwarded_and_the_childs_exit_ends_the_supervisor():
    state = ready_state()
    req = request("shutdown_request", {"restart": False})
    (fwd,) = state.client_message(CONTROL, req)
    assert fwd.to == "child"
    state.child_message(CONTROL, from_child("shutdown_reply", {"status": "ok", "restart": False}, req))
    actions = state.child_died("exited with status 0", respawn=True)
    assert isinstance(actions[-1], Exit) and actions[-1].code == 0
    assert not [a for a in sends(actions) if a.msg.msg_type == "error"]
    assert state.phase is Phase.STOPPED


def test_shutdown_while_the_child_is_down_is_answered_locally():
    state = ready_state()
    state.child_died("killed", respawn=True)
    actions = state.client_message(CONTROL, request("shutdown_request", {"restart": True}))
    assert types(actions) == [(IOPUB, "status"), (CONTROL, "shutdown_reply"), (IOPUB, "status")]
    assert actions[1].msg.content == {"status": "ok", "restart": True}
    assert actions[-1] == Exit(0)


def test_child_welcome_and_starting_status_and_agent_messages_are_dropped():
    state = ready_state()
    req = run_started(state)
    for kind, content in [("iopub_welcome", {"subscription": ""}), ("status", {"execution_state": "starting"}),
                          ("elastic_checkpoint", {"generation": 1})]:
        assert state.child_message(IOPUB, from_child(kind, content, req)) == []


def test_outputs_pass_through_untouched():
    state = ready_state()
    req = run_started(state)
    out = from_child("stream", {"name": "stdout", "text": "hi"}, req, [b"stream"])
    (fwd,) = state.child_message(IOPUB, out)
    assert fwd.msg is out


@pytest.mark.parametrize("deaths, allowed", [(4, True), (5, False)])
def test_storm_guard_counts_deaths_in_the_window(deaths, allowed):
    guard = StormGuard(limit=5, window=60.0)
    results = [guard.record_death(float(t)) for t in range(deaths)]
    assert results[-1] is allowed


def test_storm_guard_forgets_old_deaths():
    guard = StormGuard(limit=2, window=10.0)
    assert guard.record_death(0.0)
    assert guard.record_death(20.0)  # the first death is out of the window
    assert not guard.record_death(21.0)


def test_interrupt_while_the_child_is_down_is_answered_without_a_signal():
    state = ready_state(child_interrupt_mode="message")
    state.child_died("killed", respawn=True)
    actions = state.client_message(CONTROL, request("interrupt_request"))
    assert not [a for a in actions if isinstance(a, Interrupt)]
    assert types(actions) == [(IOPUB, "status"), (CONTROL, "interrupt_reply"), (IOPUB, "status")]


@pytest.mark.parametrize("stop_on_error", [True, False])
def test_an_interrupt_while_the_child_is_down_stops_the_first_waiting_cell(stop_on_error):
    state = ready_state(child_interrupt_mode="signal")
    state.child_died("killed", respawn=True)
    first = request("execute_request", {"code": "input()", "stop_on_error": stop_on_error})
    second = request("execute_request", {"code": "2"})
    completion = request("complete_request", {"code": "pri", "cursor_pos": 3})
    for msg in (first, completion, second):
        assert state.client_message(SHELL, msg) == []
    actions = state.client_message(CONTROL, request("interrupt_request"))
    assert not [a for a in actions if isinstance(a, Interrupt)]
    ended = [a for a in sends(actions) if parent_of(a) == first.msg_id]
    assert types(ended) == [(IOPUB, "status"), (IOPUB, "error"), (SHELL, "execute_reply"), (IOPUB, "status")]
    reply = ended[2].msg.content
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt" and ended[2].msg.idents == CLIENT
    aborted = [a.msg.content["status"] for a in sends(actions, channel=SHELL) if parent_of(a) == second.msg_id]
    assert aborted == (["aborted"] if stop_on_error else [])
    assert [m for _, m in state.queued] == ([completion] if stop_on_error else [completion, second])


def complete(state: ProtocolState, code: str, count: int) -> WireMessage:
    req = run_started(state, code)
    state.child_message(SHELL, from_child("execute_reply", {"status": "ok", "execution_count": count}, req))
    state.child_message(IOPUB, from_child("status", {"execution_state": "idle"}, req, [b"status"]))
    return req


def test_completed_cells_after_the_restored_checkpoint_are_replayed_silently():
    state = ready_state()
    for n, code in enumerate(["a = 1", "b = 2", "c = 3"], start=1):
        complete(state, code, n)
    state.child_died("killed", respawn=True)
    (query,) = start_child(state)
    replays = state.child_message(SHELL, agent_summary(query, restored_cell=1, execution_count=3))
    assert [r.msg.content["code"] for r in replays] == ["b = 2", "c = 3"]
    assert all(r.to == "child" and r.msg.content["silent"] for r in replays)
    assert state.phase is Phase.RESTORING
    waiting = request("execute_request", {"code": "print(c)"})
    assert state.client_message(SHELL, waiting) == []
    # replay outputs never reach the client
    out = from_child("stream", {"name": "stdout", "text": "x"}, replays[0].msg, [])
    assert state.child_message(IOPUB, out) == []
    assert state.child_message(SHELL, from_child("execute_reply", {"status": "ok"}, replays[0].msg, [])) == []
    bad = {"status": "error", "ename": "NameError"}
    drained = state.child_message(SHELL, from_child("execute_reply", bad, replays[1].msg, []))
    notice, forwarded = drained
    assert forwarded.msg is waiting and state.phase is Phase.READY
    assert notice.channel == IOPUB and parent_of(notice) == waiting.msg_id
    assert "[2], [3]" in notice.msg.content["text"] and "[3] (NameError)" in notice.msg.content["text"]


def test_a_kernel_without_agent_gets_every_completed_cell_replayed():
    state = ProtocolState()
    start_child(state, language="bash")  # no agent query for other languages: straight to replay
    assert state.phase is Phase.READY
    complete(state, "x=1", 1)
    complete(state, "echo $x", 2)
    run_started(state, "false")  # a cell that failed or died is never replayed
    state.child_died("killed", respawn=True)
    replays = start_child(state, language="bash")
    assert [r.msg.content["code"] for r in replays] == ["x=1", "echo $x"]


def test_a_python_child_without_the_agent_falls_back_to_replay():
    state = ready_state()
    complete(state, "x = 1", 1)
    state.child_died("killed", respawn=True)
    (query,) = start_child(state)
    no_agent = {"status": "ok", "user_expressions": {"elastic": {"status": "error", "ename": "ModuleNotFoundError"}}}
    replays = state.child_message(SHELL, from_child("execute_reply", no_agent, query.msg, []))
    assert [r.msg.content["code"] for r in replays] == ["x = 1"]


def test_nothing_is_replayed_when_restore_is_off():
    state = ready_state()
    complete(state, "x = 1", 1)
    state.child_died("killed", respawn=True)
    (query,) = start_child(state)
    assert state.child_message(SHELL, agent_summary(query, restore=False)) == []
    assert state.phase is Phase.READY


def test_checkpoint_messages_are_remembered_not_forwarded():
    state = ready_state()
    req = run_started(state)
    content = {"generation": 4, "cell": 7, "bytes": 1024, "seconds": 0.1}
    assert state.child_message(IOPUB, from_child("elastic_checkpoint", content, req)) == []
    assert state.last_checkpoint == content


def test_a_large_restore_shows_progress_in_the_waiting_cell():
    state = ready_state()
    state.child_died("killed", respawn=True)
    state.child_started()
    waiting = request("execute_request", {"code": "a.sum()"})
    state.client_message(SHELL, waiting)
    mib = 2**20
    steps = [("load", 100 * mib, 800 * mib), ("load", 700 * mib, 800 * mib), ("done", 800 * mib, 800 * mib)]
    shown = []
    for phase, done, total in steps:
        content = {"phase": phase, "done_bytes": done, "total_bytes": total, "report": None}
        shown += state.child_message(IOPUB, new_message("elastic_restore", content, parent=None, session="c"))
    assert [a.msg.msg_type for a in shown] == ["status", "display_data", "update_display_data", "update_display_data"]
    assert shown[0].msg.content == {"execution_state": "busy"}, "the indicator must not say Idle while restoring"
    assert {parent_of(a) for a in shown} == {waiting.msg_id}
    displays = shown[1:]
    assert len({a.msg.content["transient"]["display_id"] for a in displays}) == 1
    assert "100 of 800 MiB" in displays[0].msg.content["data"]["text/plain"]


def test_a_small_restore_shows_no_progress():
    state = ready_state()
    state.child_died("killed", respawn=True)
    state.child_started()
    state.client_message(SHELL, request("execute_request", {"code": "x"}))
    content = {"phase": "load", "done_bytes": 1, "total_bytes": 2**20, "report": None}
    assert state.child_message(IOPUB, new_message("elastic_restore", content, parent=None, session="c")) == []


def test_connect_request_names_the_clients_ports_not_the_childs():
    state = ready_state(client_ports={"shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003,
                                      "hb_port": 5004, "control_port": 5005})
    actions = state.client_message(SHELL, request("connect_request"))
    reply = sends(actions, channel=SHELL)[0]
    assert reply.msg.msg_type == "connect_reply"
    assert reply.msg.content == {"status": "ok", "shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003,
                                 "hb_port": 5004, "control_port": 5005}


def test_cells_the_agent_calls_unsafe_are_not_replayed_and_the_user_is_told():
    state = ready_state()
    for n, code in enumerate(["x = 1", "a = np.random.rand(3)", "f = open('out.txt', 'w')", "y = x + 1"], start=1):
        complete(state, code, n)
    state.last_checkpoint = {"generation": 1, "cell": 1}
    state.child_died("killed", respawn=True)
    (query,) = start_child(state)
    expression = query.msg.content["user_expressions"]["elastic"]
    assert "pending=[(2, 'a = np.random.rand(3)'), (3, \"f = open('out.txt', 'w')\"), (4, 'y = x + 1')]" in expression
    summary = {"restored_cell": 1, "execution_count": 4, "restore": True,
               "unsafe": {2: "it is nondeterministic", 3: "it opens a file for writing"}}
    content = {"status": "ok", "user_expressions": {"elastic": {"status": "ok",
                                                                "data": {"text/plain": repr(summary)}}}}
    replays = state.child_message(SHELL, from_child("execute_reply", content, query.msg, []))
    assert [r.msg.content["code"] for r in replays] == ["y = x + 1"]
    waiting = request("execute_request", {"code": "y"})
    state.client_message(SHELL, waiting)
    notice, _ = state.child_message(SHELL, from_child("execute_reply", {"status": "ok"}, replays[0].msg, []))
    text = notice.msg.content["text"]
    assert "[4]" in text and "[2] (it is nondeterministic)" in text and "[3] (it opens a file for writing)" in text


def test_kernel_info_aborted_when_no_child_could_start_still_has_the_fields_clients_read():
    state = ProtocolState()
    state.child_started()
    req = request("kernel_info_request")
    state.client_message(SHELL, req)
    actions = state.child_died("The kernel child could not be started: boom", respawn=False)
    reply = sends(actions, channel=SHELL)[0]
    assert reply.msg.content["protocol_version"] and "boom" in reply.msg.content["banner"]
