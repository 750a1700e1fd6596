//! The redb schema and its transactions.
//!
//! One redb file, `<root>/meta.redb`, holds every namespaced object. Tables
//! are flat and keyed by tuples whose first element is the namespace, so a
//! namespace's objects are one contiguous range of each table (the layout
//! containerd's bolt buckets `v1/<namespace>/<kind>/<id>` have, without
//! nesting):
//!
//! | table             | key                                 | value                 |
//! |-------------------|-------------------------------------|-----------------------|
//! | `meta`            | `"schema"`                          | schema version (u64)  |
//! | `namespaces`      | name                                | JSON [`NamespaceRecord`] |
//! | `content`         | (namespace, digest)                 | JSON [`ContentRecord`] |
//! | `blob_refs`       | (digest, namespace)                 | `()`: who references a raw blob |
//! | `leases`          | (namespace, lease id)               | JSON [`LeaseRecord`]  |
//! | `lease_resources` | (namespace, lease id, type, id)     | `()`                  |
//! | `images`          | (namespace, image name)             | JSON [`ImageRecord`]  |
//! | `containers`      | (namespace, container id)           | JSON [`ContainerRecord`] |
//! | `snapshots`       | (namespace, snapshotter, key)       | JSON [`SnapshotRecord`] |
//! | `snapshot_children` | (namespace, snapshotter, parent key, child key) | `()` |
//! | `snapshot_refs`   | (snapshotter, backend key, namespace, key) | `()`: who references a backend snapshot |
//!
//! Every change is one write transaction (redb commits are atomic and, with
//! the default `Durability::Immediate`, durable when `commit` returns), so a
//! daemon killed at any point restarts with either all or none of a change.
//! `content` and `blob_refs` are always written in the same transaction, and
//! so are `snapshots`, `snapshot_children` and `snapshot_refs`. The
//! `meta` key `"snapshot_seq"` numbers backend snapshot keys.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
pub const CONTENT: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("content");
pub const BLOB_REFS: TableDefinition<(&str, &str), ()> = TableDefinition::new("blob_refs");
pub const LEASES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("leases");
pub const LEASE_RESOURCES: TableDefinition<(&str, &str, &str, &str), ()> = TableDefinition::new("lease_resources");
pub const IMAGES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("images");
pub const CONTAINERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("containers");
pub const SNAPSHOTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("snapshots");
pub const SNAPSHOT_CHILDREN: TableDefinition<(&str, &str, &str, &str), ()> = TableDefinition::new("snapshot_children");
pub const SNAPSHOT_REFS: TableDefinition<(&str, &str, &str, &str), ()> = TableDefinition::new("snapshot_refs");
/// Open content writers: (namespace, ref) -> when the ingest expires (unix
/// seconds), or [`INGEST_LEASED`] for one that only its lease keeps. As in
/// containerd, an ingest written without a lease is kept for 24 hours after
/// its writer last opened it, and a leased one as long as its lease.
pub const INGESTS: TableDefinition<(&str, &str), i64> = TableDefinition::new("ingests");
/// The [`INGESTS`] value of an ingest kept by its lease alone.
pub const INGEST_LEASED: i64 = 0;

/// Bumped whenever the layout above changes incompatibly (a new table is
/// compatible: [`Db::open`] creates it in an existing file).
pub const SCHEMA_VERSION: u64 = 1;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceRecord {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentRecord {
    pub size: i64,
    /// Nanoseconds since the Unix epoch, UTC.
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    pub created_at: i64,
    #[serde(default)]
    pub labels: Labels,
}

/// An image's target: an OCI descriptor (containerd stores media type,
/// digest, size and annotations; its `urls` and `platform` are not kept).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DescriptorRecord {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: Labels,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub target: DescriptorRecord,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub labels: Labels,
}

/// A `google.protobuf.Any`, kept opaque: the type URL and the bytes, hex
/// encoded in the JSON record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnyRecord {
    pub type_url: String,
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    #[serde(default)]
    pub image: String,
    pub runtime_name: String,
    #[serde(default)]
    pub runtime_options: Option<AnyRecord>,
    pub spec: Option<AnyRecord>,
    #[serde(default)]
    pub snapshotter: String,
    #[serde(default)]
    pub snapshot_key: String,
    #[serde(default)]
    pub extensions: BTreeMap<String, AnyRecord>,
    #[serde(default)]
    pub sandbox: String,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub labels: Labels,
}

/// A snapshot as a namespace sees it. `backend_key` is the key the
/// snapshotter knows it by (`<namespace>/<seq>/<key>`, or another
/// namespace's key when a committed layer is shared).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    #[serde(default)]
    pub parent: String,
    /// `active`, `view` or `committed`.
    pub kind: String,
    pub backend_key: String,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub labels: Labels,
}

mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(v.len() * 2);
        for b in v {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(D::Error::custom("odd hex length"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("x"), 16).map_err(D::Error::custom))
            .collect()
    }
}

