//! The `ImageStore` end of a transfer: which names an imported or pulled
//! image gets (containerd's `core/transfer/image/imagestore.go`), which
//! platforms it keeps, and the Images service of the metadata plugin
//! (create, or update when the name exists). Also the GC labels that tie a
//! stored document to its children, as `images.SetChildrenLabels`.

use std::{collections::HashMap, time::SystemTime};

use containerd_client::{
    services::v1::{
        CreateImageRequest, CreateImageResponse, GetImageRequest, GetImageResponse, Image, UpdateImageRequest,
        UpdateImageResponse,
    },
    types::{
        transfer::{ImageReference, ImageStore, UnpackConfiguration},
        Platform,
    },
};
use crated_plugin_api::{content::ContentClient, ErrorKind, Host, Status};

use crate::{
    error::{Result, TransferError},
    oci::{self, Descriptor, IMAGE_NAME_ANNOTATION, REF_NAME_ANNOTATION},
};

const IMAGES: &str = "/containerd.services.images.v1.Images";
/// Marks a manifest named by the archive's own index (its annotations
/// give the name), as containerd's importer does.
pub const REF_SOURCE_ANNOTATION: &str = "io.containerd.import.ref-source";

/// The destination of an import or pull.
#[derive(Debug, Clone, Default)]
pub struct ImageStoreSpec {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub platforms: Vec<Platform>,
    pub all_metadata: bool,
    pub extra_references: Vec<ImageReference>,
    pub unpacks: Vec<UnpackConfiguration>,
}

impl From<ImageStore> for ImageStoreSpec {
    fn from(s: ImageStore) -> ImageStoreSpec {
        ImageStoreSpec {
            name: s.name,
            labels: s.labels,
            platforms: s.platforms,
            all_metadata: s.all_metadata,
            extra_references: s.extra_references,
            unpacks: s.unpacks,
        }
    }
}

/// One name to store, with its target and labels.
#[derive(Debug, Clone)]
pub struct NamedImage {
    pub name: String,
    pub target: Descriptor,
    pub labels: HashMap<String, String>,
}

/// The name an annotated descriptor gives, through a prefix translation:
/// containerd's `imageName` with `archive.AddRefPrefix` (overwrite) or
/// `archive.FilterRefPrefix`.
fn annotated_name(annotations: &std::collections::BTreeMap<String, String>, prefix: &str, overwrite: bool) -> String {
    let translate = |r: &str| -> String {
        if prefix.is_empty() {
            return String::new();
        }
        if r.contains(['/', ':', '@']) {
            if !overwrite && !is_image_prefix(r, prefix) {
                return String::new();
            }
            return r.to_string();
        }
        format!("{prefix}:{r}")
    };
    if let Some(name) = annotations.get(IMAGE_NAME_ANNOTATION).filter(|n| !n.is_empty()) {
        return if translate(name) == *name { name.clone() } else { String::new() };
    }
    annotations.get(REF_NAME_ANNOTATION).filter(|n| !n.is_empty()).map(|n| translate(n)).unwrap_or_default()
}

fn is_image_prefix(s: &str, prefix: &str) -> bool {
    match s.strip_prefix(prefix) {
        None => false,
        Some("") => true,
        Some(rest) => rest.starts_with(['/', ':', '@']),
    }
}

impl ImageStoreSpec {
    /// Whether a manifest of `platform` is kept (no platforms: all).
    pub fn wants_platform(&self, platform: &oci::Platform) -> bool {
        self.platforms.is_empty() || self.platforms.iter().any(|p| platform.matches(p))
    }

    fn extra_ref_labels(&self) -> HashMap<String, String> {
        let mut labels = self.labels.clone();
        if !self.name.is_empty() {
            labels.insert("containerd.io/gc.bref.image".into(), self.name.clone());
            labels.insert(crate::lease::EXPIRE_LABEL.into(), crate::lease::rfc3339(SystemTime::now()));
        }
        labels
    }

