//! `ctr images import|export` (and their progress lines) through crated's
//! Transfer service, with our ctr only: import an archive, list it,
//! export it, remove it, re-import the export and get the same digests;
//! names from --base-name/--digests/--index-name; plain progress lines
//! when stdout is not a terminal; a corrupt archive fails naming the blob.

mod common;

use common::*;
use crated_tests::images::{oci_archive, sha256_digest, tar_files, with_corrupted_blob, ImageOptions, Layers};

fn ours(sock: &std::path::Path, args: &str) -> String {
    run(OURS, sock, &step(args))
}

fn assert_ok(out: &str) {
    assert!(out.ends_with("[rc=0]\n"), "{out}");
}

#[test]
fn import_export_round_trip() {
    let archive = oci_archive(&ImageOptions { layers: Layers::WithWhiteouts, ..Default::default() }).unwrap();
    let dir = tempfile::Builder::new().prefix("ctr-transfer-").tempdir().unwrap();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, &archive.tar).unwrap();
    let daemon = Daemon::start_with_plugins("transfer-rt", Server::Crated, &built_crated_plugins());
    let sock = daemon.socket();

    let out = ours(&sock, &format!("images import --base-name example.com/bb {}", input.display()));
    assert_ok(&out);
    // Plain progress lines (stdout is a pipe): the events, no escapes.
    assert!(!out.contains('\x1b'), "{out}");
    for event in ["saved", "Completed import"] {
        assert!(out.contains(event), "no {event:?} in {out}");
    }
    let ls = ours(&sock, "images ls -q");
    assert!(ls.contains("example.com/bb:latest\n"), "{ls}");
    let check = ours(&sock, "images check");
    assert!(check.contains(&archive.target) && check.contains("true"), "unpacked: {check}");

    let exported = dir.path().join("out.tar");
    assert_ok(&ours(&sock, &format!("images export {} example.com/bb:latest", exported.display())));
    let files = tar_files(&std::fs::read(&exported).unwrap()).unwrap();
    for digest in archive.layers.iter().chain(&archive.manifests).chain(&archive.configs) {
        let name = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        let data = files.get(&name).unwrap_or_else(|| panic!("{name} not exported: {:?}", files.keys()));
        assert_eq!(&sha256_digest(data), digest);
    }

    assert_ok(&ours(&sock, "images rm --sync example.com/bb:latest"));
    assert_ok(&ours(&sock, &format!("images import {}", exported.display())));
    let ls = ours(&sock, "images ls");
    assert!(ls.contains("example.com/bb:latest") && ls.contains(&archive.target), "{ls}");

    // Export to stdout gives the same archive.
    let to_stdout = std::process::Command::new(OURS)
        .arg("-a")
        .arg(&sock)
        .args(["images", "export", "-", "example.com/bb:latest"])
        .output()
        .unwrap();
    assert!(to_stdout.status.success());
    assert_eq!(tar_files(&to_stdout.stdout).unwrap(), files);
}

#[test]
fn import_names() {
    let unnamed = oci_archive(&ImageOptions { ref_name: None, ..Default::default() }).unwrap();
    let dir = tempfile::Builder::new().prefix("ctr-transfer-").tempdir().unwrap();
    let input = dir.path().join("unnamed.tar");
    std::fs::write(&input, &unnamed.tar).unwrap();
    let daemon = Daemon::start_with_plugins("transfer-names", Server::Crated, &built_crated_plugins());
    let sock = daemon.socket();
    assert_ok(&ours(
        &sock,
        &format!("images import --no-unpack --base-name example.com/u --digests --index-name idx {}", input.display()),
    ));
    let ls = ours(&sock, "images ls -q");
    assert!(ls.contains(&format!("example.com/u@{}\n", unnamed.manifests[0])), "{ls}");
    assert!(ls.contains("idx\n"), "{ls}");
    let check = ours(&sock, "images check");
    assert!(check.contains("false"), "not unpacked with --no-unpack: {check}");
}

#[test]
fn corrupt_archive_fails_naming_the_blob() {
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let corrupt = with_corrupted_blob(&archive, &archive.layers[0]).unwrap();
    let dir = tempfile::Builder::new().prefix("ctr-transfer-").tempdir().unwrap();
    let input = dir.path().join("corrupt.tar");
    std::fs::write(&input, corrupt).unwrap();
    let daemon = Daemon::start_with_plugins("transfer-corrupt", Server::Crated, &built_crated_plugins());
    let sock = daemon.socket();
    let out = ours(&sock, &format!("images import {}", input.display()));
    assert!(out.ends_with("[rc=1]\n"), "{out}");
    let stderr = out.split("--- stderr\n").nth(1).unwrap();
    assert!(stderr.starts_with("ctr: ") && stderr.contains(&archive.layers[0][7..]), "{out}");
    assert_eq!(ours(&sock, "images ls -q"), "$ ctr images ls -q\n--- stderr\n[rc=0]\n");
}
