//! The Diff service of `io.containerd.differ.v1.walking` through the
//! daemon's socket, as a client unpacking an image does it: layers written
//! to content, Prepare, Apply, Commit on the real overlayfs and native
//! snapshotters, the result mounted and checked. Hostile layers against a
//! sentinel directory outside every root, broken layers, and a Diff of two
//! snapshots applied back. Needs root (mounts).

mod common;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use common::{unary, write_blob, Daemon, Setup};
use containerd_client::{
    services::v1::{
        snapshots::{
            CommitSnapshotRequest, MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
            ViewSnapshotRequest, ViewSnapshotResponse,
        },
        ApplyRequest, ApplyResponse, DiffRequest, DiffResponse, InfoRequest, InfoResponse,
    },
    types::{Descriptor, Mount},
};
use crated_plugin_api::mount::MountedDir;
use sha2::{Digest, Sha256};
use tonic::{transport::Channel, Code};

const NS: &str = "diff-test";
const SN: &str = "/containerd.services.snapshots.v1.Snapshots";
const DIFF: &str = "/containerd.services.diff.v1.Diff";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn daemon() -> Daemon {
    Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "snapshots", "diff"]).start()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Builds a layer with the `tar` crate.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }
    fn dir(mut self, name: &str, mode: u32) -> Layer {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }
    fn file(mut self, name: &str, data: &[u8]) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }
    fn symlink(mut self, name: &str, target: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }
    fn hardlink(mut self, name: &str, target: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }
    /// An entry whose name is written as is (the builder refuses `..`).
    fn raw(mut self, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) -> Layer {
        let mut h = Self::header(kind, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// The three layers of the test image.
fn image() -> Vec<Vec<u8>> {
    let base = Layer::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"base")
        .file("etc/shadow", b"secret")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/sh", b"#!sh")
        .hardlink("usr/bin/ash", "usr/bin/sh")
        .symlink("bin", "usr/bin")
        .dir("var", 0o755)
        .dir("var/cache", 0o700)
        .file("var/cache/old", b"old")
        .finish();
    let second = Layer::new()
        .file("etc/.wh.shadow", b"")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/new", b"new")
        .file("etc/hostname", b"second")
        .finish();
    let third = Layer::new().file(".wh.bin", b"").dir("bin", 0o755).file("bin/tool", b"tool").finish();
    vec![base, second, third]
}

/// What the image above must look like.
fn check_image(root: &Path) {
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"second");
    assert!(!root.join("etc/shadow").exists(), "whiteout");
    assert!(!root.join("var/cache/old").exists(), "opaque directory");
    assert_eq!(fs::read(root.join("var/cache/new")).unwrap(), b"new");
    assert_eq!(fs::metadata(root.join("var/cache")).unwrap().mode() & 0o7777, 0o700);
    let sh = fs::metadata(root.join("usr/bin/sh")).unwrap();
    assert_eq!(sh.ino(), fs::metadata(root.join("usr/bin/ash")).unwrap().ino(), "hard link");
    let bin = fs::symlink_metadata(root.join("bin")).unwrap();
    assert!(bin.is_dir(), "the symlink was replaced by a directory");
    assert_eq!(fs::read(root.join("bin/tool")).unwrap(), b"tool");
}

async fn prepare(ch: &Channel, sn: &str, key: &str, parent: &str) -> Vec<Mount> {
    let req =
        PrepareSnapshotRequest { snapshotter: sn.into(), key: key.into(), parent: parent.into(), ..Default::default() };
    let r: PrepareSnapshotResponse = unary(ch, &format!("{SN}/Prepare"), Some(NS), req).await.unwrap();
    r.mounts
}

async fn view(ch: &Channel, sn: &str, key: &str, parent: &str) -> Vec<Mount> {
    let req =
        ViewSnapshotRequest { snapshotter: sn.into(), key: key.into(), parent: parent.into(), ..Default::default() };
    let r: ViewSnapshotResponse = unary(ch, &format!("{SN}/View"), Some(NS), req).await.unwrap();
    r.mounts
}

async fn commit(ch: &Channel, sn: &str, name: &str, key: &str) {
    let req =
        CommitSnapshotRequest { snapshotter: sn.into(), name: name.into(), key: key.into(), ..Default::default() };
    let _: () = unary(ch, &format!("{SN}/Commit"), Some(NS), req).await.unwrap();
}

async fn mounts(ch: &Channel, sn: &str, key: &str) -> Vec<Mount> {
    let req = MountsRequest { snapshotter: sn.into(), key: key.into() };
    let r: MountsResponse = unary(ch, &format!("{SN}/Mounts"), Some(NS), req).await.unwrap();
    r.mounts
}

