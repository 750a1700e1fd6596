//! Extracting a layer (an uncompressed tar stream) onto a directory, without
//! ever touching anything outside it.
//!
//! This is a security boundary: a layer is untrusted input. Every path of an
//! entry is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` relative
//! to a directory fd of the root, so `..`, absolute paths and symlinks
//! (absolute or relative) are all confined to the root, exactly as if the
//! extraction ran chrooted there. Only the parent directory of an entry is
//! resolved that way; the entry itself is then created, replaced or removed
//! by name relative to that parent fd (`*at` calls that never follow a final
//! symlink), so a symlink planted by an earlier entry can redirect neither a
//! write nor a delete. Hard links are resolved the same way and linked
//! without following their last component, so they can only name inodes
//! inside the root. Names are cleaned lexically first (as containerd cleans
//! them), so whiteouts and opaque markers act on the cleaned path inside the
//! root; a whiteout naming `.`, `..` or nothing is refused.
//!
//! Whiteouts come in two forms, picked by the caller ([`Whiteouts`]): the OCI
//! form removes what they name (a plain directory), the overlay form writes
//! overlayfs' own markers (a 0/0 character device, the
//! `trusted.overlay.opaque=y` xattr) when the root is an overlay's upper
//! directory. In the overlay form, parent directories missing from the upper
//! directory are created with the attributes of the same directory in the
//! lower layers, as containerd does, so the merged view keeps them.

