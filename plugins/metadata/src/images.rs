//! The image store: containerd's `metadata/images.go` (1.6) on redb.
//!
//! An image is a name in a namespace pointing at a target descriptor, with
//! labels and times. Create and every update validate the image as
//! containerd's `validateImage` does (a name; labels; a target with a valid
//! digest, a size above zero and a media type). No blob is required to
//! exist: containerd does not check the content store either.

use std::borrow::Cow;

use crated_plugin_api::filters::{labels_field, AnyFilter, Fields};
use crated_plugin_api::{Error, ErrorKind};
use redb::ReadableTable;

use crate::db::{
    decode, encode, ensure_namespace, now_nanos, scan_ns, Db, DbError, DescriptorRecord, ImageRecord, Labels, IMAGES,
};
use crate::leases::validate_digest;
use crate::namespaces::{apply_label_paths, validate_labels};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    InvalidArgument(String),
    /// Not found, already exists...: containerd's kinds, printed as its
    /// errdefs print them.
    #[error(transparent)]
    Kind(#[from] Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ImageError {
    /// The kind of the failure, which gives its gRPC code (the variants
    /// other than `Kind` keep containerd's own wording, without a suffix).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Kind(e) => e.kind(),
            ImageError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ImageError::Db(_) => ErrorKind::Internal,
        }
    }
}

pub type Descriptor = DescriptorRecord;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub labels: Labels,
    pub target: Descriptor,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Image {
    fn from_record(name: String, r: ImageRecord) -> Image {
        Image { name, labels: r.labels, target: r.target, created_at: r.created_at, updated_at: r.updated_at }
    }

    fn record(&self) -> ImageRecord {
        ImageRecord {
            target: self.target.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            labels: self.labels.clone(),
        }
    }
}

/// containerd's image filter adaptor (`metadata/adaptors.go` adaptImage):
/// `name`, `target.digest`, `target.mediatype`, `labels.<key>`,
/// `annotations.<key>` (of the target). An empty value is absent.
impl Fields for Image {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        let present = |s: &str| (!s.is_empty()).then_some(());
        let v = match (path.first().map(String::as_str), path.get(1).map(String::as_str)) {
            (Some("name"), _) => Cow::Borrowed(self.name.as_str()),
            (Some("target"), Some("digest")) => Cow::Borrowed(self.target.digest.as_str()),
            (Some("target"), Some("mediatype")) => Cow::Borrowed(self.target.media_type.as_str()),
            (Some("labels"), _) => {
                return labels_field(path, self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
            (Some("annotations"), Some(_)) => {
                let key = path[1..].join(".");
                return self.target.annotations.get(&key).map(|v| Cow::Borrowed(v.as_str()));
            }
            _ => return None,
        };
        present(&v)?;
        Some(v)
    }
}

/// containerd's `validateImage` and `validateTarget`.
pub fn validate(image: &Image) -> Result<(), ImageError> {
    if image.name.is_empty() {
        return Err(ImageError::InvalidArgument("image name must not be empty".into()));
    }
    validate_labels(&image.labels).map_err(|e| ImageError::InvalidArgument(format!("image.Labels: {e}")))?;
    let t = &image.target;
    validate_digest(&t.digest)
        .map_err(|e| ImageError::InvalidArgument(format!("Target.Digest {:?} invalid: {e}", t.digest)))?;
    if t.size <= 0 {
        return Err(ImageError::InvalidArgument("Target.Size must be greater than zero".into()));
    }
    if t.media_type.is_empty() {
        return Err(ImageError::InvalidArgument("Target.MediaType must be set".into()));
    }
    Ok(())
}

/// Empty label and annotation values are never stored (containerd's
/// `boltutil.WriteLabels`/`WriteAnnotations` skip them).
fn normalise(image: &mut Image) {
    image.labels.retain(|_, v| !v.is_empty());
    image.target.annotations.retain(|_, v| !v.is_empty());
}

#[derive(Clone)]
pub struct ImageStore {
    db: Db,
}

impl ImageStore {
    pub fn new(db: Db) -> Self {
        ImageStore { db }
    }

