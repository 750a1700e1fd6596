//! The applier on real directories: a two-layer tree in both whiteout forms,
//! hostile archives that must not touch a sentinel directory beside the
//! root, and broken archives. (The fuzz run over mutated archives is
//! `apply_fuzz.rs`.)
//! Runs as root (ownership, device nodes, trusted xattrs).

mod sandbox;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crated_plugin_diff::apply::{Applier, ApplyError, Whiteouts};

/// One entry of a test layer.
enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Fifo(&'a str),
    /// A regular file with PAX xattrs.
    XattrFile(&'a str, &'a str, &'a [u8]),
}

/// A tar of `entries`, names written raw (no normalisation by the builder).
fn layer(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |kind: tar::EntryType, name: &str, link: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    };
    for e in entries {
        match e {
            E::Dir(n, m) => push(tar::EntryType::Directory, n, "", *m, b""),
            E::File(n, d, m) => push(tar::EntryType::Regular, n, "", *m, d),
            E::Symlink(n, t) => push(tar::EntryType::Symlink, n, t, 0o777, b""),
            E::Link(n, t) => push(tar::EntryType::Link, n, t, 0o644, b""),
            E::Fifo(n) => push(tar::EntryType::Fifo, n, "", 0o600, b""),
            E::XattrFile(n, k, v) => {
                push(
                    tar::EntryType::XHeader,
                    "PaxHeaders/x",
                    "",
                    0o644,
                    &sandbox::pax_record(&format!("SCHILY.xattr.{k}"), v),
                );
                push(tar::EntryType::Regular, n, "", 0o644, b"x");
            }
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A scratch area: `root/` to apply onto, `outside/` holding a sentinel.
struct Area {
    tmp: tempfile::TempDir,
}

impl Area {
    fn new() -> Area {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("root")).unwrap();
        fs::create_dir_all(tmp.path().join("outside/sub")).unwrap();
        fs::write(tmp.path().join("outside/secret"), b"keep").unwrap();
        fs::write(tmp.path().join("outside/sub/x"), b"keep too").unwrap();
        Area { tmp }
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }
    fn apply(&self, tar: &[u8], wh: Whiteouts) -> Result<(), ApplyError> {
        Applier::new(&self.root(), wh, &[])?.apply(tar)
    }
    /// Everything outside `root/`: names, types, modes, contents.
    fn outside(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(self.tmp.path(), self.tmp.path(), &mut out, Some(&self.root()));
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>, skip: Option<&Path>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if Some(p.as_path()) == skip {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        let desc = if m.is_dir() {
            walk(base, &p, out, skip);
            format!("dir {:o} {}:{}", m.mode(), m.uid(), m.gid())
        } else if m.file_type().is_symlink() {
            format!("link {}", fs::read_link(&p).unwrap().display())
        } else if m.is_file() {
            format!("file {:o} {:?}", m.mode(), fs::read(&p).unwrap())
        } else {
            format!("other {:o} {}", m.mode(), m.rdev())
        };
        out.insert(rel, desc);
    }
}

#[test]
fn two_layers_with_every_entry_kind_and_oci_whiteouts() {
    let a = Area::new();
    let base = layer(&[
        E::Dir("etc/", 0o755),
        E::File("etc/passwd", b"root:x:0:0", 0o644),
        E::File("etc/shadow", b"secret", 0o4750),
        E::Dir("opq/", 0o700),
        E::File("opq/old", b"old", 0o644),
        E::Dir("gone/", 0o755),
        E::File("gone/f", b"f", 0o644),
        E::Symlink("bin", "usr/bin"),
        E::Dir("usr/bin/", 0o755),
        E::File("usr/bin/sh", b"#!", 0o755),
        E::Link("usr/bin/bash", "usr/bin/sh"),
        E::Fifo("run.fifo"),
        E::XattrFile("attr", "user.note", b"hello"),
    ]);
    a.apply(&base, Whiteouts::Remove).unwrap();
    let top = layer(&[
        E::File("opq/.wh..wh..opq", b"", 0o644),
        E::File("opq/new", b"new", 0o600),
        E::File(".wh.gone", b"", 0o644),
        E::File("etc/.wh.shadow", b"", 0o644),
        E::File("deep/er/file", b"implicit parents", 0o644),
    ]);
    a.apply(&top, Whiteouts::Remove).unwrap();
    let r = a.root();
    assert_eq!(fs::read(r.join("etc/passwd")).unwrap(), b"root:x:0:0");
    assert!(!r.join("etc/shadow").exists(), "whiteout of a file");
    assert!(!r.join("gone").exists(), "whiteout of a directory");
    assert!(!r.join("opq/old").exists(), "opaque directory keeps only this layer's entries");
    assert_eq!(fs::read(r.join("opq/new")).unwrap(), b"new");
    assert_eq!(fs::read_link(r.join("bin")).unwrap(), Path::new("usr/bin"));
    let sh = fs::metadata(r.join("usr/bin/sh")).unwrap();
    assert_eq!(sh.ino(), fs::metadata(r.join("usr/bin/bash")).unwrap().ino(), "hard link");
    assert_eq!((sh.uid(), sh.gid(), sh.mode() & 0o7777), (1000, 1000, 0o755));
    assert!(fs::symlink_metadata(r.join("run.fifo")).unwrap().file_type().is_fifo());
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(r.join("attr").as_path(), "user.note", &mut buf);
    if let Ok(n) = n {
        assert_eq!(&buf[..n], b"hello");
    }
    assert_eq!(fs::read(r.join("deep/er/file")).unwrap(), b"implicit parents");
    let bin = fs::metadata(r.join("usr/bin")).unwrap();
    assert_eq!(bin.mtime(), 1_600_000_000, "directory mtimes are set after their children");
    assert_eq!(bin.permissions().mode() & 0o777, 0o755);
}

#[test]
fn overlay_form_writes_overlay_whiteouts_and_copies_parent_attrs_from_lowers() {
    let a = Area::new();
    let lower = a.tmp.path().join("lower");
    fs::create_dir_all(lower.join("var/lib")).unwrap();
    fs::set_permissions(lower.join("var"), fs::Permissions::from_mode(0o710)).unwrap();
    let top = layer(&[
        E::File("var/lib/.wh.old", b"", 0o644),
        E::File("opq/.wh..wh..opq", b"", 0o644),
        E::File("var/lib/new", b"n", 0o644),
    ]);
    Applier::new(&a.root(), Whiteouts::Overlay, &[lower.as_path()]).unwrap().apply(top.as_slice()).unwrap();
    let r = a.root();
    let wh = fs::symlink_metadata(r.join("var/lib/old")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    let mut buf = [0u8; 4];
    let n = rustix::fs::getxattr(r.join("opq").as_path(), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert_eq!(fs::metadata(r.join("var")).unwrap().mode() & 0o7777, 0o710, "parent attrs from the lower layer");
}

/// Archives that try to reach outside the root. Each may fail or succeed,
/// but nothing beside the root may change.
fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("traversal", layer(&[E::File("../outside/secret", b"pwned", 0o644), E::File("../x", b"pwned", 0o644)])),
        ("absolute", layer(&[E::File("/outside/secret", b"pwned", 0o644)])),
        (
            "symlink escape, then write through it",
            layer(&[E::Symlink("evil", "../outside"), E::File("evil/secret", b"pwned", 0o644)]),
        ),
        ("absolute symlink escape", layer(&[E::Symlink("evil", "/"), E::File("evil/outside/secret", b"pwned", 0o644)])),
        ("dir through symlink", layer(&[E::Symlink("evil", "../outside"), E::Dir("evil/sub/", 0o777)])),
        ("hard link escape", layer(&[E::Link("h", "../outside/secret")])),
        (
            "hard link through symlink",
            layer(&[E::Symlink("evil", "../outside"), E::Link("h", "evil/secret"), E::File("h", b"pwned", 0o644)]),
        ),
        (
            "whiteout escape",
            layer(&[E::File("../.wh.outside", b"", 0o644), E::File("../outside/.wh.secret", b"", 0o644)]),
        ),
        (
            "whiteout through symlink",
            layer(&[E::Symlink("evil", "../outside"), E::File("evil/.wh.secret", b"", 0o644)]),
        ),
        (
            "opaque through symlink",
            layer(&[E::Symlink("evil", "../outside"), E::File("evil/.wh..wh..opq", b"", 0o644)]),
        ),
        ("whiteout of dot-dot", layer(&[E::Dir("d/", 0o755), E::File("d/.wh..", b"", 0o644)])),
        ("replace symlink dir", layer(&[E::Symlink("evil", "../outside"), E::File("evil", b"x", 0o644)])),
    ]
}

#[test]
fn hostile_archives_change_nothing_outside_the_root() {
    for wh in [Whiteouts::Remove, Whiteouts::Overlay] {
        for (name, tar) in hostile() {
            let a = Area::new();
            let before = a.outside();
            let result = a.apply(&tar, wh);
            assert_eq!(a.outside(), before, "{name} ({wh:?}) changed something outside: {result:?}");
        }
    }
}

#[test]
fn traversal_lands_inside_the_root_as_containerd_does() {
    let a = Area::new();
    a.apply(&layer(&[E::File("../x", b"1", 0o644), E::File("/y", b"2", 0o644)]), Whiteouts::Remove).unwrap();
    assert_eq!(fs::read(a.root().join("x")).unwrap(), b"1");
    assert_eq!(fs::read(a.root().join("y")).unwrap(), b"2");
}

#[test]
fn truncated_and_corrupt_archives_are_errors() {
    let full = layer(&[E::File("big", &[7u8; 3000], 0o644), E::File("next", b"n", 0o644)]);
    // (A cut exactly between two entries reads as the end, as in Go's tar.)
    for cut in [100, 512, 1500, 3585] {
        let a = Area::new();
        let err = a.apply(&full[..cut], Whiteouts::Remove).unwrap_err();
        assert!(matches!(err, ApplyError::Archive(_)), "cut at {cut}: {err}");
    }
    let mut bad = full.clone();
    bad[0] ^= 0xff; // header checksum no longer matches
    assert!(Area::new().apply(&bad, Whiteouts::Remove).is_err());
}
