//! The metadata of snapshots, shared by both snapshotters: which keys exist,
//! their numeric ids (the names of their directories), kinds, parents,
//! labels, times and the usage recorded at commit. This is containerd's
//! `snapshots/storage` (metastore.go, bolt.go) on redb, in one file
//! `<root>/metadata.db`; every operation is one transaction.
//!
//! | table      | key                     | value                         |
//! |------------|-------------------------|-------------------------------|
//! | `meta`     | `"schema"`, `"next_id"` | u64                           |
//! | `snapshots`| snapshot key            | JSON [`Record`]               |
//! | `children` | (parent id, child id)   | the child's key               |
//!
//! Ids come from `next_id`, which only grows and is stored in the same
//! transaction as the record that takes it: an id is never handed out twice
//! once committed. An id that was taken by a transaction that did not commit
//! is handed out again; the layouts rely on that rule (see `layout.rs`).
//!
//! [`SnapshotError`] is the one error type of the crate: a failure of one of
//! containerd's kinds is plugin-api's [`Error`], whose conversion to
//! [`Status`] gives the gRPC code; the database and I/O failures are Unknown.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
};

use crated_plugin_api::{
    snapshots::{Info, Kind, Usage},
    Error, ErrorKind, Status,
};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(u64, u64), &str> = TableDefinition::new("children");

/// Bumped whenever the layout above changes incompatibly.
pub const SCHEMA_VERSION: u64 = 1;

/// Every failure of a snapshotter: a failure of one of containerd's errdefs
/// kinds, or one of the metadata database or the file system (of no known
/// kind: containerd's errdefs turn those into Unknown).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Kind(#[from] Error),
    #[error("metadata database: {0}")]
    Db(Box<redb::Error>),
    #[error("metadata database: corrupt record of snapshot {key:?}: {message}")]
    Corrupt { key: String, message: String },
    #[error("metadata database {path}: schema version {found}, this plugin reads version {SCHEMA_VERSION}")]
    Schema { path: String, found: u64 },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl SnapshotError {
    /// Prefixes the message with what was being done, keeping the kind
    /// (containerd's snapshotters wrap their storage errors the same way,
    /// and clients print the whole chain).
    pub fn context(self, what: &str) -> SnapshotError {
        match self {
            SnapshotError::Kind(e) => SnapshotError::Kind(e.context(what)),
            other => other,
        }
    }

    /// An I/O failure with what was being done.
    pub fn io(context: impl std::fmt::Display, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io { context: context.to_string(), source }
    }

    /// The kind of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::Kind(e) => e.kind(),
            _ => ErrorKind::Unknown,
        }
    }
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        match e {
            SnapshotError::Kind(e) => e.into(),
            other => Error::unknown(other.to_string()).into(),
        }
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for SnapshotError {
            fn from(e: $t) -> SnapshotError {
                SnapshotError::Db(Box::new(e.into()))
            }
        }
    )*};
}
redb_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// One snapshot as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    /// [`Kind`] as its protobuf number.
    pub kind: i32,
    /// The key of the parent; empty for none.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch, UTC.
    pub created: i64,
    pub updated: i64,
    /// Usage, recorded at commit (zero for active snapshots and views).
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub inodes: i64,
}

impl Record {
    fn info(&self, name: &str) -> Info {
        Info {
            name: name.into(),
            parent: self.parent.clone(),
            kind: self.kind,
            created_at: Some(timestamp(self.created)),
            updated_at: Some(timestamp(self.updated)),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

/// An active snapshot or view as its layout needs it: its id, kind and the
/// ids of its parents, closest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
}

fn timestamp(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: nanos.div_euclid(1_000_000_000), nanos: nanos.rem_euclid(1_000_000_000) as i32 }
}

fn now_nanos() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Labels as stored: containerd drops labels whose value is empty.
fn labels_of(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

fn read<T: ReadableTable<&'static str, &'static [u8]>>(table: &T, key: &str) -> Result<Option<Record>> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| SnapshotError::Corrupt { key: key.into(), message: e.to_string() }),
    }
}

fn write(txn: &WriteTransaction, key: &str, r: &Record) -> Result<()> {
    let bytes = serde_json::to_vec(r).expect("records always serialise");
    txn.open_table(SNAPSHOTS)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// The ids of `parent` and its ancestors, closest first.
fn chain<T: ReadableTable<&'static str, &'static [u8]>>(table: &T, parent: &str) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut next = parent.to_string();
    while !next.is_empty() {
        let r = read(table, &next)?.ok_or_else(|| Error::not_found(format!("missing parent {next:?}")))?;
        ids.push(r.id);
        next = r.parent;
    }
    Ok(ids)
}

