//! A task's bundle, laid out as containerd 1.6 lays it out:
//!
//! ```text
//! <state>/<namespace>/<id>/          the bundle (0700), the shim's working directory
//!     config.json                    the container's OCI spec, as the container record holds it
//!     rootfs/                        where the shim mounts the root filesystem
//!     work -> <root>/<namespace>/<id>  the runtime's persistent work directory
//!     log                            a FIFO the shim writes its log to (made before it starts)
//!     shim-binary-path               the shim that was started (for cleanup after a restart)
//!     address                        written by the shim: its ttrpc address
//! ```
//!
//! Everything here is blocking file system work: callers run it on a
//! blocking thread ([`blocking`]).

use std::{
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::error::{Result, RuntimeError};

pub const CONFIG: &str = "config.json";
pub const ROOTFS: &str = "rootfs";
pub const WORK: &str = "work";
pub const LOG: &str = "log";
pub const SHIM_BINARY_PATH: &str = "shim-binary-path";
pub const ADDRESS: &str = "address";

/// Runs blocking file system work off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking bundle work panicked")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub namespace: String,
    pub id: String,
    pub path: PathBuf,
}

impl Bundle {
    /// The bundle of `namespace/id` under `state` (not created).
    pub fn at(state: &Path, namespace: &str, id: &str) -> Bundle {
        Bundle { namespace: namespace.into(), id: id.into(), path: state.join(namespace).join(id) }
    }

    /// Creates the bundle with its spec, rootfs, work link and log FIFO.
    /// A failure removes whatever was made.
    pub fn create(root: &Path, state: &Path, namespace: &str, id: &str, spec: &[u8]) -> Result<Bundle> {
        let b = Bundle::at(state, namespace, id);
        let work = root.join(namespace).join(id);
        let mut dirs = std::fs::DirBuilder::new();
        dirs.recursive(true).mode(0o711);
        dirs.create(state.join(namespace)).map_err(|e| RuntimeError::io("create the namespace's state", e))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&b.path)
            .map_err(|e| RuntimeError::io(format!("create bundle {}", b.path.display()), e))?;
        let made = (|| -> io::Result<()> {
            // DirBuilder's mode is masked by the umask; set it outright.
            std::fs::set_permissions(&b.path, std::fs::Permissions::from_mode(0o700))?;
            std::fs::DirBuilder::new().mode(0o711).create(b.path.join(ROOTFS))?;
            dirs.create(root.join(namespace))?;
            if work.exists() {
                std::fs::remove_dir_all(&work)?;
            }
            std::fs::DirBuilder::new().mode(0o711).create(&work)?;
            std::os::unix::fs::symlink(&work, b.path.join(WORK))?;
            std::fs::write(b.path.join(CONFIG), spec)?;
            rustix::fs::mkfifoat(rustix::fs::CWD, b.path.join(LOG), rustix::fs::Mode::from_raw_mode(0o700))?;
            Ok(())
        })();
        if let Err(e) = made {
            let _ = b.delete();
            return Err(RuntimeError::io(format!("prepare bundle {}", b.path.display()), e));
        }
        Ok(b)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join(ROOTFS)
    }

    /// Unmounts the rootfs (every mount stacked on it), then removes the
    /// bundle and its work directory, each renamed to a dot name first so a
    /// crash half way leaves nothing a restart mistakes for a bundle.
    pub fn delete(&self) -> Result<()> {
        let work = std::fs::read_link(self.path.join(WORK)).ok();
        unmount_all(&self.rootfs())?;
        atomic_delete(&self.path).map_err(|e| RuntimeError::io(format!("remove bundle {}", self.path.display()), e))?;
        if let Some(work) = work {
            atomic_delete(&work).map_err(|e| RuntimeError::io(format!("remove work dir {}", work.display()), e))?;
        }
        Ok(())
    }
}

/// Unmounts everything mounted on `path`, top first, until nothing is.
pub fn unmount_all(path: &Path) -> Result<()> {
    loop {
        match rustix::mount::unmount(path, rustix::mount::UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            // EINVAL: not a mount point; ENOENT: no such path.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(RuntimeError::io(format!("unmount rootfs {}", path.display()), e.into())),
        }
    }
}

fn atomic_delete(path: &Path) -> io::Result<()> {
    let Some(name) = path.file_name() else { return Ok(()) };
    let hidden = path.with_file_name(format!(".{}", name.to_string_lossy()));
    match std::fs::rename(path, &hidden) {
        Ok(()) => std::fs::remove_dir_all(&hidden),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The bundles under `state`, as `(namespace, id)`; dot names (a delete
/// that a crash interrupted) are removed on the way.
pub fn scan(state: &Path) -> Vec<Bundle> {
    let mut found = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(state) else { return found };
    for ns in namespaces.flatten() {
        if !ns.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let namespace = ns.file_name().to_string_lossy().into_owned();
        let Ok(ids) = std::fs::read_dir(ns.path()) else { continue };
        for entry in ids.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') {
                let _ = unmount_all(&entry.path().join(ROOTFS));
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(Bundle { namespace: namespace.clone(), id, path: entry.path() });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_lays_out_the_bundle_and_delete_removes_it_and_work() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, state) = (tmp.path().join("root"), tmp.path().join("state"));
        let b = Bundle::create(&root, &state, "ns", "c1", b"{}").unwrap();
        assert_eq!(std::fs::read(b.file(CONFIG)).unwrap(), b"{}");
        assert!(b.rootfs().is_dir());
        assert_eq!(std::fs::read_link(b.file(WORK)).unwrap(), root.join("ns/c1"));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(b.file(LOG)).unwrap().file_type().is_fifo());
        assert!(Bundle::create(&root, &state, "ns", "c1", b"{}").is_err(), "a second bundle of one id");
        assert_eq!(scan(&state), vec![b.clone()]);
        b.delete().unwrap();
        assert!(!b.path.exists() && !root.join("ns/c1").exists());
        assert!(scan(&state).is_empty());
    }
}