    /// The images `desc` is stored as (containerd's `Store`): a descriptor
    /// from an archive's index is named by its annotations through the
    /// prefix references; any other by `name` and the plain references.
    pub fn names_for(&self, desc: &Descriptor) -> Vec<NamedImage> {
        let mut target = desc.clone();
        let mut out = Vec::new();
        let image = |name: String, labels: HashMap<String, String>, target: &Descriptor| NamedImage {
            name,
            target: target.clone(),
            labels,
        };
        if target.annotations.remove(REF_SOURCE_ANNOTATION).is_some() {
            for r in self.extra_references.iter().filter(|r| r.is_prefix) {
                let name = annotated_name(&desc.annotations, &r.name, r.allow_overwrite);
                let digested = format!("{}@{}", r.name, desc.digest);
                if name.is_empty() {
                    if r.add_digest {
                        out.push(image(digested, self.extra_ref_labels(), &target));
                    }
                    continue;
                }
                out.push(image(name, self.extra_ref_labels(), &target));
                if r.add_digest && !r.skip_named_digest {
                    out.push(image(digested, self.extra_ref_labels(), &target));
                }
            }
        } else {
            if !self.name.is_empty() {
                out.push(image(self.name.clone(), self.labels.clone(), &target));
            }
            for r in &self.extra_references {
                if r.is_prefix && !r.add_digest {
                    continue;
                }
                let name = if r.add_digest { format!("{}@{}", r.name, desc.digest) } else { r.name.clone() };
                out.push(image(name, self.extra_ref_labels(), &target));
            }
        }
        out
    }
}

/// The metadata plugin's Images service in one namespace.
#[derive(Clone)]
pub struct ImagesClient {
    host: Host,
    namespace: String,
}

impl ImagesClient {
    pub fn new(host: Host, namespace: &str) -> ImagesClient {
        ImagesClient { host, namespace: namespace.to_string() }
    }

    fn call(&self, method: &str) -> crated_plugin_api::Call {
        Host::call(&format!("{IMAGES}/{method}"), Some(&self.namespace))
    }

    pub async fn get(&self, name: &str) -> Result<Image> {
        let resp: GetImageResponse = self
            .host
            .unary(&self.call("Get"), &GetImageRequest { name: name.to_string() })
            .await
            .map_err(|s| TransferError::from(s).context(format!("image {name}")))?;
        resp.image.ok_or_else(|| TransferError::NotFound(format!("image {name}")))
    }

    /// Creates the image, or updates it when the name exists.
    pub async fn put(&self, image: &NamedImage) -> Result<Image> {
        let img = Image {
            name: image.name.clone(),
            labels: image.labels.clone(),
            target: Some(image.target.to_proto()),
            ..Default::default()
        };
        let create = CreateImageRequest { image: Some(img.clone()), ..Default::default() };
        let created: std::result::Result<CreateImageResponse, Status> =
            self.host.unary(&self.call("Create"), &create).await;
        let resp = match created {
            Ok(r) => Ok(r.image),
            Err(s) if s.kind() == ErrorKind::AlreadyExists => {
                let update = UpdateImageRequest { image: Some(img), ..Default::default() };
                self.host.unary::<_, UpdateImageResponse>(&self.call("Update"), &update).await.map(|r| r.image)
            }
            Err(s) => Err(s),
        };
        let resp = resp.map_err(|s| TransferError::from(s).context(format!("failed to store image {}", image.name)))?;
        resp.ok_or_else(|| TransferError::Failed(format!("image {}: no image in the answer", image.name)))
    }

    /// Stores `desc` under every name `spec` gives it.
    pub async fn store(&self, spec: &ImageStoreSpec, desc: &Descriptor) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        for named in spec.names_for(desc) {
            out.push(self.put(&named).await?);
        }
        Ok(out)
    }
}

/// Labels a stored document with its children (`containerd.io/gc.ref.
/// content.*`) and returns the children.
pub async fn label_children(content: &ContentClient, desc: &Descriptor, doc: &[u8]) -> Result<Vec<Descriptor>> {
    let children = oci::children_with_labels(&desc.media_type, doc)
        .map_err(|e| TransferError::archive(format!("{} {}", desc.media_type, desc.digest), e))?;
    let labels: Vec<(String, String)> = children.iter().map(|(c, l)| (l.clone(), c.digest.clone())).collect();
    content.set_labels(&desc.digest, &labels).await.map_err(|s| s.context(format!("labelling {}", desc.digest)))?;
    Ok(children.into_iter().map(|(c, _)| c).collect())
}
