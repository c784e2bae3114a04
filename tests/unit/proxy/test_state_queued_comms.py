"""Comms the client opens while no child is up belong to the next child: found by the JupyterLab browser suite."""

from __future__ import annotations

from elastic_proxy.proxy.state import IOPUB, SHELL, ProtocolState
from tests.unit.proxy.test_state import from_child, ready_state, request, run_started, sends


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
