//! `ctr install` against a real crated (content and metadata plugins): an
//! image built from busybox-static plus a layer of `bin/` and `lib/` files,
//! imported with the stock ctr, installed into temporary directories by our
//! ctr (files, modes, symlinks, `--replace`, `--libs`, hostile names) and
//! compared with what the stock containerd 1.6 ctr installs from the same
//! daemon.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use crated_tests::images::{oci_archive_of, rootfs_layer, Compression, ImageOptions};

const HELLO: &[u8] = b"#!/bin/sh\necho hello from an installed tool\n";

/// A layer with a tool in `bin/`, a library in `lib/` and what the install
/// must leave alone.
fn tools_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1_577_836_800);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, name, l).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    };
    use tar::EntryType::{Directory, Regular, Symlink};
    add("bin/", Directory, 0o755, b"", None);
    add("bin/hello", Regular, 0o750, HELLO, None);
    add("lib/", Directory, 0o755, b"", None);
    add("lib/libdemo.so.1", Regular, 0o644, b"\x7fELF not really", None);
    add("lib/libdemo.so", Symlink, 0o777, b"", Some("libdemo.so.1"));
    add("lib/sub/", Directory, 0o755, b"", None);
    add("lib/sub/nested.so", Regular, 0o644, b"nested", None);
    add("etc/", Directory, 0o755, b"", None);
    add("etc/tool.conf", Regular, 0o644, b"not installed", None);
    b.into_inner().unwrap()
}

fn ctr_at(bin: &str, sock: &Path, args: &[&str]) -> Output {
    Command::new(bin).arg("-a").arg(sock).args(args).env_remove("CONTAINERD_NAMESPACE").output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every entry under `root` by relative path: kind, permission bits and
/// content or link target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                let data = std::fs::read(&p).unwrap();
                format!("file {:o} {} bytes {:x}", m.permissions().mode() & 0o7777, data.len(), crc(&data))
            };
            out.insert(rel, v);
        }
    }
    out
}

/// A cheap content fingerprint (FNV-1a).
fn crc(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

#[test]
fn install_writes_bin_and_lib_like_stock_ctr() {
    let d = Daemon::start("install", Server::Crated);
    let sock = d.socket();
    let work = tempfile::tempdir().unwrap();
    let image = oci_archive_of(&ImageOptions::default(), vec![rootfs_layer().unwrap(), tools_layer()]).unwrap();
    let tar_path = work.path().join("tools.tar");
    std::fs::write(&tar_path, &image.tar).unwrap();
    let out = ctr_at(
        STOCK_CTR,
        &sock,
        &["images", "import", "--no-unpack", "--base-name", "example.com/tools", tar_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let reference = "example.com/tools:latest";

    let ours = work.path().join("ours");
    let ours_s = ours.to_str().unwrap();
    let out = ctr_at(OURS, &sock, &["install", "--path", ours_s, reference]);
    assert!(out.status.success(), "{}", text(&out));
    let busybox = std::fs::read(crated_tests::images::BUSYBOX).unwrap();
    assert_eq!(std::fs::read(ours.join("bin/busybox")).unwrap(), busybox);
    assert_eq!(std::fs::metadata(ours.join("bin/busybox")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(ours.join("bin/hello")).unwrap(), HELLO);
    assert_eq!(std::fs::metadata(ours.join("bin/hello")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(std::fs::read_link(ours.join("bin/sh")).unwrap(), Path::new("busybox"));
    let hello = Command::new(ours.join("bin/hello")).output().unwrap();
    assert_eq!(hello.stdout, b"hello from an installed tool\n");
    assert!(!ours.join("lib").exists(), "lib/ installed without --libs");
    assert!(!ours.join("etc").exists());

    // Again without --replace: refused, as containerd refuses it.
    let out = ctr_at(OURS, &sock, &["install", "--path", ours_s, reference]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), format!("ctr: cannot replace bin/busybox in {ours_s}\n"));

    // With --replace and --libs: lib/'s direct children too.
    std::fs::write(ours.join("bin/hello"), b"stale").unwrap();
    let out = ctr_at(OURS, &sock, &["install", "-r", "-l", "--path", ours_s, reference]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(ours.join("bin/hello")).unwrap(), HELLO);
    assert_eq!(std::fs::read(ours.join("lib/libdemo.so.1")).unwrap(), b"\x7fELF not really");
    assert_eq!(std::fs::read_link(ours.join("lib/libdemo.so")).unwrap(), Path::new("libdemo.so.1"));
    assert!(!ours.join("lib/sub/nested.so").exists(), "only direct children of lib/ are installed");

    // The stock ctr installs the same tree from the same daemon.
    let stock = work.path().join("stock");
    // (containerd's archive.Apply wants the root to exist; ours creates it.)
    std::fs::create_dir(&stock).unwrap();
    let out = ctr_at(STOCK_CTR, &sock, &["install", "--libs", "--path", stock.to_str().unwrap(), reference]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&ours), tree(&stock));

    // Unknown image: the images service's not found.
    let out = ctr_at(OURS, &sock, &["install", "--path", ours_s, "example.com/nope:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", text(&out));
}

#[test]
fn install_refuses_hostile_names() {
    let d = Daemon::start("install-hostile", Server::Crated);
    let sock = d.socket();
    let work = tempfile::tempdir().unwrap();
    let evil = crated_tests::images::raw_tar(&[
        ("bin/ok", tar::EntryType::Regular, "", b"ok"),
        ("bin/../../escaped", tar::EntryType::Regular, "", b"x"),
    ]);
    let options = ImageOptions { compression: Compression::Uncompressed, ..Default::default() };
    let image = oci_archive_of(&options, vec![evil]).unwrap();
    let tar_path = work.path().join("evil.tar");
    std::fs::write(&tar_path, &image.tar).unwrap();
    let out = ctr_at(
        STOCK_CTR,
        &sock,
        &["images", "import", "--no-unpack", "--base-name", "example.com/evil", tar_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let root = work.path().join("a/b");
    let out = ctr_at(OURS, &sock, &["install", "--path", root.to_str().unwrap(), "example.com/evil:latest"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ctr: refusing layer entry \"bin/../../escaped\": absolute or with a `..` component\n"
    );
    assert!(!work.path().join("escaped").exists() && !work.path().join("a/escaped").exists());
}
