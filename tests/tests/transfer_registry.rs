//! Pull and push through crated's Transfer service against a real registry
//! (Debian's `docker-registry`, see `crated_tests::registry`): an image
//! built from busybox is imported into one daemon, pushed, then pulled with
//! unpack into a second, fresh daemon, as containerd 1.7's client drives
//! them (named streams for progress and credentials). Also: blobs the
//! registry has already, basic auth through the auth stream, a platform the
//! image lacks, a missing reference, and a blob cut mid-body by the fault
//! proxy, whose retry resumes from what content kept. Needs root (mounts).

mod common;

use common::{unary, Daemon, Setup};
use containerd_client::{
    services::v1::snapshots::{Kind, StatSnapshotRequest, StatSnapshotResponse},
    types::{
        transfer::{ImageStore, OciRegistry, Progress, RegistryResolver, UnpackConfiguration},
        Platform,
    },
};
use crated_tests::images::{chain_ids, oci_archive, Archive, ImageOptions};
use crated_tests::registry::{FaultProxy, Registry};
use crated_tests::transfer_client::{
    collect_progress, events, images, labels, open_stream, pack, serve_credentials, transfer, unique_id,
};
use tonic::{transport::Channel, Code};

const SN: &str = "/containerd.services.snapshots.v1.Snapshots";

fn daemon() -> Daemon {
    Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "snapshots", "diff", "transfer"]).start()
}

fn amd64() -> Platform {
    Platform { os: "linux".into(), architecture: "amd64".into(), ..Default::default() }
}

/// Where an image goes on pull, as `ctr images pull --platform <p>` asks.
fn pull_store(reference: &str, platform: Platform) -> ImageStore {
    ImageStore {
        name: reference.into(),
        platforms: vec![platform.clone()],
        all_metadata: true,
        unpacks: vec![UnpackConfiguration { platform: Some(platform), snapshotter: "overlayfs".into() }],
        ..Default::default()
    }
}

/// Runs a transfer with an `OCIRegistry` end (plain http) and, with
/// `creds`, an auth stream answering them; returns the progress events.
async fn registry_transfer(
    ch: &Channel,
    ns: &str,
    reference: &str,
    store: ImageStore,
    pull: bool,
    creds: Option<(&str, &str)>,
) -> Result<Vec<Progress>, tonic::Status> {
    let id = unique_id();
    let mut resolver = RegistryResolver { default_scheme: "http".into(), ..Default::default() };
    let auth = match creds {
        Some((u, p)) => {
            resolver.auth_stream = format!("auth-{id}");
            let stream = open_stream(ch, &resolver.auth_stream).await;
            Some(serve_credentials(stream, Some((u.into(), p.into()))))
        }
        None => None,
    };
    let progress_id = format!("progress-{id}");
    let progress = collect_progress(open_stream(ch, &progress_id).await);
    let registry = pack(&OciRegistry { reference: reference.into(), resolver: Some(resolver) });
    let result = if pull {
        transfer(ch, ns, registry, pack(&store), &progress_id).await
    } else {
        transfer(ch, ns, pack(&store), registry, &progress_id).await
    };
    let events = progress.await.unwrap();
    if let Some(auth) = auth {
        let asked = auth.await.unwrap();
        if result.is_ok() {
            assert!(!asked.is_empty(), "credentials were never asked for");
        }
    }
    result.map(|_| events)
}

async fn pull(
    ch: &Channel,
    ns: &str,
    reference: &str,
    store: ImageStore,
    creds: Option<(&str, &str)>,
) -> Result<Vec<Progress>, tonic::Status> {
    registry_transfer(ch, ns, reference, store, true, creds).await
}

async fn push(
    ch: &Channel,
    ns: &str,
    local: &str,
    reference: &str,
    creds: Option<(&str, &str)>,
) -> Result<Vec<Progress>, tonic::Status> {
    let store = ImageStore { name: local.into(), ..Default::default() };
    registry_transfer(ch, ns, reference, store, false, creds).await
}

/// Imports the test image into `ns` as `docker.io/library/<name>:latest`.
async fn import_image(ch: &Channel, ns: &str, name: &str, archive: &Archive) -> String {
    crated_tests::transfer_client::import_image(ch, ns, name, archive.tar.clone()).await
}

