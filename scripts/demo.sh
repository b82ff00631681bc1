#!/usr/bin/env bash
# The README's run command: the seed scenario live on this machine — three coordinators, a Kafka-protocol broker
# (tansu), PostgreSQL clusters A (orders → order_agg), B (users → user_stats) and C (federated `dashboard`), and a
# small workload. Installs what is missing first (like .ci/run), builds, then runs until Ctrl-C
# (pass --seconds N to stop by itself). Everything it starts lives under /tmp and is removed when it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -p coordinator --bin pgtrickle-coordinator -p testkit --bin pgtrickle-demo
(cd pg-extension && cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config)
exec target/release/pgtrickle-demo "$@"   # --backend kafka|nats, --seconds N
