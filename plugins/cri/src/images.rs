//! The CRI's view of the image store: containerd's image records of the
//! `k8s.io` namespace, grouped by image id (the digest of the config of the
//! host platform's manifest), as containerd 1.6's CRI image store
//! (`pkg/cri/store/image`) keeps them. Computed on each call from the
//! metadata plugin's Images service and the namespaced Content service, in
//! process, so there is no cache to keep in step with `ctr` changes.

use std::collections::{BTreeMap, HashMap};

use containerd_client::{
    services::v1::{
        CreateImageRequest, DeleteImageRequest, GetImageRequest, GetImageResponse, Image as ImageRecord,
        ListImagesRequest, ListImagesResponse, UpdateImageRequest,
    },
    types::Descriptor,
};
use crated_plugin_api::{content::ContentClient, ErrorKind, Host, Status};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::reference::{is_image_id, Reference};

const IMAGES: &str = "/containerd.services.images.v1.Images";
/// The label containerd's CRI puts on every image it pulls.
pub const IMAGE_LABEL_KEY: &str = "io.cri-containerd.image";
pub const IMAGE_LABEL_VALUE: &str = "managed";
/// The label that keeps the sandbox image from image garbage collection.
pub const PINNED_LABEL_KEY: &str = "io.cri-containerd.pinned";
pub const PINNED_LABEL_VALUE: &str = "pinned";

/// One CRI image: every record whose target resolves to the same config.
#[derive(Debug, Clone)]
pub struct CriImage {
    /// The config digest.
    pub id: String,
    /// Every record name, sorted.
    pub references: Vec<String>,
    pub chain_id: String,
    /// index (if any) + manifest + config + layers, as containerd's `Image.Size`.
    pub size: u64,
    /// The image config (OCI image spec).
    pub spec: Value,
    pub pinned: bool,
}

impl CriImage {
    /// The references that are tags and digests (`parseImageReferences`,
    /// where an id parses as a bare digest and is neither).
    pub fn repo_tags_and_digests(&self) -> (Vec<String>, Vec<String>) {
        let (mut tags, mut digests) = (Vec::new(), Vec::new());
        for r in self.references.iter().filter(|r| !is_image_id(r)) {
            match Reference::parse(r) {
                Ok(p) if p.digest.is_some() => digests.push(r.clone()),
                Ok(_) => tags.push(r.clone()),
                Err(_) => {}
            }
        }
        (tags, digests)
    }

    /// The uid or the user name of the config's `User` (`getUserFromImage`):
    /// `1000`, `1000:1000` give a uid; `nobody` a name; nothing neither.
    pub fn user(&self) -> (Option<i64>, String) {
        let user = self.spec.pointer("/config/User").and_then(Value::as_str).unwrap_or_default();
        let user = user.split(':').next().unwrap_or_default();
        if user.is_empty() {
            return (None, String::new());
        }
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, user.to_string()),
        }
    }
}

/// containerd's chain ID of a list of diff IDs.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut chain = String::new();
    for d in diff_ids {
        chain = if chain.is_empty() {
            d.clone()
        } else {
            format!("sha256:{}", hex::encode(Sha256::digest(format!("{chain} {d}").as_bytes())))
        };
    }
    chain
}

fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json" | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// The host's `os` and `architecture`, as images name them.
fn host_platform() -> (String, String) {
    let p = crated_plugin_api::build_platform();
    let (os, arch) = p.split_once('/').unwrap_or(("linux", "amd64"));
    (os.to_string(), arch.split('/').next().unwrap_or(arch).to_string())
}

/// What an image record's target resolves to for the host platform.
#[derive(Debug, Clone)]
struct Resolved {
    config_digest: String,
    spec: Value,
    size: u64,
    chain_id: String,
}

/// The image store of one namespace, through the plugin's dependencies.
pub struct ImageStore {
    host: Host,
    ns: String,
}

fn field<'a>(doc: &'a Value, key: &str) -> &'a Value {
    doc.get(key).unwrap_or(&Value::Null)
}

fn descriptor_size(d: &Value) -> u64 {
    field(d, "size").as_u64().unwrap_or(0)
}

impl ImageStore {
    pub fn new(host: Host, ns: &str) -> ImageStore {
        ImageStore { host, ns: ns.to_string() }
    }

    fn call(&self, method: &str) -> crated_plugin_api::Call {
        Host::call(&format!("{IMAGES}/{method}"), Some(&self.ns))
    }

    async fn read_json(&self, content: &ContentClient, digest: &str) -> Result<Value, Status> {
        let bytes = content.read_all(digest).await.map_err(|s| s.context(format!("content {digest}")))?;
        serde_json::from_slice(&bytes).map_err(|e| Status::internal(format!("{digest} is not JSON: {e}")))
    }

    /// Resolves a target to the host platform's manifest and its config.
    async fn resolve(&self, target: &Descriptor) -> Result<Resolved, Status> {
        let content = ContentClient::new(self.host.clone(), &self.ns);
        let mut size = u64::try_from(target.size).unwrap_or(0);
        let mut manifest_digest = target.digest.clone();
        if is_index(&target.media_type) {
            let index = self.read_json(&content, &target.digest).await?;
            let (os, arch) = host_platform();
            let manifests = field(&index, "manifests").as_array().cloned().unwrap_or_default();
            let chosen = manifests
                .iter()
                .find(|m| {
                    let p = field(m, "platform");
                    field(p, "os").as_str() == Some(os.as_str()) && field(p, "architecture").as_str() == Some(&arch)
                })
                .ok_or_else(|| Status::not_found(format!("no match for platform in manifest {}", target.digest)))?;
            size += descriptor_size(chosen);
            manifest_digest = field(chosen, "digest").as_str().unwrap_or_default().to_string();
        }
        let manifest = self.read_json(&content, &manifest_digest).await?;
        let config_desc = field(&manifest, "config");
        let config_digest = field(config_desc, "digest").as_str().unwrap_or_default().to_string();
        size += descriptor_size(config_desc);
        for layer in field(&manifest, "layers").as_array().into_iter().flatten() {
            size += descriptor_size(layer);
        }
        let spec = self.read_json(&content, &config_digest).await?;
        let diff_ids: Vec<String> = field(field(&spec, "rootfs"), "diff_ids")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(String::from))
            .collect();
        Ok(Resolved { config_digest, chain_id: chain_id(&diff_ids), spec, size })
    }

    async fn records(&self) -> Result<Vec<ImageRecord>, Status> {
        let resp: ListImagesResponse = self.host.unary(&self.call("List"), &ListImagesRequest::default()).await?;
        Ok(resp.images)
    }

    /// One record by name, or `None`.
    pub async fn record(&self, name: &str) -> Result<Option<ImageRecord>, Status> {
        let req = GetImageRequest { name: name.to_string() };
        match self.host.unary::<_, GetImageResponse>(&self.call("Get"), &req).await {
            Ok(r) => Ok(r.image),
            Err(s) if s.kind() == ErrorKind::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// The image id (config digest) a target resolves to.
    pub async fn image_id(&self, target: &Descriptor) -> Result<String, Status> {
        Ok(self.resolve(target).await?.config_digest)
    }

    /// Every CRI image, by id. Records whose content is missing or not for
    /// this platform are left out, as containerd's image store skips them.
    pub async fn list(&self) -> Result<Vec<CriImage>, Status> {
        let mut by_target: HashMap<String, Option<Resolved>> = HashMap::new();
        let mut images: BTreeMap<String, CriImage> = BTreeMap::new();
        for record in self.records().await? {
            let Some(target) = record.target.as_ref() else { continue };
            if !by_target.contains_key(&target.digest) {
                let resolved = match self.resolve(target).await {
                    Ok(r) => Some(r),
                    Err(s) => {
                        crated_plugin_api::tracing::debug!(image = %record.name, "not a CRI image: {}", s.message);
                        None
                    }
                };
                by_target.insert(target.digest.clone(), resolved);
            }
            let Some(r) = by_target[&target.digest].clone() else { continue };
            let pinned = record.labels.get(PINNED_LABEL_KEY).map(String::as_str) == Some(PINNED_LABEL_VALUE);
            let image = images.entry(r.config_digest.clone()).or_insert_with(|| CriImage {
                id: r.config_digest.clone(),
                references: Vec::new(),
                chain_id: r.chain_id.clone(),
                size: r.size,
                spec: r.spec.clone(),
                pinned: false,
            });
            image.references.push(record.name.clone());
            image.pinned |= pinned;
        }
        let mut out: Vec<CriImage> = images.into_values().collect();
        for i in &mut out {
            i.references.sort();
        }
        Ok(out)
    }

    /// The image a CRI request names (`localResolve`): an id, a unique
    /// prefix of one's hex, or a reference (normalised); `None` if unknown.
    pub async fn find(&self, ref_or_id: &str) -> Result<Option<CriImage>, Status> {
        let images = self.list().await?;
        if is_image_id(ref_or_id) {
            return Ok(images.into_iter().find(|i| i.id == ref_or_id));
        }
        if let Ok(r) = Reference::parse(ref_or_id) {
            let name = r.to_string();
            if let Some(i) = images.iter().find(|i| i.references.contains(&name)) {
                return Ok(Some(i.clone()));
            }
        }
        // A truncated id, as containerd's digest set resolves it.
        let hex = ref_or_id.strip_prefix("sha256:").unwrap_or(ref_or_id);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let mut matching = images.into_iter().filter(|i| i.id.trim_start_matches("sha256:").starts_with(hex));
        match (matching.next(), matching.next()) {
            (Some(i), None) => Ok(Some(i)),
            _ => Ok(None),
        }
    }

    /// Creates `name` pointing at `target` with `labels`, or points an
    /// existing record there (`createImageReference`).
    pub async fn put(&self, name: &str, target: &Descriptor, labels: &HashMap<String, String>) -> Result<(), Status> {
        let image = ImageRecord {
            name: name.to_string(),
            labels: labels.clone(),
            target: Some(target.clone()),
            ..Default::default()
        };
        let req = CreateImageRequest { image: Some(image.clone()), ..Default::default() };
        match self.host.unary::<_, ()>(&self.call("Create"), &req).await {
            Err(s) if s.kind() == ErrorKind::AlreadyExists => {}
            other => return other,
        }
        let old = self.record(name).await?.unwrap_or_default();
        let mut paths = vec!["target".to_string()];
        for key in [IMAGE_LABEL_KEY, PINNED_LABEL_KEY] {
            if old.labels.get(key) != labels.get(key) && labels.contains_key(key) {
                paths.push(format!("labels.{key}"));
            }
        }
        if old.target.as_ref().map(|t| &t.digest) == Some(&target.digest) && paths.len() < 2 {
            return Ok(());
        }
        let req = UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask { paths }),
            ..Default::default()
        };
        self.host.unary::<_, ()>(&self.call("Update"), &req).await
    }

    /// Deletes one record (a missing one is no error); `sync` runs the
    /// garbage collector before answering.
    pub async fn delete(&self, name: &str, sync: bool) -> Result<(), Status> {
        let req = DeleteImageRequest { name: name.to_string(), sync, target: None };
        match self.host.unary::<_, ()>(&self.call("Delete"), &req).await {
            Err(s) if s.kind() != ErrorKind::NotFound => Err(s),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(user: &str, references: &[&str]) -> CriImage {
        CriImage {
            id: "sha256:x".into(),
            references: references.iter().map(|s| s.to_string()).collect(),
            chain_id: String::new(),
            size: 0,
            spec: serde_json::json!({"config": {"User": user}}),
            pinned: false,
        }
    }

    #[test]
    fn users_as_get_user_from_image() {
        assert_eq!(image("", &[]).user(), (None, String::new()));
        assert_eq!(image("1000", &[]).user(), (Some(1000), String::new()));
        assert_eq!(image("1000:50", &[]).user(), (Some(1000), String::new()));
        assert_eq!(image("nobody", &[]).user(), (None, "nobody".into()));
        assert_eq!(image("nobody:nogroup", &[]).user(), (None, "nobody".into()));
    }

    #[test]
    fn tags_digests_and_ids_apart() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let i = image("", &[&format!("docker.io/library/x@{d}"), "docker.io/library/x:1", d]);
        let (tags, digests) = i.repo_tags_and_digests();
        assert_eq!(tags, vec!["docker.io/library/x:1"]);
        assert_eq!(digests, vec![format!("docker.io/library/x@{d}")]);
    }

    #[test]
    fn chain_ids_as_containerd() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb")));
        assert_eq!(chain_id(&[a, b]), want);
    }
}
