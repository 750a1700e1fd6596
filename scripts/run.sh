#!/usr/bin/env bash
# Installs what is missing, builds crated and its plugins, and runs the
# daemon in the foreground on the repo's own config.toml (root, state and
# socket under .local/, the bundled plugins' library copied into
# .local/plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --workspace --locked
mkdir -p .local/plugins
cp target/release/libcrated_plugins.so .local/plugins/
echo "crated: serving on $(pwd)/.local/crated.sock; try: target/release/ctr -a .local/crated.sock plugins ls" >&2
exec target/release/crated -c config.toml "$@"
