//! Writing images as a tar, as containerd's `images/archive.Export`: an OCI
//! image layout (`oci-layout`, `index.json` naming each image with
//! `io.containerd.image.name` and `org.opencontainers.image.ref.name`,
//! `blobs/sha256/<hex>`) plus Docker's `manifest.json` unless skipped.
//! Entries are sorted by name with fixed headers (mode only, mtime 0, no
//! owners), so the same images give the same bytes. The tar is produced as
//! it is sent: blobs stream from content, hashed on the way.

use std::collections::{BTreeMap, BTreeSet};

use containerd_client::types::Platform;
use crated_plugin_api::content::{sha256_digest, ContentClient};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{
    error::{Result, TransferError},
    oci::{self, Descriptor, Index, Manifest},
};

const BLOCK: usize = 512;

/// Which manifests of an index go into the archive.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Wanted platforms; none means the host's.
    pub platforms: Vec<Platform>,
    /// Every manifest of an index, not only the wanted ones' (the wanted
    /// ones still decide what Docker's `manifest.json` names).
    pub all_platforms: bool,
    pub skip_compatibility_manifest: bool,
}

impl ExportOptions {
    fn wanted(&self) -> Vec<Platform> {
        if !self.platforms.is_empty() {
            return self.platforms.clone();
        }
        let host = crated_plugin_api::build_platform();
        let (os, arch) = host.split_once('/').unwrap_or(("linux", "amd64"));
        vec![Platform { os: os.into(), architecture: arch.into(), ..Default::default() }]
    }

    fn matches(&self, p: &Option<oci::Platform>) -> bool {
        match p {
            None => true,
            Some(p) => self.wanted().iter().any(|w| p.matches(w)),
        }
    }
}

/// Where the tar goes.
pub trait TarSink: Send {
    fn write(&mut self, data: &[u8]) -> impl std::future::Future<Output = Result<()>> + Send;
}

impl TarSink for crate::streams::ByteSender {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.send(data).await
    }
}

