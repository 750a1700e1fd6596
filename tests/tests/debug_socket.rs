//! The debug socket (`[debug] address`) and `ctr pprof` (issue 11):
//! - a CPU profile taken while the daemon works decodes as pprof protobuf
//!   with CPU samples from the daemon's own code, through the stock ctr
//!   and ours; ours also renders it as an SVG flame graph;
//! - the goroutine dump lists every thread of the daemon with its stack: a
//!   plugin stuck in a handler is seen on its lane, in its own function;
//! - Go-only profiles answer 501 with a reason, never an empty profile;
//! - the socket is 0660, only exists when configured, and is removed at
//!   exit; an address that cannot be bound stops the start with its name.

mod common;

use std::{collections::BTreeSet, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use common::{stderr, stdout, unary, Daemon, Setup};
use containerd_client::services::v1::VersionResponse;
use crated_tests::{
    misbehave::{ENTERED_FILE, RELEASE_FILE, SLEEPER_SERVICE},
    EchoRequest, EchoResponse,
};
use pprof::protos::Message as _;

fn debug_socket(setup: &Setup) -> std::path::PathBuf {
    setup.path().join("debug.sock")
}

fn with_debug(setup: Setup) -> Setup {
    let sock = debug_socket(&setup);
    setup.extra(&format!("[debug]\naddress = {:?}\n", sock.display().to_string()))
}

fn pprof_args<'a>(sock: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["pprof", "--debug-socket", sock];
    v.extend_from_slice(args);
    v
}

/// Keeps the daemon busy with Version calls until `stop` is set.
fn busy(d: &Daemon, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let socket = d.socket();
    tokio::spawn(async move {
        let ch = common::channel(&socket).await;
        let mut calls = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _: VersionResponse =
                unary(&ch, "/containerd.services.version.v1.Version/Version", None, ()).await.unwrap();
            calls += 1;
        }
        calls
    })
}

fn decode(bytes: &[u8]) -> pprof::protos::Profile {
    assert!(bytes.starts_with(&[0x1f, 0x8b]), "the profile is gzip'd as Go serves it");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut raw).unwrap();
    pprof::protos::Profile::decode(&raw[..]).expect("a pprof protobuf")
}

