"""One specimen through real kernels, three ways; prints what it saw as one JSON line.

`python -m coverage_table.probe KEY LOG SESSION` (the runner starts one per specimen, in the private
Jupyter environment it set up). A notebook session SESSION (`coverage/KEY-1.ipynb`) runs the specimen's cells on
python3-elastic and waits for the checkpoint; then
- crash: SIGKILL of the kernel child (its pid from usage_request), the automatic restore;
- migrate / recompute: a new kernel that does not restore by itself (`--no-restore`) restores
  that same generation with every value loaded / every value rebuilt (`coverage_table.forced`).
Each time the specimen's fingerprint is evaluated in the kernel, silently (nothing recorded),
and the agent's restore report is read back. Verdicts are the runner's (`table.judge`).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from elastic_proxy.testing_env import KERNEL_NAME, child_pid

from .specimens import SPECIMENS, Specimen

NO_RESTORE_KERNEL = "python3-elastic-coverage-norestore"
"""Installed by the runner: python3-elastic with `--no-restore --no-warm-spare`."""
CELL_TIMEOUT = 300.0
RESTORE_TIMEOUT = 300.0
AGENT = "__import__('elastic_proxy.inner_agent', fromlist=['get_agent']).get_agent(get_ipython())"
REPORT_FIELDS = ("generation", "restored", "recomputed", "lost", "mismatched", "unverified", "rerun_cells", "notes")


class ProbeError(Exception):
    """The kernel answered with an error (message: `Name: value`)."""


def digest_expression(fingerprint: str) -> str:
    """The fingerprint's repr, hashed in the kernel: what travels back is 64 hex digits."""
    return f"__import__('hashlib').sha256(repr({fingerprint}).encode()).hexdigest()"


@contextmanager
def kernel(name: str, env: dict[str, str], log: BinaryIO) -> Iterator[Any]:
    """A kernel started by jupyter_client from an installed kernelspec, as Jupyter starts it; a ready client."""
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name=name)
    km.start_kernel(env={**os.environ, **env}, stdout=log, stderr=log)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=CELL_TIMEOUT)
        yield kc
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)


def execute(kc: Any, code: str, timeout: float = CELL_TIMEOUT, **kwargs: Any) -> dict[str, Any]:
    """Run a cell; its execute_reply content. A cell that raised raises ProbeError."""
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda msg: None, **kwargs)["content"]
    if reply.get("status") != "ok":
        raise ProbeError(f"{reply.get('ename', reply.get('status'))}: {reply.get('evalue', '')}")
    return reply


def evaluate(kc: Any, expression: str, timeout: float = CELL_TIMEOUT) -> Any:
    """The JSON value of an expression evaluated in the kernel as a silent user expression: the agent's
    hooks do not run for it, so nothing is recorded or checkpointed."""
    reply = execute(kc, "", timeout=timeout, silent=True, store_history=False,
                    user_expressions={"v": f"__import__('json').dumps({expression})"})
    value = reply["user_expressions"]["v"]
    if value.get("status") != "ok":
        raise ProbeError(f"{value.get('ename')}: {value.get('evalue')}")
    return json.loads(ast.literal_eval(value["data"]["text/plain"]))


def report_facts(report: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if report is None else {key: report.get(key) for key in REPORT_FIELDS}


def fingerprint_or_error(kc: Any, specimen: Specimen) -> dict[str, Any]:
    try:
        return {"after": evaluate(kc, digest_expression(specimen.fingerprint)), "error": None}
    except ProbeError as exc:
        return {"after": None, "error": f"the fingerprint raised {exc}"}


def crash_path(kc: Any, specimen: Specimen) -> dict[str, Any]:
    """SIGKILL the child; the supervisor starts another, whose agent restores the newest checkpoint."""
    pid = child_pid(kc)
    os.kill(pid, signal.SIGKILL)
    child_pid(kc, timeout=CELL_TIMEOUT, not_pid=pid)
    seen = fingerprint_or_error(kc, specimen)
    seen["report"] = report_facts(evaluate(kc, f"(lambda r: r and r.to_json())({AGENT}.last_report)"))
    return seen


def forced_path(specimen: Specimen, env: dict[str, str], log: BinaryIO, generation: int, mode: str) -> dict[str, Any]:
    with kernel(NO_RESTORE_KERNEL, env, log) as kc:
        report = evaluate(kc, f"__import__('coverage_table.forced', fromlist=['restore'])"
                              f".restore(get_ipython(), {generation}, {mode!r})", timeout=RESTORE_TIMEOUT)
        seen = fingerprint_or_error(kc, specimen)
        seen["report"] = report_facts(report)
        return seen


def stored_variables(specimen: Specimen, session: str, generation: int) -> dict[str, Any]:
    """The manifest's entries for the specimen's names: type, opaque, recompute_only (why not stored).
    Only the signed JSON manifest is read; nothing is unpickled."""
    from elastic_proxy.store import open_store

    manifest = open_store(session).read_manifest(generation)
    if not manifest.valid:
        raise ProbeError(f"generation {generation} is not valid: {manifest.problem}")
    variables = manifest.body.get("variables", {})
    return {name: variables.get(name) for name in specimen.names}


def observe(specimen: Specimen, session: str, log: BinaryIO) -> dict[str, Any]:
    """Everything the verdicts need, as JSON; a path that could not be run says why."""
    env = {"JPY_SESSION_NAME": session}
    seen: dict[str, Any] = {"key": specimen.key, "setup_error": None, "paths": {}}
    with kernel(KERNEL_NAME, env, log) as kc:
        for number, code in enumerate(specimen.cells, 1):
            try:
                execute(kc, code)
            except ProbeError as exc:
                seen["setup_error"] = f"setup cell {number} raised {exc}"
                return seen
        generation = evaluate(kc, f"(lambda a: (a.checkpointer.wait(120), "
                                  f"a.checkpointer.status()['last_generation'])[1])({AGENT})")
        seen["generation"] = generation
        try:
            seen["before"] = evaluate(kc, digest_expression(specimen.fingerprint))
        except ProbeError as exc:
            seen["setup_error"] = f"the fingerprint raised {exc} before any restore"
            return seen
        seen["variables"] = stored_variables(specimen, session, generation)
        seen["paths"]["crash"] = guarded(lambda: crash_path(kc, specimen))
    for path, mode in (("migrate", "load"), ("recompute", "recompute")):
        seen["paths"][path] = guarded(lambda mode=mode: forced_path(specimen, env, log, generation, mode))
    return seen


def guarded(action: Any) -> dict[str, Any]:
    """A path's observation, or the reason it could not be observed."""
    try:
        return action()
    except Exception as exc:
        return {"after": None, "error": f"the probe failed: {type(exc).__name__}: {exc}", "report": None}


def main(argv: list[str]) -> int:
    by_key = {s.key: s for s in SPECIMENS}
    if len(argv) != 3 or argv[0] not in by_key:
        print(f"usage: python -m coverage_table.probe KEY LOG SESSION (KEY one of {', '.join(by_key)})",
              file=sys.stderr)
        return 2
    with open(argv[1], "ab") as log:
        print(json.dumps(observe(by_key[argv[0]], argv[2], log)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
