//! Mounting what a snapshotter returns, and unmounting it, as containerd's
//! `mount.All` / `mount.UnmountAll` do for `ctr images mount|unmount`:
//! the mount options are split into mount(2) flags and the data string.

use std::io;
use std::path::Path;

use containerd_client::types::Mount;
use rustix::mount::{MountFlags, UnmountFlags};

/// containerd's `parseMountOptions`: `(flags to set, data string)`. An
/// option that is neither a flag nor its negation goes to the data string.
fn parse_options(options: &[String]) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (clear, flag) = match o.as_str() {
            "ro" => (false, MountFlags::RDONLY),
            "rw" => (true, MountFlags::RDONLY),
            "bind" => (false, MountFlags::BIND),
            "rbind" => (false, MountFlags::BIND | MountFlags::REC),
            "nosuid" => (false, MountFlags::NOSUID),
            "suid" => (true, MountFlags::NOSUID),
            "nodev" => (false, MountFlags::NODEV),
            "dev" => (true, MountFlags::NODEV),
            "noexec" => (false, MountFlags::NOEXEC),
            "exec" => (true, MountFlags::NOEXEC),
            "sync" => (false, MountFlags::SYNCHRONOUS),
            "async" => (true, MountFlags::SYNCHRONOUS),
            "dirsync" => (false, MountFlags::DIRSYNC),
            "noatime" => (false, MountFlags::NOATIME),
            "atime" => (true, MountFlags::NOATIME),
            "nodiratime" => (false, MountFlags::NODIRATIME),
            "diratime" => (true, MountFlags::NODIRATIME),
            "relatime" => (false, MountFlags::RELATIME),
            "norelatime" => (true, MountFlags::RELATIME),
            "strictatime" => (false, MountFlags::STRICTATIME),
            "nostrictatime" => (true, MountFlags::STRICTATIME),
            "defaults" => (false, MountFlags::empty()),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        if clear {
            flags.remove(flag);
        } else {
            flags.insert(flag);
        }
    }
    (flags, data.join(","))
}

/// Mount one snapshot mount on `target`. A read-only bind mount takes two
/// steps (the kernel ignores `MS_RDONLY` on the first bind).
fn mount_one(m: &Mount, target: &Path) -> io::Result<()> {
    let (flags, data) = parse_options(&m.options);
    let data_c = std::ffi::CString::new(data.clone()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let first_flags = if flags.contains(MountFlags::BIND) { flags - MountFlags::RDONLY } else { flags };
    rustix::mount::mount(m.source.as_str(), target, m.r#type.as_str(), first_flags, Some(data_c.as_c_str()))?;
    if flags.contains(MountFlags::BIND) && flags.contains(MountFlags::RDONLY) {
        rustix::mount::mount_remount(target, flags | MountFlags::BIND, data.as_str())?;
    }
    Ok(())
}

/// `mount.All`: every mount on `target`, in order. The error reads like
/// Go's: `mount source:<src> target:<dir> fstype:<type> ...: <errno text>`.
pub fn all(mounts: &[Mount], target: &Path) -> anyhow::Result<()> {
    for m in mounts {
        mount_one(m, target).map_err(|e| {
            anyhow::anyhow!(
                "failed to mount {} on {} (type {}): {}",
                m.source,
                target.display(),
                m.r#type,
                crate::errdefs::os_text(&e)
            )
        })?;
    }
    Ok(())
}

/// `mount.UnmountAll(target, 0)`: unmount until the target is no longer a
/// mount point (EINVAL); a missing target is not an error.
pub fn unmount_all(target: &Path) -> anyhow::Result<()> {
    if target.as_os_str().is_empty() || !target.exists() {
        return Ok(());
    }
    loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL) => return Ok(()),
            Err(e) => {
                anyhow::bail!("unmount {}: {}", target.display(), crate::errdefs::os_text(&io::Error::from(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&strings(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b", "ro"]));
        assert_eq!(f, MountFlags::RDONLY);
        assert_eq!(d, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
        let (f, d) = parse_options(&strings(&["rbind", "ro", "rw"]));
        assert_eq!(f, MountFlags::BIND | MountFlags::REC);
        assert_eq!(d, "");
    }
}
