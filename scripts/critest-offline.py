#!/usr/bin/env python3
"""cri-tools' critest 1.26 against crated or Debian's containerd 1.6, offline.

critest and crictl are NOT packaged for Debian and are not part of this
repo or its CI: they are built by hand from cri-tools' own source (its
vendored modules, `make critest crictl`) and their paths are given here.

critest pulls its images from the internet (1.26.0: docker.io/library's
busybox, nginx and httpd, k8s.gcr.io/e2e-test-images/nonewprivs; 1.26.1:
registry.k8s.io/e2e-test-images; both: gcr.io/k8s-staging-cri-tools). This
script builds stand-ins with the same content semantics from Debian's
busybox (the dynamic `busybox` package, fetched from the Debian mirror with
`apt-get download` and not installed; busybox-static when that fails) and
three tiny static C programs compiled here with gcc, pushes
them to Debian's docker-registry on 127.0.0.1 under the same repository
paths, and gives the daemon hosts.toml mirrors for docker.io,
registry.k8s.io, k8s.gcr.io and gcr.io, so critest's own image names
resolve unchanged:

- `e2e-test-images/busybox:1.29-2` (`library/busybox:1.28`): busybox's applets (symlinks, but
  `/bin/ls` a copy, as MaskedPaths masks it), busybox's /etc/passwd and
  /etc/group, and `pgrep` and `ipcs` (shell stand-ins: Debian's busybox
  has neither applet; `ipcs` reads /proc/sysvipc/shm);
- `e2e-test-images/nginx:1.14-2` (`library/nginx`, `:1.18`) and
  `k8s-staging-cri-tools/hostnet-nginx-amd64`:
  a static `nginx` that writes /var/run/nginx.pid, names itself
  `nginx: master process` and serves /usr/share/nginx/html with busybox
  httpd on port 80 (12003 for hostnet-nginx);
- `e2e-test-images/httpd:2.4.39-4` (`library/httpd`): busybox httpd on port 80, logging
  `httpd -D FOREGROUND` as Apache's does;
- `e2e-test-images/nonewprivs:1.3`: a setuid-root static binary printing
  `Effective uid: <euid>`, run as user 1000;
- `k8s-staging-cri-tools/test-image-*`: busybox plus a file named after
  the image (the tags and users of cri-tools' images/build), and
  test-image-predefined-group (user 1000 in group 50000);
- `pause:3.6`: a static pause.

The digest-pull spec cannot pass offline: it names the real image's digest.

    scripts/critest-offline.py --critest /tmp/critools/bin/critest --daemon containerd
    scripts/critest-offline.py --critest /tmp/critools/bin/critest --daemon crated \\
        --bin-dir target/debug [--focus REGEX] [--crictl /tmp/critools/bin/crictl]

Everything runs under one temporary directory (daemon root and state,
registry storage, runc root, CNI conf); whatever the script started is
stopped by its pid, its pods are removed, what it mounted is unmounted and
its containers' cgroups and its bridge are removed, even on failure.
Needs root. Prints critest's summary and writes its JSON report to
--report (default target/critest-<daemon>.json).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402 - the bench's process helpers
    BUSYBOX,
    CONTAINERD,
    CRI,
    REGISTRY,
    REPO,
    BenchError,
    mounts_under,
    pids_with_arg_pair,
    run,
    start_registry,
    stop_child,
    stop_pid,
)

TASK_STATE = "io.containerd.runtime.v2.task"
CNI_BIN = "/usr/lib/cni"
E2E = "e2e-test-images"
STAGING = "k8s-staging-cri-tools"
PAUSE = "registry.k8s.io/pause:3.6"
# The host ports critest's networking specs use: they must be free.
CRITEST_PORTS = (12000, 12001, 12002, 12003)

# busybox's /etc/passwd and /etc/group, as the busybox image has them.
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
"""

