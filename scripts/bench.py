#!/usr/bin/env python3
"""The benchmarks of issue 10: crated against Debian's containerd 1.6, side by side.

One command runs every scenario on both daemons in one run, alternating the
two (crated, then containerd, run after run, so that whatever drifts over a
session weighs on both alike), several runs each, and prints per scenario the
median, the spread (min-max) and the ratio crated/containerd with its target.
The raw results go to target/bench/results.json and a plot of the ratios
against their targets to target/bench/ratios.svg. BENCHMARKS.md describes
each scenario and what bounds it.

Everything runs on temporary roots, states and sockets under one temporary
directory (never /run/containerd or /var/lib/containerd); containers run in
namespaces of the bench's own, with runc's state under that directory.
Whatever the bench started is stopped by its pid, whatever it mounted there is
unmounted, and the cgroups of its namespaces are removed, even on failure.

Needs root (mounts, containers). Python 3 standard library only.

    scripts/bench.py                   every default scenario, 5 runs each
    scripts/bench.py --runs 3 --only cold_start,idle_memory
    scripts/bench.py --smoke           1 run of the cheap scenarios, tiny sizes
    scripts/bench.py --build           cargo build --release ... first
"""

import argparse
import concurrent.futures
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STOCK_CTR = "/usr/bin/ctr"
CONTAINERD = "/usr/bin/containerd"
GO_SHIM = "/usr/bin/containerd-shim-runc-v2"
REGISTRY = "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"
BUSYBOX_LINKS = ("sh", "echo", "sleep", "true")
BUSYBOX_REF = "docker.io/library/busybox:latest"
# The CRI scenario's image: busybox sleeping forever, as sandbox and container image.
PAUSE_REF = "docker.io/crated-bench/pause:1"
CRI = "io.containerd.grpc.v1.cri"
DEBIAN_REF = "docker.io/library/debian:bookworm-minbase"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The bench's own namespaces: one per daemon, because cgroups
# (/<namespace>/<id>) are shared by the whole machine and both daemons run
# containers at once.
NS_PREFIX = "crated-bench-"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
# A generous bound against a hang, never a measurement.
TIMEOUT = 600


class Skip(Exception):
    """A scenario that cannot run on this machine (said why, not a failure)."""


class BenchError(Exception):
    """A scenario that failed."""


# ---------------------------------------------------------------- processes


