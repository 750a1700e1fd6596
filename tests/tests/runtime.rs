//! The runtime plugins (`io.containerd.runtime.v2.task`, the shim manager,
//! and `io.containerd.grpc.v1.tasks`, the Tasks service) in a real daemon,
//! driven by the stock containerd 1.6 `ctr` and running real containers:
//! Debian's Go `containerd-shim-runc-v2` with Debian's runc, over the real
//! content, metadata, snapshots and diff plugins, on a busybox image the
//! test builds.
//!
//! Each test checks, after every scenario, that nothing of a task outlives
//! it: no bundle, no rootfs mount, no shim. The guard of a test stops what
//! the test's own daemon started (shims found by the daemon's unique socket
//! path in their command line, containers by the test's own runc root) and
//! unmounts what is mounted under the test's directory, even when the test
//! fails.

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{stderr, stdout, Daemon, Setup};
use crated_tests::images::{oci_archive, raw_tar, ImageOptions};

const STACK: &[&str] = &["content", "metadata", "events", "snapshots", "diff", "transfer", "runtime"];
const GO_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

/// Which `containerd-shim-runc-v2` runs the tasks: Debian's Go shim, or the
/// project's own from the build output (which the daemon also finds by
/// itself, next to `crated`).
#[derive(Clone, Copy, Debug)]
enum Shim {
    Go,
    Ours,
}

impl Shim {
    /// The namespace a test runs its containers in: one per shim, because
    /// cgroups (`/<namespace>/<id>`) are shared by the whole machine, and
    /// the same test for both shims runs concurrently with the same ids.
    fn namespace(self) -> &'static str {
        match self {
            Shim::Go => "rt-go",
            Shim::Ours => "rt-ours",
        }
    }

    fn path(self) -> PathBuf {
        match self {
            Shim::Go => PathBuf::from(GO_SHIM),
            Shim::Ours => common::target_dir().join("containerd-shim-runc-v2"),
        }
    }
}
const IMAGE: &str = "docker.io/library/busybox:latest";
const TASK_STATE: &str = "io.containerd.runtime.v2.task";

/// A daemon with the runtime plugins, pinned to one shim, with runc's
/// state under the test's directory, and the busybox image imported.
struct Runtime {
    daemon: Option<Daemon>,
    dir: PathBuf,
    socket: PathBuf,
    ns: &'static str,
}

impl Runtime {
    fn start(shim: Shim) -> Runtime {
        Runtime::start_with(shim, |s| s)
    }

    /// [`Runtime::start`] with the setup changed by `f` first.
    fn start_with(shim: Shim, f: impl FnOnce(Setup) -> Setup) -> Runtime {
        let setup = f(Setup::new(&[]).with_real_plugins(STACK));
        let runc_root = setup.path().join("runc");
        let shim_path = shim.path();
        assert!(shim_path.exists(), "{} is missing: run `cargo build --workspace`", shim_path.display());
        let setup = setup.extra(&format!(
            "[plugins.\"{TASK_STATE}\".runtimes.\"io.containerd.runc.v2\"]\nruntime_path = {:?}\n\
             [plugins.\"{TASK_STATE}\".runtimes.\"io.containerd.runc.v2\".options]\nRoot = {:?}\n",
            shim_path.display().to_string(),
            runc_root.display().to_string()
        ));
        let (dir, socket) = (setup.path().to_path_buf(), setup.socket());
        let rt = Runtime { daemon: Some(setup.start()), dir, socket, ns: shim.namespace() };
        let archive = oci_archive(&ImageOptions::default()).unwrap();
        let tar = rt.dir.join("image.tar");
        std::fs::write(&tar, &archive.tar).unwrap();
        rt.ok(&["images", "import", "--base-name", "docker.io/library/busybox", tar.to_str().unwrap()], "import");
        rt
    }

    fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon")
    }

    /// The stock ctr in the test's namespace.
    fn ctr(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.ns];
        full.extend_from_slice(args);
        self.d().stock_ctr(&full)
    }

    /// The stock ctr with `input` on stdin, written after a pause: stock ctr
    /// 1.6 closes the task's stdin only if its input ends after the task is
    /// created (its stdin closer is set once `NewTask` returns).
    fn ctr_with_input(&self, args: &[&str], input: &'static [u8]) -> Output {
        let mut child = Command::new(common::stock_ctr_bin())
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", self.ns])
            .args(args)
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let _ = stdin.write_all(input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    fn ok(&self, args: &[&str], what: &str) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "{what}: ctr {args:?} failed: {}\n{}", stderr(&out), self.d().log());
        stdout(&out)
    }

    /// Runs a failing command; returns its stderr.
    fn fails(&self, args: &[&str], what: &str) -> String {
        let out = self.ctr(args);
        assert!(!out.status.success(), "{what}: ctr {args:?} succeeded: {}", stdout(&out));
        stderr(&out)
    }

    /// `TASK PID STATUS` rows of `tasks ls`.
    fn tasks(&self) -> Vec<(String, String, String)> {
        self.ok(&["tasks", "ls"], "tasks ls")
            .lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c[0].to_string(), c[1].to_string(), c[2].to_string())
            })
            .collect()
    }

    fn status_of(&self, id: &str) -> Option<String> {
        self.tasks().into_iter().find(|t| t.0 == id).map(|t| t.2)
    }

    /// Waits (without a time assertion: a generous bound only against a
    /// hang) until the task's status is `status`.
    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.status_of(id).as_deref() != Some(status) {
            assert!(Instant::now() < deadline, "{id} never became {status}: {:?}", self.tasks());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state").join(TASK_STATE)
    }

    /// Whatever a task left: bundles, mounts under the test's directory,
    /// and live shims of this daemon.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if let Ok(nss) = std::fs::read_dir(self.state_dir()) {
            for ns in nss.flatten() {
                for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    left.push(format!("bundle {}", b.path().display()));
                }
            }
        }
        left.extend(mounts_under(&self.dir).into_iter().map(|m| format!("mount {m}")));
        left.extend(shims_of(&self.socket).into_iter().map(|p| format!("shim pid {p}")));
        left
    }

    /// Asserts that nothing is left, waiting a little for shims on their
    /// way out (they exit after answering `Shutdown`).
    fn assert_clean(&self, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "after {after}, left behind: {left:?}\n{}", self.d().log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_daemon(&mut self) {
        self.daemon.as_mut().unwrap().signal_and_wait("KILL");
    }

    fn stop_daemon(&mut self) {
        let status = self.daemon.as_mut().unwrap().signal_and_wait("TERM");
        assert!(status.success(), "the daemon did not stop cleanly on SIGTERM: {status}\n{}", self.d().log());
    }

    fn restart(&mut self) {
        self.daemon.as_mut().unwrap().restart();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Shims of this daemon (their command line names its socket), then
        // the containers in this test's runc root, then mounts under the
        // test's directory; each only what this test's daemon made.
        for pid in shims_of(&self.socket) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        let runc_root = self.dir.join("runc");
        if let Ok(list) = Command::new("runc").arg("--root").arg(&runc_root).args(["list", "-q"]).output() {
            for id in String::from_utf8_lossy(&list.stdout).lines().filter(|l| !l.is_empty()) {
                let _ = Command::new("runc").arg("--root").arg(&runc_root).args(["delete", "--force", id]).output();
            }
        }
        for m in mounts_under(&self.dir).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// Mount points under `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Live processes whose command line carries `-address <socket>`: the
/// shims this test's daemon started.
fn shims_of(socket: &Path) -> Vec<u32> {
    let needle = format!("\0-address\0{}\0", socket.display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        // A zombie has an empty command line; it is not running anything.
        if format!("\0{cmd}").contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn run_rm_prints_output_returns_exit_codes_and_takes_stdin_go_shim() {
    run_rm_prints_output_returns_exit_codes_and_takes_stdin(Shim::Go);
}

#[test]
fn run_rm_prints_output_returns_exit_codes_and_takes_stdin_our_shim() {
    run_rm_prints_output_returns_exit_codes_and_takes_stdin(Shim::Ours);
}

fn run_rm_prints_output_returns_exit_codes_and_takes_stdin(shim: Shim) {
    let rt = Runtime::start(shim);
    let listed = stdout(&rt.d().stock_ctr(&["plugins", "ls"]));
    for (kind, id) in [("io.containerd.runtime.v2", "task"), ("io.containerd.grpc.v1", "tasks")] {
        let row = listed.lines().find(|l| l.split_whitespace().take(2).eq([kind, id]));
        assert!(row.is_some_and(|r| r.trim_end().ends_with("ok")), "{kind} {id} in\n{listed}");
    }

    assert_eq!(rt.ok(&["run", "--rm", IMAGE, "echo1", "echo", "hi"], "run echo"), "hi\n");
    let path = shim.path().display().to_string();
    assert!(rt.d().log().contains(&path), "the log names the shim that ran:\n{}", rt.d().log());
    rt.assert_clean("run --rm echo");

    let out = rt.ctr(&["run", "--rm", IMAGE, "exit3", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    rt.assert_clean("run --rm exit 3");

    let out = rt.ctr_with_input(&["run", "--rm", IMAGE, "cat1", "cat"], b"through stdin\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "through stdin\n");
    rt.assert_clean("run --rm cat");
    assert!(rt.tasks().is_empty());
    assert!(rt.ok(&["containers", "ls", "-q"], "containers ls").is_empty());
}

#[test]
fn a_detached_task_is_listed_exec_paused_measured_killed_and_deleted_with_events_go_shim() {
    a_detached_task_is_listed_exec_paused_measured_killed_and_deleted_with_events(Shim::Go);
}

#[test]
fn a_detached_task_is_listed_exec_paused_measured_killed_and_deleted_with_events_our_shim() {
    a_detached_task_is_listed_exec_paused_measured_killed_and_deleted_with_events(Shim::Ours);
}

fn a_detached_task_is_listed_exec_paused_measured_killed_and_deleted_with_events(shim: Shim) {
    let rt = Runtime::start(shim);
    let events_out = rt.dir.join("events.out");
    let mut events = Command::new(common::stock_ctr_bin())
        .arg("--address")
        .arg(&rt.socket)
        .arg("events")
        .stdout(std::fs::File::create(&events_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The subscription is open once a published event shows up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&events_out).unwrap().contains("/namespaces/create") {
        rt.ok(&["namespaces", "create", &format!("probe{}", Instant::now().elapsed().as_nanos())], "probe");
        assert!(Instant::now() < deadline, "ctr events never printed");
        std::thread::sleep(Duration::from_millis(100));
    }

    rt.ok(&["run", "-d", IMAGE, "web", "busybox", "sleep", "1000"], "run -d");
    let (_, pid, status) = rt.tasks().into_iter().find(|t| t.0 == "web").expect("web listed");
    assert_eq!(status, "RUNNING");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the task's pid {pid} runs");

    assert_eq!(rt.ok(&["tasks", "exec", "--exec-id", "e1", "web", "echo", "from exec"], "exec"), "from exec\n");
    let ps = rt.ok(&["tasks", "ps", "web"], "ps");
    assert!(ps.lines().skip(1).any(|l| l.split_whitespace().next() == Some(pid.as_str())), "{ps}");

    rt.ok(&["tasks", "pause", "web"], "pause");
    assert_eq!(rt.status_of("web").as_deref(), Some("PAUSED"));
    rt.ok(&["tasks", "resume", "web"], "resume");
    assert_eq!(rt.status_of("web").as_deref(), Some("RUNNING"));

    let metrics = rt.ok(&["tasks", "metrics", "web"], "metrics");
    assert!(metrics.lines().nth(1).is_some_and(|l| l.starts_with("web ")), "{metrics}");
    assert!(metrics.contains("memory"), "{metrics}");

    // A running task is neither deleted nor is its container removed.
    let e = rt.fails(&["tasks", "delete", "web"], "delete running");
    assert!(e.contains("must be stopped"), "{e}");
    let e = rt.fails(&["containers", "rm", "web"], "rm running");
    assert!(e.contains("cannot delete a non stopped container"), "{e}");

    rt.ok(&["tasks", "kill", "-s", "SIGKILL", "web"], "kill");
    rt.wait_status("web", "STOPPED");
    let e = rt.fails(&["tasks", "exec", "--exec-id", "e2", "web", "echo", "x"], "exec in stopped");
    assert!(e.contains("stopped"), "{e}");

    rt.ok(&["tasks", "delete", "web"], "delete");
    rt.ok(&["containers", "rm", "web"], "rm");
    rt.assert_clean("delete");

    // Every task event arrived, in order, from the shim through the ttrpc
    // socket (and /tasks/delete once).
    let deadline = Instant::now() + Duration::from_secs(30);
    // The exec's exit comes between exec-started and paused; the task's own
    // exit is the one with its id.
    let topics = [
        " /tasks/create ",
        " /tasks/start ",
        " /tasks/exec-added ",
        " /tasks/exec-started ",
        " /tasks/exit {\"container_id\":\"web\",\"id\":\"e1\"",
        " /tasks/paused ",
        " /tasks/resumed ",
        " /tasks/exit {\"container_id\":\"web\",\"id\":\"web\"",
        " /tasks/delete ",
    ];
    loop {
        let text = std::fs::read_to_string(&events_out).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&format!(" {} /tasks/", rt.ns))).collect();
        let pos = |t: &str| lines.iter().position(|l| l.contains(t));
        if topics.iter().all(|t| pos(t).is_some()) {
            let order: Vec<usize> = topics.iter().map(|t| pos(t).unwrap()).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "events out of order:\n{}", lines.join("\n"));
            assert_eq!(lines.iter().filter(|l| l.contains(" /tasks/delete ")).count(), 1, "{}", lines.join("\n"));
            break;
        }
        assert!(Instant::now() < deadline, "missing task events in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = events.kill();
    let _ = events.wait();
}

#[test]
fn a_daemon_killed_with_sigkill_finds_its_running_tasks_again_go_shim() {
    a_daemon_killed_with_sigkill_finds_its_running_tasks_again(Shim::Go);
}

#[test]
fn a_daemon_killed_with_sigkill_finds_its_running_tasks_again_our_shim() {
    a_daemon_killed_with_sigkill_finds_its_running_tasks_again(Shim::Ours);
}

fn a_daemon_killed_with_sigkill_finds_its_running_tasks_again(shim: Shim) {
    let mut rt = Runtime::start(shim);
    rt.ok(&["run", "-d", IMAGE, "survivor", "busybox", "sleep", "1000"], "run -d survivor");
    rt.ok(&["run", "-d", IMAGE, "orphan", "busybox", "sleep", "1000"], "run -d orphan");
    let before = rt.tasks();
    let pid_of = |tasks: &[(String, String, String)], id: &str| tasks.iter().find(|t| t.0 == id).unwrap().1.clone();

    rt.kill_daemon();
    // While the daemon is down, one shim dies too.
    let shims = shims_of(&rt.socket);
    let orphan_shim = shims
        .iter()
        .copied()
        .find(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains("\0-id\0orphan\0")
        })
        .expect("the orphan's shim");
    let _ = Command::new("kill").arg("-KILL").arg(orphan_shim.to_string()).status();
    rt.restart();

    let after = rt.tasks();
    assert_eq!(after.len(), 1, "the survivor only: {after:?}");
    assert_eq!(after[0].0, "survivor");
    assert_eq!(after[0].2, "RUNNING");
    assert_eq!(pid_of(&after, "survivor"), pid_of(&before, "survivor"), "the same process");
    assert!(!rt.state_dir().join(rt.ns).join("orphan").exists(), "the dead shim's bundle is gone");

    rt.ok(&["tasks", "kill", "-s", "SIGKILL", "survivor"], "kill after restart");
    rt.wait_status("survivor", "STOPPED");
    rt.ok(&["tasks", "delete", "survivor"], "delete after restart");
    rt.ok(&["containers", "rm", "survivor", "orphan"], "rm");
    rt.assert_clean("restart");
}

#[test]
fn a_daemon_stopped_with_sigterm_leaves_its_tasks_running_go_shim() {
    a_daemon_stopped_with_sigterm_leaves_its_tasks_running(Shim::Go);
}

#[test]
fn a_daemon_stopped_with_sigterm_leaves_its_tasks_running_our_shim() {
    a_daemon_stopped_with_sigterm_leaves_its_tasks_running(Shim::Ours);
}

/// A clean stop is no reason to stop containers: they run on under their
/// shims, and the next daemon takes them back.
fn a_daemon_stopped_with_sigterm_leaves_its_tasks_running(shim: Shim) {
    let mut rt = Runtime::start(shim);
    rt.ok(&["run", "-d", IMAGE, "calm", "busybox", "sleep", "1000"], "run -d calm");
    let (_, pid, _) = rt.tasks().into_iter().find(|t| t.0 == "calm").expect("calm listed");
    rt.stop_daemon();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the task died with the daemon");
    rt.restart();
    let after = rt.tasks();
    assert_eq!(after, vec![("calm".to_string(), pid.clone(), "RUNNING".to_string())]);
    assert_eq!(rt.ok(&["tasks", "exec", "--exec-id", "e1", "calm", "echo", "back"], "exec after restart"), "back\n");
    rt.ok(&["tasks", "kill", "-s", "SIGKILL", "calm"], "kill after restart");
    rt.wait_status("calm", "STOPPED");
    rt.ok(&["tasks", "delete", "calm"], "delete after restart");
    rt.ok(&["containers", "rm", "calm"], "rm");
    rt.assert_clean("a restart after SIGTERM");
}

#[test]
fn failures_are_clear_leave_nothing_behind_and_the_daemon_keeps_serving_go_shim() {
    failures_are_clear_leave_nothing_behind_and_the_daemon_keeps_serving(Shim::Go);
}

#[test]
fn failures_are_clear_leave_nothing_behind_and_the_daemon_keeps_serving_our_shim() {
    failures_are_clear_leave_nothing_behind_and_the_daemon_keeps_serving(Shim::Ours);
}

fn failures_are_clear_leave_nothing_behind_and_the_daemon_keeps_serving(shim: Shim) {
    let rt = Runtime::start(shim);

    let e = rt.fails(&["run", "--rm", "--runtime", "io.containerd.nope.v1", IMAGE, "f1", "echo"], "unknown runtime");
    assert!(e.contains("binary not installed \"containerd-shim-nope-v1\""), "{e}");
    rt.assert_clean("unknown runtime");

    let e = rt.fails(&["run", "--rm", "docker.io/library/nope:1", "f2", "echo"], "unknown image");
    assert!(e.contains("not found"), "{e}");

    let e = rt.fails(&["run", "--rm", IMAGE, "f3", "no-such-command"], "missing command");
    assert!(e.contains("failed to create shim task"), "{e}");
    assert!(e.contains("\"no-such-command\": executable file not found"), "runc's words reach the user: {e}");
    rt.assert_clean("missing command");

    let e = rt.fails(&["run", "--rm", "--runtime", "/bin/true", IMAGE, "f4", "echo"], "not a shim");
    assert!(e.contains("failed to start shim") && e.contains("/bin/true"), "{e}");
    rt.assert_clean("a binary that is not a shim");

    let e = rt.fails(&["tasks", "kill", "nosuch"], "kill unknown");
    assert!(e.contains("not found"), "{e}");
    rt.ok(&["containers", "create", IMAGE, "idle", "true"], "create without a task");
    let e = rt.fails(&["tasks", "kill", "idle"], "kill a container without a task");
    assert!(e.contains("not found"), "{e}");

    // A shim that dies under a running task: its task goes, and its bundle,
    // mount and container process with it.
    rt.ok(&["run", "-d", IMAGE, "victim", "busybox", "sleep", "1000"], "run -d victim");
    for pid in shims_of(&rt.socket) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.status_of("victim").is_some() {
        assert!(Instant::now() < deadline, "the dead shim's task stays listed: {:?}", rt.tasks());
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.assert_clean("a shim killed under its task");

    // A shim that dies in the middle of a call: `run --rm` is waiting on
    // the task (its Wait is in flight in the daemon) when the shim goes.
    let mut attached = Command::new(common::stock_ctr_bin())
        .arg("--address")
        .arg(&rt.socket)
        .args(["-n", rt.ns, "run", "--rm", IMAGE, "midcall", "busybox", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rt.wait_status("midcall", "RUNNING");
    for pid in shims_of(&rt.socket) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = attached.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ctr run never returned after its shim died");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "ctr run succeeded although its shim died");
    let _ = rt.ctr(&["containers", "rm", "midcall"]);
    rt.assert_clean("a shim killed during a call");

    // Still serving, and still running containers.
    assert_eq!(rt.ok(&["run", "--rm", IMAGE, "after", "echo", "still here"], "run after failures"), "still here\n");
    rt.assert_clean("the last run");
}

/// Twenty containers started at once, each by its own stock ctr: all run,
/// all answer an exec, and all go, leaving nothing.
fn twenty_containers_at_once(rt: Runtime) {
    let ids: Vec<String> = (0..20).map(|i| format!("many{i}")).collect();
    let runs: Vec<_> = ids
        .iter()
        .map(|id| {
            Command::new(common::stock_ctr_bin())
                .arg("--address")
                .arg(&rt.socket)
                .args(["-n", rt.ns, "run", "-d", "--env", &format!("ID={id}"), IMAGE, id, "busybox", "sleep", "600"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (id, run) in ids.iter().zip(runs) {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "run -d {id}: {}\n{}", stderr(&out), rt.d().log());
    }
    let tasks = rt.tasks();
    for id in &ids {
        assert!(tasks.iter().any(|t| &t.0 == id && t.2 == "RUNNING"), "{id} is not running: {tasks:?}");
    }
    // Distinct processes, each answering in its own container.
    let pids: std::collections::HashSet<&String> = tasks.iter().map(|t| &t.1).collect();
    assert_eq!(pids.len(), 20, "{tasks:?}");
    for id in ids.iter().step_by(5) {
        let out = rt.ok(&["tasks", "exec", "--exec-id", "env", id, "sh", "-c", "echo $ID"], "exec echo");
        assert_eq!(out.trim(), id.as_str());
    }
    for id in &ids {
        rt.ok(&["tasks", "kill", "-s", "SIGKILL", id], "kill");
    }
    for id in &ids {
        rt.wait_status(id, "STOPPED");
        rt.ok(&["tasks", "delete", id], "tasks delete");
        rt.ok(&["containers", "rm", id], "containers rm");
    }
    rt.assert_clean("twenty containers");
}

#[test]
fn twenty_containers_at_once_go_shim() {
    twenty_containers_at_once(Runtime::start(Shim::Go));
}

#[test]
fn twenty_containers_at_once_our_shim() {
    twenty_containers_at_once(Runtime::start(Shim::Ours));
}

/// A running container's cgroup metrics on the metrics endpoint, with
/// containerd's names and labels, from the shim's `Stats`.
fn a_running_container_is_measured_on_the_metrics_endpoint(shim: Shim) {
    let address = format!("127.0.0.1:{}", common::free_port());
    let rt = Runtime::start_with(shim, |s| s.extra(&format!("[metrics]\naddress = {address:?}\n")));
    // Burns CPU and holds 16 MiB of tmpfs (charged to its memory cgroup).
    let script = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=16 2>/dev/null; while :; do :; done";
    rt.ok(&["run", "-d", IMAGE, "burner", "sh", "-c", script], "run -d burner");
    let labels = ["container_id=\"burner\"", &format!("namespace=\"{}\"", rt.ns)];
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = common::http_get(&address, "/v1/metrics");
        assert!(status.contains(" 200 "), "{status}: {text}");
        let cpu = common::sample(&text, "container_cpu_total_nanoseconds", &labels)
            .or_else(|| common::sample(&text, "container_cpu_usage_usec_microseconds", &labels));
        let memory = common::sample(&text, "container_memory_usage_usage_bytes", &labels)
            .or_else(|| common::sample(&text, "container_memory_usage_bytes", &labels));
        if cpu.is_some_and(|c| c > 0.0) && memory.is_some_and(|m| m > 16.0 * 1024.0 * 1024.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no cpu and memory of the burner after 30s:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        text.contains("# HELP container_cpu_total_nanoseconds The total cpu time\n")
            || text.contains("container_cpu_usage_usec_microseconds")
    );
    assert!(common::sample(&text, "container_pids_current", &labels).unwrap() >= 1.0, "{text}");
    rt.ok(&["tasks", "kill", "-s", "KILL", "burner"], "kill burner");
    rt.wait_status("burner", "STOPPED");
    rt.ok(&["tasks", "rm", "burner"], "tasks rm");
    rt.ok(&["containers", "rm", "burner"], "containers rm");
    let (_, text) = common::http_get(&address, "/v1/metrics");
    assert_eq!(common::sample(&text, "container_pids_current", &labels), None, "a deleted task is not measured");
    rt.assert_clean("metrics");
}

#[test]
fn a_running_container_is_measured_on_the_metrics_endpoint_go_shim() {
    a_running_container_is_measured_on_the_metrics_endpoint(Shim::Go);
}

#[test]
fn a_running_container_is_measured_on_the_metrics_endpoint_our_shim() {
    a_running_container_is_measured_on_the_metrics_endpoint(Shim::Ours);
}

/// A blob in the namespace's content, under lease `lease` (made here).
async fn put_blob(ch: &tonic::transport::Channel, ns: &str, lease: &str, data: &[u8]) -> String {
    use containerd_client::services::v1::{
        CreateRequest as LeaseCreate, CreateResponse as LeaseCreated, WriteAction, WriteContentRequest,
        WriteContentResponse,
    };
    use sha2::Digest;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)));
    let _: LeaseCreated = common::unary(
        ch,
        "/containerd.services.leases.v1.Leases/Create",
        Some(ns),
        LeaseCreate { id: lease.into(), ..Default::default() },
    )
    .await
    .unwrap();
    let write = WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: format!("ref-{lease}"),
        data: data.to_vec(),
        ..Default::default()
    };
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: format!("ref-{lease}"),
        offset: data.len() as i64,
        total: data.len() as i64,
        expected: digest.clone(),
        ..Default::default()
    };
    let _: Vec<WriteContentResponse> = common::bidi_streaming_leased(
        ch,
        "/containerd.services.content.v1.Content/Write",
        Some(ns),
        Some(lease),
        vec![write, commit],
    )
    .await
    .unwrap();
    digest
}

/// Tasks.Create from a checkpoint in content (containerd 1.6's restore):
/// a hostile checkpoint tar is refused, writes nothing outside the
/// temporary directory it is unpacked into, and that directory is removed;
/// a benign one is unpacked for the shim, kept while the task waits to
/// start (the restore runs at start), and removed once the start is over
/// (here it fails where CRIU cannot restore).
fn a_task_is_restored_from_a_checkpoint_tar_in_content(shim: Shim) {
    use containerd_client::{
        services::v1::{CreateTaskRequest, CreateTaskResponse, StartRequest, StartResponse},
        types::Descriptor,
    };
    const CRIU_TAR: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
    let xdg = tempfile::tempdir().unwrap();
    let outside = xdg.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let runtime_dir = xdg.path().join("run");
    std::fs::create_dir(&runtime_dir).unwrap();
    let rt = Runtime::start_with(shim, |mut s| {
        s.env.push(("XDG_RUNTIME_DIR".into(), runtime_dir.display().to_string()));
        s
    });
    rt.ok(&["containers", "create", IMAGE, "ck", "true"], "create container");
    let images = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&runtime_dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    let abs = format!("{}/abs", outside.display());
    let hostile = raw_tar(&[
        ("descriptors.json", tar::EntryType::Regular, "", b"{}"),
        ("../outside/up", tar::EntryType::Regular, "", b"x"),
        (&abs, tar::EntryType::Regular, "", b"x"),
        ("s", tar::EntryType::Symlink, "../outside", b""),
        ("s/through", tar::EntryType::Regular, "", b"x"),
    ]);
    let benign = raw_tar(&[
        ("descriptors.json", tar::EntryType::Regular, "", b"{}"),
        ("sub/", tar::EntryType::Directory, "", b""),
        ("sub/pages-1.img", tar::EntryType::Regular, "", b"pages"),
    ]);
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let ch = rt.d().channel().await;
        let create = |digest: String, size: usize| CreateTaskRequest {
            container_id: "ck".into(),
            checkpoint: Some(Descriptor {
                media_type: CRIU_TAR.into(),
                digest,
                size: size as i64,
                annotations: Default::default(),
            }),
            ..Default::default()
        };
        let tasks = |m: &str| format!("/containerd.services.tasks.v1.Tasks/{m}");
        // One good entry, then each way out: `..`, an absolute name, a
        // symlink out and a write through it; the first bad one stops it.
        let digest = put_blob(&ch, rt.ns, "hostile", &hostile).await;
        let err =
            common::unary::<_, CreateTaskResponse>(&ch, &tasks("Create"), Some(rt.ns), create(digest, hostile.len()))
                .await
                .expect_err("a hostile checkpoint");
        assert!(err.message().contains("invalid checkpoint entry"), "{err:?}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "written outside");
        assert!(images().is_empty(), "left behind: {:?}", images());
        // A wrong media type, as containerd words it.
        let digest = put_blob(&ch, rt.ns, "benign", &benign).await;
        let mut wrong = create(digest.clone(), benign.len());
        wrong.checkpoint.as_mut().unwrap().media_type = "application/octet-stream".into();
        let err = common::unary::<_, CreateTaskResponse>(&ch, &tasks("Create"), Some(rt.ns), wrong).await.unwrap_err();
        assert_eq!(err.message(), "unsupported checkpoint type \"application/octet-stream\"");
        assert!(images().is_empty(), "left behind: {:?}", images());

        let created =
            common::unary::<_, CreateTaskResponse>(&ch, &tasks("Create"), Some(rt.ns), create(digest, benign.len()))
                .await;
        // A shim only records the checkpoint here; runc restores at start.
        created.unwrap_or_else(|e| panic!("create from a checkpoint: {e:?}\n{}", rt.d().log()));
        let kept = images();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read_to_string(kept[0].join("sub/pages-1.img")).unwrap(), "pages");
        let started = common::unary::<_, StartResponse>(
            &ch,
            &tasks("Start"),
            Some(rt.ns),
            StartRequest { container_id: "ck".into(), exec_id: String::new() },
        )
        .await;
        if criu_restores() {
            started.unwrap();
        } else {
            // runc tried to restore, and its own words reach the client in
            // the Go shim's wording, through either shim (here runc refuses
            // the test's stand-in image before CRIU is even asked).
            let e = started.expect_err("no CRIU to restore with");
            assert!(e.message().starts_with("OCI runtime restore failed: "), "{e:?}");
        }
        assert!(images().is_empty(), "left behind after start: {:?}", images());
    });
    let _ = rt.ctr(&["tasks", "kill", "-s", "SIGKILL", "ck"]);
    let _ = rt.ctr(&["tasks", "delete", "ck"]);
    rt.ok(&["containers", "delete", "ck"], "delete container");
    rt.assert_clean("restore from a checkpoint");
}

/// Whether CRIU works here (`criu check`); it cannot on kernels whose
/// vDSO it does not handle.
fn criu_restores() -> bool {
    Command::new("criu").arg("check").output().is_ok_and(|o| o.status.success())
}

#[test]
fn a_task_is_restored_from_a_checkpoint_tar_in_content_go_shim() {
    a_task_is_restored_from_a_checkpoint_tar_in_content(Shim::Go);
}

#[test]
fn a_task_is_restored_from_a_checkpoint_tar_in_content_our_shim() {
    a_task_is_restored_from_a_checkpoint_tar_in_content(Shim::Ours);
}
