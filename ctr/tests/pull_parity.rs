//! `ctr images pull` parity: stock containerd 1.6 `ctr` pulls from a real
//! registry (Debian's docker-registry on 127.0.0.1, see
//! `crated_tests::registry`) with `--plain-http`, into crated and into a
//! stock containerd, then lists, checks and removes what it pulled; the
//! masked transcripts must be the same.
//!
//! ctr 1.6 pulls client-side: it resolves and fetches from the registry
//! itself, writes the blobs through Content (under a lease), creates the
//! image through Images and unpacks through Diff and Snapshots. So this
//! checks those services on the path a real pull takes.
//!
//! The images get into the registry the way a user would put them there:
//! a stock containerd imports the test archives and stock ctr pushes them.
//!
//! Masked: the pull's progress table (redrawn on a timer, so how often it
//! appears varies), durations, ages and dates.

mod common;

use std::path::Path;

use common::*;
use crated_tests::images::{oci_archive, Archive, ImageOptions, Layers};
use crated_tests::registry::Registry;

/// The registry, holding `busybox:1` (one layer) and `bb:1` (two layers,
/// the second with whiteouts and an opaque directory).
struct Source {
    registry: Registry,
    busybox: Archive,
    whiteouts: Archive,
}

fn source() -> Source {
    let registry = Registry::start().expect("start docker-registry");
    let busybox = oci_archive(&ImageOptions::default()).unwrap();
    let whiteouts = oci_archive(&ImageOptions { layers: Layers::WithWhiteouts, ..Default::default() }).unwrap();
    let dir = tempfile::Builder::new().prefix("ctr-pull-archives-").tempdir().unwrap();
    std::fs::write(dir.path().join("busybox.tar"), &busybox.tar).unwrap();
    std::fs::write(dir.path().join("bb.tar"), &whiteouts.tar).unwrap();
    let pusher = Daemon::start("pull-pusher", Server::Containerd);
    let r = registry.host();
    let d = dir.path().display();
    for (archive, name) in [("busybox.tar", "busybox"), ("bb.tar", "bb")] {
        for args in [
            format!("images import --no-unpack --base-name {r}/{name} {d}/{archive}"),
            format!("images tag {r}/{name}:latest {r}/{name}:1"),
            format!("images push --plain-http {r}/{name}:1"),
        ] {
            let out = run(STOCK_CTR, &pusher.socket(), &step(&args));
            assert!(out.ends_with("[rc=0]\n"), "{out}");
        }
    }
    Source { registry, busybox, whiteouts }
}

fn steps(r: &str) -> Vec<String> {
    [
        "images pull --plain-http {R}/busybox:1",
        "images ls",
        "images check",
        "content ls",
        "snapshots ls",
        "leases ls",
        // Pulling again: everything is there already.
        "images pull --plain-http {R}/busybox:1",
        "images pull --plain-http {R}/bb:1",
        "images ls",
        "images check",
        "content ls",
        "snapshots ls",
        // Into native as well.
        "images pull --plain-http --snapshotter native {R}/bb:1",
        "snapshots --snapshotter native ls",
        // What is not there.
        "images pull --plain-http {R}/busybox:nope",
        "images pull --plain-http {R}/nothing:1",
        "images ls -q",
        "images rm --sync {R}/busybox:1 {R}/bb:1",
        "images ls",
        "content ls",
        "snapshots ls",
    ]
    .iter()
    .map(|s| s.replace("{R}", r))
    .collect()
}

/// A pull's output without its progress table: the `unpacking` lines, the
/// `done` line (without its duration), stderr (without stock ctr's one
/// timing-dependent log line) and the exit code.
fn mask_pull(out: &str) -> String {
    let Some((stdout, rest)) = out.split_once("--- stderr\n") else { return out.to_string() };
    let mut lines = stdout.lines();
    let mut kept = format!("{}\n", lines.next().unwrap_or_default());
    for line in lines {
        if line.starts_with("unpacking ") {
            kept.push_str(line);
            kept.push('\n');
        } else if line.starts_with("done:") {
            kept.push_str("done: DURATION\n");
        }
    }
    // Stock ctr's progress loop may log these when the pull finishes while
    // it is asking for a status; they depend on timing, not on the server.
    let rest: String = rest
        .lines()
        .filter(|l| !RACY_STATUS_LOGS.iter().any(|racy| l.contains(racy)))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{kept}--- stderr\n{rest}")
}

/// The client-side log lines of stock ctr's progress loop (`Info`, then
/// `ListStatuses` calls cancelled when the pull ends) that a finished pull
/// races with.
const RACY_STATUS_LOGS: [&str; 2] = [
    "msg=\"failed to get content info\" error=\"context canceled\"",
    "msg=\"active check failed\" error=\"context canceled\"",
];

fn transcript(tag: &str, server: Server, source: &Source) -> Vec<String> {
    let daemon = match server {
        Server::Containerd => Daemon::start(tag, server),
        Server::Crated => Daemon::start_with_plugins(tag, server, &built_crated_plugins()),
    };
    let sock = daemon.socket();
    let r = source.registry.host();
    let outputs: Vec<String> = steps(&r)
        .iter()
        .map(|args| {
            let out = run_settled(STOCK_CTR, &sock, &step(args));
            if args.starts_with("images pull") {
                mask_pull(&out)
            } else {
                out
            }
        })
        .collect();
    let dir = daemon.dir().display().to_string();
    drop(daemon);
    outputs.iter().map(|o| mask(&sort_label_lists(&o.replace(&dir, "DIR").replace(&r, "REGISTRY")))).collect()
}

/// The transcript shows a real pull: both images unpacked, their blobs in
/// the store, and the missing ones refused.
fn assert_meaningful(transcript: &[String], source: &Source) {
    let all = transcript.concat();
    let has = |needle: &str| assert!(all.contains(needle), "no {needle:?} in:\n{all}");
    has(&format!("unpacking linux/amd64 {}...", source.busybox.target));
    has(&format!("unpacking linux/amd64 {}...", source.whiteouts.target));
    for digest in source.busybox.layers.iter().chain(&source.whiteouts.layers).chain(&source.whiteouts.configs) {
        has(digest);
    }
    has("REGISTRY/busybox:nope: not found");
    let first = &transcript[0];
    assert!(first.ends_with("[rc=0]\n"), "{first}");
}

#[test]
fn pull_parity_against_crated() {
    assert!(Path::new(crated_tests::registry::REGISTRY_BIN).exists(), "install docker-registry");
    let source = source();
    let containerd = std::thread::scope(|s| {
        let c = s.spawn(|| transcript("pull-containerd", Server::Containerd, &source));
        let crated = transcript("pull-crated", Server::Crated, &source);
        (c.join().expect("containerd run panicked"), crated)
    });
    let (containerd, crated) = containerd;
    assert_meaningful(&containerd, &source);
    assert_meaningful(&crated, &source);
    assert_eq!(containerd.len(), crated.len());
    // `images rm --sync` runs the garbage collector on both: the listings
    // after it match exactly too.
    let exact = (containerd, crated);
    assert_same("stock ctr against containerd", &exact.0, "stock ctr against crated", &exact.1);
}
