#!/usr/bin/env bash
# Installs what is missing, checks formatting, builds everything (daemon,
# ctr, test plugins), runs the whole test suite in parallel with cargo-nextest,
# and checks that the tests left no shim process, mount or cgroup behind.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo build --workspace --all-targets --examples --locked
before=$(mktemp)
trap 'rm -f "$before"' EXIT
scripts/leak-check.sh record "$before"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
# Nothing the tests started may outlive them: no shim, mount or cgroup.
scripts/leak-check.sh compare "$before"
