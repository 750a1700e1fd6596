//! Fetching an image from a registry into content, as containerd's pull
//! (`core/transfer/local/pull.go` with `remotes.Fetch` and the image
//! handlers): the index and manifests are walked from the resolved root,
//! keeping the platforms the image store wants (with `all_metadata`, the
//! manifests and configs of the others too, but not their layers); every
//! blob is streamed into content under containerd's ingest reference
//! (`layer-<digest>`, ...), so that a pull cut short resumes where the
//! stored ingest ends, and is checked against its digest and size before it
//! is committed. Layers are fetched a few at a time. Every blob gets the
//! `containerd.io/distribution.source.<host>` label naming the repository,
//! documents their GC child labels.

use std::collections::{HashMap, HashSet, VecDeque};

use crated_plugin_api::{content::ContentClient, ErrorKind};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use crate::{
    error::{Result, TransferError},
    imagestore::{label_children, ImageStoreSpec},
    oci::{self, Descriptor, ImageConfig, Manifest},
    progress::ProgressSink,
    registry::Registry,
    service::{parse, read, Reached},
};

/// Layers downloaded at once (containerd's default `max_concurrent_downloads`).
pub const MAX_CONCURRENT_DOWNLOADS: usize = 3;
/// How often (in bytes) a blob's "downloading" progress is sent.
const PROGRESS_EVERY: u64 = 1 << 20;
/// The label prefix naming where a blob was pulled from.
pub const DISTRIBUTION_SOURCE_LABEL: &str = "containerd.io/distribution.source";

/// Fetches into content, from one registry repository.
pub struct Fetcher<'a> {
    content: &'a ContentClient,
    registry: &'a Registry,
    /// The distribution source label's key and the repository it names.
    source: (String, String),
}

/// `os/arch[/variant]` of a wanted platform, for messages.
pub fn format_platform(p: &containerd_client::types::Platform) -> String {
    let mut s = format!("{}/{}", p.os, p.architecture);
    if !p.variant.is_empty() {
        s.push('/');
        s.push_str(&p.variant);
    }
    s
}