fn function_names(p: &pprof::protos::Profile) -> BTreeSet<String> {
    p.function.iter().map(|f| p.string_table[f.name as usize].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_profile_of_a_busy_daemon_decodes_with_its_own_functions() {
    let d = with_debug(Setup::new(&[])).start();
    let sock = debug_socket(&d.setup).display().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = busy(&d, stop.clone());

    // The stock ctr of containerd 1.6, unchanged.
    let sock2 = sock.clone();
    let stock = tokio::task::spawn_blocking({
        let args: Vec<String> =
            ["pprof", "--debug-socket", &sock2, "profile", "--seconds", "2s"].iter().map(|s| s.to_string()).collect();
        let socket = d.socket();
        move || {
            common::run_client(&common::stock_ctr_bin(), &socket, &args.iter().map(String::as_str).collect::<Vec<_>>())
        }
    })
    .await
    .unwrap();
    assert!(stock.status.success(), "stock ctr pprof profile: {}", stderr(&stock));
    let profile = decode(&stock.stdout);
    let types: Vec<(String, String)> = profile
        .sample_type
        .iter()
        .map(|t| (profile.string_table[t.ty as usize].clone(), profile.string_table[t.unit as usize].clone()))
        .collect();
    assert!(types.contains(&("cpu".into(), "nanoseconds".into())), "sample types {types:?}");
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert!(samples > 0, "a daemon answering Version calls for 2s burns CPU: no samples");
    let names = function_names(&profile);
    assert!(
        names.iter().any(|n| n.contains("crated_core") || n.contains("crated_plugin_api") || n.contains("h2::")),
        "the daemon's own code is among the sampled functions: {:?}",
        names.iter().take(40).collect::<Vec<_>>()
    );

    // Ours renders the same profile as a flame graph.
    let svg = tokio::task::spawn_blocking({
        let socket = d.socket();
        let sock = sock.clone();
        move || {
            common::run_client(
                &common::ctr_bin(),
                &socket,
                &["pprof", "--debug-socket", &sock, "flamegraph", "--seconds", "1s"],
            )
        }
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);
    assert!(svg.status.success(), "ctr pprof flamegraph: {}", stderr(&svg));
    let svg = stdout(&svg);
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "an SVG: {}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("crated CPU profile"), "titled");
}

/// The threads of `pid` by tid, from /proc.
fn threads_of(pid: u32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goroutine_dump_shows_every_thread_and_a_stuck_plugin_in_its_handler() {
    let keep = "io.crated.test.misbehave.v1.sleeper";
    let others = [
        "io.crated.test.misbehave.v1.spinner",
        "io.crated.test.misbehave.v1.crasher",
        "io.crated.test.misbehave.v1.stuck",
        "io.crated.test.misbehave.v1.after-hang",
        "io.crated.test.hanginit.v1.hang",
    ];
    assert!(!others.contains(&keep));
    let d = with_debug(Setup::new(&["misbehave"]).extra(&format!("disabled_plugins = {others:?}"))).start();
    let sock = debug_socket(&d.setup).display().to_string();

    // A call that sleeps in the plugin's handler until released.
    let gate = tempfile::tempdir().unwrap();
    let ch = d.channel().await;
    let dir = gate.path().display().to_string();
    let blocked = tokio::spawn(async move {
        unary::<_, EchoResponse>(&ch, &format!("/{SLEEPER_SERVICE}/Block"), None, EchoRequest { text: dir, count: 0 })
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !gate.path().join(ENTERED_FILE).exists() {
        assert!(std::time::Instant::now() < deadline, "the Block call never entered:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = threads_of(d.pid());
    let out = d.stock_ctr(&pprof_args(&sock, &["goroutines"]));
    assert!(out.status.success(), "stock ctr pprof goroutines: {}", stderr(&out));
    let dump = stdout(&out);
    let after = threads_of(d.pid());
    // Every thread that lived through the dump is in it.
    let listed: BTreeSet<i32> =
        dump.lines().filter_map(|l| l.strip_prefix("thread ")?.split_whitespace().next()?.parse().ok()).collect();
    for tid in before.intersection(&after) {
        assert!(listed.contains(tid), "thread {tid} missing from the dump:\n{dump}");
    }
    // The main thread waits in the daemon's run loop.
    assert!(dump.contains("crated_core::daemon::run") || dump.contains("crated::main"), "{dump}");
    // The stuck call is seen on the plugin's lane, inside its handler.
    let lane_block = dump
        .split("\n\n")
        .find(|b| b.contains("sleep_until_released"))
        .unwrap_or_else(|| panic!("no thread is in the sleeper's handler:\n{dump}"));
    assert!(lane_block.contains("\"lane-"), "the handler runs on a lane thread:\n{lane_block}");
    assert!(lane_block.contains("std::thread::sleep") || lane_block.contains("nanosleep"), "{lane_block}");

    // The dump interrupted no one: the blocked call still completes.
    std::fs::write(gate.path().join(RELEASE_FILE), b"go").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), blocked).await.unwrap().unwrap().unwrap();
    assert_eq!(r.text, "released");

    // threadcreate: the count, and the names.
    let out = d.ctr(&pprof_args(&sock, &["threadcreate"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let total: usize = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("threadcreate profile: total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(total, text.lines().filter(|l| l.starts_with("# thread ")).count());
    assert!(total >= 3, "{text}");
}

#[test]
fn go_only_profiles_say_why_they_are_missing() {
    let d = with_debug(Setup::new(&[])).start();
    let sock = debug_socket(&d.setup).display().to_string();
    for (cmd, word) in [("heap", "allocator"), ("block", "tokio"), ("trace", "tracer")] {
        let stock = d.stock_ctr(&pprof_args(&sock, &[cmd]));
        assert!(!stock.status.success(), "stock ctr pprof {cmd} must fail, not print a fake profile");
        assert!(stderr(&stock).contains("501 Not Implemented"), "stock ctr pprof {cmd}: {}", stderr(&stock));
        let ours = d.ctr(&pprof_args(&sock, &[cmd]));
        assert!(!ours.status.success());
        let e = stderr(&ours);
        assert!(e.contains("501 Not Implemented") && e.contains(word), "ctr pprof {cmd}: {e}");
        assert!(stdout(&ours).is_empty());
    }
    // A bad duration is refused, not turned into an endless profile.
    let out = d.ctr(&pprof_args(&sock, &["profile", "--seconds=-5s"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("400 Bad Request"), "{}", stderr(&out));
}

#[test]
fn debug_socket_exists_only_when_configured_and_goes_away_at_exit() {
    let mut d = with_debug(Setup::new(&[])).start();
    let sock = debug_socket(&d.setup);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert!(d.stop().success());
    assert!(!sock.exists(), "the debug socket is removed at exit");

    let mut plain = Setup::new(&[]).start();
    let listed: Vec<_> = std::fs::read_dir(plain.setup.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!listed.iter().any(|n| n.to_string_lossy().contains("debug")), "{listed:?}");
    assert!(plain.stop().success());
}

#[test]
fn an_unusable_debug_address_stops_the_start_with_its_name() {
    let setup = Setup::new(&[]);
    // A regular file where the socket's directory should be.
    let blocker = setup.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let bad = blocker.join("debug.sock");
    let setup = setup.extra(&format!("[debug]\naddress = {:?}\n", bad.display().to_string()));
    let config = setup.write_config();
    let out = setup.run_crated(&["-c", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(&bad.display().to_string()) || e.contains(&blocker.display().to_string()), "{e}");
    assert!(!Path::new(&setup.socket()).exists(), "the gRPC socket is not left behind");
}