enum Body {
    Dir,
    Bytes(Vec<u8>),
    Blob(Descriptor),
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn blob_path(digest: &str) -> String {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    format!("blobs/{alg}/{hex}")
}

async fn read_json<T: serde::de::DeserializeOwned>(content: &ContentClient, desc: &Descriptor) -> Result<T> {
    let doc = content.read_all(&desc.digest).await.map_err(|s| s.context(format!("reading {}", desc.digest)))?;
    serde_json::from_slice(&doc).map_err(|e| TransferError::archive(format!("{} {}", desc.media_type, desc.digest), e))
}

/// Every blob under `desc` (itself included), in walk order.
async fn walk(content: &ContentClient, desc: &Descriptor, out: &mut Vec<Descriptor>) -> Result<()> {
    let mut stack = vec![desc.clone()];
    while let Some(d) = stack.pop() {
        out.push(d.clone());
        if oci::is_manifest(&d.media_type) {
            let m: Manifest = read_json(content, &d).await?;
            out.push(m.config);
            out.extend(m.layers);
        } else if oci::is_index(&d.media_type) {
            let i: Index = read_json(content, &d).await?;
            stack.extend(i.manifests.into_iter().rev());
        }
    }
    Ok(())
}

/// Writes the images (name, target) as one archive to `sink`.
pub async fn export_images<W: TarSink>(
    content: &ContentClient,
    images: &[(String, Descriptor)],
    options: &ExportOptions,
    sink: &mut W,
) -> Result<()> {
    let mut records: BTreeMap<String, Body> = BTreeMap::new();
    let mut index_manifests = Vec::new();
    // Manifest digest -> (descriptor, names), for Docker's manifest.json.
    let mut docker: BTreeMap<String, (Descriptor, Vec<String>)> = BTreeMap::new();
    let mut blobs = Vec::new();
    for (name, target) in images {
        let mut annotated = target.clone();
        annotated.annotations.insert(oci::IMAGE_NAME_ANNOTATION.into(), name.clone());
        annotated.annotations.insert(oci::REF_NAME_ANNOTATION.into(), oci::oci_reference_name(name));
        index_manifests.push(annotated);
        if oci::is_manifest(&target.media_type) {
            walk(content, target, &mut blobs).await?;
            docker.entry(target.digest.clone()).or_insert_with(|| (target.clone(), Vec::new())).1.push(name.clone());
        } else if oci::is_index(&target.media_type) {
            blobs.push(target.clone());
            let index: Index = read_json(content, target).await?;
            let mut chosen = None;
            for m in index.manifests {
                let wanted = options.matches(&m.platform);
                if !wanted && !options.all_platforms {
                    continue;
                }
                if wanted && chosen.is_none() {
                    chosen = Some(m.clone());
                }
                walk(content, &m, &mut blobs).await?;
            }
            match chosen {
                Some(m) => docker.entry(m.digest.clone()).or_insert_with(|| (m, Vec::new())).1.push(name.clone()),
                None => return Err(TransferError::NotFound(format!("image {name}: manifest for the platform"))),
            }
        } else {
            return Err(TransferError::InvalidArgument(format!(
                "image {name}: only manifests may be exported, not {}",
                target.media_type
            )));
        }
    }
    let mut algorithms = BTreeSet::new();
    for b in blobs {
        algorithms.insert(b.digest.split_once(':').map(|(a, _)| a.to_string()).unwrap_or_default());
        records.entry(blob_path(&b.digest)).or_insert(Body::Blob(b));
    }
    records.insert("blobs/".into(), Body::Dir);
    for alg in algorithms {
        records.insert(format!("blobs/{alg}/"), Body::Dir);
    }
    records.insert("oci-layout".into(), Body::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
    let index = Index {
        schema_version: 2,
        media_type: oci::OCI_INDEX.into(),
        manifests: index_manifests,
        annotations: BTreeMap::new(),
    };
    let index = serde_json::to_vec(&index).map_err(|e| TransferError::Failed(format!("encoding index.json: {e}")))?;
    records.insert("index.json".into(), Body::Bytes(index));
    if !options.skip_compatibility_manifest && !docker.is_empty() {
        let mut out = Vec::new();
        for (desc, names) in docker.into_values() {
            let m: Manifest = read_json(content, &desc).await?;
            let tags: Vec<String> = names.iter().map(|n| oci::familiarize_reference(n)).collect();
            out.push(DockerManifest {
                config: blob_path(&m.config.digest),
                repo_tags: (!tags.is_empty()).then_some(tags),
                layers: m.layers.iter().map(|l| blob_path(&l.digest)).collect(),
            });
        }
        let bytes =
            serde_json::to_vec(&out).map_err(|e| TransferError::Failed(format!("encoding manifest.json: {e}")))?;
        records.insert("manifest.json".into(), Body::Bytes(bytes));
    }

    for (name, body) in records {
        write_record(content, sink, &name, body).await?;
    }
    // The end of the archive: two zero blocks.
    sink.write(&[0u8; 2 * BLOCK]).await
}

fn header(name: &str, mode: u32, size: u64, kind: tar::EntryType) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).map_err(|e| TransferError::Failed(format!("tar header for {name}: {e}")))?;
    h.set_mode(mode);
    h.set_size(size);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}

async fn write_record<W: TarSink>(content: &ContentClient, sink: &mut W, name: &str, body: Body) -> Result<()> {
    match body {
        Body::Dir => sink.write(header(name, 0o755, 0, tar::EntryType::Directory)?.as_bytes()).await,
        Body::Bytes(b) => {
            let mode = if name == "oci-layout" { 0o444 } else { 0o644 };
            sink.write(header(name, mode, b.len() as u64, tar::EntryType::Regular)?.as_bytes()).await?;
            sink.write(&b).await?;
            pad(sink, b.len() as u64).await
        }
        Body::Blob(desc) => {
            let size = u64::try_from(desc.size).unwrap_or(0);
            sink.write(header(name, 0o444, size, tar::EntryType::Regular)?.as_bytes()).await?;
            let mut stream =
                content.read(&desc.digest).await.map_err(|s| s.context(format!("failed to get reader {name}")))?;
            let mut hash = Sha256::new();
            let mut written = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|s| s.context(format!("failed to copy {name}")))?;
                written += chunk.len() as u64;
                if written > size {
                    break;
                }
                hash.update(&chunk);
                sink.write(&chunk).await?;
            }
            let digest = sha256_digest(hash);
            if written != size {
                return Err(TransferError::Failed(format!("unexpected copy size for {name}")));
            }
            if digest != desc.digest {
                return Err(TransferError::Failed(format!("{name}: unexpected digest {digest} copied")));
            }
            pad(sink, size).await
        }
    }
}

async fn pad<W: TarSink>(sink: &mut W, size: u64) -> Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        sink.write(&[0u8; BLOCK][..BLOCK - rem]).await?;
    }
    Ok(())
}
