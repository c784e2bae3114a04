"""The inner agent, an IPython extension: `%load_ext elastic_proxy.inner_agent`.

Records every cell, checkpoints the namespace in the background after every cell that changed
it, and restores a session (ELASTIC_PROXY_RESTORE=auto restores before the first cell). See
docs/internals.md for the contract with the supervisor and the store. Importing this package
is cheap: the parts load with the extension.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["get_agent", "load_ipython_extension", "unload_ipython_extension"]

_agents: dict[int, Any] = {}


def get_agent(shell: Any) -> Any:
    """The `agent.Agent` loaded in this shell, or None (the API tests and the supervisor's driver use)."""
    return _agents.get(id(shell))


def load_ipython_extension(ip: Any) -> None:
    if id(ip) in _agents:
        return
    from ..store import open_store
    from .agent import Agent, session_name
    from .magics import ElasticMagics

    store = open_store(session_name(), os.environ.get("ELASTIC_PROXY_STORE") or None)
    agent = Agent(ip, store)
    _agents[id(ip)] = agent
    ip.register_magics(ElasticMagics(ip, agent))
    if os.environ.get("ELASTIC_PROXY_RESTORE", "off").lower() == "auto":
        agent.pending_report = agent.restore_or_report()
    elif "ELASTIC_PROXY_RESTORE_SKIPPED" in os.environ:
        agent.pending_report = agent.skipped_notice(os.environ["ELASTIC_PROXY_RESTORE_SKIPPED"])
    agent.start()


def unload_ipython_extension(ip: Any) -> None:
    agent = _agents.pop(id(ip), None)
    if agent is not None:
        agent.stop()
