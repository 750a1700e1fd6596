//! `containerd.services.transfer.v1.Transfer/Transfer`: dispatch on the
//! (source, destination) pair of a request, as containerd's local transfer
//! service: archive stream to image store (import, with unpack), image
//! store to archive stream (export), registry to image store (pull, with
//! unpack: [`crate::pull`]) and image store to registry (push:
//! [`crate::push`]).

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use containerd_client::{
    services::v1::TransferRequest,
    types::{
        transfer::{ImageExportStream, ImageImportStream, ImageStore, OciRegistry},
        Platform,
    },
};
use crated_plugin_api::{content::ContentClient, Call, Host, ServiceRouter, Status};
use prost::Name;

use crate::{
    auth::StreamCredentials,
    error::{Result, TransferError},
    export::{export_images, ExportOptions},
    imagestore::{label_children, ImageStoreSpec, ImagesClient, REF_SOURCE_ANNOTATION},
    import::import_archive,
    lease::LeaseGuard,
    oci::{self, Descriptor, ImageConfig, Manifest},
    progress::ProgressSink,
    pull::Fetcher,
    push::push_image,
    registry::{Credentials, Registry, RegistryOptions},
    streams::{self, type_name, unpack, ByteReceiver, ByteSender, STREAM_WAIT},
    unpack::{UnpackImage, Unpacker},
};

pub const SERVICE: &str = "containerd.services.transfer.v1.Transfer";

#[derive(Clone)]
pub struct TransferService {
    host: Host,
}

/// An image manifest reached while walking an import or pull, with its config.
pub struct Reached {
    pub manifest: Manifest,
    pub config: ImageConfig,
}

impl TransferService {
    pub fn new(host: Host) -> TransferService {
        TransferService { host }
    }

    pub async fn transfer(&self, ns: &str, req: TransferRequest) -> Result<()> {
        let source = req.source.ok_or_else(|| TransferError::InvalidArgument("source is required".into()))?;
        let destination =
            req.destination.ok_or_else(|| TransferError::InvalidArgument("destination is required".into()))?;
        let progress_id = req.options.map(|o| o.progress_stream).unwrap_or_default();
        let (src, dst) = (type_name(&source), type_name(&destination));
        let import = (ImageImportStream::full_name(), ImageStore::full_name());
        let export = (ImageStore::full_name(), ImageExportStream::full_name());
        let from_registry = (OciRegistry::full_name(), ImageStore::full_name());
        let to_registry = (ImageStore::full_name(), OciRegistry::full_name());
        let pair = (src.to_string(), dst.to_string());
        if pair == import {
            let (s, d) = (unpack::<ImageImportStream>(&source)?, unpack::<ImageStore>(&destination)?);
            let mut progress = self.progress(&progress_id).await?;
            self.with_lease(ns, |lease| self.import(ns, lease, s, d.into(), &mut progress)).await
        } else if pair == export {
            let (s, d) = (unpack::<ImageStore>(&source)?, unpack::<ImageExportStream>(&destination)?);
            let mut progress = self.progress(&progress_id).await?;
            self.with_lease(ns, |lease| self.export(ns, lease, s.into(), d, &mut progress)).await
        } else if pair == from_registry {
            let (s, d) = (unpack::<OciRegistry>(&source)?, unpack::<ImageStore>(&destination)?);
            let mut progress = self.progress(&progress_id).await?;
            self.with_lease(ns, |lease| self.pull(ns, lease, s, d.into(), &mut progress)).await
        } else if pair == to_registry {
            let (s, d) = (unpack::<ImageStore>(&source)?, unpack::<OciRegistry>(&destination)?);
            let mut progress = self.progress(&progress_id).await?;
            self.push(ns, s.into(), d, &mut progress).await
        } else {
            Err(TransferError::InvalidArgument(format!(
                "unsupported transfer from {:?} to {:?}",
                source.type_url, destination.type_url
            )))
        }
    }

    async fn progress(&self, id: &str) -> Result<ProgressSink> {
        if id.is_empty() {
            return Ok(ProgressSink::default());
        }
        Ok(ProgressSink::new(Some(streams::take(id, STREAM_WAIT).await?)))
    }

    /// Runs `f` under a fresh lease, deleted afterwards whatever happened.
    async fn with_lease<'a, F, Fut>(&'a self, ns: &'a str, f: F) -> Result<()>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<()>> + 'a,
    {
        let lease = LeaseGuard::create(&self.host, ns, format!("transfer-{}", crate::lease::unique_part())).await?;
        let result = f(lease.id.clone()).await;
        lease.release().await;
        result
    }

