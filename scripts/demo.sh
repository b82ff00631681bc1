#!/usr/bin/env bash
# The README's run command. Today it plays the seed scenario through the replicated state machine in memory
# (the coordinator service, the extension and the docker-compose demo arrive with their issues; see
# docs/ARCHITECTURE.md "What exists").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo run --quiet --release -p shared-model --example seed_scenario
