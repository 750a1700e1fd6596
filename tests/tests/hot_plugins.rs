//! Plugin libraries added to a running daemon (issue 11): a `.so` copied
//! into `plugin_dir` is found, checked, ordered against the running plugins
//! (its dependencies must be up), initialised and routed without a restart,
//! and calls already in flight are untouched; a broken one is listed with
//! its error while the daemon serves on; a loaded library that is replaced
//! is refused with the reason (a restart is needed), and keeps serving.
//!
//! Waits here are liveness bounds (the library shows up within seconds),
//! never speed assertions.

mod common;

use std::time::{Duration, Instant};

use common::{example_so, plugin_row, stderr, stdout, unary, Daemon, Setup};
use containerd_client::services::v1::VersionResponse;
use crated_tests::{
    echo_method,
    misbehave::{CRASHER_SERVICE, ENTERED_FILE, RELEASE_FILE, SLEEPER_SERVICE},
    EchoRequest, EchoResponse,
};

/// How long a library dropped into `plugin_dir` may take to be listed.
const SHOWS_UP: Duration = Duration::from_secs(20);

const MISBEHAVING_BUT: &[&str] = &[
    "io.crated.test.misbehave.v1.sleeper",
    "io.crated.test.misbehave.v1.spinner",
    "io.crated.test.misbehave.v1.crasher",
    "io.crated.test.misbehave.v1.stuck",
    "io.crated.test.misbehave.v1.after-hang",
    "io.crated.test.hanginit.v1.hang",
];

/// Every misbehave plugin but `keep` is disabled.
fn disabled_but(keep: &str) -> String {
    let disabled: Vec<&&str> = MISBEHAVING_BUT.iter().filter(|k| **k != keep).collect();
    format!("disabled_plugins = {disabled:?}")
}

/// Copies a library into the daemon's plugin directory as `cp` would.
fn drop_in(d: &Daemon, example: &str, name: &str) {
    std::fs::copy(example_so(example), d.setup.plugin_dir().join(name)).unwrap();
}

