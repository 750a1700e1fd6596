//! The Transfer and Streaming services of `crated-plugin-transfer` through
//! the daemon's socket, driven as containerd 1.7's client drives them: a
//! named stream is opened and acknowledged, the archive goes over it in
//! flow-controlled `Data` chunks, progress comes back on another stream.
//! Real OCI and docker tars built from busybox are imported, unpacked
//! into the real overlayfs and native snapshotters (mounted and looked
//! at), exported and re-imported. Needs root (mounts).

mod common;

use std::{fs, path::PathBuf};

use common::{unary, Daemon, Setup};
use containerd_client::{
    services::v1::snapshots::{
        Kind, StatSnapshotRequest, StatSnapshotResponse, ViewSnapshotRequest, ViewSnapshotResponse,
    },
    types::{
        transfer::{
            Data, ImageExportStream, ImageImportStream, ImageReference, ImageStore, UnpackConfiguration, WindowUpdate,
        },
        Platform,
    },
};
use crated_plugin_api::mount::MountedDir;
use crated_tests::images::{
    chain_ids, docker_archive, oci_archive, sha256_digest, with_corrupted_blob, Archive, ImageOptions, Layers,
};
use crated_tests::transfer_client::{
    events, images, import, labels, open_stream, pack, receive_bytes, transfer, unique_id, unpack, ClientStream,
    MAX_CHUNK,
};
use prost::Name;
use prost_types::Any;
use tonic::{transport::Channel, Code};

const SN: &str = "/containerd.services.snapshots.v1.Snapshots";

fn daemon() -> Daemon {
    Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "snapshots", "diff", "transfer"]).start()
}

fn store(prefix: &str) -> ImageStore {
    ImageStore {
        extra_references: vec![ImageReference { name: prefix.into(), is_prefix: true, ..Default::default() }],
        ..Default::default()
    }
}

fn unpack_to(snapshotter: &str) -> UnpackConfiguration {
    UnpackConfiguration {
        platform: Some(Platform { os: "linux".into(), architecture: "amd64".into(), ..Default::default() }),
        snapshotter: snapshotter.into(),
    }
}

