//! A small but real snapshotter for the metadata plugin's tests, written
//! against the SDK's `Snapshotter` trait: each snapshot is a directory
//! (a full copy of its parent's tree, as the native snapshotter keeps
//! them) mounted with a bind mount. Its state lives on disk under the
//! plugin's root, so it survives a daemon restart:
//! `snapshots/<n>/fs/` and `snapshots/<n>/info.json`, written last (by
//! rename) so a directory without `info.json` is a half-made snapshot that
//! the next start deletes.
//!
//! Two plugins come from this one library: `dirsnap`, and `faulty`, the
//! same snapshotter except that a call on a key whose own part (after the
//! metadata plugin's `<ns>/<seq>/`) starts with `panic-` panics.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::SystemTime,
};

use crated_plugin_api::{
    export_snapshotters,
    snapshots::{Info, Kind, Mount, Snapshotter, SnapshotterPlugin, Usage},
    InitCtx, PluginError, Status,
};
use serde_json::{json, Value};

#[derive(Clone)]
struct Meta {
    dir: u64,
    parent: String,
    kind: Kind,
    labels: HashMap<String, String>,
    created: SystemTime,
    updated: SystemTime,
}

struct DirSnap {
    root: PathBuf,
    /// Panic on `panic-` keys (the `faulty` plugin).
    faulty: bool,
    next: AtomicU64,
    snapshots: Mutex<HashMap<String, Meta>>,
}

fn io(e: std::io::Error) -> Status {
    Status::internal(format!("dirsnap: {e}"))
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn from_secs(s: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(s.max(0.0))
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::View => "view",
        Kind::Active => "active",
        _ => "committed",
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

fn usage_of(p: &Path, u: &mut Usage) -> std::io::Result<()> {
    for entry in std::fs::read_dir(p)? {
        let entry = entry?;
        let md = entry.metadata()?;
        u.inodes += 1;
        u.size += md.len() as i64;
        if md.is_dir() {
            usage_of(&entry.path(), u)?;
        }
    }
    Ok(())
}

impl DirSnap {
    fn open(root: PathBuf, faulty: bool) -> std::io::Result<DirSnap> {
        let base = root.join("snapshots");
        std::fs::create_dir_all(&base)?;
        let mut snapshots = HashMap::new();
        let mut next = 0;
        for entry in std::fs::read_dir(&base)? {
            let entry = entry?;
            let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
            next = next.max(n);
            let info = match std::fs::read(entry.path().join("info.json")) {
                Ok(b) => b,
                Err(_) => {
                    // Half made: never answered as created.
                    std::fs::remove_dir_all(entry.path())?;
                    continue;
                }
            };
            let v: Value = serde_json::from_slice(&info).map_err(std::io::Error::other)?;
            let kind = match v["kind"].as_str() {
                Some("view") => Kind::View,
                Some("active") => Kind::Active,
                _ => Kind::Committed,
            };
            let labels = v["labels"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            snapshots.insert(
                v["key"].as_str().unwrap_or_default().to_string(),
                Meta {
                    dir: n,
                    parent: v["parent"].as_str().unwrap_or_default().to_string(),
                    kind,
                    labels,
                    created: from_secs(v["created"].as_f64().unwrap_or_default()),
                    updated: from_secs(v["updated"].as_f64().unwrap_or_default()),
                },
            );
        }
        Ok(DirSnap { root, faulty, next: AtomicU64::new(next + 1), snapshots: Mutex::new(snapshots) })
    }

    fn dir(&self, n: u64) -> PathBuf {
        self.root.join("snapshots").join(n.to_string())
    }

    /// Writes `info.json` by rename: the snapshot's commit point.
    fn save(&self, key: &str, m: &Meta) -> std::io::Result<()> {
        let v = json!({
            "key": key, "parent": m.parent, "kind": kind_str(m.kind), "labels": m.labels,
            "created": secs(m.created), "updated": secs(m.updated),
        });
        let tmp = self.dir(m.dir).join("info.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&v)?)?;
        std::fs::rename(tmp, self.dir(m.dir).join("info.json"))
    }

    fn check_fault(&self, key: &str) {
        let own = key.splitn(3, '/').nth(2).unwrap_or(key);
        if self.faulty && own.starts_with("panic-") {
            panic!("faulty snapshotter: asked to panic on {key}");
        }
    }

    fn info(key: &str, m: &Meta) -> Info {
        Info {
            name: key.into(),
            parent: m.parent.clone(),
            kind: m.kind as i32,
            created_at: Some(timestamp(m.created)),
            updated_at: Some(timestamp(m.updated)),
            labels: m.labels.clone(),
        }
    }

    fn get(&self, key: &str) -> Result<Meta, Status> {
        self.snapshots
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("snapshot {key} does not exist")))
    }

    fn mounts_of(&self, m: &Meta) -> Vec<Mount> {
        let rw = if m.kind == Kind::View { "ro" } else { "rw" };
        vec![Mount {
            r#type: "bind".into(),
            source: self.dir(m.dir).join("fs").display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), rw.into()],
        }]
    }

    fn create(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.check_fault(key);
        if key.is_empty() {
            return Err(Status::invalid_argument("dirsnap: empty key"));
        }
        let mut map = self.snapshots.lock().unwrap();
        if map.contains_key(key) {
            return Err(Status::already_exists(format!("snapshot {key}: already exists")));
        }
        let from = if parent.is_empty() {
            None
        } else {
            let p = map.get(parent).ok_or_else(|| Status::not_found(format!("parent {parent} does not exist")))?;
            if p.kind != Kind::Committed {
                return Err(Status::invalid_argument(format!("parent {parent:?} is not committed snapshot")));
            }
            Some(self.dir(p.dir).join("fs"))
        };
        let now = SystemTime::now();
        let m = Meta {
            dir: self.next.fetch_add(1, Ordering::SeqCst),
            parent: parent.into(),
            kind,
            labels,
            created: now,
            updated: now,
        };
        let fs = self.dir(m.dir).join("fs");
        match &from {
            Some(src) => copy_tree(src, &fs).map_err(io)?,
            None => std::fs::create_dir_all(&fs).map_err(io)?,
        }
        self.save(key, &m).map_err(io)?;
        let mounts = self.mounts_of(&m);
        map.insert(key.into(), m);
        Ok(mounts)
    }
}

