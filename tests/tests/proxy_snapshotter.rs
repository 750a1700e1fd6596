//! One snapshotter crate, two deployments: `examples/snapshotter-example`
//! is built out of tree (its own lockfile, `--locked`), then
//! - loaded as a `.so` by crated;
//! - run as a standalone proxy (the SDK's `proxy::run`) and configured in
//!   crated's `[proxy_plugins]`: listed like containerd lists a proxy,
//!   reached through the proxy forwarding, `Unavailable` (naming its
//!   address) while down or killed, with the daemon serving on, and reached
//!   again once it is back;
//! - run as the same proxy for a stock containerd 1.6;
//! - the target of an image unpack, by the daemon's transfer plugin and by
//!   the stock ctr.
//!
//! crated's socket reaches a snapshotter through the metadata plugin's
//! namespaced Snapshots service, as a user's would, so the stock
//! `ctr snapshots --snapshotter NAME` drives all three the same way, and
//! the conformance suite runs unchanged against the `.so` and the proxy.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use common::{stderr, stdout, unary, Daemon, Setup, StockContainerd};
use containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, PrepareSnapshotResponse, StatSnapshotRequest, StatSnapshotResponse, ViewSnapshotRequest,
    ViewSnapshotResponse,
};
use crated_plugin_api::mount::MountedDir;
use tonic::Code;

const LIBRARY: &str = "libsnapshotter_example.so";
/// The key of the example's plugin, for `isolated_plugins`.
const ISOLATED_KEY: &str = "io.containerd.snapshotter.v1.example";
/// The plugins behind the socket's namespaced Snapshots service.
const STACK: &[&str] = &["content", "metadata", "events"];
const STAT: &str = "/containerd.services.snapshots.v1.Snapshots/Stat";
const PREPARE: &str = "/containerd.services.snapshots.v1.Snapshots/Prepare";
const VIEW: &str = "/containerd.services.snapshots.v1.Snapshots/View";

/// `target/out-of-tree/debug` with the example built, once per process.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::build_out_of_tree("snapshotter-example"))
}

/// The example running as a proxy server; killed by its pid when dropped.
struct ProxyServer {
    child: Option<Child>,
    socket: PathBuf,
    root: PathBuf,
    log: PathBuf,
}

