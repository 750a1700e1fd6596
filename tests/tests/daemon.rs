//! The daemon as a user meets it: its command line, how it reads (and
//! refuses) a config file, how plugins are configured, disabled and required,
//! how it owns its socket, and how it starts and stops.

mod common;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Output,
};

use common::{stderr, stdout, unary, Daemon, Setup};
use containerd_client::services::v1::ServerResponse;
use crated_tests::{echo_method, EchoRequest, EchoResponse};
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};

/// 1-based number of the first line of `text` that equals `line`.
fn line_number(text: &str, line: &str) -> usize {
    text.lines().position(|l| l == line).map(|i| i + 1).unwrap_or_else(|| panic!("{line:?} not in:\n{text}"))
}

/// Asserts that crated failed, and returns its stderr.
fn failed(o: &Output) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "crated should have failed; stdout:\n{}\nstderr:\n{err}", stdout(o));
    err
}

/// The rows of `ctr plugins ls`: (type, id, status).
fn plugin_rows(d: &Daemon) -> Vec<(String, String, String)> {
    let o = d.ctr(&["plugins", "ls"]);
    assert!(o.status.success(), "ctr plugins ls failed: {}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["TYPE", "ID", "PLATFORMS", "STATUS"], "{out}");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 4, "{l:?}");
            (cols[0].to_string(), cols[1].to_string(), cols[3].to_string())
        })
        .collect()
}

fn status_of(rows: &[(String, String, String)], plugin_type: &str, id: &str) -> Option<String> {
    rows.iter().find(|(t, i, _)| t == plugin_type && i == id).map(|(_, _, s)| s.clone())
}