    async fn import(
        &self,
        ns: &str,
        lease: String,
        source: ImageImportStream,
        store: ImageStoreSpec,
        progress: &mut ProgressSink,
    ) -> Result<()> {
        let content = ContentClient::new(self.host.clone(), ns).with_lease(Some(&lease));
        progress.event("Importing").await;
        let input = streams::take(&source.stream, STREAM_WAIT).await?;
        let index = import_archive(&content, ByteReceiver::new(input), progress).await?;

        let mut descriptors = vec![index.clone()];
        let reached = self.walk(&content, &store, &index, &mut descriptors).await?;
        self.unpack_reached(ns, &lease, &store, &reached, progress).await?;
        let images = ImagesClient::new(self.host.clone(), ns);
        for desc in descriptors {
            let mut saved_desc = desc.clone();
            saved_desc.annotations.remove(REF_SOURCE_ANNOTATION);
            for img in images.store(&store, &desc).await? {
                progress.named("saved", &img.name, Some(saved_desc.to_proto())).await;
            }
        }
        progress.event("Completed import").await;
        Ok(())
    }

    /// Unpacks the reached images of the platforms `store` wants unpacked.
    async fn unpack_reached(
        &self,
        ns: &str,
        lease: &str,
        store: &ImageStoreSpec,
        reached: &[Reached],
        progress: &mut ProgressSink,
    ) -> Result<()> {
        if store.unpacks.is_empty() {
            return Ok(());
        }
        let unpacker = Unpacker::new(self.host.clone(), ns, Some(lease));
        let mut done = HashSet::new();
        for u in &store.unpacks {
            let platform = u.platform.clone().unwrap_or_else(host_platform);
            for r in reached.iter().filter(|r| r.config.platform().matches(&platform)) {
                if done.insert((u.snapshotter.clone(), r.manifest.config.digest.clone())) {
                    unpacker.unpack(&u.snapshotter, &UnpackImage::new(&r.manifest, &r.config), progress).await?;
                }
            }
        }
        Ok(())
    }

    /// A registry client for the transfer's `OCIRegistry`, asking the
    /// client's auth stream for credentials when it named one.
    async fn registry(&self, source: &OciRegistry) -> Result<Registry> {
        let resolver = source.resolver.clone().unwrap_or_default();
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let options = RegistryOptions {
            default_scheme: non_empty(resolver.default_scheme),
            host_dir: non_empty(resolver.host_dir).map(Into::into),
            headers: resolver.headers,
        };
        let creds: Option<Arc<dyn Credentials>> = match non_empty(resolver.auth_stream) {
            Some(id) => {
                let stream = streams::take(&id, STREAM_WAIT).await?;
                Some(Arc::new(StreamCredentials::new(stream, &source.reference)))
            }
            None => None,
        };
        Ok(Registry::new(&source.reference, options, creds).await?)
    }

    /// Pulls an image into content, unpacks it, then names it (containerd's
    /// `pull`): a failure on the way leaves no image record behind.
    async fn pull(
        &self,
        ns: &str,
        lease: String,
        source: OciRegistry,
        store: ImageStoreSpec,
        progress: &mut ProgressSink,
    ) -> Result<()> {
        let content = ContentClient::new(self.host.clone(), ns).with_lease(Some(&lease));
        let from = format!("OCI Registry ({})", source.reference);
        progress.event(&format!("Resolving from {from}")).await;
        let registry = self.registry(&source).await?;
        let root = Descriptor::from_proto(&registry.resolve().await?);
        progress.event(&format!("Pulling from {from}")).await;
        progress.named("fetching image content", registry.name(), Some(root.to_proto())).await;
        let reached = Fetcher::new(&content, &registry).fetch_image(&store, &root, progress).await?;
        self.unpack_reached(ns, &lease, &store, &reached, progress).await?;
        let images = ImagesClient::new(self.host.clone(), ns);
        for img in images.store(&store, &root).await? {
            progress.named("saved", &img.name, Some(root.to_proto())).await;
        }
        progress.event(&format!("Completed pull from {from}")).await;
        Ok(())
    }

    /// Pushes an image of the store to a registry (containerd's `push`).
    async fn push(
        &self,
        ns: &str,
        source: ImageStoreSpec,
        destination: OciRegistry,
        progress: &mut ProgressSink,
    ) -> Result<()> {
        let content = ContentClient::new(self.host.clone(), ns);
        let image = ImagesClient::new(self.host.clone(), ns).get(&source.name).await?;
        let target = image.target.as_ref().map(Descriptor::from_proto).unwrap_or_default();
        let registry = self.registry(&destination).await?;
        let to = format!("OCI Registry ({})", destination.reference);
        progress.event(&format!("Pushing to {to}")).await;
        progress.named("pushing content", &image.name, Some(target.to_proto())).await;
        let tag = oci::tag_of(registry.name());
        push_image(&content, &registry, &target, &source.platforms, tag, progress).await?;
        progress.named("pushed content", &image.name, Some(target.to_proto())).await;
        progress
            .send(containerd_client::types::transfer::Progress {
                event: format!("Completed push to {to}"),
                desc: Some(target.to_proto()),
                ..Default::default()
            })
            .await;
        Ok(())
    }

