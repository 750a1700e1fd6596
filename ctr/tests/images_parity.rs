//! `ctr images` parity: stock containerd 1.6 `ctr` imports, lists, checks,
//! unpacks (through import and mount, with overlayfs and native), mounts,
//! exports, re-imports, tags, labels and removes real images built from
//! busybox (see `crated_tests::images`), and the same sequence's stdout,
//! stderr and exit codes are compared between two daemons after masking
//! what legitimately differs: times, ages, the temporary archive and mount
//! directories, the date in `import-<date>` names, and the order of labels
//! (Go prints maps in random order).
//!
//! Stock ctr 1.6 does all of this client-side through Content, Images,
//! Leases, Diff and Snapshots, so crated answers it unchanged once it
//! serves those services. Our ctr has no `images` commands yet, so the
//! first test runs stock ctr against two fresh containerds, which checks
//! the masking leaves a deterministic transcript; the second compares
//! crated with containerd.
//!
//! The 1.6 `ctr` has no `images unpack`: `images import` unpacks (unless
//! `--no-unpack`) into `--snapshotter`, and `images mount` unpacks what it
//! mounts if needed.
//!
//! Every mount is undone by a guard (`ctr images unmount`, then a lazy
//! `umount`) even when a step or an assertion fails.

mod common;

use std::path::Path;

use common::*;
use crated_tests::images::{
    docker_archive, oci_archive, sha256_digest, tar_files, with_corrupted_blob, Archive, Compression, ImageOptions,
    Layers, Platforms,
};

/// The archives a transcript imports, written to a temporary directory.
struct Archives {
    dir: tempfile::TempDir,
    /// One gzip layer, named `latest`.
    gz: Archive,
    /// Gzip, with the whiteout layer, named `latest`.
    whiteouts: Archive,
    /// Uncompressed, named with a full reference.
    plain: Archive,
    /// Unnamed.
    unnamed: Archive,
    /// linux/amd64 and linux/arm64 behind a nested index, named `latest`.
    multi: Archive,
    /// `docker save` style, with the whiteout layer.
    docker: Archive,
}