impl<'a> Fetcher<'a> {
    pub fn new(content: &'a ContentClient, registry: &'a Registry) -> Fetcher<'a> {
        let (host, repository) = oci::repository_of(registry.name());
        let source = (format!("{DISTRIBUTION_SOURCE_LABEL}.{host}"), repository.to_string());
        Fetcher { content, registry, source }
    }

    /// Fetches what `root` names for the platforms `store` wants; returns
    /// the image manifests of those platforms, with their configs.
    pub async fn fetch_image(
        &self,
        store: &ImageStoreSpec,
        root: &Descriptor,
        progress: &mut ProgressSink,
    ) -> Result<Vec<Reached>> {
        let progress = Mutex::new(progress);
        let mut queue = VecDeque::from([root.clone()]);
        let mut seen = HashSet::new();
        // Manifests of other platforms, fetched for their metadata only.
        let mut metadata_only = HashSet::new();
        let mut layers: Vec<Descriptor> = Vec::new();
        let mut reached = Vec::new();
        while let Some(d) = queue.pop_front() {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            self.fetch(&d, &progress).await?;
            let doc = read(self.content, &d).await?;
            let children = label_children(self.content, &d, &doc).await?;
            if oci::is_index(&d.media_type) {
                for c in children {
                    match &c.platform {
                        Some(p) if !store.wants_platform(p) => {
                            if store.all_metadata {
                                metadata_only.insert(c.digest.clone());
                                queue.push_back(c);
                            }
                        }
                        _ => queue.push_back(c),
                    }
                }
            } else if oci::is_manifest(&d.media_type) {
                let manifest: Manifest = parse(&d, &doc)?;
                self.fetch(&manifest.config, &progress).await?;
                let config: ImageConfig = parse(&manifest.config, &read(self.content, &manifest.config).await?)?;
                if metadata_only.contains(&d.digest) || !store.wants_platform(&config.platform()) {
                    continue;
                }
                for l in &manifest.layers {
                    if !layers.iter().any(|x| x.digest == l.digest) {
                        layers.push(l.clone());
                    }
                }
                reached.push(Reached { manifest, config });
            } else {
                return Err(TransferError::InvalidArgument(format!(
                    "{}: {} is not an image index or manifest",
                    self.registry.name(),
                    d.media_type
                )));
            }
        }
        if reached.is_empty() && !store.platforms.is_empty() {
            let wanted: Vec<String> = store.platforms.iter().map(format_platform).collect();
            return Err(TransferError::NotFound(format!(
                "{}: no manifest for platform {}",
                self.registry.name(),
                wanted.join(", ")
            )));
        }
        for l in &layers {
            progress.lock().await.blob("waiting", l, 0).await;
        }
        // Collected first: a lazy map's closure makes the future not `Send`.
        let downloads: Vec<_> = layers.iter().map(|l| self.fetch(l, &progress)).collect();
        futures::stream::iter(downloads).buffer_unordered(MAX_CONCURRENT_DOWNLOADS).try_collect::<Vec<()>>().await?;
        Ok(reached)
    }

    /// Fetches one blob unless content has it, then labels its source.
    async fn fetch(&self, desc: &Descriptor, progress: &Mutex<&mut ProgressSink>) -> Result<()> {
        let present = self.content.info(&desc.digest).await.map_err(|s| s.context(format!("blob {}", desc.digest)))?;
        let existed = match present {
            Some(_) => true,
            None => self.download(desc, progress).await?,
        };
        progress.lock().await.blob(if existed { "already exists" } else { "complete" }, desc, desc.size as u64).await;
        self.label_source(desc).await
    }

    /// Streams a blob into content from where its ingest stopped; whether
    /// content had it after all.
    async fn download(&self, desc: &Descriptor, progress: &Mutex<&mut ProgressSink>) -> Result<bool> {
        let key = oci::ref_key(desc);
        let size = u64::try_from(desc.size).unwrap_or(0);
        let mut writer = match self.content.resume(&key, &desc.digest, size).await {
            Ok(w) => w,
            Err(s) if s.kind() == ErrorKind::AlreadyExists => return Ok(true),
            Err(s) => return Err(TransferError::from(s).context(format!("failed to open writer for {key}"))),
        };
        let mut reported = writer.offset();
        progress.lock().await.blob("downloading", desc, reported).await;
        if writer.offset() < size {
            // A failure before or during the body leaves the ingest as it
            // is (dropping the writer only closes its stream): the next
            // pull goes on from there. Bad bytes are dropped.
            let mut body = self.registry.fetch(&desc.to_proto(), writer.offset()).await?;
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        if e.kind() != ErrorKind::Unavailable {
                            writer.abort().await;
                        }
                        return Err(e.into());
                    }
                };
                writer.write(chunk.to_vec()).await.map_err(|s| s.context(format!("failed to write {key}")))?;
                if writer.offset() - reported >= PROGRESS_EVERY {
                    reported = writer.offset();
                    progress.lock().await.blob("downloading", desc, reported).await;
                }
            }
        }
        let actual = writer.digest();
        if writer.offset() != size || actual != desc.digest {
            writer.abort().await;
            return Err(TransferError::BlobDigest { path: key, expected: desc.digest.clone(), actual });
        }
        let committed = writer
            .commit(Some(&desc.digest), HashMap::new())
            .await
            .map_err(|s| TransferError::from(s).context(format!("failed to commit {key}")))?;
        Ok(committed.existed)
    }

    /// Adds the repository to the blob's distribution source label (a
    /// sorted, comma-separated list), as containerd's
    /// `AppendDistributionSourceLabel`.
    async fn label_source(&self, desc: &Descriptor) -> Result<()> {
        let (key, repository) = &self.source;
        let info = self.content.info(&desc.digest).await.map_err(|s| s.context(format!("blob {}", desc.digest)))?;
        let current = info.and_then(|i| i.labels.get(key).cloned()).unwrap_or_default();
        let mut repositories: Vec<&str> = current.split(',').filter(|r| !r.is_empty()).collect();
        if repositories.contains(&repository.as_str()) {
            return Ok(());
        }
        repositories.push(repository);
        repositories.sort_unstable();
        self.content
            .set_labels(&desc.digest, &[(key.clone(), repositories.join(","))])
            .await
            .map_err(|s| TransferError::from(s).context(format!("labelling {}", desc.digest)))
    }
}
