#!/usr/bin/env bash
# mypy --strict over the installed package (the strict editable install maps proxy/, agent/,
# auth/ onto tpemu.*; run from outside the checkout so that ./tpemu does not shadow it), plus
# tests/ and bench/; paths are printed as source paths. The cache lives in the checkout: one
# shared /tmp/.mypy_cache mixes several worktrees' editable paths and reports stale modules.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "$root" && cd "${VENV:-.venv}" && pwd)
cd /tmp
"$venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" -p tpemu "$@" 2>&1 \
  | sed -E "s#$root/build/__editable__[^/]*/tpemu/(proxy|agent|auth)/#\1/#; s#$root/build/__editable__[^/]*/tpemu/#tpemu/#"
exit "${PIPESTATUS[0]}"
