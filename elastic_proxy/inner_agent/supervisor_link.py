"""The agent's answer to the supervisor after a child starts.

The supervisor evaluates `summary(N, restore_now, pending)` as a user expression (so no cell is
used up) once the new child answers. It learns whether the agent restored a checkpoint and from
which cell, and which of the cells completed after the last checkpoint it knows of are safe to
re-run. It passes the last execution count the user saw, so the child's numbering (and the
agent's cell numbers in later checkpoints) match the user's. The supervisor starts every child
with ELASTIC_PROXY_RESTORE=deferred, and the restore runs here, with `restore_now`: a warm spare's
state is only known once the child it replaces has died, and any child must answer kernel_info
while its restore waits for a dead kernel's checkpoint writer.
"""

from __future__ import annotations

import ast
import os
from typing import Any

#: Calls whose re-run would destroy or rewrite data on disk.
_DESTRUCTIVE_CALLS = frozenset({
    "os.remove", "os.unlink", "os.rmdir", "os.truncate", "os.rename", "os.replace", "shutil.rmtree",
    "shutil.move", "Path.unlink", "Path.write_text", "Path.write_bytes", "write_text", "write_bytes",
    "unlink", "rmtree", "to_csv", "to_parquet", "to_pickle", "to_excel", "to_json", "to_hdf", "savefig",
    "np.save", "np.savez", "numpy.save", "pickle.dump", "json.dump", "torch.save",
})


#: Attribute names of calls that start processes (`!cmd` becomes `get_ipython().system(...)`).
_PROCESS_CALLS = frozenset({"system", "popen", "Popen", "check_call", "check_output", "spawnl", "spawnv", "execv",
                            "execvp", "getoutput", "getstatusoutput", "run_line_magic", "run_cell_magic"})
#: ... and calls that reach a network peer or write to a database: a re-run would repeat them.
_OUTSIDE_WORLD_CALLS = frozenset({"connect", "create_connection", "urlopen", "sendall", "sendto", "send", "post",
                                  "put", "patch", "delete", "execute", "executemany", "executescript", "commit",
                                  "to_sql", "insert_one", "insert_many", "update_one", "delete_one"})


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _writes_files(code: str) -> str | None:
    """Why re-running this cell could destroy data on disk, or None (a static, cautious reading)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return "it is not plain Python (a magic or shell command), so its effects cannot be checked"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("open", "io.open") or name.endswith(".open"):
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
                if set(mode.value) & set("wax+"):
                    return f"it opens a file for writing (mode {mode.value!r})"
            elif mode is not None:
                return "it opens a file with a mode computed at run time"
        if name in _DESTRUCTIVE_CALLS or name.rsplit(".", 1)[-1] in _DESTRUCTIVE_CALLS:
            return f"it calls {name}(), which writes or deletes files"
        method = name.rsplit(".", 1)[-1] or getattr(node.func, "attr", "")
        if name.startswith("subprocess.") or method in _PROCESS_CALLS:
            return f"it runs a process or shell command ({name or method})"
        if method in _OUTSIDE_WORLD_CALLS:
            return f"it talks to the outside world ({name or method}: network or database)"
    return None


def unsafe_to_rerun(code: str, shell: Any = None) -> str | None:
    """Why a cell must not be re-run to rebuild state (None when it is safe).

    Re-running an unseeded random draw gives other values (silently wrong); re-running a cell
    that writes files can truncate what the user has on disk.
    """
    from elastic_proxy.inner_agent.analysis import cell_names

    python = shell.transform_cell(code) if shell is not None else code
    names = cell_names(python)
    if names.nondeterministic:
        return f"it is nondeterministic ({names.nondeterministic[0]}): a re-run would give other values"
    return _writes_files(python)


def summary(last_execution_count: int, restore_now: bool = False,
            pending: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """Set the execution counter, restore first if asked (a warm spare starts empty), report."""
    from IPython import get_ipython

    from elastic_proxy.inner_agent import get_agent

    shell = get_ipython()
    agent = get_agent(shell)
    if agent is None:
        raise RuntimeError("the elastic-proxy agent is not loaded in this kernel")
    if restore_now:
        agent.pending_report = agent.restore()
    shell.execution_count = max(shell.execution_count, last_execution_count + 1)
    report = agent.last_report
    restored_cell = report.cell if report is not None and report.generation is not None else None
    unsafe = {}
    for count, code in pending or []:
        reason = unsafe_to_rerun(code, shell)
        if reason is not None:
            unsafe[count] = reason
    return {
        "restore": restore_now or os.environ.get("ELASTIC_PROXY_RESTORE", "off").lower() == "auto",
        "restored_cell": restored_cell,
        "execution_count": shell.execution_count - 1,
        "unsafe": unsafe,
    }
