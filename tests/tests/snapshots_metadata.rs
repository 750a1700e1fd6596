//! The namespaced Snapshots service of the metadata plugin, routed by the
//! request's `snapshotter` to real snapshotter plugins: `dirsnap` and
//! `faulty` from `tests/examples/dirsnap.rs` (directory copies and bind
//! mounts, state on disk), with the real content, metadata and events
//! plugins. Namespaces, sharing through `containerd.io/snapshot.ref`,
//! refusals that change nothing, a panicking snapshotter, leases, events,
//! a SIGKILL and the recovery at the next start, hostile input.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{server_streaming, unary, Daemon, Setup};
use containerd_client::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use containerd_client::services::v1::{
    events_client::EventsClient,
    snapshots::{
        CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, ListSnapshotsResponse, MountsRequest, MountsResponse,
        PrepareSnapshotRequest, PrepareSnapshotResponse, RemoveSnapshotRequest, StatSnapshotRequest,
        StatSnapshotResponse, UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest, UsageResponse,
        ViewSnapshotRequest, ViewSnapshotResponse,
    },
    CreateRequest, CreateResponse, ListResourcesRequest, ListResourcesResponse, SubscribeRequest,
};
use tonic::{transport::Channel, Code};

const SN: &str = "/containerd.services.snapshots.v1.Snapshots";
const REF: &str = "containerd.io/snapshot.ref";

