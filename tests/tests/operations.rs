//! Operating crated (issue 11): systemd's readiness notifications
//! (`NOTIFY_SOCKET`, path and abstract), `crated publish` (what Go shims
//! run to send events) forwarding to a real events plugin, `crated
//! oci-hook` rendering and exec'ing a real hook, and the systemd unit file.

mod common;

use std::io::Write;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{crated_bin, stderr, Daemon, Setup};
use containerd_client::events::NamespaceCreate;
use containerd_client::services::v1::{events_client::EventsClient, SubscribeRequest};
use containerd_client::types::Envelope;
use prost::Message;
use tonic::Streaming;

/// The next datagram on `sock` (within 30s) as text.
fn recv_text(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification within 30s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn notified_daemon(notify_socket: &str) -> Daemon {
    let mut setup = Setup::new(&[]);
    setup.env.push(("NOTIFY_SOCKET".into(), notify_socket.into()));
    setup.start()
}

#[test]
fn ready_and_stopping_reach_a_notify_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut d = notified_daemon(path.to_str().unwrap());
    assert_eq!(recv_text(&sock), "READY=1");
    assert!(d.stop().success(), "{}", d.log());
    assert_eq!(recv_text(&sock), "STOPPING=1");
}

#[test]
fn ready_and_stopping_reach_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("crated-test-notify-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let mut d = notified_daemon(&format!("@{name}"));
    assert_eq!(recv_text(&sock), "READY=1");
    assert!(d.stop().success(), "{}", d.log());
    assert_eq!(recv_text(&sock), "STOPPING=1");
}

/// `crated [--address A] publish ARGS` with `stdin`, to completion.
fn crated_publish(address: Option<&std::path::Path>, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(crated_bin());
    if let Some(a) = address {
        cmd.arg("--address").arg(a);
    }
    let mut child = cmd
        .arg("publish")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crated publish");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

async fn next(s: &mut Streaming<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10s")
        .expect("stream failed")
        .expect("stream ended")
}

#[tokio::test]
async fn publish_forwards_a_shims_event_to_subscribers() {
    let d = Setup::new(&[]).with_real_plugins(&["events"]).start();
    let req = SubscribeRequest { filters: vec![r#"topic~="/test/""#.into()] };
    let mut sub = EventsClient::new(d.channel().await).subscribe(req).await.unwrap().into_inner();

    let event = NamespaceCreate { name: "from-a-shim".into(), ..Default::default() };
    let any = prost_types::Any { type_url: "containerd.events.NamespaceCreate".into(), value: event.encode_to_vec() };
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    // The argument order containerd's Go shims use.
    let out = crated_publish(
        Some(&d.socket()),
        &["--topic", "/test/published", "--namespace", "team-b"],
        &any.encode_to_vec(),
    );
    assert!(out.status.success(), "publish failed: {}", stderr(&out));

    let e = next(&mut sub).await;
    assert_eq!((e.namespace.as_str(), e.topic.as_str()), ("team-b", "/test/published"));
    let got = e.event.expect("the event");
    assert_eq!(got.type_url, "containerd.events.NamespaceCreate");
    assert_eq!(NamespaceCreate::decode(got.value.as_slice()).unwrap().name, "from-a-shim");
    let ts = e.timestamp.expect("a timestamp");
    assert!((before - 1..=before + 30).contains(&ts.seconds), "timestamp {ts:?} is not now ({before})");

    // Bad input: a clear message, a non-zero exit, and nothing published.
    let bad = crated_publish(Some(&d.socket()), &["--topic", "/test/bad", "--namespace", "team-b"], b"\xff\xff\xff");
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).starts_with("crated: decoding the event on stdin (a protobuf google.protobuf.Any):"),
        "{}",
        stderr(&bad)
    );
    let no_topic = crated_publish(Some(&d.socket()), &["--namespace", "team-b"], &any.encode_to_vec());
    assert!(!no_topic.status.success());
    assert_eq!(stderr(&no_topic), "crated: topic required to publish event: invalid argument\n");
    // The daemon refuses an event without a namespace.
    let no_ns = crated_publish(Some(&d.socket()), &["--topic", "/test/no-ns"], &any.encode_to_vec());
    assert!(!no_ns.status.success());
    assert!(stderr(&no_ns).contains("namespace"), "{}", stderr(&no_ns));

    // Only the good event arrived: a fence published after the failures
    // is the next one.
    let fence = crated_publish(Some(&d.socket()), &["--topic", "/test/fence", "--namespace", "x"], &[]);
    assert!(fence.status.success(), "{}", stderr(&fence));
    assert_eq!(next(&mut sub).await.topic, "/test/fence");
}

#[test]
fn publish_to_a_socket_nobody_serves_fails_like_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.sock");
    // A socket file whose listener is gone: connect is refused at once.
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let out = crated_publish(Some(&dead), &["--topic", "/t", "--namespace", "n"], &[]);
    assert!(!out.status.success());
    let a = dead.display();
    assert!(
        stderr(&out).starts_with(&format!(
            "crated: failed to dial \"{a}\": failed to dial \"{a}\": connection error: desc = \"transport: error while dialing: dial unix {a}: connect:"
        )),
        "{}",
        stderr(&out)
    );
    // A socket that does not exist is waited for, then given up on.
    let missing = dir.path().join("missing.sock");
    let out = crated_publish(Some(&missing), &["--topic", "/t", "--namespace", "n"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("context deadline exceeded"), "{}", stderr(&out));
}

/// A bundle with a `config.json` whose root is `rootfs`, and a hook script
/// that writes its arguments, `$OUT_TAG` and its stdin into files.
fn hook_bundle(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#).unwrap();
    let hook = dir.join("hook.sh");
    let out = dir.join("out");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > {o}/args\nprintf '%s' \"$OUT_TAG\" > {o}/env\ncat > {o}/stdin\n",
            o = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    (bundle, hook)
}

fn oci_hook(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut child = Command::new(crated_bin())
        .arg("oci-hook")
        .arg("--")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crated oci-hook");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn oci_hook_renders_arguments_and_env_and_execs_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, hook) = hook_bundle(dir.path());
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"web-1","status":"created","pid":4321,"bundle":"{}","annotations":{{"io.example/net":"ns-9"}}}}"#,
        bundle.display()
    );
    let hook_s = hook.to_str().unwrap();
    let out = oci_hook(
        &[
            hook_s,
            "{{id}}",
            "--rootfs={{rootfs}}",
            "{{pid}}",
            r#"{{annotation "io.example/net"}}"#,
            "{{ status }}",
            "-x",
        ],
        &[("OUT_TAG", "{{bundle}}|{{id}}")],
        state.as_bytes(),
    );
    assert!(out.status.success(), "oci-hook failed: {}", stderr(&out));
    let args = std::fs::read_to_string(dir.path().join("out/args")).unwrap();
    let want = format!("{hook_s}\nweb-1\n--rootfs={}/rootfs\n4321\nns-9\ncreated\n-x\n", bundle.display());
    assert_eq!(args, want);
    let env = std::fs::read_to_string(dir.path().join("out/env")).unwrap();
    assert_eq!(env, format!("{}|web-1", bundle.display()));
    // The hook reads the same state on its stdin.
    assert_eq!(std::fs::read_to_string(dir.path().join("out/stdin")).unwrap(), state);
}

