#!/usr/bin/env bash
# The coordinator at a federation's size: three release-build nodes on loopback, CLUSTERS x STREAMS published
# streams under batched frontier advances; prints one JSON line per measurement (benches/src/bin/scale.rs).
# Then the same measurements of etcd 3.4 holding one key per stream (benches/src/bin/etcd_scale.rs).
#
#   bash benches/scale.sh [CLUSTERS] [STREAMS] [DOWN_SECS] [WATCHERS]     (default 1000 100 60 1000,10000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coordinator --bin pgtrickle-coordinator
cargo build --release -q -p benches --bin scale --bin etcd_scale
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 2; }
D=$(mktemp -d -p target scale-XXXXXX)
trap 'rm -rf "$D"' EXIT
target/release/scale --bin target/release/pgtrickle-coordinator --dir "$D" \
  --clusters "${1:-1000}" --streams "${2:-100}" --down-secs "${3:-60}" --watchers "${4:-1000,10000}"
rm -rf "${D:?}"/*
target/release/etcd_scale --dir "$D" \
  --clusters "${1:-1000}" --streams "${2:-100}" --down-secs "${3:-60}" --watchers "${4:-1000,10000}"
