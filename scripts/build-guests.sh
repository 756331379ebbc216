#!/usr/bin/env bash
# Builds every example guest from source, in every language, with toolchains installed inside the
# project (scripts/toolchains.sh runs first; safe to run twice):
#   Rust:            bank-account, bank-account-v2, hostile, forbidden-import → target/guests/wasm32-wasip2/guest/
#   Go, JS, Python:  bank-account-<lang>, hostile-<lang> → target/guests/polyglot/ (via `aggregate-host build`)
#   JS:              forbidden-http-js (componentize-js with `http` on: imports wasi:http, which the
#                    host must refuse before compiling) → target/guests/polyglot/forbidden_http_js.wasm
# Usage: scripts/build-guests.sh [--no-toolchains]
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

if [ "${1:-}" != "--no-toolchains" ]; then
  bash scripts/toolchains.sh --no-nats
fi

step "Rust guests (cargo, wasm32-wasip2, profile guest)"
cargo build -q --target wasm32-wasip2 --profile guest --target-dir target/guests \
  -p bank-account -p bank-account-v2 -p hostile -p forbidden-import

step "aggregate-host (for its build subcommand)"
cargo build -q -p aggregate-host
host=target/debug/aggregate-host

out=target/guests/polyglot
mkdir -p "$out"
for lang in go js python; do
  for example in bank-account hostile; do
    dir="example-aggregates/$example-$lang"
    step "$dir"
    "$host" build "$dir" -o "$out/${example//-/_}_$lang.wasm"
  done
done
step "example-aggregates/forbidden-http-js (http feature on)"
node guest-sdk/js/build.mjs example-aggregates/forbidden-http-js/aggregate.js \
  "$out/forbidden_http_js.wasm" --keep-feature http
ls -l target/guests/wasm32-wasip2/guest/*.wasm "$out"/*.wasm