/// A failure of the database itself (I/O, corruption, a record that does
/// not decode).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("metadata database: {0}")]
    Redb(Box<redb::Error>),
    #[error("metadata database: corrupt record in {table}: {message}")]
    Corrupt { table: &'static str, message: String },
    #[error("metadata database {path}: schema version {found}, this plugin reads version {SCHEMA_VERSION}")]
    Schema { path: String, found: u64 },
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> DbError {
                DbError::Redb(Box::new(e.into()))
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

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialise")
}

pub fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, DbError> {
    serde_json::from_slice(bytes).map_err(|e| DbError::Corrupt { table, message: e.to_string() })
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Committed changes since the database was opened, which the garbage
/// collector's scheduler counts (`crated.gc.v1.Collector/Watch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Write transactions committed through [`Db::write`] or [`Db::write_deleting`].
    pub mutations: u64,
    /// Of those, the ones through [`Db::write_deleting`]: they removed
    /// something whose references a collection may free.
    pub deletions: u64,
}

/// The shared database handle. Cheap to clone; every method blocks, so
/// async code calls it through `tokio::task::spawn_blocking`.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Database>,
    changes: Arc<tokio::sync::watch::Sender<Changes>>,
}

impl Db {
    /// Opens (or creates) the database and makes sure every table exists.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) => return Err(DbError::Schema { path: path.display().to_string(), found: v }),
            }
            txn.open_table(NAMESPACES)?;
            txn.open_table(CONTENT)?;
            txn.open_table(BLOB_REFS)?;
            txn.open_table(LEASES)?;
            txn.open_table(LEASE_RESOURCES)?;
            txn.open_table(IMAGES)?;
            txn.open_table(CONTAINERS)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(SNAPSHOT_CHILDREN)?;
            txn.open_table(SNAPSHOT_REFS)?;
            txn.open_table(INGESTS)?;
        }
        txn.commit()?;
        Ok(Db { inner: Arc::new(db), changes: Arc::new(tokio::sync::watch::channel(Changes::default()).0) })
    }

    /// Runs `f` in one write transaction; commits if it returns `Ok`,
    /// aborts (drops every change) otherwise. A commit counts as a mutation.
    pub fn write<T, E>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let out = self.write_quiet(f)?;
        self.changes.send_modify(|c| c.mutations += 1);
        Ok(out)
    }

    /// [`Db::write`] for a change that removes something (an image, a
    /// lease, a container, a content or snapshot record): counts as a
    /// mutation and a deletion.
    pub fn write_deleting<T, E>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let out = self.write_quiet(f)?;
        self.changes.send_modify(|c| {
            c.mutations += 1;
            c.deletions += 1;
        });
        Ok(out)
    }

    /// [`Db::write`] without counting: for transactions that only check
    /// (a write transaction sees what the next one will) and for the
    /// collector's sweep, which must not schedule another collection.
    pub fn write_quiet<T, E>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let txn = self.inner.begin_write().map_err(DbError::from)?;
        let out = f(&txn)?;
        txn.commit().map_err(DbError::from)?;
        Ok(out)
    }

    /// The running count of committed changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<Changes> {
        self.changes.subscribe()
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<T, E>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let txn = self.inner.begin_read().map_err(DbError::from)?;
        f(&txn)
    }
}

/// Keys of a `(namespace, id)` table within one namespace, with values.
pub fn scan_ns<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    table: &T,
    ns: &str,
) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let mut out = Vec::new();
    for item in table.range((ns, "")..)? {
        let (k, v) = item?;
        let (kns, id) = k.value();
        if kns != ns {
            break;
        }
        out.push((id.to_string(), v.value().to_vec()));
    }
    Ok(out)
}

/// Whether a `(namespace, id)` table has any key in `ns`.
pub fn any_in_ns<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    table: &T,
    ns: &str,
) -> Result<bool, DbError> {
    match table.range((ns, "")..)?.next() {
        Some(item) => Ok(item?.0.value().0 == ns),
        None => Ok(false),
    }
}

/// Makes sure a namespace exists, as containerd does implicitly for any
/// namespaced write (its bolt bucket `v1/<namespace>` is created on demand).
pub fn ensure_namespace(txn: &WriteTransaction, ns: &str) -> Result<bool, DbError> {
    let mut t = txn.open_table(NAMESPACES)?;
    if t.get(ns)?.is_some() {
        return Ok(false);
    }
    t.insert(ns, encode(&NamespaceRecord::default()).as_slice())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_keeps_data_and_checks_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let db = Db::open(&path).unwrap();
        db.write(|txn| ensure_namespace(txn, "a")).unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        let has = db.read(|txn| Ok::<_, DbError>(txn.open_table(NAMESPACES)?.get("a")?.is_some())).unwrap();
        assert!(has);
        drop(db);
        // A future schema is refused, not misread.
        {
            let raw = Database::create(&path).unwrap();
            let txn = raw.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema", 99).unwrap();
            txn.commit().unwrap();
        }
        let err = Db::open(&path).err().expect("schema mismatch");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[test]
    fn any_values_round_trip_as_hex() {
        let rec = AnyRecord { type_url: "t".into(), value: vec![0, 1, 0xab, 0xff] };
        let json = String::from_utf8(encode(&rec)).unwrap();
        assert!(json.contains("\"0001abff\""), "{json}");
        assert_eq!(decode::<AnyRecord>("x", json.as_bytes()).unwrap(), rec);
        assert!(decode::<AnyRecord>("x", br#"{"type_url":"t","value":"0g"}"#).is_err());
    }

    #[test]
    fn failed_transaction_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        let r: Result<(), DbError> = db.write(|txn| {
            ensure_namespace(txn, "half")?;
            Err(DbError::Corrupt { table: "x", message: "stop".into() })
        });
        assert!(r.is_err());
        let has = db.read(|txn| Ok::<_, DbError>(txn.open_table(NAMESPACES)?.get("half")?.is_some())).unwrap();
        assert!(!has);
    }
}
