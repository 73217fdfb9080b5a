#!/usr/bin/env bash
# Install the real third-party servers and clients the end-to-end tests drive (Debian packages),
# when running as root on Debian and something is missing. Elsewhere, say what is missing: the
# tests that need it are then skipped with that reason.
set -euo pipefail
PKGS=(openssl curl socat openssh-client openssh-server postgresql redis-server redis-tools
      mariadb-server mariadb-client squid tinyproxy haproxy)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "tpemu tests: missing ${missing[*]} (install them to run the end-to-end tests; they are skipped otherwise)" >&2
  exit 0
fi
echo "installing test servers and clients: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/tpemu-apt.log 2>&1 || {
  apt-get update -q >>/tmp/tpemu-apt.log 2>&1
  apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/tpemu-apt.log 2>&1 || {
    echo "apt-get install failed; see /tmp/tpemu-apt.log" >&2; tail -5 /tmp/tpemu-apt.log >&2; exit 1; }
}