def run(cmd, *, check=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, env=None):
    """Runs `cmd` to completion, output captured; raises BenchError on failure."""
    try:
        p = subprocess.run(
            [str(c) for c in cmd], stdin=stdin, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(map(str, cmd))}: no answer within {timeout} s") from e
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} exited with {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def client_env():
    """The environment of a ctr: no namespace or address from the caller's."""
    env = dict(os.environ)
    for k in ("CONTAINERD_NAMESPACE", "CONTAINERD_ADDRESS", "CONTAINERD_SNAPSHOTTER"):
        env.pop(k, None)
    return env


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def pids_with_arg_pair(flag, value):
    """Live processes whose command line holds `flag value`: the shims a
    daemon started name its socket with `-address <socket>`."""
    needle = b"\0" + flag.encode() + b"\0" + str(value).encode() + b"\0"
    found = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            cmd = cmdline(int(e))
            # A zombie has an empty command line: it runs nothing.
            if cmd and needle in b"\0" + cmd:
                found.append(int(e))
    return sorted(found)


def memory_of(pid):
    """RSS and PSS (kB) from /proc/<pid>/smaps_rollup, and the thread count."""
    mem = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Pss"):
                mem[k.lower()] = int(v.split()[0])
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                mem["threads"] = int(line.split()[1])
    return mem


def memory_by_mapping(pid):
    """Rss and Pss (kB) per mapped file of /proc/<pid>/smaps (by base name),
    anonymous mappings summed under "[anon]"."""
    header = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
    per = {}
    current = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if header.match(line):
                fields = line.split(None, 5)
                path = fields[5].strip() if len(fields) > 5 else ""
                current = os.path.basename(path) if path.startswith("/") else "[anon]"
                per.setdefault(current, {"rss": 0, "pss": 0})
            elif current and (line.startswith("Rss:") or line.startswith("Pss:")):
                per[current][line[:3].lower()] += int(line.split()[1])
    return per


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def stop_pid(pid, grace=15):
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_child(p, grace=15):
    """Stops a child process of ours (a Popen): SIGTERM, SIGKILL after
    `grace` seconds, then reaped (a zombie still answers kill -0)."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def mounts_under(directory):
    prefix = str(directory).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f]
    return [m for m in points if m.startswith(prefix)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- daemons


class Daemon:
    """A crated or a containerd on its own directory under the bench's
    temporary directory, driven by the stock ctr (or ours)."""

    def __init__(self, bench, kind, name, log_level="warn", cri=None):
        """`cri`: a function of the daemon giving the CRI plugin's config
        tables; containerd's CRI plugin is disabled unless it is given."""
        self.bench, self.kind, self.name = bench, kind, name
        self.dir = bench.tmp / name
        self.log_level = log_level
        self.proc = None
        self.ns = NS_PREFIX + kind
        self.runc_root = self.dir / "runc"
        self.dir.mkdir(parents=True)
        if kind == "crated":
            self.socket = self.dir / "crated.sock"
            self.config = self.dir / "config.toml"
            self.config.write_text(
                "version = 2\n"
                f'root = "{self.dir}/root"\n'
                f'state = "{self.dir}/state"\n'
                f'plugin_dir = "{bench.plugin_dir}"\n'
                f'[grpc]\naddress = "{self.socket}"\n'
                f'[debug]\nlevel = "{log_level}"\n'
                + (cri(self) if cri else "")
            )
            self.cmd = [bench.bin("crated"), "-c", self.config]
        else:
            # The test suite's stock layout (tests/src/stock.rs): root,
            # state and sockets under the directory, CRI disabled.
            self.socket = self.dir / "c.sock"
            self.config = self.dir / "config.toml"
            text = run([bench.bin("examples/stock_config"), self.dir]).stdout
            if cri:
                text = text.replace(f'disabled_plugins = ["{CRI}"]', "disabled_plugins = []") + cri(self)
            self.config.write_text(text)
            self.cmd = [CONTAINERD, "-c", self.config, "--log-level", log_level]
        self.log = self.dir / "daemon.log"
        bench.daemons.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        """Starts the daemon; returns the seconds until `ctr version` first succeeded."""
        with open(self.log, "ab") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                [str(c) for c in self.cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = t0 + 60
        while True:
            if self.socket.exists():
                p = subprocess.run(
                    [STOCK_CTR, "-a", str(self.socket), "version"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    env=client_env(),
                )
                if p.returncode == 0:
                    return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before answering:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not answer `ctr version` within 60 s:\n{self.log_tail()}")
            time.sleep(0.001)

    def stop(self):
        """Kills its containers' shims, stops the daemon, unmounts what is
        left under its directory."""
        for pid in self.shims():
            stop_pid(pid, grace=0)
        if self.runc_root.exists():
            p = run(["runc", "--root", self.runc_root, "list", "-q"], check=False)
            for cid in p.stdout.split():
                run(["runc", "--root", self.runc_root, "delete", "--force", cid], check=False)
        if self.proc is not None:
            stop_child(self.proc)
        for m in reversed(mounts_under(self.dir)):
            run(["umount", "-l", m], check=False)

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def shims(self):
        return pids_with_arg_pair("-address", self.socket)

    def ctr(self, *args, ours=False, check=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT, ns=None):
        client = self.bench.bin("ctr") if ours else STOCK_CTR
        cmd = [client, "-a", self.socket, "-n", ns or self.ns, *args]
        return run(cmd, check=check, stdin=stdin, timeout=timeout, env=client_env())

    def snapshot_dirs(self):
        d = self.dir / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
        return list(d.iterdir()) if d.exists() else []

    def settle(self):
        """Waits (up to 2 minutes) until the collector removed every overlay
        snapshot directory, then flushes dirty pages: no run pays for the
        previous one."""
        deadline = time.monotonic() + 120
        while self.snapshot_dirs() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.sync()

    def collect(self, ns=None):
        """A garbage collection, synchronously (as the gc tests trigger it)."""
        lease = f"gc-trigger-{time.monotonic_ns()}"
        self.ctr("leases", "create", "--id", lease, ns=ns)
        self.ctr("leases", "rm", "--sync", lease, ns=ns)


# ---------------------------------------------------------------- results


class Row:
    """One measured quantity of a scenario: values per variant (crated,
    containerd, ...), and the ratios to print, some with a target."""

    def __init__(self, metric, unit, variants, ratios=(("crated", "containerd", None, "lower"),), digits=1, short=None):
        self.metric, self.unit, self.digits = metric, unit, digits
        # The row's name in the plot.
        self.short = short or metric
        self.values = {v: [] for v in variants}
        # (numerator, denominator, target or None, "lower"|"higher" is better)
        self.ratios = list(ratios)

    def add(self, variant, value):
        self.values[variant].append(value)

    def ratio(self, num, den):
        a, b = self.values.get(num), self.values.get(den)
        if not a or not b or statistics.median(b) == 0:
            return None
        return statistics.median(a) / statistics.median(b)

    def to_json(self):
        out = {"metric": self.metric, "short": self.short, "unit": self.unit, "values": self.values, "summary": {}, "ratios": []}
        for v, xs in self.values.items():
            if xs:
                out["summary"][v] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}
        for num, den, target, better in self.ratios:
            r = self.ratio(num, den)
            met = None
            if r is not None and target is not None:
                met = r <= target if better == "lower" else r >= target
            out["ratios"].append(
                {"of": num, "to": den, "ratio": r, "target": target, "better": better, "met": met}
            )
        return out

    def print(self):
        print(f"  {self.metric} ({self.unit})")
        for v, xs in self.values.items():
            if xs:
                d = self.digits
                spread = f"{min(xs):.{d}f}-{max(xs):.{d}f}" if len(xs) > 1 else "1 run"
                print(f"    {v:<32} {statistics.median(xs):>12.{d}f}   ({spread})")
        for num, den, target, better in self.ratios:
            r = self.ratio(num, den)
            if r is None:
                continue
            line = f"    ratio {num}/{den}"
            line = f"{line:<37}{r:>12.2f}"
            if target is not None:
                ok = r <= target if better == "lower" else r >= target
                sign = "<=" if better == "lower" else ">="
                line += f"   target {sign} {target}: {'met' if ok else 'MISSED'}"
            print(line)


# ---------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.runs = 1 if args.smoke else args.runs
        self.target_dir = Path(args.target_dir).resolve() if args.target_dir else REPO / "target"
        self.bin_dir = self.target_dir / args.profile
        self.out_dir = Path(args.out_dir).resolve() if args.out_dir else REPO / "target" / "bench"
        self.cache = Path(args.cache_dir).resolve() if args.cache_dir else REPO / "target" / "bench-cache"
        self.tmp = Path(tempfile.mkdtemp(prefix="crated-bench-"))
        self.daemons = []
        self.others = []  # other processes the bench started (the registry)
        self.plugin_dir = self.tmp / "plugins"
        self._busybox = None
        self._debian = None

    def bin(self, name):
        return self.bin_dir / name

    def log(self, msg):
        print(msg, file=sys.stderr, flush=True)

    def check_binaries(self):
        needed = ["crated", "ctr", "containerd-shim-runc-v2", "examples/stock_config", "examples/rootfs_image"]
        missing = [str(self.bin(n)) for n in needed if not self.bin(n).exists()]
        # The bundled plugins' library (plugins/bundle); stale per-plugin
        # libraries of older builds in the same directory are not loaded.
        libs = sorted(self.bin_dir.glob("libcrated_plugins.so"))
        if not libs:
            missing.append(str(self.bin_dir / "libcrated_plugins.so"))
        missing += [path for path in (STOCK_CTR, CONTAINERD, GO_SHIM, BUSYBOX) if not os.path.exists(path)]
        if not shutil.which("runc"):
            missing.append("runc")
        if missing:
            build = "cargo build --release --workspace --lib --bins --examples --locked"
            raise SystemExit(
                "bench: missing " + ", ".join(missing) + f"\n(run scripts/install-deps.sh, and `{build}` or --build)"
            )
        self.plugin_dir.mkdir()
        for so in libs:
            shutil.copy2(so, self.plugin_dir / so.name)
        # Freshly copied pages are dirty in the page cache until written
        # back, and smaps then counts the library's text as private dirty.
        os.sync()
        return [so.name for so in libs]

    def pair(self, label, log_level="warn"):
        """A crated and a containerd, both started."""
        pair = {k: Daemon(self, k, f"{k}-{label}", log_level) for k in ("crated", "containerd")}
        for d in pair.values():
            d.start()
        return pair

    def stop(self, daemons):
        for d in daemons:
            d.stop()

    # -- images

    def busybox_image(self):
        """An OCI image tar of a busybox root filesystem (/bin/busybox and
        links), packed by the tests' rootfs_image example."""
        if self._busybox is None:
            rootfs = self.tmp / "busybox-rootfs"
            (rootfs / "bin").mkdir(parents=True)
            shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
            for link in BUSYBOX_LINKS:
                os.symlink("busybox", rootfs / "bin" / link)
            for d in ("etc", "proc", "sys", "dev", "tmp"):
                (rootfs / d).mkdir()
            tar = self.tmp / "busybox-image.tar"
            info = run([self.bin("examples/rootfs_image"), rootfs, tar, BUSYBOX_REF]).stdout
            self._busybox = (tar, BUSYBOX_REF, parse_info(info))
        return self._busybox

    def pause_image(self):
        """The busybox root filesystem as an image whose command sleeps
        forever: the CRI scenario's sandbox image and container image."""
        tar = self.tmp / "pause-image.tar"
        if not tar.exists():
            self.busybox_image()
            run([self.bin("examples/rootfs_image"), self.tmp / "busybox-rootfs", tar, PAUSE_REF,
                 "/bin/sleep", "1000000000"])
        return tar, PAUSE_REF

    def debian_image(self):
        """The Debian bookworm minbase root filesystem (debootstrap, cached)
        as a one-layer gzip OCI image tar, as scripts/bench-unpack.sh makes it.
        Raises Skip when it cannot be built here."""
        if self._debian is not None:
            return self._debian
        rootfs = self.cache / "rootfs"
        tar, info_file = self.cache / "debian-image.tar", self.cache / "debian-image.info"
        if not rootfs.is_dir():
            if not shutil.which("debootstrap"):
                raise Skip("debootstrap is not installed (apt-get install debootstrap) and no cached rootfs in "
                           f"{rootfs}")
            mirror = os.environ.get("BENCH_DEBIAN_MIRROR", DEBIAN_MIRROR)
            partial = self.cache / "rootfs.partial"
            shutil.rmtree(partial, ignore_errors=True)
            self.cache.mkdir(parents=True, exist_ok=True)
            self.log(f"building the Debian rootfs with debootstrap from {mirror} (once, cached in {self.cache})")
            p = run(["debootstrap", "--variant=minbase", "bookworm", partial, mirror], check=False, timeout=1800)
            if p.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True)
                tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-5:])
                raise Skip(f"debootstrap failed (no network or no mirror?):\n{tail}")
            partial.rename(rootfs)
        if not tar.exists() or "diff_id=" not in (info_file.read_text() if info_file.exists() else ""):
            partial = self.cache / "debian-image.tar.partial"
            info = run([self.bin("examples/rootfs_image"), rootfs, partial, DEBIAN_REF], timeout=1800).stdout
            info_file.write_text(info)
            partial.rename(tar)
        self._debian = (tar, DEBIAN_REF, parse_info(info_file.read_text()))
        return self._debian

    def large_image(self):
        """The image of the import and pull scenarios: Debian, or busybox in a smoke run."""
        if self.smoke:
            return self.busybox_image()
        return self.debian_image()

    # -- clean-up

    def cleanup(self):
        for d in self.daemons:
            try:
                d.stop()
            except Exception as e:  # noqa: BLE001 - the rest of the clean-up must run
                self.log(f"bench: stopping {d.name}: {e}")
        for p in self.others:
            stop_child(p, grace=5)
        for m in reversed(mounts_under(self.tmp)):
            run(["umount", "-l", m], check=False)
        remove_cgroups()
        if not mounts_under(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.log(f"bench: {self.tmp} kept: still mounted under it")


def parse_info(text):
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def remove_cgroups():
    """Removes the cgroups of the bench's namespaces (/<namespace>/<id> and
    the namespace level, which runc leaves), in every hierarchy."""
    root = Path("/sys/fs/cgroup")
    hierarchies = {root} if (root / "cgroup.controllers").exists() else set()
    if not hierarchies and root.is_dir():
        hierarchies = {p.resolve() for p in root.iterdir() if p.is_dir()}
    for h in hierarchies:
        try:
            nss = [p for p in h.iterdir() if p.is_dir() and p.name.startswith(NS_PREFIX)]
        except OSError:
            continue
        for ns in nss:
            for c in [p for p in ns.iterdir() if p.is_dir()]:
                try:
                    c.rmdir()
                except OSError:
                    pass
            try:
                ns.rmdir()
            except OSError:
                pass


# ---------------------------------------------------------------- scenarios

VARIANTS = ("crated", "containerd")


def alternate(bench, runs, variants, one):
    """Calls one(variant, i) for i in 0..runs, variants alternating."""
    for i in range(runs):
        for v in variants:
            one(v, i)


def scenario_cold_start(bench):
    """Start on a fresh root until the first `ctr version` succeeds, every
    bundled plugin library loaded (crated) or every built-in plugin but CRI
    (containerd)."""
    row = Row("start until the first `ctr version` answers", "ms", VARIANTS, [("crated", "containerd", 0.25, "lower")],
              short="cold start")
    version = Row("then one `ctr version` (part of the above)", "ms", VARIANTS, digits=1)
    extra = {}

    def one(kind, i):
        d = Daemon(bench, kind, f"{kind}-cold-{i}")
        try:
            row.add(kind, d.start() * 1000)
            t0 = time.monotonic()
            d.ctr("version")
            version.add(kind, (time.monotonic() - t0) * 1000)
            if i == 0:
                listing = d.ctr("plugins", "ls").stdout.splitlines()[1:]
                status = {}
                for line in listing:
                    cols = line.split()
                    if cols:
                        status[cols[-1]] = status.get(cols[-1], 0) + 1
                extra[f"{kind} plugins by status"] = status
        finally:
            d.stop()

    alternate(bench, bench.runs, VARIANTS, one)
    return [row, version], extra


def scenario_idle_memory(bench):
    """RSS and PSS of a freshly started daemon (all plugins loaded) after it
    answered and sat idle a moment; crated's memory per mapped library."""
    rss = Row("idle RSS", "MiB", VARIANTS, [("crated", "containerd", 0.3, "lower")], short="idle daemon RSS")
    pss = Row("idle PSS", "MiB", VARIANTS, [("crated", "containerd", 0.3, "lower")], short="idle daemon PSS")
    threads = Row("threads", "count", VARIANTS, digits=0)
    per_library = {}

    def one(kind, i):
        d = Daemon(bench, kind, f"{kind}-idle-{i}")
        try:
            d.start()
            time.sleep(0.3 if bench.smoke else 2)
            m = memory_of(d.pid)
            rss.add(kind, m["rss"] / 1024)
            pss.add(kind, m["pss"] / 1024)
            threads.add(kind, m["threads"])
            if kind == "crated":
                for name, v in memory_by_mapping(d.pid).items():
                    per_library.setdefault(name, []).append(v)
        finally:
            d.stop()

    alternate(bench, bench.runs, VARIANTS, one)
    # The median run's figures per library (kB), biggest first.
    libs = {}
    for name, vs in per_library.items():
        libs[name] = {
            "rss_kb": statistics.median(v["rss"] for v in vs),
            "pss_kb": statistics.median(v["pss"] for v in vs),
        }
    libs = dict(sorted(libs.items(), key=lambda kv: -kv[1]["rss_kb"]))
    return [rss, pss, threads], {"crated memory by mapping (kB, median)": libs}


def print_libraries(extra):
    libs = extra.get("crated memory by mapping (kB, median)")
    if not libs:
        return
    print("  crated's memory by mapping (median, MiB): RSS / PSS")
    plugins = {k: v for k, v in libs.items() if k.startswith("libcrated_plugin")}
    for name, v in plugins.items():
        print(f"    {name:<40} {v['rss_kb'] / 1024:>7.2f} / {v['pss_kb'] / 1024:>6.2f}")
    if plugins:
        print(f"    {'(all plugin libraries)':<40} {sum(v['rss_kb'] for v in plugins.values()) / 1024:>7.2f} / "
              f"{sum(v['pss_kb'] for v in plugins.values()) / 1024:>6.2f}")
    for name in ("crated", "[anon]"):
        if name in libs:
            v = libs[name]
            print(f"    {name:<40} {v['rss_kb'] / 1024:>7.2f} / {v['pss_kb'] / 1024:>6.2f}")
    rest = [v for k, v in libs.items() if k not in plugins and k not in ("crated", "[anon]")]
    print(f"    {'(other: libc, ld.so, ...)':<40} {sum(v['rss_kb'] for v in rest) / 1024:>7.2f} / "
          f"{sum(v['pss_kb'] for v in rest) / 1024:>6.2f}")


def runtime_pair(bench, label):
    """A started pair with the busybox image imported into each bench namespace."""
    tar, ref, _ = bench.busybox_image()
    pair = bench.pair(label)
    for d in pair.values():
        d.ctr("images", "import", tar)
    return pair, ref


def scenario_run_rm(bench):
    """`ctr run --rm` of the busybox image running `echo`: the stock ctr on
    both daemons, and the project's ctr on crated."""
    variants = ("crated", "crated (our ctr)", "containerd")
    row = Row("`ctr run --rm <busybox> echo`", "ms", variants,
              [("crated", "containerd", 0.4, "lower"), ("crated (our ctr)", "containerd", None, "lower")],
              short="ctr run --rm")
    pair, ref = runtime_pair(bench, "run")
    try:
        def one(variant, i):
            d = pair["crated" if variant.startswith("crated") else "containerd"]
            cid = f"run-{i}"
            ours = variant == "crated (our ctr)"
            t0 = time.monotonic()
            p = d.ctr("run", "--rm", "--runc-root", d.runc_root, ref, cid, "echo", "hello", ours=ours)
            row.add(variant, (time.monotonic() - t0) * 1000)
            if p.stdout.strip() != "hello":
                raise BenchError(f"{variant}: ctr run printed {p.stdout!r}, not hello")

        alternate(bench, bench.runs, variants, one)
    finally:
        bench.stop(pair.values())
    return [row], {}


def remove_containers(d, ids):
    """Kills and deletes tasks and containers `ids` (8 at a time), then waits
    until their shims are gone."""
    def rm(cid):
        d.ctr("tasks", "rm", "-f", cid, check=False)
        d.ctr("containers", "rm", cid, check=False)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(rm, ids))
    deadline = time.monotonic() + 60
    while d.shims() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = d.ctr("containers", "ls", "-q").stdout.split()
    if left or d.shims():
        raise BenchError(f"{d.name}: left after removing the containers: {left}, shims {d.shims()}")


