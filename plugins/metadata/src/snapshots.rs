//! The namespaced snapshots: containerd's `metadata/snapshot.go` on redb, in
//! front of the snapshotter plugins.
//!
//! A namespace sees a snapshot only through its record: the key the client
//! chose, the parent, the kind, labels, times and the *backend key*, the
//! key the snapshotter knows it by. Backend keys are `<ns>/<seq>/<key>`
//! (containerd's `createKey`), so two namespaces never collide inside a
//! snapshotter. All labels live in the record; only the inherited ones
//! (`containerd.io/snapshot.ref` and `containerd.io/snapshot/...`,
//! containerd's `FilterInheritedLabels`) are passed to the snapshotter.
//!
//! A committed layer is shared between namespaces as containerd shares it:
//! a Prepare labelled `containerd.io/snapshot.ref=<target>` whose target is
//! already committed (with that label, on the same backend parent) in
//! another namespace, or that the snapshotter answers with `AlreadyExists`
//! (remote snapshotters), records `<target>` in this namespace pointing at
//! the same backend snapshot and answers `AlreadyExists`. `snapshot_refs`
//! counts the records of each backend snapshot; the backend snapshot is
//! removed with its last record (containerd leaves that to its garbage
//! collector).
//!
//! Crash consistency. Each change is one redb transaction plus at most one
//! backend call, ordered so that a SIGKILL between the two leaves only
//! states that [`SnapshotStore::recover`] repairs at the next start:
//! - Prepare/View: the backend snapshot is created *before* its record, so
//!   a crash leaves at worst a backend snapshot without a record (an
//!   orphan), never a record without a backend snapshot.
//! - Commit: the backend commits, then one transaction swaps the active
//!   record for the committed one. A crash in between leaves a record whose
//!   backend snapshot is gone and an orphan: recovery drops both, so the
//!   snapshot is gone everywhere rather than half there.
//! - Remove: every check first (nothing changes when refused), then the
//!   backend removal, then the record; a crash in between leaves a record
//!   whose backend snapshot is gone, which recovery drops.
//!
//! Recovery, per snapshotter at init, therefore (1) drops the records whose
//! backend snapshot is gone and (2) removes the backend snapshots no record
//! refers to, children before parents. Mutating calls are serialised per
//! snapshotter (a lock held across the transaction and the backend call),
//! so no two changes interleave between their check and their write.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use crated_plugin_api::{
    filters::{labels_field, AnyFilter, Fields},
    snapshots::{labels::SNAPSHOT_PREFIX, labels::SNAPSHOT_REF, Info, Kind, Mount, SnapshotterClient, Usage},
    Error, ErrorKind, Status,
};
use redb::{ReadableTable, WriteTransaction};

use crate::db::{
    decode, encode, ensure_namespace, now_nanos, Db, DbError, Labels, SnapshotRecord, LEASES, LEASE_RESOURCES, META,
    NAMESPACES, SNAPSHOTS, SNAPSHOT_CHILDREN, SNAPSHOT_REFS,
};
use crate::leases::{add_resource_in, LeaseError, Resource};
use crate::namespaces::{apply_label_paths, validate_labels};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The backend answered something containerd treats as a broken
    /// contract (an `AlreadyExists` for a fresh key).
    #[error("unexpected error from snapshotter: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The snapshotter's own failure, code and message kept.
    #[error("{}", .0.message)]
    Backend(Status),
    /// Not found, already exists...: containerd's kinds, printed as its
    /// errdefs print them.
    #[error(transparent)]
    Kind(#[from] Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl SnapshotError {
    /// The kind of the failure, which gives its gRPC code (the variants
    /// other than `Kind` keep containerd's own wording, without a suffix).
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::Kind(e) => e.kind(),
            SnapshotError::Unexpected(_) => ErrorKind::Unknown,
            SnapshotError::Lease(e) => e.kind(),
            SnapshotError::Backend(s) => ErrorKind::from_code(s.code),
            SnapshotError::Db(_) => ErrorKind::Internal,
        }
    }
}

impl From<redb::TableError> for SnapshotError {
    fn from(e: redb::TableError) -> Self {
        SnapshotError::Db(e.into())
    }
}

