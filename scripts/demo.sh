#!/usr/bin/env bash
# The README's main command. On a fresh machine with rustup: builds the bank-account component and
# the host, starts the host on the embedded default (a temporary data directory, loopback ports
# chosen by the OS), deploys bank-account through the admin API and runs a short story through the
# gateway with the CLI, printing every answer; then stops the host with SIGTERM (graceful).
#
# `scripts/demo.sh --in-process` runs the older runtime-only demo instead (no HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
cargo build --profile guest --target wasm32-wasip2 -p bank-account
cargo build --release -p aggregate-host
BIN=target/release/aggregate-host
WASM=target/wasm32-wasip2/guest/bank_account.wasm

if [ "${1:-}" = "--in-process" ]; then
  shift
  exec "$BIN" demo --component "$WASM" "$@"
fi

DATA=$(mktemp -d)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "starting the host (embedded event log in $DATA)"
AGGREGATE_DATA_DIR="$DATA" AGGREGATE_GATEWAY_LISTEN=127.0.0.1:0 AGGREGATE_ADMIN_LISTEN=127.0.0.1:0 \
  RUST_LOG="${RUST_LOG:-info,fjall=warn,lsm_tree=warn}" \
  "$BIN" serve >"$DATA/stdout" 2>"$DATA/host.log" &
PID=$!
for _ in $(seq 1 600); do
  grep -q '^listening ' "$DATA/stdout" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$DATA/host.log"; exit 1; }
  sleep 0.1
done
LINE=$(grep '^listening ' "$DATA/stdout")
echo "$LINE"
export AGGREGATE_GATEWAY_URL=${LINE#*gateway=}; AGGREGATE_GATEWAY_URL=${AGGREGATE_GATEWAY_URL%% *}
export AGGREGATE_ADMIN_URL=${LINE#*admin=}
"$BIN" health >/dev/null

step "deploy bank-account (PUT /admin/aggregates/bank-account/component)"
"$BIN" deploy bank-account "$WASM"

step "open an account for Ada (a new aggregate id)"
OPENED=$("$BIN" send bank-account new '{"type": "open", "owner": "Ada"}' --correlation-id demo-1)
echo "$OPENED"
ID=$(printf '%s\n' "$OPENED" | sed -n 's/^  "aggregate_id": "\(.*\)",$/\1/p')

send() {
  step "$1"
  "$BIN" send bank-account "$ID" "$2" --correlation-id demo-1 || echo "(refused, as the aggregate decided)"
}
send "deposit 100" '{"type": "deposit", "amount": 100}'
send "withdraw 30" '{"type": "withdraw", "amount": 30}'
send "withdraw 500: more than the balance" '{"type": "withdraw", "amount": 500}'
send "deposit -1: not a valid amount" '{"type": "deposit", "amount": -1}'
send "deposit 12" '{"type": "deposit", "amount": 12}'

step "state (GET /aggregates/bank-account/$ID)"
"$BIN" state bank-account "$ID"

step "events after version 2 (GET /aggregates/bank-account/$ID/events?after=2)"
"$BIN" events bank-account "$ID" --after 2

step "stopping the host (SIGTERM: finish in-flight commands, flush, exit)"
kill -TERM "$PID"
wait "$PID"
PID=
grep -E 'shutting down|stopped' "$DATA/host.log" | sed 's/\x1b\[[0-9;]*m//g'