def scenario_shim_memory(bench):
    """RSS and PSS of the shim of one running container (`sleep`): the
    project's shim (next to crated) against Debian's Go shim."""
    rss = Row("shim RSS", "MiB", VARIANTS, [("crated", "containerd", 0.25, "lower")], digits=2, short="shim RSS")
    pss = Row("shim PSS", "MiB", VARIANTS, [("crated", "containerd", 0.25, "lower")], digits=2, short="shim PSS")
    threads = Row("shim threads", "count", VARIANTS, digits=0)
    pair, ref = runtime_pair(bench, "shim")
    try:
        def one(kind, i):
            d = pair[kind]
            cid = f"shim-{i}"
            d.ctr("run", "-d", "--runc-root", d.runc_root, ref, cid, "sleep", "3600")
            try:
                time.sleep(0.3 if bench.smoke else 1)
                shims = d.shims()
                if len(shims) != 1:
                    raise BenchError(f"{kind}: {len(shims)} shim processes for one container: {shims}")
                m = memory_of(shims[0])
                rss.add(kind, m["rss"] / 1024)
                pss.add(kind, m["pss"] / 1024)
                threads.add(kind, m["threads"])
            finally:
                remove_containers(d, [cid])

        alternate(bench, bench.runs, VARIANTS, one)
    finally:
        bench.stop(pair.values())
    return [rss, pss, threads], {}