impl From<redb::StorageError> for SnapshotError {
    fn from(e: redb::StorageError) -> Self {
        SnapshotError::Db(e.into())
    }
}

/// A snapshot as its namespace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub created_at: i64,
    pub updated_at: i64,
    pub labels: Labels,
}

/// containerd's snapshot filter adaptor (`adaptSnapshot`): `name`,
/// `parent`, `kind`, `labels.<key>`.
impl Fields for Snapshot {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path.first().map(String::as_str)? {
            "name" if path.len() == 1 => Some(Cow::Borrowed(&self.name)),
            "parent" if path.len() == 1 => Some(Cow::Borrowed(&self.parent)),
            "kind" if path.len() == 1 => Some(Cow::Borrowed(crated_plugin_api::snapshots::kind_name(self.kind as i32))),
            "labels" => labels_field(path, self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            _ => None,
        }
    }
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::View => "view",
        Kind::Active => "active",
        _ => "committed",
    }
}

fn kind_of(s: &str) -> Kind {
    match s {
        "view" => Kind::View,
        "active" => Kind::Active,
        _ => Kind::Committed,
    }
}

fn snapshot(name: &str, r: SnapshotRecord) -> Snapshot {
    Snapshot {
        name: name.into(),
        parent: r.parent,
        kind: kind_of(&r.kind),
        created_at: r.created_at,
        updated_at: r.updated_at,
        labels: r.labels,
    }
}

/// Whether containerd passes a label to the snapshotter
/// (`snapshots.FilterInheritedLabels`).
pub fn inherited_label(key: &str) -> bool {
    key == SNAPSHOT_REF || key.starts_with(SNAPSHOT_PREFIX)
}

