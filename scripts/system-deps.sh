#!/usr/bin/env bash
# Installs the system libraries vlmops needs: libcairo2 (cairosvg renders OpenMoji's SVGs).
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libcairo\.so\.2'; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "vlmops needs the cairo library (libcairo2); install it with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq libcairo2 >/dev/null
