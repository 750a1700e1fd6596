//! A misbehaving plugin costs only itself (issue 12). The plugins of
//! `examples/misbehave.rs` block or spin on their thread, hang in init or in
//! shutdown, panic, or crash their process; each test enables only the ones
//! it needs, next to the echo plugin of another library (`libecho.so`), and
//! checks that the core's own services and the other library keep
//! answering:
//! - a handler that blocks (sleeps or spins) delays only its own library's
//!   calls, in process (each library's calls run on a lane of their own)
//!   and isolated in a plugin host;
//! - an init that never returns fails that plugin (and its dependents) after
//!   `io.crated.timeout.plugin.init`, and the daemon serves the rest;
//! - a shutdown hook that never returns holds SIGTERM up for
//!   `io.crated.timeout.plugin.shutdown` only;
//! - a panic fails its call with `Internal` only;
//! - a plugin isolated by `isolated_plugins` runs in a `crated plugin-host`
//!   child, reaches its dependencies from there, and when that host dies of
//!   SIGSEGV its calls fail with `Unavailable`, the daemon restarts it, and
//!   no host outlives the daemon.
//!
//! Time limits here are liveness bounds (an answer within seconds while a
//! call blocks for up to two minutes), never speed assertions.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{stderr, stdout, unary, Daemon, Setup};
use containerd_client::services::v1::VersionResponse;
use crated_tests::{
    echo_method,
    misbehave::{
        AFTER_HANG_SERVICE, CRASHER_SERVICE, ENTERED_FILE, HANG_INIT_ENTERED, HANG_INIT_TYPE, RELEASE_FILE,
        SLEEPER_SERVICE, SPINNER_SERVICE, STUCK_SERVICE, STUCK_SHUTDOWN_ENTERED,
    },
    EchoRequest, EchoResponse,
};
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};

/// How long an answer may take while a plugin misbehaves: a liveness bound.
const LIVENESS: Duration = Duration::from_secs(10);

const SLEEPER: &str = "io.crated.test.misbehave.v1.sleeper";
const SPINNER: &str = "io.crated.test.misbehave.v1.spinner";
const CRASHER: &str = "io.crated.test.misbehave.v1.crasher";
const STUCK: &str = "io.crated.test.misbehave.v1.stuck";
const AFTER_HANG: &str = "io.crated.test.misbehave.v1.after-hang";
const HANG: &str = "io.crated.test.hanginit.v1.hang";
/// Every plugin of `libmisbehave.so`.
const ALL_MISBEHAVING: &[&str] = &[SLEEPER, SPINNER, CRASHER, STUCK, AFTER_HANG, HANG];

/// The default of `io.crated.timeout.plugin.shutdown`.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

const HOST_PID: &str = "io.crated.plugin.host.pid";
const HOST_RESTARTS: &str = "io.crated.plugin.host.restarts";

/// A daemon with `libmisbehave.so` (only the plugins in `keep` enabled) and
/// `libecho.so`. `top` holds top-level config keys, `tables` config tables.
fn setup(keep: &[&str], top: &str, tables: &str) -> Setup {
    let disabled: Vec<&str> = ALL_MISBEHAVING.iter().copied().filter(|k| !keep.contains(k)).collect();
    Setup::new(&["misbehave", "echo"]).extra(&format!("disabled_plugins = {disabled:?}\n{top}\n{tables}"))
}

fn method(service: &str, name: &str) -> String {
    format!("/{service}/{name}")
}

fn text(t: &str) -> EchoRequest {
    EchoRequest { text: t.into(), count: 0 }
}

/// A unary call that must answer within [`LIVENESS`].
async fn call_live(d: &Daemon, path: &str, req: EchoRequest) -> Result<EchoResponse, tonic::Status> {
    let ch = tokio::time::timeout(LIVENESS, d.channel())
        .await
        .unwrap_or_else(|_| panic!("no connection to the daemon within {LIVENESS:?}:\n{}", d.log()));
    tokio::time::timeout(LIVENESS, unary(&ch, path, None, req))
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer within {LIVENESS:?}:\n{}", d.log()))
}

