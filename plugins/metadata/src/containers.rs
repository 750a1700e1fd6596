//! The container store: containerd's `metadata/containers.go` on redb.
//!
//! A container is metadata only (no task): an id in a namespace with an
//! image name, a runtime (name and options), an OCI spec, a snapshotter and
//! snapshot key, labels and extensions. The spec, the runtime options and
//! the extensions are `Any`s kept opaque, as containerd keeps them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crated_plugin_api::filters::{labels_field, AnyFilter, Fields};
use crated_plugin_api::{Error, ErrorKind};
use redb::ReadableTable;

use crate::db::{
    decode, encode, ensure_namespace, now_nanos, scan_ns, AnyRecord, ContainerRecord, Db, DbError, Labels, CONTAINERS,
};
use crate::namespaces::{apply_label_paths, validate_identifier, validate_labels};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{0}")]
    InvalidArgument(String),
    /// What was not found, worded as containerd words it per operation.
    /// Not found, already exists...: containerd's kinds, printed as its
    /// errdefs print them.
    #[error(transparent)]
    Kind(#[from] Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ContainerError {
    /// The kind of the failure, which gives its gRPC code (the variants
    /// other than `Kind` keep containerd's own wording, without a suffix).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ContainerError::Kind(e) => e.kind(),
            ContainerError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ContainerError::Db(_) => ErrorKind::Internal,
        }
    }
}