/// Waits until `ctr plugins ls` has a row for `type id` with `status`.
fn wait_listed(d: &Daemon, plugin_type: &str, id: &str, status: &str) -> String {
    let deadline = Instant::now() + SHOWS_UP;
    loop {
        let out = d.ctr(&["plugins", "ls"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let listing = stdout(&out);
        if plugin_row(&listing, plugin_type, id).is_some_and(|row| row.last() == Some(&status)) {
            return listing;
        }
        assert!(
            Instant::now() < deadline,
            "{plugin_type} {id} not {status} within {SHOWS_UP:?}:\n{listing}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(t: &str) -> EchoRequest {
    EchoRequest { text: t.into(), count: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_dropped_into_plugin_dir_is_loaded_and_serves_without_disturbing_calls_in_flight() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let d = Setup::new(&["misbehave"])
        .extra(&format!("{}\n[metrics]\naddress = {metrics:?}\n", disabled_but("io.crated.test.misbehave.v1.sleeper")))
        .start();
    let pid = d.pid();
    let listing = stdout(&d.ctr(&["plugins", "ls"]));
    assert!(plugin_row(&listing, "io.crated.test.v1", "echo").is_none(), "{listing}");
    let ch = d.channel().await;
    let e = unary::<_, EchoResponse>(&ch, &echo_method("Echo"), None, text("early")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "not served before it is loaded");

    // A call in flight in a running plugin while the library comes in.
    let gate = tempfile::tempdir().unwrap();
    let dir = gate.path().display().to_string();
    let ch2 = ch.clone();
    let in_flight = tokio::spawn(async move {
        unary::<_, EchoResponse>(&ch2, &format!("/{SLEEPER_SERVICE}/Block"), None, text(&dir)).await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gate.path().join(ENTERED_FILE).exists() {
        assert!(Instant::now() < deadline, "Block never entered:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    drop_in(&d, "echo", "libecho.so");
    let listing = tokio::task::block_in_place(|| wait_listed(&d, "io.crated.test.v1", "echo", "ok"));
    // The library's other plugins came with it, in dependency order.
    assert_eq!(plugin_row(&listing, "io.crated.testrelay.v1", "relay").and_then(|r| r.last().copied()), Some("ok"));
    assert_eq!(plugin_row(&listing, "io.crated.test.v1", "skipper").and_then(|r| r.last().copied()), Some("skip"));
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), Some("hot"), text("hello")).await.unwrap();
    assert_eq!(r.text, "hello");
    assert_eq!(r.namespace, "hot");
    // Counted like any plugin started with the daemon.
    let (_, scrape) = tokio::task::block_in_place(|| common::http_get(&metrics, "/v1/metrics"));
    let calls = common::sample(&scrape, "crated_plugin_calls_total", &["id=\"echo\"", "type=\"io.crated.test.v1\""]);
    assert_eq!(calls, Some(1.0), "{scrape}");
    assert!(common::sample(&scrape, "crated_plugin_init_duration_seconds", &["id=\"relay\""]).is_some(), "{scrape}");
    let detail = stdout(&d.ctr(&["plugins", "ls", "-d", "id==echo"]));
    assert!(detail.contains(&d.setup.plugin_dir().join("libecho.so").display().to_string()), "{detail}");

    assert!(!in_flight.is_finished(), "the call in flight was not disturbed by the load");
    std::fs::write(gate.path().join(RELEASE_FILE), b"go").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), in_flight).await.unwrap().unwrap().unwrap();
    assert_eq!(r.text, "released");
    assert_eq!(d.pid(), pid, "no restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_loaded_plugin_reaches_a_dependency_that_was_already_running() {
    // The echo plugin runs from the start; the crasher, which requires its
    // type and relays to it, arrives later.
    let d = Setup::new(&["echo"]).extra(&disabled_but("io.crated.test.misbehave.v1.crasher")).start();
    drop_in(&d, "misbehave", "libmisbehave.so");
    tokio::task::block_in_place(|| wait_listed(&d, "io.crated.test.misbehave.v1", "crasher", "ok"));
    let ch = d.channel().await;
    let r: EchoResponse =
        unary(&ch, &format!("/{CRASHER_SERVICE}/Relay"), None, text("across the hot load")).await.unwrap();
    assert_eq!(r.text, "relayed: across the hot load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_loaded_plugin_whose_dependency_is_missing_fails_alone() {
    // Without libecho.so the crasher's required type is not there.
    let d = Setup::new(&[]).extra(&disabled_but("io.crated.test.misbehave.v1.crasher")).start();
    drop_in(&d, "misbehave", "libmisbehave.so");
    let listing = tokio::task::block_in_place(|| wait_listed(&d, "io.crated.test.misbehave.v1", "crasher", "error"));
    let detail = stdout(&d.ctr(&["plugins", "ls", "-d", "id==crasher"]));
    assert!(detail.contains("io.crated.test.v1"), "the error names the missing type:\n{detail}\n{listing}");
    let ch = d.channel().await;
    let _: VersionResponse = unary(&ch, "/containerd.services.version.v1.Version/Version", None, ()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_libraries_are_listed_with_their_error_and_the_daemon_serves_on() {
    let d = Setup::new(&[]).start();
    std::fs::write(d.setup.plugin_dir().join("junk.so"), b"not an ELF file").unwrap();
    drop_in(&d, "abi_mismatch", "libabi_mismatch.so");
    let listing = tokio::task::block_in_place(|| {
        wait_listed(&d, "io.crated.library.v1", "junk.so", "error");
        wait_listed(&d, "io.crated.library.v1", "libabi_mismatch.so", "error")
    });
    let detail = stdout(&d.ctr(&["plugins", "ls", "-d", "id==libabi_mismatch.so"]));
    assert!(detail.contains("ABI"), "{detail}\n{listing}");
    let ch = d.channel().await;
    let _: VersionResponse = unary(&ch, "/containerd.services.version.v1.Version/Version", None, ()).await.unwrap();

    // The refused file is rewritten with a good library: it is tried again
    // (nothing of it was loaded) and its plugins come up.
    let tmp = d.setup.path().join("libecho.tmp");
    std::fs::copy(example_so("echo"), &tmp).unwrap();
    std::fs::rename(&tmp, d.setup.plugin_dir().join("junk.so")).unwrap();
    let listing = tokio::task::block_in_place(|| wait_listed(&d, "io.crated.test.v1", "echo", "ok"));
    assert!(plugin_row(&listing, "io.crated.library.v1", "junk.so").is_none(), "the old failure is gone:\n{listing}");
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, text("fixed")).await.unwrap();
    assert_eq!(r.text, "fixed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_loaded_library_is_refused_and_the_loaded_one_keeps_serving() {
    let d = Setup::new(&["echo"]).start();
    let loaded = d.setup.plugin_dir().join("libecho.so");
    assert!(loaded.exists());
    // Replaced as package managers do: a new file renamed over the old.
    let tmp = d.setup.path().join("new-echo.so");
    std::fs::copy(example_so("echo"), &tmp).unwrap();
    std::fs::rename(&tmp, &loaded).unwrap();
    tokio::task::block_in_place(|| wait_listed(&d, "io.crated.library.v1", "libecho.so", "error"));
    let detail = stdout(&d.ctr(&["plugins", "ls", "-d", "id==libecho.so"]));
    assert!(detail.contains("needs a restart"), "{detail}");
    let ch = d.channel().await;
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, text("still here")).await.unwrap();
    assert_eq!(r.text, "still here");
    let listing = stdout(&d.ctr(&["plugins", "ls"]));
    assert_eq!(plugin_row(&listing, "io.crated.test.v1", "echo").and_then(|r| r.last().copied()), Some("ok"));
    // A duplicate of a running plugin under another file name is refused
    // by name, and the running one is untouched.
    drop_in(&d, "echo", "libecho-copy.so");
    let deadline = Instant::now() + SHOWS_UP;
    loop {
        let listing = stdout(&d.ctr(&["plugins", "ls"]));
        let rows = listing.lines().filter(|l| l.split_whitespace().take(2).eq(["io.crated.test.v1", "echo"])).count();
        if rows == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no duplicate row within {SHOWS_UP:?}:\n{listing}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detail = stdout(&d.ctr(&["plugins", "ls", "-d", "id==echo"]));
    assert!(detail.contains("duplicate plugin io.crated.test.v1.echo"), "{detail}");
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, text("first one")).await.unwrap();
    assert_eq!(r.text, "first one");
}