impl ProxyServer {
    fn start(root: &Path, socket: &Path) -> ProxyServer {
        let log = root.with_extension("log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(built().join("snapshotter-example"))
            .arg("--root")
            .arg(root)
            .arg("--address")
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn snapshotter-example");
        let mut p = ProxyServer { child: Some(child), socket: socket.into(), root: root.into(), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("snapshotter-example exited with {status}:\n{}", p.log());
            }
            assert!(Instant::now() < deadline, "snapshotter-example did not serve within 30s:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no clean shutdown, the socket file stays behind.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same root and socket.
    fn restart(&mut self) {
        self.kill();
        *self = ProxyServer::start(&self.root.clone(), &self.socket.clone());
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Both `ctr`s list snapshotter `id` as `ok`.
fn assert_listed_ok(d: &Daemon, id: &str) {
    for (who, out) in [("our ctr", d.ctr(&["plugins", "ls"])), ("stock ctr", d.stock_ctr(&["plugins", "ls"]))] {
        assert!(out.status.success(), "{who} plugins ls failed: {}", stderr(&out));
        let text = stdout(&out);
        let r = common::plugin_row(&text, "io.containerd.snapshotter.v1", id)
            .unwrap_or_else(|| panic!("{who} does not list snapshotter {id}:\n{text}\n{}", d.log()));
        assert_eq!(r.last(), Some(&"ok"), "{who}:\n{text}\n{}", d.log());
    }
}

/// The rows of `ctr snapshots ls`: (key, parent, kind).
fn snapshot_rows(text: &str) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .map(|c| match c.as_slice() {
            [k, kind] => (k.to_string(), String::new(), kind.to_string()),
            [k, p, kind] => (k.to_string(), p.to_string(), kind.to_string()),
            other => panic!("unexpected snapshots ls row {other:?} in\n{text}"),
        })
        .collect();
    rows.sort();
    rows
}

/// Drives snapshotter `name` with the stock `ctr snapshots` through
/// `ctr`: parents, views, commit, labels, usage, mounts, and the error
/// kinds of the removal and creation rules. (A stock containerd collects a
/// view that `ctr` made, in the background, as soon as `ctr` exits, since
/// it has no gc root: views are exercised only where `views_stay`.)
fn exercise(ctr: &dyn Fn(&[&str]) -> Output, name: &str, views_stay: bool, context: &dyn Fn() -> String) {
    let run = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", name];
        all.extend_from_slice(args);
        (ctr(&all), all.join(" "))
    };
    let ok = |args: &[&str]| {
        let (out, cmd) = run(args);
        assert!(out.status.success(), "ctr {cmd} failed: {}\n{}", stderr(&out), context());
        stdout(&out)
    };
    let fails = |args: &[&str]| {
        let (out, cmd) = run(args);
        assert!(!out.status.success(), "ctr {cmd} succeeded: {}\n{}", stdout(&out), context());
        stderr(&out)
    };

    ok(&["prepare", "base", ""]);
    ok(&["commit", "layer", "base"]);
    if views_stay {
        let m = ok(&["view", "--mounts", "look", "layer"]);
        assert!(m.contains("\"bind\"") && m.contains("\"ro\""), "a view is a read-only bind mount: {m}");
    }
    ok(&["prepare", "work", "layer"]);
    let s = |x: &str| x.to_string();
    let mut expected = vec![(s("layer"), s(""), s("Committed")), (s("work"), s("layer"), s("Active"))];
    if views_stay {
        expected.insert(1, (s("look"), s("layer"), s("View")));
    }
    assert_eq!(snapshot_rows(&ok(&["ls"])), expected, "{}", context());
    let m = ok(&["mounts", "/mnt", "work"]);
    assert!(m.contains("-t bind") && m.contains("rw"), "an active snapshot is writable: {m}");
    ok(&["label", "layer", "containerd.io/snapshot/example=yes"]);
    let info = ok(&["info", "layer"]);
    assert!(info.contains("\"containerd.io/snapshot/example\": \"yes\""), "{info}");
    assert!(ok(&["usage", "layer"]).contains("layer"), "usage lists the snapshot");

    assert!(fails(&["rm", "layer"]).contains("failed precondition"), "a parent with children stays");
    assert!(fails(&["prepare", "work", "layer"]).contains("already exists"));
    assert!(fails(&["prepare", "child", "work"]).contains("invalid argument"), "an active parent is refused");
    assert!(fails(&["mounts", "/mnt", "missing"]).contains("not found"));

    if views_stay {
        ok(&["rm", "look"]);
    }
    ok(&["rm", "work"]);
    ok(&["rm", "layer"]);
    assert_eq!(snapshot_rows(&ok(&["ls"])), vec![], "{}", context());
}

fn stat(key: &str, snapshotter: &str) -> StatSnapshotRequest {
    StatSnapshotRequest { snapshotter: snapshotter.into(), key: key.into() }
}

#[tokio::test]
async fn example_snapshotter_as_a_library() {
    let setup = Setup::new(&[]).with_real_plugins(STACK);
    std::fs::copy(built().join(LIBRARY), setup.plugin_dir().join(LIBRARY)).unwrap();
    let d = setup.start();
    assert_listed_ok(&d, "example");
    exercise(&|args| d.stock_ctr(args), "example", true, &|| d.log());
}

#[tokio::test]
async fn example_snapshotter_as_a_crated_proxy_plugin() {
    let tmp = tempfile::Builder::new().prefix("proxy-snapshotter").tempdir().unwrap();
    let socket = tmp.path().join("example.sock");
    let address = socket.display().to_string();
    let config = format!(
        "[proxy_plugins.ex]\ntype = \"snapshot\"\naddress = {address:?}\n[proxy_plugins.ex.exports]\nflavour = \"copies\"\n"
    );
    // The proxy is not running yet: the daemon must start anyway.
    let d = Setup::new(&[]).with_real_plugins(STACK).extra(&config).start();
    assert_listed_ok(&d, "ex");
    for (who, out) in [
        ("our ctr", d.ctr(&["plugins", "ls", "-d", "id==ex"])),
        ("stock ctr", d.stock_ctr(&["plugins", "ls", "-d", "id==ex"])),
    ] {
        let text = stdout(&out);
        assert!(text.lines().any(|l| l.split_whitespace().eq(["address", address.as_str()])), "{who}:\n{text}");
        assert!(text.lines().any(|l| l.split_whitespace().eq(["flavour", "copies"])), "{who}:\n{text}");
    }

    // Down: its calls fail with Unavailable naming the address.
    let ch = d.channel().await;
    let down = |e: tonic::Status| {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}\n{}", d.log());
        assert!(e.message().contains(&address), "{e:?}");
    };
    let probe = PrepareSnapshotRequest { snapshotter: "ex".into(), key: "probe".into(), ..Default::default() };
    down(unary::<_, PrepareSnapshotResponse>(&ch, PREPARE, Some("default"), probe.clone()).await.unwrap_err());

    let mut proxy = ProxyServer::start(&tmp.path().join("root"), &socket);
    exercise(&|args| d.stock_ctr(args), "ex", true, &|| format!("{}\n{}", d.log(), proxy.log()));
    let ctr_ok = |args: &[&str]| {
        let out = d.stock_ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}\n{}", stderr(&out), d.log());
        stdout(&out)
    };
    ctr_ok(&["snapshots", "--snapshotter", "ex", "prepare", "kept", ""]);

    // Killed: Unavailable again, and the daemon serves everything else.
    proxy.kill();
    down(unary::<_, StatSnapshotResponse>(&ch, STAT, Some("default"), stat("kept", "ex")).await.unwrap_err());
    assert_listed_ok(&d, "ex");

    // Back (on the same root): reconnected, and its snapshots are still there.
    proxy.restart();
    let r: StatSnapshotResponse = unary(&ch, STAT, Some("default"), stat("kept", "ex")).await.unwrap();
    assert_eq!(r.info.unwrap().name, "kept");
    let ls = ctr_ok(&["snapshots", "--snapshotter", "ex", "ls"]);
    assert_eq!(snapshot_rows(&ls), vec![("kept".into(), String::new(), "Active".into())]);
}

#[test]
fn example_snapshotter_as_a_stock_containerd_proxy_plugin() {
    let tmp = tempfile::Builder::new().prefix("proxy-snapshotter").tempdir().unwrap();
    let socket = tmp.path().join("example.sock");
    let proxy = ProxyServer::start(&tmp.path().join("root"), &socket);
    let c = StockContainerd::start_with(&format!("[proxy_plugins.x]\ntype = \"snapshot\"\naddress = {:?}\n", socket));
    let listing = stdout(&c.ctr(&["plugins", "ls"]));
    let r = common::plugin_row(&listing, "io.containerd.snapshotter.v1", "x").unwrap_or_else(|| panic!("{listing}"));
    assert_eq!(r.last(), Some(&"ok"), "{listing}");
    exercise(&|args| c.ctr(args), "x", false, &|| format!("{}\n{}", c.log(), proxy.log()));
}

fn conformance_target(d: &Daemon, snapshotter: &str) -> crated_snapshot_conformance::Target {
    crated_snapshot_conformance::Target {
        address: d.socket().display().to_string(),
        snapshotter: snapshotter.into(),
        namespace: "conformance".into(),
    }
}

/// The conformance suite, unchanged, against the example loaded as a `.so`
/// behind the metadata plugin, as a user would deploy it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_snapshotter_library_conforms() {
    let setup = Setup::new(&[]).with_real_plugins(STACK);
    std::fs::copy(built().join(LIBRARY), setup.plugin_dir().join(LIBRARY)).unwrap();
    let d = setup.start();
    crated_snapshot_conformance::assert_conforms(&conformance_target(&d, "example"), &[]).await;
}

