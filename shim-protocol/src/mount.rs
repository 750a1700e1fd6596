//! Applying containerd's mounts (`containerd.types.Mount`) as its
//! `mount.All` / `UnmountAll` do: the options split into mount(2) flags,
//! propagation changes and the data string (`parseMountOptions`), a
//! read-only bind in two calls. Shared by the shim (a task's rootfs) and
//! `ctr` (`images mount`, the rootfs it reads users from).

use std::ffi::CString;
use std::io;
use std::path::Path;

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// The options of a mount, split.
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

/// Mounts `source` of type `kind` with `options` on `target`.
pub fn mount(kind: &str, source: &str, options: &[String], target: &Path) -> io::Result<()> {
    let p = parse_options(options);
    let data = CString::new(p.data.join(",")).map_err(io::Error::other)?;
    let bind = p.flags.contains(MountFlags::BIND);
    // A read-only bind takes a second, remounting call (the kernel ignores
    // MS_RDONLY on the first).
    let first = if bind { p.flags - MountFlags::RDONLY } else { p.flags };
    rustix::mount::mount(source, target, kind, first, Some(data.as_c_str()))?;
    if bind && p.flags.contains(MountFlags::RDONLY) {
        rustix::mount::mount_remount(target, MountFlags::BIND | p.flags, c"")?;
    }
    if !p.propagation.is_empty() {
        rustix::mount::mount_change(target, p.propagation)?;
    }
    Ok(())
}

/// Unmounts everything stacked on `target`: a missing target or one that
/// is no mount point is done.
pub fn unmount_all(target: &Path) -> io::Result<()> {
    loop {
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
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
        let p = parse_options(&opts(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l", "ro"]));
        assert_eq!(p.flags, MountFlags::RDONLY);
        assert_eq!(p.data.join(","), "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
    }

    #[test]
    fn bind_words_are_flags() {
        let p = parse_options(&opts(&["rbind", "ro", "nosuid", "rprivate"]));
        assert_eq!(p.flags, MountFlags::BIND | MountFlags::REC | MountFlags::RDONLY | MountFlags::NOSUID);
        assert_eq!(p.propagation, MountPropagationFlags::PRIVATE | MountPropagationFlags::REC);
        assert!(p.data.is_empty());
        assert_eq!(parse_options(&opts(&["ro", "rw"])).flags, MountFlags::empty());
        assert_eq!(parse_options(&opts(&["rbind", "ro", "rw"])).flags, MountFlags::BIND | MountFlags::REC);
    }
}