use std::{
    collections::HashSet,
    ffi::OsStr,
    io::{self, Read},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use rustix::{
    fd::{AsFd, BorrowedFd, OwnedFd},
    fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, RawMode, ResolveFlags, Timespec, Timestamps, XattrFlags},
    io::Errno,
    process::{Gid, Uid},
};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The stream is not a valid tar archive (bad header, truncated data,
    /// decompression error).
    #[error("{0}")]
    Archive(io::Error),
    /// An entry the applier refuses (a whiteout of `.`/`..`, a hard link to
    /// the root, an unknown entry type).
    #[error("invalid entry {name:?}: {reason}")]
    InvalidEntry { name: String, reason: &'static str },
    /// A filesystem operation failed.
    #[error("{op} {name:?}: {source}")]
    Fs { op: &'static str, name: String, source: io::Error },
}

impl ApplyError {
    fn fs<'a>(op: &'static str, name: &'a str) -> impl FnOnce(Errno) -> ApplyError + 'a {
        move |e| ApplyError::Fs { op, name: name.to_string(), source: e.into() }
    }
}

/// How whiteout entries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Remove what they name (a plain directory, or a mounted view).
    Remove,
    /// Write overlayfs' own whiteouts (the root is an overlay upper dir).
    Overlay,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";

/// A reader that counts what passes through it and hands it to a hasher:
/// the uncompressed digest and size come from the same pass as extraction.
pub struct Tee<R, F> {
    inner: R,
    on_data: F,
    pub count: u64,
}

impl<R: Read, F: FnMut(&[u8])> Tee<R, F> {
    pub fn new(inner: R, on_data: F) -> Self {
        Tee { inner, on_data, count: 0 }
    }
}

impl<R: Read, F: FnMut(&[u8])> Read for Tee<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_data)(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The extraction of one layer onto one root.
pub struct Applier {
    root: OwnedFd,
    whiteouts: Whiteouts,
    /// Lower layers of an overlay (top first), read for the attributes of
    /// parent directories created implicitly.
    parents: Vec<OwnedFd>,
    /// Cleaned paths this layer created, kept by opaque whiteouts.
    unpacked: HashSet<String>,
    /// Directory mtimes, set after all entries (children change them).
    dir_times: Vec<(String, Timespec)>,
}

fn open_dir(path: &Path) -> Result<OwnedFd, ApplyError> {
    rfs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| ApplyError::Fs {
        op: "open",
        name: path.display().to_string(),
        source: e.into(),
    })
}

use crated_plugin_api::paths::clean;

fn timespec(secs: u64) -> Timespec {
    Timespec { tv_sec: secs.min(i64::MAX as u64) as i64, tv_nsec: 0 }
}

impl Applier {
    /// An applier onto the directory `root`.
    pub fn new(root: &Path, whiteouts: Whiteouts, parents: &[&Path]) -> Result<Applier, ApplyError> {
        Ok(Applier {
            root: open_dir(root)?,
            whiteouts,
            parents: parents.iter().map(|p| open_dir(p)).collect::<Result<_, _>>()?,
            unpacked: HashSet::new(),
            dir_times: Vec::new(),
        })
    }

    /// Opens a directory inside the root, symlinks resolved inside it.
    fn open_in_root(&self, path: &str) -> Result<OwnedFd, Errno> {
        let path = if path.is_empty() { "." } else { path };
        rfs::openat2(
            &self.root,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The parent directory of `comps`, created (with its missing
    /// ancestors) if needed.
    fn parent_dir(&self, comps: &[&str], name: &str) -> Result<OwnedFd, ApplyError> {
        let parent = comps[..comps.len() - 1].join("/");
        match self.open_in_root(&parent) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(ApplyError::fs("open parent of", name)(e)),
        }
        let mut dir = self.open_in_root("").map_err(ApplyError::fs("open root for", name))?;
        for i in 1..comps.len() {
            let prefix = comps[..i].join("/");
            match self.open_in_root(&prefix) {
                Ok(fd) => dir = fd,
                Err(Errno::NOENT) => {
                    let (mode, owner, times) = self.parent_attrs(&prefix);
                    match rfs::mkdirat(&dir, comps[i - 1], Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(ApplyError::fs("create parent of", name)(e)),
                    }
                    let child = self.open_in_root(&prefix).map_err(ApplyError::fs("open parent of", name))?;
                    if let Some((uid, gid)) = owner {
                        rfs::fchown(&child, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                            .map_err(ApplyError::fs("chown parent of", name))?;
                    }
                    // Explicitly, so the daemon's umask does not count.
                    rfs::fchmod(&child, Mode::from_raw_mode(mode)).map_err(ApplyError::fs("chmod parent of", name))?;
                    if let Some(t) = times {
                        rfs::futimens(&child, &t).map_err(ApplyError::fs("set times of parent of", name))?;
                    }
                    dir = child;
                }
                Err(e) => return Err(ApplyError::fs("open parent of", name)(e)),
            }
        }
        Ok(dir)
    }

    /// Mode, owner and times for a directory created implicitly: those of
    /// the same directory in the nearest lower layer, else 0755 root.
    fn parent_attrs(&self, path: &str) -> (RawMode, Option<(u32, u32)>, Option<Timestamps>) {
        for lower in &self.parents {
            let Ok(fd) = rfs::openat2(
                lower,
                path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) else {
                continue;
            };
            if let Ok(st) = rfs::fstat(&fd) {
                let times = Timestamps {
                    last_access: Timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec as _ },
                    last_modification: Timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec as _ },
                };
                return (st.st_mode & 0o7777, Some((st.st_uid, st.st_gid)), Some(times));
            }
        }
        (0o755, None, None)
    }

    /// Applies a whole archive; returns once the archive's end is read.
    pub fn apply<R: Read>(&mut self, reader: R) -> Result<(), ApplyError> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(ApplyError::Archive)? {
            let entry = entry.map_err(ApplyError::Archive)?;
            self.entry(entry)?;
        }
        // Directory times last, deepest first, so that setting one does not
        // disturb another.
        let mut dir_times = std::mem::take(&mut self.dir_times);
        dir_times.sort_by_key(|(p, _)| std::cmp::Reverse(p.matches('/').count()));
        for (path, mtime) in dir_times {
            let Ok(fd) = self.open_in_root(&path) else { continue };
            let t = Timestamps { last_access: mtime, last_modification: mtime };
            rfs::futimens(&fd, &t).map_err(ApplyError::fs("set times of", &path))?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = clean(&raw_name);
        let Some(&base) = comps.last() else {
            // The root itself: containerd skips it.
            return Ok(());
        };
        let path = comps.join("/");

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&comps, base, &header, &raw_name);
        }

        let dir = self.parent_dir(&comps, &raw_name)?;
        let err = |op| ApplyError::fs(op, &raw_name);
        let is_dir = matches!(kind, tar::EntryType::Directory);
        // Whatever is there goes, unless a directory meets a directory.
        match rfs::statat(&dir, base, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                if !(is_dir && FileType::from_raw_mode(st.st_mode) == FileType::Directory) {
                    remove_all_at(&dir, base).map_err(err("replace"))?;
                }
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(err("stat")(e)),
        }

        let mode = Mode::from_raw_mode(header.mode().map_err(ApplyError::Archive)? & 0o7777);
        let (uid, gid) = owner(&header, &raw_name)?;
        let mtime = timespec(header.mtime().map_err(ApplyError::Archive)?);
        let times = Timestamps { last_access: mtime, last_modification: mtime };
        let xattrs = xattrs_of(&mut entry)?;

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if matches!(kind, tar::EntryType::GNUSparse) {
                    return Err(ApplyError::InvalidEntry { name: raw_name, reason: "sparse files are not supported" });
                }
                let fd = rfs::openat(
                    &dir,
                    base,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(err("create"))?;
                let mut file = std::fs::File::from(fd);
                let want = entry.size();
                let copied = io::copy(&mut entry, &mut file).map_err(ApplyError::Archive)?;
                if copied != want {
                    return Err(ApplyError::Archive(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("unexpected EOF in {raw_name:?}: {copied} of {want} bytes"),
                    )));
                }
                self.finish_fd(file.as_fd(), uid, gid, mode, &xattrs, &raw_name)?;
                rfs::futimens(&file, &times).map_err(err("set times of"))?;
            }
            tar::EntryType::Directory => {
                match rfs::mkdirat(&dir, base, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(err("mkdir")(e)),
                }
                let fd = rfs::openat(
                    &dir,
                    base,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(err("open"))?;
                self.finish_fd(fd.as_fd(), uid, gid, mode, &xattrs, &raw_name)?;
                self.dir_times.push((path.clone(), mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                rfs::symlinkat(OsStr::from_bytes(&target), &dir, base).map_err(err("symlink"))?;
                rfs::chownat(&dir, base, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW).map_err(err("chown"))?;
                rfs::utimensat(&dir, base, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(err("set times of"))?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                let target = String::from_utf8_lossy(&target).into_owned();
                let tcomps = clean(&target);
                let Some(&tbase) = tcomps.last() else {
                    return Err(ApplyError::InvalidEntry { name: raw_name, reason: "hard link to the root" });
                };
                let tdir = self
                    .open_in_root(&tcomps[..tcomps.len() - 1].join("/"))
                    .map_err(ApplyError::fs("open link target of", &raw_name))?;
                rfs::linkat(&tdir, tbase, &dir, base, AtFlags::empty()).map_err(err("link"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (ft, dev) = match kind {
                    tar::EntryType::Char => (FileType::CharacterDevice, device(&header)?),
                    tar::EntryType::Block => (FileType::BlockDevice, device(&header)?),
                    _ => (FileType::Fifo, 0),
                };
                rfs::mknodat(&dir, base, ft, mode, dev).map_err(err("mknod"))?;
                // O_PATH does not follow or open the node; chown/chmod go
                // through it by fd, so nothing else can be swapped in.
                let fd = rfs::openat(&dir, base, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(err("open"))?;
                rfs::chownat(&fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH).map_err(err("chown"))?;
                rfs::chmodat(&dir, base, mode, AtFlags::empty()).map_err(err("chmod"))?;
                rfs::utimensat(&dir, base, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(err("set times of"))?;
            }
            tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {
                // Consumed by the tar reader; never reach here.
            }
            _ => {
                return Err(ApplyError::InvalidEntry { name: raw_name, reason: "unsupported entry type" });
            }
        }
        self.unpacked.insert(path);
        Ok(())
    }

    /// Owner, then mode (chown clears setuid), then xattrs, by fd.
    fn finish_fd(
        &self,
        fd: BorrowedFd<'_>,
        uid: Uid,
        gid: Gid,
        mode: Mode,
        xattrs: &[(String, Vec<u8>)],
        name: &str,
    ) -> Result<(), ApplyError> {
        rfs::fchown(fd, Some(uid), Some(gid)).map_err(ApplyError::fs("chown", name))?;
        rfs::fchmod(fd, mode).map_err(ApplyError::fs("chmod", name))?;
        for (key, value) in xattrs {
            match rfs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                // containerd skips xattrs the filesystem cannot hold.
                Err(Errno::NOTSUP) => {
                    crated_plugin_api::tracing::warn!(key = %key, name, "xattr not supported by the filesystem")
                }
                Err(e) => return Err(ApplyError::fs("setxattr", name)(e)),
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, comps: &[&str], base: &str, header: &tar::Header, name: &str) -> Result<(), ApplyError> {
        let dir = self.parent_dir(comps, name)?;
        let parent_path = comps[..comps.len() - 1].join("/");
        if base == WHITEOUT_OPAQUE {
            return match self.whiteouts {
                Whiteouts::Overlay => rfs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(ApplyError::fs("set opaque on", name)),
                Whiteouts::Remove => self.clear_dir_except_unpacked(&dir, &parent_path, name),
            };
        }
        let target = &base[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == "." || target == ".." {
            return Err(ApplyError::InvalidEntry { name: name.to_string(), reason: "whiteout of no file" });
        }
        match remove_all_at(&dir, target) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(ApplyError::fs("remove whited-out", name)(e)),
        }
        if self.whiteouts == Whiteouts::Overlay {
            rfs::mknodat(&dir, target, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(ApplyError::fs("write whiteout", name))?;
            let (uid, gid) = owner(header, name)?;
            rfs::chownat(&dir, target, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(ApplyError::fs("chown whiteout", name))?;
        }
        Ok(())
    }

    /// An opaque directory in the OCI form: everything in it that this layer
    /// did not put there goes.
    fn clear_dir_except_unpacked(&self, dir: &OwnedFd, dir_path: &str, name: &str) -> Result<(), ApplyError> {
        let names = list_dir(dir).map_err(ApplyError::fs("list", name))?;
        for child in names {
            let child_path = if dir_path.is_empty() { child.clone() } else { format!("{dir_path}/{child}") };
            if self.unpacked.contains(&child_path) {
                continue;
            }
            match remove_all_at(dir, &child) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(ApplyError::fs("remove under opaque", name)(e)),
            }
        }
        Ok(())
    }
}

/// The owner of an entry; `-1` (which chown reads as "unchanged") and
/// anything wider than 32 bits are refused.
fn owner(header: &tar::Header, name: &str) -> Result<(Uid, Gid), ApplyError> {
    let uid = header.uid().map_err(ApplyError::Archive)?;
    let gid = header.gid().map_err(ApplyError::Archive)?;
    if uid >= u64::from(u32::MAX) || gid >= u64::from(u32::MAX) {
        return Err(ApplyError::InvalidEntry { name: name.to_string(), reason: "owner out of range" });
    }
    Ok((Uid::from_raw(uid as u32), Gid::from_raw(gid as u32)))
}

fn device(header: &tar::Header) -> Result<u64, ApplyError> {
    let major = header.device_major().map_err(ApplyError::Archive)?.unwrap_or(0);
    let minor = header.device_minor().map_err(ApplyError::Archive)?.unwrap_or(0);
    Ok(rfs::makedev(major, minor))
}

/// The `SCHILY.xattr.*` PAX records of an entry.
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>, ApplyError> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(ApplyError::Archive)? {
        for ext in exts {
            let ext = ext.map_err(ApplyError::Archive)?;
            if let Ok(key) = ext.key() {
                if let Some(name) = key.strip_prefix(PAX_XATTR) {
                    out.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

/// The names in a directory, without `.` and `..`.
fn list_dir(dir: &OwnedFd) -> Result<Vec<String>, Errno> {
    let fd = rfs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for e in Dir::new(fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(String::from_utf8_lossy(n).into_owned());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir` and everything under it, never following a
/// symlink: each level is opened with `O_NOFOLLOW` relative to the one
/// above, so the removal cannot be redirected outside `dir`.
pub fn remove_all_at(dir: &impl AsFd, name: &str) -> Result<(), Errno> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub =
        rfs::openat(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let children = list_dir(&sub)?;
    for child in children {
        remove_all_at(&sub, &child)?;
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}
