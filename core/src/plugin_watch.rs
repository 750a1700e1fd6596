//! Plugins added to a running daemon: `plugin_dir` is watched with inotify,
//! and a `.so` that appears in it is loaded through the same checks, ordered
//! against the plugins already running, initialised and routed, with no
//! restart (`PluginSet::load_library`). containerd never had this; it is
//! what a stable plugin ABI buys.
//!
//! Why these events: a library is complete when the writer closes it
//! (`IN_CLOSE_WRITE`, as `cp` does) or when it is renamed into the
//! directory (`IN_MOVED_TO`, as `install` and package managers do). Loading
//! on creation would dlopen a half-written file.
//!
//! Why no thread: the inotify descriptor is non-blocking and polled by the
//! daemon's reactor (`AsyncFd`), so an idle watch costs one descriptor.
//!
//! Why the watch comes first: it is set up before the start-up scan of the
//! directory, so every library is either scanned or queued as an event,
//! and none is read half-written by a second listing.
//!
//! Libraries are never unloaded, so a changed or replaced library is not
//! reloaded: it is listed with an error that says a restart is needed.

use std::{
    mem::MaybeUninit,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustix::fs::inotify;
use tokio::{io::unix::AsyncFd, sync::Mutex, task::JoinHandle};

use crate::{config::Config, plugins::PluginSet};

/// An inotify watch on one directory.
pub struct PluginDirWatch {
    dir: PathBuf,
    fd: AsyncFd<OwnedFd>,
}

impl PluginDirWatch {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        inotify::add_watch(&fd, dir, inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::MOVED_TO)?;
        // SAFETY: `fd` is an open inotify descriptor moved into the AsyncFd,
        // which owns it until it is dropped; an OwnedFd always reports the
        // descriptor it was made with.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(PluginDirWatch { dir: dir.to_path_buf(), fd })
    }

    /// Waits for the next libraries written or moved into the directory.
    pub async fn next(&mut self) -> std::io::Result<Vec<PathBuf>> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = inotify::Reader::new(ready.get_inner(), &mut buf);
            let mut found = Vec::new();
            loop {
                match reader.next() {
                    Ok(event) => {
                        if let Some(name) = event.file_name().and_then(|n| n.to_str().ok()) {
                            let path = self.dir.join(name);
                            if path.extension().is_some_and(|x| x == "so") && !found.contains(&path) {
                                found.push(path);
                            }
                        }
                    }
                    Err(rustix::io::Errno::WOULDBLOCK) => {
                        ready.clear_ready();
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if !found.is_empty() {
                return Ok(found);
            }
        }
    }
}

/// Sets up the watch on `plugin_dir`, if there is one. Called before the
/// directory is scanned at start, so that a library written while the
/// daemon starts is either in the scan or in the watch's queue, never
/// missed, and never read before its writer closed it (listing the
/// directory again after start would race a copy in progress).
pub fn watch(config: &Config) -> Option<PluginDirWatch> {
    let dir = crate::daemon::plugin_dir(config)?;
    match PluginDirWatch::new(dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(plugin_dir = %dir.display(), "cannot watch plugin_dir ({e}): libraries added later need a restart");
            None
        }
    }
}

/// Loads what appears in the watched directory, one library at a time.
/// An event for a file the start-up scan already loaded, unchanged, is
/// ignored (`PluginSet::load_library`).
pub fn start(config: Arc<Config>, set: Arc<Mutex<PluginSet>>, mut watch: PluginDirWatch) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let paths = match watch.next().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(plugin_dir = %watch.dir.display(), "watching plugin_dir failed ({e}): libraries added later need a restart");
                    return;
                }
            };
            let mut set = set.lock().await;
            for path in paths {
                set.load_library(&config, &path).await;
            }
        }
    })
}
