"""`python -m elastic_proxy.demo` (`make demo`): the product's main job, headless, in under a minute.

A notebook's variables survive a SIGKILL of the kernel mid-cell, a real out-of-memory kill under a
memory limit, and a kernel restart. The demo drives real kernels through jupyter_client, as a
headless notebook runner (nbclient, papermill) does, inside a private Jupyter environment in a
temporary directory: kernelspecs installed there with our own CLI, the checkpoint store and its
secret there too, all removed at the end. Nothing outside that directory is touched.

Every claim it prints is checked against what the kernel sent back: a step that does not behave as
promised is marked FAILED with the reason, and the exit status is then 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from elastic_proxy import testing_env

KERNEL = "python3-elastic"
OOM_KERNEL = "python3-elastic-oom"
MEMORY_LIMIT = "600M"
OOM_ALLOCATION_GIB = 2
ARRAY_LENGTH = 32_000_000  # float64: 256 MB (244 MiB)
CELL_TIMEOUT = 90.0
KILL_DELAY = 1.5  # seconds into the long cell
PROBE_MARK = "@@elastic-demo@@"
REPORT_RE = re.compile(r"elastic: restored generation (\d+)")
SMALL_VALUES: dict[str, Any] = {
    "x": 42,
    "name": "elastic demo",
    "params": {"lr": 0.01, "layers": [64, 32], "tags": ["a", "b"]},
}
OOM_VALUES: dict[str, Any] = {"kept": {"rows": 1000, "label": "made before the OOM"}, "small_sum": 499500}
FIRST_LINE = "written before the crash\n"
PROGRESS_LINE = "progress: the long computation started\n"


class StepFailed(Exception):
    """A promise of the product that the kernel's answers did not keep; the message says which."""


# --- Pure logic: what the kernel's messages say --------------------------------------------------
@dataclass
class Cell:
    """One executed cell: its reply and the IOPub outputs that belong to it, each with its arrival time."""

    code: str
    reply: dict[str, Any]
    outputs: list[tuple[float, dict[str, Any]]]
    started: float
    finished: float

    @property
    def ok(self) -> bool:
        return self.reply.get("status") == "ok"

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for _, m in self.outputs
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

    @property
    def errors(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m["content"]) for t, m in self.outputs if m["msg_type"] == "error"]

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for _, m in self.outputs
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")

    @property
    def displays(self) -> list[str]:
        return [m["content"]["data"].get("text/plain", "") for _, m in self.outputs
                if m["msg_type"] == "display_data"]

    def probe(self) -> dict[str, Any]:
        """The JSON a probe cell printed after PROBE_MARK."""
        for line in self.stdout.splitlines():
            if line.startswith(PROBE_MARK):
                return json.loads(line[len(PROBE_MARK):])
        raise StepFailed(f"the cell printed no result: status {self.reply.get('status')}, "
                         f"{self.reply.get('ename', '')} {self.reply.get('evalue', '')}".strip())


def restore_report(cell: Cell) -> str | None:
    """The agent's restore report among a cell's displays."""
    for text in cell.displays:
        if REPORT_RE.search(text):
            return text
    return None


def report_problems(report: str) -> list[str]:
    """What a restore report admits it did not bring back as it was."""
    return [line.strip() for line in report.splitlines() if line.strip().startswith(("LOST", "DIFFERS"))]


def compare(expected: dict[str, Any], seen: dict[str, Any]) -> list[str]:
    """`name: expected ..., got ...` for every value that differs."""
    return [f"{key}: expected {expected[key]!r}, got {seen.get(key, '<missing>')!r}"
            for key in expected if seen.get(key) != expected[key]]


def headline(report: str) -> str:
    """`generation 3 (state after cell [3]): 10 loaded, ...` from a restore report's first line."""
    line = first_line(report, 200).replace("elastic: restored ", "")
    return re.sub(r", in [0-9.]+ s$", "", line)


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def first_line(text: str, limit: int = 110) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- Output --------------------------------------------------------------------------------------
@dataclass
class Step:
    number: str
    title: str
    measured: str = ""  # what the seconds are the time of
    what: str = ""
    seconds: float | None = None
    failure: str | None = None
    skipped: str | None = None

    @property
    def status(self) -> str:
        if self.skipped:
            return "SKIPPED"
        return "FAILED" if self.failure else "ok"


