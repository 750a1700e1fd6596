#!/usr/bin/env bash
# Installs what is missing, checks formatting, builds everything (daemon,
# ctr, test plugins), and runs the whole test suite in parallel with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo build --workspace --all-targets --examples --locked
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
