//! Mounting what a snapshotter returns, and unmounting it, as containerd's
//! `mount.All` / `mount.UnmountAll` do for `ctr images mount|unmount`
//! (`shim_protocol::mount`, the shim's own), with ctr's error texts.

use std::path::Path;

use containerd_client::types::Mount;

/// `mount.All`: every mount on `target`, in order. The error reads like
/// Go's: `mount source:<src> target:<dir> fstype:<type> ...: <errno text>`.
pub fn all(mounts: &[Mount], target: &Path) -> anyhow::Result<()> {
    for m in mounts {
        shim_protocol::mount::mount(&m.r#type, &m.source, &m.options, target).map_err(|e| {
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
    shim_protocol::mount::unmount_all(target)
        .map_err(|e| anyhow::anyhow!("unmount {}: {}", target.display(), crate::errdefs::os_text(&e)))
}
