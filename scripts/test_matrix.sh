#!/usr/bin/env bash
# Runs the test suite under each Python 3.9-3.13 that pyenv provides, each in .venv-pyX.Y.
# ipykernel 7 needs Python >= 3.11; pip resolves ipykernel 6.29+ on older interpreters by itself.
set -uo pipefail
cd "$(dirname "$0")/.."
summary=()
status=0
for v in 3.9 3.10 3.11 3.12 3.13; do
  py=$(pyenv prefix "$(pyenv versions --bare | grep -E "^${v//./\\.}(\.[0-9]+)?$" | tail -n1)" 2>/dev/null)/bin/python
  if [ ! -x "$py" ]; then summary+=("$v: not installed, skipped"); continue; fi
  venv=".venv-py$v"
  if ! make -s install PYTHON="$py" VENV="$venv" >"$venv.log" 2>&1; then
    summary+=("$v: dependencies did not resolve (see $venv.log)"); status=1; continue
  fi
  ipk=$("$venv/bin/python" -c 'import ipykernel; print(ipykernel.__version__)')
  if "$venv/bin/python" -m pytest -q -p no:cacheprovider tests >>"$venv.log" 2>&1; then
    summary+=("$v: passed (ipykernel $ipk) $(tail -n1 "$venv.log")")
  else
    summary+=("$v: FAILED (ipykernel $ipk) $(tail -n1 "$venv.log")"); status=1
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
