//! Mounting what a snapshotter returns, on a temporary directory, for as long
//! as a guard lives.
//!
//! Why it is written this way: the suite must see a snapshot the way a
//! container runtime does, so it performs the real mount(2) calls rather than
//! reading the snapshotter's directories behind its back. The options are
//! split into mount flags and filesystem data the way containerd's Linux
//! mount package does (`ro`, `rbind`, `nosuid`, ... become flags; anything
//! else is data), a read-only bind is remounted read-only because the kernel
//! ignores `MS_RDONLY` on the first bind, and propagation options are applied
//! with a separate call. mount(2) takes at most one page of data, which a deep
//! overlay chain exceeds; containerd works around that with relative paths in
//! a forked child, which a multi-threaded Rust process cannot do safely, so an
//! overlay whose data is too long is mounted with the new mount API instead
//! (fsopen, one `lowerdir+` per layer, fsmount, move_mount; Linux 6.8+).
//! The guard unmounts on drop (lazily detaching if a plain unmount fails) and
//! removes the directory only once nothing is mounted on it, so a failing or
//! panicking case can neither leak a mount nor delete files through one.

use std::io;
use std::path::{Path, PathBuf};

use containerd_client::types::Mount;
use rustix::fs::CWD;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, mount, mount_change, mount_remount,
    move_mount, unmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    UnmountFlags,
};

/// mount(2) copies at most one page of filesystem data.
const MAX_MOUNT_DATA: usize = 4096;

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("create a mount point: {0}")]
    MountPoint(#[source] io::Error),
    #[error("mount {kind} {source_path} (options {options:?}): {error}")]
    Mount { kind: String, source_path: String, options: Vec<String>, error: io::Error },
}

/// Mount flags and data, parsed from containerd's option strings.
#[derive(Debug, PartialEq, Eq)]
struct ParsedOptions {
    flags: MountFlags,
    propagation: Option<MountPropagationFlags>,
    data: Vec<String>,
}

