#!/usr/bin/env bash
# Installs the system packages crated's build and tests need, if missing:
#   protobuf-compiler  protoc, for containerd-client's generated messages
#   runc               the OCI runtime the runtime plugin drives
#   containerd         the stock `ctr` of containerd 1.6, the reference client in tests
#   busybox-static     the binary test images are built from
#   docker-registry    a real registry on 127.0.0.1 for pull/push tests
#   python3-venv       `python3 -m venv` (Debian splits it out), for the venv
#                      with grpcio from PyPI the gRPC client tests make
#   criu               what runc checkpoints and restores with (the checkpoint
#                      tests; on kernels where `criu check` fails they expect
#                      criu's own failure, the same on both daemons)
#   containernetworking-plugins
#                      the real CNI plugins (bridge, host-local, loopback,
#                      portmap in /usr/lib/cni) the CNI library's tests run
#   iptables           what the portmap plugin programs host ports with
# and, outside apt's installed set, Debian's kubectl (kubernetes-client) at
# /opt/crated-test-tools/kubectl: the real SPDY client of the CRI stream
# server's tests. It is extracted, not installed, because the package
# conflicts with other kubectl packages on some machines.
# The packages' own services are not used: tests start what they need on
# temporary sockets and ports.
set -euo pipefail

packages=(protobuf-compiler runc containerd busybox-static docker-registry python3-venv criu containernetworking-plugins iptables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # Never start the packaged daemons (containerd, registry) on install.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        created_policy=1
    fi
    $sudo apt-get update -q || true
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ "$created_policy" -eq 0 ] || $sudo rm -f "$policy"
fi
tools=/opt/crated-test-tools
if [ ! -x "$tools/kubectl" ]; then
    echo "extracting kubectl (kubernetes-client) into $tools" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    tmp=$(mktemp -d)
    # apt's package lists may be missing when every package above was
    # already installed: fetch them once if the download fails.
    (cd "$tmp" && { apt-get download kubernetes-client >/dev/null 2>&1 ||
        { $sudo apt-get update -q >/dev/null && apt-get download kubernetes-client >/dev/null; }; } &&
        dpkg-deb -x kubernetes-client_*.deb root)
    $sudo mkdir -p "$tools"
    $sudo cp "$tmp/root/usr/bin/kubectl" "$tools/kubectl"
    rm -rf "$tmp"
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