/// Writes `blob` to content and applies it onto `mounts`.
async fn apply(ch: &Channel, blob: &[u8], media_type: &str, mounts: Vec<Mount>) -> Result<Descriptor, tonic::Status> {
    // The same layer goes to both snapshotters: a second write finds it.
    let digest = match write_blob(ch, NS, &format!("layer-{}", sha256(blob)), blob, None, &[]).await {
        Ok(d) => d,
        Err(s) if s.code() == Code::AlreadyExists => sha256(blob),
        Err(s) => panic!("write the layer: {s:?}"),
    };
    let diff = Descriptor { media_type: media_type.into(), digest, size: blob.len() as i64, ..Default::default() };
    let req = ApplyRequest { diff: Some(diff), mounts, ..Default::default() };
    let r: ApplyResponse = unary(ch, &format!("{DIFF}/Apply"), Some(NS), req).await?;
    Ok(r.applied.unwrap())
}

/// Unpacks the image on `sn` as a client does; returns the top's name.
async fn unpack(ch: &Channel, sn: &str) -> String {
    let mut parent = String::new();
    for (i, tar) in image().into_iter().enumerate() {
        // One layer of each kind: gzip, plain (zstd on overlayfs), and gzip
        // in two members under the docker media type.
        let (blob, media) = match i {
            0 => (gzip(&tar), GZIP),
            1 if sn == "overlayfs" => (zstd::encode_all(&tar[..], 3).unwrap(), ZSTD),
            1 => (tar.clone(), TAR),
            _ => {
                let (a, b) = tar.split_at(700);
                ([gzip(a), gzip(b)].concat(), DOCKER_GZIP)
            }
        };
        let key = format!("extract-{sn}-{i}");
        let m = prepare(ch, sn, &key, &parent).await;
        let applied = apply(ch, &blob, media, m).await.unwrap();
        assert_eq!(applied.digest, sha256(&tar), "the uncompressed digest of layer {i}");
        assert_eq!(applied.size, tar.len() as i64);
        assert_eq!(applied.media_type, TAR);
        let name = format!("layer-{sn}-{i}");
        commit(ch, sn, &name, &key).await;
        parent = name;
    }
    parent
}

