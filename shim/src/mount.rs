//! The container's root filesystem: the daemon's mounts (overlay, bind, or
//! any filesystem type) mounted onto `<bundle>/rootfs` in order, with
//! containerd's option words turned into mount flags, and unmounted again
//! (every layer stacked on the target) on failure and on delete.

use std::ffi::CString;
use std::path::Path;

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("failed to mount rootfs component {kind} {source_path} {options:?}: {error}")]
    Mount { kind: String, source_path: String, options: Vec<String>, error: std::io::Error },
    #[error("mount options of {0} bytes exceed a page")]
    TooLong(usize),
    #[error("unmount {path}: {error}")]
    Unmount { path: String, error: std::io::Error },
}

/// A mount as the daemon sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Flags, propagation and the data string of containerd's mount options.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub flags: MountFlags,
    pub propagation: MountPropagationFlags,
    pub data: Vec<String>,
}

/// containerd's `parseMountOptions`: known words set or clear flags; the
/// rest is filesystem data.
pub fn parse_options(options: &[String]) -> Parsed {
    let mut p = Parsed { flags: MountFlags::empty(), propagation: MountPropagationFlags::empty(), data: Vec::new() };
    for o in options {
        let (clear, flag) = match o.as_str() {
            "async" => (true, MountFlags::SYNCHRONOUS),
            "atime" => (true, MountFlags::NOATIME),
            "bind" => (false, MountFlags::BIND),
            "defaults" => (false, MountFlags::empty()),
            "dev" => (true, MountFlags::NODEV),
            "diratime" => (true, MountFlags::NODIRATIME),
            "dirsync" => (false, MountFlags::DIRSYNC),
            "exec" => (true, MountFlags::NOEXEC),
            "mand" => (false, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
            "noatime" => (false, MountFlags::NOATIME),
            "nodev" => (false, MountFlags::NODEV),
            "nodiratime" => (false, MountFlags::NODIRATIME),
            "noexec" => (false, MountFlags::NOEXEC),
            "nomand" => (true, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
            "norelatime" => (true, MountFlags::RELATIME),
            "nostrictatime" => (true, MountFlags::STRICTATIME),
            "nosuid" => (false, MountFlags::NOSUID),
            "rbind" => (false, MountFlags::BIND | MountFlags::REC),
            "relatime" => (false, MountFlags::RELATIME),
            "ro" => (false, MountFlags::RDONLY),
            "rw" => (true, MountFlags::RDONLY),
            "strictatime" => (false, MountFlags::STRICTATIME),
            "suid" => (true, MountFlags::NOSUID),
            "sync" => (false, MountFlags::SYNCHRONOUS),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                p.propagation |= match o.as_str() {
                    "private" => MountPropagationFlags::PRIVATE,
                    "rprivate" => MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
                    "shared" => MountPropagationFlags::SHARED,
                    "rshared" => MountPropagationFlags::SHARED | MountPropagationFlags::REC,
                    "slave" => MountPropagationFlags::DOWNSTREAM,
                    "rslave" => MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
                    "unbindable" => MountPropagationFlags::UNBINDABLE,
                    _ => MountPropagationFlags::UNBINDABLE | MountPropagationFlags::REC,
                };
                continue;
            }
            _ => {
                p.data.push(o.clone());
                continue;
            }
        };
        if clear {
            p.flags.remove(flag);
        } else {
            p.flags.insert(flag);
        }
    }
    p
}

/// Mounts `m` on `target`.
pub fn mount(m: &Mount, target: &Path) -> Result<(), MountError> {
    let err = |error: std::io::Error| MountError::Mount {
        kind: m.kind.clone(),
        source_path: m.source.clone(),
        options: m.options.clone(),
        error,
    };
    let p = parse_options(&m.options);
    let data = p.data.join(",");
    if data.len() >= 4096 {
        return Err(MountError::TooLong(data.len()));
    }
    let data = CString::new(data).map_err(|e| err(std::io::Error::other(e)))?;
    let bind = p.flags.contains(MountFlags::BIND);
    // A read-only bind takes a second, remounting call.
    let first = if bind { p.flags - MountFlags::RDONLY } else { p.flags };
    rustix::mount::mount(m.source.as_str(), target, m.kind.as_str(), first, Some(data.as_c_str()))
        .map_err(|e| err(e.into()))?;
    if bind && p.flags.contains(MountFlags::RDONLY) {
        rustix::mount::mount_remount(target, MountFlags::BIND | p.flags, c"").map_err(|e| err(e.into()))?;
    }
    if !p.propagation.is_empty() {
        rustix::mount::mount_change(target, p.propagation).map_err(|e| err(e.into()))?;
    }
    Ok(())
}

/// Mounts every mount on `target` in order; on failure, unmounts what it
/// mounted.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), MountError> {
    for m in mounts {
        if let Err(e) = mount(m, target) {
            let _ = unmount_all(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target` (containerd's `UnmountAll`): a
/// missing target or one that is no mount point is done.
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    loop {
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(MountError::Unmount { path: target.display().to_string(), error: e.into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data() {
        let p = parse_options(&opts(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"]));
        assert!(p.flags.is_empty());
        assert_eq!(p.data.join(","), "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
    }

    #[test]
    fn bind_words_are_flags() {
        let p = parse_options(&opts(&["rbind", "ro", "nosuid", "rprivate"]));
        assert_eq!(p.flags, MountFlags::BIND | MountFlags::REC | MountFlags::RDONLY | MountFlags::NOSUID);
        assert_eq!(p.propagation, MountPropagationFlags::PRIVATE | MountPropagationFlags::REC);
        assert!(p.data.is_empty());
        assert_eq!(parse_options(&opts(&["ro", "rw"])).flags, MountFlags::empty());
    }
}
