"""The runner: every specimen through real kernels (2 at a time), then the README's table.

`python -m coverage_table` writes `coverage_table/results.json` and the README section between
the coverage-table markers; `--check` writes nothing and exits 1 when the README's section is not
what this run gives (a specimen's verdict changed, a specimen was added or removed, or the README
was edited by hand). Versions in a check are the ones the results file says were verified (a
different installed version is printed as a note, not a failure: new releases come out every day).
`--skip-heavy` takes the heavy libraries' rows (PyTorch) from the results file instead of running them.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

from elastic_proxy.testing_env import install_variant, private_jupyter

from .probe import NO_RESTORE_KERNEL
from .specimens import DISTRIBUTIONS, HEAVY, HTTP_URL, SCRATCH_DIR, SPECIMENS, Specimen
from .table import FAIL, PATHS, Row, SectionMissing, Verdict, render, replace_section, section, verdicts

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"
README = REPO / "README.md"
PROBE_TIMEOUT = 1200.0
HEAVY_NOTE = (f"{', '.join(sorted(HEAVY))}: checked by `make coverage-table`; CI's `make coverage-check` skips "
              "installing and running it (too heavy for its budget) and takes these rows from "
              "`coverage_table/results.json`.")
HTTP_BODY = b'{"rows": [1, 2, 3], "source": "coverage-table fixture"}'


class _FixtureHandler(BaseHTTPRequestHandler):
    """The same small JSON document for every GET: what the requests specimens fetch."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(HTTP_BODY)))
        self.end_headers()
        self.wfile.write(HTTP_BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_fixture() -> Iterator[str]:
    """An http.server on loopback for the run; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FixtureHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def version_of(library: str) -> str:
    distribution = DISTRIBUTIONS[library]
    if not distribution:
        return platform.python_version()
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def infrastructure_failure(observation: dict[str, Any]) -> str | None:
    """Why the probe itself failed (a kernel that never answered, a timeout), as opposed to a verdict."""
    reasons = [observation.get("setup_error") or ""]
    reasons += [(seen or {}).get("error") or "" for seen in observation.get("paths", {}).values()]
    return next((r for r in reasons if r.startswith(("the probe exited", "the probe failed", "the probe did"))), None)


def probe_with_retry(specimen: Specimen, root: Path, url: str) -> dict[str, Any]:
    """A probe that failed for a reason of its own is run once more: one kernel that died on a loaded
    machine must not flip a table cell (a failure that repeats stays in the table)."""
    observation = probe(specimen, root, url, attempt=1)
    why = infrastructure_failure(observation)
    if why is None:
        return observation
    print(f"  retrying {specimen.key}: {why}", flush=True)
    return probe(specimen, root, url, attempt=2)


def probe(specimen: Specimen, root: Path, url: str, attempt: int) -> dict[str, Any]:
    """Observe one specimen in a subprocess of its own (its kernels' logs under root/logs)."""
    scratch = root / "scratch" / f"{specimen.key}-{attempt}"
    scratch.mkdir(parents=True)
    log = root / "logs" / f"{specimen.key}-{attempt}.log"
    env = {**os.environ, HTTP_URL: url, SCRATCH_DIR: str(scratch),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    session = f"coverage/{specimen.key}-{attempt}.ipynb"  # a retry must not restore the first attempt's state
    command = [sys.executable, "-m", "coverage_table.probe", specimen.key, str(log), session]
    try:
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"key": specimen.key, "setup_error": f"the probe did not finish within {PROBE_TIMEOUT:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        return {"key": specimen.key, "setup_error": f"the probe exited {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def observe_all(specimens: Sequence[Specimen], jobs: int, keep: Path | None) -> dict[str, dict[str, Any]]:
    """Every specimen's observation, `jobs` probes at a time, in a private Jupyter environment."""
    root = Path(tempfile.mkdtemp(prefix="coverage-table-"))
    (root / "logs").mkdir()
    observations: dict[str, dict[str, Any]] = {}
    try:
        with private_jupyter(root), http_fixture() as url:
            install_variant(root / "prefix", NO_RESTORE_KERNEL, "--no-restore", "--no-warm-spare")

            def one(specimen: Specimen) -> None:
                started = time.monotonic()
                observation = probe_with_retry(specimen, root, url)
                observations[specimen.key] = observation
                marks = " ".join(v.mark for v in verdicts(specimen.names, observation).values())
                print(f"  {marks}  {specimen.library}: {specimen.name} ({time.monotonic() - started:.0f} s)",
                      flush=True)

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(one, specimens))
    finally:
        if keep is not None:
            shutil.copytree(root / "logs", keep, dirs_exist_ok=True)
            (keep / "observations.json").write_text(json.dumps(observations, indent=1))
        shutil.rmtree(root, ignore_errors=True)
    return observations


def load_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"specimens": {}}
    return json.loads(path.read_text())


def rows_for(specimens: Sequence[Specimen], observations: dict[str, dict[str, Any]], cached: dict[str, Any],
             cached_versions: bool) -> list[Row]:
    """One row per specimen: observed now, else taken from the results file."""
    rows = []
    for specimen in specimens:
        entry = cached["specimens"].get(specimen.key)
        if specimen.key in observations:
            judged = verdicts(specimen.names, observations[specimen.key])
        elif entry is not None:
            judged = {path: Verdict.from_json(entry["verdicts"][path]) for path in PATHS}
        else:
            judged = {path: Verdict(FAIL, "never run: no results for it") for path in PATHS}
        observed = specimen.key in observations
        version = entry["version"] if entry and (cached_versions or not observed) else version_of(specimen.library)
        rows.append(Row(specimen.name, specimen.library, version, judged, specimen.heavy))
    return rows


def results_json(rows: Sequence[Row], specimens: Sequence[Specimen]) -> dict[str, Any]:
    return {
        "generated": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "specimens": {
            specimen.key: {"library": row.library, "specimen": row.specimen, "version": row.version,
                           "verdicts": {path: row.verdicts[path].to_json() for path in PATHS}}
            for specimen, row in zip(specimens, rows)
        },
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coverage_table", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the README; write nothing")
    parser.add_argument("--skip-heavy", action="store_true", help=f"take {', '.join(sorted(HEAVY))} rows from "
                        "the results file")
    parser.add_argument("--jobs", type=int, default=2, help="specimens run at the same time (default 2)")
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run these specimens, the rest's rows from the "
                        "results file")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the kernels' logs and the raw "
                        "observations there")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keys = {s.key for s in SPECIMENS}
    unknown = sorted(set(args.only or ()) - keys)
    if unknown:
        print(f"unknown specimen(s): {', '.join(unknown)}; known: {', '.join(sorted(keys))}", file=sys.stderr)
        return 2
    cached = load_results(RESULTS)
    chosen = [s for s in SPECIMENS if (not args.only or s.key in args.only) and not (args.skip_heavy and s.heavy)]
    started = time.monotonic()
    print(f"coverage table: {len(chosen)} specimens through python3-elastic, {args.jobs} at a time", flush=True)
    observations = observe_all(chosen, args.jobs, args.keep_logs)
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)
    rows = rows_for(SPECIMENS, observations, cached, cached_versions=args.check)
    body = render(rows, HEAVY_NOTE)
    readme = README.read_text()
    try:
        current = section(readme)
    except SectionMissing as exc:
        print(f"README.md: {exc}", file=sys.stderr)
        return 1
    if args.check:
        return check(current, body, rows)
    RESULTS.write_text(json.dumps(results_json(rows, SPECIMENS), indent=1, ensure_ascii=False) + "\n")
    README.write_text(replace_section(readme, body))
    print(f"wrote {RESULTS.relative_to(REPO)} and the README's coverage table")
    return 0


def check(current: str, body: str, rows: Sequence[Row]) -> int:
    for row in rows:
        installed = version_of(row.library)
        if installed != row.version and not (row.heavy and installed == "not installed"):
            print(f"note: {row.library} {installed} installed here; the table says {row.version} was verified")
    if current == body.strip("\n"):
        print("README.md's coverage table is up to date")
        return 0
    diff = difflib.unified_diff(current.splitlines(), body.strip("\n").splitlines(), "README.md", "this run",
                                lineterm="")
    print("\n".join(diff))
    print("README.md's coverage table is out of date: run `make coverage-table` and commit README.md and "
          "coverage_table/results.json", file=sys.stderr)
    return 1