/// The same suite against the same `.so` with the snapshotter isolated in a
/// plugin host (`isolated_plugins`): the metadata plugin, in the daemon,
/// reaches it through the host, and the host goes away with the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_snapshotter_isolated_library_conforms() {
    let setup = Setup::new(&[]).with_real_plugins(STACK).extra(&format!("isolated_plugins = [{ISOLATED_KEY:?}]"));
    std::fs::copy(built().join(LIBRARY), setup.plugin_dir().join(LIBRARY)).unwrap();
    let mut d = setup.start();
    assert_listed_ok(&d, "example");
    let detail = stdout(&d.ctr(&["plugins", "ls", "-d", "id==example"]));
    let host: u32 = detail
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some("io.crated.plugin.host.pid")).then(|| cols.next()?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no io.crated.plugin.host.pid export:\n{detail}\n{}", d.log()));
    assert_ne!(host, d.pid(), "{detail}");
    crated_snapshot_conformance::assert_conforms(&conformance_target(&d, "example"), &[]).await;
    let status = d.stop();
    assert!(status.success(), "crated exited with {status}:\n{}", d.log());
    assert!(common::wait_process_gone(host, Duration::from_secs(10)), "plugin host {host} outlived the daemon");
}

/// The same suite against the same crate served as a proxy plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_snapshotter_proxy_conforms() {
    let tmp = tempfile::Builder::new().prefix("proxy-conformance").tempdir().unwrap();
    let socket = tmp.path().join("example.sock");
    let _proxy = ProxyServer::start(&tmp.path().join("root"), &socket);
    let config = format!("[proxy_plugins.ex]\ntype = \"snapshot\"\naddress = {:?}\n", socket.display().to_string());
    let d = Setup::new(&[]).with_real_plugins(STACK).extra(&config).start();
    crated_snapshot_conformance::assert_conforms(&conformance_target(&d, "ex"), &[]).await;
}

