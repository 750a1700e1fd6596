//! What both snapshotters share: the [`Snapshotter`] operations over the
//! metadata store ([`MetaStore`]) and a directory per snapshot under
//! `<root>/snapshots/<id>`. A [`Layout`] says what goes in that directory
//! and which mounts it gives (overlay.rs, native.rs).
//!
//! # Crash safety
//!
//! A snapshot's directory and its record must agree after a SIGKILL at any
//! point. The rule: a directory named by a number is a snapshot only if the
//! database has a record with that id; anything else under `snapshots/` is
//! a left-over that [`Snapshotter::cleanup`] removes. Each step keeps it:
//!
//! - Create: the directory is built under a temporary name (`new-…`),
//!   outside the database lock (a native copy can take long). Then one write
//!   transaction re-checks parent and key, takes the next id, inserts the
//!   record and renames the directory to `<id>` before committing. Killed
//!   before the rename: an unrecorded `new-…`. Killed between rename and
//!   commit: an unrecorded `<id>`, and since the id was never committed the
//!   next create takes it again; that create finds the left-over in its way
//!   and moves it aside first (inside its transaction, so nothing else can
//!   own it). A failed create removes what it made.
//! - Remove: the record goes first (one transaction; a refusal changes
//!   nothing), then the directory is renamed to `rm-…` and deleted. Killed
//!   in between: an unrecorded `<id>` whose id is never handed out again.
//! - Commit and label updates touch only the database.
//!
//! Within the process, `busy` holds the names under `snapshots/` that an
//! operation is working on (a create's temporary directory, a removal in
//! progress), so that a concurrent cleanup leaves them alone; its lock also
//! serialises the create transactions with cleanup's scan.
//!
//! Filesystem work and database transactions block, so every operation runs
//! on tokio's blocking pool, never on the async threads.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use crated_plugin_api::{
    snapshots::{Info, Kind, Mount, Snapshotter, Usage},
    tracing,
};

use crate::{
    fsutil,
    storage::{MetaStore, Snapshot, SnapshotError},
};

type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// How one snapshotter lays out and mounts a snapshot's directory.
pub trait Layout: Send + Sync + 'static {
    /// Whether a new snapshot of `kind` on `parent_ids` gets a directory.
    fn has_dir(&self, kind: Kind, parent_ids: &[u64]) -> bool;
    /// Fills `dir` (new, empty, mode 0700, under a temporary name) for a
    /// snapshot of `kind` on the directories of its parents, closest first.
    fn populate(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> io::Result<()>;
    /// The part of a snapshot's directory whose usage is the snapshot's own.
    fn usage_path(&self, dir: &Path) -> PathBuf;
    /// The mounts of an active snapshot or view; `dirs` names directories.
    fn mounts(&self, dirs: &Dirs, s: &Snapshot) -> Vec<Mount>;
    /// What a failed Mounts says it was doing (each of containerd's
    /// snapshotters words it its own way).
    fn mounts_context(&self) -> &'static str;
}

/// Where snapshots live: `<root>/snapshots`.
pub struct Dirs {
    snapshots: PathBuf,
}

impl Dirs {
    /// The directory of snapshot `id`.
    pub fn of(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }
    fn named(&self, name: &str) -> PathBuf {
        self.snapshots.join(name)
    }
}

struct Inner<L> {
    layout: L,
    store: MetaStore,
    dirs: Dirs,
    busy: Mutex<HashSet<String>>,
}

impl<L> Inner<L> {
    fn busy(&self) -> MutexGuard<'_, HashSet<String>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves `path` aside to a fresh `rm-…` name registered as busy.
    fn move_aside(&self, busy: &mut HashSet<String>, path: &Path) -> io::Result<Option<String>> {
        let name = fsutil::unique_name("rm");
        match fsutil::rename_noreplace(path, &self.dirs.named(&name)) {
            Ok(()) => {
                busy.insert(name.clone());
                Ok(Some(name))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes busy entry `name` and releases it; failures are logged (the
    /// entry stays for a later cleanup), as containerd does.
    fn delete_busy(&self, name: &str) {
        let path = self.dirs.named(name);
        if let Err(e) = fsutil::remove_tree(&path) {
            tracing::warn!(path = %path.display(), error = %e, "failed to remove directory");
        }
        self.busy().remove(name);
    }
}

/// A snapshotter: the metadata store plus a [`Layout`].
pub struct Snapshots<L> {
    inner: Arc<Inner<L>>,
}

impl<L: Layout> Snapshots<L> {
    /// Opens the snapshotter at `root`: `metadata.db` and `snapshots/`,
    /// created when missing (mode 0700, as containerd).
    pub fn open(root: &Path, layout: L) -> Result<Snapshots<L>> {
        let mkdir = |p: &Path| -> Result<()> {
            match fs::create_dir(p) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    Err(SnapshotError::io(format!("create {}", p.display()), e))
                }
                Err(_) => Ok(()),
                Ok(()) => fs::set_permissions(p, fs::Permissions::from_mode(0o700))
                    .map_err(|e| SnapshotError::io(format!("chmod {}", p.display()), e)),
            }
        };
        fs::create_dir_all(root).map_err(|e| SnapshotError::io(format!("create {}", root.display()), e))?;
        let store = MetaStore::open(&root.join("metadata.db"))?;
        let snapshots = root.join("snapshots");
        mkdir(&snapshots)?;
        Ok(Snapshots {
            inner: Arc::new(Inner { layout, store, dirs: Dirs { snapshots }, busy: Mutex::new(HashSet::new()) }),
        })
    }

    /// Runs `f` on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner<L>) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(SnapshotError::io("snapshot operation", io::Error::other(e.to_string()))),
        }
    }