PGREP = """#!/bin/sh
# A stand-in for procps' pgrep NAME (Debian's busybox has no pgrep applet).
pids=$(pidof "$1") || exit 1
for p in $pids; do echo "$p"; done
"""
IPCS = """#!/bin/sh
# A stand-in for util-linux' ipcs -m (Debian's busybox has no ipcs applet):
# the System V shared memory segments of this IPC namespace.
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
awk 'NR > 1 { printf "0x%08x %-10s %-10s %-10s %-10s %-10s\\n", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm
"""
HTTPD_FOREGROUND = """#!/bin/sh
# Apache's httpd-foreground, by busybox httpd: the same log line, port 80.
echo "[mpm_event:notice] AH00489: Apache/2.4.39 (Unix) configured -- resuming normal operations"
echo "[core:notice] AH00094: Command line: 'httpd -D FOREGROUND'"
exec /bin/httpd -f -v -p 80 -h /usr/local/apache2/htdocs
"""

PAUSE_C = r"""
/* The sandbox's pause: sleeps until SIGTERM or SIGINT, reaps children. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGTERM, quit);
    signal(SIGINT, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""
NNP_C = r"""
/* Kubernetes' nonewprivs test binary: installed setuid root. */
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", geteuid()); return 0; }
"""
NGINX_C = r"""
/* nginx's observable shape for critest: a master process named
 * "nginx: master process ..." (comm "nginx") with /var/run/nginx.pid,
 * serving /usr/share/nginx/html on a port (argv[1], 80 by default) with
 * busybox httpd as its worker; SIGTERM/SIGQUIT stop both. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static pid_t worker;
static void quit(int s) { (void)s; if (worker > 0) kill(worker, SIGTERM); _exit(0); }
int main(int argc, char **argv) {
    const char *port = argc > 1 ? argv[1] : "80";
    if (strncmp(argv[0], "nginx: ", 7) != 0) {
        char *args[] = {"nginx: master process nginx -g daemon off;", (char *)port, NULL};
        execv("/usr/sbin/nginx", args);
        perror("execv");
        return 1;
    }
    signal(SIGTERM, quit);
    signal(SIGQUIT, quit);
    signal(SIGINT, quit);
    FILE *f = fopen("/var/run/nginx.pid", "w");
    if (f) { fprintf(f, "%d\n", getpid()); fclose(f); }
    worker = fork();
    if (worker == 0) {
        execl("/bin/busybox", "httpd", "-f", "-p", port, "-h", "/usr/share/nginx/html", (char *)NULL);
        _exit(127);
    }
    for (;;) {
        pid_t p = wait(NULL);
        if (p == worker) return 1;
        if (p < 0) pause();
    }
}
"""


def log(msg):
    print(f"critest-offline: {msg}", file=sys.stderr, flush=True)


class World:
    """The registry, the daemon under test and everything under one
    temporary directory; cleanup() undoes all of it."""

    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="crated-critest-"))
        self.procs = []  # the daemon (a Popen), stopped in reverse
        self.others = []  # the registry (bench.start_registry's list)
        self.bridge = f"crcri{os.getpid() % 0xffff:x}"
        self.socket = self.tmp / "daemon.sock"
        self.runc_root = self.tmp / "runc"
        self.ids = set()  # sandbox and container ids seen, for their cgroups
        self.shm_before = shm_segments()

    # -- images

    def compile(self, name, source):
        c = self.tmp / "cbuild" / f"{name}.c"
        c.parent.mkdir(exist_ok=True)
        c.write_text(source)
        out = c.with_suffix("")
        run(["gcc", "-static", "-Os", "-s", "-o", out, c])
        return out

    def find_busybox(self):
        """The images' busybox: Debian's dynamic `busybox` package (fetched
        with `apt-get download`, not installed: it conflicts with
        busybox-static), whose shell runs `ls` from PATH as the busybox
        image's does; Debian's busybox-static runs its applets inside the
        shell (FEATURE_SH_STANDALONE), so MaskedPaths' masked /bin/ls is
        never run and that spec fails. Returns (binary, [shared libraries])."""
        if self.args.busybox:
            binary = Path(self.args.busybox)
        else:
            d = self.tmp / "busybox-deb"
            d.mkdir()
            p = subprocess.run(["apt-get", "download", "busybox"], cwd=d, capture_output=True, text=True)
            debs = sorted(d.glob("busybox_*.deb"))
            if p.returncode != 0 or not debs:
                log(f"apt-get download busybox failed, using {BUSYBOX} (MaskedPaths will fail): {p.stderr.strip()}")
                return Path(BUSYBOX), []
            run(["dpkg-deb", "-x", debs[0], d / "root"])
            binary = d / "root" / "bin" / "busybox"
        libs = []
        p = run(["ldd", binary], check=False)
        for line in p.stdout.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if path.startswith("/"):
                libs.append(Path(path))
        return binary, libs

    def busybox_rootfs(self, name):
        """busybox's root filesystem: the applets, /etc, the stand-ins."""
        root = self.tmp / "rootfs" / name
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "var/run", "root", "usr/sbin", "usr/local/bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        busybox, libs = self.busybox
        shutil.copy2(busybox, root / "bin" / "busybox")
        for lib in libs:
            (root / lib.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, root / lib.relative_to("/"))
        applets = run([busybox, "--list"]).stdout.split()
        for a in applets:
            if a in ("busybox", "ls"):
                continue
            os.symlink("busybox", root / "bin" / a)
        # A file of its own: MaskedPaths masks /bin/ls, and a symlink's
        # mask would cover /bin/busybox itself.
        shutil.copy2(busybox, root / "bin" / "ls")
        for path, text, mode in (
            ("bin/pgrep", PGREP, 0o755),
            ("bin/ipcs", IPCS, 0o755),
            ("etc/passwd", PASSWD, 0o644),
            ("etc/group", GROUP, 0o644),
        ):
            (root / path).write_text(text)
            (root / path).chmod(mode)
        return root

    def image(self, rootfs, ref, cmd=(), user=None):
        """An OCI image tar of `rootfs` by the tests' rootfs_image example."""
        out = self.tmp / "images" / (ref.replace("/", "_").replace(":", "_") + ".tar")
        out.parent.mkdir(exist_ok=True)
        argv = [self.args.bin_dir / "examples" / "rootfs_image"]
        if user:
            argv += ["--user", user]
        run(argv + [rootfs, out, ref, *cmd])
        return out

    def build_images(self):
        """Every image critest 1.26.0 and 1.26.1 pull, as ([repository path:tag], tar)."""
        images = []
        self.busybox = self.find_busybox()
        pause = self.compile("pause", PAUSE_C)
        nnp = self.compile("nnp", NNP_C)
        nginx = self.compile("nginx", NGINX_C)

        root = self.tmp / "rootfs" / "pause"
        root.mkdir(parents=True)
        shutil.copy2(pause, root / "pause")
        images.append((["pause:3.6"], self.image(root, PAUSE, ["/pause"])))

        busybox = self.busybox_rootfs("busybox")
        images.append(([f"{E2E}/busybox:1.29-2", "library/busybox:1.28"], self.image(busybox, "busybox")))

        for name, port in (("nginx", "80"), ("hostnet-nginx", "12003")):
            root = self.busybox_rootfs(name)
            shutil.copy2(nginx, root / "usr/sbin/nginx")
            html = root / "usr/share/nginx/html"
            html.mkdir(parents=True)
            (html / "index.html").write_text("<html><body><h1>Welcome to nginx!</h1></body></html>\n")
            tar = self.image(root, name, ["/usr/sbin/nginx", port])
            if name == "nginx":
                images.append(([f"{E2E}/nginx:1.14-2", "library/nginx:latest", "library/nginx:1.18"], tar))
            else:
                images.append(([f"{STAGING}/hostnet-nginx-amd64:latest"], tar))

        root = self.busybox_rootfs("httpd")
        (root / "usr/local/bin/httpd-foreground").write_text(HTTPD_FOREGROUND)
        (root / "usr/local/bin/httpd-foreground").chmod(0o755)
        (root / "usr/local/apache2/htdocs").mkdir(parents=True)
        (root / "usr/local/apache2/htdocs/index.html").write_text("<html><body><h1>It works!</h1></body></html>\n")
        images.append(([f"{E2E}/httpd:2.4.39-4", "library/httpd:latest"],
                       self.image(root, "httpd", ["/usr/local/bin/httpd-foreground"])))

        root = self.busybox_rootfs("nonewprivs")
        shutil.copy2(nnp, root / "usr/local/bin/nnp")
        os.chown(root / "usr/local/bin/nnp", 0, 0)
        (root / "usr/local/bin/nnp").chmod(0o4755)
        images.append(([f"{E2E}/nonewprivs:1.3"], self.image(root, "nonewprivs", ["/usr/local/bin/nnp"], user="1000")))

        # cri-tools' images/build: busybox with USER, or with a file ADDed.
        for name, user in (
            ("test-image-user-uid", "1002"),
            ("test-image-user-username", "www-data"),
            ("test-image-user-uid-group", "1003:1004"),
            ("test-image-user-username-group", "www-data:1004"),
        ):
            images.append(([f"{STAGING}/{name}:latest"], self.image(busybox, name, user=user)))

        root = self.busybox_rootfs("predefined-group")
        with open(root / "etc/passwd", "a") as f:
            f.write("default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")
        with open(root / "etc/group", "a") as f:
            f.write("default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
        (root / "home/default-user").mkdir(parents=True)
        os.chown(root / "home/default-user", 1000, 1000)
        images.append(([f"{STAGING}/test-image-predefined-group:latest"],
                       self.image(root, "predefined-group", user="1000")))

        def with_file(name, ref):
            root = self.busybox_rootfs(f"with-{name}")
            (root / name).write_text("")
            return self.image(root, ref)

        for name in ("test-image-1", "test-image-2", "test-image-3", "test-image-latest", "test-image-digest"):
            images.append(([f"{STAGING}/{name}:latest"], with_file(name, name)))
        images.append(([f"{STAGING}/test-image-tags:{t}" for t in "123"], with_file("same-image", "test-image-tags")))
        for tag in ("test", "all"):
            images.append(([f"{STAGING}/test-image-tag:{tag}"], with_file(tag, f"test-image-tag-{tag}")))
        return images

    # -- registry

    def start_registry(self):
        """Debian's docker-registry on 127.0.0.1, as the bench starts it
        (its process joins `self.others`)."""
        self.registry = start_registry(self)

    def push(self, names, tar_path):
        """Pushes an OCI layout tar's image (its blobs, then the manifest
        index.json names) to the registry under every `repository:tag`."""
        with tarfile.open(tar_path) as t:
            files = {m.name.lstrip("./"): t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
        index = json.loads(files["index.json"])
        top = index["manifests"][0]
        manifest = files["blobs/sha256/" + top["digest"].split(":", 1)[1]]
        for repo_tag in names:
            repo, tag = repo_tag.rsplit(":", 1)
            self.push_one(files, repo, tag, manifest, top["mediaType"])

    def push_one(self, files, repo, tag, manifest, media_type):
        base = f"http://{self.registry}/v2/{repo}"
        for name, data in files.items():
            if not name.startswith("blobs/sha256/"):
                continue
            digest = "sha256:" + name.rsplit("/", 1)[1]
            req = urllib.request.Request(f"{base}/blobs/uploads/", method="POST", data=b"")
            with urllib.request.urlopen(req) as r:
                location = r.headers["Location"]
            if location.startswith("/"):
                location = f"http://{self.registry}{location}"
            sep = "&" if "?" in location else "?"
            req = urllib.request.Request(f"{location}{sep}digest={digest}", method="PUT", data=data,
                                         headers={"Content-Type": "application/octet-stream"})
            urllib.request.urlopen(req).read()
        req = urllib.request.Request(f"{base}/manifests/{tag}", method="PUT", data=manifest,
                                     headers={"Content-Type": media_type})
        urllib.request.urlopen(req).read()

    # -- the daemon

    def hosts_dir(self):
        """hosts.toml mirrors: critest's registries to the local registry."""
        certs = self.tmp / "certs.d"
        for host in ("docker.io", "registry.k8s.io", "k8s.gcr.io", "gcr.io"):
            d = certs / host
            d.mkdir(parents=True)
            (d / "hosts.toml").write_text(
                f'server = "https://{host}"\n\n[host."http://{self.registry}"]\n'
                '  capabilities = ["pull", "resolve"]\n'
            )
        return certs

    def cni_conf(self):
        conf = self.tmp / "net.d"
        conf.mkdir()
        (conf / "10-critest.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "critest",
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.233.7.0/24"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }))
        return conf

    def cri_tables(self):
        base = f'[plugins."{CRI}"'
        return (
            f'{base}]\nsandbox_image = "{PAUSE}"\nrestrict_oom_score_adj = true\n'
            f'{base}.registry]\nconfig_path = "{self.hosts_dir()}"\n'
            f'{base}.cni]\nbin_dir = "{CNI_BIN}"\nconf_dir = "{self.cni_conf()}"\n'
            f'{base}.containerd.runtimes.runc]\nruntime_type = "io.containerd.runc.v2"\n'
            f'{base}.containerd.runtimes.runc.options]\nRoot = "{self.runc_root}"\n'
        )

    def start_daemon(self):
        d = self.tmp / "daemon"
        d.mkdir()
        config = d / "config.toml"
        env = dict(os.environ)
        if self.args.daemon == "crated":
            plugins = d / "plugins"
            plugins.mkdir()
            shutil.copy2(self.args.bin_dir / "libcrated_plugins.so", plugins)
            shim = self.args.bin_dir / "containerd-shim-runc-v2"
            config.write_text(
                f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\nplugin_dir = "{plugins}"\n'
                f'[grpc]\naddress = "{self.socket}"\n[debug]\nlevel = "{self.args.log_level}"\n'
                + self.cri_tables()
                + f'[plugins."{TASK_STATE}".runtimes."io.containerd.runc.v2"]\nruntime_path = "{shim}"\n'
            )
            cmd = [self.args.bin_dir / "crated", "-c", config]
        else:
            text = run([self.args.bin_dir / "examples" / "stock_config", d]).stdout
            text = text.replace(f'disabled_plugins = ["{CRI}"]', "disabled_plugins = []")
            text = text.replace(f'address = "{d}/c.sock"', f'address = "{self.socket}"')
            config.write_text(text + self.cri_tables())
            cmd = [CONTAINERD, "-c", config, "--log-level", self.args.log_level]
        self.daemon_log = d / "daemon.log"
        self.daemon = self.spawn(cmd, self.daemon_log, env=env)
        deadline = time.monotonic() + 60
        while not self.crictl("version", check=False).returncode == 0:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the daemon did not answer:\n{self.daemon_log.read_text()[-3000:]}")
            time.sleep(0.1)

    def crictl(self, *args, check=True):
        ep = f"unix://{self.socket}"
        return run([self.args.crictl, "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "60s", *args],
                   check=check)

    # -- processes and teardown

    def spawn(self, cmd, log_path, env=None):
        with open(log_path, "ab") as f:
            p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                 start_new_session=True, env=env)
        self.procs.append(p)
        return p

    def remember_ids(self):
        for args in (("pods", "-q"), ("ps", "-a", "-q")):
            p = self.crictl(*args, check=False)
            self.ids.update(p.stdout.split())

    def remove_pods(self):
        """Every pod critest left: stopped and removed through the CRI."""
        self.remember_ids()
        for pod in self.crictl("pods", "-q", check=False).stdout.split():
            self.crictl("stopp", pod, check=False)
            self.crictl("rmp", "-f", pod, check=False)

    def cleanup(self):
        if hasattr(self, "daemon") and self.daemon.poll() is None:
            try:
                self.remove_pods()
            except Exception as e:  # noqa: BLE001 - the rest must run
                log(f"removing pods: {e}")
        for pid in pids_with_arg_pair("-address", self.socket):
            stop_pid(pid, grace=0)
        if self.runc_root.exists():
            p = run(["runc", "--root", self.runc_root, "list", "-q"], check=False)
            for cid in p.stdout.split():
                self.ids.add(cid)
                run(["runc", "--root", self.runc_root, "delete", "--force", cid], check=False)
        for p in reversed(self.procs + self.others):
            stop_child(p)
        for m in reversed(mounts_under(self.tmp)):
            run(["umount", "-l", m], check=False)
        remove_cgroups(self.ids)
        # The HostIpc specs make 1 MiB segments on the host with ipcmk and
        # leave them: those made during the run, by a process now gone.
        for shmid, (size, cpid) in shm_segments().items():
            if shmid not in self.shm_before and size == 1048576 and not Path(f"/proc/{cpid}").exists():
                run(["ipcrm", "-m", shmid], check=False)
        run(["ip", "link", "del", self.bridge], check=False)
        if not mounts_under(self.tmp) and not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"{self.tmp} kept")


def shm_segments():
    """The host's System V shared memory segments: shmid -> (size, creator pid)."""
    with open("/proc/sysvipc/shm") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {r[1]: (int(r[3]), r[4]) for r in rows if len(r) > 4}


def remove_cgroups(ids):
    """Removes the cgroups named by the daemon's sandbox and container ids
    (`/k8s.io/<id>` with cgroupfs), in every hierarchy; never another's."""
    root = Path("/sys/fs/cgroup")
    for parent in root.glob("**/k8s.io") if ids else []:
        for cid in ids:
            c = parent / cid
            if c.is_dir():
                try:
                    c.rmdir()
                except OSError as e:
                    log(f"cgroup {c} left: {e}")