    /// Walks what an import's index names, labelling every document with
    /// its children (GC labels), checking that every blob is there, and
    /// keeping the platforms the store wants. The archive's own images are
    /// added to `descriptors` for naming.
    async fn walk(
        &self,
        content: &ContentClient,
        store: &ImageStoreSpec,
        index: &Descriptor,
        descriptors: &mut Vec<Descriptor>,
    ) -> Result<Vec<Reached>> {
        let doc = read(content, index).await?;
        let mut queue: VecDeque<Descriptor> = VecDeque::new();
        for mut m in label_children(content, index, &doc).await? {
            queue.push_back(m.clone());
            m.annotations.insert(REF_SOURCE_ANNOTATION.into(), "annotation".into());
            descriptors.push(m);
        }
        let mut reached = Vec::new();
        let mut seen = HashSet::new();
        while let Some(d) = queue.pop_front() {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            if let Some(p) = &d.platform {
                if !store.wants_platform(p) {
                    continue;
                }
            }
            if oci::is_index(&d.media_type) {
                let doc = read(content, &d).await?;
                queue.extend(label_children(content, &d, &doc).await?);
            } else if oci::is_manifest(&d.media_type) {
                let doc = read(content, &d).await?;
                label_children(content, &d, &doc).await?;
                let manifest: Manifest = parse(&d, &doc)?;
                for l in &manifest.layers {
                    if content.info(&l.digest).await?.is_none() {
                        return Err(TransferError::NotFound(format!("layer {} of manifest {}", l.digest, d.digest)));
                    }
                }
                let config: ImageConfig = parse(&manifest.config, &read(content, &manifest.config).await?)?;
                if store.wants_platform(&config.platform()) {
                    reached.push(Reached { manifest, config });
                }
            }
        }
        Ok(reached)
    }

    async fn export(
        &self,
        ns: &str,
        lease: String,
        source: ImageStoreSpec,
        destination: ImageExportStream,
        progress: &mut ProgressSink,
    ) -> Result<()> {
        let content = ContentClient::new(self.host.clone(), ns).with_lease(Some(&lease));
        progress.event("Exporting").await;
        let images = ImagesClient::new(self.host.clone(), ns);
        let mut names = Vec::new();
        if !source.name.is_empty() {
            names.push(source.name.clone());
        }
        for r in &source.extra_references {
            if r.is_prefix {
                return Err(TransferError::NotImplemented(format!(
                    "prefix lookup on export not implemented: {}",
                    r.name
                )));
            }
            names.push(r.name.clone());
        }
        if names.is_empty() {
            return Err(TransferError::InvalidArgument("no image to export".into()));
        }
        let mut targets = Vec::new();
        for name in names {
            let img = images.get(&name).await?;
            let target = img.target.as_ref().map(Descriptor::from_proto).unwrap_or_default();
            targets.push((img.name, target));
        }
        let options = ExportOptions {
            platforms: destination.platforms,
            all_platforms: destination.all_platforms,
            skip_compatibility_manifest: destination.skip_compatibility_manifest,
        };
        let output = streams::take(&destination.stream, STREAM_WAIT).await?;
        let mut sender = ByteSender::new(output);
        export_images(&content, &targets, &options, &mut sender).await?;
        sender.close();
        progress.event("Completed export").await;
        Ok(())
    }
}

fn host_platform() -> Platform {
    let host = crated_plugin_api::build_platform();
    let (os, arch) = host.split_once('/').unwrap_or(("linux", "amd64"));
    Platform { os: os.into(), architecture: arch.into(), ..Default::default() }
}

pub(crate) async fn read(content: &ContentClient, desc: &Descriptor) -> Result<Vec<u8>> {
    content.read_all(&desc.digest).await.map_err(|s| TransferError::from(s).context(format!("content {}", desc.digest)))
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(desc: &Descriptor, doc: &[u8]) -> Result<T> {
    serde_json::from_slice(doc).map_err(|e| TransferError::archive(format!("{} {}", desc.media_type, desc.digest), e))
}

pub fn router(svc: TransferService) -> ServiceRouter {
    ServiceRouter::new().unary_with(
        &format!("/{SERVICE}/Transfer"),
        &svc,
        |svc: TransferService, call: Call, req: TransferRequest| async move {
            svc.transfer(call.require_namespace()?, req).await.map_err(Status::from)?;
            Ok::<(), Status>(())
        },
    )
}
