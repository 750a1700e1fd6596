//! The metadata store's garbage collector through the daemon's socket: the
//! stock ctr imports images (unpacked into the real overlayfs snapshotter),
//! `images rm --sync` and `leases rm --sync` run a collection before they
//! answer, and the listings and the disk show what went and what stayed:
//! content shared with another namespace, what a lease holds until its
//! `containerd.io/gc.expire` passes, an ingest under a lease, a blob
//! orphaned by a crash, a daemon killed during a busy collection, and
//! collections racing imports (stock ctr) and pulls (our ctr through the
//! transfer plugin, from the registry fixture), and containers as roots
//! (compared with a stock containerd).
//! Needs root (overlay mounts).

mod common;

use std::path::PathBuf;

use common::{Daemon, Setup, StockContainerd};
use containerd_client::services::v1::{AddResourceRequest, CreateRequest, CreateResponse, Resource};
use crated_tests::images::{oci_archive, Archive, Compression, ImageOptions, Layers};
use crated_tests::registry::Registry;

const STACK: &[&str] = &["content", "metadata", "events", "snapshots", "diff"];

fn daemon() -> Daemon {
    Setup::new(&[]).with_real_plugins(STACK).start()
}

fn ok(o: std::process::Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}\n{}", common::stdout(&o), common::stderr(&o));
    common::stdout(&o)
}

fn ctr(d: &Daemon, ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ok(d.stock_ctr(&all), &all.join(" "))
}

/// The rows of a ctr listing (header dropped).
fn rows(listing: &str) -> Vec<String> {
    listing.lines().skip(1).filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// The image names in a namespace (`images ls -q` has no header).
fn image_names(d: &Daemon, ns: &str) -> Vec<String> {
    ctr(d, ns, &["images", "ls", "-q"]).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn blobs_dir(d: &Daemon) -> PathBuf {
    d.setup.root().join("io.containerd.content.v1.content/blobs/sha256")
}

fn blob_files(d: &Daemon) -> Vec<String> {
    match std::fs::read_dir(blobs_dir(d)) {
        Ok(it) => it.map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy())).collect(),
        Err(_) => Vec::new(),
    }
}

