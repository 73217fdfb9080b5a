#!/usr/bin/env bash
# kubectl for the Kubernetes access tests (tests/e2e/test_kube_access.py). Debian's own
# kubernetes-client is 1.20, too old for the WebSocket exec protocol the tests check, so a kubectl
# already on the machine is used (kubectl 1.32 here, from the machine's configured repositories);
# when none is there, try the package 'kubectl' from whatever repositories apt knows, else say why.
set -u
if command -v kubectl >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-cache show kubectl >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=900 kubectl \
    >/tmp/tpemu-apt-kubectl.log 2>&1 && exit 0
fi
echo "tpemu tests: kubectl is not installed and no apt repository here has it; the kubectl tests are skipped" >&2
exit 0
