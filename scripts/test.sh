#!/usr/bin/env bash
# The whole test suite, from a fresh clone. Installs what it needs (safe to run twice):
# the wasm32-wasip2 Rust target, and nats-server for the JetStream tests.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip2 target"
rustup target add wasm32-wasip2

if ! command -v nats-server >/dev/null 2>&1; then
  step "installing nats-server (Debian package) for the JetStream tests"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi
nats-server --version

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace
