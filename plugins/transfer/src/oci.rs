//! The image documents a transfer reads and writes (OCI and Docker schema
//! 2 manifests, indexes, configs), the media types, the garbage-collection
//! labels that tie a document to its children, and image references.
//! Field order and names follow Go's encoding of the OCI structs, so the
//! documents crated writes are the bytes containerd writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The annotation naming an image in full (`docker.io/library/x:1`).
pub const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation naming an image in a layout (often just the tag).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The label of a layer blob naming its uncompressed digest.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_INDEX
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(rename = "os.version", default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// Whether this platform satisfies a wanted one (variant only when the
    /// wanted one names it).
    pub fn matches(&self, wanted: &containerd_client::types::Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_empty() || self.variant == wanted.variant)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn to_proto(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone().into_iter().collect(),
        }
    }

    pub fn from_proto(d: &containerd_client::types::Descriptor) -> Descriptor {
        Descriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            annotations: d.annotations.clone().into_iter().collect(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The parts of an image config a transfer needs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            ..Default::default()
        }
    }
}

/// The children of a document, with the GC label that ties each to it, as
/// containerd's `images.SetChildrenLabels`: `containerd.io/gc.ref.content.
/// config`, `.l.<i>` for layers, `.m.<i>` for an index's manifests.
pub fn children_with_labels(media_type: &str, doc: &[u8]) -> Result<Vec<(Descriptor, String)>, serde_json::Error> {
    let mut out = Vec::new();
    if is_index(media_type) {
        let index: Index = serde_json::from_slice(doc)?;
        for (i, m) in index.manifests.into_iter().enumerate() {
            out.push((m, format!("containerd.io/gc.ref.content.m.{i}")));
        }
    } else if is_manifest(media_type) {
        let manifest: Manifest = serde_json::from_slice(doc)?;
        out.push((manifest.config, "containerd.io/gc.ref.content.config".to_string()));
        for (i, l) in manifest.layers.into_iter().enumerate() {
            out.push((l, format!("containerd.io/gc.ref.content.l.{i}")));
        }
    }
    Ok(out)
}

/// The chain IDs of a stack of diff IDs (the snapshot names of an unpacked
/// image): the first is its diff ID, each next `sha256(parent + " " + diff)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

/// Normalises a Docker reference as `docker save`'s `RepoTags` are read:
/// `busybox:1` becomes `docker.io/library/busybox:1`; no tag means `latest`.
pub fn normalize_reference(reference: &str) -> String {
    let (name, suffix) = split_name(reference);
    let mut name = name.to_string();
    let first = name.split('/').next().unwrap_or_default();
    let has_domain = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if !has_domain {
        if !name.contains('/') {
            name = format!("library/{name}");
        }
        name = format!("docker.io/{name}");
    }
    let suffix = if suffix.is_empty() { ":latest".to_string() } else { suffix.to_string() };
    format!("{name}{suffix}")
}

/// The name and the `:tag` / `@digest` suffix of a reference.
fn split_name(reference: &str) -> (&str, &str) {
    if let Some(at) = reference.find('@') {
        return (&reference[..at], &reference[at..]);
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(colon) => reference.split_at(last_slash + colon),
        None => (reference, ""),
    }
}

/// The host and the repository path of a normalised reference:
/// `docker.io/library/x:1` is (`docker.io`, `library/x`).
pub fn repository_of(reference: &str) -> (&str, &str) {
    let (name, _) = split_name(reference);
    let (name, _) = split_name(name);
    name.split_once('/').unwrap_or(("", name))
}

/// The tag of a reference, if it has one (`x:1@sha256:..` has `1`).
pub fn tag_of(reference: &str) -> Option<&str> {
    let (name, suffix) = split_name(reference);
    let suffix = if suffix.starts_with('@') { split_name(name).1 } else { suffix };
    suffix.strip_prefix(':')
}

/// The content ingest reference of a fetched blob, as containerd's
/// `remotes.MakeRefKey`: `<kind>-<digest>`, the same for every pull of the
/// blob so that an interrupted download is resumed.
pub fn ref_key(desc: &Descriptor) -> String {
    let kind = match desc.media_type.as_str() {
        m if is_index(m) => "index",
        m if is_manifest(m) => "manifest",
        m if m.contains("layer") || m.contains("rootfs.diff") => "layer",
        m if m.contains("config") => "config",
        _ => "unknown",
    };
    format!("{kind}-{}", desc.digest)
}

/// The short, familiar form of a normalised reference, as `docker save`
/// writes `RepoTags`: `docker.io/library/x:1` becomes `x:1`.
pub fn familiarize_reference(reference: &str) -> String {
    let (name, suffix) = split_name(reference);
    let name = name.strip_prefix("docker.io/").map_or(name, |n| n.strip_prefix("library/").unwrap_or(n));
    let suffix = if suffix.is_empty() { ":latest" } else { suffix };
    format!("{name}{suffix}")
}

/// The OCI `ref.name` of a full reference: its tag, or the whole reference
/// when it has none.
pub fn oci_reference_name(reference: &str) -> String {
    match split_name(reference) {
        (_, suffix) if suffix.starts_with(':') => suffix[1..].to_string(),
        _ => reference.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_and_familiarise() {
        assert_eq!(normalize_reference("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(normalize_reference("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalize_reference("localhost:5000/app:2"), "localhost:5000/app:2");
        assert_eq!(familiarize_reference("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(oci_reference_name("docker.io/library/busybox:1"), "1");
        assert_eq!(repository_of("127.0.0.1:5000/a/b:1@sha256:ab"), ("127.0.0.1:5000", "a/b"));
        assert_eq!(tag_of("127.0.0.1:5000/a/b:1@sha256:ab"), Some("1"));
        assert_eq!(tag_of("127.0.0.1:5000/a/b@sha256:ab"), None);
        assert_eq!(tag_of("localhost:5000/b"), None);
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let ids = chain_ids(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(ids[0], "sha256:a");
        assert_ne!(ids[1], "sha256:b");
    }
}
