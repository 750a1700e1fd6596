#!/usr/bin/env bash
# The unpack benchmark: a Debian bookworm minimal root filesystem
# (debootstrap --variant=minbase) as a single-layer OCI image (tar+gzip
# layer), unpacked by crated and by Debian's containerd 1.6 on this machine,
# both driven by the stock /usr/bin/ctr.
#
# What is timed: `ctr images import <image>` with unpacking, while the
# image's content is already in the daemon's store (a first
# `import --no-unpack` put it there, and blobs that exist are not written
# again), after `ctr snapshots rm <chain id>` removed the previous run's
# snapshot. So each run is the unpack: read the gzip layer from content,
# decompress, apply onto a new snapshot, commit. (ctr 1.6 has no
# `images unpack`.) Per daemon: RUNS runs (default 5), the median wall
# time, the daemon's CPU time (utime+stime from /proc/<pid>/stat) over the
# run of median wall time, and its peak RSS during the runs (VmHWM, reset
# through /proc/<pid>/clear_refs before the first run).
#
# The root filesystem and the image are built once, cached under
# target/bench-cache/. Daemons run on temporary roots, states and sockets,
# and are stopped by pid; whatever is left mounted under them is unmounted.
# Both daemons run at once and the runs alternate between them, so drift
# over the session weighs on both alike.
# Needs root. Usage: scripts/bench-unpack.sh   (RUNS=n to change the count)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
runs=${RUNS:-5}
cache=$repo/target/bench-cache
mirror=http://deb.debian.org/debian
ctr=/usr/bin/ctr
ref=docker.io/library/debian:bookworm-minbase
ns=bench

[ "$(id -u)" -eq 0 ] || { echo "bench-unpack: needs root (debootstrap, mounts)" >&2; exit 1; }
mkdir -p "$cache"