/// Split options into flags and data as containerd's Linux mount code does.
fn parse_options(options: &[String]) -> ParsedOptions {
    let mut parsed = ParsedOptions { flags: MountFlags::empty(), propagation: None, data: Vec::new() };
    for option in options {
        // (set, clear)
        let (set, clear) = match option.as_str() {
            "async" => (MountFlags::empty(), MountFlags::SYNCHRONOUS),
            "atime" => (MountFlags::empty(), MountFlags::NOATIME),
            "bind" => (MountFlags::BIND, MountFlags::empty()),
            "defaults" => (MountFlags::empty(), MountFlags::empty()),
            "dev" => (MountFlags::empty(), MountFlags::NODEV),
            "diratime" => (MountFlags::empty(), MountFlags::NODIRATIME),
            "dirsync" => (MountFlags::DIRSYNC, MountFlags::empty()),
            "exec" => (MountFlags::empty(), MountFlags::NOEXEC),
            "mand" => (MountFlags::PERMIT_MANDATORY_FILE_LOCKING, MountFlags::empty()),
            "noatime" => (MountFlags::NOATIME, MountFlags::empty()),
            "nodev" => (MountFlags::NODEV, MountFlags::empty()),
            "nodiratime" => (MountFlags::NODIRATIME, MountFlags::empty()),
            "noexec" => (MountFlags::NOEXEC, MountFlags::empty()),
            "nomand" => (MountFlags::empty(), MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
            "norelatime" => (MountFlags::empty(), MountFlags::RELATIME),
            "nostrictatime" => (MountFlags::empty(), MountFlags::STRICTATIME),
            "nosuid" => (MountFlags::NOSUID, MountFlags::empty()),
            "rbind" => (MountFlags::BIND | MountFlags::REC, MountFlags::empty()),
            "relatime" => (MountFlags::RELATIME, MountFlags::empty()),
            "ro" => (MountFlags::RDONLY, MountFlags::empty()),
            "rw" => (MountFlags::empty(), MountFlags::RDONLY),
            "strictatime" => (MountFlags::STRICTATIME, MountFlags::empty()),
            "suid" => (MountFlags::empty(), MountFlags::NOSUID),
            "sync" => (MountFlags::SYNCHRONOUS, MountFlags::empty()),
            other => {
                parsed.propagation = match other {
                    "private" => Some(MountPropagationFlags::PRIVATE),
                    "rprivate" => Some(MountPropagationFlags::PRIVATE | MountPropagationFlags::REC),
                    "shared" => Some(MountPropagationFlags::SHARED),
                    "rshared" => Some(MountPropagationFlags::SHARED | MountPropagationFlags::REC),
                    "slave" => Some(MountPropagationFlags::DOWNSTREAM),
                    "rslave" => Some(MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC),
                    "unbindable" => Some(MountPropagationFlags::UNBINDABLE),
                    "runbindable" => Some(MountPropagationFlags::UNBINDABLE | MountPropagationFlags::REC),
                    _ => {
                        parsed.data.push(other.to_string());
                        parsed.propagation
                    }
                };
                continue;
            }
        };
        parsed.flags = (parsed.flags | set) & !clear;
    }
    parsed
}

/// A temporary directory with the snapshot's mounts stacked on it, in the
/// order given (as containerd's `mount.All`). Dropping it unmounts and then
/// removes the directory.
#[derive(Debug)]
pub struct MountedDir {
    path: PathBuf,
    /// How many mounts are stacked on `path`.
    depth: usize,
}

impl MountedDir {
    /// Mount `mounts` on a fresh directory under `parent`.
    pub fn mount_all(parent: &Path, mounts: &[Mount]) -> Result<MountedDir, MountError> {
        let path = tempfile::Builder::new().prefix("mnt-").tempdir_in(parent).map_err(MountError::MountPoint)?.keep();
        let mut guard = MountedDir { path, depth: 0 };
        for m in mounts {
            mount_one(m, &guard.path).map_err(|error| MountError::Mount {
                kind: m.r#type.clone(),
                source_path: m.source.clone(),
                options: m.options.clone(),
                error,
            })?;
            guard.depth += 1;
        }
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn mount_one(m: &Mount, target: &Path) -> io::Result<()> {
    let parsed = parse_options(&m.options);
    let data = parsed.data.join(",");
    if m.r#type == "overlay" && data.len() >= MAX_MOUNT_DATA {
        mount_overlay_with_fsconfig(&parsed, target)?;
    } else {
        let data_c = std::ffi::CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        mount(m.source.as_str(), target, m.r#type.as_str(), parsed.flags, data_c.as_c_str())?;
        // A bind mount ignores MS_RDONLY; make it read-only by remounting.
        let bind_ro = MountFlags::BIND | MountFlags::RDONLY;
        if parsed.flags & bind_ro == bind_ro {
            mount_remount(target, parsed.flags, "")?;
        }
    }
    if let Some(propagation) = parsed.propagation {
        mount_change(target, propagation)?;
    }
    Ok(())
}

/// An overlay whose options exceed a page: one `lowerdir+` per layer.
fn mount_overlay_with_fsconfig(parsed: &ParsedOptions, target: &Path) -> io::Result<()> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for option in &parsed.data {
        match option.split_once('=') {
            Some(("lowerdir", dirs)) => {
                for dir in dirs.split(':') {
                    fsconfig_set_string(&fs, "lowerdir+", dir)?;
                }
            }
            Some((key, value)) => fsconfig_set_string(&fs, key, value)?,
            None => fsconfig_set_flag(&fs, option.as_str())?,
        }
    }
    fsconfig_create(&fs)?;
    let mut attrs = MountAttrFlags::empty();
    for (flag, attr) in [
        (MountFlags::RDONLY, MountAttrFlags::MOUNT_ATTR_RDONLY),
        (MountFlags::NOSUID, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (MountFlags::NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
        (MountFlags::NOEXEC, MountAttrFlags::MOUNT_ATTR_NOEXEC),
    ] {
        if parsed.flags.contains(flag) {
            attrs |= attr;
        }
    }
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    move_mount(&mnt, "", CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)?;
    Ok(())
}

impl Drop for MountedDir {
    fn drop(&mut self) {
        while self.depth > 0 {
            if unmount(&self.path, UnmountFlags::empty()).is_err() && unmount(&self.path, UnmountFlags::DETACH).is_err()
            {
                // Still mounted: removing the directory would delete files
                // inside the snapshot. Leave it.
                return;
            }
            self.depth -= 1;
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bind_options_become_flags() {
        let p = parse_options(&opts(&["rbind", "ro"]));
        assert_eq!(p.flags, MountFlags::BIND | MountFlags::REC | MountFlags::RDONLY);
        assert!(p.data.is_empty());
    }

    #[test]
    fn overlay_options_become_data_and_later_options_win() {
        let p = parse_options(&opts(&["index=off", "ro", "lowerdir=/a:/b", "rw", "rprivate"]));
        assert_eq!(p.flags, MountFlags::empty());
        assert_eq!(p.data, vec!["index=off".to_string(), "lowerdir=/a:/b".to_string()]);
        assert_eq!(p.propagation, Some(MountPropagationFlags::PRIVATE | MountPropagationFlags::REC));
    }
}
