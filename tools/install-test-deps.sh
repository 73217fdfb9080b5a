#!/usr/bin/env bash
# Install the real third-party servers and clients the end-to-end tests drive, when running as root
# on Debian and something is missing. Elsewhere, say what is missing: the tests that need it are then
# skipped with that reason.
#
# What to install lives in tools/test-deps.d/, one file per feature so that features add their needs
# without touching each other's lines:
#   *.apt  Debian package names, one a line ('#' starts a comment)
#   *.sh   extra steps run after the packages (npm tools, Go builds …), each idempotent and quick
#          when already done; a step that cannot run here prints why and exits 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t PKGS < <(cat "$here"/test-deps.d/*.apt | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "tpemu tests: missing ${missing[*]} (install them to run the end-to-end tests; they are skipped otherwise)" >&2
  else
    echo "installing test servers and clients: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Several installs may run at once on a developer machine: wait for dpkg's lock instead of failing.
    apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=900)
    apt-get install "${apt_opts[@]}" "${missing[@]}" >/tmp/tpemu-apt.log 2>&1 || {
      apt-get update -q -o DPkg::Lock::Timeout=900 >>/tmp/tpemu-apt.log 2>&1
      apt-get install "${apt_opts[@]}" "${missing[@]}" >>/tmp/tpemu-apt.log 2>&1 || {
        echo "apt-get install failed; see /tmp/tpemu-apt.log" >&2; tail -5 /tmp/tpemu-apt.log >&2; exit 1; }
    }
  fi
fi
for step in "$here"/test-deps.d/*.sh; do
  [ -e "$step" ] || continue
  bash "$step"
done
