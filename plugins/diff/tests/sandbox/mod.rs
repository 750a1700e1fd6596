//! The sandbox both layer-applier fuzzers run in (`tests/apply_fuzz.rs` in
//! the normal test suite, and the cargo-fuzz target `fuzz/fuzz_targets/
//! apply_layer.rs`, which includes this file by `#[path]`), the check they
//! share, and the seed corpus of valid and hostile layers.
//!
//! A sandbox is a temporary directory holding the root to apply onto and,
//! beside it, sentinels the layers try to reach: `sentinel` (a sibling file
//! of the root), `outside/secret`, `outside/sub/x` and the symlink
//! `outside/link`. Every sentinel gets an access time older than its
//! modification time, so that a read (or a directory listing) of it through
//! an escape moves its atime under `relatime`; the snapshot itself reads with
//! `O_NOATIME`. The inode change time catches every metadata change (chmod,
//! chown, a new hard link, an xattr), which userspace cannot fake back.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crated_plugin_diff::apply::{Applier, ApplyError, Whiteouts};
use rustix::fs::{Dir, Mode, OFlags, Timespec, Timestamps};

/// Access and modification times of every sentinel: atime before mtime.
const SENTINEL_ATIME: i64 = 1_000_000_000;
const SENTINEL_MTIME: i64 = 1_500_000_000;

