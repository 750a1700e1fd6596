#!/usr/bin/env bash
# What the test suite must not leave behind: shim and plugin host processes, mounts under
# the temporary directory, and cgroups. `leak-check.sh record FILE` notes
# what exists before the suite; `leak-check.sh compare FILE` lists what is
# new after it and fails if anything is. It only reports: it never kills or
# unmounts (what it finds is someone's bug to fix, not to hide).
set -euo pipefail

state() {
    # Shim and plugin host processes, by pid and command line.
    for p in /proc/[0-9]*; do
        cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null || true)
        case "$cmd" in
        *containerd-shim* | *"crated plugin-host"*) echo "process ${p#/proc/} $cmd" ;;
        esac
    done
    # Mounts under the temporary directory, where every test root lives.
    awk -v tmp="${TMPDIR:-/tmp}" '$5 ~ "^" tmp "/" { print "mount " $5 }' /proc/self/mountinfo
    # Containers' cgroups, containerd's /<namespace>/<id> in each hierarchy
    # (runc leaves the namespace level, as it does under containerd).
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d 2>/dev/null
    else
        find /sys/fs/cgroup/*/ -mindepth 2 -maxdepth 2 -type d 2>/dev/null
    fi | { grep -v '/process_api/' || true; } | sed 's|//*|/|g; s/^/cgroup /'
}

case "${1:-}" in
record) state | sort -u >"$2" ;;
compare)
    new=$(comm -13 "$2" <(state | sort -u))
    if [ -n "$new" ]; then
        echo "leak check: the test suite left these behind:" >&2
        echo "$new" >&2
        exit 1
    fi
    echo "leak check: no shim process, mount or cgroup left behind"
    ;;
*)
    echo "usage: $0 record|compare FILE" >&2
    exit 2
    ;;
esac
