//! `io.containerd.grpc.v1.cri`: the Kubernetes Container Runtime Interface
//! (`runtime.v1`) on the daemon's socket, as containerd 1.6's CRI plugin.
//!
//! This first slice serves the image side and the runtime's identity:
//! [`config`] (containerd's keys and defaults), [`service`] (Version,
//! Status, UpdateRuntimeConfig and the ImageService; the pod and container
//! methods answer `Unimplemented` by name), [`pull`] (PullImage through the
//! transfer plugin), [`images`] (the CRI's view of the `k8s.io` image
//! records) and [`reference`] (Docker reference normalisation).
//!
//! Everything goes through the plugin's dependencies in process: image
//! records and snapshots through the metadata plugin, blobs through its
//! namespaced Content service, pulls through the transfer plugin, with
//! credentials on a stream of the streaming plugin.

pub mod config;
pub mod images;
pub mod pull;
pub mod reference;
pub mod service;

use crated_plugin_api::{types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

/// The CRI plugin.
pub struct Cri;

impl Plugin for Cri {
    fn info() -> PluginInfo {
        // containerd's CRI reaches images, content, snapshots, leases,
        // tasks and events through its client; here they are dependencies
        // called in process. Leases are the metadata plugin's (a lease
        // plugin type orders first when one exists); the runtime is needed
        // from the pod slice on, so it only orders for now.
        PluginInfo::new(types::GRPC, "cri")
            .requires(&[
                types::METADATA,
                types::CONTENT,
                types::SNAPSHOTTER,
                types::TRANSFER,
                types::STREAMING,
                types::EVENT,
            ])
            .requires_optional(&[types::LEASE, types::RUNTIME, types::DIFF])
            .config_defaults(config::DEFAULTS)
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let parsed = config::parse(&ctx.config).map_err(PluginError::failed)?;
        for key in &parsed.unknown {
            crated_plugin_api::tracing::warn!(
                "unknown key {key:?} in [plugins.\"{}.{}\"] ignored",
                ctx.plugin_type,
                ctx.id
            );
        }
        let snapshotter = &parsed.config.containerd.snapshotter;
        if ctx.host.dependencies_of_type(types::SNAPSHOTTER).iter().all(|d| &d.id != snapshotter) {
            return Err(PluginError::failed(format!("snapshotter {snapshotter:?} is not running")));
        }
        // containerd's imageFSPath: the snapshotter's directory beside ours.
        let base = ctx.root.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| ctx.root.clone());
        let image_fs = base.join(types::key(types::SNAPSHOTTER, snapshotter));
        Ok(service::router(service::CriService::new(ctx.host.clone(), parsed.config, image_fs)))
    }
}