pub type AnyValue = AnyRecord;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runtime {
    pub name: String,
    pub options: Option<AnyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub labels: Labels,
    pub image: String,
    pub runtime: Runtime,
    pub spec: Option<AnyValue>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub extensions: BTreeMap<String, AnyValue>,
    pub sandbox: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Container {
    fn from_record(id: String, r: ContainerRecord) -> Container {
        Container {
            id,
            labels: r.labels,
            image: r.image,
            runtime: Runtime { name: r.runtime_name, options: r.runtime_options },
            spec: r.spec,
            snapshotter: r.snapshotter,
            snapshot_key: r.snapshot_key,
            extensions: r.extensions,
            sandbox: r.sandbox,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }

    fn record(&self) -> ContainerRecord {
        ContainerRecord {
            image: self.image.clone(),
            runtime_name: self.runtime.name.clone(),
            runtime_options: self.runtime.options.clone(),
            spec: self.spec.clone(),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: self.snapshot_key.clone(),
            extensions: self.extensions.clone(),
            sandbox: self.sandbox.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            labels: self.labels.clone(),
        }
    }
}

/// containerd's container filter adaptor (`metadata/adaptors.go`
/// adaptContainer): `id`, `image`, `runtime.name`, `labels.<key>`. An empty
/// value is absent.
impl Fields for Container {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        let v = match (path.first().map(String::as_str), path.get(1).map(String::as_str)) {
            (Some("id"), _) => self.id.as_str(),
            (Some("image"), _) => self.image.as_str(),
            (Some("runtime"), Some("name")) => self.runtime.name.as_str(),
            (Some("labels"), _) => {
                return labels_field(path, self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
            _ => return None,
        };
        (!v.is_empty()).then_some(Cow::Borrowed(v))
    }
}

/// containerd's `validateContainer`.
pub fn validate(c: &Container) -> Result<(), ContainerError> {
    validate_identifier(&c.id).map_err(|e| ContainerError::InvalidArgument(format!("container.ID: {e}")))?;
    if c.extensions.keys().any(String::is_empty) {
        return Err(ContainerError::InvalidArgument("container.Extension keys must not be zero-length".into()));
    }
    validate_labels(&c.labels).map_err(|e| ContainerError::InvalidArgument(format!("containers.Labels: {e}")))?;
    if c.runtime.name.is_empty() {
        return Err(ContainerError::InvalidArgument("container.Runtime.Name must be set".into()));
    }
    if c.spec.is_none() {
        return Err(ContainerError::InvalidArgument("container.Spec must be set".into()));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(ContainerError::InvalidArgument(
            "container.Snapshotter must be set if container.SnapshotKey is set".into(),
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub struct ContainerStore {
    db: Db,
}

impl ContainerStore {
    pub fn new(db: Db) -> Self {
        ContainerStore { db }
    }

    pub fn get(&self, ns: &str, id: &str) -> Result<Container, ContainerError> {
        self.db.read(|txn| {
            let t = txn.open_table(CONTAINERS).map_err(DbError::from)?;
            let v = t
                .get((ns, id))
                .map_err(DbError::from)?
                .ok_or_else(|| Error::not_found(format!("container {id:?} in namespace {ns:?}")))?;
            Ok(Container::from_record(id.into(), decode("containers", v.value())?))
        })
    }

    pub fn list(&self, ns: &str, filter: &AnyFilter) -> Result<Vec<Container>, ContainerError> {
        self.db.read(|txn| {
            let t = txn.open_table(CONTAINERS).map_err(DbError::from)?;
            let mut out = Vec::new();
            for (id, v) in scan_ns(&t, ns)? {
                let c = Container::from_record(id, decode("containers", &v)?);
                if filter.matches(&c) {
                    out.push(c);
                }
            }
            Ok(out)
        })
    }

    /// Creates a container (and, implicitly, the namespace).
    pub fn create(&self, ns: &str, mut c: Container) -> Result<Container, ContainerError> {
        validate(&c).map_err(|e| match e {
            ContainerError::InvalidArgument(m) => {
                ContainerError::InvalidArgument(format!("create container failed validation: {m}"))
            }
            e => e,
        })?;
        c.labels.retain(|_, v| !v.is_empty());
        self.db.write(|txn| {
            ensure_namespace(txn, ns)?;
            let mut t = txn.open_table(CONTAINERS).map_err(DbError::from)?;
            if t.get((ns, c.id.as_str())).map_err(DbError::from)?.is_some() {
                return Err(Error::already_exists(format!("container {:?}", c.id)).into());
            }
            c.created_at = now_nanos();
            c.updated_at = c.created_at;
            t.insert((ns, c.id.as_str()), encode(&c.record()).as_slice()).map_err(DbError::from)?;
            Ok(c)
        })
    }

    /// containerd's container Update. With no paths, `labels`, `spec`,
    /// `extensions`, `image` and `snapshotkey` are replaced, and a request
    /// that changes the snapshotter or the runtime name is refused (they
    /// are immutable). With paths, only those: the five above plus
    /// `labels.<key>` and `extensions.<key>` (a key absent from the request
    /// removes it); anything else, `runtime` included, is
    /// `InvalidArgument`. The result is validated; `created_at` is kept.
    pub fn update(&self, ns: &str, c: Container, paths: &[String]) -> Result<Container, ContainerError> {
        if c.id.is_empty() {
            return Err(ContainerError::InvalidArgument("must specify a container id".into()));
        }
        self.db.write(|txn| {
            let mut t = txn.open_table(CONTAINERS).map_err(DbError::from)?;
            let mut updated = {
                let v = t
                    .get((ns, c.id.as_str()))
                    .map_err(DbError::from)?
                    .ok_or_else(|| Error::not_found(format!("container {:?}", c.id)))?;
                Container::from_record(c.id.clone(), decode("containers", v.value())?)
            };
            let created_at = updated.created_at;
            let paths: Vec<String> = if paths.is_empty() {
                if updated.snapshotter != c.snapshotter {
                    return Err(ContainerError::InvalidArgument("container.Snapshotter field is immutable".into()));
                }
                if updated.runtime.name != c.runtime.name {
                    return Err(ContainerError::InvalidArgument("container.Runtime.Name field is immutable".into()));
                }
                ["labels", "spec", "extensions", "image", "snapshotkey"].map(String::from).to_vec()
            } else {
                paths.to_vec()
            };
            for p in &paths {
                if p.starts_with("labels.") {
                    continue;
                }
                if let Some(key) = p.strip_prefix("extensions.") {
                    match c.extensions.get(key) {
                        Some(v) => updated.extensions.insert(key.to_string(), v.clone()),
                        None => updated.extensions.remove(key),
                    };
                    continue;
                }
                match p.as_str() {
                    "labels" => {}
                    "spec" => updated.spec = c.spec.clone(),
                    "extensions" => updated.extensions = c.extensions.clone(),
                    "image" => updated.image = c.image.clone(),
                    "snapshotkey" => updated.snapshot_key = c.snapshot_key.clone(),
                    _ => {
                        return Err(ContainerError::InvalidArgument(format!(
                            "cannot update {p:?} field on {:?}",
                            c.id
                        )));
                    }
                }
            }
            let label_paths: Vec<String> =
                paths.iter().filter(|p| *p == "labels" || p.starts_with("labels.")).cloned().collect();
            if !label_paths.is_empty() {
                apply_label_paths(&mut updated.labels, &c.labels, &label_paths);
            }
            validate(&updated).map_err(|e| match e {
                ContainerError::InvalidArgument(m) => {
                    ContainerError::InvalidArgument(format!("update failed validation: {m}"))
                }
                e => e,
            })?;
            updated.created_at = created_at;
            updated.updated_at = now_nanos();
            t.insert((ns, updated.id.as_str()), encode(&updated.record()).as_slice()).map_err(DbError::from)?;
            Ok(updated)
        })
    }

    pub fn delete(&self, ns: &str, id: &str) -> Result<(), ContainerError> {
        self.db.write_deleting(|txn| {
            let mut t = txn.open_table(CONTAINERS).map_err(DbError::from)?;
            if t.remove((ns, id)).map_err(DbError::from)?.is_none() {
                // containerd formats this one with %v: no quotes.
                return Err(Error::not_found(format!("container {id}")).into());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContainerStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, ContainerStore::new(db))
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn any(t: &str, v: &[u8]) -> AnyValue {
        AnyValue { type_url: t.into(), value: v.to_vec() }
    }

    fn container(id: &str, image: &str, runtime: &str, l: &[(&str, &str)]) -> Container {
        Container {
            id: id.into(),
            labels: labels(l),
            image: image.into(),
            runtime: Runtime { name: runtime.into(), options: Some(any("opts", b"\x01")) },
            spec: Some(any("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")),
            ..Default::default()
        }
    }

    #[test]
    fn create_get_list_delete() {
        let (_d, s) = store();
        let mut c1 = container("c1", "docker.io/library/a:1", "io.containerd.runc.v2", &[("k", "v")]);
        c1.extensions.insert("ext".into(), any("e", &[0, 255]));
        c1.snapshotter = "overlayfs".into();
        c1.snapshot_key = "c1-snap".into();
        let made = s.create("ns", c1.clone()).unwrap();
        assert!(made.created_at > 0 && made.created_at == made.updated_at);
        let got = s.get("ns", "c1").unwrap();
        assert_eq!(got, made);
        assert_eq!(got.extensions["ext"].value, vec![0, 255]);
        assert_eq!(got.runtime.options, Some(any("opts", b"\x01")));
        assert!(matches!(s.create("ns", c1), Err(e) if e.kind() == ErrorKind::AlreadyExists));
        s.create("ns", container("c2", "", "io.containerd.runtime.v1.linux", &[])).unwrap();
        s.create("other", container("c1", "x", "r", &[])).unwrap();
        assert_eq!(s.get("other", "c1").unwrap().image, "x");

        let ids = |f: &[&str]| -> Vec<String> {
            s.list("ns", &AnyFilter::parse(f).unwrap()).unwrap().into_iter().map(|c| c.id).collect()
        };
        assert_eq!(ids(&[]), ["c1", "c2"]);
        assert_eq!(ids(&["id==c2"]), ["c2"]);
        assert_eq!(ids(&["image==docker.io/library/a:1"]), ["c1"]);
        assert_eq!(ids(&["image"]), ["c1"], "an empty image is absent");
        assert_eq!(ids(&["runtime.name==io.containerd.runtime.v1.linux"]), ["c2"]);
        assert_eq!(ids(&["labels.k==v"]), ["c1"]);
        assert_eq!(ids(&["labels.k!=v"]), ["c2"]);

        s.delete("ns", "c1").unwrap();
        assert_eq!(s.get("ns", "c1").unwrap_err().to_string(), "container \"c1\" in namespace \"ns\": not found");
        assert_eq!(s.delete("ns", "c1").unwrap_err().to_string(), "container c1: not found");
        assert!(s.get("other", "c1").is_ok());
    }

    #[test]
    fn validation_follows_containerd() {
        let (_d, s) = store();
        let check = |c: Container, want: &str| {
            let e = s.create("ns", c).unwrap_err();
            assert!(matches!(e, ContainerError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().starts_with("create container failed validation: "), "{e}");
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        };
        check(container("", "i", "r", &[]), "container.ID");
        check(container("bad/id", "i", "r", &[]), "container.ID");
        check(container("c", "i", "", &[]), "container.Runtime.Name must be set");
        let mut no_spec = container("c", "i", "r", &[]);
        no_spec.spec = None;
        check(no_spec, "container.Spec must be set");
        let mut key = container("c", "i", "r", &[]);
        key.snapshot_key = "k".into();
        check(key, "container.Snapshotter must be set if container.SnapshotKey is set");
        let mut ext = container("c", "i", "r", &[]);
        ext.extensions.insert(String::new(), any("e", b""));
        check(ext, "container.Extension keys must not be zero-length");
        check(container("c", "i", "r", &[("", "v")]), "containers.Labels");
        assert!(s.list("ns", &AnyFilter::default()).unwrap().is_empty());
    }

    #[test]
    fn update_by_field_mask() {
        let (_d, s) = store();
        let mut base = container("c", "img:1", "rt", &[("a", "1"), ("b", "2")]);
        base.extensions.insert("e1".into(), any("e", b"1"));
        base.snapshotter = "overlayfs".into();
        let created = s.create("ns", base.clone()).unwrap();

        let mut req = container("c", "img:2", "other-runtime", &[("c", "3")]);
        req.extensions.insert("e2".into(), any("e", b"2"));
        req.spec = Some(any("spec2", b"{}"));
        let u = s
            .update("ns", req.clone(), &["labels.c".into(), "labels.a".into(), "extensions.e2".into(), "image".into()])
            .unwrap();
        assert_eq!(u.labels, labels(&[("b", "2"), ("c", "3")]));
        assert_eq!(u.image, "img:2");
        assert_eq!(u.extensions.keys().collect::<Vec<_>>(), ["e1", "e2"]);
        assert_eq!(u.runtime.name, "rt", "runtime is never updated");
        assert_eq!(u.spec, base.spec, "spec untouched without its path");
        assert_eq!(u.created_at, created.created_at);
        assert!(u.updated_at >= created.updated_at);

        let u = s.update("ns", req.clone(), &["spec".into(), "extensions.e1".into()]).unwrap();
        assert_eq!(u.spec, req.spec);
        assert_eq!(u.extensions.keys().collect::<Vec<_>>(), ["e2"], "an absent key is removed");

        let mut key = req.clone();
        key.snapshot_key = "snap".into();
        assert_eq!(s.update("ns", key, &["snapshotkey".into()]).unwrap().snapshot_key, "snap");

        for p in ["runtime", "snapshotter", "id", "created_at"] {
            let e = s.update("ns", req.clone(), &[p.into()]).unwrap_err();
            assert_eq!(e.to_string(), format!("cannot update {p:?} field on \"c\""));
        }

        // No paths: immutable fields must match, the rest is replaced.
        let e = s.update("ns", req.clone(), &[]).unwrap_err();
        assert_eq!(e.to_string(), "container.Snapshotter field is immutable");
        let mut full = req.clone();
        full.snapshotter = "overlayfs".into();
        let e = s.update("ns", full.clone(), &[]).unwrap_err();
        assert_eq!(e.to_string(), "container.Runtime.Name field is immutable");
        full.runtime.name = "rt".into();
        full.labels = labels(&[("z", "9")]);
        let u = s.update("ns", full.clone(), &[]).unwrap();
        assert_eq!(u.labels, labels(&[("z", "9")]));
        assert_eq!(u.snapshot_key, "", "snapshotkey replaced too");
        assert_eq!(u.runtime.options, base.runtime.options);

        // The result is validated: a spec cannot be removed.
        let mut nospec = full.clone();
        nospec.spec = None;
        let e = s.update("ns", nospec, &["spec".into()]).unwrap_err();
        assert_eq!(e.to_string(), "update failed validation: container.Spec must be set");
        assert!(s.get("ns", "c").unwrap().spec.is_some());

        assert!(
            matches!(s.update("ns", container("nope", "", "rt", &[]), &[]), Err(e) if e.kind() == ErrorKind::NotFound)
        );
        assert!(matches!(s.update("ns", container("", "", "rt", &[]), &[]), Err(ContainerError::InvalidArgument(_))));
    }
}
