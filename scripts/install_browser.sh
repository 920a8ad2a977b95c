#!/usr/bin/env bash
# Installs Debian's Chromium for the report's browser test (no browser download of its own).
# Idempotent: does nothing when a Chromium is already there. Needs root or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${MTFORGET_CHROMIUM:-}" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
