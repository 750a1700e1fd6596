//! `io.containerd.snapshotter.v1.example`: a snapshotter written outside the
//! crated repository against the SDK's `Snapshotter` trait. One crate, two
//! deployments: this library is a `.so` for crated's `plugin_dir`
//! (`export_snapshotters!`), and `src/main.rs` serves the same snapshotter
//! as a proxy plugin on a unix socket (for crated or containerd).
//!
//! How it stores snapshots, simply but correctly:
//! - each snapshot is a directory `<root>/snapshots/<n>`, a full copy of
//!   its parent's (as containerd's `native` snapshotter does), mounted with
//!   a bind mount (`ro` for a view);
//! - the records (kind, parent, labels, times, usage) live in
//!   `<root>/metadata.json`, replaced atomically (write, fsync, rename)
//!   after every change; directories are created before and removed after
//!   the record, so a crash leaves at worst an unreferenced directory, which
//!   `Cleanup` removes;
//! - errors carry containerd's kinds (see [`Error`]).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{self, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use crated_plugin_api::{
    export_snapshotters,
    snapshots::{Info, Kind, Mount, Snapshotter, SnapshotterPlugin, Usage},
    InitCtx, PluginError, Status,
};
use serde::{Deserialize, Serialize};

/// Why a call failed; the conversion into [`Status`] gives each its
/// containerd error kind, which callers act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0}: not found")]
    NotFound(String),
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    #[error("parent snapshot {0} does not exist: not found")]
    MissingParent(String),
    #[error("parent {0:?} is not a committed snapshot: invalid argument")]
    ParentNotCommitted(String),
    #[error("snapshot {0} is not active: failed precondition")]
    NotActive(String),
    #[error("snapshot {0} is not active or a view: failed precondition")]
    NoMounts(String),
    #[error("cannot remove snapshot {0} with children: failed precondition")]
    HasChildren(String),
    #[error("{0}: invalid argument")]
    Invalid(String),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("metadata {}: {source}", path.display())]
    Metadata { path: PathBuf, source: serde_json::Error },
    #[error("snapshotter task failed: {0}")]
    Task(String),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let m = e.to_string();
        match e {
            Error::NotFound(_) | Error::MissingParent(_) => Status::not_found(m),
            Error::AlreadyExists(_) => Status::already_exists(m),
            Error::ParentNotCommitted(_) | Error::Invalid(_) => Status::invalid_argument(m),
            Error::NotActive(_) | Error::NoMounts(_) | Error::HasChildren(_) => Status::failed_precondition(m),
            Error::Io { .. } | Error::Metadata { .. } | Error::Task(_) => Status::internal(m),
        }
    }
}

fn io_at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { what, path: path.to_path_buf(), source }
}

/// The persisted kinds (`Kind` is a prost enum, stored by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredKind {
    View,
    Active,
    Committed,
}

impl From<StoredKind> for Kind {
    fn from(k: StoredKind) -> Kind {
        match k {
            StoredKind::View => Kind::View,
            StoredKind::Active => Kind::Active,
            StoredKind::Committed => Kind::Committed,
        }
    }
}

/// One snapshot's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Its directory, `snapshots/<id>`.
    id: u64,
    kind: StoredKind,
    parent: String,
    labels: BTreeMap<String, String>,
    /// Unix times in nanoseconds.
    created: u128,
    updated: u128,
    /// Measured at commit; an active snapshot is measured when asked.
    usage: (i64, i64),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Records {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

fn now() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn timestamp(nanos: u128) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (nanos / 1_000_000_000) as i64, nanos: (nanos % 1_000_000_000) as i32 }
}

/// The snapshotter's state on disk; every method runs synchronously under
/// the snapshotter's lock (see [`ExampleSnapshotter`]).
struct Store {
    root: PathBuf,
    records: Records,
}

