"""Which comms are stale when a new child becomes ready: only the dead child's. Found by the JupyterLab browser suite
(tests/browser): ipywidgets' control comm, and widgets re-created by the restore."""

from __future__ import annotations

from elastic_proxy.proxy.state import IOPUB, SHELL, ProtocolState
from tests.unit.proxy.test_state import agent_summary, from_child, ready_state, request, run_started, sends, start_child


def closed_comms(actions: list) -> list[str]:
    return [a.msg.content["comm_id"] for a in sends(actions, "client", IOPUB) if a.msg.msg_type == "comm_close"]


def test_a_comm_opened_while_the_child_starts_is_forwarded_not_closed():
    """JupyterLab opens ipywidgets' jupyter.widget.control comm as soon as the kernel connects."""
    state = ProtocolState()
    state.child_started()
    state.client_message(SHELL, request("comm_open", {"comm_id": "ctl", "target_name": "jupyter.widget.control"}))
    actions = state.child_ready()
    assert closed_comms(actions) == [] and state.open_comms == {"ctl": "jupyter.widget.control"}


def test_after_a_death_only_the_dead_childs_comms_are_closed():
    state = ready_state()
    req = run_started(state)
    state.child_message(IOPUB, from_child("comm_open", {"comm_id": "old", "target_name": "jupyter.widget"}, req))
    state.child_died("killed", respawn=True)
    state.client_message(SHELL, request("comm_open", {"comm_id": "new", "target_name": "jupyter.widget.control"}))
    actions = state.child_ready()
    assert closed_comms(actions) == ["old"]
    forwarded = [a.msg.content["comm_id"] for a in sends(actions, "child", SHELL) if a.msg.msg_type == "comm_open"]
    assert forwarded == ["new"] and set(state.open_comms) == {"new"}


def test_a_widget_the_restore_re_creates_reaches_the_client_and_stays_open():
    """The agent recomputes a widget while answering the supervisor's summary query (an internal request):
    its comm_open must reach the client, or displaying the widget later fails with "model not found"."""
    state = ready_state()
    req = run_started(state)
    state.child_message(IOPUB, from_child("comm_open", {"comm_id": "old", "target_name": "jupyter.widget"}, req))
    state.child_died("killed", respawn=True)
    (query,) = start_child(state)
    reopened = from_child("comm_open", {"comm_id": "new", "target_name": "jupyter.widget"}, query.msg, idents=[])
    update = from_child("comm_msg", {"comm_id": "new", "data": {}}, query.msg, idents=[])
    output = from_child("stream", {"name": "stdout", "text": "replayed"}, query.msg, idents=[])
    shown = [a.msg.msg_type for m in (reopened, update, output) for a in state.child_message(IOPUB, m)]
    assert shown == ["comm_open", "comm_msg"]
    actions = state.child_message(SHELL, agent_summary(query))
    assert closed_comms(actions) == ["old"] and set(state.open_comms) == {"new"}
