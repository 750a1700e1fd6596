//! The namespace store: containerd's `metadata/namespaces.go` on redb.

use crated_plugin_api::{Error, ErrorKind};
use redb::ReadableTable;

use crate::db::{
    any_in_ns, decode, encode, Db, DbError, Labels, NamespaceRecord, CONTAINERS, CONTENT, IMAGES, LEASES, NAMESPACES,
};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("namespace {name:?} must be empty, but it still has {kinds}")]
    NotEmpty { name: String, kinds: String },
    /// Not found, already exists...: containerd's kinds, printed as its
    /// errdefs print them.
    #[error(transparent)]
    Kind(#[from] Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl NamespaceError {
    /// The kind of the failure, which gives its gRPC code (the variants
    /// other than `Kind` keep containerd's own wording, without a suffix).
    pub fn kind(&self) -> ErrorKind {
        match self {
            NamespaceError::Kind(e) => e.kind(),
            NamespaceError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            NamespaceError::NotEmpty { .. } => ErrorKind::FailedPrecondition,
            NamespaceError::Db(_) => ErrorKind::Internal,
        }
    }
}

pub use crated_plugin_api::validate::identifier as validate_identifier;

pub use crated_plugin_api::validate::label as validate_label;

pub use crated_plugin_api::validate::labels as validate_labels;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone)]
pub struct NamespaceStore {
    db: Db,
}

fn invalid_name(name: &str, e: String) -> NamespaceError {
    NamespaceError::InvalidArgument(format!("namespace {name:?}: {e}"))
}

impl NamespaceStore {
    pub fn new(db: Db) -> Self {
        NamespaceStore { db }
    }

    pub fn create(&self, name: &str, labels: Labels) -> Result<Namespace, NamespaceError> {
        validate_identifier(name).map_err(|e| invalid_name(name, e))?;
        validate_labels(&labels).map_err(|e| NamespaceError::InvalidArgument(format!("namespace.Labels: {e}")))?;
        let labels: Labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        self.db.write(|txn| {
            let mut t = txn.open_table(NAMESPACES).map_err(DbError::from)?;
            if t.get(name).map_err(DbError::from)?.is_some() {
                return Err(Error::already_exists(format!("namespace {name:?}")).into());
            }
            let rec = NamespaceRecord { labels: labels.clone() };
            t.insert(name, encode(&rec).as_slice()).map_err(DbError::from)?;
            Ok(Namespace { name: name.into(), labels })
        })
    }

    pub fn get(&self, name: &str) -> Result<Namespace, NamespaceError> {
        self.db.read(|txn| {
            let t = txn.open_table(NAMESPACES).map_err(DbError::from)?;
            let v =
                t.get(name).map_err(DbError::from)?.ok_or_else(|| Error::not_found(format!("namespace {name:?}")))?;
            let rec: NamespaceRecord = decode("namespaces", v.value())?;
            Ok(Namespace { name: name.into(), labels: rec.labels })
        })
    }

    pub fn list(&self) -> Result<Vec<Namespace>, NamespaceError> {
        self.db.read(|txn| {
            let t = txn.open_table(NAMESPACES).map_err(DbError::from)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(DbError::from)? {
                let (k, v) = item.map_err(DbError::from)?;
                let rec: NamespaceRecord = decode("namespaces", v.value())?;
                out.push(Namespace { name: k.value().to_string(), labels: rec.labels });
            }
            Ok(out)
        })
    }

    /// Updates labels: with no paths the labels are replaced by `labels`;
    /// `labels` replaces them too; `labels.<key>` sets (or, with an empty or
    /// missing value, removes) one label. Other paths are `InvalidArgument`.
    pub fn update(&self, name: &str, labels: Labels, paths: &[String]) -> Result<Namespace, NamespaceError> {
        validate_labels(&labels).map_err(|e| NamespaceError::InvalidArgument(format!("namespace.Labels: {e}")))?;
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(NamespaceError::InvalidArgument(format!("cannot update {p:?} field")));
            }
        }
        validate_identifier(name).map_err(|e| invalid_name(name, e))?;
        self.db.write(|txn| {
            let mut t = txn.open_table(NAMESPACES).map_err(DbError::from)?;
            // Like containerd (SetLabel creates the bucket), updating a
            // namespace that does not exist creates it.
            let mut rec: NamespaceRecord = match t.get(name).map_err(DbError::from)? {
                Some(v) => decode("namespaces", v.value())?,
                None => NamespaceRecord::default(),
            };
            apply_label_paths(&mut rec.labels, &labels, paths);
            t.insert(name, encode(&rec).as_slice()).map_err(DbError::from)?;
            Ok(Namespace { name: name.into(), labels: rec.labels })
        })
    }

    /// Deletes an empty namespace.
    pub fn delete(&self, name: &str) -> Result<(), NamespaceError> {
        self.db.write(|txn| {
            let mut t = txn.open_table(NAMESPACES).map_err(DbError::from)?;
            if t.get(name).map_err(DbError::from)?.is_none() {
                return Err(Error::not_found(format!("namespace {name:?}")).into());
            }
            // In the order of containerd's buckets under v1/<namespace>
            // (metadata/namespaces.go listNs); it names content "blobs".
            let mut kinds = Vec::new();
            if any_in_ns(&txn.open_table(CONTAINERS).map_err(DbError::from)?, name)? {
                kinds.push("containers");
            }
            if any_in_ns(&txn.open_table(CONTENT).map_err(DbError::from)?, name)? {
                kinds.push("blobs");
            }
            if any_in_ns(&txn.open_table(IMAGES).map_err(DbError::from)?, name)? {
                kinds.push("images");
            }
            if any_in_ns(&txn.open_table(LEASES).map_err(DbError::from)?, name)? {
                kinds.push("leases");
            }
            let snapshotters = crate::snapshots::snapshotters_in(txn, name)?;
            let snapshot_kinds: Vec<String> =
                snapshotters.iter().map(|sn| format!("snapshots on {sn:?} snapshotter")).collect();
            kinds.extend(snapshot_kinds.iter().map(String::as_str));
            if !kinds.is_empty() {
                return Err(NamespaceError::NotEmpty { name: name.into(), kinds: kinds.join(", ") });
            }
            t.remove(name).map_err(DbError::from)?;
            Ok(())
        })
    }
}

