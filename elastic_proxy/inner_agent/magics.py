"""`%elastic status | checkpoints | restore N | restore [N] --skip NAME ... | reset | sync`: text in a
terminal, HTML in JupyterLab."""

from __future__ import annotations

import datetime
import html
import shlex
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

USAGE = """usage: %elastic [status | checkpoints | restore N | restore [N] --skip NAME [NAME ...] | reset | sync]
  status                     the last checkpoint, what is being written, what cannot be stored
  checkpoints                this session's generations
  restore N                  time travel: the state after cell N
  restore --skip NAME ...    restore the newest checkpoint (after a skipped restore: the one listed)
                             without the named variables; they and what needs them are reported lost
  restore N --skip NAME ...  the state after cell N, without the named variables
  reset                      delete this session's checkpoints and clear the namespace
  sync                       wait until everything is checkpointed"""


def _table(title: str, rows: list[tuple[str, str]]) -> dict[str, str]:
    text = [title] + [f"  {key}: {value}" for key, value in rows]
    cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    return {"text/plain": "\n".join(text), "text/html": f"<b>{html.escape(title)}</b><table>{cells}</table>"}


def status_bundle(agent: Any) -> dict[str, str]:
    st = agent.checkpointer.status()
    rows = [("session", str(agent.store.session)), ("store", str(agent.store.root))]
    if st["last_generation"] is None:
        rows.append(("last checkpoint", "none yet"))
    else:
        rows.append((
            "last checkpoint",
            f"generation {st['last_generation']} after cell [{st['last_cell']}], "
            f"{st['last_bytes']} bytes written in {st['last_seconds']:.3f} s",
        ))
    flight = st["in_flight"]
    if flight is not None:
        how = "forked snapshot" if flight["forked"] else "inline"
        rows.append(("writing", f"cell [{flight['cell']}] ({how}, {len(flight['groups'])} groups, "
                                f"{flight['seconds']:.1f} s so far)"))
    rows.append(("pending", ", ".join(st["pending_names"]) or "nothing"))
    if st["unserializable"]:
        rows.append(("recompute-only", ", ".join(st["unserializable"])))
    rows.append(("last error", st["last_error"] or "none"))
    rows.append(("failed writes", str(st["failures"])))
    return _table("elastic checkpoint status", rows)


def checkpoints_bundle(agent: Any) -> dict[str, str]:
    rows = []
    for manifest in agent.store.generations():
        if manifest.valid:
            created = manifest.created
            when = datetime.datetime.fromtimestamp(created).isoformat(" ", "seconds") if created else "?"
            names = len(manifest.get("variables", {}))
            rows.append((f"generation {manifest.generation}",
                         f"after cell [{manifest.get('execution_count', '?')}], {names} variables, {when}"))
        else:
            rows.append((f"generation {manifest.generation}", f"INVALID: {manifest.problem}"))
    return _table(f"elastic checkpoints of {agent.store.session}", rows or [("", "none")])


def parse_skip(args: list[str]) -> tuple[int | None, list[str]] | None:
    """`[N] --skip NAME [NAME ...]` -> (N or None, names); None when malformed."""
    where = args.index("--skip")
    before, names = args[:where], args[where + 1 :]
    if not names or "--skip" in names or len(before) > 1 or (before and not before[0].isdigit()):
        return None
    return (int(before[0]) if before else None), names


@magics_class
class ElasticMagics(Magics):
    def __init__(self, shell: Any, agent: Any) -> None:
        super().__init__(shell)
        self.agent = agent

    @line_magic
    def elastic(self, line: str) -> None:
        """Checkpoint status, the list of checkpoints, time travel, restore without some variables, reset.

        %elastic [status | checkpoints | restore N | restore [N] --skip NAME [NAME ...] | reset | sync]
        """
        args = shlex.split(line)
        command = args[0] if args else "status"
        agent = self.agent
        if command == "status":
            agent.checkpointer.poll()
            agent.display(status_bundle(agent))
        elif command == "checkpoints":
            agent.display(checkpoints_bundle(agent))
        elif command == "restore" and "--skip" in args:
            parsed = parse_skip(args[1:])
            if parsed is None:
                print(USAGE)
                return
            cell, names = parsed
            report = agent.restore_skipping(names) if cell is None else agent.time_travel(cell, names)
            agent.display(report.mimebundle())
        elif command == "restore" and len(args) == 2 and args[1].isdigit():
            agent.display(agent.time_travel(int(args[1])).mimebundle())
        elif command == "reset":
            agent.reset()
            agent.display(_table("elastic: session reset", [("", "checkpoints deleted, namespace cleared")]))
        elif command == "sync":
            done = agent.checkpointer.wait(timeout=300)
            agent.display(status_bundle(agent) if done else _table("elastic: still writing", []))
        else:
            print(USAGE)
