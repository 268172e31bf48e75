#!/usr/bin/env bash
# Installs the system packages vlmops needs from Debian:
#   libcairo2  - cairosvg renders OpenMoji's SVGs
#   chromium   - the dashboard's browser test drives it through Playwright (no browser download)
#   postgresql - the store's Postgres tests start a throwaway server (never left running)
#   strace     - the Ray tests trace every connect() of every Ray process (loopback only)
#   tesseract-ocr - the monitor reads text drawn into kept chat images (prompt injection in pictures)
set -euo pipefail
missing=()
ldconfig -p 2>/dev/null | grep -q 'libcairo\.so\.2' || missing+=(libcairo2)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v strace >/dev/null || missing+=(strace)
command -v tesseract >/dev/null || missing+=(tesseract-ocr)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "vlmops needs: ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