fn daemon() -> Daemon {
    Setup::new(&["dirsnap"]).with_real_plugins(&["content", "metadata", "events"]).start()
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The snapshot directories `dirsnap` (or `faulty`) holds.
fn backend_dirs(d: &Daemon, id: &str) -> usize {
    let dir = d.setup.root().join(format!("io.containerd.snapshotter.v1.{id}/snapshots"));
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

async fn prepare(
    ch: &Channel,
    ns: &str,
    sn: &str,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<PrepareSnapshotResponse, tonic::Status> {
    let req =
        PrepareSnapshotRequest { snapshotter: sn.into(), key: key.into(), parent: parent.into(), labels: labels(l) };
    unary(ch, &format!("{SN}/Prepare"), Some(ns), req).await
}

async fn view(
    ch: &Channel,
    ns: &str,
    sn: &str,
    key: &str,
    parent: &str,
) -> Result<ViewSnapshotResponse, tonic::Status> {
    let req =
        ViewSnapshotRequest { snapshotter: sn.into(), key: key.into(), parent: parent.into(), labels: labels(&[]) };
    unary(ch, &format!("{SN}/View"), Some(ns), req).await
}

async fn commit(
    ch: &Channel,
    ns: &str,
    sn: &str,
    name: &str,
    key: &str,
    l: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    let req = CommitSnapshotRequest { snapshotter: sn.into(), name: name.into(), key: key.into(), labels: labels(l) };
    unary::<_, ()>(ch, &format!("{SN}/Commit"), Some(ns), req).await
}

async fn remove(ch: &Channel, ns: &str, sn: &str, key: &str) -> Result<(), tonic::Status> {
    let req = RemoveSnapshotRequest { snapshotter: sn.into(), key: key.into() };
    unary::<_, ()>(ch, &format!("{SN}/Remove"), Some(ns), req).await
}

async fn stat(ch: &Channel, ns: &str, sn: &str, key: &str) -> Result<Info, tonic::Status> {
    let req = StatSnapshotRequest { snapshotter: sn.into(), key: key.into() };
    let r: StatSnapshotResponse = unary(ch, &format!("{SN}/Stat"), Some(ns), req).await?;
    Ok(r.info.unwrap())
}

async fn mounts(ch: &Channel, ns: &str, sn: &str, key: &str) -> Result<MountsResponse, tonic::Status> {
    unary(ch, &format!("{SN}/Mounts"), Some(ns), MountsRequest { snapshotter: sn.into(), key: key.into() }).await
}

async fn list(ch: &Channel, ns: &str, sn: &str, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
    let req = ListSnapshotsRequest { snapshotter: sn.into(), filters: filters.iter().map(|f| f.to_string()).collect() };
    let mut names = Vec::new();
    for r in server_streaming::<_, ListSnapshotsResponse>(ch, &format!("{SN}/List"), Some(ns), req).await? {
        names.extend(r?.info.into_iter().map(|i| i.name));
    }
    names.sort();
    Ok(names)
}

/// The directory a snapshot's bind mount exposes.
fn source(m: &[containerd_client::types::Mount]) -> PathBuf {
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].r#type, "bind");
    PathBuf::from(&m[0].source)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_isolated_and_every_method_works() {
    let d = daemon();
    let ch = d.channel().await;

    // The same key in two namespaces: two backend snapshots.
    let a = source(&prepare(&ch, "a", "dirsnap", "k", "", &[("x", "1")]).await.unwrap().mounts);
    let b = source(&prepare(&ch, "b", "dirsnap", "k", "", &[]).await.unwrap().mounts);
    assert_ne!(a, b);
    write(&a, "file", "from a");
    assert!(!b.join("file").exists());
    assert_eq!(backend_dirs(&d, "dirsnap"), 2);
    prepare(&ch, "a", "dirsnap", "only-a", "", &[]).await.unwrap();
    assert_eq!(list(&ch, "a", "dirsnap", &[]).await.unwrap(), ["k", "only-a"]);
    assert_eq!(list(&ch, "b", "dirsnap", &[]).await.unwrap(), ["k"]);
    assert_eq!(prepare(&ch, "a", "dirsnap", "k", "", &[]).await.unwrap_err().code(), Code::AlreadyExists);

    // Stat shows the client's key and labels, not the backend's key.
    let i = stat(&ch, "a", "dirsnap", "k").await.unwrap();
    assert_eq!((i.name.as_str(), i.kind, i.labels.clone()), ("k", Kind::Active as i32, labels(&[("x", "1")])));
    assert_eq!(source(&mounts(&ch, "a", "dirsnap", "k").await.unwrap().mounts), a);

    // Commit, a child sees the parent's files, a view too.
    commit(&ch, "a", "dirsnap", "layer", "k", &[("c", "1")]).await.unwrap();
    assert_eq!(stat(&ch, "a", "dirsnap", "k").await.unwrap_err().code(), Code::NotFound);
    let l = stat(&ch, "a", "dirsnap", "layer").await.unwrap();
    assert_eq!((l.kind, l.labels), (Kind::Committed as i32, labels(&[("c", "1")])));
    let child = source(&prepare(&ch, "a", "dirsnap", "child", "layer", &[]).await.unwrap().mounts);
    assert_eq!(std::fs::read_to_string(child.join("file")).unwrap(), "from a");
    let v = view(&ch, "a", "dirsnap", "v", "layer").await.unwrap();
    assert!(v.mounts[0].options.contains(&"ro".to_string()), "{:?}", v.mounts);
    assert_eq!(stat(&ch, "a", "dirsnap", "v").await.unwrap().kind, Kind::View as i32);
    assert_eq!(stat(&ch, "a", "dirsnap", "child").await.unwrap().parent, "layer");

    // Filters, in the namespace only.
    assert_eq!(list(&ch, "a", "dirsnap", &["kind==committed"]).await.unwrap(), ["layer"]);
    assert_eq!(list(&ch, "a", "dirsnap", &["parent==layer"]).await.unwrap(), ["child", "v"]);
    assert_eq!(list(&ch, "a", "dirsnap", &["labels.c==1"]).await.unwrap(), ["layer"]);
    assert!(list(&ch, "b", "dirsnap", &["parent==layer"]).await.unwrap().is_empty());

    // Usage counts what was written.
    let u: UsageResponse = unary(
        &ch,
        &format!("{SN}/Usage"),
        Some("a"),
        UsageRequest { snapshotter: "dirsnap".into(), key: "layer".into() },
    )
    .await
    .unwrap();
    assert_eq!((u.size, u.inodes), (6, 1));

    // Update by field mask: all labels live in metadata; only inherited
    // ones reach the backend.
    let upd = |paths: &[&str], l: &[(&str, &str)]| UpdateSnapshotRequest {
        snapshotter: "dirsnap".into(),
        info: Some(Info { name: "layer".into(), labels: labels(l), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    };
    let r: UpdateSnapshotResponse = unary(
        &ch,
        &format!("{SN}/Update"),
        Some("a"),
        upd(&["labels.n", "labels.containerd.io/snapshot/x"], &[("n", "2"), ("containerd.io/snapshot/x", "y")]),
    )
    .await
    .unwrap();
    let want = labels(&[("c", "1"), ("n", "2"), ("containerd.io/snapshot/x", "y")]);
    assert_eq!(r.info.unwrap().labels, want);
    assert_eq!(stat(&ch, "a", "dirsnap", "layer").await.unwrap().labels, want);
    let e = unary::<_, UpdateSnapshotResponse>(&ch, &format!("{SN}/Update"), Some("a"), upd(&["parent"], &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The stock ctr reads it.
    let out = d.stock_ctr(&["-n", "a", "snapshots", "--snapshotter", "dirsnap", "ls"]);
    let text = common::stdout(&out);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(text.contains("layer") && text.contains("Committed") && text.contains("child"), "{text}");

    for (ns, k) in [("a", "v"), ("a", "child"), ("a", "layer"), ("a", "only-a"), ("b", "k")] {
        remove(&ch, ns, "dirsnap", k).await.unwrap();
    }
    assert_eq!(backend_dirs(&d, "dirsnap"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_share_a_committed_layer_through_snapshot_ref() {
    let d = daemon();
    let ch = d.channel().await;
    let a = source(&prepare(&ch, "a", "dirsnap", "extract-1", "", &[(REF, "sha256:l1")]).await.unwrap().mounts);
    write(&a, "layer-file", "shared");
    commit(&ch, "a", "dirsnap", "sha256:l1", "extract-1", &[(REF, "sha256:l1")]).await.unwrap();
    assert_eq!(backend_dirs(&d, "dirsnap"), 1);

    // Namespace b asks for the same target: recorded, AlreadyExists.
    let e = prepare(&ch, "b", "dirsnap", "extract-2", "", &[(REF, "sha256:l1"), ("mine", "b")]).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("sha256:l1"), "{e:?}");
    assert_eq!(backend_dirs(&d, "dirsnap"), 1, "no second copy of the layer");
    let i = stat(&ch, "b", "dirsnap", "sha256:l1").await.unwrap();
    assert_eq!(i.kind, Kind::Committed as i32);
    assert_eq!(i.labels.get("mine").map(String::as_str), Some("b"));
    assert_eq!(stat(&ch, "b", "dirsnap", "extract-2").await.unwrap_err().code(), Code::NotFound);
    // Asking again in b: the target is there already.
    let e = prepare(&ch, "b", "dirsnap", "extract-3", "", &[(REF, "sha256:l1")]).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // b builds on it; a removes its record; the layer stays for b.
    let child = source(&prepare(&ch, "b", "dirsnap", "ctr", "sha256:l1", &[]).await.unwrap().mounts);
    assert_eq!(std::fs::read_to_string(child.join("layer-file")).unwrap(), "shared");
    remove(&ch, "a", "dirsnap", "sha256:l1").await.unwrap();
    assert_eq!(stat(&ch, "a", "dirsnap", "sha256:l1").await.unwrap_err().code(), Code::NotFound);
    assert!(stat(&ch, "b", "dirsnap", "sha256:l1").await.is_ok());
    assert_eq!(backend_dirs(&d, "dirsnap"), 2);
    remove(&ch, "b", "dirsnap", "ctr").await.unwrap();
    remove(&ch, "b", "dirsnap", "sha256:l1").await.unwrap();
    assert_eq!(backend_dirs(&d, "dirsnap"), 0, "the last record took the layer with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_removal_changes_nothing() {
    let d = daemon();
    let ch = d.channel().await;
    prepare(&ch, "default", "dirsnap", "p-active", "", &[]).await.unwrap();
    commit(&ch, "default", "dirsnap", "p", "p-active", &[]).await.unwrap();
    prepare(&ch, "default", "dirsnap", "c", "p", &[]).await.unwrap();
    view(&ch, "default", "dirsnap", "v", "p").await.unwrap();

    let e = remove(&ch, "default", "dirsnap", "p").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("child"), "{e:?}");
    for k in ["p", "c", "v"] {
        stat(&ch, "default", "dirsnap", k).await.unwrap_or_else(|e| panic!("{k} lost after a refusal: {e:?}"));
    }
    assert_eq!(backend_dirs(&d, "dirsnap"), 3);
    // Child first, then the parent: all removable.
    remove(&ch, "default", "dirsnap", "v").await.unwrap();
    assert_eq!(remove(&ch, "default", "dirsnap", "p").await.unwrap_err().code(), Code::FailedPrecondition);
    remove(&ch, "default", "dirsnap", "c").await.unwrap();
    remove(&ch, "default", "dirsnap", "p").await.unwrap();
    assert_eq!(backend_dirs(&d, "dirsnap"), 0);
    assert_eq!(remove(&ch, "default", "dirsnap", "p").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshotter_names_and_a_panicking_snapshotter() {
    let d = daemon();
    let ch = d.channel().await;

    // No name, an unknown name: InvalidArgument naming what is loaded.
    for (name, says) in [
        ("", "snapshotter argument missing"),
        ("overlayfs", "snapshotter not loaded: overlayfs (loaded snapshotters: dirsnap, faulty): invalid argument"),
    ] {
        let e = prepare(&ch, "default", name, "k", "", &[]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
        assert!(e.message().contains("loaded snapshotters: dirsnap, faulty"), "{e:?}");
        assert_eq!(list(&ch, "default", name, &[]).await.unwrap_err().code(), Code::InvalidArgument);
    }

    // Two snapshotters at once: the same key on each, separately.
    let x = source(&prepare(&ch, "default", "dirsnap", "same", "", &[]).await.unwrap().mounts);
    let y = source(&prepare(&ch, "default", "faulty", "same", "", &[]).await.unwrap().mounts);
    assert_ne!(x, y);
    assert_eq!(list(&ch, "default", "faulty", &[]).await.unwrap(), ["same"]);
    remove(&ch, "default", "faulty", "same").await.unwrap();
    assert_eq!(list(&ch, "default", "dirsnap", &[]).await.unwrap(), ["same"]);

    // A panic inside faulty's call: Internal, nothing recorded, and the
    // daemon, faulty and dirsnap keep serving.
    let e = prepare(&ch, "default", "faulty", "panic-now", "", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert_eq!(stat(&ch, "default", "faulty", "panic-now").await.unwrap_err().code(), Code::NotFound);
    assert!(list(&ch, "default", "faulty", &[]).await.unwrap().is_empty());
    prepare(&ch, "default", "faulty", "fine", "", &[]).await.unwrap();
    prepare(&ch, "default", "dirsnap", "also-fine", "", &[]).await.unwrap();
    assert_eq!(list(&ch, "default", "dirsnap", &[]).await.unwrap(), ["also-fine", "same"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_events() {
    let d = daemon();
    let ch = d.channel().await;
    let mut events = EventsClient::new(ch.clone())
        .subscribe(SubscribeRequest { filters: vec!["topic~=/snapshot/".into()] })
        .await
        .unwrap()
        .into_inner();

    let _: CreateResponse = unary(
        &ch,
        "/containerd.services.leases.v1.Leases/Create",
        Some("default"),
        CreateRequest { id: "l1".into(), labels: labels(&[]) },
    )
    .await
    .unwrap();
    let leased = |method: &str, key: &str, lease: &str| {
        let mut req = tonic::Request::new(PrepareSnapshotRequest {
            snapshotter: "dirsnap".into(),
            key: key.into(),
            ..Default::default()
        });
        req.metadata_mut().insert("containerd-namespace", "default".parse().unwrap());
        req.metadata_mut().insert("containerd-lease", lease.parse().unwrap());
        let (ch, path) = (ch.clone(), format!("{SN}/{method}"));
        async move {
            let mut grpc = tonic::client::Grpc::new(ch);
            grpc.ready().await.unwrap();
            grpc.unary::<_, PrepareSnapshotResponse, _>(req, path.parse().unwrap(), tonic_prost::ProstCodec::default())
                .await
        }
    };
    leased("Prepare", "leased", "l1").await.unwrap();
    let e = leased("Prepare", "no-lease", "missing").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(backend_dirs(&d, "dirsnap"), 1, "a refused lease leaves no backend snapshot");
    let r: ListResourcesResponse = unary(
        &ch,
        "/containerd.services.leases.v1.Leases/ListResources",
        Some("default"),
        ListResourcesRequest { id: "l1".into() },
    )
    .await
    .unwrap();
    let got: Vec<(String, String)> = r.resources.into_iter().map(|r| (r.r#type, r.id)).collect();
    assert_eq!(got, [("snapshots/dirsnap".to_string(), "leased".to_string())]);

    commit(&ch, "default", "dirsnap", "done", "leased", &[]).await.unwrap();
    remove(&ch, "default", "dirsnap", "done").await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let env = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
        let v = env.event.unwrap().value;
        let what = match env.topic.as_str() {
            "/snapshot/prepare" => {
                let e = <SnapshotPrepare as prost::Message>::decode(v.as_slice()).unwrap();
                format!("prepare {} {}", e.key, e.snapshotter)
            }
            "/snapshot/commit" => {
                let e = <SnapshotCommit as prost::Message>::decode(v.as_slice()).unwrap();
                format!("commit {} {}", e.key, e.name)
            }
            "/snapshot/remove" => {
                format!("remove {}", <SnapshotRemove as prost::Message>::decode(v.as_slice()).unwrap().key)
            }
            t => t.to_string(),
        };
        assert_eq!(env.namespace, "default");
        seen.push(what);
    }
    assert_eq!(seen, ["prepare leased dirsnap", "commit leased done", "remove done"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_keeps_metadata_and_snapshotter_consistent() {
    let mut d = daemon();
    let ch = d.channel().await;
    let a = source(&prepare(&ch, "default", "dirsnap", "work", "", &[]).await.unwrap().mounts);
    write(&a, "f", "kept");
    prepare(&ch, "default", "dirsnap", "lost", "", &[]).await.unwrap();
    drop(ch);
    d.signal_and_wait("KILL");

    // What crashes leave behind, made by hand while the daemon is down: a
    // backend snapshot no record knows (a Prepare killed before its
    // record), and a record whose backend snapshot is gone (a Remove
    // killed before its transaction).
    let base = d.setup.root().join("io.containerd.snapshotter.v1.dirsnap/snapshots");
    let orphan = base.join("900");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    let info = r#"{"key":"default/900/orphan","parent":"","kind":"active","labels":{},"created":0,"updated":0}"#;
    std::fs::write(orphan.join("info.json"), info).unwrap();
    let lost_dir = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p.join("info.json")).unwrap().contains("/lost\""))
        .expect("the backend dir of `lost`");
    std::fs::remove_dir_all(lost_dir).unwrap();

    d.restart();
    let ch = d.channel().await;
    // The repair runs in the background (a hung proxy snapshotter must not
    // hold up the daemon's start) and says what it did.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.log().contains("dropped 1 records without a backend snapshot, removed 1 backend snapshots") {
        assert!(std::time::Instant::now() < deadline, "no repair at start:\n{}", d.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!orphan.exists(), "the orphan backend snapshot was removed at start");
    assert_eq!(stat(&ch, "default", "dirsnap", "lost").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(list(&ch, "default", "dirsnap", &[]).await.unwrap(), ["work"]);
    // The active snapshot survived whole: its files, and Commit works.
    let m = source(&mounts(&ch, "default", "dirsnap", "work").await.unwrap().mounts);
    assert_eq!(std::fs::read_to_string(m.join("f")).unwrap(), "kept");
    commit(&ch, "default", "dirsnap", "work-done", "work", &[]).await.unwrap();
    assert_eq!(stat(&ch, "default", "dirsnap", "work-done").await.unwrap().kind, Kind::Committed as i32);
    // A new snapshot does not reuse a backend key of before the crash.
    prepare(&ch, "default", "dirsnap", "after", "work-done", &[]).await.unwrap();
    assert_eq!(backend_dirs(&d, "dirsnap"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_clear_codes() {
    let d = daemon();
    let ch = d.channel().await;
    let code = |r: Result<PrepareSnapshotResponse, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(prepare(&ch, "default", "dirsnap", "", "", &[]).await), Code::InvalidArgument);
    let big = "v".repeat(4097);
    let e = prepare(&ch, "default", "dirsnap", "k", "", &[("key", &big)]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("info.Labels"), "{e:?}");
    assert_eq!(code(prepare(&ch, "default", "dirsnap", "k", "", &[("", "v")]).await), Code::InvalidArgument);
    assert_eq!(code(prepare(&ch, "default", "dirsnap", "k", "no-such-parent", &[]).await), Code::NotFound);
    assert_eq!(backend_dirs(&d, "dirsnap"), 0, "refusals leave nothing behind");

    prepare(&ch, "default", "dirsnap", "act", "", &[]).await.unwrap();
    // An active parent, a commit of a committed or missing key, an empty name.
    assert_eq!(code(prepare(&ch, "default", "dirsnap", "k", "act", &[]).await), Code::InvalidArgument);
    assert_eq!(commit(&ch, "default", "dirsnap", "", "act", &[]).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(commit(&ch, "default", "dirsnap", "x", "nope", &[]).await.unwrap_err().code(), Code::NotFound);
    commit(&ch, "default", "dirsnap", "c", "act", &[]).await.unwrap();
    assert_eq!(commit(&ch, "default", "dirsnap", "c2", "c", &[]).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(commit(&ch, "default", "dirsnap", "c", "c", &[]).await.unwrap_err().code(), Code::AlreadyExists);
    let e = commit(&ch, "default", "dirsnap", "y", "c", &[("k", &big)]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    for bad in ["name==", "labels.\"unterminated", "==x", "name~=("] {
        let e = list(&ch, "default", "dirsnap", &[bad]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    // No namespace at all.
    let req = StatSnapshotRequest { snapshotter: "dirsnap".into(), key: "c".into() };
    let e = unary::<_, StatSnapshotResponse>(&ch, &format!("{SN}/Stat"), None, req).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Only what was meant to exist does.
    assert_eq!(list(&ch, "default", "dirsnap", &[]).await.unwrap(), ["c"]);
    assert_eq!(backend_dirs(&d, "dirsnap"), 1);
}
