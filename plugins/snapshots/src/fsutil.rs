//! Filesystem work shared by the layouts, all blocking (callers are on
//! `spawn_blocking` threads): disk usage as containerd counts it, a copy of
//! a tree that keeps everything a root filesystem needs, and removal that
//! never crosses into a mounted filesystem.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    fs, io,
    os::unix::fs::{symlink, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crated_plugin_api::snapshots::Usage;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

/// Disk usage of the tree at `root`, as continuity's `fs.DiskUsage` counts
/// it for containerd 1.6.20: every inode once (hard links, and the root
/// itself, count once) and its allocated blocks (`st_blocks * 512`, not
/// `st_size`).
pub fn disk_usage(root: &Path) -> io::Result<Usage> {
    let mut seen = HashSet::new();
    let mut size = 0i64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        if seen.insert((m.dev(), m.ino())) {
            size += (m.blocks() * 512) as i64;
        }
        if m.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(Usage { size, inodes: seen.len() as i64 })
}

/// A name under a directory that nothing else uses: `<prefix>-<pid>-<n>-<nanos>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Renames `from` to `to`, failing (EEXIST) instead of replacing an existing
/// `to`: a plain rename would silently replace an empty directory.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(CWD, from, CWD, to, rustix::fs::RenameFlags::NOREPLACE).map_err(io::Error::from)
}

/// The mount points at or below `path`, from `/proc/self/mountinfo`.
pub fn mounts_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(path))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the tree at `path` (a missing one is fine). Refuses when a
/// filesystem is mounted at or below it: removing through a mount would
/// delete what the mount shows (a container's volume, a host directory),
/// not the snapshot. Symlinks are removed, never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let mounts = mounts_under(path)?;
    if let Some(m) = mounts.first() {
        return Err(io::Error::other(format!("{} is still mounted; not removing {}", m.display(), path.display())));
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Copies the tree `src` into the existing directory `dst`: contents,
/// modes, owners, times, extended attributes, symlinks, hard links (as hard
/// links), devices, fifos and sockets. `dst` itself takes `src`'s metadata.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let mut links = HashMap::new();
    copy_dir(src, dst, &mut links)
}

fn copy_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (s, d) = (entry.path(), dst.join(entry.file_name()));
        let m = fs::symlink_metadata(&s)?;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(&d)?;
            copy_dir(&s, &d, links)?;
            continue;
        }
        if m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                fs::hard_link(first, &d)?;
                continue;
            }
            links.insert((m.dev(), m.ino()), d.clone());
        }
        if ft.is_symlink() {
            symlink(fs::read_link(&s)?, &d)?;
        } else if ft.is_file() {
            fs::copy(&s, &d)?;
        } else {
            // Devices, fifos and sockets: a node of the same type and number.
            let file_type = FileType::from_raw_mode(m.mode());
            rustix::fs::mknodat(CWD, &d, file_type, Mode::from_raw_mode(m.mode() & 0o7777), m.rdev())?;
        }
        copy_metadata(&s, &d, &m)?;
    }
    // The directory's own metadata last: its times would change with every
    // entry created in it.
    copy_metadata(src, dst, &meta)
}

/// Owner, then mode (chown clears set-id bits), xattrs, then times.
fn copy_metadata(src: &Path, dst: &Path, m: &fs::Metadata) -> io::Result<()> {
    let symlink = m.file_type().is_symlink();
    std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid()))?;
    if !symlink {
        fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    copy_xattrs(src, dst, symlink)?;
    let times = Timestamps {
        last_access: Timespec { tv_sec: m.atime(), tv_nsec: m.atime_nsec() as _ },
        last_modification: Timespec { tv_sec: m.mtime(), tv_nsec: m.mtime_nsec() as _ },
    };
    rustix::fs::utimensat(CWD, dst, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn copy_xattrs(src: &Path, dst: &Path, symlink: bool) -> io::Result<()> {
    let size = match rustix::fs::llistxattr_query(src) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(src, &mut names[..])?;
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::new(std::str::from_utf8(name).map_err(io::Error::other)?);
        let len = rustix::fs::lgetxattr_query(src, name)?;
        let mut value = vec![0u8; len];
        let len = rustix::fs::lgetxattr(src, name, &mut value[..])?;
        match rustix::fs::lsetxattr(dst, name, &value[..len], rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            // The target filesystem has no xattrs, or (user.* on a symlink)
            // refuses this one where the source had it: as continuity, skip.
            Err(rustix::io::Errno::NOTSUP) => {}
            Err(rustix::io::Errno::PERM) if symlink => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn usage_counts_hard_links_once_and_blocks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("t");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("f"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(root.join("f"), root.join("g")).unwrap();
        let u = disk_usage(&root).unwrap();
        let blocks = |p: &Path| fs::symlink_metadata(p).unwrap().blocks() as i64 * 512;
        assert_eq!(u.inodes, 2);
        assert_eq!(u.size, blocks(&root) + blocks(&root.join("f")));
    }
}