fn mount_dir(d: &Daemon) -> PathBuf {
    let p = d.setup.path().join("mnt");
    fs::create_dir_all(&p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_layers_apply_onto_overlayfs_and_native() {
    let d = daemon();
    let ch = d.channel().await;
    for sn in ["overlayfs", "native"] {
        let top = unpack(&ch, sn).await;
        let m = view(&ch, sn, &format!("check-{sn}"), &top).await;
        let dir = MountedDir::mount_all(&mount_dir(&d), &m).unwrap();
        check_image(dir.path());
    }
}

/// Everything in `dir`: names, kinds and contents.
fn snapshot_of(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let desc = if m.is_dir() {
                walk(base, &p, out);
                format!("dir {:o}", m.mode())
            } else if m.is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else {
                format!("file {:o} {:?}", m.mode(), fs::read(&p).unwrap())
            };
            out.insert(rel, desc);
        }
    }
    walk(dir, dir, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_layers_change_nothing_outside() {
    let d = daemon();
    let ch = d.channel().await;
    let sentinel = d.setup.path().join("sentinel");
    fs::create_dir_all(sentinel.join("sub")).unwrap();
    fs::write(sentinel.join("secret"), b"keep").unwrap();
    let abs = sentinel.display().to_string();
    let up = "../../../../../../../../../../..";
    let rel = format!("{up}{abs}");
    let reg = tar::EntryType::Regular;
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("traversal", Layer::new().raw(reg, &format!("{rel}/secret"), "", b"pwned").finish()),
        ("absolute", Layer::new().raw(reg, &format!("{abs}/secret"), "", b"pwned").finish()),
        ("symlink escape", Layer::new().symlink("evil", &abs).raw(reg, "evil/secret", "", b"pwned").finish()),
        ("relative symlink escape", Layer::new().symlink("evil", &rel).raw(reg, "evil/new", "", b"pwned").finish()),
        ("hard link escape", Layer::new().raw(tar::EntryType::Link, "h", &format!("{rel}/secret"), b"").finish()),
        ("whiteout escape", Layer::new().raw(reg, &format!("{rel}/.wh.secret"), "", b"").finish()),
        ("whiteout through symlink", Layer::new().symlink("evil", &abs).raw(reg, "evil/.wh.secret", "", b"").finish()),
        ("opaque through symlink", Layer::new().symlink("evil", &abs).raw(reg, "evil/.wh..wh..opq", "", b"").finish()),
    ];
    let before = snapshot_of(&sentinel);
    for sn in ["overlayfs", "native"] {
        for (i, (name, tar)) in hostile.iter().enumerate() {
            let m = prepare(&ch, sn, &format!("hostile-{sn}-{i}"), "").await;
            let result = apply(&ch, tar, TAR, m).await;
            assert_eq!(snapshot_of(&sentinel), before, "{name} on {sn} reached the sentinel: {result:?}");
        }

        let m = prepare(&ch, sn, &format!("corrupt-{sn}"), "").await;
        let err = apply(&ch, b"this is not gzip at all", GZIP, m).await.unwrap_err();
        assert_eq!(err.code(), Code::Unknown, "{err:?}");

        let tar = image().remove(0);
        let m = prepare(&ch, sn, &format!("truncated-{sn}"), "").await;
        let err = apply(&ch, &tar[..tar.len() / 2 + 100], TAR, m).await.unwrap_err();
        assert_eq!(err.code(), Code::Unknown, "{err:?}");
        assert!(err.message().contains("EOF") || err.message().contains("entire block"), "{err:?}");

        let m = prepare(&ch, sn, &format!("unknown-media-{sn}"), "").await;
        let err = apply(&ch, &tar, "application/x-unknown", m).await.unwrap_err();
        assert!(err.message().contains("application/x-unknown"), "{err:?}");
        assert!(err.message().contains("no processor for media-type"), "{err:?}");
        assert_eq!(snapshot_of(&sentinel), before);
    }

    let m = prepare(&ch, "native", "missing-blob", "").await;
    let diff = Descriptor { media_type: TAR.into(), digest: sha256(b"never written"), size: 13, ..Default::default() };
    let req = ApplyRequest { diff: Some(diff), mounts: m, ..Default::default() };
    let err = unary::<_, ApplyResponse>(&ch, &format!("{DIFF}/Apply"), Some(NS), req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_of_two_snapshots_applies_back() {
    let d = daemon();
    let ch = d.channel().await;
    for sn in ["native", "overlayfs"] {
        let top = unpack(&ch, sn).await;
        let work = format!("work-{sn}");
        let m = prepare(&ch, sn, &work, &top).await;
        {
            let dir = MountedDir::mount_all(&mount_dir(&d), &m).unwrap();
            let r = dir.path();
            fs::write(r.join("etc/hostname"), b"changed by the container").unwrap();
            fs::remove_file(r.join("var/cache/new")).unwrap();
            fs::remove_dir_all(r.join("usr")).unwrap();
            fs::create_dir_all(r.join("opt/app")).unwrap();
            fs::write(r.join("opt/app/run"), b"run").unwrap();
            std::os::unix::fs::symlink("app/run", r.join("opt/link")).unwrap();
        }
        let lower = view(&ch, sn, &format!("lower-{sn}"), &top).await;
        let upper = mounts(&ch, sn, &work).await;
        let req = DiffRequest {
            left: lower,
            right: upper,
            media_type: GZIP.into(),
            labels: [("origin".to_string(), "test".to_string())].into(),
            ..Default::default()
        };
        let r: DiffResponse = unary(&ch, &format!("{DIFF}/Diff"), Some(NS), req).await.unwrap();
        let desc = r.diff.unwrap();
        assert_eq!(desc.media_type, GZIP);
        let info: InfoResponse = unary(
            &ch,
            "/containerd.services.content.v1.Content/Info",
            Some(NS),
            InfoRequest { digest: desc.digest.clone() },
        )
        .await
        .unwrap();
        let info = info.info.unwrap();
        assert_eq!(info.size, desc.size);
        assert_eq!(info.labels.get("origin").map(String::as_str), Some("test"));
        let uncompressed = info.labels.get("containerd.io/uncompressed").cloned().expect("uncompressed label");

        // Apply the diff on a fresh snapshot of the same parent.
        let again = format!("again-{sn}");
        let m = prepare(&ch, sn, &again, &top).await;
        let req = ApplyRequest { diff: Some(desc), mounts: m, ..Default::default() };
        let applied: ApplyResponse = unary(&ch, &format!("{DIFF}/Apply"), Some(NS), req).await.unwrap();
        assert_eq!(applied.applied.unwrap().digest, uncompressed);

        let (a, b) = (mounts(&ch, sn, &work).await, mounts(&ch, sn, &again).await);
        let (a, b) =
            (MountedDir::mount_all(&mount_dir(&d), &a).unwrap(), MountedDir::mount_all(&mount_dir(&d), &b).unwrap());
        let (ta, tb) = (snapshot_of(a.path()), snapshot_of(b.path()));
        assert!(!ta.contains_key("usr") && ta.contains_key("opt/link"), "{ta:?}");
        assert_eq!(ta, tb, "the diff applied back gives the same tree on {sn}");
    }
}
