#!/usr/bin/env bash
# Builds crated in release and installs it:
#   <prefix>/bin/crated, ctr, containerd-shim-runc-v2 (ours: the runtime
#       looks for the shim next to crated first)
#   <prefix>/lib/crated/plugins/libcrated_plugins.so (the bundled plugins;
#       every *.so in that directory is loaded)
#   /etc/crated/config.toml (only if absent: plugin_dir, root, state)
#   /etc/systemd/system/crated.service (Type=notify, paths of <prefix>)
# all under --destdir if given (for packaging; nothing is started).
#
#   scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--from DIR]
#
# --from takes the binaries from a build directory instead of building
# release (e.g. target/debug, as the tests do).
#
# Then: systemctl daemon-reload && systemctl enable --now crated
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --destdir=*) destdir="${1#*=}"; shift ;;
        --from) out="${2:?--from needs a directory}"; shift 2 ;;
        --from=*) out="${1#*=}"; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in
    /*) ;;
    *) echo "install.sh: --prefix must be absolute: $prefix" >&2; exit 2 ;;
esac

if [ -z "$out" ]; then
    cargo build --release --locked -p crated -p ctr -p crated-shim -p crated-plugins
    out=target/release
fi
bindir="$prefix/bin"
plugindir="$prefix/lib/crated/plugins"
confdir=/etc/crated
unitdir=/etc/systemd/system

install -d "$destdir$bindir" "$destdir$plugindir" "$destdir$confdir" "$destdir$unitdir"
for bin in crated ctr containerd-shim-runc-v2; do
    install -m 0755 "$out/$bin" "$destdir$bindir/$bin"
done
install -m 0644 "$out/libcrated_plugins.so" "$destdir$plugindir/libcrated_plugins.so"

if [ ! -e "$destdir$confdir/config.toml" ]; then
    cat > "$destdir$confdir/config.toml" <<CONFIG
# crated's config (containerd's version 2 format); see \`crated config default\`.
version = 2
root = "/var/lib/crated"
state = "/run/crated"
# Every *.so here is loaded as a plugin library.
plugin_dir = "$plugindir"

[grpc]
address = "/run/containerd/containerd.sock"
CONFIG
fi

sed -e "s#/usr/local/bin/crated#$bindir/crated#" \
    -e "s#/etc/crated/config.toml#$confdir/config.toml#" \
    scripts/crated.service > "$destdir$unitdir/crated.service"
chmod 0644 "$destdir$unitdir/crated.service"

echo "installed crated into $destdir$prefix (plugins: $destdir$plugindir, unit: $destdir$unitdir/crated.service)"