# 1. The root filesystem.
if [ ! -d "$cache/rootfs" ]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
    if ! curl -fsI --max-time 10 "$mirror/dists/bookworm/Release" >/dev/null 2>&1; then
        # The mirror apt itself uses.
        mirror=$(grep -rhoE '^(deb |URIs: )\s*https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | grep -v security | head -1 | sed -E 's/^(deb |URIs: )\s*//')
    fi
    rm -rf "$cache/rootfs.partial"
    debootstrap --variant=minbase bookworm "$cache/rootfs.partial" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    mv "$cache/rootfs.partial" "$cache/rootfs"
fi

# 2. Binaries: release daemon and plugins; the image packer (debug: its
# gzip and sha256 are optimised in the dev profile too).
cargo build --release --locked -p crated -p crated-plugin-content -p crated-plugin-diff -p crated-plugin-events \
    -p crated-plugin-metadata -p crated-plugin-snapshots -p crated-plugin-transfer -p ctr
cargo build --locked -p crated-tests --example rootfs_image --example stock_config

# 3. The image.
if [ ! -f "$cache/debian-image.tar" ] || ! grep -q "^diff_id=" "$cache/debian-image.info" 2>/dev/null; then
    target/debug/examples/rootfs_image "$cache/rootfs" "$cache/debian-image.tar.partial" "$ref" \
        >"$cache/debian-image.info"
    mv "$cache/debian-image.tar.partial" "$cache/debian-image.tar"
fi

image=$cache/debian-image.tar
info() { sed -n "s/^$1=//p" "$cache/debian-image.info"; }
# One layer: its chain id is its diff id, the uncompressed layer's digest.
chain_id=$(info diff_id)
echo "image: $(info layer_compressed_bytes) bytes compressed layer, $(info layer_bytes) bytes uncompressed," \
    "$(info entries) entries (files, directories, links)" >&2

tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
now() { date +%s.%N; }

tmp=$(mktemp -d /tmp/bench-unpack.XXXXXX)
declare -A pids
cleanup() {
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
    done
    pids=()
    # Deepest first; lazily, so a busy mount does not stop the cleanup.
    awk -v d="$tmp" '$2 ~ "^"d { print $2 }' /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
}
trap 'cleanup; rm -rf "$tmp"' EXIT

# start <name> <socket> <command...>: starts a daemon, waits for its socket.
start() {
    local name=$1 sock=$2
    shift 2
    "$@" >"$tmp/$name.log" 2>&1 &
    pids[$name]=$!
    for _ in $(seq 300); do
        [ -S "$sock" ] && $ctr -a "$sock" version >/dev/null 2>&1 && return 0
        kill -0 "${pids[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name did not start:" >&2
    tail -20 "$tmp/$name.log" >&2
    exit 1
}

# settle <name>: waits (up to 2 minutes) until the garbage collector has
# removed the previous run's snapshot directory (both daemons remove a
# snapshot's files after `snapshots rm` returns), then flushes dirty pages,
# so that no run pays for the previous one.
settle() {
    local dirs
    for _ in $(seq 600); do
        dirs=$(find "$tmp/$1/root" -path '*overlayfs/snapshots/*' -mindepth 1 -maxdepth 4 -type d -prune 2>/dev/null | wc -l)
        [ "$dirs" -eq 0 ] && break
        sleep 0.2
    done
    [ "$dirs" -eq 0 ] || echo "$1: $dirs snapshot directories still there after 2 minutes" >&2
    sync
}

# Both daemons run side by side and the runs alternate between them, so
# whatever drifts over a session (page cache, writeback, the filesystem)
# weighs on both alike.
declare -A socks times cpus wall cpu rss
# A run: which daemon, and which client drives it. "crated+transfer" is our
# ctr, whose import streams the archive to the daemon's transfer plugin and
# unpacks there (the path CRI will take); the others are the stock ctr,
# which unpacks from the client through Diff and Snapshots.
declare -A daemon_of=([crated]=crated [crated+transfer]=crated [containerd]=containerd)
declare -A client_of=([crated]=$ctr [crated+transfer]=$repo/target/release/ctr [containerd]=$ctr)
variants=(crated crated+transfer containerd)
# prepare <name>: the image's content into the daemon, peak RSS reset.
prepare() {
    "$ctr" -a "${socks[$1]}" -n "$ns" images import --no-unpack "$image" >/dev/null
    echo 5 >"/proc/${pids[$1]}/clear_refs"
}
# run_once <variant> <i>: one timed unpack.
run_once() {
    local name=$1 i=$2 d=${daemon_of[$1]}
    local pid=${pids[$d]} c=("${client_of[$name]}" -a "${socks[$d]}" -n "$ns")
    "${c[@]}" snapshots rm "$chain_id" >/dev/null 2>&1 || true
    settle "$d"
    local c0 t0 t1 c1
    c0=$(cpu_ticks "$pid")
    t0=$(now)
    "${c[@]}" images import "$image" >/dev/null
    t1=$(now)
    c1=$(cpu_ticks "$pid")
    "${c[@]}" snapshots ls | grep -q "^$chain_id" || { echo "$name: run $i left no snapshot" >&2; exit 1; }
    times[$name]+="$(echo "$t1 - $t0" | bc -l) "
    cpus[$name]+="$(echo "($c1 - $c0) / $tck" | bc -l) "
    printf '%s run %d: %.3f s wall, %.2f s daemon CPU\n' "$name" "$i" "$(echo "$t1 - $t0" | bc -l)" \
        "$(echo "($c1 - $c0) / $tck" | bc -l)" >&2
}
# summarise <name>: the median run (by wall time), its CPU time, peak RSS.
summarise() {
    local name=$1 t c mid
    read -r -a t <<<"${times[$name]}"
    read -r -a c <<<"${cpus[$name]}"
    mid=$(for i in "${!t[@]}"; do echo "${t[$i]} $i"; done | sort -n | sed -n "$(((runs + 1) / 2))p" | cut -d' ' -f2)
    wall[$name]=${t[$mid]}
    cpu[$name]=${c[$mid]}
    rss[$name]=$(awk '/^VmHWM/ { print $2 }' "/proc/${pids[${daemon_of[$name]}]}/status")
}

# 4. crated: the release daemon with the bundled plugins (without the
# runtime and the garbage collector, which an unpack does not use).
mkdir -p "$tmp/crated/plugins"
cp target/release/libcrated_plugins.so "$tmp/crated/plugins/"
cat >"$tmp/crated/config.toml" <<TOML
version = 2
disabled_plugins = ["io.containerd.gc.v1.scheduler", "io.containerd.runtime.v2.task", "io.containerd.grpc.v1.tasks"]
root = "$tmp/crated/root"
state = "$tmp/crated/state"
plugin_dir = "$tmp/crated/plugins"
[grpc]
address = "$tmp/crated/crated.sock"
[debug]
level = "warn"
TOML
socks[crated]=$tmp/crated/crated.sock
start crated "${socks[crated]}" target/release/crated -c "$tmp/crated/config.toml"

# 5. containerd: Debian's, on the tests' stock layout (CRI disabled).
mkdir -p "$tmp/containerd"
target/debug/examples/stock_config "$tmp/containerd" >"$tmp/containerd/config.toml"
socks[containerd]=$tmp/containerd/c.sock
start containerd "${socks[containerd]}" /usr/bin/containerd -c "$tmp/containerd/config.toml"

# 6. The runs, alternating.
for d in crated containerd; do prepare "$d"; done
for i in $(seq "$runs"); do
    for v in "${variants[@]}"; do run_once "$v" "$i"; done
done
for v in "${variants[@]}"; do summarise "$v"; done
cleanup

printf '\nunpack of %s (%s bytes gzip, %s entries), median of %d runs\n' "$ref" "$(info layer_compressed_bytes)" \
    "$(info entries)" "$runs"
printf '%-22s %10s %12s %14s\n' "daemon (client)" "wall (s)" "CPU (s)" "peak RSS (MiB)"
for v in "${variants[@]}"; do
    printf '%-22s %10.3f %12.2f %14.1f\n' "$v" "${wall[$v]}" "${cpu[$v]}" "$(echo "${rss[$v]} / 1024" | bc -l)"
done
for v in crated crated+transfer; do
    printf '%-22s %10.2f %12.2f %14.2f\n' "$v/containerd" "$(echo "${wall[$v]} / ${wall[containerd]}" | bc -l)" \
        "$(echo "${cpu[$v]} / ${cpu[containerd]}" | bc -l)" "$(echo "${rss[$v]} / ${rss[containerd]}" | bc -l)"
done
echo "(peak RSS: the daemon's over all its runs, so both crated rows show the same)"
