#!/usr/bin/env bash
# Build the example component and the host, then run the demo on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2
cargo build --profile guest --target wasm32-wasip2 -p bank-account
cargo run --release -p aggregate-host -- demo --component target/wasm32-wasip2/guest/bank_account.wasm "$@"
