#!/usr/bin/env bash
# Create the project's virtualenv. Debian's python3 ships without venv/ensurepip
# (package python3-venv); install it when running as root, otherwise say what is missing.
set -euo pipefail
PY=${1:-python3} VENV=${2:-.venv}
command -v "$PY" >/dev/null || { echo "tpemu needs Python 3.11+ ($PY not found)" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "tpemu needs Python 3.11+, $PY is $("$PY" -V 2>&1)" >&2; exit 1; }
if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "installing python$ver-venv (Debian's python3 has no venv module)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$ver-venv" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$ver-venv" >/dev/null; }
  else
    echo "Python's venv module is missing: install python3-venv (apt-get install python3-venv)" >&2; exit 1
  fi
fi
"$PY" -m venv "$VENV"
