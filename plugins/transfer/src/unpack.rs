//! Unpacking an image's layers into a snapshotter, as containerd's
//! `core/unpack` does: one snapshot per layer named by its chain ID,
//! prepared under a unique `extract-<nanos>-<random> <chainID>` key with
//! the `containerd.io/snapshot.ref` label, the layer applied through the
//! Diff service, its diff ID checked against the config, then committed
//! as the chain ID. A chain ID that exists is a layer already unpacked. A
//! failed layer's active snapshot is removed, so nothing half-unpacked
//! stays. Afterwards the layer blobs carry `containerd.io/uncompressed`
//! and the config `containerd.io/gc.ref.snapshot.<snapshotter>`.

use std::collections::HashMap;

use containerd_client::services::v1::{
    snapshots::{
        CommitSnapshotRequest, PrepareSnapshotRequest, PrepareSnapshotResponse, RemoveSnapshotRequest,
        StatSnapshotRequest, StatSnapshotResponse,
    },
    ApplyRequest, ApplyResponse,
};
use crated_plugin_api::{
    content::{ContentClient, LEASE_HEADER},
    Call, ErrorKind, Host, Status,
};

use crate::{
    error::{Result, TransferError},
    lease::unique_part,
    oci::{self, Descriptor, ImageConfig, Manifest},
    progress::ProgressSink,
};

const SNAPSHOTS: &str = "/containerd.services.snapshots.v1.Snapshots";
const DIFF: &str = "/containerd.services.diff.v1.Diff";
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// The snapshotter an unpack without one goes to.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// An image to unpack: its layers and the diff IDs its config promises.
#[derive(Debug, Clone)]
pub struct UnpackImage {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<String>,
}

impl UnpackImage {
    pub fn new(manifest: &Manifest, config: &ImageConfig) -> UnpackImage {
        UnpackImage {
            config: manifest.config.clone(),
            layers: manifest.layers.clone(),
            diff_ids: config.rootfs.diff_ids.clone(),
        }
    }
}

/// Unpacks through the metadata plugin's namespaced Snapshots and the
/// Diff service, under a lease.
#[derive(Clone)]
pub struct Unpacker {
    host: Host,
    namespace: String,
    lease: Option<String>,
    content: ContentClient,
}

impl Unpacker {
    pub fn new(host: Host, namespace: &str, lease: Option<&str>) -> Unpacker {
        let content = ContentClient::new(host.clone(), namespace).with_lease(lease);
        Unpacker { host, namespace: namespace.to_string(), lease: lease.map(str::to_string), content }
    }

    fn call(&self, service: &str, method: &str) -> Call {
        let mut call = Host::call(&format!("{service}/{method}"), Some(&self.namespace));
        if let Some(lease) = &self.lease {
            call.headers.push((LEASE_HEADER.to_string(), lease.clone()));
        }
        call
    }

    async fn exists(&self, snapshotter: &str, key: &str) -> Result<bool> {
        let req = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
        match self.host.unary::<_, StatSnapshotResponse>(&self.call(SNAPSHOTS, "Stat"), &req).await {
            Ok(_) => Ok(true),
            Err(s) if s.kind() == ErrorKind::NotFound => Ok(false),
            Err(s) => Err(TransferError::from(s).context(format!("failed to stat snapshot {key}"))),
        }
    }

    async fn remove(&self, snapshotter: &str, key: &str) {
        let req = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
        if let Err(s) = self.host.unary::<_, ()>(&self.call(SNAPSHOTS, "Remove"), &req).await {
            crated_plugin_api::tracing::warn!(key, "failed to clean up extraction snapshot: {}", s.message);
        }
    }

    /// Unpacks `image` into `snapshotter`; returns the chain ID of its top
    /// layer.
    pub async fn unpack(&self, snapshotter: &str, image: &UnpackImage, progress: &mut ProgressSink) -> Result<String> {
        let snapshotter = if snapshotter.is_empty() { DEFAULT_SNAPSHOTTER } else { snapshotter };
        if image.layers.len() != image.diff_ids.len() {
            return Err(TransferError::archive(
                format!("config {}", image.config.digest),
                format!("{} layers but {} diff ids", image.layers.len(), image.diff_ids.len()),
            ));
        }
        let chain = oci::chain_ids(&image.diff_ids);
        for (i, layer) in image.layers.iter().enumerate() {
            let parent = if i == 0 { String::new() } else { chain[i - 1].clone() };
            self.unpack_layer(snapshotter, layer, &image.diff_ids[i], &chain[i], &parent, progress).await?;
        }
        let Some(top) = chain.last().cloned() else {
            return Ok(String::new());
        };
        let label = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
        self.content
            .set_labels(&image.config.digest, &[(label, top.clone())])
            .await
            .map_err(|s| s.context(format!("labelling config {}", image.config.digest)))?;
        Ok(top)
    }

    async fn unpack_layer(
        &self,
        snapshotter: &str,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        parent: &str,
        progress: &mut ProgressSink,
    ) -> Result<()> {
        if self.exists(snapshotter, chain_id).await? {
            return Ok(());
        }
        let labels = HashMap::from([(SNAPSHOT_REF_LABEL.to_string(), chain_id.to_string())]);
        let key = format!("extract-{} {chain_id}", unique_part());
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: labels.clone(),
        };
        let mounts =
            match self.host.unary::<_, PrepareSnapshotResponse>(&self.call(SNAPSHOTS, "Prepare"), &prepare).await {
                Ok(r) => r.mounts,
                // Unpacked meanwhile by someone else.
                Err(s) if s.kind() == ErrorKind::AlreadyExists && self.exists(snapshotter, chain_id).await? => {
                    return Ok(())
                }
                Err(s) => {
                    return Err(TransferError::from(s).context(format!("failed to prepare extraction snapshot {key:?}")))
                }
            };
        progress.named("extracting", &layer.digest, Some(layer.to_proto())).await;
        let applied = self.apply_and_commit(snapshotter, layer, diff_id, chain_id, &key, mounts, labels).await;
        if let Err(e) = applied {
            self.remove(snapshotter, &key).await;
            return Err(e);
        }
        self.content
            .set_labels(&layer.digest, &[(oci::UNCOMPRESSED_LABEL.to_string(), diff_id.to_string())])
            .await
            .map_err(|s| s.context(format!("labelling layer {}", layer.digest)))?;
        progress.named("extracted", &layer.digest, Some(layer.to_proto())).await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_and_commit(
        &self,
        snapshotter: &str,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        key: &str,
        mounts: Vec<containerd_client::types::Mount>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let apply = ApplyRequest { diff: Some(layer.to_proto()), mounts, ..Default::default() };
        let applied: ApplyResponse =
            self.host.unary(&self.call(DIFF, "Apply"), &apply).await.map_err(|s: Status| {
                TransferError::from(s).context(format!("failed to extract layer {}", layer.digest))
            })?;
        let actual = applied.applied.map(|d| d.digest).unwrap_or_default();
        if actual != diff_id {
            return Err(TransferError::DiffId { layer: layer.digest.clone(), expected: diff_id.to_string(), actual });
        }
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: chain_id.to_string(),
            key: key.to_string(),
            labels,
        };
        match self.host.unary::<_, ()>(&self.call(SNAPSHOTS, "Commit"), &commit).await {
            Ok(()) => Ok(()),
            // Committed meanwhile by someone else: ours is removed by the caller.
            Err(s) if s.kind() == ErrorKind::AlreadyExists => {
                self.remove(snapshotter, key).await;
                Ok(())
            }
            Err(s) => Err(TransferError::from(s).context(format!("failed to commit snapshot {key}"))),
        }
    }
}