@dataclass
class Narrator:
    """Short lines per step: what the notebook ran and what came back."""

    out: TextIO = sys.stdout
    steps: list[Step] = field(default_factory=list)

    def say(self, text: str = "", indent: int = 0) -> None:
        prefix = " " * indent
        for line in (text.splitlines() or [""]):
            print(prefix + line, file=self.out, flush=True)

    def cell(self, cell: Cell) -> None:
        code = textwrap.indent(cell.code.strip(), "      | ")
        self.say(f"    In: ({cell.finished - cell.started:.2f} s)\n{code}")
        for text in cell.displays:
            self.say(textwrap.indent(text, "      display> "))
        for line in cell.stdout.splitlines():
            if not line.startswith(PROBE_MARK):
                self.say(f"      out> {line}")
        for line in cell.stderr.splitlines():
            self.say(f"      err> {line}")
        for _, error in cell.errors:
            self.say(f"      error> {error['ename']}: {error['evalue']}")

    def summary(self) -> None:
        rows = [("STEP", "RESULT", "SECONDS", "MEASURED", "WHAT HAPPENED")]
        for step in self.steps:
            what = first_line(step.failure or step.skipped or step.what, 100)
            seconds = "-" if step.seconds is None else f"{step.seconds:.2f}"
            rows.append((f"{step.number} {step.title}", step.status, seconds, step.measured, what))
        self.say()
        self.say(format_table(rows))


# --- Real kernels --------------------------------------------------------------------------------
@contextmanager
def demo_jupyter(root: Path) -> Iterator[dict[str, str]]:
    """The private Jupyter environment of `testing_env`, plus the out-of-memory kernelspec and
    timestamps in the supervisors' logs (shown when a step fails)."""
    with testing_env.private_jupyter(root) as env:
        (root / "config" / "elastic_proxy_config.py").write_text(
            "c.Application.log_format = '%(asctime)s.%(msecs)03d [%(name)s] %(levelname)s %(message)s'\n"
            "c.Application.log_datefmt = '%H:%M:%S'\n"
        )
        try:
            testing_env.install_kernelspec(root / "prefix", "--name", OOM_KERNEL, "--memory-limit", MEMORY_LIMIT)
        except RuntimeError as err:
            raise StepFailed(str(err)) from None
        yield env


class Kernel:
    """A kernel started by jupyter_client's KernelManager from an installed kernelspec, with one client.

    The supervisor's log goes to a file (shown when a step fails), not to the demo's output.
    """

    def __init__(self, kernel_name: str, session: str, log_path: Path) -> None:
        from jupyter_client import KernelManager

        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in shutdown)
        # In the runtime dir, as Jupyter Server does (jupyter_client's default is the system temp dir).
        connection_file = Path(os.environ["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kernel_name}.json"
        self.km = KernelManager(kernel_name=kernel_name, connection_file=str(connection_file))
        # JPY_SESSION_NAME is what Jupyter Server passes: the notebook's path, the checkpoints' key.
        self.km.start_kernel(env={**os.environ, "JPY_SESSION_NAME": session},
                             stdout=self._log, stderr=self._log)
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=CELL_TIMEOUT)
        except BaseException:
            self.shutdown(now=True)  # a kernel that never answered must not outlive the demo
            raise

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> Cell:
        outputs: list[tuple[float, dict[str, Any]]] = []

        def keep(msg: dict[str, Any]) -> None:
            if msg["msg_type"] != "status":
                outputs.append((time.monotonic(), msg))

        started = time.monotonic()
        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=keep)
        return Cell(code, reply["content"], outputs, started, time.monotonic())

    def child_pid(self, timeout: float = 30) -> int:
        """The pid of the process running the notebook's code, from usage_request on control."""
        try:
            return testing_env.child_pid(self.kc, timeout)
        except TimeoutError as err:
            raise StepFailed(str(err)) from None

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def shutdown(self, now: bool = False) -> None:
        self.kc.stop_channels()
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=now)
        finally:
            self._log.close()


