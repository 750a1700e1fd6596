#!/usr/bin/env bash
# Installs what is missing, checks formatting, builds everything (daemon,
# ctr, test plugins), runs the whole test suite in parallel with cargo-nextest,
# checks that the tests left no shim process, mount or cgroup behind, and
# runs the benchmark harness's smoke run (scripts/bench.py --smoke).
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
# The benchmark harness still works (one run of its cheap scenarios, tiny
# sizes, on the debug build just made; no timing is checked), and it too
# leaves nothing behind.
scripts/bench.py --smoke --profile debug
scripts/leak-check.sh compare "$before"