/// The checks of a new snapshot, in containerd's order: the parent exists
/// and is committed, then the key is free. Returns the parent chain.
fn check_new<T: ReadableTable<&'static str, &'static [u8]>>(table: &T, key: &str, parent: &str) -> Result<Vec<u64>> {
    if key.is_empty() {
        return Err(Error::invalid_argument("snapshot key must not be empty").into());
    }
    if !parent.is_empty() {
        let p = read(table, parent)?.ok_or_else(|| Error::not_found(format!("missing parent {parent:?}")))?;
        if p.kind != Kind::Committed as i32 {
            return Err(Error::invalid_argument(format!("parent {parent:?} is not committed snapshot")).into());
        }
    }
    if table.get(key)?.is_some() {
        return Err(Error::already_exists(format!("snapshot {key}")).into());
    }
    chain(table, parent)
}

/// The metadata store of one snapshotter. Every method blocks: async code
/// calls it from `spawn_blocking`.
pub struct MetaStore {
    db: Database,
}

impl MetaStore {
    /// Opens (or creates) the database. redb locks the file, so a second
    /// daemon on the same root fails here instead of sharing it.
    pub fn open(path: &Path) -> Result<MetaStore> {
        let db = Database::create(path)?;
        // Labels may carry anything; containerd keeps the file to root.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| SnapshotError::io(format!("chmod {}", path.display()), e))?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                    meta.insert("next_id", 1)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => return Err(SnapshotError::Schema { path: path.display().to_string(), found: v }),
            }
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(CHILDREN)?;
        }
        txn.commit()?;
        Ok(MetaStore { db })
    }

    fn get(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_read()?;
        read(&txn.open_table(SNAPSHOTS)?, key)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key} does not exist")).into())
    }

    /// A snapshot's id, info and recorded usage.
    pub fn get_info(&self, key: &str) -> Result<(u64, Info, Usage)> {
        let r = self.get(key)?;
        Ok((r.id, r.info(key), Usage { size: r.size, inodes: r.inodes }))
    }

    /// An active snapshot or a view, with its parent chain.
    pub fn get_snapshot(&self, key: &str) -> Result<Snapshot> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let r = read(&table, key)?.ok_or_else(|| Error::not_found(format!("snapshot {key} does not exist")))?;
        let kind = Kind::try_from(r.kind).unwrap_or(Kind::Unknown);
        if kind != Kind::Active && kind != Kind::View {
            return Err(Error::failed_precondition(format!("requested snapshot {key} not active or view")).into());
        }
        Ok(Snapshot { id: r.id, kind, parent_ids: chain(&table, &r.parent)? })
    }

    /// Checks that `key` could be created on `parent` now, and returns the
    /// parent chain (closest first). [`MetaStore::create`] checks again.
    pub fn check_new(&self, key: &str, parent: &str) -> Result<Vec<u64>> {
        let txn = self.db.begin_read()?;
        check_new(&txn.open_table(SNAPSHOTS)?, key, parent)
    }

    /// Records a new active snapshot or view. `expected_parents` is the
    /// chain the caller prepared the directory for: a parent removed or
    /// replaced since then fails the call. `place` runs inside the
    /// transaction once the id is known; the record commits only if it
    /// succeeds.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        expected_parents: &[u64],
        place: impl FnOnce(&Snapshot) -> Result<()>,
    ) -> Result<Snapshot> {
        if kind != Kind::Active && kind != Kind::View {
            return Err(Error::invalid_argument(format!(
                "snapshot type {kind:?} invalid; only snapshots of type Active or View can be created"
            ))
            .into());
        }
        let txn = self.db.begin_write()?;
        let parent_ids = check_new(&txn.open_table(SNAPSHOTS)?, key, parent)?;
        if parent_ids != expected_parents {
            return Err(
                Error::failed_precondition(format!("parent {parent:?} changed while {key} was prepared")).into()
            );
        }
        let id = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_id", id + 1)?;
            id
        };
        let now = now_nanos();
        let record = Record {
            id,
            kind: kind as i32,
            parent: parent.into(),
            labels: labels_of(labels),
            created: now,
            updated: now,
            ..Default::default()
        };
        write(&txn, key, &record)?;
        if let Some(&pid) = parent_ids.first() {
            txn.open_table(CHILDREN)?.insert((pid, id), key)?;
        }
        let s = Snapshot { id, kind, parent_ids };
        place(&s)?;
        txn.commit()?;
        Ok(s)
    }

    /// The id of `key`, for the caller to measure its usage before
    /// [`MetaStore::commit_active`].
    pub fn id_of(&self, key: &str) -> Result<u64> {
        Ok(self.get(key)?.id)
    }

    /// Turns active snapshot `key` (whose id must still be `id`) into
    /// committed snapshot `name` with `usage`; the labels are replaced, not
    /// inherited, and the times restart, as containerd does.
    pub fn commit_active(
        &self,
        key: &str,
        id: u64,
        name: &str,
        usage: Usage,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid_argument("snapshot name must not be empty").into());
        }
        let txn = self.db.begin_write()?;
        {
            let table = txn.open_table(SNAPSHOTS)?;
            if table.get(name)?.is_some() {
                return Err(Error::already_exists(format!("committed snapshot {name}")).into());
            }
        }
        let mut r = read(&txn.open_table(SNAPSHOTS)?, key)?
            .ok_or_else(|| Error::not_found(format!("failed to get active snapshot {key:?}")))?;
        if r.kind != Kind::Active as i32 {
            return Err(Error::failed_precondition(format!("snapshot {key:?} is not active")).into());
        }
        if r.id != id {
            return Err(Error::failed_precondition(format!("snapshot {key:?} was replaced while committing")).into());
        }
        r.kind = Kind::Committed as i32;
        r.created = now_nanos();
        r.updated = r.created;
        r.labels = labels_of(labels);
        r.size = usage.size;
        r.inodes = usage.inodes;
        txn.open_table(SNAPSHOTS)?.remove(key)?;
        write(&txn, name, &r)?;
        if !r.parent.is_empty() {
            let pid = read(&txn.open_table(SNAPSHOTS)?, &r.parent)?
                .ok_or_else(|| Error::not_found(format!("missing parent {:?} of snapshot {key:?}", r.parent)))?
                .id;
            txn.open_table(CHILDREN)?.insert((pid, r.id), name)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes the record of `key`; a snapshot with children is refused and
    /// nothing changes. Returns the id and kind it had.
    pub fn remove(&self, key: &str) -> Result<(u64, Kind)> {
        let txn = self.db.begin_write()?;
        let r = read(&txn.open_table(SNAPSHOTS)?, key)?.ok_or_else(|| Error::not_found(format!("snapshot {key}")))?;
        {
            let children = txn.open_table(CHILDREN)?;
            let has_child = children.range((r.id, 0)..=(r.id, u64::MAX))?.next().transpose()?.is_some();
            if has_child {
                return Err(Error::failed_precondition("cannot remove snapshot with child").into());
            }
        }
        if !r.parent.is_empty() {
            let pid = read(&txn.open_table(SNAPSHOTS)?, &r.parent)?
                .ok_or_else(|| Error::not_found(format!("snapshot {key}")))?
                .id;
            txn.open_table(CHILDREN)?.remove((pid, r.id))?;
        }
        txn.open_table(SNAPSHOTS)?.remove(key)?;
        txn.commit()?;
        Ok((r.id, Kind::try_from(r.kind).unwrap_or(Kind::Unknown)))
    }

    /// Replaces labels of `info.name`: all of them when `fieldpaths` is
    /// empty, else those named by `labels` or `labels.<key>` (an empty or
    /// missing value removes the label). Any other path is InvalidArgument
    /// and changes nothing.
    pub fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let txn = self.db.begin_write()?;
        let mut r = read(&txn.open_table(SNAPSHOTS)?, &info.name)?
            .ok_or_else(|| Error::not_found(format!("snapshot {} does not exist", info.name)))?;
        if fieldpaths.is_empty() {
            r.labels = labels_of(info.labels);
        } else {
            for path in fieldpaths {
                if let Some(k) = path.strip_prefix("labels.") {
                    match info.labels.get(k).filter(|v| !v.is_empty()) {
                        Some(v) => r.labels.insert(k.to_string(), v.clone()),
                        None => r.labels.remove(k),
                    };
                } else if path == "labels" {
                    r.labels = labels_of(info.labels.clone());
                } else {
                    return Err(Error::invalid_argument(format!(
                        "cannot update {path:?} field on snapshot {:?}",
                        info.name
                    ))
                    .into());
                }
            }
        }
        r.updated = now_nanos();
        write(&txn, &info.name, &r)?;
        txn.commit()?;
        Ok(r.info(&info.name))
    }

    /// Every snapshot.
    pub fn list(&self) -> Result<Vec<Info>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, _) = item?;
            let key = k.value().to_string();
            if let Some(r) = read(&table, &key)? {
                out.push(r.info(&key));
            }
        }
        Ok(out)
    }

    /// The ids of every recorded snapshot.
    pub fn ids(&self) -> Result<HashSet<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = HashSet::new();
        for item in table.iter()? {
            let (k, _) = item?;
            if let Some(r) = read(&table, k.value())? {
                out.insert(r.id);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::open(&dir.path().join("metadata.db")).unwrap();
        (dir, s)
    }

    fn create(s: &MetaStore, kind: Kind, key: &str, parent: &str) -> Result<Snapshot> {
        let parents = s.check_new(key, parent)?;
        s.create(kind, key, parent, HashMap::new(), &parents, |_| Ok(()))
    }

    fn commit(s: &MetaStore, name: &str, key: &str) -> Result<()> {
        let id = s.id_of(key)?;
        s.commit_active(key, id, name, Usage { size: 10, inodes: 2 }, HashMap::new())
    }

    use crated_plugin_api::Code;

    fn code(e: SnapshotError) -> Code {
        Status::from(e).code
    }

    #[test]
    fn kinds_ids_and_parent_chains() {
        let (_d, s) = store();
        let a = create(&s, Kind::Active, "a", "").unwrap();
        assert_eq!(a, Snapshot { id: 1, kind: Kind::Active, parent_ids: vec![] });
        commit(&s, "base", "a").unwrap();
        let b = create(&s, Kind::Active, "b", "base").unwrap();
        assert_eq!(b.parent_ids, vec![1]);
        commit(&s, "mid", "b").unwrap();
        let v = create(&s, Kind::View, "v", "mid").unwrap();
        assert_eq!(v, Snapshot { id: 3, kind: Kind::View, parent_ids: vec![2, 1] });
        assert_eq!(s.get_snapshot("v").unwrap(), v);

        let (id, info, usage) = s.get_info("base").unwrap();
        assert_eq!((id, info.kind, info.parent.as_str()), (1, Kind::Committed as i32, ""));
        assert_eq!(usage, Usage { size: 10, inodes: 2 });
        let (_, info, usage) = s.get_info("mid").unwrap();
        assert_eq!((info.kind, info.parent.as_str()), (Kind::Committed as i32, "base"));
        assert_eq!(usage.size, 10);
        let (_, info, usage) = s.get_info("v").unwrap();
        assert_eq!((info.kind, usage), (Kind::View as i32, Usage::default()));
        // The committed key replaced the active one.
        assert_eq!(code(s.get_info("a").unwrap_err()), Code::NotFound);
        let mut names: Vec<String> = s.list().unwrap().into_iter().map(|i| i.name).collect();
        names.sort();
        assert_eq!(names, ["base", "mid", "v"]);
        assert_eq!(s.ids().unwrap(), HashSet::from([1, 2, 3]));
    }

    #[test]
    fn errors_have_containerds_kinds() {
        let (_d, s) = store();
        create(&s, Kind::Active, "a", "").unwrap();
        // Parent missing, parent not committed, duplicate key.
        assert_eq!(code(create(&s, Kind::Active, "x", "nope").unwrap_err()), Code::NotFound);
        assert_eq!(code(create(&s, Kind::Active, "x", "a").unwrap_err()), Code::InvalidArgument);
        assert_eq!(code(create(&s, Kind::View, "x", "a").unwrap_err()), Code::InvalidArgument);
        assert_eq!(code(create(&s, Kind::Active, "a", "").unwrap_err()), Code::AlreadyExists);
        assert_eq!(code(create(&s, Kind::Committed, "y", "").unwrap_err()), Code::InvalidArgument);
        // Mounts of a committed snapshot, commit of a view or of a missing
        // key, commit onto a taken name.
        commit(&s, "c", "a").unwrap();
        assert_eq!(code(s.get_snapshot("c").unwrap_err()), Code::FailedPrecondition);
        assert_eq!(code(s.get_snapshot("nope").unwrap_err()), Code::NotFound);
        create(&s, Kind::View, "v", "c").unwrap();
        assert_eq!(code(commit(&s, "c2", "v").unwrap_err()), Code::FailedPrecondition);
        assert_eq!(code(commit(&s, "c2", "nope").unwrap_err()), Code::NotFound);
        create(&s, Kind::Active, "b", "c").unwrap();
        assert_eq!(code(commit(&s, "c", "b").unwrap_err()), Code::AlreadyExists);
        assert_eq!(code(s.remove("nope").unwrap_err()), Code::NotFound);
        // The text is containerd's: the message, then the kind; context
        // prefixes it and keeps the kind.
        let e = s.get_snapshot("nope").unwrap_err().context("overlayfs");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(Status::from(e).message, "overlayfs: snapshot nope does not exist: not found");
        // A failed create took no id: the next one gets the next number.
        assert_eq!(create(&s, Kind::Active, "d", "").unwrap().id, 4);
    }

    #[test]
    fn a_failed_placement_records_nothing() {
        let (_d, s) = store();
        let err = s
            .create(Kind::Active, "a", "", HashMap::new(), &[], |_| {
                Err(SnapshotError::io("rename", std::io::ErrorKind::Other.into()))
            })
            .unwrap_err();
        assert_eq!(code(err), Code::Unknown);
        assert_eq!(code(s.get_info("a").unwrap_err()), Code::NotFound);
        // The id was not consumed.
        assert_eq!(create(&s, Kind::Active, "a", "").unwrap().id, 1);
    }

    #[test]
    fn removal_rules() {
        let (_d, s) = store();
        create(&s, Kind::Active, "a", "").unwrap();
        commit(&s, "base", "a").unwrap();
        create(&s, Kind::Active, "child", "base").unwrap();
        create(&s, Kind::View, "view", "base").unwrap();
        let before = s.list().unwrap().len();
        // Refused with children, and nothing changed.
        assert_eq!(code(s.remove("base").unwrap_err()), Code::FailedPrecondition);
        assert_eq!(s.list().unwrap().len(), before);
        assert_eq!(s.get_info("base").unwrap().1.kind, Kind::Committed as i32);
        assert_eq!(s.remove("child").unwrap(), (2, Kind::Active));
        assert_eq!(code(s.remove("base").unwrap_err()), Code::FailedPrecondition);
        assert_eq!(s.remove("view").unwrap(), (3, Kind::View));
        // A committed child keeps its parent link.
        create(&s, Kind::Active, "c2", "base").unwrap();
        commit(&s, "layer2", "c2").unwrap();
        assert_eq!(code(s.remove("base").unwrap_err()), Code::FailedPrecondition);
        s.remove("layer2").unwrap();
        assert_eq!(s.remove("base").unwrap(), (1, Kind::Committed));
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn labels_and_field_paths() {
        let (_d, s) = store();
        let labels = HashMap::from([("a".to_string(), "1".to_string()), ("empty".to_string(), String::new())]);
        let parents = s.check_new("k", "").unwrap();
        s.create(Kind::Active, "k", "", labels, &parents, |_| Ok(())).unwrap();
        let (_, info, _) = s.get_info("k").unwrap();
        assert_eq!(info.labels, HashMap::from([("a".to_string(), "1".to_string())]));
        let created = info.created_at;

        let l = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let info_with = |labels| Info { name: "k".into(), labels, ..Default::default() };
        // No paths: all labels replaced.
        let i = s.update(info_with(l(&[("b", "2"), ("c", "3")])), &[]).unwrap();
        assert_eq!(i.labels, l(&[("b", "2"), ("c", "3")]));
        assert_eq!(i.created_at, created);
        assert_ne!(i.updated_at, created);
        // One label set, one removed (absent from info), others kept.
        let i = s.update(info_with(l(&[("d", "4")])), &["labels.d".into(), "labels.b".into()]).unwrap();
        assert_eq!(i.labels, l(&[("c", "3"), ("d", "4")]));
        // `labels`: replace all.
        let i = s.update(info_with(l(&[("e", "5")])), &["labels".into()]).unwrap();
        assert_eq!(i.labels, l(&[("e", "5")]));
        // Other paths are refused and change nothing.
        let e = s.update(info_with(l(&[("f", "6")])), &["labels.f".into(), "parent".into()]).unwrap_err();
        assert_eq!(code(e), Code::InvalidArgument);
        assert_eq!(s.get_info("k").unwrap().1.labels, l(&[("e", "5")]));
        let e = s.update(Info { name: "nope".into(), ..Default::default() }, &[]).unwrap_err();
        assert_eq!(code(e), Code::NotFound);
        // Commit replaces labels, it does not inherit them.
        let id = s.id_of("k").unwrap();
        s.commit_active("k", id, "c", Usage::default(), l(&[("x", "y")])).unwrap();
        assert_eq!(s.get_info("c").unwrap().1.labels, l(&[("x", "y")]));
    }

    #[test]
    fn reopen_keeps_records_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let s = MetaStore::open(&path).unwrap();
        create(&s, Kind::Active, "a", "").unwrap();
        drop(s);
        let s = MetaStore::open(&path).unwrap();
        assert_eq!(s.id_of("a").unwrap(), 1);
        assert_eq!(create(&s, Kind::Active, "b", "").unwrap().id, 2);
    }
}
