//! The walking comparison: two directory trees (lower and upper, both
//! mounted read-only by the caller) into a layer tar of what changed, as
//! containerd's walking differ writes it: added and changed entries with
//! their parent directories, OCI whiteouts (`.wh.<name>`) for what the upper
//! tree no longer has, hard links within the upper tree as links, xattrs as
//! PAX `SCHILY.xattr.` records. Entries come in lexical path order.
//!
//! An entry counts as changed when its type, mode, owner, size, device,
//! mtime, symlink target or xattrs differ; when the mtime has no sub-second
//! part (a filesystem with coarse times), equal metadata is not trusted and
//! the contents are compared, as containerd's double walk does.

use std::{
    collections::BTreeMap,
    fs::{self, Metadata},
    io::{self, Read, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crated_plugin_api::archive::EntryWriter;

/// Why two trees could not be compared.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct CompareError {
    op: &'static str,
    path: String,
    source: io::Error,
}

fn ctx<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CompareError + 'a {
    move |source| CompareError { op, path: path.display().to_string(), source }
}

struct Walk<'a, W: Write> {
    lower: &'a Path,
    upper: &'a Path,
    /// The tar, and the upper files already written (for hard links).
    entries: EntryWriter<W>,
    /// Directories (relative paths) entered but not yet written.
    pending: Vec<(String, bool)>,
}

/// Writes the difference from `lower` to `upper` as an uncompressed tar
/// into `out`.
pub fn write_diff<W: Write>(lower: &Path, upper: &Path, out: W) -> Result<W, CompareError> {
    let mut w = Walk { lower, upper, entries: EntryWriter::new(out), pending: Vec::new() };
    w.dir("", true)?;
    w.entries.tar.into_inner().map_err(ctx("finish tar", upper))
}

fn names(dir: &Path) -> Result<BTreeMap<String, ()>, CompareError> {
    let mut out = BTreeMap::new();
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(ctx("read", dir))?;
                out.insert(e.file_name().to_string_lossy().into_owned(), ());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx("read", dir)(e)),
    }
    Ok(out)
}

fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut buf) else { return out };
    for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut val = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, name.as_str(), &mut val) {
            val.truncate(len);
            out.push((name, val));
        }
    }
    out.sort();
    out
}

fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn unchanged(lp: &Path, lm: &Metadata, up: &Path, um: &Metadata) -> io::Result<bool> {
    let same_meta = lm.mode() == um.mode()
        && lm.uid() == um.uid()
        && lm.gid() == um.gid()
        && lm.rdev() == um.rdev()
        && (lm.is_dir() || lm.size() == um.size())
        && (lm.is_dir() || (lm.mtime() == um.mtime() && lm.mtime_nsec() == um.mtime_nsec()));
    if !same_meta || xattrs(lp) != xattrs(up) {
        return Ok(false);
    }
    let ft = um.file_type();
    if ft.is_symlink() {
        return Ok(fs::read_link(lp)? == fs::read_link(up)?);
    }
    if ft.is_file() && um.mtime_nsec() == 0 {
        return same_contents(lp, up);
    }
    Ok(true)
}

impl<W: Write> Walk<'_, W> {
    /// Compares the directory `rel` (present in upper; `in_lower`: also a
    /// directory in lower).
    fn dir(&mut self, rel: &str, in_lower: bool) -> Result<(), CompareError> {
        let upper_dir = self.upper.join(rel);
        let lower_dir = self.lower.join(rel);
        let up = names(&upper_dir)?;
        let low = if in_lower { names(&lower_dir)? } else { BTreeMap::new() };
        let mut all: Vec<&String> = up.keys().chain(low.keys()).collect();
        all.sort();
        all.dedup();
        for name in all {
            let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let (up_path, low_path) = (upper_dir.join(name), lower_dir.join(name));
            if !up.contains_key(name) {
                self.whiteout(&child)?;
                continue;
            }
            let um = fs::symlink_metadata(&up_path).map_err(ctx("stat", &up_path))?;
            let lm = if low.contains_key(name) { fs::symlink_metadata(&low_path).ok() } else { None };
            if um.is_dir() {
                let lower_is_dir = lm.as_ref().is_some_and(|m| m.is_dir());
                let changed = match &lm {
                    Some(lm) if lower_is_dir => {
                        !unchanged(&low_path, lm, &up_path, &um).map_err(ctx("compare", &up_path))?
                    }
                    _ => true,
                };
                self.pending.push((child.clone(), false));
                if changed {
                    self.flush_parents()?;
                }
                self.dir(&child, lower_is_dir)?;
                self.pending.pop();
                continue;
            }
            let changed = match &lm {
                Some(lm) => !unchanged(&low_path, lm, &up_path, &um).map_err(ctx("compare", &up_path))?,
                None => true,
            };
            if changed {
                self.flush_parents()?;
                self.entry(&child, &up_path, &um)?;
            }
        }
        Ok(())
    }

    /// Writes the directories above the next entry that are not written yet.
    fn flush_parents(&mut self) -> Result<(), CompareError> {
        for i in 0..self.pending.len() {
            if self.pending[i].1 {
                continue;
            }
            let rel = self.pending[i].0.clone();
            let path = self.upper.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(ctx("stat", &path))?;
            self.entry(&rel, &path, &meta)?;
            self.pending[i].1 = true;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel: &str) -> Result<(), CompareError> {
        self.flush_parents()?;
        let (dir, base) = match rel.rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b),
            None => (String::new(), rel),
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let name = format!("{dir}.wh.{base}");
        self.entries.tar.append_data(&mut h, &name, io::empty()).map_err(ctx("write whiteout", Path::new(&name)))
    }

    fn entry(&mut self, rel: &str, path: &Path, meta: &Metadata) -> Result<(), CompareError> {
        let x = xattrs(path);
        if !x.is_empty() {
            self.pax(rel, &x).map_err(ctx("write xattrs of", path))?;
        }
        self.entries.append(tar::Header::new_gnu(), rel, path, meta).map_err(|(op, e)| ctx(op, path)(e))
    }

    /// A PAX extended header with the xattrs of the next entry.
    fn pax(&mut self, rel: &str, xattrs: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut data = Vec::new();
        for (k, v) in xattrs {
            let body_len = format!(" SCHILY.xattr.{k}=").len() + v.len() + 1;
            // The length counts its own digits.
            let mut len = body_len + 1;
            while len != body_len + len.to_string().len() {
                len = body_len + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} SCHILY.xattr.{k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let short: String = rel.chars().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
        let name = PathBuf::from("PaxHeaders.0").join(short.trim_start_matches('/'));
        self.entries.tar.append_data(&mut h, name, data.as_slice())
    }
}
