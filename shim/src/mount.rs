//! The container's root filesystem: the daemon's mounts (overlay, bind, or
//! any filesystem type) mounted onto `<bundle>/rootfs` in order, with
//! containerd's option words turned into mount flags
//! (`shim_protocol::mount`), and unmounted again (every layer stacked on the
//! target) on failure and on delete.

use std::path::Path;

use shim_protocol::mount::parse_options;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("failed to mount rootfs component {kind} {source_path} {options:?}: {error}")]
    Mount { kind: String, source_path: String, options: Vec<String>, error: std::io::Error },
    #[error("mount options of {0} bytes exceed a page")]
    TooLong(usize),
    #[error("unmount {path}: {error}")]
    Unmount { path: String, error: std::io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mounts `m` on `target`.
pub fn mount(m: &Mount, target: &Path) -> Result<(), MountError> {
    // The kernel takes at most a page of data.
    let data = parse_options(&m.options).data.join(",").len();
    if data >= 4096 {
        return Err(MountError::TooLong(data));
    }
    shim_protocol::mount::mount(&m.kind, &m.source, &m.options, target).map_err(|error| MountError::Mount {
        kind: m.kind.clone(),
        source_path: m.source.clone(),
        options: m.options.clone(),
        error,
    })
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
    shim_protocol::mount::unmount_all(target)
        .map_err(|error| MountError::Unmount { path: target.display().to_string(), error })
}