/// Images unpack into the out-of-tree snapshotter like into a built-in one:
/// through the daemon's transfer plugin (our `ctr images import`) and
/// client-side (stock ctr 1.6, which drives Diff and Snapshots itself).
/// Both leave the layers committed under their chain IDs in the example's
/// store, and `images check` reports the image unpacked there.
#[tokio::test]
async fn images_unpack_into_the_example_snapshotter() {
    use crated_tests::images::{chain_ids, oci_archive, ImageOptions, Layers};

    let setup = Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "diff", "transfer"]);
    std::fs::copy(built().join(LIBRARY), setup.plugin_dir().join(LIBRARY)).unwrap();
    let d = setup.start();
    assert_listed_ok(&d, "example");
    let archive = oci_archive(&ImageOptions { layers: Layers::WithWhiteouts, ..Default::default() }).unwrap();
    let tar = d.setup.path().join("image.tar");
    std::fs::write(&tar, &archive.tar).unwrap();
    let tar = tar.to_str().unwrap();
    let ok = |out: Output, what: &str| {
        assert!(out.status.success(), "{what}: {}\n{}", stderr(&out), d.log());
        stdout(&out)
    };

    let committed = |ls: &str| -> Vec<String> {
        let mut committed: Vec<String> =
            snapshot_rows(ls).into_iter().filter(|(_, _, kind)| kind == "Committed").map(|(k, _, _)| k).collect();
        committed.sort();
        committed
    };
    let mut expected = chain_ids(&archive.diff_ids);
    let expected_top = expected.last().cloned().unwrap();
    expected.sort();

    // Through the transfer plugin, in the "one" namespace.
    ok(d.ctr(&["-n", "one", "images", "import", "--snapshotter", "example", tar]), "our ctr import");
    let ls = ok(d.stock_ctr(&["-n", "one", "snapshots", "--snapshotter", "example", "ls"]), "snapshots ls");
    assert_eq!(committed(&ls), expected, "{ls}");
    let check = ok(d.stock_ctr(&["-n", "one", "images", "check", "--snapshotter", "example"]), "check");
    assert!(check.lines().skip(1).all(|l| l.trim_end().ends_with("true")), "{check}");

    // Client-side, by the stock ctr, in the "two" namespace.
    ok(d.stock_ctr(&["-n", "two", "images", "import", "--snapshotter", "example", tar]), "stock ctr import");
    let ls = ok(d.stock_ctr(&["-n", "two", "snapshots", "--snapshotter", "example", "ls"]), "snapshots ls");
    assert_eq!(committed(&ls), expected, "{ls}");

    // The unpacked top layer holds busybox, and the whited-out file is gone.
    let view = ViewSnapshotRequest {
        snapshotter: "example".into(),
        key: "check".into(),
        parent: expected_top.clone(),
        ..Default::default()
    };
    let ch = d.channel().await;
    let v: ViewSnapshotResponse = unary(&ch, VIEW, Some("two"), view).await.unwrap();
    let parent = d.setup.path().join("mnt");
    std::fs::create_dir_all(&parent).unwrap();
    let mounted = MountedDir::mount_all(&parent, &v.mounts).unwrap();
    assert!(mounted.path().join("bin/busybox").is_file(), "{}", mounted.path().display());
    assert!(!mounted.path().join("etc/motd").exists(), "the whiteout is applied");
}
