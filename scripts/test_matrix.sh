#!/usr/bin/env bash
# Runs `make test` under each Python 3.9-3.13 that pyenv provides, each in .venv-pyX.Y.
# ipykernel 7 needs Python >= 3.10 (7.3 there); pip resolves ipykernel 6.29+ on 3.9 by itself.
# PYTHONS="3.9 3.13" runs a subset. Each version's install and pytest output go to .venv-pyX.Y.log;
# its summary line is printed as soon as it is known, and all of them again at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
summary=()
status=0
report() { summary+=("$1"); echo "$1"; }
for v in ${PYTHONS:-3.9 3.10 3.11 3.12 3.13}; do
  py=$(pyenv prefix "$(pyenv versions --bare | grep -E "^${v//./\\.}(\.[0-9]+)?$" | tail -n1)" 2>/dev/null)/bin/python
  if [ ! -x "$py" ]; then report "$v: not installed, skipped"; continue; fi
  venv=".venv-py$v"
  if ! make -s install PYTHON="$py" VENV="$venv" >"$venv.log" 2>&1; then
    report "$v: dependencies did not resolve (see $venv.log)"; status=1; continue
  fi
  versions=$("$venv/bin/python" -c 'import platform, ipykernel, jupyter_client
print(f"Python {platform.python_version()}, ipykernel {ipykernel.__version__}, jupyter_client {jupyter_client.__version__}")')
  start=$(date +%s)
  # The selection `make test` runs (its browser and slow S3 tests have their own targets).
  if make -s test PYTHON="$py" VENV="$venv" >>"$venv.log" 2>&1; then
    result=passed
  else
    result=FAILED; status=1
  fi
  report "$v: $result ($versions) $(grep -E '[0-9]+ (passed|failed)' "$venv.log" | tail -n1) [$(( $(date +%s) - start )) s, log $venv.log]"
done
echo "--- summary"
printf '%s\n' "${summary[@]}"
exit $status