fn snapshot_dirs(d: &Daemon) -> Vec<String> {
    match std::fs::read_dir(d.setup.root().join("io.containerd.snapshotter.v1.overlayfs/snapshots")) {
        Ok(it) => it.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

struct Archived {
    _dir: tempfile::TempDir,
    path: PathBuf,
    archive: Archive,
}

fn archived(name: &str) -> Archived {
    let archive = oci_archive(&ImageOptions { ref_name: Some(name.to_string()), ..Default::default() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, &archive.tar).unwrap();
    Archived { _dir: dir, path, archive }
}

fn import(d: &Daemon, ns: &str, a: &Archived, base: &str) {
    ctr(d, ns, &["images", "import", "--base-name", base, a.path.to_str().unwrap()]);
}

/// Every blob of the archive's image.
fn image_blobs(a: &Archive) -> Vec<String> {
    a.manifests.iter().chain(&a.configs).chain(&a.layers).cloned().collect()
}

#[test]
fn images_rm_sync_collects_content_snapshots_and_disk() {
    let d = daemon();
    let a = archived("latest");
    let before_dirs = snapshot_dirs(&d);
    import(&d, "one", &a, "example.com/one");
    assert!(!rows(&ctr(&d, "one", &["snapshots", "ls"])).is_empty(), "import unpacked nothing");
    for b in image_blobs(&a.archive) {
        assert!(blob_files(&d).contains(&b), "{b} not on disk after import");
    }
    let name = image_names(&d, "one").into_iter().find(|n| n.starts_with("example.com/one")).expect("imported image");
    // Another namespace holds the same image: its blobs must stay.
    import(&d, "two", &a, "example.com/two");
    ctr(&d, "one", &["images", "rm", "--sync", &name]);
    assert!(rows(&ctr(&d, "one", &["content", "ls"])).is_empty(), "content left in one");
    assert!(rows(&ctr(&d, "one", &["snapshots", "ls"])).is_empty(), "snapshots left in one");
    let two = ctr(&d, "two", &["content", "ls"]);
    for b in image_blobs(&a.archive) {
        assert!(two.contains(&b), "{b} gone from two:\n{two}");
        assert!(blob_files(&d).contains(&b), "{b} gone from disk while two uses it");
    }
    ok(d.stock_ctr(&["-n", "two", "images", "check"]), "check in two");

    // Then the last user goes: nothing left, on disk either.
    for n in image_names(&d, "two") {
        ctr(&d, "two", &["images", "rm", "--sync", &n]);
    }
    assert!(rows(&ctr(&d, "two", &["content", "ls"])).is_empty());
    assert!(rows(&ctr(&d, "two", &["snapshots", "ls"])).is_empty());
    assert!(blob_files(&d).is_empty(), "blobs left on disk: {:?}", blob_files(&d));
    assert_eq!(snapshot_dirs(&d), before_dirs, "overlayfs snapshot directories left");
}

async fn create_lease(d: &Daemon, ns: &str, id: &str, labels: &[(&str, &str)]) {
    let ch = d.channel().await;
    let _: CreateResponse = common::unary(
        &ch,
        "/containerd.services.leases.v1.Leases/Create",
        Some(ns),
        CreateRequest { id: id.into(), labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() },
    )
    .await
    .expect("lease create");
}

async fn add_to_lease(d: &Daemon, ns: &str, id: &str, kind: &str, rid: &str) {
    let ch = d.channel().await;
    let _: () = common::unary(
        &ch,
        "/containerd.services.leases.v1.Leases/AddResource",
        Some(ns),
        AddResourceRequest { id: id.into(), resource: Some(Resource { id: rid.into(), r#type: kind.into() }) },
    )
    .await
    .expect("add resource");
}

/// A collection, triggered the way a client can: removing a throwaway
/// lease with `--sync`.
fn collect(d: &Daemon, ns: &str) {
    ctr(d, ns, &["leases", "create", "--id", "gc-trigger"]);
    ctr(d, ns, &["leases", "rm", "--sync", "gc-trigger"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_protect_until_they_expire() {
    let d = daemon();
    let ch = d.channel().await;
    create_lease(&d, "l", "keep", &[]).await;
    create_lease(&d, "l", "soon", &[("containerd.io/gc.expire", "2999-01-01T00:00:00Z")]).await;
    let kept = common::write_blob(&ch, "l", "r1", b"kept by a lease", Some("keep"), &[]).await.unwrap();
    let expiring = common::write_blob(&ch, "l", "r2", b"kept until expiry", Some("soon"), &[]).await.unwrap();
    let loose = common::write_blob(&ch, "l", "r3", b"kept by nothing", None, &[]).await.unwrap();
    collect(&d, "l");
    let ls = ctr(&d, "l", &["content", "ls"]);
    assert!(ls.contains(&kept) && ls.contains(&expiring), "{ls}");
    assert!(!ls.contains(&loose), "unreferenced content survived:\n{ls}");
    assert!(!blob_files(&d).contains(&loose));

    // The expiry passes: the next collection removes the lease and what
    // only it held. (A new lease with the same resource and an expiry in
    // the past stands for the passage of time.)
    create_lease(&d, "l", "past", &[("containerd.io/gc.expire", "2000-01-01T00:00:00Z")]).await;
    add_to_lease(&d, "l", "past", "content", &expiring).await;
    ctr(&d, "l", &["leases", "rm", "soon"]);
    collect(&d, "l");
    let ls = ctr(&d, "l", &["content", "ls"]);
    assert!(ls.contains(&kept), "{ls}");
    assert!(!ls.contains(&expiring), "content of an expired lease survived:\n{ls}");
    assert!(!blob_files(&d).contains(&expiring));
    let leases = ctr(&d, "l", &["leases", "ls"]);
    assert!(!leases.contains("past"), "an expired lease survived a collection:\n{leases}");
    assert!(leases.contains("keep"), "{leases}");
}

/// Half a blob written to `reference` (a WRITE of half the announced
/// total, no commit), under `lease` if given.
async fn write_half(ch: &tonic::transport::Channel, ns: &str, reference: &str, lease: Option<&str>) {
    use containerd_client::services::v1::{WriteAction, WriteContentRequest, WriteContentResponse};
    let data = b"half of a layer being pulled".to_vec();
    let first = WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: reference.into(),
        total: data.len() as i64 * 2,
        data,
        ..Default::default()
    };
    let _: Vec<WriteContentResponse> = common::bidi_streaming_leased(
        ch,
        "/containerd.services.content.v1.Content/Write",
        Some(ns),
        lease,
        vec![first],
    )
    .await
    .expect("partial write");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ingest_under_a_lease_survives_a_collection() {
    let d = daemon();
    let ch = d.channel().await;
    create_lease(&d, "i", "pull", &[]).await;
    // Half a blob, written under the lease, not committed.
    write_half(&ch, "i", "layer-1", Some("pull")).await;
    let res = lease_resources(&ch, "i", "pull").await;
    assert!(
        res.resources.iter().any(|r| r.r#type == "ingests" && r.id == "layer-1"),
        "the ingest did not join its lease: {:?}",
        res.resources
    );
    collect(&d, "i");
    let active = ctr(&d, "i", &["content", "active"]);
    assert!(active.contains("layer-1"), "the ingest went:\n{active}");
    // Finished under the lease, the blob is leased content and survives.
    let digest = common::write_blob(&ch, "i", "layer-2", b"a whole layer", Some("pull"), &[]).await.unwrap();
    collect(&d, "i");
    assert!(ctr(&d, "i", &["content", "ls"]).contains(&digest));
    let res = lease_resources(&ch, "i", "pull").await;
    assert!(res.resources.iter().any(|r| r.r#type == "content" && r.id == digest), "{:?}", res.resources);
    assert!(!res.resources.iter().any(|r| r.r#type == "ingests" && r.id == "layer-2"), "{:?}", res.resources);

    // An ingest written without a lease is kept (for a day, as containerd
    // keeps it); once the lease of `layer-1` goes, its write is aborted.
    write_half(&ch, "i", "no-lease", None).await;
    ctr(&d, "i", &["leases", "rm", "--sync", "pull"]);
    let active = ctr(&d, "i", &["content", "active"]);
    assert!(!active.contains("layer-1"), "the ingest of a deleted lease survived:\n{active}");
    assert!(active.contains("no-lease"), "an unleased ingest went before it expired:\n{active}");
    let ingest_dirs = std::fs::read_dir(d.setup.root().join("io.containerd.content.v1.content/ingest"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(ingest_dirs, 1, "the aborted ingest left its directory");
}

#[test]
fn a_blob_with_no_record_is_collected() {
    let d = daemon();
    // What a SIGKILL between the raw commit and the record leaves.
    let data = b"orphaned by a crash";
    let digest = crated_tests::images::sha256_digest(data);
    std::fs::create_dir_all(blobs_dir(&d)).unwrap();
    let file = blobs_dir(&d).join(&digest["sha256:".len()..]);
    std::fs::write(&file, data).unwrap();
    assert!(blob_files(&d).contains(&digest));
    collect(&d, "o");
    assert!(!file.exists(), "the orphan blob survived a collection");
}

/// Every content record has its blob, every image its content, every
/// snapshot record its backend snapshot, in each namespace.
fn assert_consistent(d: &Daemon, namespaces: &[String], a: &Archive) {
    let blobs = blob_files(d);
    for ns in namespaces {
        for row in rows(&ctr(d, ns, &["content", "ls"])) {
            let digest = row.split_whitespace().next().unwrap().to_string();
            assert!(blobs.contains(&digest), "{ns}: record of {digest} without its blob");
        }
        let images = image_names(d, ns);
        if !images.is_empty() {
            let content = ctr(d, ns, &["content", "ls"]);
            for b in image_blobs(a) {
                assert!(content.contains(&b), "{ns}: an image's {b} is gone");
                assert!(blobs.contains(&b), "{ns}: an image's {b} is gone from disk");
            }
        }
        for row in rows(&ctr(d, ns, &["snapshots", "ls"])) {
            let key = row.split_whitespace().next().unwrap().to_string();
            ok(d.stock_ctr(&["-n", ns, "snapshots", "info", &key]), &format!("{ns}: snapshot {key} backend"));
        }
    }
}

#[test]
fn sigkill_during_a_busy_collection_restarts_consistent() {
    let mut d = daemon();
    let a = archived("latest");
    let namespaces: Vec<String> = (0..12).map(|i| format!("ns{i}")).collect();
    for ns in &namespaces {
        import(&d, ns, &a, "example.com/busy");
    }
    // Half the namespaces drop their image; the last removal's collection
    // is killed while it runs (or just after: either must be consistent).
    for ns in &namespaces[..5] {
        for n in image_names(&d, ns) {
            ctr(&d, ns, &["images", "rm", &n]);
        }
    }
    let ns = namespaces[5].clone();
    let names = image_names(&d, &ns);
    let mut args = vec!["-n".to_string(), ns.clone(), "images".into(), "rm".into(), "--sync".into()];
    args.extend(names);
    let sock = d.socket();
    let mut rm = std::process::Command::new(common::stock_ctr_bin())
        .arg("--address")
        .arg(&sock)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    d.signal_and_wait("KILL");
    let _ = rm.wait();
    d.restart();
    assert_consistent(&d, &namespaces, &a.archive);
    // The next collection finishes the job: what the six namespaces
    // dropped is gone, the rest intact.
    collect(&d, &namespaces[6]);
    for ns in &namespaces[..6] {
        for n in image_names(&d, ns) {
            ctr(&d, ns, &["images", "rm", &n]);
        }
    }
    collect(&d, &namespaces[6]);
    for ns in &namespaces[..6] {
        assert!(rows(&ctr(&d, ns, &["content", "ls"])).is_empty(), "{ns}: content left");
        assert!(rows(&ctr(&d, ns, &["snapshots", "ls"])).is_empty(), "{ns}: snapshots left");
    }
    assert_consistent(&d, &namespaces, &a.archive);
}

/// The pause on a large store: 10,000 content records (under a lease) and
/// 1,000 snapshot records (labelled `containerd.io/gc.root`), built
/// through the services, then collections; prints the daemon's debug lines
/// with the duration and the pause, for crated and then for a stock
/// containerd 1.6 given the same store through the same calls (its
/// `metadata garbage collected` line gives the time it held the metadata
/// lock). A measurement, not a check:
/// `cargo nextest run -p crated-tests --test gc --run-ignored only --no-capture pause_on_a_large_store`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn pause_on_a_large_store() {
    let d = Setup::new(&[]).with_real_plugins(STACK).extra("[debug]\nlevel = \"debug\"\n").start();
    fill_large_store(d.channel().await).await;
    collect(&d, "big");
    collect(&d, "big");
    println!("crated:");
    for line in d.log().lines().filter(|l| l.contains("garbage collected")) {
        println!("  {line}");
    }
    assert_eq!(rows(&ctr(&d, "big", &["content", "ls"])).len(), 10_000);

    let c = StockContainerd::start_with_args("", &["--log-level", "debug"]);
    fill_large_store(common::channel(&c.socket()).await).await;
    for _ in 0..2 {
        let out = c.ctr(&["-n", "big", "leases", "create", "--id", "gc-trigger"]);
        assert!(out.status.success(), "{out:?}");
        let out = c.ctr(&["-n", "big", "leases", "rm", "--sync", "gc-trigger"]);
        assert!(out.status.success(), "{out:?}");
    }
    println!("containerd 1.6:");
    for line in c.log().lines().filter(|l| l.contains("garbage collected")) {
        println!("  {line}");
    }
    let out = c.ctr(&["-n", "big", "content", "ls", "-q"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10_000);
}

/// 10,000 small blobs under the lease `keep` and 1,000 native snapshots
/// labelled as GC roots, in the namespace `big` (the store the benchmark
/// harness measures too).
async fn fill_large_store(ch: tonic::transport::Channel) {
    crated_tests::large_store::fill(&ch, "big", 10_000, 1_000).await.expect("filling the large store");
}

/// Our ctr against `d`, in `ns`.
fn our_ctr(d: &Daemon, ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ok(d.ctr(&all), &format!("(our ctr) {}", all.join(" ")))
}

/// The archive of a distinct image (compression and layers vary the
/// digests), saved to a file, and named `latest`.
fn archived_with(compression: Compression, layers: Layers) -> Archived {
    let options = ImageOptions { compression, layers, ..Default::default() };
    let archive = oci_archive(&options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, &archive.tar).unwrap();
    Archived { _dir: dir, path, archive }
}

/// Asserts `name` is complete and unpacked (`images check`), and its
/// blobs are listed and on disk.
fn assert_complete(d: &Daemon, ns: &str, name: &str, a: &Archive) {
    // Only this image: another one listed may be removed (and collected)
    // while `images check` goes through the list.
    let check = ctr(d, ns, &["images", "check", &format!("name=={name}")]);
    let row = check
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in images check:\n{check}"));
    assert!(row.contains("complete") && row.trim_end().ends_with("true"), "{name} incomplete or not unpacked: {row}");
    let content = ctr(d, ns, &["content", "ls"]);
    let on_disk = blob_files(d);
    for b in image_blobs(a) {
        assert!(content.contains(&b), "{ns}: {name}'s {b} not listed");
        assert!(on_disk.contains(&b), "{ns}: {name}'s {b} not on disk");
    }
}

/// Collections (an `images rm --sync` of an unrelated image, a `leases rm
/// --sync`) run over and over while the stock ctr imports images and our
/// ctr pulls others from a registry through the transfer plugin, into one
/// namespace. Between rounds each image is removed without `--sync`, so its
/// blobs are unreferenced when the next round writes them again: only the
/// leases of the import and the pull keep a collection off them. Every
/// image is complete and unpacked after each import or pull, and at the end.
#[test]
fn collections_racing_imports_and_pulls_take_nothing_leased() {
    let d =
        Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "snapshots", "diff", "transfer"]).start();
    let registry = Registry::start().expect("registry fixture");
    let imported = [
        archived_with(Compression::Gzip, Layers::Rootfs),
        archived_with(Compression::Uncompressed, Layers::WithWhiteouts),
    ];
    let pulled = [
        archived_with(Compression::Uncompressed, Layers::Rootfs),
        archived_with(Compression::Gzip, Layers::WithWhiteouts),
    ];
    // The pulled images go to the registry from a namespace that is then
    // emptied, so the pulls fetch every blob.
    let mut remotes = Vec::new();
    for (i, a) in pulled.iter().enumerate() {
        import(&d, "seed", a, &format!("example.com/seed{i}"));
        let remote = format!("{}/test/p{i}:1", registry.host());
        our_ctr(&d, "seed", &["images", "push", "--plain-http", &remote, &format!("example.com/seed{i}:latest")]);
        remotes.push(remote);
    }
    for n in image_names(&d, "seed") {
        ctr(&d, "seed", &["images", "rm", "--sync", &n]);
    }
    assert!(blob_files(&d).is_empty(), "the seed's blobs stayed");
    let unrelated = archived("latest");
    import(&d, "other", &unrelated, "example.com/unrelated");

    const ROUNDS: usize = 4;
    let done = std::sync::atomic::AtomicBool::new(false);
    let collections = std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let mut n = 0usize;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if n.is_multiple_of(2) {
                    let tag = format!("example.com/unrelated:t{n}");
                    ctr(&d, "other", &["images", "tag", "example.com/unrelated:latest", &tag]);
                    ctr(&d, "other", &["images", "rm", "--sync", &tag]);
                } else {
                    collect(&d, "race");
                }
                n += 1;
            }
            n
        });
        let importer = s.spawn(|| {
            for round in 0..ROUNDS {
                for (i, a) in imported.iter().enumerate() {
                    let name = format!("example.com/imp{i}:latest");
                    import(&d, "race", a, &format!("example.com/imp{i}"));
                    assert_complete(&d, "race", &name, &a.archive);
                    if round + 1 < ROUNDS {
                        ctr(&d, "race", &["images", "rm", &name]);
                    }
                }
            }
        });
        let puller = s.spawn(|| {
            for round in 0..ROUNDS {
                for (remote, a) in remotes.iter().zip(&pulled) {
                    our_ctr(&d, "race", &["images", "pull", "--plain-http", remote]);
                    assert_complete(&d, "race", remote, &a.archive);
                    if round + 1 < ROUNDS {
                        ctr(&d, "race", &["images", "rm", remote]);
                    }
                }
            }
        });
        let imports = importer.join();
        let pulls = puller.join();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let collections = collector.join().unwrap();
        if let Err(e) = imports.and(pulls) {
            std::panic::resume_unwind(e);
        }
        collections
    });
    assert!(collections > 0, "no collection ran");
    collect(&d, "race");
    for (i, a) in imported.iter().enumerate() {
        assert_complete(&d, "race", &format!("example.com/imp{i}:latest"), &a.archive);
    }
    for (remote, a) in remotes.iter().zip(&pulled) {
        assert_complete(&d, "race", remote, &a.archive);
    }
    assert!(!rows(&ctr(&d, "race", &["snapshots", "ls"])).is_empty(), "no snapshots in race");
    assert_complete(&d, "other", "example.com/unrelated:latest", &unrelated.archive);
}

/// The digests `content ls` lists and the `snapshots ls` rows, sorted.
fn content_and_snapshots(ctr: impl Fn(&[&str]) -> std::process::Output) -> (Vec<String>, Vec<String>) {
    let run = |args: &[&str]| ok(ctr(args), &args.join(" "));
    let mut content: Vec<String> = rows(&run(&["-n", "c", "content", "ls"]))
        .iter()
        .map(|r| r.split_whitespace().next().unwrap().to_string())
        .collect();
    content.sort();
    let mut snapshots: Vec<String> = rows(&run(&["-n", "c", "snapshots", "ls"]))
        .iter()
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    snapshots.sort();
    (content, snapshots)
}

/// A container is a root: after its image goes with `images rm --sync`,
/// its snapshot and the parent chain stay, and the image's blobs go as
/// they do in a stock containerd (the listings are compared); once the
/// container goes too, a collection leaves no snapshot.
#[test]
fn containers_keep_their_snapshots_as_stock_containerd_does() {
    let a = archived("latest");
    let steps = |ctr: &dyn Fn(&[&str]) -> std::process::Output| {
        let run = |args: &[&str]| ok(ctr(args), &args.join(" "));
        run(&["-n", "c", "images", "import", "--base-name", "example.com/c", a.path.to_str().unwrap()]);
        run(&["-n", "c", "containers", "create", "example.com/c:latest", "c1"]);
        run(&["-n", "c", "images", "rm", "--sync", "example.com/c:latest"]);
        let after_image = content_and_snapshots(ctr);
        run(&["-n", "c", "containers", "rm", "c1"]);
        run(&["-n", "c", "leases", "create", "--id", "gc-trigger"]);
        run(&["-n", "c", "leases", "rm", "--sync", "gc-trigger"]);
        (after_image, content_and_snapshots(ctr))
    };
    let stock = StockContainerd::start();
    let expected = steps(&|args| stock.ctr(args));
    drop(stock);
    let d = daemon();
    let got = steps(&|args| d.stock_ctr(args));
    assert!(!expected.0 .1.is_empty(), "stock containerd kept no snapshot for the container");
    assert!(got.0 .1.iter().any(|r| r.starts_with("c1 ")), "the container's snapshot went: {:?}", got.0 .1);
    assert_eq!(got.0, expected.0, "content and snapshots after images rm --sync (ours, stock)");
    assert!(got.1 .1.is_empty(), "snapshots left after the container went: {:?}", got.1 .1);
    assert_eq!(got.1, expected.1, "content and snapshots after the container went (ours, stock)");
}

/// What a lease holds, as the Leases service lists it.
async fn lease_resources(
    ch: &tonic::transport::Channel,
    ns: &str,
    id: &str,
) -> containerd_client::services::v1::ListResourcesResponse {
    common::unary(
        ch,
        "/containerd.services.leases.v1.Leases/ListResources",
        Some(ns),
        containerd_client::services::v1::ListResourcesRequest { id: id.into() },
    )
    .await
    .unwrap()
}

/// Containers run and removed through the stock ctr and ours, then the
/// image removed: content, snapshots and the disk are back to where they
/// were before the import (the rw snapshots of `run --rm` and of a
/// container removed by hand included).
#[test]
fn running_and_removing_containers_leaves_nothing() {
    let d =
        Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "snapshots", "diff", "runtime"]).start();
    let ns = "gc-run";
    let a = archived("latest");
    let (before_blobs, before_dirs) = (blob_files(&d), snapshot_dirs(&d));
    import(&d, ns, &a, "example.com/run");
    let name = image_names(&d, ns).into_iter().find(|n| n.starts_with("example.com/run")).expect("imported image");
    let unpacked = rows(&ctr(&d, ns, &["snapshots", "ls"])).len();

    let out = ctr(&d, ns, &["run", "--rm", &name, "gc-stock", "echo", "stock"]);
    assert_eq!(out.trim(), "stock");
    let out = our_ctr(&d, ns, &["run", "--rm", &name, "gc-ours", "echo", "ours"]);
    assert_eq!(out.trim(), "ours");
    // A container removed by hand, with its snapshot left for the GC.
    ctr(&d, ns, &["run", "-d", &name, "gc-detached", "busybox", "sleep", "60"]);
    assert_eq!(rows(&ctr(&d, ns, &["snapshots", "ls"])).len(), unpacked + 1, "the running container's snapshot");
    ctr(&d, ns, &["tasks", "kill", "-s", "SIGKILL", "gc-detached"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ctr(&d, ns, &["tasks", "ls"]).contains("STOPPED") {
        assert!(std::time::Instant::now() < deadline, "the killed task never stopped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ctr(&d, ns, &["tasks", "delete", "gc-detached"]);
    // The container goes and its rw snapshot stays behind (stock ctr
    // would remove it too without `--keep-snapshot`): nothing refers to
    // the snapshot any more, so the collection takes it.
    ctr(&d, ns, &["containers", "rm", "--keep-snapshot", "gc-detached"]);
    assert_eq!(rows(&ctr(&d, ns, &["snapshots", "ls"])).len(), unpacked + 1, "--keep-snapshot kept nothing");
    collect(&d, ns);
    assert_eq!(rows(&ctr(&d, ns, &["snapshots", "ls"])).len(), unpacked, "a container's snapshot outlived it");
    assert!(rows(&ctr(&d, ns, &["containers", "ls"])).is_empty());

    ctr(&d, ns, &["images", "rm", "--sync", &name]);
    assert!(rows(&ctr(&d, ns, &["content", "ls"])).is_empty(), "content left");
    assert!(rows(&ctr(&d, ns, &["snapshots", "ls"])).is_empty(), "snapshots left");
    assert_eq!(blob_files(&d), before_blobs, "blobs left on disk");
    assert_eq!(snapshot_dirs(&d), before_dirs, "overlayfs snapshot directories left");
}