/// containerd's label update rules shared by namespaces, content and
/// leases: no paths or `labels` replace all; `labels.<k>` sets or removes
/// one key. Empty values are never stored (boltutil.WriteLabels skips them).
pub fn apply_label_paths(current: &mut Labels, new: &Labels, paths: &[String]) {
    if paths.is_empty() || paths.iter().any(|p| p == "labels") {
        *current = new.clone();
    }
    for p in paths {
        if let Some(key) = p.strip_prefix("labels.") {
            match new.get(key) {
                Some(v) if !v.is_empty() => {
                    current.insert(key.to_string(), v.clone());
                }
                _ => {
                    current.remove(key);
                }
            }
        }
    }
    current.retain(|_, v| !v.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::ensure_namespace;

    fn store() -> (tempfile::TempDir, NamespaceStore, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, NamespaceStore::new(db.clone()), db)
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn identifiers_follow_containerd() {
        for ok in ["a", "default", "k8s.io", "moby", "a-b_c.d", "A1", &"x".repeat(76)] {
            assert!(validate_identifier(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a/b", "a b", "ä", ".a", "a_", &"x".repeat(77)] {
            assert!(validate_identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_get_list_update_delete() {
        let (_d, s, _db) = store();
        s.create("one", labels(&[("a", "1")])).unwrap();
        assert!(matches!(s.create("one", Labels::new()), Err(e) if e.kind() == ErrorKind::AlreadyExists));
        assert!(matches!(s.create("bad/name", Labels::new()), Err(NamespaceError::InvalidArgument(_))));
        s.create("two", Labels::new()).unwrap();
        assert_eq!(s.get("one").unwrap().labels, labels(&[("a", "1")]));
        let names: Vec<_> = s.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["one", "two"]);

        let n = s.update("one", labels(&[("b", "2")]), &["labels.b".into()]).unwrap();
        assert_eq!(n.labels, labels(&[("a", "1"), ("b", "2")]));
        let n = s.update("one", Labels::new(), &["labels.a".into()]).unwrap();
        assert_eq!(n.labels, labels(&[("b", "2")]));
        let n = s.update("one", labels(&[("c", "3")]), &[]).unwrap();
        assert_eq!(n.labels, labels(&[("c", "3")]));
        assert!(matches!(s.update("one", Labels::new(), &["name".into()]), Err(NamespaceError::InvalidArgument(_))));
        // Updating a missing namespace creates it, as containerd does.
        let n = s.update("fresh", labels(&[("k", "v")]), &["labels.k".into()]).unwrap();
        assert_eq!(s.get("fresh").unwrap(), n);
        assert!(matches!(s.update("bad name", Labels::new(), &[]), Err(NamespaceError::InvalidArgument(_))));

        s.delete("two").unwrap();
        assert!(matches!(s.get("two"), Err(e) if e.kind() == ErrorKind::NotFound));
        assert!(matches!(s.delete("two"), Err(e) if e.kind() == ErrorKind::NotFound));
    }

    #[test]
    fn delete_refuses_non_empty() {
        let (_d, s, db) = store();
        let leases = crate::leases::LeaseStore::new(db.clone());
        leases.create("busy", "l1", Labels::new()).unwrap();
        let e = s.delete("busy").unwrap_err();
        assert!(matches!(e, NamespaceError::NotEmpty { .. }));
        assert_eq!(e.to_string(), "namespace \"busy\" must be empty, but it still has leases");
        leases.delete("busy", "l1").unwrap();
        s.delete("busy").unwrap();

        // Images and containers keep a namespace too, named as containerd does.
        let images = crate::images::ImageStore::new(db.clone());
        let containers = crate::containers::ContainerStore::new(db.clone());
        let image = crate::images::Image {
            name: "img".into(),
            target: crate::images::Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                size: 1,
                annotations: Labels::new(),
            },
            ..Default::default()
        };
        images.create("full", image).unwrap();
        let c = crate::containers::Container {
            id: "c".into(),
            runtime: crate::containers::Runtime { name: "rt".into(), options: None },
            spec: Some(Default::default()),
            ..Default::default()
        };
        containers.create("full", c).unwrap();
        leases.create("full", "l", Labels::new()).unwrap();
        let e = s.delete("full").unwrap_err();
        assert_eq!(e.to_string(), "namespace \"full\" must be empty, but it still has containers, images, leases");
        leases.delete("full", "l").unwrap();
        containers.delete("full", "c").unwrap();
        let e = s.delete("full").unwrap_err();
        assert_eq!(e.to_string(), "namespace \"full\" must be empty, but it still has images");
        images.delete("full", "img", None).unwrap();
        s.delete("full").unwrap();
        db.write(|txn| ensure_namespace(txn, "x").map(|_| ())).unwrap();
        assert!(s.get("x").is_ok(), "implicitly created namespaces are listed");
    }
}