/// The pid of the process a misbehaving plugin runs in (its `Pid` method).
async fn served_pid(d: &Daemon, service: &str) -> u32 {
    let r = call_live(d, &method(service, "Pid"), text("")).await.unwrap_or_else(|e| panic!("{service}/Pid: {e:?}"));
    r.text.parse().unwrap_or_else(|_| panic!("{service}/Pid answered {:?}", r.text))
}

/// Our `ctr` against `socket`, killed (by its pid) and failed if it does not
/// finish within [`LIVENESS`]. Blocking: run it off the async threads.
fn ctr_live(socket: &Path, args: &[&str]) -> Output {
    let child = Command::new(common::ctr_bin())
        .arg("--address")
        .arg(socket)
        .args(args)
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIVENESS) {
        Ok(out) => out.expect("wait for ctr"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("ctr {args:?} did not finish within {LIVENESS:?}");
        }
    }
}

/// `ctr plugins ls [args]` within [`LIVENESS`], successful.
async fn plugins_ls(d: &Daemon, args: &[&str]) -> String {
    let socket = d.socket();
    let mut all = vec!["plugins".to_string(), "ls".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        ctr_live(&socket, &args)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "ctr plugins ls {args:?}: {}\n{}", stderr(&out), d.log());
    stdout(&out)
}

/// The STATUS column of `type id` in a `plugins ls` table.
fn status_of(table: &str, key: &str) -> Option<String> {
    let (plugin_type, id) = split_key(key);
    common::plugin_row(table, plugin_type, id)
        .filter(|cols| cols.len() >= 4)
        .and_then(|cols| Some(cols.last()?.to_string()))
}

/// `type.id` split at the last dot.
fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('.').expect("a plugin key is type.id")
}

/// The `plugins ls -d` block of `type.id` (from its `Type:` line to the next).
fn detail_block(detail: &str, key: &str) -> Option<String> {
    let (plugin_type, id) = split_key(key);
    detail
        .split("Type:")
        .find(|b| {
            let mut lines = b.lines();
            let t = lines.next().unwrap_or_default().trim();
            let i = lines.next().unwrap_or_default().trim().trim_start_matches("ID:").trim();
            t == plugin_type && i == id
        })
        .map(str::to_string)
}

/// The value of export `key` in a `-d` block.
fn export(block: &str, key: &str) -> Option<String> {
    common::plugin_export(block, key).map(str::to_string)
}

/// The `-d` block of `key`, which must be listed.
async fn block_of(d: &Daemon, key: &str) -> String {
    let detail = plugins_ls(d, &["-d"]).await;
    detail_block(&detail, key).unwrap_or_else(|| panic!("no -d block for {key} in:\n{detail}\n{}", d.log()))
}

/// The plugin host pid an isolated plugin exports.
fn host_pid(block: &str) -> u32 {
    let v = export(block, HOST_PID).unwrap_or_else(|| panic!("no {HOST_PID} export in:\n{block}"));
    v.parse().unwrap_or_else(|_| panic!("{HOST_PID} is not a pid: {v:?} in:\n{block}"))
}

/// Plugin hosts a test saw, SIGKILLed by pid when the test ends (only if
/// still alive and still a `plugin-host`), so that a failing test, or a core
/// that lets its hosts outlive it, leaves no process behind.
#[derive(Default)]
struct HostReaper(Vec<u32>);

impl HostReaper {
    fn saw(&mut self, pid: u32) {
        self.0.push(pid);
    }
}

impl Drop for HostReaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !common::process_gone(pid) && String::from_utf8_lossy(&cmdline).contains("plugin-host") {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
    }
}

// ---- the core and other libraries answer while a handler blocks ------------

/// The core's Version and health, our `ctr plugins ls`, and the echo plugin
/// of another library each answer within [`LIVENESS`].
async fn assert_others_answer(d: &Daemon) {
    let ch = tokio::time::timeout(LIVENESS, d.channel()).await.expect("connect within the liveness bound");
    let v: VersionResponse =
        tokio::time::timeout(LIVENESS, unary(&ch, "/containerd.services.version.v1.Version/Version", None, ()))
            .await
            .unwrap_or_else(|_| panic!("Version did not answer within {LIVENESS:?}:\n{}", d.log()))
            .expect("Version");
    assert!(!v.version.is_empty(), "{v:?}");
    let h: HealthCheckResponse = tokio::time::timeout(
        LIVENESS,
        unary(&ch, "/grpc.health.v1.Health/Check", None, HealthCheckRequest { service: String::new() }),
    )
    .await
    .unwrap_or_else(|_| panic!("Health/Check did not answer within {LIVENESS:?}:\n{}", d.log()))
    .expect("Health/Check");
    assert_eq!(h.status, ServingStatus::Serving as i32);

    let table = plugins_ls(d, &[]).await;
    assert_eq!(status_of(&table, "io.crated.test.v1.echo").as_deref(), Some("ok"), "{table}");

    let r = call_live(d, &echo_method("Echo"), text("still here")).await.expect("the echo plugin answers");
    assert_eq!(r.text, "still here");
}