/// A temporary directory with the root to apply onto and sentinels beside it.
pub struct Sandbox {
    tmp: tempfile::TempDir,
    before: BTreeMap<String, String>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        // tmpfs when there is one: thousands of mkdirs on a busy disk's
        // journal are what a fuzz run would otherwise wait on.
        let shm = Path::new("/dev/shm");
        let tmp = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }
            .expect("create a temporary directory");
        let t = tmp.path();
        fs::create_dir(t.join("root")).unwrap();
        fs::write(t.join("sentinel"), b"sentinel: keep").unwrap();
        fs::create_dir_all(t.join("outside/sub")).unwrap();
        fs::write(t.join("outside/secret"), b"root:x:0:0:secret").unwrap();
        fs::write(t.join("outside/sub/x"), b"keep too").unwrap();
        std::os::unix::fs::symlink("secret", t.join("outside/link")).unwrap();
        // Deepest first, the top last: setting times does not change the
        // parent's, but creating entries above did.
        let times = Timestamps {
            last_access: Timespec { tv_sec: SENTINEL_ATIME, tv_nsec: 0 },
            last_modification: Timespec { tv_sec: SENTINEL_MTIME, tv_nsec: 0 },
        };
        for p in ["outside/sub/x", "outside/sub", "outside/secret", "outside", "sentinel", "."] {
            rustix::fs::utimensat(rustix::fs::CWD, t.join(p).as_path(), &times, rustix::fs::AtFlags::empty()).unwrap();
        }
        let mut sandbox = Sandbox { tmp, before: BTreeMap::new() };
        sandbox.before = sandbox.outside();
        sandbox
    }

    /// The directory layers are applied onto.
    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    /// The sandbox's absolute path, for layers that name it directly.
    pub fn host_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Applies `tar` onto the root.
    pub fn apply(&self, tar: &[u8], whiteouts: Whiteouts) -> Result<(), ApplyError> {
        Applier::new(&self.root(), whiteouts, &[])?.apply(tar)
    }

    /// Everything outside the root, the sandbox directory itself included:
    /// per path its type, mode, owner, link count, inode, size, times
    /// (atime of files and directories, mtime, ctime), device number,
    /// symlink target and file contents.
    pub fn outside(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        describe(self.tmp.path(), ".", &self.root(), &mut out);
        out
    }

    /// Fails with a description of every difference if anything outside the
    /// root changed since the sandbox was made.
    pub fn check_outside_unchanged(&self) -> Result<(), String> {
        let after = self.outside();
        if after == self.before {
            return Ok(());
        }
        let mut diff = String::new();
        for (path, was) in &self.before {
            match after.get(path) {
                None => writeln!(diff, "removed {path}: was {was}").unwrap(),
                Some(now) if now != was => writeln!(diff, "changed {path}:\n  was {was}\n  now {now}").unwrap(),
                Some(_) => {}
            }
        }
        for (path, now) in &after {
            if !self.before.contains_key(path) {
                writeln!(diff, "new {path}: {now}").unwrap();
            }
        }
        Err(diff)
    }

    /// Empties the root for the next layer, leaving the root directory
    /// itself (so that its parent, a sentinel, does not change).
    pub fn reset_root(&self) {
        for e in fs::read_dir(self.root()).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                fs::remove_dir_all(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

/// Applies `tar` onto the sandbox's root in `whiteouts` form and checks that
/// nothing outside it changed. The apply may fail (most mutated layers are
/// invalid); escaping is the only failure, and a panic propagates.
pub fn apply_and_check(sandbox: &Sandbox, tar: &[u8], whiteouts: Whiteouts) -> Result<Result<(), String>, String> {
    let result = sandbox.apply(tar, whiteouts).map_err(|e| e.to_string());
    sandbox.check_outside_unchanged().map_err(|diff| format!("{whiteouts:?} apply ({result:?}) escaped:\n{diff}"))?;
    Ok(result)
}

fn describe(dir_path: &Path, rel: &str, root: &Path, out: &mut BTreeMap<String, String>) {
    let m = fs::symlink_metadata(dir_path).unwrap();
    out.insert(rel.to_string(), format!("{} atime {}.{}", meta(&m), m.atime(), m.atime_nsec()));
    // O_NOATIME: the snapshot must not move the atimes it records.
    let fd = rustix::fs::open(dir_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOATIME, Mode::empty()).unwrap();
    let mut names: Vec<Vec<u8>> = Dir::new(fd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    for name in names {
        let name = String::from_utf8_lossy(&name).into_owned();
        let p = dir_path.join(&name);
        let child_rel = if rel == "." { name } else { format!("{rel}/{name}") };
        if p == root {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            describe(&p, &child_rel, root, out);
        } else if m.file_type().is_symlink() {
            out.insert(child_rel, format!("{} -> {}", meta(&m), fs::read_link(&p).unwrap().display()));
        } else if m.is_file() {
            let mut data = Vec::new();
            let mut f = fs::OpenOptions::new().read(true).custom_flags(libc_o_noatime()).open(&p).unwrap();
            f.read_to_end(&mut data).unwrap();
            // After the read: its own atime must be what it was before it.
            let m = fs::symlink_metadata(&p).unwrap();
            out.insert(child_rel, format!("{} atime {}.{} {:?}", meta(&m), m.atime(), m.atime_nsec(), data));
        } else {
            out.insert(child_rel, meta(&m));
        }
    }
}

fn libc_o_noatime() -> i32 {
    OFlags::NOATIME.bits() as i32
}

fn meta(m: &fs::Metadata) -> String {
    format!(
        "mode {:o} owner {}:{} nlink {} ino {} size {} rdev {} mtime {}.{} ctime {}.{}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        m.ino(),
        m.size(),
        m.rdev(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// One entry of a seed layer, written raw (the `tar` builder refuses `..`).
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str, u32, u32),
    Block(&'a str, u32, u32),
    /// PAX records (`key`, `value`) for the next entry.
    Pax(Vec<(&'a str, Vec<u8>)>),
    /// A GNU long name (`././@LongLink`, type `L`) for the next entry.
    LongName(String),
    /// A GNU long link name (type `K`) for the next entry.
    LongLink(String),
    /// A GNU sparse file: `(offset, length)` chunks, the real size, and the
    /// stored data.
    Sparse(&'a str, Vec<(u64, u64)>, u64, &'a [u8]),
    /// A regular file whose header claims `size` but carries `data`.
    Lying(&'a str, u64, &'a [u8]),
}

/// One PAX record, `"<len> key=value\n"`, its length counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = format!(" {key}=").len() + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut v = format!("{len} {key}=").into_bytes();
    v.extend_from_slice(value);
    v.push(b'\n');
    v
}

/// A GNU header with raw (unchecked) names; the checksum is left to set.
fn header(kind: tar::EntryType, name: &str, link: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    let name = &name.as_bytes()[..name.len().min(100)];
    let link = &link.as_bytes()[..link.len().min(100)];
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

/// Appends a header (checksum set now) and its data, padded to a block.
fn put(out: &mut Vec<u8>, mut h: tar::Header, data: &[u8]) {
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A tar of `entries` with the two zero blocks at its end.
pub fn layer(entries: &[E]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut out = Vec::new();
    for e in entries {
        match e {
            E::Dir(n, m) => put(&mut out, header(T::Directory, n, "", *m, 0), b""),
            E::File(n, d, m) => put(&mut out, header(T::Regular, n, "", *m, d.len() as u64), d),
            E::Symlink(n, t) => put(&mut out, header(T::Symlink, n, t, 0o777, 0), b""),
            E::Link(n, t) => put(&mut out, header(T::Link, n, t, 0o644, 0), b""),
            E::Fifo(n) => put(&mut out, header(T::Fifo, n, "", 0o600, 0), b""),
            E::Char(n, major, minor) | E::Block(n, major, minor) => {
                let kind = if matches!(e, E::Char(..)) { T::Char } else { T::Block };
                let mut h = header(kind, n, "", 0o666, 0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                put(&mut out, h, b"");
            }
            E::Pax(records) => {
                let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
                put(&mut out, header(T::XHeader, "PaxHeaders/x", "", 0o644, data.len() as u64), &data);
            }
            E::LongName(n) | E::LongLink(n) => {
                let kind = if matches!(e, E::LongName(_)) { T::GNULongName } else { T::GNULongLink };
                let data = [n.as_bytes(), b"\0"].concat();
                put(&mut out, header(kind, "././@LongLink", "", 0o644, data.len() as u64), &data);
            }
            E::Sparse(n, chunks, real, data) => {
                let mut h = header(T::GNUSparse, n, "", 0o644, data.len() as u64);
                let gnu = h.as_gnu_mut().unwrap();
                for (slot, (off, len)) in gnu.sparse.iter_mut().zip(chunks) {
                    slot.set_offset(*off);
                    slot.set_length(*len);
                }
                gnu.set_real_size(*real);
                put(&mut out, h, data);
            }
            E::Lying(n, size, data) => put(&mut out, header(T::Regular, n, "", 0o644, *size), data),
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The seed corpus: named valid and hostile layers. `host` is the sandbox's
/// absolute path, for absolute names and symlinks that point at the real
/// sentinels (they must resolve inside the root).
pub fn corpus(host: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let h = host.display().to_string();
    let abs = |p: &str| format!("{h}/{p}");
    let deep: String = (0..300).map(|i| format!("d{i}/")).collect::<String>() + "f";
    let long = format!("{}/../../sentinel", "n".repeat(150));
    vec![
        (
            "valid: every entry kind, whiteout, opaque",
            layer(&[
                E::Dir("a/", 0o755),
                E::File("a/f", b"data", 0o644),
                E::Symlink("a/l", "f"),
                E::Link("a/h", "a/f"),
                E::Fifo("a/p"),
                E::Char("a/null", 1, 3),
                E::File("a/.wh.gone", b"", 0o644),
                E::Dir("o/", 0o700),
                E::File("o/keep", b"k", 0o600),
                E::File("o/.wh..wh..opq", b"", 0o644),
                E::Pax(vec![("SCHILY.xattr.user.k", b"v".to_vec())]),
                E::File("a/x", b"x", 0o4755),
                E::File("implicit/parents/f", b"p", 0o644),
            ]),
        ),
        (
            "traversal",
            layer(&[
                E::File("../sentinel", b"pwned", 0o644),
                E::File("../outside/secret", b"pwned", 0o644),
                E::File("../../x", b"pwned", 0o644),
                E::Dir("../outside/new/", 0o777),
            ]),
        ),
        (
            "absolute names",
            layer(&[
                E::File("/sentinel", b"pwned", 0o644),
                E::File(&abs("sentinel"), b"pwned", 0o644),
                E::File(&abs("outside/secret"), b"pwned", 0o644),
            ]),
        ),
        (
            "symlink escape, then write through it",
            layer(&[
                E::Symlink("up", ".."),
                E::File("up/sentinel", b"pwned", 0o644),
                E::Symlink("evil", "../outside"),
                E::File("evil/secret", b"pwned", 0o644),
                E::Dir("evil/sub/", 0o777),
                E::File("evil/sub/new", b"pwned", 0o644),
                E::Symlink("abs", &h),
                E::File("abs/outside/secret", b"pwned", 0o644),
                E::Symlink("chain", "abs/outside"),
                E::File("chain/link", b"pwned", 0o644),
            ]),
        ),
        (
            "hard links to the sentinel",
            layer(&[
                E::Link("h1", "../sentinel"),
                E::Link("h2", &abs("sentinel")),
                E::Symlink("up", ".."),
                E::Link("h3", "up/sentinel"),
                E::Symlink("abs", &h),
                E::Link("h4", "abs/outside/secret"),
                E::Link("h5", "abs/outside/link"),
                E::File("h3", b"pwned", 0o644),
                E::Link("h6", "/"),
                E::Link("h7", ".."),
            ]),
        ),
        (
            "whiteouts outside",
            layer(&[
                E::File("../.wh.sentinel", b"", 0o644),
                E::File("../.wh.outside", b"", 0o644),
                E::File("../outside/.wh.secret", b"", 0o644),
                E::File(&abs(".wh.sentinel"), b"", 0o644),
                E::Symlink("up", ".."),
                E::File("up/.wh.sentinel", b"", 0o644),
                E::Symlink("evil", "../outside"),
                E::File("evil/.wh.secret", b"", 0o644),
                E::File("evil/.wh..wh..opq", b"", 0o644),
                E::File("up/.wh..wh..opq", b"", 0o644),
                E::File("d/.wh..", b"", 0o644),
                E::File(".wh..", b"", 0o644),
                E::File(".wh.", b"", 0o644),
                E::File(".wh..wh..opq", b"", 0o644),
            ]),
        ),
        (
            "replace a symlink to outside",
            layer(&[
                E::Symlink("evil", "../outside"),
                E::File("evil", b"x", 0o644),
                E::Symlink("evil2", "../outside/secret"),
                E::Dir("evil2/", 0o755),
                E::Symlink("s", "../sentinel"),
                E::Fifo("s"),
            ]),
        ),
        (
            "device nodes",
            layer(&[
                E::Char("null", 1, 3),
                E::Block("disk", 8, 0),
                E::Symlink("evil", "../outside"),
                E::Char("evil/secret", 1, 3),
                E::Block("../outside/blk", 8, 0),
                E::Char("big", 0xfff, 0xfffff),
            ]),
        ),
        (
            "PAX path and linkpath",
            layer(&[
                E::Pax(vec![("path", b"../sentinel".to_vec())]),
                E::File("innocent", b"pwned", 0o644),
                E::Pax(vec![("path", b"h".to_vec()), ("linkpath", b"../sentinel".to_vec())]),
                E::Link("h", "x"),
                E::Pax(vec![("path", abs("outside/secret").into_bytes())]),
                E::File("innocent2", b"pwned", 0o644),
                E::Pax(vec![("path", b"nul\0byte".to_vec()), ("uid", b"99999999999".to_vec())]),
                E::File("innocent3", b"x", 0o644),
                E::Pax(vec![("size", b"18446744073709551615".to_vec()), ("mtime", b"-1.5".to_vec())]),
                E::File("sized", b"x", 0o644),
                E::Pax(vec![("SCHILY.xattr.trusted.overlay.opaque", b"y".to_vec())]),
                E::Dir("opq/", 0o755),
            ]),
        ),
        (
            "GNU long names and links",
            layer(&[
                E::LongName(long.clone()),
                E::File("short", b"pwned", 0o644),
                E::LongName(deep.clone()),
                E::File("short2", b"deep", 0o644),
                E::LongName("l".to_string()),
                E::LongLink(format!("{}/../../../sentinel", "k".repeat(120))),
                E::Link("l", "x"),
                E::LongName("x".repeat(5000)),
                E::File("toolong", b"x", 0o644),
            ]),
        ),
        (
            "GNU sparse",
            layer(&[
                E::Sparse("sparse", vec![(0, 4), (8192, 4)], 8196, b"abcdefgh"),
                E::Sparse("../sentinel", vec![(0, 4)], 4, b"pwnd"),
                E::Sparse("over", vec![(u64::MAX - 2, 4)], 1 << 40, b"abcd"),
            ]),
        ),
        (
            "huge sizes",
            layer(&[
                E::Lying("huge", 0o77777777777, b"short"),
                E::Lying("../sentinel", 1 << 33, b"pwned"),
                E::File("after", b"a", 0o644),
            ]),
        ),
        (
            "entries replacing each other",
            layer(&[
                E::Dir("x/", 0o755),
                E::File("x/y", b"1", 0o644),
                E::File("x", b"2", 0o644),
                E::Symlink("x", ".."),
                E::Dir("x/", 0o755),
                E::File("x/sentinel", b"pwned", 0o644),
                E::Link("x/z", "x/sentinel"),
            ]),
        ),
    ]
}