impl Archives {
    fn build() -> Archives {
        let dir = tempfile::Builder::new().prefix("ctr-images-archives-").tempdir().unwrap();
        let gz = oci_archive(&ImageOptions::default()).unwrap();
        let whiteouts = oci_archive(&ImageOptions { layers: Layers::WithWhiteouts, ..Default::default() }).unwrap();
        let plain = oci_archive(&ImageOptions {
            ref_name: Some("docker.io/library/plain:1".into()),
            compression: Compression::Uncompressed,
            ..Default::default()
        })
        .unwrap();
        let unnamed = oci_archive(&ImageOptions { ref_name: None, ..Default::default() }).unwrap();
        let multi = oci_archive(&ImageOptions { platforms: Platforms::Amd64AndArm64, ..Default::default() }).unwrap();
        let docker = docker_archive(&ImageOptions {
            ref_name: Some("example.com/docker:1.0".into()),
            layers: Layers::WithWhiteouts,
            ..Default::default()
        })
        .unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        write("gz.tar", &gz.tar);
        write("whiteouts.tar", &whiteouts.tar);
        write("plain.tar", &plain.tar);
        write("unnamed.tar", &unnamed.tar);
        write("multi.tar", &multi.tar);
        write("docker.tar", &docker.tar);
        write("truncated.tar", &gz.tar[..gz.tar.len() / 3]);
        write("garbage.tar", b"not a tar archive\n");
        write("corrupt-blob.tar", &with_corrupted_blob(&gz, &gz.layers[0]).unwrap());
        Archives { dir, gz, whiteouts, plain, unnamed, multi, docker }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// One step of the sequence. `{A}` in arguments is the archives directory,
/// `{M}` the mount target.
enum Op {
    /// A stock ctr command.
    Ctr(&'static str),
    /// Record a file under the mount target.
    Cat(&'static str),
    /// Record the sorted entries of a directory under the mount target,
    /// with their kinds (and symlink targets).
    Ls(&'static str),
    /// Record the digest and the files of an archive `ctr images export`
    /// wrote into the archives directory.
    Exported(&'static str),
    /// Likewise for an archive of several images, whose `manifest.json`
    /// ctr writes in Go's random map order: its entries are recorded
    /// sorted instead of its digest and the archive's.
    ExportedSeveral(&'static str),
}

fn steps() -> Vec<Op> {
    use Op::*;
    vec![
        Ctr("images ls"),
        // Broken archives, on an empty store.
        Ctr("images import {A}/truncated.tar"),
        Ctr("images import {A}/garbage.tar"),
        Ctr("images import {A}/corrupt-blob.tar"),
        Ctr("images import {A}/nope.tar"),
        Ctr("images ls"),
        // OCI archives: named by their ref.name annotation under the
        // default `import-<date>` base name, by --base-name, by a full
        // reference; unnamed but kept by --digests and --index-name.
        Ctr("images import {A}/gz.tar"),
        Ctr("images ls -q"),
        Ctr("images import --base-name example.com/bb {A}/whiteouts.tar"),
        Ctr("images import {A}/plain.tar"),
        Ctr("images import {A}/unnamed.tar"),
        Ctr("images import --digests --index-name idx {A}/unnamed.tar"),
        // A docker archive, not unpacked; with a --base-name that none of
        // its names has.
        Ctr("images import --no-unpack {A}/docker.tar"),
        Ctr("images import --base-name other.com/x {A}/docker.tar"),
        // Two platforms: the default one, all of them, another one.
        Ctr("images import --base-name multi/default {A}/multi.tar"),
        Ctr("images import --base-name multi/all --all-platforms {A}/multi.tar"),
        Ctr("images import --base-name multi/arm --platform linux/arm64 {A}/multi.tar"),
        // Unpacked into native.
        Ctr("images import --base-name example.com/native --snapshotter native {A}/gz.tar"),
        Ctr("images ls"),
        Ctr("images ls -q"),
        Ctr("images check"),
        Ctr("images check -q"),
        // Imports leave each archive's index.json blob unreferenced (unless
        // --index-name keeps it): collect it now, as the collector may or
        // may not have run on its own yet. Removing an image with --sync
        // runs it.
        Ctr("images tag example.com/bb:latest gc/now:1"),
        Ctr("images rm --sync gc/now:1"),
        Ctr("content ls"),
        Ctr("snapshots ls"),
        Ctr("snapshots --snapshotter native ls"),
        // Mount the two-layer image (overlayfs): layer 2's whiteout hides
        // etc/motd, its opaque directory hides opt/data/{a,b}.
        Ctr("images mount example.com/bb:latest {M}"),
        Ls(""),
        Ls("bin"),
        Ls("etc"),
        Ls("opt/data"),
        Cat("etc/hostname"),
        Cat("opt/data/c"),
        Ctr("snapshots ls"),
        Ctr("leases ls"),
        Ctr("images unmount {M}"),
        Ctr("images unmount --rm {M}"),
        // Removing the mount's lease schedules the collector: run it.
        Ctr("images tag example.com/bb:latest gc/now:1"),
        Ctr("images rm --sync gc/now:1"),
        Ctr("snapshots ls"),
        Ctr("leases ls"),
        // A mount naming native, of an image imported without unpacking:
        // what 1.6 does with the flag (the listings show which snapshotter
        // ends up holding what) is recorded as it is.
        Ctr("images mount --snapshotter native example.com/docker:1.0 {M}"),
        Ls("etc"),
        Ls("opt/data"),
        Cat("etc/hostname"),
        Ctr("snapshots --snapshotter native ls"),
        Ctr("images unmount --rm --snapshotter native {M}"),
        // Collect what only the mount's lease held.
        Ctr("images tag example.com/bb:latest gc/now:1"),
        Ctr("images rm --sync gc/now:1"),
        Ctr("snapshots --snapshotter native ls"),
        Ctr("images check"),
        Ctr("images mount nope {M}"),
        Ctr("images mount example.com/bb:latest"),
        // Export, remove, re-import: the same digests come back.
        Ctr("images export {A}/bb.tar example.com/bb:latest"),
        Exported("bb.tar"),
        Ctr("images export --all-platforms {A}/multi-all.tar multi/all:latest"),
        Exported("multi-all.tar"),
        Ctr("images export {A}/two.tar example.com/docker:1.0 docker.io/library/plain:1"),
        ExportedSeveral("two.tar"),
        Ctr("images rm --sync example.com/bb:latest"),
        Ctr("images import {A}/bb.tar"),
        Ctr("images ls"),
        Ctr("images export {A}/missing.tar nope"),
        Ctr("images export {A}/missing.tar"),
        // Tags and labels.
        Ctr("images tag example.com/bb:latest example.com/bb:v2"),
        Ctr("images tag example.com/bb:latest example.com/bb:v2"),
        Ctr("images tag --force example.com/bb:latest example.com/bb:v2"),
        Ctr("images tag nope example.com/bb:v3"),
        Ctr("images label example.com/bb:v2 foo=bar"),
        Ctr("images label example.com/bb:v2 x=y"),
        Ctr("images label example.com/bb:v2 foo="),
        Ctr("images label nope a=b"),
        Ctr("images ls"),
        // Removal, with the garbage collector run before each returns.
        Ctr("images rm --sync example.com/bb:v2 nope"),
        Ctr("images rm --sync nope"),
        Ctr("images rm --sync multi/arm:latest multi/all:latest"),
        Ctr("images ls -q"),
        Ctr("content ls"),
        Ctr("snapshots ls"),
        // A corrupted blob that the store already holds is not read again.
        Ctr("images import {A}/corrupt-blob.tar"),
        Ctr("images ls -q"),
    ]
}

/// An exported archive: its digest (ctr writes it deterministically) and
/// the digest of each file in it.
fn describe_export(path: &Path, several_images: bool) -> String {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return format!("error: {}\n", e.kind()),
    };
    let mut out = String::new();
    if !several_images {
        out.push_str(&format!("archive {}\n", sha256_digest(&bytes)));
    }
    match tar_files(&bytes) {
        Ok(files) => {
            for (name, data) in files {
                if several_images && name == "manifest.json" {
                    let mut entries: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&data)
                        .map(|v| v.iter().map(|e| e.to_string()).collect())
                        .unwrap_or_else(|e| vec![format!("not JSON: {e}")]);
                    entries.sort();
                    out.push_str(&format!("{name} {}\n", entries.join("\n")));
                } else {
                    out.push_str(&format!("{name} {} {}\n", data.len(), sha256_digest(&data)));
                }
            }
        }
        Err(e) => out.push_str(&format!("not a tar: {e}\n")),
    }
    out
}

/// `import-YYYY-MM-DD` (ctr's default base name, today's date) ->
/// `import-DATE`.
fn mask_import_date(s: &str) -> String {
    const MARK: &str = "import-";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(MARK) {
        let after = &rest[i + MARK.len()..];
        out.push_str(&rest[..i + MARK.len()]);
        let b = after.as_bytes();
        let is_date =
            b.len() >= 10 && (0..10).all(|k| if k == 4 || k == 7 { b[k] == b'-' } else { b[k].is_ascii_digit() });
        if is_date {
            out.push_str("DATE");
            rest = &after[10..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `extract-<nanos>-<random>` (the key of the snapshot an unpack applies a
/// layer into) -> `extract-KEY`.
fn mask_extract_keys(s: &str) -> String {
    const MARK: &str = "extract-";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(MARK) {
        let after = &rest[i + MARK.len()..];
        out.push_str(&rest[..i + MARK.len()]);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        // Go's unique part: 4 characters of URL-safe base64.
        let random = after[digits..].strip_prefix('-').filter(|r| {
            r.len() >= 4 && r.as_bytes()[..4].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        });
        if digits > 0 && random.is_some() {
            out.push_str("KEY");
            rest = &after[digits + 5..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Run the sequence with stock ctr on a fresh daemon; the masked outputs.
fn transcript(tag: &str, server: Server) -> Vec<String> {
    let archives = Archives::build();
    let daemon = match server {
        Server::Containerd => Daemon::start(tag, server),
        Server::Crated => Daemon::start_with_plugins(tag, server, &built_crated_plugins()),
    };
    let sock = daemon.socket();
    // The same length on every run (a fixed prefix and a fixed-length
    // random part), so table columns do not move when it is masked.
    let mount = tempfile::Builder::new().prefix("ctr-images-mnt-").tempdir().unwrap();
    let guard = MountGuard { sock: sock.clone(), target: mount.path().to_path_buf() };
    let a = archives.path().display().to_string();
    let m = mount.path().display().to_string();
    let mut outputs = Vec::new();
    for op in steps() {
        let output = match op {
            Op::Ctr(args) => run_settled(STOCK_CTR, &sock, &step(&args.replace("{A}", &a).replace("{M}", &m))),
            Op::Cat(rel) => format!(
                "# cat {{M}}/{rel}\n{}",
                std::fs::read_to_string(mount.path().join(rel)).unwrap_or_else(|e| format!("error: {}\n", e.kind()))
            ),
            Op::Ls(rel) => format!("# ls {{M}}/{rel}\n{}", list_dir(&mount.path().join(rel))),
            Op::Exported(name) => {
                format!("# exported {{A}}/{name}\n{}", describe_export(&archives.path().join(name), false))
            }
            Op::ExportedSeveral(name) => {
                format!("# exported {{A}}/{name}\n{}", describe_export(&archives.path().join(name), true))
            }
        };
        outputs.push(output);
    }
    drop(guard);
    let dir = daemon.dir().display().to_string();
    drop(daemon);
    outputs
        .iter()
        .map(|o| {
            let o = o.replace(&a, "{A}").replace(&m, "{M}").replace(&dir, "DIR");
            mask(&sort_label_lists(&mask_extract_keys(&mask_import_date(&o))))
        })
        .collect()
}

/// The sequence did what it says: checked on a containerd transcript, so a
/// broken sequence (e.g. every import failing the same way on both sides)
/// cannot pass as parity.
fn assert_meaningful(transcript: &[String]) {
    let archives = Archives::build();
    let all = transcript.concat();
    let has = |needle: &str| assert!(all.contains(needle), "no {needle:?} in:\n{all}");
    has(&format!("unpacking import-DATE:latest ({})...done", archives.gz.target));
    has(&format!("unpacking example.com/bb:latest ({})...done", archives.whiteouts.target));
    has(&format!("unpacking docker.io/library/plain:1 ({})...done", archives.plain.target));
    has(&format!("import-DATE@{}", archives.unnamed.target));
    has(&format!("unpacking multi/all:latest ({})...done", archives.multi.target));
    has("example.com/docker:1.0");
    // The mounted image shows layer 2 over layer 1.
    has("# cat {M}/etc/hostname\nlayer2\n");
    has("# ls {M}/etc\nhostname (7 bytes)\n# ");
    has("# ls {M}/opt/data\nc (15 bytes)\n# ");
    has("sh -> busybox\n");
    has(&format!("busybox ({} bytes)", std::fs::metadata(crated_tests::images::BUSYBOX).unwrap().len()));
    // The export names the same manifest, and re-importing it brings back
    // the digest the archive was built with.
    let exported = transcript.iter().find(|s| s.starts_with("# exported {A}/bb.tar")).expect("the export step");
    assert!(exported.contains(&archives.whiteouts.manifests[0][7..]), "{exported}");
    let reimport = format!(
        "$ ctr images import {{A}}/bb.tar\nunpacking example.com/bb:latest ({})...done",
        archives.whiteouts.target
    );
    has(&reimport);
    // Layers, configs and the docker image's layers are in the store.
    for digest in archives.whiteouts.layers.iter().chain(&archives.multi.configs).chain(&archives.docker.diff_ids) {
        has(digest);
    }
    has("ctr: image \"nope\": not found");
    // The broken archives fail (the first time: on an empty store).
    for name in ["truncated", "garbage", "corrupt-blob", "nope"] {
        let step = transcript
            .iter()
            .find(|s| s.starts_with(&format!("$ ctr images import {{A}}/{name}.tar\n")))
            .expect("the import step");
        assert!(step.ends_with("[rc=1]\n"), "{step}");
    }
}

/// Stock ctr against two fresh containerds gives the same transcript once
/// masked: the masking hides only what legitimately differs between runs.
#[test]
fn images_transcript_is_deterministic() {
    let first = std::thread::spawn(|| transcript("images-a", Server::Containerd));
    let second = transcript("images-b", Server::Containerd);
    let first = first.join().expect("first run panicked");
    assert_same("containerd run 1", &first, "containerd run 2", &second);
    assert_meaningful(&first);
}

/// Stock ctr sees the same answers from crated as from containerd: import
/// (OCI and docker archives), unpack into overlayfs and native through the
/// Diff and Snapshots services, check, mount, export and re-import.
/// `images rm --sync` runs the garbage collector on both, so the listings
/// after it match too.
#[test]
fn images_parity_against_crated() {
    let containerd = std::thread::spawn(|| transcript("images-containerd", Server::Containerd));
    let crated = transcript("images-crated", Server::Crated);
    let containerd = containerd.join().expect("containerd run panicked");
    assert_meaningful(&containerd);
    assert_meaningful(&crated);
    assert_eq!(containerd.len(), crated.len());
    let exact = (containerd, crated);
    assert_same("stock ctr against containerd", &exact.0, "stock ctr against crated", &exact.1);
}

#[test]
fn masking_labels_and_import_dates() {
    assert_eq!(sort_label_lists("x\tb=2,a=1 c\n-\tk=v\n"), "x\ta=1,b=2 c\n-\tk=v\n");
    assert_eq!(
        mask_import_date("unpacking import-2026-12-01:latest and import-2026-12-01@sha256:ab import-x"),
        "unpacking import-DATE:latest and import-DATE@sha256:ab import-x"
    );
    assert_eq!(
        mask_extract_keys("key=\"extract-861863579-9lDm sha256:3a\" extract-12-a-_b extract-x"),
        "key=\"extract-KEY sha256:3a\" extract-KEY extract-x"
    );
}