/// Starts several calls of `path` (a handler that blocks its thread until
/// released), waits until one has entered, checks that the core and the
/// echo plugin answer while they are all still in flight, then releases
/// them and checks that they all complete. `streaming`: `path` is a server
/// streaming method whose one frame blocks.
///
/// More calls than the core has worker threads: were they polled on the
/// core's workers, nothing else could answer.
async fn blocked_calls_cost_only_their_plugin(d: &Daemon, path: &str, streaming: bool) {
    let gate_dir = tempfile::Builder::new().prefix("gate").tempdir_in(d.setup.path()).unwrap();
    let gate = gate_dir.path();
    let calls = std::thread::available_parallelism().map_or(4, usize::from).max(2) + 2;
    let ch = d.channel().await;
    let in_flight: Vec<_> = (0..calls)
        .map(|_| {
            let ch = ch.clone();
            let req = text(gate.to_str().unwrap());
            let path = path.to_string();
            tokio::spawn(async move {
                if !streaming {
                    return unary::<_, EchoResponse>(&ch, &path, None, req).await;
                }
                let mut frames = common::server_streaming::<_, EchoResponse>(&ch, &path, None, req).await?;
                match (frames.pop(), frames.is_empty()) {
                    (Some(last), true) => last,
                    (last, _) => Err(tonic::Status::internal(format!("one frame expected, got {frames:?} {last:?}"))),
                }
            })
        })
        .collect();

    // Entered: at least one call blocks the plugin's thread now. (Calls
    // into one library queue behind each other, so maybe only one.)
    let entered = gate.join(ENTERED_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !entered.exists() {
        assert!(Instant::now() < deadline, "no {path} call entered its handler within 30s:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_blocked = |when: &str| {
        let done = in_flight.iter().filter(|h| h.is_finished()).count();
        assert_eq!(done, 0, "{done} of the {calls} {path} calls returned {when}, before their release:\n{}", d.log());
    };
    still_blocked("as one entered");

    assert_others_answer(d).await;
    still_blocked("while the others answered");

    std::fs::write(gate.join(RELEASE_FILE), b"go").unwrap();
    for (i, h) in in_flight.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .unwrap_or_else(|_| panic!("{path} call {i} was not done within 60s of its release:\n{}", d.log()))
            .unwrap();
        let r = r.unwrap_or_else(|e| panic!("{path} call {i}: {e:?}\n{}", d.log()));
        assert_eq!(r.text, "released", "{path} call {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_handler_delays_only_its_own_library() {
    let d = setup(&[SLEEPER], "", "").start();
    assert_eq!(served_pid(&d, SLEEPER_SERVICE).await, d.pid(), "the sleeper runs in the daemon");
    blocked_calls_cost_only_their_plugin(&d, &method(SLEEPER_SERVICE, "Block"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_blocking_in_its_frames_delays_only_its_own_library() {
    let d = setup(&[SLEEPER], "", "").start();
    blocked_calls_cost_only_their_plugin(&d, &method(SLEEPER_SERVICE, "BlockStream"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_handler_delays_only_its_own_library() {
    let d = setup(&[SPINNER], "", "").start();
    assert_eq!(served_pid(&d, SPINNER_SERVICE).await, d.pid(), "the spinner runs in the daemon");
    blocked_calls_cost_only_their_plugin(&d, &method(SPINNER_SERVICE, "Spin"), false).await;
}

// ---- init and shutdown that never return ------------------------------------

async fn a_hung_init_fails_only_its_plugin_and_dependents(hang_in: &str) {
    let tables = format!(
        "[timeouts]\n\"io.crated.timeout.plugin.init\" = \"2s\"\n[plugins.\"{HANG}\"]\nhang_in = {hang_in:?}\n"
    );
    let mut d = setup(&[HANG, AFTER_HANG], "", &tables).start();
    assert!(
        d.setup.state().join(HANG_INIT_ENTERED).exists(),
        "the hung init was never entered ({hang_in}):\n{}",
        d.log()
    );

    let table = plugins_ls(&d, &[]).await;
    assert_eq!(status_of(&table, HANG).as_deref(), Some("error"), "{table}\n{}", d.log());
    assert_eq!(status_of(&table, AFTER_HANG).as_deref(), Some("error"), "{table}\n{}", d.log());
    assert_eq!(status_of(&table, "io.crated.test.v1.echo").as_deref(), Some("ok"), "{table}\n{}", d.log());
    assert_eq!(status_of(&table, "io.crated.testrelay.v1.relay").as_deref(), Some("ok"), "{table}\n{}", d.log());

    let detail = plugins_ls(&d, &["-d"]).await;
    let hang = detail_block(&detail, HANG).unwrap_or_else(|| panic!("{detail}"));
    assert!(hang.contains("init did not finish within 2s"), "{hang}");
    let after = detail_block(&detail, AFTER_HANG).unwrap_or_else(|| panic!("{detail}"));
    assert!(after.contains("dependency not available"), "{after}");
    assert!(after.contains(HANG_INIT_TYPE), "the dependent's reason names what it lacks: {after}");

    let e = call_live(&d, &method(AFTER_HANG_SERVICE, "Pid"), text("")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "a failed plugin serves nothing: {e:?}");
    assert_others_answer(&d).await;

    // Nothing of the hung init keeps the daemon from stopping.
    let status = d.stop();
    assert!(status.success(), "crated exited with {status} after a hung init:\n{}", d.log());
}

#[tokio::test]
async fn an_init_blocking_in_its_entry_times_out() {
    a_hung_init_fails_only_its_plugin_and_dependents("entry").await;
}

#[tokio::test]
async fn an_init_blocking_in_its_future_times_out() {
    a_hung_init_fails_only_its_plugin_and_dependents("future").await;
}

#[tokio::test]
async fn a_hung_shutdown_hook_does_not_keep_the_daemon_up() {
    let tables = "[timeouts]\n\"io.crated.timeout.plugin.shutdown\" = \"1s\"\n";
    let mut d = setup(&[STUCK], "", tables).start();
    assert_eq!(served_pid(&d, STUCK_SERVICE).await, d.pid());
    let asked = Instant::now();
    let status = d.stop();
    let took = asked.elapsed();
    assert!(status.success(), "crated exited with {status}:\n{}", d.log());
    // The one bound on time here, and a coarse one: it is what tells the
    // configured 1s from the 10s default, which would also end the wait.
    assert!(took < DEFAULT_SHUTDOWN_TIMEOUT, "the stop took {took:?}: the configured 1s was not used:\n{}", d.log());
    assert!(
        d.setup.state().join(STUCK_SHUTDOWN_ENTERED).exists(),
        "the stuck plugin's shutdown hook never ran:\n{}",
        d.log()
    );
    // The daemon went on to shut the other library's plugins down.
    let order = std::fs::read_to_string(d.setup.state().join("shutdown-order")).unwrap_or_default();
    assert!(order.lines().any(|l| l == "echo"), "echo was not shut down: {order:?}\n{}", d.log());
}

// ---- panics -----------------------------------------------------------------

#[tokio::test]
async fn a_panicking_handler_fails_only_its_call() {
    let d = setup(&[CRASHER], "", "").start();
    let e = call_live(&d, &method(CRASHER_SERVICE, "Panic"), text("boom")).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert_eq!(served_pid(&d, CRASHER_SERVICE).await, d.pid(), "the crasher runs in the daemon and still serves");
    let r = call_live(&d, &method(CRASHER_SERVICE, "Relay"), text("after the panic")).await.unwrap();
    assert_eq!(r.text, "relayed: after the panic");
    assert_others_answer(&d).await;
}

// ---- isolation in a plugin host ---------------------------------------------

/// `isolated_plugins = [key]`.
fn isolated(keys: &[&str]) -> String {
    format!("isolated_plugins = {keys:?}")
}

/// Checks that `key` is isolated and ok: its host pid is exported, is a
/// child of the daemon, and is the process that serves `service`.
async fn assert_isolated_ok(d: &Daemon, key: &str, service: &str, restarts: &str) -> u32 {
    let table = plugins_ls(d, &[]).await;
    assert_eq!(status_of(&table, key).as_deref(), Some("ok"), "{table}\n{}", d.log());
    let block = block_of(d, key).await;
    let pid = host_pid(&block);
    assert_eq!(export(&block, HOST_RESTARTS).as_deref(), Some(restarts), "{block}");
    assert_ne!(pid, d.pid(), "the host is not the daemon: {block}");
    let (_, ppid) = common::process_state(pid).unwrap_or_else(|| panic!("host pid {pid} does not exist: {block}"));
    assert_eq!(ppid, d.pid(), "the plugin host is a child of the daemon");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("plugin-host"),
        "host {pid} runs {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(served_pid(d, service).await, pid, "{key} is served by its host");
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_plugin_crashing_costs_only_its_host() {
    let mut reaper = HostReaper::default();
    let mut d = setup(&[CRASHER], &isolated(&[CRASHER]), "").start();
    let daemon_pid = d.pid();
    let first = assert_isolated_ok(&d, CRASHER, CRASHER_SERVICE, "0").await;
    reaper.saw(first);

    // Its dependency (the echo plugin, in the daemon) is reachable from the host.
    let relay = method(CRASHER_SERVICE, "Relay");
    let r = call_live(&d, &relay, text("from the host")).await.unwrap();
    assert_eq!(r.text, "relayed: from the host");

    // The crash fails the call in flight, and only that.
    let e = call_live(&d, &method(CRASHER_SERVICE, "Crash"), text("")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}\n{}", d.log());
    assert_others_answer(&d).await;

    // Restarted: ok again, one restart, another host.
    // While it is down, it is listed as an error naming the plugin host
    // and the signal. That window may be too short to see: what is seen of
    // it is checked, its being seen is not.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_down = None;
    let second = loop {
        let detail = plugins_ls(&d, &["-d"]).await;
        let block = detail_block(&detail, CRASHER).unwrap_or_else(|| panic!("{detail}"));
        if block.contains("Error:") {
            assert!(
                block.contains("plugin host") && block.contains("SIGSEGV"),
                "the reason of a crashed host names it and the signal:\n{block}"
            );
            seen_down.get_or_insert_with(|| block.clone());
        }
        if export(&block, HOST_RESTARTS).as_deref() == Some("1") && !block.contains("Error:") {
            let table = plugins_ls(&d, &[]).await;
            if status_of(&table, CRASHER).as_deref() == Some("ok") {
                break host_pid(&block);
            }
        }
        assert!(Instant::now() < deadline, "the crasher's host was not restarted within 20s:\n{block}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    reaper.saw(second);
    if let Some(block) = seen_down {
        eprintln!("seen while the host was down:\n{block}");
    }
    assert_ne!(second, first, "a restarted host is a new process");
    assert_eq!(assert_isolated_ok(&d, CRASHER, CRASHER_SERVICE, "1").await, second);
    let r = call_live(&d, &relay, text("after the crash")).await.unwrap();
    assert_eq!(r.text, "relayed: after the crash");

    // The daemon never went away, and the crashed host is gone.
    assert_eq!(d.pid(), daemon_pid);
    assert_eq!(d.exited(), None, "the daemon exited:\n{}", d.log());
    assert!(common::wait_process_gone(first, Duration::from_secs(5)), "the crashed host {first} is still there");

    // Stopping the daemon stops its host.
    let status = d.stop();
    assert!(status.success(), "crated exited with {status}:\n{}", d.log());
    assert!(common::wait_process_gone(second, Duration::from_secs(10)), "host {second} outlived the daemon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_sleeping_handler_blocks_only_its_host() {
    let mut reaper = HostReaper::default();
    let mut d = setup(&[SLEEPER], &isolated(&[SLEEPER]), "").start();
    let host = assert_isolated_ok(&d, SLEEPER, SLEEPER_SERVICE, "0").await;
    reaper.saw(host);
    blocked_calls_cost_only_their_plugin(&d, &method(SLEEPER_SERVICE, "Block"), false).await;
    blocked_calls_cost_only_their_plugin(&d, &method(SLEEPER_SERVICE, "BlockStream"), true).await;
    let status = d.stop();
    assert!(status.success(), "crated exited with {status}:\n{}", d.log());
    assert!(common::wait_process_gone(host, Duration::from_secs(10)), "host {host} outlived the daemon");
}

#[tokio::test]
async fn plugin_hosts_do_not_outlive_a_killed_daemon() {
    let mut reaper = HostReaper::default();
    // Also the table form of isolated_plugins.
    let tables = format!("[isolated_plugins.\"{CRASHER}\"]\n[isolated_plugins.\"{SLEEPER}\"]\n");
    let mut d = setup(&[CRASHER, SLEEPER], "", &tables).start();
    let crasher = assert_isolated_ok(&d, CRASHER, CRASHER_SERVICE, "0").await;
    reaper.saw(crasher);
    let sleeper = assert_isolated_ok(&d, SLEEPER, SLEEPER_SERVICE, "0").await;
    reaper.saw(sleeper);
    d.signal_and_wait("KILL");
    for host in [crasher, sleeper] {
        assert!(common::wait_process_gone(host, Duration::from_secs(10)), "host {host} outlived the SIGKILLed daemon");
    }
}

/// The cgroup directory of `pid` for `controller` (v1), or its unified one
/// (v2), from `/proc/<pid>/cgroup`.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/<pid>/cgroup");
    let root = Path::new("/sys/fs/cgroup");
    for line in text.lines() {
        let mut cols = line.splitn(3, ':');
        let (_, controllers, path) = (cols.next(), cols.next().unwrap_or_default(), cols.next().unwrap_or_default());
        if controllers.split(',').any(|c| c == controller) {
            return root.join(controller).join(path.trim_start_matches('/'));
        }
    }
    let unified = text.lines().find_map(|l| l.strip_prefix("0::")).expect("a v1 controller line or a v2 line");
    root.join(unified.trim_start_matches('/'))
}

#[tokio::test]
async fn an_isolated_plugin_with_limits_runs_in_its_own_cgroup() {
    let mut reaper = HostReaper::default();
    let tables = format!("[isolated_plugins.\"{SLEEPER}\"]\nmemory_limit = \"64M\"\ncpus = 0.5\n");
    let mut d = setup(&[SLEEPER], "", &tables).start();
    let host = assert_isolated_ok(&d, SLEEPER, SLEEPER_SERVICE, "0").await;
    reaper.saw(host);

    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let memory = cgroup_dir(host, "memory");
    let daemon_memory = cgroup_dir(d.pid(), "memory");
    assert_ne!(memory, daemon_memory, "the host has a memory cgroup of its own");
    let (limit_file, quota) = if v2 {
        ("memory.max", (memory.join("cpu.max"), "50000 100000"))
    } else {
        ("memory.limit_in_bytes", (cgroup_dir(host, "cpu").join("cpu.cfs_quota_us"), "50000"))
    };
    let limit = std::fs::read_to_string(memory.join(limit_file)).unwrap_or_else(|e| panic!("{memory:?}: {e}"));
    assert_eq!(limit.trim(), (64u64 << 20).to_string(), "{}", memory.join(limit_file).display());
    let cpu = std::fs::read_to_string(&quota.0).unwrap_or_else(|e| panic!("{:?}: {e}", quota.0));
    assert_eq!(cpu.trim(), quota.1, "{}", quota.0.display());
    let cpu_dir = quota.0.parent().unwrap().to_path_buf();

    // Under its limits, it serves.
    let r = call_live(&d, &method(SLEEPER_SERVICE, "Pid"), text("")).await.unwrap();
    assert_eq!(r.text, host.to_string());

    // A clean stop removes the host and its cgroups.
    let status = d.stop();
    assert!(status.success(), "crated exited with {status}:\n{}", d.log());
    assert!(common::wait_process_gone(host, Duration::from_secs(10)), "host {host} outlived the daemon");
    for dir in [memory, cpu_dir] {
        assert!(!dir.exists(), "the plugin host's cgroup {} is still there", dir.display());
    }
}
