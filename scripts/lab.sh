#!/usr/bin/env bash
# make lab: JupyterLab from the venv on 127.0.0.1, with the elastic kernel and examples/elastic-demo.ipynb.
# The kernelspec goes to a private prefix (build/lab), not the venv's: the venv's is on every Jupyter path, and
# make test's kernelspec listings must not see it. LAB_PORT (default 8888) and LAB_TOKEN (default: random).
set -euo pipefail

VENV=${VENV:-.venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${LAB_PORT:-8888}
TOKEN=${LAB_TOKEN:-$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))')}

PREFIX="$ROOT/build/lab"

"$VENV/bin/elastic-proxy" install --prefix "$PREFIX"
export JUPYTER_PATH="$PREFIX/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"

extra=()
if [ "$(id -u)" -eq 0 ]; then
    extra+=(--allow-root)
fi
echo "Open http://127.0.0.1:$PORT/lab/tree/elastic-demo.ipynb?token=$TOKEN (Ctrl-C stops JupyterLab)"
exec "$VENV/bin/jupyter" lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port="$PORT" \
    --ServerApp.port_retries=0 --IdentityProvider.token="$TOKEN" --ServerApp.root_dir="$ROOT/examples" \
    ${extra[@]+"${extra[@]}"}
