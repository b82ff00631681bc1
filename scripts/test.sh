#!/usr/bin/env bash
# The project's test command (README): formatting, lints, then every test of the workspace.
# Servers that later tests need are started here on free 127.0.0.1 ports and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# RAFT_STORE_CRASH_ITERATIONS: SIGKILL iterations of the raft-store crash test (>= 50 required).
set +e
RAFT_STORE_CRASH_ITERATIONS="${RAFT_STORE_CRASH_ITERATIONS:-60}" cargo test --workspace --locked --all-targets 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' target/test-output.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' target/test-output.log | awk '{s+=$1} END {print s+0}')
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