fn inherited(labels: &Labels) -> HashMap<String, String> {
    labels.iter().filter(|(k, _)| inherited_label(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn check_labels(labels: &Labels) -> Result<(), SnapshotError> {
    validate_labels(labels).map_err(|e| Error::invalid_argument(format!("info.Labels: {e}")).into())
}

/// The lease resource type of a snapshotter's snapshots.
fn lease_kind(sn: &str) -> String {
    format!("snapshots/{sn}")
}

fn get(
    txn_table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    ns: &str,
    sn: &str,
    key: &str,
) -> Result<Option<SnapshotRecord>, SnapshotError> {
    match txn_table.get((ns, sn, key))? {
        Some(v) => Ok(Some(decode("snapshots", v.value())?)),
        None => Ok(None),
    }
}

fn not_exist(key: &str) -> SnapshotError {
    Error::not_found(format!("snapshot {key} does not exist")).into()
}

/// Writes a record with its child link and backend reference.
fn insert_in(txn: &WriteTransaction, ns: &str, sn: &str, key: &str, rec: &SnapshotRecord) -> Result<(), SnapshotError> {
    txn.open_table(SNAPSHOTS)?.insert((ns, sn, key), encode(rec).as_slice())?;
    if !rec.parent.is_empty() {
        txn.open_table(SNAPSHOT_CHILDREN)?.insert((ns, sn, rec.parent.as_str(), key), ())?;
    }
    txn.open_table(SNAPSHOT_REFS)?.insert((sn, rec.backend_key.as_str(), ns, key), ())?;
    Ok(())
}

/// Removes a record with its child link and backend reference.
pub(crate) fn delete_in(
    txn: &WriteTransaction,
    ns: &str,
    sn: &str,
    key: &str,
    rec: &SnapshotRecord,
) -> Result<(), SnapshotError> {
    txn.open_table(SNAPSHOTS)?.remove((ns, sn, key))?;
    if !rec.parent.is_empty() {
        txn.open_table(SNAPSHOT_CHILDREN)?.remove((ns, sn, rec.parent.as_str(), key))?;
    }
    txn.open_table(SNAPSHOT_REFS)?.remove((sn, rec.backend_key.as_str(), ns, key))?;
    Ok(())
}

fn has_children(txn: &WriteTransaction, ns: &str, sn: &str, key: &str) -> Result<bool, SnapshotError> {
    let t = txn.open_table(SNAPSHOT_CHILDREN)?;
    let first = t.range((ns, sn, key, "")..)?.next();
    match first {
        Some(item) => {
            let (k, _) = item?;
            let (a, b, c, _) = k.value();
            Ok(a == ns && b == sn && c == key)
        }
        None => Ok(false),
    }
}

/// Whether a record other than `(ns, key)` refers to backend key `bkey`.
fn referenced_elsewhere(
    txn: &WriteTransaction,
    sn: &str,
    bkey: &str,
    ns: &str,
    key: &str,
) -> Result<bool, SnapshotError> {
    let t = txn.open_table(SNAPSHOT_REFS)?;
    for item in t.range((sn, bkey, "", "")..)? {
        let (k, _) = item?;
        let (s, b, n, k) = k.value();
        if s != sn || b != bkey {
            break;
        }
        if n != ns || k != key {
            return Ok(true);
        }
    }
    Ok(false)
}

fn check_lease(txn: &WriteTransaction, ns: &str, lease: Option<&str>) -> Result<(), SnapshotError> {
    if let Some(l) = lease {
        if txn.open_table(LEASES)?.get((ns, l))?.is_none() {
            return Err(Error::not_found(format!("lease {l:?}")).into());
        }
    }
    Ok(())
}

fn lease_add(txn: &WriteTransaction, ns: &str, sn: &str, key: &str, lease: Option<&str>) -> Result<(), SnapshotError> {
    if let Some(l) = lease {
        add_resource_in(txn, ns, l, &Resource { id: key.into(), kind: lease_kind(sn) })?;
    }
    Ok(())
}

fn lease_remove(
    txn: &WriteTransaction,
    ns: &str,
    sn: &str,
    key: &str,
    lease: Option<&str>,
) -> Result<(), SnapshotError> {
    if let Some(l) = lease {
        txn.open_table(LEASE_RESOURCES)?.remove((ns, l, lease_kind(sn).as_str(), key))?;
    }
    Ok(())
}

/// The next number for a backend key (containerd's bucket sequence).
fn next_seq(txn: &WriteTransaction) -> Result<u64, SnapshotError> {
    let mut t = txn.open_table(META)?;
    let n = t.get("snapshot_seq")?.map(|v| v.value()).unwrap_or(0) + 1;
    t.insert("snapshot_seq", n)?;
    Ok(n)
}

/// One loaded snapshotter: its client and the lock that serialises the
/// changes made through it.
struct Backend {
    client: SnapshotterClient,
    lock: tokio::sync::Mutex<()>,
}

/// A snapshot being created: what the checks found.
struct Reserved {
    bparent: String,
    bkey: String,
}

#[derive(Clone)]
pub struct SnapshotStore {
    db: Db,
    backends: Arc<BTreeMap<String, Backend>>,
}

impl SnapshotStore {
    /// A store over the snapshotters `(id, client)`.
    pub fn new(db: Db, snapshotters: Vec<(String, SnapshotterClient)>) -> Self {
        let backends = snapshotters
            .into_iter()
            .map(|(id, client)| (id, Backend { client, lock: tokio::sync::Mutex::new(()) }))
            .collect();
        SnapshotStore { db, backends: Arc::new(backends) }
    }

    /// Holds every snapshotter's lock, in id order (each other caller holds
    /// one at a time, so this cannot deadlock): while the guards live, no
    /// snapshot change is between its transaction and its backend call,
    /// which is what the garbage collector's mark and sweep need.
    pub async fn lock_all(&self) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(self.backends.len());
        for b in self.backends.values() {
            guards.push(b.lock.lock().await);
        }
        guards
    }

    /// The ids of the loaded snapshotters.
    pub fn snapshotters(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }

    fn loaded(&self) -> String {
        if self.backends.is_empty() {
            "(no snapshotter is loaded)".into()
        } else {
            format!("(loaded snapshotters: {})", self.snapshotters().join(", "))
        }
    }

    /// The snapshotter a request names, as containerd's snapshots service
    /// picks it (same code and wording), with the loaded ones named in the
    /// error, which containerd does not do. The message still ends with
    /// the kind, so Go clients do not repeat it.
    fn backend(&self, sn: &str) -> Result<&Backend, SnapshotError> {
        if sn.is_empty() {
            return Err(Error::invalid_argument(format!("snapshotter argument missing {}", self.loaded())).into());
        }
        self.backends
            .get(sn)
            .ok_or_else(|| Error::invalid_argument(format!("snapshotter not loaded: {sn} {}", self.loaded())).into())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| SnapshotError::Backend(Status::internal(format!("metadata store task failed: {e}"))))?
    }

    /// The record of `key`, read.
    async fn record(&self, ns: &str, sn: &str, key: &str) -> Result<SnapshotRecord, SnapshotError> {
        let (ns, sn, key) = (ns.to_string(), sn.to_string(), key.to_string());
        self.blocking(move |db| {
            db.read(|txn| {
                let t = txn.open_table(SNAPSHOTS).map_err(DbError::from)?;
                get(&t, &ns, &sn, &key)?.ok_or_else(|| not_exist(&key))
            })
        })
        .await
    }

    pub async fn stat(&self, ns: &str, sn: &str, key: &str) -> Result<Snapshot, SnapshotError> {
        let b = self.backend(sn)?;
        let rec = self.record(ns, sn, key).await?;
        // As containerd: the backend must still have it.
        b.client.stat(&rec.backend_key).await.map_err(SnapshotError::Backend)?;
        Ok(snapshot(key, rec))
    }

    pub async fn mounts(&self, ns: &str, sn: &str, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let b = self.backend(sn)?;
        let rec = self.record(ns, sn, key).await?;
        b.client.mounts(&rec.backend_key).await.map_err(SnapshotError::Backend)
    }

    pub async fn usage(&self, ns: &str, sn: &str, key: &str) -> Result<Usage, SnapshotError> {
        let b = self.backend(sn)?;
        let rec = self.record(ns, sn, key).await?;
        b.client.usage(&rec.backend_key).await.map_err(SnapshotError::Backend)
    }

    pub async fn cleanup(&self, sn: &str) -> Result<(), SnapshotError> {
        let b = self.backend(sn)?;
        let _g = b.lock.lock().await;
        b.client.cleanup().await.map_err(SnapshotError::Backend)
    }

    /// The namespace's snapshots on `sn` that match `filter`, by key.
    pub async fn list(&self, ns: &str, sn: &str, filter: AnyFilter) -> Result<Vec<Snapshot>, SnapshotError> {
        self.backend(sn)?;
        let (ns, sn) = (ns.to_string(), sn.to_string());
        self.blocking(move |db| {
            db.read(|txn| {
                let t = txn.open_table(SNAPSHOTS).map_err(DbError::from)?;
                let mut out = Vec::new();
                for item in t.range((ns.as_str(), sn.as_str(), "")..)? {
                    let (k, v) = item?;
                    let (kns, ksn, key) = k.value();
                    if kns != ns || ksn != sn {
                        break;
                    }
                    let s = snapshot(key, decode("snapshots", v.value())?);
                    if filter.matches(&s) {
                        out.push(s);
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    /// Prepare (`view == false`) or View. A shared committed layer answers
    /// `AlreadyExists` after recording it (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        ns: &str,
        sn: &str,
        key: &str,
        parent: &str,
        view: bool,
        labels: Labels,
        lease: Option<String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let b = self.backend(sn)?;
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty").into());
        }
        check_labels(&labels)?;
        let labels: Labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let target = labels.get(SNAPSHOT_REF).cloned().unwrap_or_default();
        let _g = b.lock.lock().await;

        // 1. The checks, and a backend key. Nothing visible changes.
        let (n, s, k, p, t, l) =
            (ns.to_string(), sn.to_string(), key.to_string(), parent.to_string(), target.clone(), lease.clone());
        let reserved = self
            .blocking(move |db| {
                db.write(|txn| {
                    let table = txn.open_table(SNAPSHOTS)?;
                    if !t.is_empty() && get(&table, &n, &s, &t)?.is_some() {
                        return Err(Error::already_exists(format!("target snapshot {t:?}")).into());
                    }
                    if get(&table, &n, &s, &k)?.is_some() {
                        return Err(Error::already_exists(format!("snapshot {k:?}")).into());
                    }
                    let mut bparent = String::new();
                    if !p.is_empty() {
                        let prec = get(&table, &n, &s, &p)?
                            .ok_or_else(|| Error::not_found(format!("parent snapshot {p} does not exist")))?;
                        if prec.kind != kind_str(Kind::Committed) {
                            // containerd leaves this check to the snapshotter,
                            // whose message names the backend key; we refuse
                            // before touching it, in the same words.
                            return Err(Error::invalid_argument(format!(
                                "failed to create snapshot: parent {:?} is not committed snapshot",
                                prec.backend_key
                            ))
                            .into());
                        }
                        bparent = prec.backend_key;
                    }
                    drop(table);
                    check_lease(txn, &n, l.as_deref())?;
                    let bkey = format!("{n}/{}/{k}", next_seq(txn)?);
                    Ok(Reserved { bparent, bkey })
                })
            })
            .await?;

        // 2. A layer another namespace committed under this target.
        if !target.is_empty() {
            if let Some(shared) = self.find_shared(ns, sn, &target, &reserved.bparent).await? {
                return self.adopt(ns, sn, parent, &target, &reserved.bparent, shared, labels, lease).await;
            }
        }

        // 3. The backend snapshot, before its record.
        let bkey = reserved.bkey.clone();
        let made = if view {
            b.client.view(&bkey, &reserved.bparent, inherited(&labels)).await
        } else {
            b.client.prepare(&bkey, &reserved.bparent, inherited(&labels)).await
        };
        let mounts = match made {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::AlreadyExists && !target.is_empty() => {
                // A remote snapshotter has the layer: find what it committed.
                let found = b
                    .client
                    .list(vec![])
                    .await
                    .map_err(|e| SnapshotError::Backend(e.context("failed walking backend snapshots")))?
                    .into_iter()
                    .find(|i| {
                        i.kind == Kind::Committed as i32
                            && i.parent == reserved.bparent
                            && i.labels.get(SNAPSHOT_REF) == Some(&target)
                    })
                    .ok_or_else(|| Error::not_found(format!("target snapshot {target:?} in backend")))?;
                let shared = Shared {
                    backend_key: found.name,
                    created_at: found.created_at.map(nanos).unwrap_or_else(now_nanos),
                    updated_at: found.updated_at.map(nanos).unwrap_or_else(now_nanos),
                    labels: found.labels.into_iter().collect(),
                };
                return self.adopt(ns, sn, parent, &target, &reserved.bparent, shared, labels, lease).await;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(SnapshotError::Unexpected(e.message)),
            Err(e) => return Err(SnapshotError::Backend(e)),
        };

        // 4. The record. Should it fail, the backend snapshot goes again.
        let now = now_nanos();
        let rec = SnapshotRecord {
            parent: parent.to_string(),
            kind: kind_str(if view { Kind::View } else { Kind::Active }).into(),
            backend_key: bkey.clone(),
            created_at: now,
            updated_at: now,
            labels,
        };
        let (n, s, k) = (ns.to_string(), sn.to_string(), key.to_string());
        let recorded = self
            .blocking(move |db| {
                db.write(|txn| {
                    ensure_namespace(txn, &n)?;
                    lease_add(txn, &n, &s, &k, lease.as_deref())?;
                    insert_in(txn, &n, &s, &k, &rec)
                })
            })
            .await;
        if let Err(e) = recorded {
            if let Err(r) = b.client.remove(&bkey).await {
                crated_plugin_api::tracing::warn!("snapshotter {sn}: removing unrecorded snapshot {bkey}: {r}");
            }
            return Err(e);
        }
        Ok(mounts)
    }

    /// A committed snapshot of another namespace named `target`, labelled
    /// with it, on backend parent `bparent`.
    async fn find_shared(
        &self,
        ns: &str,
        sn: &str,
        target: &str,
        bparent: &str,
    ) -> Result<Option<Shared>, SnapshotError> {
        let (ns, sn, target, bparent) = (ns.to_string(), sn.to_string(), target.to_string(), bparent.to_string());
        self.blocking(move |db| {
            db.read(|txn| {
                let names = txn.open_table(NAMESPACES).map_err(DbError::from)?;
                let t = txn.open_table(SNAPSHOTS).map_err(DbError::from)?;
                for item in names.iter()? {
                    let (other, _) = item?;
                    let other = other.value();
                    if other == ns {
                        continue;
                    }
                    let Some(rec) = get(&t, other, &sn, &target)? else { continue };
                    if rec.kind != kind_str(Kind::Committed) || rec.labels.get(SNAPSHOT_REF) != Some(&target) {
                        continue;
                    }
                    let parent_bkey = match rec.parent.as_str() {
                        "" => String::new(),
                        p => match get(&t, other, &sn, p)? {
                            Some(prec) => prec.backend_key,
                            None => continue,
                        },
                    };
                    if parent_bkey == bparent {
                        return Ok(Some(Shared {
                            backend_key: rec.backend_key,
                            created_at: rec.created_at,
                            updated_at: rec.updated_at,
                            labels: rec.labels,
                        }));
                    }
                }
                Ok(None)
            })
        })
        .await
    }

    /// Records `target` in `ns` as the shared backend snapshot, then
    /// answers `AlreadyExists` as containerd does.
    #[allow(clippy::too_many_arguments)]
    async fn adopt(
        &self,
        ns: &str,
        sn: &str,
        parent: &str,
        target: &str,
        bparent: &str,
        shared: Shared,
        mut labels: Labels,
        lease: Option<String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        for (k, v) in shared.labels {
            labels.entry(k).or_insert(v);
        }
        let rec = SnapshotRecord {
            parent: parent.to_string(),
            kind: kind_str(Kind::Committed).into(),
            backend_key: shared.backend_key,
            created_at: shared.created_at,
            updated_at: shared.updated_at,
            labels,
        };
        let (n, s, t, bp) = (ns.to_string(), sn.to_string(), target.to_string(), bparent.to_string());
        self.blocking(move |db| {
            db.write(|txn| {
                ensure_namespace(txn, &n)?;
                let table = txn.open_table(SNAPSHOTS)?;
                if get(&table, &n, &s, &t)?.is_some() {
                    return Err(Error::already_exists(format!("target snapshot {t:?}")).into());
                }
                if !rec.parent.is_empty() {
                    let prec = get(&table, &n, &s, &rec.parent)?
                        .ok_or_else(|| Error::not_found(format!("parent snapshot {} does not exist", rec.parent)))?;
                    if prec.backend_key != bp {
                        return Err(Error::invalid_argument(format!(
                            "mismatched parent {} from target {t}",
                            rec.parent
                        ))
                        .into());
                    }
                }
                drop(table);
                lease_add(txn, &n, &s, &t, lease.as_deref())?;
                insert_in(txn, &n, &s, &t, &rec)
            })
        })
        .await?;
        Err(Error::already_exists(format!("target snapshot {target:?} from snapshotter")).into())
    }

    /// Commits active `key` as `name`, with the commit's labels.
    pub async fn commit(
        &self,
        ns: &str,
        sn: &str,
        name: &str,
        key: &str,
        labels: Labels,
        lease: Option<String>,
    ) -> Result<(), SnapshotError> {
        let b = self.backend(sn)?;
        if name.is_empty() {
            return Err(Error::invalid_argument("snapshot name must not be empty").into());
        }
        check_labels(&labels)?;
        let labels: Labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let _g = b.lock.lock().await;

        let (n, s, k, nm, l) = (ns.to_string(), sn.to_string(), key.to_string(), name.to_string(), lease.clone());
        let (active, name_key) = self
            .blocking(move |db| {
                db.write(|txn| {
                    let table = txn.open_table(SNAPSHOTS)?;
                    if get(&table, &n, &s, &nm)?.is_some() {
                        return Err(Error::already_exists(format!("snapshot {nm:?}")).into());
                    }
                    let rec = get(&table, &n, &s, &k)?.ok_or_else(|| not_exist(&k))?;
                    if rec.kind != kind_str(Kind::Active) {
                        return Err(Error::failed_precondition(format!("snapshot {k:?} is not active")).into());
                    }
                    drop(table);
                    check_lease(txn, &n, l.as_deref())?;
                    Ok((rec, format!("{n}/{}/{nm}", next_seq(txn)?)))
                })
            })
            .await?;

        b.client.commit(&name_key, &active.backend_key, inherited(&labels)).await.map_err(SnapshotError::Backend)?;

        let now = now_nanos();
        let committed = SnapshotRecord {
            parent: active.parent.clone(),
            kind: kind_str(Kind::Committed).into(),
            backend_key: name_key.clone(),
            created_at: now,
            updated_at: now,
            labels,
        };
        let (n, s, k, nm) = (ns.to_string(), sn.to_string(), key.to_string(), name.to_string());
        let swapped = self
            .blocking(move |db| {
                db.write(|txn| {
                    delete_in(txn, &n, &s, &k, &active)?;
                    insert_in(txn, &n, &s, &nm, &committed)?;
                    lease_remove(txn, &n, &s, &k, lease.as_deref())?;
                    lease_add(txn, &n, &s, &nm, lease.as_deref())
                })
            })
            .await;
        if let Err(e) = &swapped {
            // The next start's recovery drops the stale record and the orphan.
            crated_plugin_api::tracing::error!(
                "snapshotter {sn}: {key} committed as {name_key} in the backend but not recorded: {e}"
            );
        }
        swapped
    }

    /// Removes `key`. A snapshot with children is refused and nothing
    /// changes; the backend snapshot goes with its last record.
    pub async fn remove(&self, ns: &str, sn: &str, key: &str, lease: Option<String>) -> Result<(), SnapshotError> {
        let b = self.backend(sn)?;
        let _g = b.lock.lock().await;
        let (n, s, k) = (ns.to_string(), sn.to_string(), key.to_string());
        // A write transaction that changes nothing: the checks see the
        // same state the final transaction will (the lock keeps it so).
        let (rec, last) = self
            .blocking(move |db| {
                db.write_quiet(|txn| {
                    let rec = get(&txn.open_table(SNAPSHOTS)?, &n, &s, &k)?.ok_or_else(|| not_exist(&k))?;
                    if has_children(txn, &n, &s, &k)? {
                        return Err(Error::failed_precondition("cannot remove snapshot with child").into());
                    }
                    let last = !referenced_elsewhere(txn, &s, &rec.backend_key, &n, &k)?;
                    Ok((rec, last))
                })
            })
            .await?;
        if last {
            match b.client.remove(&rec.backend_key).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::Backend(e)),
            }
        }
        let (n, s, k) = (ns.to_string(), sn.to_string(), key.to_string());
        self.blocking(move |db| {
            db.write_deleting(|txn| {
                delete_in(txn, &n, &s, &k, &rec)?;
                lease_remove(txn, &n, &s, &k, lease.as_deref())
            })
        })
        .await
    }

    /// containerd's snapshot Update: labels only, by field paths. The
    /// snapshotter gets the inherited labels.
    pub async fn update(
        &self,
        ns: &str,
        sn: &str,
        key: &str,
        labels: Labels,
        paths: Vec<String>,
    ) -> Result<Snapshot, SnapshotError> {
        let b = self.backend(sn)?;
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot name must not be empty").into());
        }
        for p in &paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(Error::invalid_argument(format!("cannot update {p:?} field on snapshot {key:?}")).into());
            }
        }
        // The request's labels are checked as given: an empty value (which
        // removes a label) does not make an oversized key acceptable.
        check_labels(&labels)?;
        let _g = b.lock.lock().await;
        let mut rec = self.record(ns, sn, key).await?;
        let mut new = rec.labels.clone();
        apply_label_paths(&mut new, &labels, &paths);
        check_labels(&new)?;

        // The backend sees the inherited labels only.
        let backend_paths: Vec<String> =
            paths.iter().filter(|p| p.strip_prefix("labels.").is_none_or(inherited_label)).cloned().collect();
        if paths.is_empty() || !backend_paths.is_empty() {
            let info = Info { name: rec.backend_key.clone(), labels: inherited(&new), ..Default::default() };
            b.client.update(info, backend_paths).await.map_err(SnapshotError::Backend)?;
        }

        rec.labels = new;
        rec.updated_at = now_nanos();
        let (n, s, k, r) = (ns.to_string(), sn.to_string(), key.to_string(), rec.clone());
        self.blocking(move |db| {
            db.write(|txn| {
                txn.open_table(SNAPSHOTS)?.insert((n.as_str(), s.as_str(), k.as_str()), encode(&r).as_slice())?;
                Ok(())
            })
        })
        .await?;
        Ok(snapshot(key, rec))
    }

    /// Brings records and backend snapshots of `sn` back in line after a
    /// crash (see the module docs for why these two steps suffice).
    /// Returns (records dropped, backend snapshots removed).
    pub async fn recover(&self, sn: &str) -> Result<(usize, usize), SnapshotError> {
        let b = self.backend(sn)?;
        let _g = b.lock.lock().await;
        let infos = b.client.list(vec![]).await.map_err(SnapshotError::Backend)?;
        let present: BTreeSet<String> = infos.iter().map(|i| i.name.clone()).collect();

        // 1. Records whose backend snapshot is gone.
        let s = sn.to_string();
        let (dropped, referenced) = self
            .blocking(move |db| {
                db.write_quiet(|txn| {
                    let mut stale = Vec::new();
                    let mut referenced = BTreeSet::new();
                    {
                        let t = txn.open_table(SNAPSHOTS)?;
                        for item in t.iter()? {
                            let (k, v) = item?;
                            let (kns, ksn, key) = k.value();
                            if ksn != s {
                                continue;
                            }
                            let rec: SnapshotRecord = decode("snapshots", v.value())?;
                            if present.contains(&rec.backend_key) {
                                referenced.insert(rec.backend_key);
                            } else {
                                stale.push((kns.to_string(), key.to_string(), rec));
                            }
                        }
                    }
                    for (ns, key, rec) in &stale {
                        delete_in(txn, ns, &s, key, rec)?;
                    }
                    Ok((stale.len(), referenced))
                })
            })
            .await?;

        // 2. Backend snapshots without a record, children first: a
        // snapshot is removed once no orphan left has it as parent.
        let mut orphans: Vec<Info> = infos.into_iter().filter(|i| !referenced.contains(&i.name)).collect();
        let mut removed = 0;
        while !orphans.is_empty() {
            let parents: BTreeSet<String> = orphans.iter().map(|i| i.parent.clone()).collect();
            let (leaves, rest): (Vec<Info>, Vec<Info>) = orphans.into_iter().partition(|i| !parents.contains(&i.name));
            if leaves.is_empty() {
                break;
            }
            for i in leaves {
                match b.client.remove(&i.name).await {
                    Ok(()) => removed += 1,
                    Err(e) => crated_plugin_api::tracing::warn!("snapshotter {sn}: removing orphan {}: {e}", i.name),
                }
            }
            orphans = rest;
        }
        Ok((dropped, removed))
    }
}

/// A committed backend snapshot another namespace (or a remote
/// snapshotter) already has.
struct Shared {
    backend_key: String,
    created_at: i64,
    updated_at: i64,
    labels: Labels,
}

fn nanos(t: prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos))
}

/// Namespaces that hold snapshots, per snapshotter, for the namespace
/// delete check (containerd: `snapshots on "<name>" snapshotter`).
pub fn snapshotters_in(txn: &WriteTransaction, ns: &str) -> Result<Vec<String>, DbError> {
    let t = txn.open_table(SNAPSHOTS)?;
    let mut out: Vec<String> = Vec::new();
    for item in t.range((ns, "", "")..)? {
        let (k, _) = item?;
        let (kns, sn, _) = k.value();
        if kns != ns {
            break;
        }
        if out.last().map(String::as_str) != Some(sn) {
            out.push(sn.to_string());
        }
    }
    Ok(out)
}