impl Store {
    fn open(root: &Path) -> Result<Store, Error> {
        fs::create_dir_all(root.join("snapshots")).map_err(io_at("cannot create", root))?;
        let path = root.join("metadata.json");
        let records = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Metadata { path, source })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Records::default(),
            Err(e) => return Err(io_at("cannot read", &path)(e)),
        };
        Ok(Store { root: root.to_path_buf(), records })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Writes the records atomically.
    fn save(&self) -> Result<(), Error> {
        let path = self.root.join("metadata.json");
        let tmp = self.root.join("metadata.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.records)
            .map_err(|source| Error::Metadata { path: path.clone(), source })?;
        let mut f = fs::File::create(&tmp).map_err(io_at("cannot create", &tmp))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io_at("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_at("cannot replace", &path))
    }

    fn get(&self, key: &str) -> Result<&Record, Error> {
        self.records.snapshots.get(key).ok_or_else(|| Error::NotFound(key.into()))
    }

    fn info(key: &str, r: &Record) -> Info {
        Info {
            name: key.into(),
            parent: r.parent.clone(),
            kind: Kind::from(r.kind) as i32,
            created_at: Some(timestamp(r.created)),
            updated_at: Some(timestamp(r.updated)),
            labels: r.labels.clone().into_iter().collect(),
        }
    }

    fn mounts(&self, key: &str, r: &Record) -> Result<Vec<Mount>, Error> {
        let mode = match r.kind {
            StoredKind::Active => "rw",
            StoredKind::View => "ro",
            StoredKind::Committed => return Err(Error::NoMounts(key.into())),
        };
        Ok(vec![Mount {
            r#type: "bind".into(),
            source: self.dir(r.id).display().to_string(),
            target: String::new(),
            options: vec![mode.into(), "rbind".into()],
        }])
    }

    fn create(
        &mut self,
        kind: StoredKind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        if key.is_empty() {
            return Err(Error::Invalid("snapshot key must not be empty".into()));
        }
        if self.records.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists(key.into()));
        }
        let from = if parent.is_empty() {
            None
        } else {
            let p = self.records.snapshots.get(parent).ok_or_else(|| Error::MissingParent(parent.into()))?;
            if p.kind != StoredKind::Committed {
                return Err(Error::ParentNotCommitted(parent.into()));
            }
            Some(self.dir(p.id))
        };
        let id = self.records.next_id;
        self.records.next_id += 1;
        let dir = self.dir(id);
        // A left-over of a crash may hold this id's directory.
        let _ = fs::remove_dir_all(&dir);
        match &from {
            Some(src) => copy_dir(src, &dir)?,
            None => {
                fs::create_dir(&dir).map_err(io_at("cannot create", &dir))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_at("cannot chmod", &dir))?;
            }
        }
        let t = now();
        let r = Record {
            id,
            kind,
            parent: parent.into(),
            labels: labels.into_iter().collect(),
            created: t,
            updated: t,
            usage: (0, 0),
        };
        let mounts = self.mounts(key, &r)?;
        self.records.snapshots.insert(key.into(), r);
        if let Err(e) = self.save() {
            self.records.snapshots.remove(key);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(mounts)
    }

    fn commit(&mut self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::Invalid("snapshot name must not be empty".into()));
        }
        let r = self.get(key)?;
        if r.kind != StoredKind::Active {
            return Err(Error::NotActive(key.into()));
        }
        if self.records.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists(name.into()));
        }
        let usage = du(&self.dir(r.id))?;
        let active = self.records.snapshots.remove(key).ok_or_else(|| Error::NotFound(key.into()))?;
        let t = now();
        let committed = Record {
            kind: StoredKind::Committed,
            labels: labels.into_iter().collect(),
            usage: (usage.size, usage.inodes),
            created: t,
            updated: t,
            ..active.clone()
        };
        self.records.snapshots.insert(name.into(), committed);
        if let Err(e) = self.save() {
            self.records.snapshots.remove(name);
            self.records.snapshots.insert(key.into(), active);
            return Err(e);
        }
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<(), Error> {
        let id = self.get(key)?.id;
        if self.records.snapshots.values().any(|r| r.parent == key) {
            return Err(Error::HasChildren(key.into()));
        }
        let r = self.records.snapshots.remove(key).ok_or_else(|| Error::NotFound(key.into()))?;
        if let Err(e) = self.save() {
            self.records.snapshots.insert(key.into(), r);
            return Err(e);
        }
        let dir = self.dir(id);
        fs::remove_dir_all(&dir).map_err(io_at("cannot remove", &dir))
    }

    fn update(&mut self, info: Info, fieldpaths: Vec<String>) -> Result<Info, Error> {
        let key = info.name.clone();
        let current = self.get(&key)?;
        let mut labels = current.labels.clone();
        if fieldpaths.is_empty() {
            labels = info.labels.clone().into_iter().collect();
        }
        for path in &fieldpaths {
            if path == "labels" {
                labels = info.labels.clone().into_iter().collect();
            } else if let Some(label) = path.strip_prefix("labels.") {
                match info.labels.get(label).filter(|v| !v.is_empty()) {
                    Some(v) => labels.insert(label.into(), v.clone()),
                    None => labels.remove(label),
                };
            } else {
                return Err(Error::Invalid(format!("cannot update {path:?} field on snapshot {key:?}")));
            }
        }
        let before = current.clone();
        let r = self.records.snapshots.get_mut(&key).ok_or_else(|| Error::NotFound(key.clone()))?;
        r.labels = labels;
        r.updated = now();
        let info = Store::info(&key, r);
        if let Err(e) = self.save() {
            self.records.snapshots.insert(key, before);
            return Err(e);
        }
        Ok(info)
    }

    fn usage(&self, key: &str) -> Result<Usage, Error> {
        let r = self.get(key)?;
        match r.kind {
            StoredKind::Active => du(&self.dir(r.id)),
            StoredKind::Committed => Ok(Usage { size: r.usage.0, inodes: r.usage.1 }),
            StoredKind::View => Ok(Usage::default()),
        }
    }

    /// Removes the directories no record refers to.
    fn cleanup(&self) -> Result<(), Error> {
        let base = self.root.join("snapshots");
        let used: std::collections::HashSet<String> =
            self.records.snapshots.values().map(|r| r.id.to_string()).collect();
        for entry in fs::read_dir(&base).map_err(io_at("cannot read", &base))? {
            let entry = entry.map_err(io_at("cannot read", &base))?;
            if !used.contains(entry.file_name().to_string_lossy().as_ref()) {
                fs::remove_dir_all(entry.path()).map_err(io_at("cannot remove", &entry.path()))?;
            }
        }
        Ok(())
    }
}

