#!/usr/bin/env bash
# Three coordinator nodes vs a three-member etcd cluster on loopback, driven by the same Rust load generator
# (benches/src/bin/loadgen.rs) with the same value size: committed writes/s and p50/p99 at 1, 16 and 64 clients,
# plus the floor (loopback RTT, fdatasync) measured in the same run.
#
#   bash benches/coordinator_vs_etcd.sh [SECONDS_PER_RUN]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-10}"
command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 2; }
cargo build --release -q -p coordinator --bin pgtrickle-coordinator
cargo build --release -q -p benches --bin loadgen
BIN=target/release/pgtrickle-coordinator
LOADGEN=target/release/loadgen
D=$(mktemp -d -p target bench-XXXXXX)
D=$(cd "$D" && pwd)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# etcd: three members.
declare -a EC EP
for i in 1 2 3; do EC[$i]=$(port); EP[$i]=$(port); done
CLUSTER="e1=http://127.0.0.1:${EP[1]},e2=http://127.0.0.1:${EP[2]},e3=http://127.0.0.1:${EP[3]}"
for i in 1 2 3; do
  etcd --name e$i --data-dir "$D/e$i" \
    --listen-client-urls http://127.0.0.1:${EC[$i]} --advertise-client-urls http://127.0.0.1:${EC[$i]} \
    --listen-peer-urls http://127.0.0.1:${EP[$i]} --initial-advertise-peer-urls http://127.0.0.1:${EP[$i]} \
    --initial-cluster "$CLUSTER" --initial-cluster-token bench --initial-cluster-state new > "$D/e$i.log" 2>&1 &
  PIDS+=($!)
done
ETCD="http://127.0.0.1:${EC[1]},http://127.0.0.1:${EC[2]},http://127.0.0.1:${EC[3]}"

# coordinator: three nodes.
declare -a CP
for i in 1 2 3; do CP[$i]=$(port); done
PEERS="1=127.0.0.1:${CP[1]},2=127.0.0.1:${CP[2]},3=127.0.0.1:${CP[3]}"
for i in 1 2 3; do
  RUST_LOG=warn $BIN serve --id $i --listen 127.0.0.1:${CP[$i]} --data-dir "$D/c$i" --peers "$PEERS" --token bench > "$D/c$i.log" 2>&1 &
  PIDS+=($!)
done
COORD="http://127.0.0.1:${CP[1]},127.0.0.1:${CP[2]},127.0.0.1:${CP[3]}"
sleep 1
$BIN --endpoints "$COORD" --token bench init > /dev/null
sleep 1

VALUE=$($LOADGEN coordinator --endpoints "$COORD" --token bench --clients 1 --seconds 0.5 --run warm | python3 -c 'import json,sys; print(json.load(sys.stdin)["value_bytes"])')
$LOADGEN etcd --endpoints "$ETCD" --clients 1 --seconds 0.5 --value-size "$VALUE" > /dev/null

FLOOR=$($LOADGEN floor --dir "$D/floor")
echo "$FLOOR"
RESULTS=()
for c in 1 16 64; do
  RESULTS+=("$($LOADGEN coordinator --endpoints "$COORD" --token bench --clients $c --seconds "$SECONDS_PER_RUN" --run "c$c")")
  echo "${RESULTS[-1]}"
  RESULTS+=("$($LOADGEN etcd --endpoints "$ETCD" --clients $c --seconds "$SECONDS_PER_RUN" --value-size "$VALUE")")
  echo "${RESULTS[-1]}"
done
printf '%s\n' "$FLOOR" "${RESULTS[@]}" | python3 benches/etcd_report.py
