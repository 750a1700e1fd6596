//! Pushing an image from content to a registry, as containerd's
//! `remotes.PushContent`: the image's tree (index, the manifests of the
//! wanted platforms, their configs and layers) is pushed children before
//! parents, so the registry never holds a manifest whose blobs it lacks:
//! configs and layers first (a few at a time), then manifests, then the
//! index, the root last under the reference's tag. Blobs the registry has
//! already are not sent again.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use containerd_client::types::Platform;
use crated_plugin_api::content::ContentClient;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use crate::{
    error::{Result, TransferError},
    oci::{self, Descriptor, Index, Manifest},
    progress::ProgressSink,
    registry::Registry,
    service::{parse, read},
};

/// Blobs uploaded at once (containerd's default `max_concurrent_uploaded_layers`).
pub const MAX_CONCURRENT_UPLOADS: usize = 3;

/// The blobs of an image to push: leaves (configs, layers) and documents
/// (manifests, indexes, root last), each once.
struct PushOrder {
    leaves: Vec<Descriptor>,
    documents: Vec<Descriptor>,
}

fn wanted(platforms: &[Platform], p: &Option<oci::Platform>) -> bool {
    match p {
        Some(p) if !platforms.is_empty() => platforms.iter().any(|w| p.matches(w)),
        _ => true,
    }
}

async fn push_order(content: &ContentClient, root: &Descriptor, platforms: &[Platform]) -> Result<PushOrder> {
    let mut order = PushOrder { leaves: Vec::new(), documents: Vec::new() };
    let mut seen = HashSet::new();
    // Breadth first: every document comes after its parent, so the reverse
    // puts children first.
    let mut queue = VecDeque::from([root.clone()]);
    while let Some(d) = queue.pop_front() {
        if !seen.insert(d.digest.clone()) {
            continue;
        }
        if oci::is_index(&d.media_type) {
            let index: Index = parse(&d, &read(content, &d).await?)?;
            queue.extend(index.manifests.into_iter().filter(|m| wanted(platforms, &m.platform)));
        } else if oci::is_manifest(&d.media_type) {
            let manifest: Manifest = parse(&d, &read(content, &d).await?)?;
            for blob in std::iter::once(manifest.config).chain(manifest.layers) {
                if seen.insert(blob.digest.clone()) {
                    order.leaves.push(blob);
                }
            }
        } else {
            return Err(TransferError::InvalidArgument(format!("{}: cannot push {}", d.digest, d.media_type)));
        }
        order.documents.push(d);
    }
    order.documents.reverse();
    Ok(order)
}

/// Pushes the image `root` to `registry`, the root under `tag` (by its
/// digest without one).
pub async fn push_image(
    content: &ContentClient,
    registry: &Registry,
    root: &Descriptor,
    platforms: &[Platform],
    tag: Option<&str>,
    progress: &mut ProgressSink,
) -> Result<()> {
    let order = push_order(content, root, platforms).await?;
    let progress = Mutex::new(progress);
    // Collected first: a lazy map's closure makes the future not `Send`.
    let uploads: Vec<_> = order.leaves.iter().map(|l| push_blob(content, registry, l, &progress)).collect();
    futures::stream::iter(uploads).buffer_unordered(MAX_CONCURRENT_UPLOADS).try_collect::<Vec<()>>().await?;
    for d in &order.documents {
        let is_root = d.digest == root.digest;
        // The root is pushed even when present: that sets the tag.
        if !is_root && registry.exists(&d.to_proto()).await? {
            progress.lock().await.blob("already exists", d, d.size as u64).await;
            continue;
        }
        progress.lock().await.blob("uploading", d, 0).await;
        let doc = read(content, d).await?;
        let tag = if is_root { tag } else { None };
        registry.push_manifest(&d.to_proto(), Bytes::from(doc), tag).await?;
        progress.lock().await.blob("complete", d, d.size as u64).await;
    }
    Ok(())
}

async fn push_blob(
    content: &ContentClient,
    registry: &Registry,
    desc: &Descriptor,
    progress: &Mutex<&mut ProgressSink>,
) -> Result<()> {
    let proto = desc.to_proto();
    if registry.exists(&proto).await? {
        progress.lock().await.blob("already exists", desc, desc.size as u64).await;
        return Ok(());
    }
    progress.lock().await.blob("uploading", desc, 0).await;
    let data = content.read(&desc.digest).await.map_err(|s| s.context(format!("failed to read {}", desc.digest)))?;
    let data = data.map_ok(Bytes::from).map_err(|s| std::io::Error::other(s.message)).boxed();
    registry.push_blob(&proto, data).await?;
    progress.lock().await.blob("complete", desc, desc.size as u64).await;
    Ok(())
}
