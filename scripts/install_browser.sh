#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests (make test-browser). Idempotent: does nothing when
# /usr/bin/chromium already runs. Playwright drives this binary; no browser is downloaded from elsewhere.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ] && "$CHROMIUM" --headless --no-sandbox --version >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_browser.sh: run as root, or install sudo, to apt-get install chromium" >&2; exit 1; }
    SUDO=sudo
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
"$CHROMIUM" --headless --no-sandbox --version