    pub fn get(&self, ns: &str, name: &str) -> Result<Image, ImageError> {
        self.db.read(|txn| {
            let t = txn.open_table(IMAGES).map_err(DbError::from)?;
            let v =
                t.get((ns, name)).map_err(DbError::from)?.ok_or_else(|| Error::not_found(format!("image {name:?}")))?;
            Ok(Image::from_record(name.into(), decode("images", v.value())?))
        })
    }

    pub fn list(&self, ns: &str, filter: &AnyFilter) -> Result<Vec<Image>, ImageError> {
        self.db.read(|txn| {
            let t = txn.open_table(IMAGES).map_err(DbError::from)?;
            let mut out = Vec::new();
            for (name, v) in scan_ns(&t, ns)? {
                let image = Image::from_record(name, decode("images", &v)?);
                if filter.matches(&image) {
                    out.push(image);
                }
            }
            Ok(out)
        })
    }

    /// Creates an image (and, implicitly, the namespace); the times are set
    /// here, whatever the caller passed.
    pub fn create(&self, ns: &str, mut image: Image) -> Result<Image, ImageError> {
        validate(&image)?;
        normalise(&mut image);
        self.db.write(|txn| {
            ensure_namespace(txn, ns)?;
            let mut t = txn.open_table(IMAGES).map_err(DbError::from)?;
            if t.get((ns, image.name.as_str())).map_err(DbError::from)?.is_some() {
                return Err(Error::already_exists(format!("image {:?}", image.name)).into());
            }
            image.created_at = now_nanos();
            image.updated_at = image.created_at;
            t.insert((ns, image.name.as_str()), encode(&image.record()).as_slice()).map_err(DbError::from)?;
            Ok(image)
        })
    }

    /// containerd's image Update: with no paths the image is replaced
    /// (labels and target); otherwise `labels`, `labels.<key>`, `target`
    /// (as a unit), `annotations` and `annotations.<key>` (of the target)
    /// are taken from `image`; any other path is `InvalidArgument`. The
    /// result is validated; `created_at` is kept.
    pub fn update(&self, ns: &str, image: Image, paths: &[String]) -> Result<Image, ImageError> {
        if image.name.is_empty() {
            return Err(ImageError::InvalidArgument("image name is required for update".into()));
        }
        for p in paths {
            let ok = matches!(p.as_str(), "labels" | "target" | "annotations")
                || p.starts_with("labels.")
                || p.starts_with("annotations.");
            if !ok {
                return Err(ImageError::InvalidArgument(format!(
                    "cannot update {p:?} field on image {:?}",
                    image.name
                )));
            }
        }
        self.db.write(|txn| {
            let mut t = txn.open_table(IMAGES).map_err(DbError::from)?;
            let mut updated = {
                let v = t
                    .get((ns, image.name.as_str()))
                    .map_err(DbError::from)?
                    .ok_or_else(|| Error::not_found(format!("image {:?}", image.name)))?;
                Image::from_record(image.name.clone(), decode("images", v.value())?)
            };
            let created_at = updated.created_at;
            if paths.is_empty() {
                updated = image.clone();
            } else {
                for p in paths {
                    match p.as_str() {
                        "target" => updated.target = image.target.clone(),
                        "annotations" => updated.target.annotations = image.target.annotations.clone(),
                        _ => {
                            if let Some(key) = p.strip_prefix("annotations.") {
                                match image.target.annotations.get(key) {
                                    Some(v) => updated.target.annotations.insert(key.to_string(), v.clone()),
                                    None => updated.target.annotations.remove(key),
                                };
                            }
                        }
                    }
                }
                let label_paths: Vec<String> = paths.iter().filter(|p| p.starts_with("labels")).cloned().collect();
                if !label_paths.is_empty() {
                    apply_label_paths(&mut updated.labels, &image.labels, &label_paths);
                }
            }
            validate(&updated)?;
            normalise(&mut updated);
            updated.created_at = created_at;
            updated.updated_at = now_nanos();
            t.insert((ns, updated.name.as_str()), encode(&updated.record()).as_slice()).map_err(DbError::from)?;
            Ok(updated)
        })
    }