impl Snapshotter for DirSnap {
    type Error = Status;

    async fn stat(&self, key: &str) -> Result<Info, Status> {
        self.check_fault(key);
        Ok(Self::info(key, &self.get(key)?))
    }

    async fn update(&self, info: Info, fieldpaths: Vec<String>) -> Result<Info, Status> {
        self.check_fault(&info.name);
        let mut map = self.snapshots.lock().unwrap();
        let m = map.get_mut(&info.name).ok_or_else(|| Status::not_found(format!("snapshot {}", info.name)))?;
        if fieldpaths.is_empty() || fieldpaths.iter().any(|p| p == "labels") {
            m.labels = info.labels.clone();
        }
        for p in &fieldpaths {
            if let Some(k) = p.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => m.labels.insert(k.into(), v.clone()),
                    None => m.labels.remove(k),
                };
            } else if p != "labels" {
                return Err(Status::invalid_argument(format!("cannot update {p:?}")));
            }
        }
        m.updated = SystemTime::now();
        let m = m.clone();
        self.save(&info.name, &m).map_err(io)?;
        Ok(Self::info(&info.name, &m))
    }

    async fn usage(&self, key: &str) -> Result<Usage, Status> {
        self.check_fault(key);
        let m = self.get(key)?;
        let mut u = Usage::default();
        usage_of(&self.dir(m.dir).join("fs"), &mut u).map_err(io)?;
        Ok(u)
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Status> {
        self.check_fault(key);
        let m = self.get(key)?;
        if m.kind == Kind::Committed {
            return Err(Status::failed_precondition(format!("requested snapshot {key} not active or view")));
        }
        Ok(self.mounts_of(&m))
    }

    async fn prepare(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
        self.create(key, parent, Kind::Active, labels)
    }

    async fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
        self.create(key, parent, Kind::View, labels)
    }

    async fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<(), Status> {
        self.check_fault(key);
        let mut map = self.snapshots.lock().unwrap();
        if map.contains_key(name) {
            return Err(Status::already_exists(format!("committed snapshot {name}: already exists")));
        }
        let mut m = map.get(key).cloned().ok_or_else(|| Status::not_found(format!("snapshot {key}")))?;
        if m.kind != Kind::Active {
            return Err(Status::failed_precondition(format!("snapshot {key:?} is not active")));
        }
        m.kind = Kind::Committed;
        m.labels = labels;
        m.updated = SystemTime::now();
        self.save(name, &m).map_err(io)?;
        map.remove(key);
        map.insert(name.into(), m);
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), Status> {
        self.check_fault(key);
        let mut map = self.snapshots.lock().unwrap();
        let m = map.get(key).cloned().ok_or_else(|| Status::not_found(format!("snapshot {key}")))?;
        if map.values().any(|c| c.parent == key) {
            return Err(Status::failed_precondition("cannot remove snapshot with child"));
        }
        // info.json first: a crash leaves a half-removed directory that
        // the next start deletes, never a snapshot without its files.
        std::fs::remove_file(self.dir(m.dir).join("info.json")).map_err(io)?;
        std::fs::remove_dir_all(self.dir(m.dir)).map_err(io)?;
        map.remove(key);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Info>, Status> {
        Ok(self.snapshots.lock().unwrap().iter().map(|(k, m)| Self::info(k, m)).collect())
    }
}

struct Dirsnap(DirSnap);
struct Faulty(DirSnap);

macro_rules! delegate {
    ($t:ident, $id:literal, $faulty:literal) => {
        impl Snapshotter for $t {
            type Error = Status;
            async fn stat(&self, key: &str) -> Result<Info, Status> {
                self.0.stat(key).await
            }
            async fn update(&self, info: Info, paths: Vec<String>) -> Result<Info, Status> {
                self.0.update(info, paths).await
            }
            async fn usage(&self, key: &str) -> Result<Usage, Status> {
                self.0.usage(key).await
            }
            async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Status> {
                self.0.mounts(key).await
            }
            async fn prepare(&self, k: &str, p: &str, l: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
                self.0.prepare(k, p, l).await
            }
            async fn view(&self, k: &str, p: &str, l: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
                self.0.view(k, p, l).await
            }
            async fn commit(&self, n: &str, k: &str, l: HashMap<String, String>) -> Result<(), Status> {
                self.0.commit(n, k, l).await
            }
            async fn remove(&self, key: &str) -> Result<(), Status> {
                self.0.remove(key).await
            }
            async fn list(&self) -> Result<Vec<Info>, Status> {
                self.0.list().await
            }
        }

        impl SnapshotterPlugin for $t {
            const ID: &'static str = $id;
            async fn new(ctx: InitCtx) -> Result<Self, PluginError> {
                Ok($t(DirSnap::open(ctx.root, $faulty).map_err(PluginError::failed)?))
            }
        }
    };
}

delegate!(Dirsnap, "dirsnap", false);
delegate!(Faulty, "faulty", true);

export_snapshotters!(Dirsnap, Faulty);
