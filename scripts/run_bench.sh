#!/usr/bin/env bash
# `make bench`: runs every bench/*.py and writes one markdown report, bench/results/report-<date>.md,
# with the machine, the versions, each command line and each script's own tables.
# A script that fails (or runs past BENCH_TIMEOUT seconds) is recorded in the report with the tail
# of its stderr, the others still run, and the exit status is non-zero at the end.
#   BENCH_ONLY="restore_bench store_bench"  run only these scripts
#   BENCH_REPORT=path                       write the report there instead
#   BENCH_TIMEOUT=3600                      seconds per script
#   BENCH_TARGET="make bench-peers"         the command named in the report's header
#   BENCH_ARGS="--runs 10"                  extra arguments for every script
# Scripts in OWN_VENV need a venv of their own (`make bench-peers` builds it): they run only when
# BENCH_ONLY names them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
ORDER=(store_bench agent_overhead proxy_overhead death_to_reply restore_bench)
OWN_VENV=(peers_bench)
HELPERS=(zmq_device_kernel)  # bench/*.py that are no benches (a kernel a bench starts); bench/_*.py neither
report="${BENCH_REPORT:-bench/results/report-$(date -u +%Y-%m-%d).md}"
timeout_s="${BENCH_TIMEOUT:-3600}"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
mkdir -p "$(dirname "$report")"

scripts=()
for name in "${ORDER[@]}"; do [ -f "bench/$name.py" ] && scripts+=("$name"); done
for path in bench/[!_]*.py; do
  name=$(basename "$path" .py)
  [[ " ${ORDER[*]} ${HELPERS[*]} " == *" $name "* ]] || scripts+=("$name")
done
selected=()
for name in "${scripts[@]}"; do
  if [ -n "${BENCH_ONLY:-}" ]; then
    [[ " $BENCH_ONLY " == *" $name "* ]] && selected+=("$name")
  else
    [[ " ${OWN_VENV[*]} " == *" $name "* ]] || selected+=("$name")
  fi
done
scripts=("${selected[@]}")

machine() {
  local cpu disk_dir
  cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
  [ -n "$cpu" ] || cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)
  disk_dir="${TMPDIR:-/tmp}"
  echo "| | |"
  echo "| --- | --- |"
  echo "| host | $(uname -n) |"
  echo "| nproc | $(nproc) |"
  echo "| memory | $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) total, $(awk '/MemAvailable/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) available at start |"
  echo "| CPU | ${cpu:-unknown} |"
  echo "| kernel | $(uname -srm) |"
  echo "| disk (benches' temp dir $disk_dir) | $(df -hT "$disk_dir" | awk 'NR == 2 {print $1 ", " $2 ", " $3 " total, " $5 " free"}') |"
  echo "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
}

versions() {
  "$PY" - <<'EOF'
import importlib.metadata as md
import platform
print("| package | version |")
print("| --- | --- |")
print(f"| python | {platform.python_version()} ({platform.python_implementation()}) |")
for name in ("elastic-proxy", "ipykernel", "jupyter_client", "pyzmq", "numpy"):
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        version = "not installed"
    print(f"| {name} | {version} |")
EOF
}

failed=()
{
  echo "# Benchmark report $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (working tree has uncommitted changes)'). Produced by \`${BENCH_TARGET:-make bench}\` (scripts/run_bench.sh); what each script measures: bench/README.md."
  echo
  echo "## Machine"
  echo
  machine
  echo
  echo "## Versions"
  echo
  versions
} >"$report"

for name in "${scripts[@]}"; do
  read -r -a extra <<<"${BENCH_ARGS:-}"
  cmd=("$PY" "bench/$name.py" "${extra[@]}")
  echo "run_bench: ${cmd[*]}" >&2
  start=$(date +%s)
  PYTHONUNBUFFERED=1 timeout --kill-after=30 "$timeout_s" "${cmd[@]}" >"$logs/$name.out" 2>"$logs/$name.err"
  code=$?
  seconds=$(( $(date +%s) - start ))
  {
    echo
    echo "## $name.py"
    echo
    echo "\`${cmd[*]}\` ($seconds s, exit status $code)"
    echo
    cat "$logs/$name.out"
    if [ "$code" -ne 0 ]; then
      echo
      if [ "$code" -eq 124 ]; then
        echo "**FAILED: killed after ${timeout_s} s (BENCH_TIMEOUT).** Last lines of stderr:"
      else
        echo "**FAILED with exit status $code.** Last lines of stderr:"
      fi
      echo
      echo '```'
      tail -n 40 "$logs/$name.err"
      echo '```'
    fi
  } >>"$report"
  [ "$code" -eq 0 ] || failed+=("$name.py (exit $code)")
done

{
  echo
  echo "## Summary"
  echo
  if [ "${#failed[@]}" -eq 0 ]; then
    echo "All ${#scripts[@]} scripts ran: ${scripts[*]/%/.py}."
  else
    echo "FAILED: ${failed[*]}. Ran: ${scripts[*]/%/.py}."
  fi
} >>"$report"

echo "run_bench: report written to $report" >&2
if [ "${#failed[@]}" -ne 0 ]; then
  echo "run_bench: FAILED: ${failed[*]}" >&2
  exit 1
fi