    /// Deletes an image. With `target` (the request's optional target of
    /// containerd 2.x's API), an image whose target digest differs is
    /// `NotFound` and stays.
    pub fn delete(&self, ns: &str, name: &str, target: Option<&str>) -> Result<(), ImageError> {
        self.db.write_deleting(|txn| {
            let mut t = txn.open_table(IMAGES).map_err(DbError::from)?;
            if let Some(want) = target {
                let rec: ImageRecord = match t.get((ns, name)).map_err(DbError::from)? {
                    Some(v) => decode("images", v.value())?,
                    None => return Err(Error::not_found(format!("image {name:?}")).into()),
                };
                if rec.target.digest != want {
                    return Err(Error::not_found(format!("image {name:?}")).into());
                }
            }
            if t.remove((ns, name)).map_err(DbError::from)?.is_none() {
                return Err(Error::not_found(format!("image {name:?}")).into());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const D2: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    fn store() -> (tempfile::TempDir, ImageStore, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.redb")).unwrap();
        (dir, ImageStore::new(db.clone()), db)
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn image(name: &str, digest: &str, media_type: &str, l: &[(&str, &str)]) -> Image {
        Image {
            name: name.into(),
            labels: labels(l),
            target: Descriptor {
                media_type: media_type.into(),
                digest: digest.into(),
                size: 10,
                annotations: Labels::new(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn create_get_list_delete_per_namespace() {
        let (_d, s, db) = store();
        let a = s.create("ns", image("docker.io/library/a:1", D1, MANIFEST, &[("k", "v"), ("empty", "")])).unwrap();
        assert!(a.created_at > 0 && a.created_at == a.updated_at);
        assert_eq!(a.labels, labels(&[("k", "v")]), "empty values are dropped");
        assert!(matches!(
            s.create("ns", image("docker.io/library/a:1", D2, MANIFEST, &[])),
            Err(e) if e.kind() == ErrorKind::AlreadyExists
        ));
        s.create("ns", image("b", D2, INDEX, &[])).unwrap();
        s.create("other", image("b", D1, MANIFEST, &[])).unwrap();
        assert_eq!(s.get("ns", "docker.io/library/a:1").unwrap(), a);
        assert_eq!(s.get("other", "b").unwrap().target.digest, D1);
        assert!(matches!(s.get("third", "b"), Err(e) if e.kind() == ErrorKind::NotFound));
        // The namespace was created implicitly.
        assert!(crate::namespaces::NamespaceStore::new(db).get("other").is_ok());

        let names = |f: &[&str]| -> Vec<String> {
            s.list("ns", &AnyFilter::parse(f).unwrap()).unwrap().into_iter().map(|i| i.name).collect()
        };
        assert_eq!(names(&[]), ["b", "docker.io/library/a:1"]);
        assert_eq!(names(&["name==b"]), ["b"]);
        assert_eq!(names(&[&format!("target.digest=={D1}")]), ["docker.io/library/a:1"]);
        assert_eq!(names(&[&format!("target.mediatype=={INDEX}")]), ["b"]);
        assert_eq!(names(&["labels.k==v"]), ["docker.io/library/a:1"]);
        assert_eq!(names(&["labels.k"]), ["docker.io/library/a:1"]);
        assert_eq!(names(&["name==b", "labels.k==v"]), ["b", "docker.io/library/a:1"]);
        assert_eq!(names(&["name~=^docker"]), ["docker.io/library/a:1"]);
        assert!(names(&["name==b,labels.k==v"]).is_empty());

        assert!(matches!(s.delete("ns", "b", Some(D1)), Err(e) if e.kind() == ErrorKind::NotFound), "another target");
        s.delete("ns", "b", Some(D2)).unwrap();
        assert!(matches!(s.delete("ns", "b", None), Err(e) if e.kind() == ErrorKind::NotFound));
        assert_eq!(s.get("other", "b").unwrap().name, "b", "other namespaces are untouched");
    }

    #[test]
    fn validation_follows_containerd() {
        let (_d, s, _) = store();
        let check = |img: Image, want: &str| {
            let e = s.create("ns", img).unwrap_err();
            assert!(matches!(e, ImageError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        };
        check(image("", D1, MANIFEST, &[]), "image name must not be empty");
        check(image("x", "sha256:nope", MANIFEST, &[]), "Target.Digest \"sha256:nope\" invalid");
        check(image("x", "", MANIFEST, &[]), "Target.Digest");
        check(image("x", D1, "", &[]), "Target.MediaType must be set");
        let mut zero = image("x", D1, MANIFEST, &[]);
        zero.target.size = 0;
        check(zero, "Target.Size must be greater than zero");
        check(image("x", D1, MANIFEST, &[("", "v")]), "image.Labels");
        assert!(s.list("ns", &AnyFilter::default()).unwrap().is_empty());
    }

    #[test]
    fn update_by_field_mask() {
        let (_d, s, _) = store();
        let mut base = image("img", D1, MANIFEST, &[("a", "1"), ("b", "2")]);
        base.target.annotations = labels(&[("x", "1")]);
        let created = s.create("ns", base).unwrap();

        // labels.<key>: set one, remove another (absent from the request).
        let u = s.update("ns", image("img", "", "", &[("c", "3")]), &["labels.c".into(), "labels.a".into()]).unwrap();
        assert_eq!(u.labels, labels(&[("b", "2"), ("c", "3")]));
        assert_eq!(u.target.digest, D1, "the target is untouched without a target path");
        assert_eq!(u.created_at, created.created_at);
        assert!(u.updated_at >= created.updated_at);

        // labels: replace all.
        let u = s.update("ns", image("img", "", "", &[("only", "1")]), &["labels".into()]).unwrap();
        assert_eq!(u.labels, labels(&[("only", "1")]));

        // target, as a unit, validated.
        let u = s.update("ns", image("img", D2, INDEX, &[]), &["target".into()]).unwrap();
        assert_eq!((u.target.digest.as_str(), u.target.media_type.as_str()), (D2, INDEX));
        assert!(u.target.annotations.is_empty(), "target replaced as a unit");
        let e = s.update("ns", image("img", "bad", INDEX, &[]), &["target".into()]).unwrap_err();
        assert!(matches!(e, ImageError::InvalidArgument(_)), "{e}");
        assert_eq!(s.get("ns", "img").unwrap().target.digest, D2, "a refused update changes nothing");

        // annotations.<key> and annotations.
        let mut a = image("img", "", "", &[]);
        a.target.annotations = labels(&[("n", "v")]);
        let u = s.update("ns", a.clone(), &["annotations.n".into()]).unwrap();
        assert_eq!(u.target.annotations, labels(&[("n", "v")]));
        a.target.annotations.clear();
        let u = s.update("ns", a, &["annotations".into()]).unwrap();
        assert!(u.target.annotations.is_empty());

        // No paths: replace everything but the name and creation time.
        let u = s.update("ns", image("img", D1, MANIFEST, &[("new", "y")]), &[]).unwrap();
        assert_eq!(u.labels, labels(&[("new", "y")]));
        assert_eq!(u.target.digest, D1);
        assert_eq!(u.created_at, created.created_at);
        assert!(matches!(s.update("ns", image("img", "", "", &[]), &[]), Err(ImageError::InvalidArgument(_))));

        let e = s.update("ns", image("img", "", "", &[]), &["name".into()]).unwrap_err();
        assert_eq!(e.to_string(), "cannot update \"name\" field on image \"img\"");
        assert!(
            matches!(s.update("ns", image("nope", D1, MANIFEST, &[]), &[]), Err(e) if e.kind() == ErrorKind::NotFound)
        );
        assert!(matches!(s.update("ns", image("", D1, MANIFEST, &[]), &[]), Err(ImageError::InvalidArgument(_))));
        assert_eq!(s.get("ns", "img").unwrap(), u);
    }
}
