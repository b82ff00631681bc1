#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine, skipping what is already there.
set -euo pipefail

need_apt=()
for pkg in build-essential pkg-config curl python3-venv etcd-server protobuf-compiler; do
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