async fn greeting(d: &Daemon) -> String {
    let ch = d.channel().await;
    let r: EchoResponse =
        unary(&ch, &echo_method("Greeting"), None, EchoRequest { text: String::new(), count: 0 }).await.unwrap();
    r.text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- config errors ----------------------------------------------------

#[test]
fn malformed_toml_fails_naming_file_and_line_and_leaves_no_socket() {
    let setup = Setup::new(&["echo"]);
    let text = setup.config_text().replace("[grpc]", "[grpc");
    let line = line_number(&text, "[grpc");
    std::fs::write(setup.config_path(), &text).unwrap();

    let err = failed(&setup.run_crated(&["-c", s(&setup.config_path())]));
    assert!(err.contains(s(&setup.config_path())), "stderr must name the file:\n{err}");
    assert!(err.contains(&format!("line {line}")), "stderr must name line {line}:\n{err}");
    assert!(!setup.socket().exists(), "no socket may be left behind");
    assert!(!setup.root().exists(), "nothing may be created under root");
}

#[test]
fn wrong_value_type_fails_naming_key_and_line() {
    let setup = Setup::new(&["echo"]).grpc("uid = \"x\"");
    let text = setup.config_text();
    let line = line_number(&text, "uid = \"x\"");
    setup.write_config();

    let err = failed(&setup.run_crated(&["-c", s(&setup.config_path())]));
    assert!(err.contains("uid"), "stderr must name the key:\n{err}");
    assert!(err.contains(&format!("line {line}")), "stderr must name line {line}:\n{err}");
    assert!(!setup.socket().exists());
}

#[test]
fn missing_or_unsupported_version_fails_saying_2_and_3_are_supported() {
    let setup = Setup::new(&[]);
    let full = setup.config_text();
    for (what, text) in
        [("missing", full.replace("version = 2\n", "")), ("4", full.replace("version = 2\n", "version = 4\n"))]
    {
        assert_ne!(text, full);
        std::fs::write(setup.config_path(), &text).unwrap();
        let err = failed(&setup.run_crated(&["-c", s(&setup.config_path())]));
        assert!(err.contains("version 2 and 3"), "version {what}: stderr must say which versions work:\n{err}");
        assert!(err.contains(s(&setup.config_path())), "version {what}: stderr must name the file:\n{err}");
        if what == "4" {
            assert!(err.contains("version 4"), "{err}");
        }
        assert!(!setup.socket().exists());
    }
}

#[test]
fn unknown_top_level_key_is_a_warning_not_an_error() {
    let mut d = Setup::new(&["echo"]).extra("frobnicate_the_widgets = true").start();
    let o = d.ctr(&["version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = d.log();
    let warning = log
        .lines()
        .find(|l| l.contains("frobnicate_the_widgets"))
        .unwrap_or_else(|| panic!("no warning names the unknown key:\n{log}"));
    assert!(warning.contains("warning") && warning.contains("unknown"), "{warning}");
    assert!(d.stop().success());
}

// ---- plugin configuration ---------------------------------------------

#[tokio::test]
async fn plugin_table_is_merged_over_the_plugins_defaults() {
    let d = Setup::new(&["echo"]).extra("[plugins.\"io.crated.test.v1.echo\"]\ngreeting = \"hi\"").start();
    assert_eq!(greeting(&d).await, "hi!", "user greeting with the default suffix");

    let d = Setup::new(&["echo"]).start();
    assert_eq!(greeting(&d).await, "hello!", "defaults alone");
}

#[test]
fn disabled_plugin_is_not_listed() {
    let d = Setup::new(&["echo"]).start();
    let rows = plugin_rows(&d);
    assert_eq!(status_of(&rows, "io.crated.test.v1", "skipper").as_deref(), Some("skip"), "control: {rows:?}");

    let d = Setup::new(&["echo"]).extra("disabled_plugins = [\"io.crated.test.v1.skipper\"]").start();
    let rows = plugin_rows(&d);
    assert_eq!(status_of(&rows, "io.crated.test.v1", "skipper"), None, "{rows:?}");
    assert_eq!(status_of(&rows, "io.crated.test.v1", "echo").as_deref(), Some("ok"), "{rows:?}");
}

#[test]
fn required_plugin_that_fails_stops_the_daemon() {
    let setup = Setup::new(&["broken"]).extra("required_plugins = [\"io.crated.broken.v1.broken\"]");
    let config = setup.write_config();
    let err = failed(&setup.run_crated(&["-c", s(&config)]));
    let last = err.lines().rfind(|l| l.starts_with("Error:")).unwrap_or_default();
    assert!(last.contains("io.crated.broken.v1.broken"), "the error must name the plugin:\n{err}");
    assert!(last.contains("the broken plugin always fails"), "and say why:\n{err}");
    assert!(!setup.socket().exists(), "no socket may be left behind");
}

#[test]
fn required_plugin_that_is_not_registered_stops_the_daemon() {
    let setup = Setup::new(&["echo"]).extra("required_plugins = [\"io.crated.nowhere.v1.ghost\"]");
    let config = setup.write_config();
    let err = failed(&setup.run_crated(&["-c", s(&config)]));
    assert!(err.contains("io.crated.nowhere.v1.ghost"), "the error must name the plugin:\n{err}");
    assert!(!setup.socket().exists());
}

#[test]
fn required_plugin_that_starts_lets_the_daemon_run() {
    let mut d = Setup::new(&["echo"]).extra("required_plugins = [\"io.crated.test.v1.echo\"]").start();
    let rows = plugin_rows(&d);
    assert_eq!(status_of(&rows, "io.crated.test.v1", "echo").as_deref(), Some("ok"), "{rows:?}");
    assert!(d.stop().success());
}

#[test]
fn plugin_panicking_at_init_is_an_error_and_the_daemon_keeps_running() {
    let mut d = Setup::new(&["echo", "broken"]).start();
    let rows = plugin_rows(&d);
    assert_eq!(status_of(&rows, "io.crated.broken.v1", "panics").as_deref(), Some("error"), "{rows:?}");
    assert_eq!(status_of(&rows, "io.crated.test.v1", "echo").as_deref(), Some("ok"), "{rows:?}");
    let o = d.ctr(&["version"]);
    assert!(o.status.success(), "the daemon must still serve: {}", stderr(&o));
    assert!(d.stop().success(), "{}", d.log());
}

// ---- the socket ---------------------------------------------------------

#[test]
fn socket_is_0660_and_owned_by_the_configured_uid_and_gid() {
    let d = Setup::new(&["echo"]).start();
    let meta = std::fs::symlink_metadata(d.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "mode {:o}", meta.permissions().mode());
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "default owner");

    let d = Setup::new(&["echo"]).grpc("uid = 4242\ngid = 4343").start();
    let meta = std::fs::symlink_metadata(d.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "mode {:o}", meta.permissions().mode());
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
}

#[test]
fn stale_socket_is_replaced() {
    let setup = Setup::new(&["echo"]);
    drop(std::os::unix::net::UnixListener::bind(setup.socket()).unwrap());
    assert!(setup.socket().exists(), "the stale socket file stays");
    assert!(std::os::unix::net::UnixStream::connect(setup.socket()).is_err(), "nobody listens on it");

    let mut d = setup.start();
    let o = d.ctr(&["version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.stop().success());
}

#[test]
fn live_socket_is_refused_and_its_daemon_keeps_serving() {
    let a = Setup::new(&["echo"]).start();
    let uuid_line = |o: &Output| stdout(o).lines().find(|l| l.contains("UUID")).map(str::to_string);
    let before = a.ctr(&["version"]);
    assert!(before.status.success());

    let b = Setup::new(&["echo"]);
    let config = b.write_config();
    let err = failed(&b.run_crated(&["-c", s(&config), "-a", s(&a.socket())]));
    assert!(err.contains("another daemon is serving"), "{err}");
    assert!(err.contains(s(&a.socket())), "the error must name the socket:\n{err}");
    assert!(!b.root().exists(), "B must refuse before touching its root");

    let after = a.ctr(&["version"]);
    assert!(after.status.success(), "A must still answer: {}", stderr(&after));
    assert!(uuid_line(&after).is_some());
    assert_eq!(uuid_line(&before), uuid_line(&after), "still the same daemon");
    assert!(a.socket().exists());
}

#[test]
fn regular_file_at_the_socket_address_is_refused_and_left_alone() {
    let setup = Setup::new(&["echo"]);
    std::fs::write(setup.socket(), b"precious data").unwrap();
    let config = setup.write_config();
    let err = failed(&setup.run_crated(&["-c", s(&config)]));
    assert!(err.contains("is not a socket"), "{err}");
    assert!(err.contains(s(&setup.socket())), "the error must name the path:\n{err}");
    assert_eq!(std::fs::read(setup.socket()).unwrap(), b"precious data");
}

// ---- lifecycle ------------------------------------------------------------

fn stops_cleanly_on(signal: &str) {
    let mut d = Setup::new(&["echo"]).start();
    let o = d.ctr(&["version"]);
    assert!(o.status.success());
    let status = d.signal_and_wait(signal);
    assert!(status.success(), "SIG{signal}: exit {status}\n{}", d.log());
    assert!(!d.socket().exists(), "SIG{signal}: the socket must be removed");
    let order = std::fs::read_to_string(d.setup.state().join("shutdown-order")).unwrap_or_default();
    assert_eq!(order, "relay\necho\n", "SIG{signal}: plugins stop in reverse init order");
}

#[test]
fn sigterm_stops_plugins_in_reverse_order_and_removes_the_socket() {
    stops_cleanly_on("TERM");
}

#[test]
fn sigint_stops_plugins_in_reverse_order_and_removes_the_socket() {
    stops_cleanly_on("INT");
}

#[test]
fn command_line_overrides_the_config_file() {
    let setup = Setup::new(&["echo"]);
    let dir = setup.path().to_path_buf();
    let (cfg_socket, cfg_root, cfg_state) = (dir.join("from-config.sock"), dir.join("cfg-root"), dir.join("cfg-state"));
    let (cli_root, cli_state) = (dir.join("cli-root"), dir.join("cli-state"));
    let config = dir.join("override.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\nplugin_dir = {:?}\n[grpc]\naddress = {:?}\n[debug]\nlevel = \"error\"\n",
            s(&cfg_root),
            s(&cfg_state),
            s(&setup.plugin_dir()),
            s(&cfg_socket)
        ),
    )
    .unwrap();
    // `-a` is the harness's socket, so `Daemon::spawn` waits on it.
    let cli_socket = setup.socket();
    let mut d = Daemon::spawn(
        setup,
        &["-c", s(&config), "-a", s(&cli_socket), "--root", s(&cli_root), "--state", s(&cli_state), "-l", "debug"],
    );
    let o = d.ctr(&["version"]);
    assert!(o.status.success(), "serves on the -a address: {}", stderr(&o));
    assert!(!cfg_socket.exists(), "the config's address is not used");
    assert!(cli_root.join("io.crated.test.v1.echo/started").exists(), "plugin root under --root");
    assert!(cli_state.join("io.crated.test.v1.echo").is_dir(), "plugin state under --state");
    assert!(!cfg_root.exists() && !cfg_state.exists(), "the config's root and state are not used");

    assert!(d.stop().success());
    assert_eq!(std::fs::read_to_string(cli_state.join("shutdown-order")).unwrap(), "relay\necho\n");
    let log = d.log();
    assert!(log.contains("DEBUG"), "-l debug beats `level = \"error\"`:\n{log}");
    assert!(log.contains("INFO") && log.contains("serving"), "{log}");
}

// ---- config subcommands ---------------------------------------------------

fn parse_toml(o: &Output) -> toml::Table {
    assert!(o.status.success(), "{}", stderr(o));
    let out = stdout(o);
    out.parse::<toml::Table>().unwrap_or_else(|e| panic!("not TOML ({e}):\n{out}"))
}

#[test]
fn config_default_prints_valid_toml_with_plugin_defaults() {
    let setup = Setup::new(&["echo"]);
    // Pinned to an empty config, so the host's /etc/containerd/config.toml
    // plays no part.
    let plain = setup.path().join("plain.toml");
    std::fs::write(&plain, "version = 2\n").unwrap();
    let t = parse_toml(&setup.run_crated(&["-c", s(&plain), "config", "default"]));
    assert_eq!(t["version"].as_integer(), Some(2));
    assert_eq!(t["grpc"]["address"].as_str(), Some("/run/containerd/containerd.sock"));
    assert!(
        t.get("plugins").and_then(|p| p.as_table()).is_none_or(|p| p.is_empty()),
        "no plugin_dir, no plugins: {t:?}"
    );

    let config = setup.write_config();
    let t = parse_toml(&setup.run_crated(&["-c", s(&config), "config", "default"]));
    assert_eq!(t["version"].as_integer(), Some(2));
    assert_eq!(
        t["grpc"]["address"].as_str(),
        Some("/run/containerd/containerd.sock"),
        "defaults, not the file's values"
    );
    let echo = &t["plugins"]["io.crated.test.v1.echo"];
    assert_eq!(echo["greeting"].as_str(), Some("hello"), "{t:?}");
    assert_eq!(echo["suffix"].as_str(), Some("!"), "{t:?}");
}

#[test]
fn config_dump_merges_relative_imports_over_plugin_defaults() {
    let setup = Setup::new(&["echo"]).extra("imports = [\"extra.toml\"]");
    std::fs::write(
        setup.path().join("extra.toml"),
        "version = 2\n[plugins.\"io.crated.test.v1.echo\"]\ngreeting = \"from import\"\n",
    )
    .unwrap();
    let config = setup.write_config();
    // From another directory: the import is relative to the config file.
    let o = std::process::Command::new(common::crated_bin())
        .args(["-c", s(&config), "config", "dump"])
        .current_dir("/")
        .output()
        .unwrap();
    let t = parse_toml(&o);
    let echo = &t["plugins"]["io.crated.test.v1.echo"];
    assert_eq!(echo["greeting"].as_str(), Some("from import"), "{t:?}");
    assert_eq!(echo["suffix"].as_str(), Some("!"), "{t:?}");
    assert_eq!(t["grpc"]["address"].as_str(), Some(s(&setup.socket())), "dump shows the file's values");
}

// ---- proxy plugins ----------------------------------------------------------

#[test]
fn proxy_plugin_with_unknown_type_is_refused() {
    let setup = Setup::new(&["echo"]).extra("[proxy_plugins.bad]\ntype = \"nonsense\"\naddress = \"/x\"");
    let config = setup.write_config();
    let err = failed(&setup.run_crated(&["-c", s(&config)]));
    assert!(err.contains("proxy plugin \"bad\""), "the error must name the proxy plugin:\n{err}");
    assert!(err.contains("type"), "{err}");
    assert!(!setup.socket().exists());
}

#[test]
fn valid_proxy_plugin_is_accepted() {
    let mut d =
        Setup::new(&["echo"]).extra("[proxy_plugins.snap]\ntype = \"snapshot\"\naddress = \"/tmp/x.sock\"").start();
    let o = d.ctr(&["version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!d.log().contains("proxy_plugins"), "no warning about the table:\n{}", d.log());
    assert!(d.stop().success());
}

// ---- core services ------------------------------------------------------------

async fn server_info(d: &Daemon) -> ServerResponse {
    let ch = d.channel().await;
    unary(&ch, "/containerd.services.introspection.v1.Introspection/Server", None, ()).await.unwrap()
}

#[tokio::test]
async fn server_uuid_survives_a_restart_and_pid_is_the_daemons() {
    let mut d = Setup::new(&["echo"]).start();
    let first = server_info(&d).await;
    assert!(uuid_like(&first.uuid), "{first:?}");
    assert_eq!(first.pid, u64::from(d.pid()));
    assert!(d.stop().success());

    d.restart();
    let second = server_info(&d).await;
    assert_eq!(second.pid, u64::from(d.pid()));
    assert_ne!(first.pid, second.pid, "a new process");
    assert_eq!(first.uuid, second.uuid, "the uuid is kept under root");

    // Another root, another uuid.
    let other = Setup::new(&["echo"]).start();
    assert_ne!(server_info(&other).await.uuid, first.uuid);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.chars().filter(|c| *c == '-').count() == 4
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[tokio::test]
async fn grpc_health_check_answers_serving() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    let r: HealthCheckResponse =
        unary(&ch, "/grpc.health.v1.Health/Check", None, HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(r.status, ServingStatus::Serving as i32);
}

// ---- a stop request that comes early ----------------------------------------

extern "C" {
    /// libc's kill(2): the harness's `kill` command takes a millisecond to
    /// start, which is longer than the window this test needs to hit.
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Kills (SIGKILL) and reaps the child if the test fails half way.
struct Reap(Option<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn sigterm_as_soon_as_the_socket_answers_still_stops_cleanly() {
    use std::time::{Duration, Instant};
    const SIGTERM: i32 = 15;
    for round in 0..12 {
        let setup = Setup::new(&["echo"]);
        let config = setup.write_config();
        let log = std::fs::File::create(setup.log_path()).unwrap();
        let child = std::process::Command::new(common::crated_bin())
            .args(["-c", s(&config)])
            .env("RUST_BACKTRACE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut reap = Reap(Some(child));
        let child = reap.0.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // No sleep: signal the moment the socket accepts a connection.
        while std::os::unix::net::UnixStream::connect(setup.socket()).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "round {round}: crated exited early");
            assert!(Instant::now() < deadline, "round {round}: crated did not serve");
        }
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) with the pid of our own child, not yet reaped.
        assert_eq!(unsafe { kill(pid, SIGTERM) }, 0);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "round {round}: crated did not stop");
            std::thread::sleep(Duration::from_millis(5));
        };
        reap.0 = None;
        let log = std::fs::read_to_string(setup.log_path()).unwrap_or_default();
        assert!(status.success(), "round {round}: exit {status}, killed before its handler was installed?\n{log}");
        assert!(!setup.socket().exists(), "round {round}: socket left behind");
        let order = std::fs::read_to_string(setup.state().join("shutdown-order")).unwrap_or_default();
        assert_eq!(order, "relay\necho\n", "round {round}: plugins not stopped");
    }
}

#[test]
fn plugin_tracing_events_reach_the_daemon_log_at_its_level() {
    let mut d = Setup::new(&["echo"]).start();
    d.stop();
    let log = d.log();
    let line = log.lines().find(|l| l.contains("echo plugin initialised")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("greeting=hello"), "fields travel with the message: {line}");
    assert!(line.contains("source=\"echo\""), "the target says which library: {line}");
    assert!(!log.contains("echo plugin debug detail"), "debug is below the default level:\n{log}");

    let mut d = Setup::new(&["echo"]).extra("[debug]\nlevel = \"debug\"").start();
    d.stop();
    assert!(d.log().contains("echo plugin debug detail"), "{}", d.log());
}