def scenario_import(bench):
    """`ctr images import` with unpack of a large real image (Debian minbase,
    one gzip layer), the content already in the store, so each run is the
    unpack: decompress, apply onto a new snapshot, commit (as
    scripts/bench-unpack.sh measures it)."""
    tar, ref, info = bench.large_image()
    chain_id = info["diff_id"]
    variants = ("crated", "crated (our ctr, transfer)", "containerd")
    wall = Row(f"import and unpack of {ref}", "s", variants,
               [("crated", "containerd", 0.3, "lower"), ("crated (our ctr, transfer)", "containerd", None, "lower")],
               digits=3, short="import + unpack")
    cpu = Row("daemon CPU during the import", "s", variants,
              [("crated", "containerd", None, "lower")], digits=2)
    pair = bench.pair("import")
    try:
        for d in pair.values():
            d.ctr("images", "import", "--no-unpack", tar)

        def one(variant, i):
            d = pair["crated" if variant.startswith("crated") else "containerd"]
            ours = variant != "crated" and variant != "containerd"
            d.ctr("snapshots", "rm", chain_id, check=False)
            d.settle()
            c0, t0 = cpu_seconds(d.pid), time.monotonic()
            d.ctr("images", "import", tar, ours=ours)
            wall.add(variant, time.monotonic() - t0)
            cpu.add(variant, cpu_seconds(d.pid) - c0)
            if chain_id not in d.ctr("snapshots", "ls").stdout:
                raise BenchError(f"{variant}: run {i} left no snapshot {chain_id}")

        alternate(bench, bench.runs, variants, one)
    finally:
        bench.stop(pair.values())
    extra = {"image": {"ref": ref, **info}}
    return [wall, cpu], extra