def summarize(report_path):
    """Passed, failed, skipped specs of ginkgo's JSON report."""
    report = json.loads(Path(report_path).read_text())
    out = {"passed": [], "failed": [], "skipped": [], "seconds": 0.0}
    for suite in report:
        out["seconds"] += suite.get("RunTime", 0) / 1e9
        for spec in suite.get("SpecReports", []):
            if spec.get("LeafNodeType") != "It":
                continue
            name = " ".join(spec.get("ContainerHierarchyTexts") or []) + " " + spec.get("LeafNodeText", "")
            state = spec.get("State")
            key = {"passed": "passed", "skipped": "skipped", "pending": "skipped"}.get(state, "failed")
            out[key].append(name.strip())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--critest", required=True, help="critest 1.26 (built by hand; not packaged)")
    ap.add_argument("--crictl", default=None, help="crictl (built by hand); default: next to critest")
    ap.add_argument("--daemon", choices=("crated", "containerd"), required=True)
    ap.add_argument("--bin-dir", default=str(REPO / "target" / "debug"),
                    help="crated, libcrated_plugins.so, containerd-shim-runc-v2, examples/rootfs_image, stock_config")
    ap.add_argument("--busybox", default=None,
                    help="the images' busybox binary (default: Debian's dynamic busybox, by apt-get download)")
    ap.add_argument("--focus", action="append", default=[], help="ginkgo focus regex (repeatable)")
    ap.add_argument("--skip", action="append", default=[], help="ginkgo skip regex (repeatable)")
    ap.add_argument("--report", default=None)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = ap.parse_args()
    args.bin_dir = Path(args.bin_dir).resolve()
    args.crictl = Path(args.crictl or Path(args.critest).parent / "crictl")
    report = Path(args.report or REPO / "target" / f"critest-{args.daemon}.json").resolve()
    report.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        sys.exit("critest-offline: needs root")
    for path in (args.critest, args.crictl, REGISTRY, BUSYBOX, args.bin_dir / "examples" / "rootfs_image"):
        if not os.path.exists(path):
            sys.exit(f"critest-offline: missing {path}")
    busy = [p for p in CRITEST_PORTS if run(["ss", "-Htln", f"sport = :{p}"], check=False).stdout.strip()]
    if busy:
        sys.exit(f"critest-offline: critest's host ports {busy} are in use")

    world = World(args)
    try:
        log(f"building the images under {world.tmp}")
        images = world.build_images()
        world.start_registry()
        for names, tar in images:
            world.push(names, tar)
        log(f"pushed {len(images)} images to {world.registry}; starting {args.daemon}")
        world.start_daemon()
        ep = f"unix://{world.socket}"
        cmd = [args.critest, "--runtime-endpoint", ep, "--image-endpoint", ep,
               "--ginkgo.no-color", f"--ginkgo.json-report={report}"]
        cmd += [f"--ginkgo.focus={f}" for f in args.focus] + [f"--ginkgo.skip={s}" for s in args.skip]
        log(" ".join(map(str, cmd)))
        t0 = time.monotonic()
        # critest's mount propagation specs bind-mount directories of its
        # own under $TMPDIR and leave them mounted when a spec is cut
        # short: under our directory, the cleanup unmounts them.
        critest_tmp = world.tmp / "critest-tmp"
        critest_tmp.mkdir()
        env = dict(os.environ, TMPDIR=str(critest_tmp))
        rc = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, env=env).returncode
        elapsed = time.monotonic() - t0
        s = summarize(report)
        print(f"\n{args.daemon}: {len(s['passed'])} passed, {len(s['failed'])} failed, "
              f"{len(s['skipped'])} skipped, critest {elapsed:.0f} s (exit {rc}); report {report}")
        for name in s["failed"]:
            print(f"  FAILED: {name}")
        return 0 if not s["failed"] else 1
    finally:
        if args.keep:
            log(f"daemon log: {getattr(world, 'daemon_log', '-')}")
        world.cleanup()


if __name__ == "__main__":
    sys.exit(main())
