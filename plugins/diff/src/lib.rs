//! `io.containerd.differ.v1.walking`: containerd's Diff service. Apply
//! extracts a layer blob from content onto a snapshot's mounts ([`apply`],
//! the security boundary); Diff compares two mount sets into a new layer
//! blob ([`compare`]). Blobs go through the metadata plugin's namespaced
//! Content service in process; the service is namespaced and on the socket,
//! as containerd serves it.

pub mod apply;
pub mod compare;
pub mod media;
pub mod service;

use crated_plugin_api::{types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

pub struct WalkingDiff;

impl Plugin for WalkingDiff {
    fn info() -> PluginInfo {
        PluginInfo::new(types::DIFF, "walking").requires(&[types::METADATA])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        // Temporary mount points; a previous run's leftovers are only empty
        // directories (a guard never removes one that is still mounted).
        let mounts_dir = ctx.state.join("mounts");
        std::fs::create_dir_all(&mounts_dir).map_err(PluginError::failed)?;
        Ok(service::router(service::DiffService::new(ctx.host.clone(), mounts_dir)))
    }
}