def scenario_ingest(bench):
    """`ctr content ingest` of a blob of random bytes (1 GiB) from a file,
    against the raw fsync'd write rate of the same filesystem (dd); and the
    daemon's CPU seconds per GiB."""
    size = 4 * MIB if bench.smoke else bench.args.ingest_mib * MIB
    variants = ("crated", "containerd", "disk (dd conv=fsync)")
    rate = Row(f"ingest of {size // MIB} MiB", "MB/s", variants,
               [("crated", "containerd", None, "higher"), ("crated", "disk (dd conv=fsync)", 0.8, "higher"),
                ("containerd", "disk (dd conv=fsync)", None, "higher")], short="ingest")
    cpu = Row("daemon CPU per GiB ingested", "s", VARIANTS, [("crated", "containerd", None, "lower")], digits=2)
    blob = bench.tmp / "ingest.bin"
    with open(blob, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
    pair = bench.pair("ingest")
    ns = NS_PREFIX + "ingest"
    try:
        def one(variant, i):
            if variant.startswith("disk"):
                out = bench.tmp / "dd.bin"
                t0 = time.monotonic()
                run(["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={size // MIB}", "conv=fsync"])
                rate.add(variant, size / (time.monotonic() - t0) / 1e6)
                out.unlink()
                os.sync()
                return
            d = pair[variant]
            # A blob of its own per run (the first bytes name the run), so
            # nothing is ever already there.
            with open(blob, "r+b") as f:
                f.write(f"{variant} run {i} {time.time_ns()}".encode().ljust(64))
            with open(blob, "rb") as data:
                c0, t0 = cpu_seconds(d.pid), time.monotonic()
                d.ctr("content", "ingest", "--expected-size", size, f"bench-{i}", stdin=data, ns=ns)
                elapsed = time.monotonic() - t0
            rate.add(variant, size / elapsed / 1e6)
            cpu.add(variant, (cpu_seconds(d.pid) - c0) * (1 << 30) / size)
            # Removed, and collected, before the next run.
            digests = d.ctr("content", "ls", "-q", ns=ns).stdout.split()
            if len(digests) != 1:
                raise BenchError(f"{variant}: {len(digests)} blobs in the store after an ingest")
            d.ctr("content", "rm", *digests, ns=ns)
            d.collect(ns=ns)
            os.sync()

        alternate(bench, bench.runs, variants, one)
    finally:
        bench.stop(pair.values())
        blob.unlink(missing_ok=True)
    return [rate, cpu], {"blob bytes": size}


def scenario_containers(bench):
    """N containers (`ctr run -d ... sleep`) started at once: wall time until
    every `ctr run -d` returned (each returns once its task runs), then the
    memory of the daemon and all shims; then all removed."""
    n = 3 if bench.smoke else bench.args.containers
    time_row = Row(f"{n} concurrent `ctr run -d`", "s", VARIANTS, [("crated", "containerd", 0.5, "lower")], digits=2,
                   short=f"{n} containers: time")
    rss = Row("RSS of daemon + shims", "MiB", VARIANTS, [("crated", "containerd", 0.5, "lower")],
              short=f"{n} containers: RSS")
    pss = Row("PSS of daemon + shims", "MiB", VARIANTS, [("crated", "containerd", 0.5, "lower")],
              short=f"{n} containers: PSS")
    pair, ref = runtime_pair(bench, "many")
    try:
        def one(kind, i):
            d = pair[kind]
            ids = [f"many-{i}-{k}" for k in range(n)]
            try:
                t0 = time.monotonic()
                procs = [
                    subprocess.Popen(
                        [STOCK_CTR, "-a", str(d.socket), "-n", d.ns, "run", "-d", "--runc-root", str(d.runc_root),
                         ref, cid, "sleep", "3600"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=client_env())
                    for cid in ids
                ]
                errors = []
                for cid, p in zip(ids, procs):
                    _, err = p.communicate(timeout=TIMEOUT)
                    if p.returncode != 0:
                        errors.append(f"{cid}: {err.decode(errors='replace').strip()}")
                elapsed = time.monotonic() - t0
                if errors:
                    raise BenchError(f"{kind}: {len(errors)} of {n} `ctr run -d` failed: {errors[:3]}")
                running = [line.split()[0] for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]
                           if "RUNNING" in line]
                if len(running) != n:
                    raise BenchError(f"{kind}: {len(running)} of {n} tasks running")
                time_row.add(kind, elapsed)
                time.sleep(0.3 if bench.smoke else 1)
                total = {"rss": 0, "pss": 0}
                for pid in [d.pid, *d.shims()]:
                    m = memory_of(pid)
                    total["rss"] += m["rss"]
                    total["pss"] += m["pss"]
                rss.add(kind, total["rss"] / 1024)
                pss.add(kind, total["pss"] / 1024)
            finally:
                remove_containers(d, ids)

        alternate(bench, bench.runs, VARIANTS, one)
    finally:
        bench.stop(pair.values())
    return [time_row, rss, pss], {"containers": n}


def start_registry(bench):
    """Debian's docker-registry on 127.0.0.1, storage under the temp dir."""
    if not os.path.exists(REGISTRY):
        raise Skip(f"{REGISTRY} is missing (scripts/install-deps.sh installs docker-registry)")
    port = free_port()
    rdir = bench.tmp / "registry"
    rdir.mkdir()
    config = rdir / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {rdir}/storage\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    with open(rdir / "log", "wb") as log:
        p = subprocess.Popen([REGISTRY, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
    bench.others.append(p)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1."):
                    return f"127.0.0.1:{port}"
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"the registry did not answer on 127.0.0.1:{port}: {(rdir / 'log').read_text()}")
        time.sleep(0.05)


def scenario_pull(bench):
    """`ctr images pull --plain-http` (fetch and unpack) of the Debian image
    from a local registry, which the stock ctr pushed it to first."""
    tar, ref, info = bench.large_image()
    host = start_registry(bench)
    remote = f"{host}/bench/{'busybox' if bench.smoke else 'debian'}:latest"
    row = Row(f"pull of {remote.split('/', 1)[1]} from a local registry", "s", VARIANTS,
              [("crated", "containerd", 0.5, "lower")], digits=3, short="pull")
    cpu = Row("daemon CPU during the pull", "s", VARIANTS, [("crated", "containerd", None, "lower")], digits=2)
    pair = bench.pair("pull")
    try:
        src = pair["containerd"]
        src.ctr("images", "import", "--no-unpack", tar, ns=NS_PREFIX + "push")
        src.ctr("images", "tag", ref, remote, ns=NS_PREFIX + "push")
        src.ctr("images", "push", "--plain-http", remote, ns=NS_PREFIX + "push")
        src.ctr("images", "rm", "--sync", ref, remote, ns=NS_PREFIX + "push")

        def one(kind, i):
            d = pair[kind]
            d.ctr("images", "rm", "--sync", remote, check=False)
            d.settle()
            c0, t0 = cpu_seconds(d.pid), time.monotonic()
            d.ctr("images", "pull", "--plain-http", remote)
            row.add(kind, time.monotonic() - t0)
            cpu.add(kind, cpu_seconds(d.pid) - c0)
            if info["diff_id"] not in d.ctr("snapshots", "ls").stdout:
                raise BenchError(f"{kind}: the pull left no unpacked snapshot")

        alternate(bench, bench.runs, VARIANTS, one)
    finally:
        bench.stop(pair.values())
    return [row, cpu], {"image": {"ref": ref, **info}}


DURATION = re.compile(r"([0-9.]+)(ns|µs|us|ms|s|m|h)")
UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text):
    """A Go or Rust `Debug` duration (`1m2.5s`, `47.1ms`, `812.3µs`) in seconds."""
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise BenchError(f"not a duration: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


CRATED_GC = re.compile(r"garbage collected in (\S+) \(paused (\S+)\):")
CONTAINERD_GC = re.compile(r'msg="garbage collected" d="?([^"\s]+)')


def scenario_gc(bench):
    """A garbage collection on 10,000 blobs and 1,000 snapshots (the store of
    tests/gc.rs `pause_on_a_large_store`, filled by the same code through the
    `large_store` example), triggered by `leases rm --sync`; the daemons'
    debug logs give the times: crated its whole collection and its
    stop-the-world pause, containerd its whole collection (`d=`; 1.6 does
    not log its lock time, which is a part of it)."""
    blobs, snapshots = (100, 10) if bench.smoke else (10_000, 1_000)
    filler = bench.bin("examples/large_store")
    if not filler.exists():
        raise BenchError(f"{filler} is missing (cargo build --release --workspace --lib --bins --examples)")
    whole = Row(f"garbage collection of {blobs} blobs, {snapshots} snapshots", "ms", VARIANTS, digits=1)
    pause = Row("crated's stop-the-world pause in it", "ms", ("crated",), ratios=(), digits=1)
    fill = Row("filling the store (not a target)", "s", VARIANTS, digits=1)
    pair = bench.pair("gc", log_level="debug")
    ns = NS_PREFIX + "gc"
    try:
        for kind, d in pair.items():
            t0 = time.monotonic()
            run([filler, d.socket, ns, blobs, snapshots], timeout=1800)
            fill.add(kind, time.monotonic() - t0)
            bench.log(f"  {kind}: store filled in {time.monotonic() - t0:.1f} s")
            d.collect(ns=ns)  # the first collection after the fill is not measured

        def one(kind, i):
            d = pair[kind]
            offset = d.log.stat().st_size
            d.collect(ns=ns)
            with open(d.log, "rb") as f:
                f.seek(offset)
                new = f.read().decode(errors="replace")
            pattern = CRATED_GC if kind == "crated" else CONTAINERD_GC
            found = pattern.findall(new)
            if not found:
                raise BenchError(f"{kind}: no `garbage collected` line in the log after a collection:\n{new[-2000:]}")
            last = found[-1]
            if kind == "crated":
                whole.add(kind, duration_s(last[0]) * 1000)
                pause.add(kind, duration_s(last[1]) * 1000)
            else:
                whole.add(kind, duration_s(last) * 1000)

        alternate(bench, bench.runs, VARIANTS, one)
        counted = len(pair["crated"].ctr("content", "ls", "-q", ns=ns).stdout.split())
        if counted != blobs:
            raise BenchError(f"crated: {counted} blobs after the collections, not {blobs}")
    finally:
        bench.stop(pair.values())
    return [whole, pause, fill], {"blobs": blobs, "snapshots": snapshots}


def cri_tables(d):
    """The CRI plugin's config, the same for both daemons: the pause image,
    runc's root under the daemon's directory (the bench's cleanup deletes
    what is left there), OOM score adjustments not lowered (the harness may
    run where that is refused), and an empty CNI conf dir: the pods use the
    host's network, so the row measures the runtimes and not the bridge."""
    base = f'[plugins."{CRI}"'
    (d.dir / "cni-conf").mkdir(exist_ok=True)
    return (
        f'{base}]\nsandbox_image = "{PAUSE_REF}"\nrestrict_oom_score_adj = true\n'
        f'{base}.cni]\nconf_dir = "{d.dir / "cni-conf"}"\n'
        f'{base}.containerd.runtimes.runc]\nruntime_type = "io.containerd.runc.v2"\n'
        f'{base}.containerd.runtimes.runc.options]\nRoot = "{d.runc_root}"\n'
    )


def scenario_cri(bench):
    """RunPodSandbox + CreateContainer + StartContainer through the CRI
    (k8s-cri's client, `examples/cri_bench`), then stop and remove, on both
    daemons with their CRI plugins."""
    tar, ref = bench.pause_image()
    client = bench.bin("examples/cri_bench")
    if not client.exists():
        raise BenchError(f"missing {client} (cargo build --release --examples)")
    row = Row("RunPodSandbox + CreateContainer + StartContainer", "ms", VARIANTS,
              ratios=(("crated", "containerd", 1.0, "lower"),), short="CRI pod + container")
    parts = {
        k: Row(f"of which {k}", "ms", VARIANTS, ratios=(("crated", "containerd", None, "lower"),))
        for k in ("run_pod_sandbox", "create_container", "start_container")
    }
    teardown = Row("StopContainer + RemoveContainer + StopPodSandbox + RemovePodSandbox", "ms", VARIANTS,
                   ratios=(("crated", "containerd", None, "lower"),))
    pair = {k: Daemon(bench, k, f"{k}-cri", cri=cri_tables) for k in VARIANTS}
    try:
        for d in pair.values():
            d.start()
            d.ctr("images", "import", tar, ns="k8s.io")

        def one(kind, i):
            d = pair[kind]
            p = run([client, d.socket, ref, "1", d.dir / "pod-logs", f"/{NS_PREFIX}cri-{kind}"])
            r = json.loads(p.stdout.strip().splitlines()[-1])
            row.add(kind, r["total_ms"])
            for k, part in parts.items():
                part.add(kind, r[f"{k}_ms"])
            teardown.add(kind, r["teardown_ms"])

        alternate(bench, bench.runs, VARIANTS, one)
    finally:
        bench.stop(pair.values())
    return [row, *parts.values(), teardown], {}


# name, title, in the default set, in the smoke run, function
SCENARIOS = [
    ("cold_start", "1. cold start until the first answer", True, True, scenario_cold_start),
    ("idle_memory", "2. idle memory of the daemon", True, True, scenario_idle_memory),
    ("run_rm", "3. ctr run --rm of busybox echo", True, True, scenario_run_rm),
    ("shim_memory", "4. memory of one container's shim", True, True, scenario_shim_memory),
    ("import", "5. import and unpack of a large image", True, True, scenario_import),
    ("ingest", "6. content ingest against the disk", True, True, scenario_ingest),
    ("containers", "7. concurrent containers", True, True, scenario_containers),
    ("pull", "8. pull from a local registry", True, True, scenario_pull),
    ("gc", "9. garbage collection on a large store", False, True, scenario_gc),
    ("cri", "10. a CRI pod with one container", True, True, scenario_cri),
]


# ---------------------------------------------------------------- the plot


def write_svg(results, path):
    """One bar per ratio that has a target (crated/containerd, or crated/disk
    for the ingest), on a linear scale, with a marker at the target; green
    where the target is met, red where it is missed."""
    bars = []
    for r in results:
        for row in r.get("rows", []):
            for ratio in row["ratios"]:
                if ratio["ratio"] is not None and ratio["target"] is not None:
                    bars.append((row["short"], f"{ratio['of']}/{ratio['to']}", ratio))
    # About 7 px a character at 12 px.
    left = 20 + 7 * max([len(f"{label} ({what})") for label, what, _ in bars] + [20])
    width, bar_h, gap, top = 420, 18, 10, 50
    scale_max = max([2.0] + [b[2]["ratio"] * 1.1 for b in bars] + [b[2]["target"] * 1.1 for b in bars])
    height = top + len(bars) * (bar_h + gap) + 40

    def x(v):
        return left + width * v / scale_max

    def esc(s):
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">crated / containerd 1.6: ratios (bars) against '
        f'their targets (black marks)</text>',
        f'<text x="10" y="38" fill="#555">lower is better except the ingest (crated / disk, higher is better); '
        f'green: target met, red: missed</text>',
    ]
    tick = 0.0
    while tick <= scale_max + 1e-9:
        out.append(f'<line x1="{x(tick):.1f}" y1="{top - 5}" x2="{x(tick):.1f}" y2="{height - 30}" '
                   f'stroke="{"#888" if tick == 1.0 else "#ddd"}" stroke-dasharray="{"4,3" if tick == 1.0 else ""}"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{height - 15}" text-anchor="middle" fill="#555">{tick:g}</text>')
        tick += 0.25 if scale_max <= 3 else 0.5
    for k, (label, what, ratio) in enumerate(bars):
        y = top + k * (bar_h + gap)
        color = "#3a9a4a" if ratio["met"] else "#c8413b"
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{esc(label)} ({esc(what)})</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{max(x(ratio["ratio"]) - left, 1):.1f}" height="{bar_h}" '
                   f'fill="{color}"/>')
        tx = x(ratio["target"])
        # The value right of the bar, or of the target's mark where that is further.
        vx = max(x(ratio["ratio"]), tx + 2) + 4
        out.append(f'<text x="{vx:.1f}" y="{y + 13}">{ratio["ratio"]:.2f}</text>')
        out.append(f'<line x1="{tx:.1f}" y1="{y - 3}" x2="{tx:.1f}" y2="{y + bar_h + 3}" stroke="black" '
                   f'stroke-width="3"/>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------- main


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    containerd_version = run([CONTAINERD, "--version"], check=False).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / (1 << 20), 1),
        "kernel": platform.release(),
        "containerd": containerd_version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        # Other work on the machine weighs on both daemons alike (the runs
        # alternate), but it widens the spreads.
        "load_average_at_end": os.getloadavg(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per scenario and daemon (default 5)")
    ap.add_argument("--smoke", action="store_true", help="1 run of the cheap scenarios with tiny sizes (CI)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(s[0] for s in SCENARIOS))
    ap.add_argument("--build", action="store_true", help="cargo build the daemon, plugins and examples first")
    ap.add_argument("--profile", default="release", help="build profile directory of the binaries (default release)")
    ap.add_argument("--target-dir", help="cargo target directory of the binaries (default: the repo's target/)")
    ap.add_argument("--out-dir", help="where results.json and ratios.svg go (default: the repo's target/bench)")
    ap.add_argument("--cache-dir", help="the Debian rootfs and image cache (default: the repo's target/bench-cache)")
    ap.add_argument("--ingest-mib", type=int, default=1024, help="size of the ingested blob (default 1024)")
    ap.add_argument("--containers", type=int, default=50, help="containers started at once (default 50)")
    args = ap.parse_args()

    names = [s[0] for s in SCENARIOS]
    if args.only:
        chosen = args.only.split(",")
        unknown = [c for c in chosen if c not in names]
        if unknown:
            ap.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(names)}")
    elif args.smoke:
        chosen = [s[0] for s in SCENARIOS if s[3]]
    else:
        chosen = [s[0] for s in SCENARIOS if s[2]]
    if os.geteuid() != 0:
        sys.exit("bench: needs root (mounts, containers)")

    if args.build:
        cmd = ["cargo", "build", "--workspace", "--lib", "--bins", "--examples", "--locked"]
        if args.profile == "release":
            cmd.append("--release")
        elif args.profile != "debug":
            cmd += ["--profile", args.profile]
        if args.target_dir:
            cmd += ["--target-dir", args.target_dir]
        subprocess.run(cmd, cwd=REPO, check=True)

    bench = Bench(args)
    results = []
    failed = []

    def on_term(signum, frame):
        raise SystemExit(f"bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        libs = bench.check_binaries()
        print(f"crated: {bench.bin('crated')} with {len(libs)} plugin libraries ({', '.join(libs)})")
        print(f"containerd: {CONTAINERD} ({run([CONTAINERD, '--version']).stdout.strip()})")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{bench.runs} run(s) per scenario and daemon, alternating; load average {load}; "
              f"temporary directory {bench.tmp}\n")
        for name, title, _, _, fn in SCENARIOS:
            if name not in chosen:
                continue
            print(f"== {title} [{name}]", flush=True)
            t0 = time.monotonic()
            entry = {"name": name, "title": title}
            try:
                rows, extra = fn(bench)
                entry["rows"] = [r.to_json() for r in rows]
                entry["extra"] = extra
                for r in rows:
                    r.print()
                if name == "idle_memory":
                    print_libraries(extra)
            except Skip as e:
                entry["skipped"] = str(e)
                print(f"  skipped: {e}")
            except BenchError as e:
                entry["error"] = str(e)
                failed.append(name)
                print(f"  FAILED: {e}")
            entry["seconds"] = round(time.monotonic() - t0, 1)
            print(f"  ({entry['seconds']} s)\n", flush=True)
            results.append(entry)
    finally:
        bench.cleanup()

    bench.out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "runs": bench.runs, "smoke": bench.smoke, "scenarios": results}
    (bench.out_dir / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    write_svg(results, bench.out_dir / "ratios.svg")
    print(f"results: {bench.out_dir / 'results.json'}, plot: {bench.out_dir / 'ratios.svg'}")
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