#[test]
fn oci_hook_errors_exit_non_zero_without_running_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, hook) = hook_bundle(dir.path());
    let state = format!(r#"{{"id":"c","pid":1,"bundle":"{}"}}"#, bundle.display());
    let hook_s = hook.to_str().unwrap();

    let out = oci_hook(&[hook_s, "{{nope}}"], &[], state.as_bytes());
    assert!(!out.status.success());
    assert_eq!(stderr(&out), "crated: template: oci-hook:1: function \"nope\" not defined\n");

    let out = oci_hook(&[hook_s], &[], b"not json");
    assert!(!out.status.success());
    assert!(stderr(&out).starts_with("crated: decoding the state on stdin:"), "{}", stderr(&out));

    let out = oci_hook(&[hook_s], &[], br#"{"id":"c","bundle":"/nonexistent-bundle"}"#);
    assert!(!out.status.success());
    assert!(stderr(&out).starts_with("crated: open /nonexistent-bundle/config.json:"), "{}", stderr(&out));

    let out = oci_hook(&["/nonexistent-hook"], &[], state.as_bytes());
    assert!(!out.status.success());
    assert!(stderr(&out).starts_with("crated: exec /nonexistent-hook:"), "{}", stderr(&out));
    assert!(!dir.path().join("out/args").exists(), "the hook ran");
}

/// The unit's `[Service]` keys that make it behave as containerd's does.
const UNIT_KEYS: [&str; 9] = [
    "Type=notify",
    "Delegate=yes",
    "KillMode=process",
    "Restart=always",
    "LimitNOFILE=infinity",
    "LimitNPROC=infinity",
    "LimitCORE=infinity",
    "TasksMax=infinity",
    "ExecStartPre=-/sbin/modprobe overlay",
];

#[test]
fn install_script_lays_out_a_prefix_and_a_unit_systemd_accepts() {
    use std::os::unix::fs::PermissionsExt;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let build = common::target_dir();
    for need in ["crated", "ctr", "containerd-shim-runc-v2", crated_tests::bundle::LIBRARY] {
        assert!(build.join(need).exists(), "{} is missing: run `cargo build --workspace`", build.join(need).display());
    }
    let out = Command::new(repo.join("scripts/install.sh"))
        .args(["--prefix", "/opt/crated-t", "--destdir"])
        .arg(dest.path())
        .arg("--from")
        .arg(&build)
        .output()
        .unwrap();
    assert!(out.status.success(), "install.sh failed: {}", stderr(&out));
    let root = dest.path();
    for bin in ["crated", "ctr", "containerd-shim-runc-v2"] {
        let meta = std::fs::metadata(root.join("opt/crated-t/bin").join(bin)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{bin}");
    }
    assert!(root.join("opt/crated-t/lib/crated/plugins").join(crated_tests::bundle::LIBRARY).is_file());
    let config = std::fs::read_to_string(root.join("etc/crated/config.toml")).unwrap();
    assert!(config.contains("plugin_dir = \"/opt/crated-t/lib/crated/plugins\""), "{config}");

    let unit_path = root.join("etc/systemd/system/crated.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(unit.contains("ExecStart=/opt/crated-t/bin/crated --config /etc/crated/config.toml"), "{unit}");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for key in UNIT_KEYS {
        assert!(lines.contains(&key), "{key} missing from the unit:\n{unit}");
    }
    assert!(lines.contains(&"WantedBy=multi-user.target"));

    // systemd's own parser, where installed: no unknown key or bad value
    // (which it only warns about), with ExecStart pointing at the
    // installed binary inside the destdir.
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if analyze.exists() {
        let checked = dest.path().join("crated-verify.service");
        let bin = root.join("opt/crated-t/bin/crated");
        std::fs::write(&checked, unit.replace("/opt/crated-t/bin/crated", bin.to_str().unwrap())).unwrap();
        let v = Command::new(analyze).arg("verify").arg(&checked).output().unwrap();
        assert!(v.status.success() && v.stderr.is_empty(), "systemd-analyze verify: {}", stderr(&v));
    }
}