async fn snapshot_committed(ch: &Channel, ns: &str, key: &str) -> bool {
    let req = StatSnapshotRequest { snapshotter: "overlayfs".into(), key: key.into() };
    let r: Result<StatSnapshotResponse, _> = unary(ch, &format!("{SN}/Stat"), Some(ns), req).await;
    r.is_ok_and(|r| r.info.unwrap().kind == Kind::Committed as i32)
}

/// Blob events of one kind, by blob digest.
fn blob_events<'a>(progress: &'a [Progress], event: &str) -> Vec<&'a str> {
    progress.iter().filter(|p| p.event == event).filter_map(|p| p.desc.as_ref().map(|d| d.digest.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_into_a_fresh_daemon() {
    let registry = Registry::start().expect("registry fixture");
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let source = daemon();
    let ch = source.channel().await;
    let local = import_image(&ch, "src", "pushed", &archive).await;
    let remote = format!("{}/test/pushed:1", registry.host());

    let progress = push(&ch, "src", &local, &remote, None).await.expect("push");
    let ev = events(&progress);
    assert_eq!(ev.first().copied(), Some(format!("Pushing to OCI Registry ({remote})").as_str()), "{ev:?}");
    assert_eq!(ev.last().copied(), Some(format!("Completed push to OCI Registry ({remote})").as_str()), "{ev:?}");
    let uploaded = blob_events(&progress, "complete");
    for blob in archive.layers.iter().chain(&archive.configs).chain(&archive.manifests) {
        assert!(uploaded.contains(&blob.as_str()), "{blob} not uploaded: {ev:?}");
    }
    // Children before parents: the manifest goes last.
    assert_eq!(uploaded.last().copied(), Some(archive.manifests[0].as_str()), "{uploaded:?}");

    // Again: the registry has every blob.
    let again = push(&ch, "src", &local, &remote, None).await.expect("second push");
    let existing = blob_events(&again, "already exists");
    for blob in archive.layers.iter().chain(&archive.configs) {
        assert!(existing.contains(&blob.as_str()), "{blob} not reported existing: {:?}", events(&again));
    }
    assert!(!blob_events(&again, "uploading").iter().any(|d| archive.layers.contains(&d.to_string())));

    // A fresh daemon pulls it with unpack.
    let target = daemon();
    let ch2 = target.channel().await;
    let progress = pull(&ch2, "dst", &remote, pull_store(&remote, amd64()), None).await.expect("pull");
    let ev = events(&progress);
    for e in [
        format!("Resolving from OCI Registry ({remote})"),
        format!("Pulling from OCI Registry ({remote})"),
        "fetching image content".into(),
        "downloading".into(),
        "extracted".into(),
        "saved".into(),
    ] {
        assert!(ev.contains(&e.as_str()), "no {e:?} in {ev:?}");
    }
    assert_eq!(ev.last().copied(), Some(format!("Completed pull from OCI Registry ({remote})").as_str()));
    let pos = |e: &str| ev.iter().position(|x| *x == e).unwrap();
    assert!(pos("extracted") < pos("saved"), "{ev:?}");
    for layer in &archive.layers {
        assert!(blob_events(&progress, "complete").contains(&layer.as_str()), "no complete for {layer}");
    }
    let imgs = images(&ch2, "dst").await;
    assert_eq!(imgs.get(&remote), Some(&archive.target), "{imgs:?}");
    for id in chain_ids(&archive.diff_ids) {
        assert!(snapshot_committed(&ch2, "dst", &id).await, "snapshot {id} not committed");
    }
    let source_label = format!("containerd.io/distribution.source.{}", registry.host());
    for blob in archive.layers.iter().chain(&archive.configs).chain(&archive.manifests) {
        let l = labels(&ch2, "dst", blob).await;
        assert_eq!(l.get(&source_label).map(String::as_str), Some("test/pushed"), "{blob}: {l:?}");
    }
    let manifest_labels = labels(&ch2, "dst", &archive.manifests[0]).await;
    assert_eq!(manifest_labels.get("containerd.io/gc.ref.content.config"), Some(&archive.configs[0]));

    // Pulled again: every blob is there.
    let again = pull(&ch2, "dst", &remote, pull_store(&remote, amd64()), None).await.expect("second pull");
    for layer in &archive.layers {
        assert!(blob_events(&again, "already exists").contains(&layer.as_str()), "{:?}", events(&again));
    }

    // A platform the image lacks.
    let arm = Platform { os: "linux".into(), architecture: "arm64".into(), ..Default::default() };
    let err = pull(&ch2, "arm", &remote, pull_store(&remote, arm), None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("linux/arm64") && err.message().contains("test/pushed"), "{err:?}");
    assert!(images(&ch2, "arm").await.is_empty());

    // A reference the registry does not have.
    let missing = format!("{}/test/missing:1", registry.host());
    let err = pull(&ch2, "missing", &missing, pull_store(&missing, amd64()), None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("test/missing"), "{err:?}");

    // Still serving.
    assert_eq!(images(&ch2, "dst").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_through_the_auth_stream() {
    let registry = Registry::start_with_user("tester", "s3cret").expect("registry fixture");
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let d = daemon();
    let ch = d.channel().await;
    let local = import_image(&ch, "auth", "authed", &archive).await;
    let remote = format!("{}/test/authed:1", registry.host());

    let err = push(&ch, "auth", &local, &remote, Some(("tester", "wrong"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = push(&ch, "auth", &local, &remote, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    push(&ch, "auth", &local, &remote, Some(("tester", "s3cret"))).await.expect("push with credentials");

    let err = pull(&ch, "pulled", &remote, pull_store(&remote, amd64()), Some(("tester", "nope"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(images(&ch, "pulled").await.is_empty());
    pull(&ch, "pulled", &remote, pull_store(&remote, amd64()), Some(("tester", "s3cret"))).await.expect("pull");
    assert_eq!(images(&ch, "pulled").await.get(&remote), Some(&archive.target));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cut_mid_body_fails_the_pull_and_the_retry_resumes() {
    let registry = Registry::start().expect("registry fixture");
    let proxy = FaultProxy::start(registry.addr()).expect("fault proxy");
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let d = daemon();
    let ch = d.channel().await;
    let local = import_image(&ch, "src", "cut", &archive).await;
    push(&ch, "src", &local, &format!("{}/test/cut:1", registry.host()), None).await.expect("push");
    // Pulled into another daemon: this one's content has the blobs (shared
    // between namespaces).
    let d = daemon();
    let ch = d.channel().await;

    let layer = archive.layers[0].clone();
    {
        let mut f = proxy.faults();
        f.cut_blob_after = Some(64 << 10);
        f.cut_times = 1;
        f.cut_only = Some(layer.clone());
    }
    let remote = format!("{}/test/cut:1", proxy.host());
    let err = pull(&ch, "dst", &remote, pull_store(&remote, amd64()), None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&layer), "{err:?}");
    assert!(images(&ch, "dst").await.is_empty(), "an image was stored after a failed pull");
    for id in chain_ids(&archive.diff_ids) {
        assert!(!snapshot_committed(&ch, "dst", &id).await, "snapshot {id} committed after a failed pull");
    }
    assert!(proxy.ranges().is_empty(), "{:?}", proxy.ranges());

    pull(&ch, "dst", &remote, pull_store(&remote, amd64()), None).await.expect("retried pull");
    assert_eq!(images(&ch, "dst").await.get(&remote), Some(&archive.target));
    for id in chain_ids(&archive.diff_ids) {
        assert!(snapshot_committed(&ch, "dst", &id).await, "snapshot {id} not committed");
    }
    // The retry asked only for what the cut download had not stored.
    let ranges = proxy.ranges();
    let resumed = ranges.iter().find(|(path, _)| path.ends_with(&layer));
    let (_, range) = resumed.unwrap_or_else(|| panic!("the layer was fetched whole again: {ranges:?}"));
    let start: u64 = range.trim_start_matches("bytes=").split('-').next().unwrap().parse().unwrap();
    assert!(start > 0 && start <= 64 << 10, "{range}");
}
