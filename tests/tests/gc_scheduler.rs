//! The GC scheduler plugin (`io.containerd.gc.v1.scheduler`) in a real
//! daemon: listed like containerd's, idle (and quiet) over a metadata
//! plugin without a collector, and, over the real metadata plugin, the one
//! that collects what an image removed without `--sync` leaves behind.

mod common;

use std::time::{Duration, Instant};

use common::{stderr, stdout, Daemon, Setup};

const STACK: &[&str] = &["content", "metadata", "events", "snapshots", "diff", "gc"];
const NO_COLLECTOR: &str = "the metadata plugin serves no garbage collector";

fn debug_log(setup: Setup) -> Setup {
    setup.extra("[debug]\nlevel = \"debug\"")
}

/// The `ctr plugins ls` row of the scheduler, split into columns.
fn scheduler_row(table: &str) -> Vec<String> {
    let rows: Vec<Vec<String>> = table
        .lines()
        .filter(|l| l.starts_with("io.containerd.gc.v1 "))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 1, "one gc plugin in\n{table}");
    rows.into_iter().next().unwrap()
}

fn ok(out: std::process::Output, what: &str, d: &Daemon) -> String {
    assert!(out.status.success(), "{what}: {}\n{}", stderr(&out), d.log());
    stdout(&out)
}

/// Listed as containerd lists it (`io.containerd.gc.v1  scheduler
/// linux/amd64  ok`), by our ctr and the stock one, over the real stack.
#[test]
fn the_scheduler_is_listed_ok_like_containerds() {
    let d = Setup::new(&[]).with_real_plugins(STACK).start();
    let platform = crated_plugin_api::build_platform();
    for (who, out) in [("ours", d.ctr(&["plugins", "ls"])), ("stock", d.stock_ctr(&["plugins", "ls"]))] {
        let table = ok(out, who, &d);
        assert_eq!(scheduler_row(&table), ["io.containerd.gc.v1", "scheduler", platform.as_str(), "ok"], "{who}");
    }
}

/// Over a metadata plugin that serves no collector the scheduler loads
/// (ok), says so once, and neither spins nor fails: the daemon keeps
/// serving, and the line stays single however long it runs.
#[test]
fn without_a_collector_the_scheduler_says_so_once_and_stays_idle() {
    let setup = debug_log(Setup::new(&["bare_metadata"]).with_real_plugins(&["gc"]))
        // Collections would be due at once and every few milliseconds.
        .extra("[plugins.\"io.containerd.gc.v1.scheduler\"]\nstartup_delay = \"1ms\"\npause_threshold = 0.5\n");
    let d = setup.start();
    let table = ok(d.ctr(&["plugins", "ls"]), "plugins ls", &d);
    assert_eq!(scheduler_row(&table)[3], "ok", "{table}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains(NO_COLLECTOR) {
        assert!(Instant::now() < deadline, "the scheduler never said it has no collector:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Long past the startup delay and many spacings: still one line, and
    // no collection was attempted or failed.
    std::thread::sleep(Duration::from_secs(1));
    let log = d.log();
    assert_eq!(log.matches(NO_COLLECTOR).count(), 1, "{log}");
    assert!(!log.contains("garbage collected in") && !log.contains("garbage collection failed"), "{log}");
    ok(d.ctr(&["plugins", "ls"]), "still serving", &d);
}

/// Needs the metadata plugin's collector (`crated.gc.v1.Collector`, issue
/// 9): an image imported by the stock ctr and removed WITHOUT `--sync`
/// leaves its blobs and snapshots to the scheduler, which collects them
/// soon after, and logs the collection at debug level.
#[test]
fn an_image_removed_without_sync_is_collected_by_the_scheduler() {
    use crated_tests::images::{oci_archive, ImageOptions};

    let d = debug_log(Setup::new(&[]).with_real_plugins(STACK)).start();
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let tar = d.setup.path().join("image.tar");
    std::fs::write(&tar, &archive.tar).unwrap();

    ok(d.stock_ctr(&["images", "import", tar.to_str().unwrap()]), "stock ctr import", &d);
    let rows = |args: &[&str]| -> Vec<String> {
        ok(d.stock_ctr(args), &args.join(" "), &d).lines().skip(1).map(str::to_string).collect()
    };
    assert!(!rows(&["content", "ls"]).is_empty(), "the import stored content");
    assert!(!rows(&["snapshots", "ls"]).is_empty(), "the import unpacked layers");

    // `-q` prints names only, without a header.
    let names: Vec<String> =
        ok(d.stock_ctr(&["images", "ls", "-q"]), "images ls -q", &d).lines().map(str::to_string).collect();
    assert!(!names.is_empty(), "the import created an image");
    let mut rm = vec!["images", "rm"];
    rm.extend(names.iter().map(String::as_str));
    ok(d.stock_ctr(&rm), "images rm", &d);

    // Bounded wait, not a timing requirement: the default policy collects
    // within a fraction of a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let content = rows(&["content", "ls"]);
        let snapshots = rows(&["snapshots", "ls"]);
        if content.is_empty() && snapshots.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not collected: content {content:?}, snapshots {snapshots:?}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log().contains("garbage collected in"), "each collection is logged at debug:\n{}", d.log());
}
