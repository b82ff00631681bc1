#!/usr/bin/env bash
# The project's test command (README): formatting, lints, then every test of the workspace.
# Servers that later tests need are started here on free 127.0.0.1 ports and stopped on exit.
set -uo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check || exit 1
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings || exit 1
mkdir -p target
echo "== cargo test"
# RAFT_STORE_CRASH_ITERATIONS: SIGKILL iterations of the raft-store crash test (>= 50 required).
: > target/test-output.log
status=0
# 1. The extension's own tests run inside PostgreSQL 15 (as the postgres user; initdb refuses root).
PGX_DATA="${PGX_DATA:-/tmp/pgtrickle-pgx-data}"
install -d -o postgres -g postgres -m 700 "$PGX_DATA"
echo "== cargo pgrx test (pg-extension)"
(cd pg-extension && cargo pgrx test pg15 --runas postgres --pgdata "$PGX_DATA") 2>&1 | tee -a target/test-output.log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# 2. Install the real build for the tests that start their own servers (testkit).
echo "== cargo pgrx install (pg-extension)"
(cd pg-extension && cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config) > target/pgrx-install.log 2>&1 \
  || { tail -30 target/pgrx-install.log; status=1; }
# 3. Everything else.
RAFT_STORE_CRASH_ITERATIONS="${RAFT_STORE_CRASH_ITERATIONS:-60}" \
  cargo test --workspace --exclude pg_trickle --locked --all-targets --no-fail-fast 2>&1 | tee -a target/test-output.log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' target/test-output.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' target/test-output.log | awk '{s+=$1} END {print s+0}')
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