/// Exports the named images from `ns`; returns the tar.
async fn export(ch: &Channel, ns: &str, names: &[&str], skip_docker: bool) -> Vec<u8> {
    let id = format!("export-{}", unique_id());
    let output = open_stream(ch, &id).await;
    let receiver = tokio::spawn(receive_bytes(output));
    let source = ImageStore {
        extra_references: names.iter().map(|n| ImageReference { name: n.to_string(), ..Default::default() }).collect(),
        ..Default::default()
    };
    let destination = ImageExportStream { stream: id, skip_compatibility_manifest: skip_docker, ..Default::default() };
    transfer(ch, ns, pack(&source), pack(&destination), "").await.expect("export");
    receiver.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_and_docker_archives_import_with_their_names_and_progress() {
    let d = daemon();
    let ch = d.channel().await;

    let listed = common::stdout(&d.stock_ctr(&["plugins", "ls"]));
    for (kind, id) in [("io.containerd.transfer.v1", "local"), ("io.containerd.streaming.v1", "manager")] {
        let row = listed.lines().find(|l| l.split_whitespace().take(2).eq([kind, id]));
        let row = row.unwrap_or_else(|| panic!("no {kind} {id} in ctr plugins ls:\n{listed}"));
        assert!(row.trim_end().ends_with("ok"), "{row}");
    }

    let oci = oci_archive(&ImageOptions::default()).unwrap();
    let progress = import(&ch, "oci", oci.tar.clone(), store("docker.io/library/oci-test")).await.unwrap();
    let imgs = images(&ch, "oci").await;
    assert_eq!(imgs.get("docker.io/library/oci-test:latest"), Some(&oci.target), "{imgs:?}");
    assert_eq!(imgs.len(), 1, "{imgs:?}");

    let ev = events(&progress);
    let pos = |e: &str| ev.iter().position(|x| *x == e).unwrap_or_else(|| panic!("no {e:?} in {ev:?}"));
    assert_eq!(ev.first(), Some(&"Importing"), "{ev:?}");
    assert_eq!(ev.last(), Some(&"Completed import"), "{ev:?}");
    assert!(pos("complete") < pos("saved"), "{ev:?}");
    let saved = progress.iter().find(|p| p.event == "saved").unwrap();
    assert_eq!(saved.name, "docker.io/library/oci-test:latest");
    assert_eq!(saved.desc.as_ref().unwrap().digest, oci.target);
    for layer in &oci.layers {
        assert!(progress.iter().any(|p| p.event == "complete" && p.name == *layer), "no complete for {layer}");
    }

    // GC labels tie the manifest to its config and layers.
    let manifest_labels = labels(&ch, "oci", &oci.manifests[0]).await;
    assert_eq!(manifest_labels.get("containerd.io/gc.ref.content.config"), Some(&oci.configs[0]));
    assert_eq!(manifest_labels.get("containerd.io/gc.ref.content.l.0"), Some(&oci.layers[0]));

    let docker = docker_archive(&ImageOptions { ref_name: Some("busy:1.0".into()), ..Default::default() }).unwrap();
    import(&ch, "docker", docker.tar.clone(), store("docker.io/library/busy")).await.unwrap();
    let imgs = images(&ch, "docker").await;
    let target = imgs.get("docker.io/library/busy:1.0").unwrap_or_else(|| panic!("{imgs:?}"));
    // The docker archive's manifest is written by the import: it names the
    // archive's config and layers.
    let manifest_labels = labels(&ch, "docker", target).await;
    assert_eq!(manifest_labels.get("containerd.io/gc.ref.content.config"), Some(&docker.configs[0]));
    assert_eq!(manifest_labels.get("containerd.io/gc.ref.content.l.0"), Some(&docker.layers[0]));

    // No prefix: nothing named, but `name` names the archive's index.
    let named = ImageStore { name: "whole-archive".into(), ..Default::default() };
    import(&ch, "index", oci.tar.clone(), named).await.unwrap();
    let imgs = images(&ch, "index").await;
    assert_eq!(imgs.keys().collect::<Vec<_>>(), ["whole-archive"], "{imgs:?}");
}

async fn check_unpacked(
    d: &Daemon,
    ch: &Channel,
    ns: &str,
    sn: &str,
    archive: &Archive,
    check: impl Fn(&std::path::Path),
) {
    let chain = chain_ids(&archive.diff_ids);
    for id in &chain {
        let r: StatSnapshotResponse =
            unary(ch, &format!("{SN}/Stat"), Some(ns), StatSnapshotRequest { snapshotter: sn.into(), key: id.clone() })
                .await
                .unwrap_or_else(|e| panic!("snapshot {id} on {sn}: {e}"));
        assert_eq!(r.info.unwrap().kind, Kind::Committed as i32, "{id} is committed");
    }
    let top = chain.last().unwrap();
    let config_labels = labels(ch, ns, &archive.configs[0]).await;
    assert_eq!(config_labels.get(&format!("containerd.io/gc.ref.snapshot.{sn}")), Some(top), "{config_labels:?}");
    for (layer, diff_id) in archive.layers.iter().zip(&archive.diff_ids) {
        let l = labels(ch, ns, layer).await;
        assert_eq!(l.get("containerd.io/uncompressed"), Some(diff_id), "layer {layer}");
    }
    let view = ViewSnapshotRequest {
        snapshotter: sn.into(),
        key: format!("check-{sn}-{}", archive.target),
        parent: top.clone(),
        ..Default::default()
    };
    let v: ViewSnapshotResponse = unary(ch, &format!("{SN}/View"), Some(ns), view).await.unwrap();
    let dir: PathBuf = d.setup.path().join("mnt");
    fs::create_dir_all(&dir).unwrap();
    let mounted = MountedDir::mount_all(&dir, &v.mounts).unwrap();
    check(mounted.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_unpack_into_overlayfs_and_native() {
    let d = daemon();
    let ch = d.channel().await;
    let rootfs = oci_archive(&ImageOptions::default()).unwrap();
    let whiteouts = oci_archive(&ImageOptions { layers: Layers::WithWhiteouts, ..Default::default() }).unwrap();
    for sn in ["overlayfs", "native"] {
        let ns = format!("unpack-{sn}");
        let mut dest = store("docker.io/library/rootfs");
        dest.unpacks = vec![unpack_to(sn)];
        let progress = import(&ch, &ns, rootfs.tar.clone(), dest).await.unwrap();
        let ev = events(&progress);
        assert!(ev.contains(&"extracting") && ev.contains(&"extracted"), "{ev:?}");
        check_unpacked(&d, &ch, &ns, sn, &rootfs, |root| {
            let busybox = fs::metadata(root.join("bin/busybox")).expect("busybox in the rootfs");
            assert!(busybox.len() > 100_000);
        })
        .await;

        let mut dest = store("docker.io/library/whiteouts");
        dest.unpacks = vec![unpack_to(sn)];
        import(&ch, &ns, whiteouts.tar.clone(), dest).await.unwrap();
        check_unpacked(&d, &ch, &ns, sn, &whiteouts, |root| {
            assert!(root.join("bin/busybox").exists());
            assert!(!root.join("etc/motd").exists(), "the whited-out file is gone");
            assert!(root.join("opt/data/c").exists());
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_gives_the_same_bytes_and_digests() {
    let d = daemon();
    let ch = d.channel().await;
    let oci = oci_archive(&ImageOptions::default()).unwrap();
    import(&ch, "first", oci.tar.clone(), store("docker.io/library/round")).await.unwrap();
    let first = export(&ch, "first", &["docker.io/library/round:latest"], false).await;

    let files = crated_tests::images::tar_files(&first).unwrap();
    assert!(files.contains_key("oci-layout") && files.contains_key("manifest.json"), "{:?}", files.keys());
    for blob in oci.layers.iter().chain(&oci.configs).chain(&oci.manifests) {
        let path = format!("blobs/sha256/{}", blob.trim_start_matches("sha256:"));
        assert_eq!(sha256_digest(&files[&path]), *blob);
    }
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], oci.target.as_str());
    assert_eq!(m["annotations"]["io.containerd.image.name"], "docker.io/library/round:latest");
    assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "latest");
    let docker: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(docker[0]["RepoTags"][0], "round:latest");

    import(&ch, "second", first.clone(), store("docker.io/library/round")).await.unwrap();
    assert_eq!(images(&ch, "second").await, images(&ch, "first").await);
    let second = export(&ch, "second", &["docker.io/library/round:latest"], false).await;
    assert_eq!(sha256_digest(&first), sha256_digest(&second), "export -> import -> export is byte-stable");

    let bare = export(&ch, "second", &["docker.io/library/round:latest"], true).await;
    assert!(!crated_tests::images::tar_files(&bare).unwrap().contains_key("manifest.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_archives_fail_cleanly_and_the_daemon_keeps_serving() {
    let d = daemon();
    let ch = d.channel().await;
    let oci = oci_archive(&ImageOptions::default()).unwrap();

    let corrupted = with_corrupted_blob(&oci, &oci.layers[0]).unwrap();
    let err = import(&ch, "broken", corrupted, store("docker.io/library/broken")).await.unwrap_err();
    assert!(err.message().contains(oci.layers[0].trim_start_matches("sha256:")), "{err:?}");
    assert!(images(&ch, "broken").await.is_empty());

    let truncated = oci.tar[..oci.tar.len() / 2].to_vec();
    let err = import(&ch, "broken", truncated, store("docker.io/library/broken")).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(images(&ch, "broken").await.is_empty());

    let garbage = Any { type_url: "garbage".into(), value: vec![0xff, 0x00, 0x13] };
    let err = transfer(&ch, "broken", garbage.clone(), garbage, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("garbage"), "{err:?}");

    // The right types with undecodable bodies.
    let bad_source = Any { type_url: ImageImportStream::full_name(), value: vec![0xff; 7] };
    let err = transfer(&ch, "broken", bad_source, pack(&ImageStore::default()), "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A stream nobody opened.
    let source = ImageImportStream { stream: "never-opened".into(), ..Default::default() };
    let err = transfer(&ch, "broken", pack(&source), pack(&store("x")), "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("never-opened"), "{err:?}");

    // A client that hangs up mid-archive.
    let id = "hangs-up";
    let input = open_stream(&ch, id).await;
    let half = oci.tar[..oci.tar.len() / 3].to_vec();
    let sender = tokio::spawn(async move {
        let ClientStream { tx, mut rx } = input;
        let update = rx.message().await.unwrap().unwrap();
        let credit = unpack::<WindowUpdate>(&update).update as usize;
        tx.send(pack(&Data { data: half[..credit.min(MAX_CHUNK)].to_vec() })).await.unwrap();
        drop(rx);
        drop(tx);
    });
    let source = ImageImportStream { stream: id.into(), ..Default::default() };
    let result = transfer(&ch, "broken", pack(&source), pack(&store("docker.io/library/hang")), "").await;
    sender.await.unwrap();
    assert!(result.is_err());

    // Still serving: a good import works.
    import(&ch, "after", oci.tar.clone(), store("docker.io/library/fine")).await.unwrap();
    assert_eq!(images(&ch, "after").await.len(), 1);
}
