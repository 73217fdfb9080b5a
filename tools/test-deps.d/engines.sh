#!/usr/bin/env bash
# mongosh (MongoDB's shell, from npm) for tests/e2e/test_db_engines.py: it drives the embedded
# MongoDB engine (nx-27017) through `tpemu proxy db --tunnel`. Idempotent; without npm it says so
# and the test is skipped with that reason.
set -u
if command -v mongosh >/dev/null 2>&1; then exit 0; fi
if ! command -v npm >/dev/null 2>&1; then
  echo "tpemu tests: npm is absent, so mongosh is not installed (apt-get install npm; the mongosh test is skipped)" >&2
  exit 0
fi
echo "installing mongosh with npm (about 150 MB, ~30 s)" >&2
npm install -g --no-audit --no-fund --loglevel=error mongosh@2 >/tmp/tpemu-npm-mongosh.log 2>&1 || {
  echo "npm install -g mongosh failed (see /tmp/tpemu-npm-mongosh.log); the mongosh test will be skipped" >&2
  tail -3 /tmp/tpemu-npm-mongosh.log >&2
}
exit 0