# --- The steps -----------------------------------------------------------------------------------
def probe_code(line: str) -> str:
    """A cell that appends `line` through the notebook's open file and prints the state as JSON."""
    return (
        "before = open(log.name).read()\n"
        f"log.write({line!r}); log.flush()\n"
        f"print({PROBE_MARK!r} + json.dumps({{\n"
        "    'fingerprint': hashlib.sha256(a.tobytes()).hexdigest()[:16], 'alias': b is a,\n"
        "    'x': x, 'name': name, 'params': params,\n"
        "    'file_before': before, 'file_after': open(log.name).read()}))"
    )


class Demo:
    def __init__(self, root: Path, narrator: Narrator) -> None:
        self.root = root
        self.say = narrator.say
        self.narrator = narrator
        self.kernel: Kernel | None = None
        self.oom_kernel: Kernel | None = None
        self.fingerprint = ""
        self.file_content = ""
        self.killed_at = 0.0

    def check_restored(self, cell: Cell, line: str) -> str:
        """Check the first cell on a restored kernel: the restore report admits no loss, the array is
        bit-identical, the alias holds, the small values are equal, and the notebook's open file still
        has everything written to it and takes new lines. Returns the report; StepFailed if anything is off."""
        problems = []
        report = restore_report(cell)
        if report is None:
            shown = "; ".join(first_line(text) for text in cell.displays) or "no display at all"
            problems.append(f"no restore report in the first cell on the new kernel ({shown})")
        else:
            problems += [f"restore report: {problem}" for problem in report_problems(report)]
        if not cell.ok:
            problems.append(f"the cell failed: {cell.reply.get('ename')}: {cell.reply.get('evalue')}")
            problems += [f"the kernel said: {line}" for line in cell.stderr.splitlines() if line.strip()]
            raise StepFailed("; ".join(problems))
        expected_file = self.file_content
        seen = cell.probe()
        problems += compare({"fingerprint": self.fingerprint, "alias": True, **SMALL_VALUES}, seen)
        if seen.get("file_before") != expected_file:
            problems.append(f"the notebook's open file lost content: on disk {expected_file!r} before the crash, "
                            f"{seen.get('file_before')!r} after the restore")
        if seen.get("file_after") != seen.get("file_before", "") + line:
            problems.append(f"a line written through the restored file handle did not land at the end: "
                            f"{seen.get('file_after')!r}")
        # Later steps check their own promise against what is on disk now.
        self.file_content = seen.get("file_after", expected_file + line)
        if problems:
            raise StepFailed("; ".join(problems))
        self.say(f"    checked: array sha256 {seen['fingerprint']} bit-identical, `b is a` holds, x, name and "
                 f"params equal, the open file kept its {expected_file.count(chr(10))} line(s) and appends")
        return report or ""

    def step1_cells(self, step: Step) -> None:
        self.say(f"[1] A notebook runs on kernel {KERNEL!r} (session 'demo.ipynb')")
        self.kernel = Kernel(KERNEL, "demo.ipynb", self.root / "supervisor.log")
        path = self.root / "work" / "results.log"
        path.parent.mkdir()
        cells = [
            "import hashlib, json, time\nimport numpy as np\n"
            + "\n".join(f"{key} = {value!r}" for key, value in SMALL_VALUES.items()),
            f"a = np.random.rand({ARRAY_LENGTH:_})  # unseeded: {ARRAY_LENGTH * 8 / 1e6:.0f} MB\nb = a\n"
            "print('sha256 of a:', hashlib.sha256(a.tobytes()).hexdigest()[:16])",
            f"log = open({str(path)!r}, 'w')  # kept open by the notebook\n"
            f"log.write({FIRST_LINE!r}); log.flush()",
        ]
        start = time.monotonic()
        ran = []
        for code in cells:
            cell = self.kernel.run(code)
            self.narrator.cell(cell)
            if not cell.ok:
                raise StepFailed(f"cell failed: {cell.reply.get('ename')}: {cell.reply.get('evalue')}")
            ran.append(cell)
        found = re.search(r"sha256 of a: ([0-9a-f]{16})", ran[1].stdout)
        if not found:
            raise StepFailed(f"the array cell printed no checksum ({ran[1].stdout!r})")
        self.fingerprint = found.group(1)
        self.file_content = FIRST_LINE
        step.seconds, step.measured = time.monotonic() - start, "the 3 cells"
        step.what = f"a = {ARRAY_LENGTH * 8 / 2**20:.0f} MiB unseeded random array, sha256 {self.fingerprint}"

    def step2_kill(self, step: Step) -> None:
        assert self.kernel is not None
        pid = self.kernel.child_pid()
        self.say(f"[2] SIGKILL the kernel child (pid {pid}, from usage_request) {KILL_DELAY} s into a long cell")

        def kill() -> None:
            self.killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)

        timer = threading.Timer(KILL_DELAY, kill)
        timer.start()
        try:
            cell = self.kernel.run(f"log.write({PROGRESS_LINE!r}); log.flush()\n"
                                   "print('a long computation starts', flush=True)\ntime.sleep(30)")
        finally:
            timer.cancel()
        self.narrator.cell(cell)
        if not self.killed_at:
            raise StepFailed("the cell ended before the kill")
        if "a long computation starts" in cell.stdout:
            self.file_content += PROGRESS_LINE  # the cell got past its first line: that line is on disk
        errors = cell.errors
        if cell.reply.get("status") != "error" or len(errors) != 1:
            raise StepFailed(f"expected one error output and an error reply, got status "
                             f"{cell.reply.get('status')!r} and {len(errors)} error output(s)")
        arrived, error = errors[0]
        if error["ename"] != "KernelDied" or "SIGKILL" not in error["evalue"]:
            raise StepFailed(f"the error does not name the SIGKILL: {error['ename']}: {error['evalue']}")
        step.seconds, step.measured = cell.finished - self.killed_at, "kill -> error reply"
        step.what = f"one KernelDied error naming SIGKILL (output {arrived - self.killed_at:.2f} s after the kill)"

    def step3_restored(self, step: Step) -> None:
        assert self.kernel is not None
        self.say("[3] The next cell runs on a new kernel child with the state restored")
        cell = self.kernel.run(probe_code("written after the restore\n"))
        self.narrator.cell(cell)
        step.seconds, step.measured = cell.finished - self.killed_at, "kill -> first good cell"
        self.say(f"    the first cell after the kill finished {step.seconds:.2f} s after it")
        report = self.check_restored(cell, "written after the restore\n")
        step.what = f"{headline(report)}; a bit-identical, b is a"

    def step4_oom(self, step: Step) -> None:
        self.say(f"[4] A real out-of-memory kill: kernel {OOM_KERNEL!r} runs under --memory-limit {MEMORY_LIMIT}")
        self.oom_kernel = Kernel(OOM_KERNEL, "demo-oom.ipynb", self.root / "supervisor-oom.log")
        kernel = self.oom_kernel
        setup = kernel.run(f"import json\nimport numpy as np\nkept = {OOM_VALUES['kept']!r}\n"
                           "small = np.arange(1000)")
        self.narrator.cell(setup)
        if not setup.ok:
            raise StepFailed(f"setup cell failed: {setup.reply.get('evalue')}")
        hog = kernel.run(f"hog = [np.ones(2**27 // 8) for _ in range({OOM_ALLOCATION_GIB * 8})]"
                         f"  # {OOM_ALLOCATION_GIB} GiB in 128 MiB pieces")
        self.narrator.cell(hog)
        evalue = hog.reply.get("evalue", "")
        if hog.ok or "out of memory" not in evalue or MEMORY_LIMIT not in evalue:
            raise StepFailed(f"expected an error naming 'out of memory' and the {MEMORY_LIMIT} limit, got "
                             f"status {hog.reply.get('status')!r}: {hog.reply.get('ename', '')} {evalue}")
        after = kernel.run(f"print({PROBE_MARK!r} + json.dumps({{'kept': kept, 'small_sum': int(small.sum()),"
                           " 'hog_defined': 'hog' in globals()}))")
        self.narrator.cell(after)
        if not after.ok:
            raise StepFailed(f"the cell after the OOM failed: {after.reply.get('evalue')}")
        problems = compare({**OOM_VALUES, "hog_defined": False}, after.probe())
        if problems:
            raise StepFailed("after the OOM: " + "; ".join(problems))
        self.say("    checked: 'out of memory' named with the limit; kept and small came back; "
                 "the killed cell's hog is not there")
        step.seconds, step.measured = after.finished - hog.started, "OOM cell start -> next good cell"
        step.what = f"'out of memory' error after {hog.finished - hog.started:.2f} s; earlier variables back"

    def step5_restart(self, step: Step) -> None:
        assert self.kernel is not None
        self.say("[5] KernelManager.restart_kernel(): a new supervisor restores the session's newest checkpoint")
        start = time.monotonic()
        self.kernel.km.restart_kernel(now=False)
        restarted = time.monotonic() - start
        self.kernel.kc.wait_for_ready(timeout=CELL_TIMEOUT)
        ready = time.monotonic() - start
        self.say(f"    restart_kernel() returned after {restarted:.2f} s; the new kernel answered kernel_info "
                 f"after {ready:.2f} s")
        cell = self.kernel.run(probe_code("written after the restart\n"))
        self.narrator.cell(cell)
        step.seconds, step.measured = cell.finished - start, "restart_kernel() -> first good cell"
        report = self.check_restored(cell, "written after the restart\n")
        step.what = f"{headline(report)}; a bit-identical, b is a"

    def shutdown(self) -> None:
        for kernel in (self.kernel, self.oom_kernel):
            if kernel is not None:
                kernel.shutdown()

    def log_tails(self) -> str:
        return "\n".join(f"--- {k.log_path.name} (last lines)\n{k.log_tail()}"
                         for k in (self.kernel, self.oom_kernel) if k is not None)


