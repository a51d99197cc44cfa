#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine: system packages, a virtualenv, pinned Python packages.
#   bash scripts/setup.sh         # to serve:  ffmpeg + requirements.txt
#   bash scripts/setup.sh --dev   # to test:   + espeak-ng (test speech), chromium (browser test),
#                                 #            redis-server (scale-out tests start their own on loopback),
#                                 #            nodejs (the guides' JavaScript example)
#                                 #            + requirements-dev.txt
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

packages=(ffmpeg)  # command[:Debian package], where the two names differ
[ "$dev" = 1 ] && packages+=(espeak-ng chromium redis-server node:nodejs)
missing=()
for entry in "${packages[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "setup: please install ${missing[*]} (no root and no sudo here)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
requirements=requirements.txt
[ "$dev" = 1 ] && requirements=requirements-dev.txt
echo "setup: installing $requirements into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "setup: done"