/// Copies a directory tree: files, directories, symlinks, with their modes
/// and owners.
fn copy_dir(src: &Path, dst: &Path) -> Result<(), Error> {
    let meta = fs::symlink_metadata(src).map_err(io_at("cannot stat", src))?;
    fs::create_dir(dst).map_err(io_at("cannot create", dst))?;
    for entry in fs::read_dir(src).map_err(io_at("cannot read", src))? {
        let entry = entry.map_err(io_at("cannot read", src))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let ft = entry.file_type().map_err(io_at("cannot stat", &from))?;
        if ft.is_dir() {
            copy_dir(&from, &to)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io_at("cannot read link", &from))?;
            std::os::unix::fs::symlink(target, &to).map_err(io_at("cannot create link", &to))?;
            let m = fs::symlink_metadata(&from).map_err(io_at("cannot stat", &from))?;
            std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid())).map_err(io_at("cannot chown", &to))?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(io_at("cannot copy", &from))?;
            let m = fs::metadata(&from).map_err(io_at("cannot stat", &from))?;
            std::os::unix::fs::chown(&to, Some(m.uid()), Some(m.gid())).map_err(io_at("cannot chown", &to))?;
        }
        // Device nodes, fifos and sockets are not copied by this example.
    }
    fs::set_permissions(dst, meta.permissions()).map_err(io_at("cannot chmod", dst))?;
    std::os::unix::fs::chown(dst, Some(meta.uid()), Some(meta.gid())).map_err(io_at("cannot chown", dst))
}

/// Bytes (in allocated blocks) and inodes under `dir`, itself included.
fn du(dir: &Path) -> Result<Usage, Error> {
    let meta = fs::symlink_metadata(dir).map_err(io_at("cannot stat", dir))?;
    let mut u = Usage { size: meta.blocks() as i64 * 512, inodes: 1 };
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(io_at("cannot read", dir))? {
            let sub = du(&entry.map_err(io_at("cannot read", dir))?.path())?;
            u.size += sub.size;
            u.inodes += sub.inodes;
        }
    }
    Ok(u)
}

/// The snapshotter: a [`Store`] behind a lock, each call run on a blocking
/// thread (copies and walks are long file-system work).
#[derive(Clone)]
pub struct ExampleSnapshotter {
    store: Arc<Mutex<Store>>,
}

impl ExampleSnapshotter {
    /// Opens (or creates) a snapshotter rooted at `root`.
    pub fn open(root: &Path) -> Result<ExampleSnapshotter, Error> {
        Ok(ExampleSnapshotter { store: Arc::new(Mutex::new(Store::open(root)?)) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // Poisoned only by a panic inside a call; every change to the
            // records is undone when its save fails, so they stay usable.
            let mut guard = store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

impl Snapshotter for ExampleSnapshotter {
    type Error = Error;

    async fn stat(&self, key: &str) -> Result<Info, Error> {
        let key = key.to_string();
        self.with(move |s| Ok(Store::info(&key, s.get(&key)?))).await
    }

    async fn update(&self, info: Info, fieldpaths: Vec<String>) -> Result<Info, Error> {
        self.with(move |s| s.update(info, fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage, Error> {
        let key = key.to_string();
        self.with(move |s| s.usage(&key)).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        let key = key.to_string();
        self.with(move |s| {
            let r = s.get(&key)?;
            s.mounts(&key, r)
        })
        .await
    }

    async fn prepare(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.with(move |s| s.create(StoredKind::Active, &key, &parent, labels)).await
    }

    async fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Error> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.with(move |s| s.create(StoredKind::View, &key, &parent, labels)).await
    }

    async fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<(), Error> {
        let (name, key) = (name.to_string(), key.to_string());
        self.with(move |s| s.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: &str) -> Result<(), Error> {
        let key = key.to_string();
        self.with(move |s| s.remove(&key)).await
    }

    async fn list(&self) -> Result<Vec<Info>, Error> {
        self.with(|s| Ok(s.records.snapshots.iter().map(|(k, r)| Store::info(k, r)).collect())).await
    }

    async fn cleanup(&self) -> Result<(), Error> {
        self.with(|s| s.cleanup()).await
    }
}

impl SnapshotterPlugin for ExampleSnapshotter {
    const ID: &'static str = "example";

    async fn new(ctx: InitCtx) -> Result<Self, PluginError> {
        ExampleSnapshotter::open(&ctx.root).map_err(PluginError::failed)
    }
}

export_snapshotters!(ExampleSnapshotter);
