//! The namespaced content records: containerd's `metadata/content.go` on
//! redb. Bytes live once in the raw content store; a namespace sees a blob
//! only once it holds a record of it. `blob_refs` indexes the records by
//! digest, so deleting the last record of a blob tells the caller that the
//! raw blob is no longer referenced.

use std::borrow::Cow;

use crated_plugin_api::filters::{labels_field, AnyFilter, Fields};
use crated_plugin_api::{Error, ErrorKind};
use redb::ReadableTable;

use crate::db::{
    decode, encode, ensure_namespace, now_nanos, scan_ns, ContentRecord, Db, DbError, Labels, BLOB_REFS, CONTENT,
    INGESTS, INGEST_LEASED,
};

/// How long an ingest written without a lease is kept after its writer last
/// opened it (containerd's 24 hours).
pub const INGEST_TTL: i64 = 24 * 60 * 60;
use crate::leases::{add_resource_in, validate_digest, LeaseError, Resource};
use crate::namespaces::{apply_label_paths, validate_labels};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("unable to lease content: {0}")]
    Lease(#[from] LeaseError),
    /// Not found, already exists...: containerd's kinds, printed as its
    /// errdefs print them.
    #[error(transparent)]
    Kind(#[from] Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ContentError {
    /// The kind of the failure, which gives its gRPC code (the variants
    /// other than `Kind` keep containerd's own wording, without a suffix).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ContentError::Kind(e) => e.kind(),
            ContentError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ContentError::Lease(e) => e.kind(),
            ContentError::Db(_) => ErrorKind::Internal,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: String,
    pub size: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub labels: Labels,
}

impl Info {
    fn from_record(digest: String, r: ContentRecord) -> Info {
        Info { digest, size: r.size, created_at: r.created_at, updated_at: r.updated_at, labels: r.labels }
    }
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path.first().map(String::as_str) {
            Some("digest") if path.len() == 1 => Some(Cow::Borrowed(&self.digest)),
            Some("size") if path.len() == 1 => Some(Cow::Owned(self.size.to_string())),
            Some("labels") => labels_field(path, self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            _ => None,
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// A new record in the namespace.
    Created(Info),
    /// The namespace already had it (containerd answers `AlreadyExists`,
    /// which its clients treat as success); a lease was still added.
    Existing(Info),
}

fn check_digest(d: &str) -> Result<(), ContentError> {
    validate_digest(d).map_err(ContentError::InvalidArgument)
}

#[derive(Clone)]
pub struct ContentStore {
    db: Db,
}

impl ContentStore {
    pub fn new(db: Db) -> Self {
        ContentStore { db }
    }

    pub fn info(&self, ns: &str, digest: &str) -> Result<Info, ContentError> {
        check_digest(digest)?;
        self.db.read(|txn| {
            let t = txn.open_table(CONTENT).map_err(DbError::from)?;
            let v = t
                .get((ns, digest))
                .map_err(DbError::from)?
                .ok_or_else(|| Error::not_found(format!("content digest {digest}")))?;
            Ok(Info::from_record(digest.into(), decode("content", v.value())?))
        })
    }

    pub fn list(&self, ns: &str, filter: &AnyFilter) -> Result<Vec<Info>, ContentError> {
        self.db.read(|txn| {
            let t = txn.open_table(CONTENT).map_err(DbError::from)?;
            let mut out = Vec::new();
            for (digest, v) in scan_ns(&t, ns)? {
                let info = Info::from_record(digest, decode("content", &v)?);
                if filter.matches(&info) {
                    out.push(info);
                }
            }
            Ok(out)
        })
    }

    /// containerd's content Update: only labels are mutable.
    pub fn update(&self, ns: &str, digest: &str, labels: Labels, paths: &[String]) -> Result<Info, ContentError> {
        check_digest(digest)?;
        validate_labels(&labels).map_err(|e| ContentError::InvalidArgument(format!("info.Labels: {e}")))?;
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(ContentError::InvalidArgument(format!(
                    "cannot update {p:?} field on content info {digest:?}"
                )));
            }
        }
        self.db.write(|txn| {
            let mut t = txn.open_table(CONTENT).map_err(DbError::from)?;
            let mut rec: ContentRecord = {
                let v = t
                    .get((ns, digest))
                    .map_err(DbError::from)?
                    .ok_or_else(|| Error::not_found(format!("content digest {digest}")))?;
                decode("content", v.value())?
            };
            apply_label_paths(&mut rec.labels, &labels, paths);
            rec.updated_at = now_nanos();
            t.insert((ns, digest), encode(&rec).as_slice()).map_err(DbError::from)?;
            Ok(Info::from_record(digest.into(), rec))
        })
    }

    /// Records `digest` in `ns` (creating the namespace implicitly, as
    /// containerd does) and, when `lease` is given, adds it to that lease,
    /// all in one transaction. A missing lease fails the whole commit.
    pub fn commit(
        &self,
        ns: &str,
        digest: &str,
        size: i64,
        labels: Labels,
        lease: Option<&str>,
    ) -> Result<Committed, ContentError> {
        check_digest(digest)?;
        validate_labels(&labels).map_err(|e| ContentError::InvalidArgument(format!("info.Labels: {e}")))?;
        let labels: Labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        self.db.write(|txn| {
            ensure_namespace(txn, ns)?;
            if let Some(lease) = lease {
                add_resource_in(txn, ns, lease, &Resource { id: digest.into(), kind: "content".into() })?;
            }
            let mut t = txn.open_table(CONTENT).map_err(DbError::from)?;
            if let Some(v) = t.get((ns, digest)).map_err(DbError::from)? {
                return Ok(Committed::Existing(Info::from_record(digest.into(), decode("content", v.value())?)));
            }
            let now = now_nanos();
            let rec = ContentRecord { size, created_at: now, updated_at: now, labels };
            t.insert((ns, digest), encode(&rec).as_slice()).map_err(DbError::from)?;
            txn.open_table(BLOB_REFS).map_err(DbError::from)?.insert((digest, ns), ()).map_err(DbError::from)?;
            Ok(Committed::Created(Info::from_record(digest.into(), rec)))
        })
    }

    /// Adds existing content of `ns` to a lease (a writer opened for a
    /// digest the namespace already has, as containerd's `Writer` does).
    /// Returns whether the namespace still had the content: the check and
    /// the lease share one write transaction, so a collection cannot take
    /// the content between them (containerd checks and leases in one
    /// update too).
    pub fn lease_existing(&self, ns: &str, digest: &str, lease: &str) -> Result<bool, ContentError> {
        self.db.write(|txn| {
            let exists =
                txn.open_table(CONTENT).map_err(DbError::from)?.get((ns, digest)).map_err(DbError::from)?.is_some();
            if exists {
                add_resource_in(txn, ns, lease, &Resource { id: digest.into(), kind: "content".into() })?;
            }
            Ok(exists)
        })
    }

    /// Records an open writer's ingest: under a lease it joins the lease,
    /// as containerd's content Writer does, so a collection keeps what the
    /// write is for; without one it is kept for [`INGEST_TTL`] from now.
    pub fn open_ingest(&self, ns: &str, r: &str, lease: Option<&str>, now: i64) -> Result<(), ContentError> {
        self.db.write(|txn| {
            ensure_namespace(txn, ns)?;
            let expire = match lease {
                Some(lease) => {
                    add_resource_in(txn, ns, lease, &Resource { id: r.into(), kind: "ingests".into() })?;
                    INGEST_LEASED
                }
                None => now + INGEST_TTL,
            };
            txn.open_table(INGESTS).map_err(DbError::from)?.insert((ns, r), expire).map_err(DbError::from)?;
            Ok(())
        })
    }

    /// Forgets a committed or aborted ingest (and drops it from its lease:
    /// after a commit the lease holds the content itself).
    pub fn close_ingest(&self, ns: &str, r: &str, lease: Option<&str>) -> Result<(), ContentError> {
        self.db.write_quiet(|txn| {
            if let Some(lease) = lease {
                txn.open_table(crate::db::LEASE_RESOURCES)
                    .map_err(DbError::from)?
                    .remove((ns, lease, "ingests", r))
                    .map_err(DbError::from)?;
            }
            txn.open_table(INGESTS).map_err(DbError::from)?.remove((ns, r)).map_err(DbError::from)?;
            Ok(())
        })
    }

    /// Removes the record of `digest` from `ns`. Returns whether no
    /// namespace references the blob any more (the caller then deletes
    /// the raw blob).
    pub fn delete(&self, ns: &str, digest: &str) -> Result<bool, ContentError> {
        check_digest(digest)?;
        self.db.write_deleting(|txn| {
            let mut t = txn.open_table(CONTENT).map_err(DbError::from)?;
            if t.remove((ns, digest)).map_err(DbError::from)?.is_none() {
                return Err(Error::not_found(format!("content digest {digest}")).into());
            }
            let mut refs = txn.open_table(BLOB_REFS).map_err(DbError::from)?;
            refs.remove((digest, ns)).map_err(DbError::from)?;
            Ok(!is_referenced(&refs, digest)?)
        })
    }

    /// Whether any namespace holds a record of `digest`.
    pub fn referenced(&self, digest: &str) -> Result<bool, ContentError> {
        self.db.read(|txn| Ok(is_referenced(&txn.open_table(BLOB_REFS).map_err(DbError::from)?, digest)?))
    }

    /// Every record, as (namespace, info), for consistency checks.
    pub fn all(&self) -> Result<Vec<(String, Info)>, ContentError> {
        self.db.read(|txn| {
            let t = txn.open_table(CONTENT).map_err(DbError::from)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(DbError::from)? {
                let (k, v) = item.map_err(DbError::from)?;
                let (ns, digest) = k.value();
                out.push((ns.to_string(), Info::from_record(digest.to_string(), decode("content", v.value())?)));
            }
            Ok(out)
        })
    }
}

fn is_referenced<T: ReadableTable<(&'static str, &'static str), ()>>(refs: &T, digest: &str) -> Result<bool, DbError> {
    match refs.range((digest, "")..)?.next() {
        Some(item) => Ok(item?.0.value().0 == digest),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::LeaseStore;

    const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const D2: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn stores() -> (tempfile::TempDir, ContentStore, LeaseStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, ContentStore::new(db.clone()), LeaseStore::new(db))
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn records_are_per_namespace() {
        let (_d, s, _) = stores();
        assert!(matches!(s.commit("a", D1, 0, labels(&[("x", "1")]), None).unwrap(), Committed::Created(_)));
        assert!(matches!(s.info("b", D1), Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(s.list("b", &AnyFilter::default()).unwrap().is_empty());
        assert!(matches!(s.commit("a", D1, 0, Labels::new(), None).unwrap(), Committed::Existing(_)));
        s.commit("b", D1, 0, Labels::new(), None).unwrap();
        assert_eq!(s.info("a", D1).unwrap().labels, labels(&[("x", "1")]));
        assert!(s.info("b", D1).unwrap().labels.is_empty());
        // The blob stays referenced until its last record goes.
        assert!(!s.delete("a", D1).unwrap());
        assert!(s.referenced(D1).unwrap());
        assert!(s.delete("b", D1).unwrap());
        assert!(!s.referenced(D1).unwrap());
        assert!(matches!(s.delete("b", D1), Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(matches!(s.info("a", "sha256:nope"), Err(ContentError::InvalidArgument(_))));
    }

    #[test]
    fn list_filters_and_update() {
        let (_d, s, _) = stores();
        s.commit("a", D1, 0, labels(&[("k", "v")]), None).unwrap();
        s.commit("a", D2, 5, Labels::new(), None).unwrap();
        let f = |x: &str| s.list("a", &AnyFilter::parse(&[x]).unwrap()).unwrap().len();
        assert_eq!(f("size==5"), 1);
        assert_eq!(f("labels.k==v"), 1);
        assert_eq!(f(&format!("digest=={D2}")), 1);
        assert_eq!(s.list("a", &AnyFilter::default()).unwrap().len(), 2);
        let before = s.info("a", D2).unwrap();
        let i = s.update("a", D2, labels(&[("n", "1")]), &["labels.n".into()]).unwrap();
        assert_eq!(i.labels, labels(&[("n", "1")]));
        assert!(i.updated_at >= before.updated_at);
        assert_eq!(i.created_at, before.created_at);
        assert!(matches!(s.update("a", D2, Labels::new(), &["size".into()]), Err(ContentError::InvalidArgument(_))));
        assert!(matches!(s.update("b", D2, Labels::new(), &[]), Err(e) if e.kind() == ErrorKind::NotFound));
    }

    #[test]
    fn commit_with_lease_is_atomic() {
        let (_d, s, l) = stores();
        // A missing lease fails the commit and records nothing.
        assert!(matches!(
            s.commit("a", D1, 0, Labels::new(), Some("nope")),
            Err(ContentError::Lease(e)) if e.kind() == ErrorKind::NotFound
        ));
        assert!(matches!(s.info("a", D1), Err(e) if e.kind() == ErrorKind::NotFound));
        l.create("a", "l", Labels::new()).unwrap();
        s.commit("a", D1, 0, Labels::new(), Some("l")).unwrap();
        assert_eq!(l.list_resources("a", "l").unwrap(), vec![Resource { id: D1.into(), kind: "content".into() }]);
        assert_eq!(s.all().unwrap().len(), 1);
    }
}