    async fn create(&self, kind: Kind, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.blocking(move |i| {
            let s = create(i, kind, &key, &parent, labels)?;
            Ok(i.layout.mounts(&i.dirs, &s))
        })
        .await
    }
}

fn create<L: Layout>(
    i: &Inner<L>,
    kind: Kind,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<Snapshot> {
    // Fail early (before any copy) on a bad parent or a taken key.
    let parents = i.store.check_new(key, parent).map_err(|e| e.context("failed to create snapshot"))?;
    let temp = if i.layout.has_dir(kind, &parents) {
        let name = fsutil::unique_name("new");
        let path = i.dirs.named(&name);
        i.busy().insert(name.clone());
        let made = fs::create_dir(&path)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o700)))
            .and_then(|()| {
                let parent_dirs: Vec<PathBuf> = parents.iter().map(|id| i.dirs.of(*id)).collect();
                i.layout.populate(&path, kind, &parent_dirs)
            });
        if let Err(e) = made {
            i.delete_busy(&name);
            return Err(SnapshotError::io(format!("failed to create prepare snapshot dir {}", path.display()), e));
        }
        Some(name)
    } else {
        None
    };

    let mut busy = i.busy();
    let mut placed = None;
    let mut left_over = None;
    let result = i.store.create(kind, key, parent, labels, &parents, |s| {
        let Some(name) = &temp else { return Ok(()) };
        let target = i.dirs.of(s.id);
        // An unrecorded directory with this id: a create killed between
        // its rename and its commit (see the module comment).
        left_over = i.move_aside(&mut busy, &target).map_err(|e| SnapshotError::io("move aside left-over", e))?;
        fsutil::rename_noreplace(&i.dirs.named(name), &target)
            .map_err(|e| SnapshotError::io(format!("failed to rename to {}", target.display()), e))?;
        placed = Some(target);
        Ok(())
    });
    let mut to_delete: Vec<String> = left_over.into_iter().collect();
    if result.is_err() {
        // The transaction did not commit: take the directory back from its
        // id (another create may take the id once the lock is released).
        if let Some(target) = placed {
            if let Ok(Some(name)) = i.move_aside(&mut busy, &target) {
                to_delete.push(name);
            }
        }
        to_delete.extend(temp.clone());
    } else if let Some(name) = &temp {
        busy.remove(name);
    }
    drop(busy);
    for name in &to_delete {
        i.delete_busy(name);
    }
    result
}

impl<L: Layout> Snapshotter for Snapshots<L> {
    type Error = SnapshotError;

    async fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.blocking(move |i| Ok(i.store.get_info(&key)?.1)).await
    }

    async fn update(&self, info: Info, fieldpaths: Vec<String>) -> Result<Info> {
        self.blocking(move |i| i.store.update(info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_string();
        self.blocking(move |i| {
            let (id, info, usage) = i.store.get_info(&key)?;
            if info.kind != Kind::Active as i32 {
                return Ok(usage);
            }
            let path = i.layout.usage_path(&i.dirs.of(id));
            fsutil::disk_usage(&path).map_err(|e| SnapshotError::io(format!("usage of {}", path.display()), e))
        })
        .await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        self.blocking(move |i| {
            let s = i.store.get_snapshot(&key).map_err(|e| e.context(i.layout.mounts_context()))?;
            Ok(i.layout.mounts(&i.dirs, &s))
        })
        .await
    }

    async fn prepare(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels).await
    }

    async fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels).await
    }

    async fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        let (name, key) = (name.to_string(), key.to_string());
        self.blocking(move |i| {
            let (id, info, _) = i.store.get_info(&key)?;
            // Measured outside the write lock; the store checks that `key`
            // still has this id. Anything but an active snapshot is refused
            // by the store, with containerd's precedence of errors.
            let usage = if info.kind == Kind::Active as i32 {
                let path = i.layout.usage_path(&i.dirs.of(id));
                fsutil::disk_usage(&path).map_err(|e| SnapshotError::io(format!("usage of {}", path.display()), e))?
            } else {
                Usage::default()
            };
            i.store.commit_active(&key, id, &name, usage, labels)
        })
        .await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |i| {
            let (id, _) = i.store.remove(&key)?;
            // The record is gone, so the call succeeded; a directory that
            // cannot be removed now is left for cleanup (logged).
            let aside = i.move_aside(&mut i.busy(), &i.dirs.of(id));
            match aside {
                Ok(Some(name)) => i.delete_busy(&name),
                Ok(None) => {}
                Err(e) => tracing::warn!(id, error = %e, "failed to move removed snapshot aside"),
            }
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Info>> {
        self.blocking(|i| i.store.list()).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.blocking(|i| {
            let doomed = {
                let mut busy = i.busy();
                let ids = i.store.ids()?;
                let mut doomed = Vec::new();
                let entries = fs::read_dir(&i.dirs.snapshots)
                    .map_err(|e| SnapshotError::io(format!("read {}", i.dirs.snapshots.display()), e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| SnapshotError::io("read snapshots", e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if busy.contains(&name) || name.parse::<u64>().is_ok_and(|id| ids.contains(&id)) {
                        continue;
                    }
                    // Moved aside under the lock: a create may reuse a
                    // left-over id as soon as the lock is released.
                    match i.move_aside(&mut busy, &entry.path()) {
                        Ok(Some(n)) => doomed.push(n),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(name, error = %e, "cleanup: cannot move left-over aside"),
                    }
                }
                doomed
            };
            for name in &doomed {
                i.delete_busy(name);
            }
            Ok(())
        })
        .await
    }
}

/// [`Dirs`] at `snapshots`, for the layouts' unit tests.
#[cfg(test)]
pub(crate) fn test_dirs(snapshots: &Path) -> Dirs {
    Dirs { snapshots: snapshots.to_path_buf() }
}
