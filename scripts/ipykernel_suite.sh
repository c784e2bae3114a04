#!/usr/bin/env bash
# Runs ipykernel's own protocol tests (tests/test_message_spec.py, tests/test_kernel.py of the
# installed ipykernel's sdist) against the elastic-proxy supervisor instead of a bare ipykernel.
#
# Those tests launch the kernelspec named `python3`; a `kernels/python3/kernel.json` that starts
# the proxy, put FIRST on JUPYTER_PATH, routes every one of them through the proxy unchanged.
# The proxy's own child never resolves through that spec (see proxy/child.py), so no recursion.
#
# The proxy runs with --no-agent by default: these tests pin down a cell's exact outputs and
# timing, which the agent changes on purpose (its restore report is a display_data in the first
# cell; its post-cell checkpoint delays `idle`). ELASTIC_SUITE_AGENT=1 loads the agent as the
# installed python3-elastic spec does, to see what that costs.
#
# Usage: scripts/ipykernel_suite.sh [pytest args...]
#   PYTHON (default .venv/bin/python) is the interpreter whose ipykernel version is fetched and
#   which runs both pytest and the proxy. Extra arguments go to pytest (e.g. --junitxml=F, -k).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PYTHON=${PYTHON:-$root/.venv/bin/python}
PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")

version=$("$PYTHON" -c 'import ipykernel; print(ipykernel.__version__)')
src="$root/third_party/ipykernel-$version"
if [ ! -f "$src/tests/test_message_spec.py" ]; then
  mkdir -p "$root/third_party"
  "$PYTHON" -m pip download -q --no-deps --no-binary ipykernel "ipykernel==$version" \
    -d "$root/third_party"
  tar -xzf "$root/third_party/ipykernel-$version.tar.gz" -C "$root/third_party" \
    "ipykernel-$version/tests" "ipykernel-$version/pyproject.toml"
fi

# Private Jupyter dirs and checkpoint store, so the run never touches the user's kernels or state.
work=$(mktemp -d "${TMPDIR:-/tmp}/ipykernel-suite.XXXXXX")
trap 'rm -rf "$work"' EXIT
spec_dir="$work/share/jupyter/kernels/python3"
mkdir -p "$spec_dir"
"$PYTHON" - "$spec_dir/kernel.json" "$PYTHON" "${ELASTIC_SUITE_AGENT:-0}" <<'EOF'
import json, sys
path, python, agent = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
spec = {
    "argv": [python, "-m", "elastic_proxy.proxy", "-f", "{connection_file}"] + ([] if agent else ["--no-agent"]),
    "display_name": "Python 3 (elastic, ipykernel suite)",
    "language": "python",
    "interrupt_mode": "message",
}
with open(path, "w") as f:
    json.dump(spec, f, indent=1)
EOF
export JUPYTER_PATH="$work/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
export JUPYTER_DATA_DIR="$work/data" JUPYTER_RUNTIME_DIR="$work/runtime"
export ELASTIC_PROXY_STORE="$work/store" ELASTIC_PROXY_SECRET_FILE="$work/secret"
export JUPYTER_PLATFORM_DIRS=1

# Run from the sdist so its own pytest configuration (pyproject.toml: timeouts, asyncio mode,
# warnings as errors) applies as in ipykernel's CI; the loop scope is set only because newer
# pytest-asyncio warns when it is unset, and that config turns every warning into an error.
cd "$src"
exec "$PYTHON" -m pytest -p no:cacheprovider --color=no -o asyncio_default_fixture_loop_scope=function \
  tests/test_message_spec.py tests/test_kernel.py "$@"
