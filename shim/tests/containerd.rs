//! The shim under the real containerd 1.6: Debian's `/usr/bin/containerd`
//! on temporary directories, with PATH set so that its lookup of
//! `io.containerd.runc.v2` finds this crate's `containerd-shim-runc-v2`
//! first, driven by the stock `ctr`, running busybox containers with runc
//! on overlayfs. Each test checks by the shim's `/proc/<pid>/exe` that ours
//! served it, and that nothing is left after the containers are deleted.
//!
//! Guards stop only the daemon the test started (by its pid), delete what
//! containers remain through the daemon, and unmount what is still mounted
//! under the test's directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crated_tests::images::{oci_archive, ImageOptions};

const OUR_SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-runc-v2");
const GO_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
const IMAGE: &str = "example.com/busybox:latest";

/// Which shim the daemon finds first on PATH.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shim {
    Ours,
    Go,
}

struct Containerd {
    /// A namespace of this daemon's own: runc's state root and the cgroups
    /// are per namespace, shared with every other daemon on the host.
    ns: String,
    dir: tempfile::TempDir,
    child: Child,
    shim: Shim,
}

impl Containerd {
    fn start(shim: Shim) -> Containerd {
        let dir = tempfile::Builder::new().prefix("shim-ctd").tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = match shim {
            Shim::Ours => OUR_SHIM,
            Shim::Go => GO_SHIM,
        };
        std::os::unix::fs::symlink(exe, bin.join("containerd-shim-runc-v2")).unwrap();
        let cfg = crated_tests::stock::containerd_config(dir.path(), "");
        std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let child = Command::new(crated_tests::stock::CONTAINERD)
            .arg("-c")
            .arg(dir.path().join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ns =
            format!("shimtest-{}-{}", std::process::id(), COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let d = Containerd { ns, dir, child, shim };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(d.socket()).is_err() {
            assert!(Instant::now() < deadline, "containerd did not serve: {}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        let archive = oci_archive(&ImageOptions::default()).unwrap();
        let tar = d.dir.path().join("image.tar");
        std::fs::write(&tar, &archive.tar).unwrap();
        ok(&d.ctr(&["images", "import", "--base-name", "example.com/busybox", tar.to_str().unwrap()]), "import");
        d
    }

    fn socket(&self) -> PathBuf {
        crated_tests::stock::containerd_socket(self.dir.path())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address").arg(self.socket()).arg("-n").arg(&self.ns).args(args);
        c.env_remove("CONTAINERD_ADDRESS").env_remove("CONTAINERD_NAMESPACE");
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("run ctr")
    }

    /// Runs ctr with `first` then `rest` on its stdin, closing it only once
    /// `first` came back on stdout: ctr asks the shim to close the
    /// process's stdin (`CloseIO`) at EOF only if the task exists by then
    /// (an EOF read during `NewTask` is lost, with any shim).
    fn ctr_echo_stdin(&self, args: &[&str], first: &str, rest: &str) -> (String, Output) {
        use std::io::BufRead;
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(first.as_bytes()).unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut echoed = String::new();
        stdout.read_line(&mut echoed).unwrap();
        stdin.write_all(rest.as_bytes()).unwrap();
        drop(stdin);
        let mut tail = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut tail).unwrap();
        (echoed + &tail, child.wait_with_output().unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The pids of the shims serving this daemon (their command line names
    /// its address), whichever binary they run.
    fn shim_pids(&self) -> Vec<i32> {
        let address = self.socket().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let is_shim = args.first().is_some_and(|a| a.ends_with("containerd-shim-runc-v2"));
            let serves_us = args.windows(2).any(|w| w[0] == "-address" && w[1] == address);
            let starting = args.last().is_some_and(|a| a == "start" || a == "delete");
            if is_shim && serves_us && !starting {
                pids.push(pid);
            }
        }
        pids
    }

    /// The one shim serving this daemon, checked to run the binary the
    /// test asked for.
    fn the_shim(&self) -> i32 {
        let pids = self.shim_pids();
        assert_eq!(pids.len(), 1, "one shim process expected, found {pids:?}");
        let exe = std::fs::read_link(format!("/proc/{}/exe", pids[0])).unwrap();
        let want = match self.shim {
            Shim::Ours => std::fs::canonicalize(OUR_SHIM).unwrap(),
            Shim::Go => PathBuf::from(GO_SHIM),
        };
        assert_eq!(exe, want, "the shim that runs is not the expected binary");
        pids[0]
    }

    fn mounts_under(&self, prefix: &Path) -> Vec<String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = prefix.display().to_string();
        text.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// What must be gone once every container is deleted: shim processes,
    /// mounts under the daemon's directories, the shims' sockets, cgroups.
    fn assert_nothing_left(&self, ids: &[&str], sockets: &[PathBuf]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.shim_pids(), Vec::<i32>::new(), "shim processes left");
        assert_eq!(self.mounts_under(self.dir.path()), Vec::<String>::new(), "mounts left");
        for s in sockets {
            assert!(!s.exists(), "shim socket {} left", s.display());
        }
        for id in ids {
            for ctrl in ["memory", "pids", "cpuacct", "freezer"] {
                let cg = Path::new("/sys/fs/cgroup").join(ctrl).join(&self.ns).join(id);
                assert!(!cg.exists(), "cgroup {} left", cg.display());
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers a failed test left: through the daemon, which knows them.
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "rm", "-f", id]);
        }
        let containers = self.ctr(&["containers", "ls", "-q"]);
        for id in String::from_utf8_lossy(&containers.stdout).lines() {
            let _ = self.ctr(&["containers", "rm", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in self.mounts_under(self.dir.path()).iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        // The namespace's level of the cgroup tree, which runc leaves.
        crated_tests::cgroups::remove(&self.ns);
    }
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The address our shim derives for `group`, as a socket path.
fn socket_of(d: &Containerd, group: &str) -> PathBuf {
    use sha2::Digest;
    let joined = format!("{}/{}/{group}", d.socket().display(), d.ns);
    PathBuf::from(format!("/run/containerd/s/{}", hex::encode(sha2::Sha256::digest(joined.as_bytes()))))
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_rm_output_exit_code_and_stdin() {
    let d = Containerd::start(Shim::Ours);
    let o = d.ctr(&["run", "--rm", IMAGE, "r1", "sh", "-c", "echo hello from busybox; echo to-stderr >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "stderr: {}\nlog: {}", text(&o.stderr), d.log());
    assert_eq!(text(&o.stdout), "hello from busybox\n");
    assert!(text(&o.stderr).contains("to-stderr"), "{}", text(&o.stderr));
    // Our shim's own log went through the bundle's log FIFO into the daemon's.
    assert!(d.log().contains("containerd-shim-runc-v2 (crated)"), "{}", d.log());

    let (out, o) = d.ctr_echo_stdin(&["run", "--rm", IMAGE, "r2", "cat"], "line one\n", "line two\n");
    assert_eq!(out, "line one\nline two\n", "stderr: {}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));

    // Killed by a signal: 128 + n (from outside: the container's pid 1
    // ignores signals it has no handler for).
    let attached = d
        .command(&["run", "--rm", IMAGE, "r3", "sh", "-c", "while true; do sleep 0.1; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("r3 to run", || {
        text(&d.ctr(&["tasks", "ls"]).stdout).lines().any(|l| l.starts_with("r3") && l.contains("RUNNING"))
    });
    ok(&d.ctr(&["tasks", "kill", "-s", "SIGKILL", "r3"]), "kill r3");
    let o = attached.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(137), "stderr: {}", text(&o.stderr));
    d.assert_nothing_left(&["r1", "r2", "r3"], &[socket_of(&d, "r1"), socket_of(&d, "r2"), socket_of(&d, "r3")]);
}

#[test]
fn tty_under_a_pty() {
    let d = Containerd::start(Shim::Ours);
    let ctr = format!(
        "/usr/bin/ctr --address {} -n {} run -t --rm {IMAGE} t1 sh -c 'tty; echo in-a-tty; exit 4'",
        d.socket().display(),
        d.ns
    );
    let o = Command::new("script").args(["-qec", &ctr, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let out = text(&o.stdout);
    assert!(out.contains("/dev/pts/0"), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("in-a-tty"), "{out}");
    assert_eq!(o.status.code(), Some(4), "{out}");
    d.assert_nothing_left(&["t1"], &[socket_of(&d, "t1")]);
}

#[test]
fn detached_task_exec_kill_ps_pause_metrics_delete() {
    let d = Containerd::start(Shim::Ours);
    let mut events = d.command(&["events"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    ok(&d.ctr(&["run", "-d", IMAGE, "c1", "sh", "-c", "trap 'exit 7' USR1; while true; do sleep 0.1; done"]), "run -d");
    let shim = d.the_shim();

    // An exec that exits at once with its own status and output.
    let o = d.ctr(&["tasks", "exec", "--exec-id", "e1", "c1", "sh", "-c", "echo exec-out; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "exec-out\n");

    // A detached exec shows in ps with its exec id, and dies by kill -s.
    ok(&d.ctr(&["tasks", "exec", "-d", "--exec-id", "e2", "c1", "busybox", "sleep", "1000"]), "exec -d");
    let ps = ok(&d.ctr(&["tasks", "ps", "c1"]), "ps");
    assert!(ps.lines().any(|l| l.contains("e2")), "{ps}");
    assert!(ps.lines().count() >= 3, "{ps}");
    ok(&d.ctr(&["tasks", "kill", "--exec-id", "e2", "-s", "SIGKILL", "c1"]), "kill exec");

    ok(&d.ctr(&["tasks", "pause", "c1"]), "pause");
    let ls = ok(&d.ctr(&["tasks", "ls"]), "ls");
    assert!(ls.contains("PAUSED"), "{ls}");
    ok(&d.ctr(&["tasks", "resume", "c1"]), "resume");
    let ls = ok(&d.ctr(&["tasks", "ls"]), "ls");
    assert!(ls.contains("RUNNING"), "{ls}");

    let metrics = ok(&d.ctr(&["tasks", "metrics", "c1"]), "metrics");
    for key in ["memory.usage_in_bytes", "memory.limit_in_bytes", "cpuacct.usage", "pids.current"] {
        assert!(metrics.contains(key), "{key} missing from\n{metrics}");
    }
    let pids_line = metrics.lines().find(|l| l.starts_with("pids.current")).unwrap();
    let current: u64 = pids_line.split_whitespace().last().unwrap().parse().unwrap();
    assert!(current >= 1, "{metrics}");

    // The init's own trap decides its status.
    ok(&d.ctr(&["tasks", "kill", "-s", "SIGUSR1", "c1"]), "kill -s USR1");
    wait_until("c1 to stop", || text(&d.ctr(&["tasks", "ls"]).stdout).contains("STOPPED"));
    assert!(rss_kib(shim) > 0);
    let rm = d.ctr(&["tasks", "rm", "c1"]);
    ok(&rm, "tasks rm");
    assert!(text(&rm.stdout).contains("exit status 7") || text(&rm.stdout).is_empty(), "{}", text(&rm.stdout));
    ok(&d.ctr(&["containers", "rm", "c1"]), "containers rm");
    d.assert_nothing_left(&["c1"], &[socket_of(&d, "c1")]);

    let _ = events.kill();
    let out = text(&events.wait_with_output().unwrap().stdout);
    let topics: Vec<&str> =
        out.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/"))).collect();
    let pos = |t: &str| topics.iter().position(|x| *x == t).unwrap_or_else(|| panic!("{t} not in {topics:?}"));
    assert!(pos("/tasks/create") < pos("/tasks/start"));
    assert!(pos("/tasks/start") < pos("/tasks/exec-added"));
    assert!(pos("/tasks/exec-added") < pos("/tasks/exec-started"));
    assert!(pos("/tasks/exec-started") < pos("/tasks/paused"));
    assert!(pos("/tasks/paused") < pos("/tasks/resumed"));
    assert!(pos("/tasks/resumed") < pos("/tasks/delete"));
    let exits: Vec<&str> = out.lines().filter(|l| l.contains("/tasks/exit")).collect();
    assert!(exits.len() >= 3, "init, e1 and e2 exits expected:\n{out}");
    assert!(out.lines().any(|l| l.contains("/tasks/exit") && l.contains(r#""exit_status":7"#)), "{out}");
}

/// What the daemon says when the command is missing from the image, with
/// the shim that `shim` names.
fn missing_command_error(shim: Shim) -> String {
    let d = Containerd::start(shim);
    let o = d.ctr(&["run", "--rm", IMAGE, "m1", "nope"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    let _ = d.ctr(&["containers", "rm", "m1"]);
    err
}

#[test]
fn missing_command_reads_as_the_go_shims_error() {
    let ours = missing_command_error(Shim::Ours);
    assert!(ours.contains(r#"exec: "nope": executable file not found in $PATH"#), "{ours}");
    let go = missing_command_error(Shim::Go);
    assert_eq!(ours, go, "our error differs from the Go shim's");
}

#[test]
fn two_containers_of_a_group_share_one_shim() {
    let d = Containerd::start(Shim::Ours);
    let group = "io.containerd.runc.v2.group=pod1";
    let sleeper = ["sh", "-c", "while true; do sleep 0.1; done"];
    let run = |id: &str| {
        let mut args = vec!["run", "-d", "--annotation", group, IMAGE, id];
        args.extend(sleeper);
        ok(&d.ctr(&args), "run -d");
    };
    run("g1");
    let first = d.the_shim();
    run("g2");
    assert_eq!(d.the_shim(), first, "the second container got its own shim");
    let socket = socket_of(&d, "pod1");
    assert!(socket.exists());
    // Deleting the first leaves the shim serving the second.
    ok(&d.ctr(&["tasks", "kill", "-s", "SIGKILL", "g1"]), "kill g1");
    wait_until("g1 to stop", || {
        text(&d.ctr(&["tasks", "ls"]).stdout).lines().any(|l| l.starts_with("g1") && l.contains("STOPPED"))
    });
    ok(&d.ctr(&["tasks", "rm", "g1"]), "rm g1");
    ok(&d.ctr(&["containers", "rm", "g1"]), "containers rm g1");
    assert_eq!(d.the_shim(), first);
    let o = d.ctr(&["tasks", "exec", "--exec-id", "x", "g2", "echo", "still-served"]);
    assert_eq!(text(&o.stdout), "still-served\n", "{}", text(&o.stderr));
    ok(&d.ctr(&["tasks", "kill", "-s", "SIGKILL", "g2"]), "kill g2");
    wait_until("g2 to stop", || text(&d.ctr(&["tasks", "ls"]).stdout).contains("STOPPED"));
    ok(&d.ctr(&["tasks", "rm", "g2"]), "rm g2");
    ok(&d.ctr(&["containers", "rm", "g2"]), "containers rm g2");
    d.assert_nothing_left(&["g1", "g2"], &[socket]);
}

/// The resident memory of the shim serving one sleeping container.
fn shim_rss(shim: Shim) -> u64 {
    let d = Containerd::start(shim);
    ok(&d.ctr(&["run", "-d", IMAGE, "s1", "sh", "-c", "while true; do sleep 0.1; done"]), "run -d");
    let pid = d.the_shim();
    // Exercise it a little, as a daemon would.
    ok(&d.ctr(&["tasks", "exec", "--exec-id", "x", "s1", "true"]), "exec");
    ok(&d.ctr(&["tasks", "metrics", "s1"]), "metrics");
    let rss = rss_kib(pid);
    ok(&d.ctr(&["tasks", "kill", "-s", "SIGKILL", "s1"]), "kill");
    wait_until("s1 to stop", || text(&d.ctr(&["tasks", "ls"]).stdout).contains("STOPPED"));
    ok(&d.ctr(&["tasks", "rm", "s1"]), "rm");
    ok(&d.ctr(&["containers", "rm", "s1"]), "containers rm");
    rss
}

#[test]
fn rss_against_the_go_shim() {
    let ours = shim_rss(Shim::Ours);
    let go = shim_rss(Shim::Go);
    eprintln!("shim RSS with one running container: ours {ours} KiB, Go's {go} KiB");
    assert!(ours < go, "ours {ours} KiB, Go's {go} KiB");
}