def run_steps(demo: Demo, narrator: Narrator) -> None:
    plan: list[tuple[str, str, Callable[[Step], None], str | None]] = [
        ("1", "cells", demo.step1_cells, None),
        ("2", "SIGKILL mid-cell", demo.step2_kill, "1"),
        ("3", "next cell restored", demo.step3_restored, "2"),
        ("4", "out of memory", demo.step4_oom, None),
        ("5", "restart", demo.step5_restart, "1"),
    ]
    for number, title, action, needs in plan:
        step = Step(number, title)
        narrator.steps.append(step)
        failed = {s.number for s in narrator.steps if s.status != "ok"}
        if needs in failed:
            step.skipped = f"step {needs} did not succeed"
            continue
        try:
            action(step)
        except Exception as exc:  # every failure is reported, then the demo goes on
            step.failure = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
            narrator.say(f"    FAILED: {step.failure}")


def main(out: TextIO = sys.stdout) -> int:
    narrator = Narrator(out)
    started = time.monotonic()
    narrator.say("elastic-proxy demo: a notebook's variables survive a SIGKILL, an out-of-memory kill and a "
                 "restart")
    root = Path(tempfile.mkdtemp(prefix="elastic-proxy-demo-"))
    demo = Demo(root, narrator)
    try:
        with demo_jupyter(root):
            narrator.say(f"(private Jupyter environment, checkpoint store and secret in {root}; removed at "
                         "the end)")
            try:
                run_steps(demo, narrator)
            finally:
                if any(step.status != "ok" for step in narrator.steps):
                    narrator.say(demo.log_tails())
                demo.shutdown()
    except StepFailed as exc:
        narrator.steps.append(Step("0", "setup", failure=str(exc)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    narrator.summary()
    failed = [step for step in narrator.steps if step.status != "ok"]
    total = time.monotonic() - started
    if failed:
        narrator.say(f"\nFAILED: {len(failed)} step(s) did not behave as promised ({total:.1f} s in all)")
        return 1
    narrator.say(f"\nAll {len(narrator.steps)} steps behaved as promised ({total:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
