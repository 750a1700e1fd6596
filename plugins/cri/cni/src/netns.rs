//! Named, persistent network namespaces, as containerd's `pkg/netns` makes
//! them: a new namespace is unshared on a dedicated thread and its
//! `/proc/thread-self/ns/net` bind-mounted onto a file under a directory
//! (containerd uses /var/run/netns), so it outlives the thread and any
//! process in it; removing it unmounts and unlinks the file.
//!
//! Namespaces are per thread: the dedicated thread is what keeps the rest
//! of the process (the tokio workers) in the host's namespace.

use std::{
    fs::File,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use rustix::{
    mount::{mount_bind, unmount, UnmountFlags},
    thread::{move_into_link_name_space, unshare_unsafe, LinkNameSpaceType, UnshareFlags},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("failed to {op} network namespace {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("invalid network namespace name {0:?}")]
    InvalidName(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NetnsError {
    let path = path.to_path_buf();
    move |source| NetnsError::Io { op, path, source }
}

/// A network namespace pinned by a bind mount at [`NetNs::path`]. It is not
/// removed on drop (a sandbox's namespace outlives the handle); see
/// [`NetNsGuard`] for that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates `<dir>/<name>` (the directory too) holding a new network
    /// namespace. An existing file of that name is refused.
    pub async fn create(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(NetnsError::InvalidName(name.to_string()));
        }
        let path = dir.join(name);
        let dir = dir.to_path_buf();
        let p = path.clone();
        run_on_thread(move || create_sync(&dir, &p)).await?;
        Ok(NetNs { path })
    }

    /// Creates a namespace named `cni-<uuid>` as containerd's CRI does.
    pub async fn create_unique(dir: &Path) -> Result<NetNs, NetnsError> {
        NetNs::create(dir, &format!("cni-{}", uuid::Uuid::new_v4())).await
    }

    /// A handle on an existing pinned namespace (after a restart).
    pub fn from_path(path: impl Into<PathBuf>) -> NetNs {
        NetNs { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and unlinks the namespace; already gone is not an error.
    pub async fn remove(&self) -> Result<(), NetnsError> {
        let path = self.path.clone();
        run_on_thread(move || remove_sync(&path)).await
    }

    /// Runs `f` on a thread that has entered this namespace (the thread
    /// ends afterwards). Sockets made there stay in the namespace.
    pub async fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.path.clone();
        run_on_thread(move || {
            let ns = File::open(&path).map_err(io_err("open", &path))?;
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| NetnsError::Io {
                op: "enter",
                path: path.clone(),
                source: e.into(),
            })?;
            Ok(f())
        })
        .await
    }
}

/// Runs `f` on a fresh OS thread (never a pool thread: namespace changes
/// must die with the thread) and awaits it.
async fn run_on_thread<T, F>(f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetnsError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("crated-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(io_err("spawn a thread for", Path::new("")))?;
    rx.await.unwrap_or_else(|_| {
        Err(NetnsError::Io {
            op: "run",
            path: PathBuf::new(),
            source: io::Error::other("the namespace thread panicked"),
        })
    })
}

fn create_sync(dir: &Path, path: &Path) -> Result<(), NetnsError> {
    std::fs::create_dir_all(dir).map_err(io_err("create the directory of", path))?;
    // The mount point: a new empty file, refused if it exists.
    std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io_err("create", path))?;
    let result = (|| {
        // SAFETY: CLONE_NEWNET only changes this thread's network
        // namespace; this is a thread of our own that ends right after, and
        // it shares no file table or fs state that the flag would unshare.
        unsafe { unshare_unsafe(UnshareFlags::NEWNET) }.map_err(|e| io_err("unshare", path)(e.into()))?;
        mount_bind("/proc/thread-self/ns/net", path).map_err(|e| io_err("bind-mount", path)(e.into()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Unmounts and unlinks a pinned namespace; a missing file or a file that
/// is not mounted is fine. Synchronous: also what guards use on drop.
pub fn remove_sync(path: &Path) -> Result<(), NetnsError> {
    match unmount(path, UnmountFlags::DETACH) {
        Ok(()) => {}
        // EINVAL: not a mount point (already unmounted); ENOENT: gone.
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOENT => {}
        Err(e) => return Err(io_err("unmount", path)(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Removes its namespace when dropped (tests; error paths of a caller).
#[derive(Debug)]
pub struct NetNsGuard(Option<NetNs>);

impl NetNsGuard {
    pub fn new(ns: NetNs) -> Self {
        NetNsGuard(Some(ns))
    }

    /// Keeps the namespace: the guard no longer removes it.
    pub fn disarm(mut self) -> NetNs {
        self.0.take().expect("a guard holds its namespace until disarmed")
    }
}

impl std::ops::Deref for NetNsGuard {
    type Target = NetNs;
    fn deref(&self) -> &NetNs {
        self.0.as_ref().expect("a guard holds its namespace until disarmed")
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            if let Err(e) = remove_sync(ns.path()) {
                tracing::warn!("{e}");
            }
        }
    }
}
