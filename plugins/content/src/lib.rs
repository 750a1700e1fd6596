//! `io.containerd.content.v1.content`: the raw, content-addressed blob
//! store, serving containerd's `containerd.services.content.v1.Content`.
//!
//! - [`store`]: the store itself, a plain async library (no gRPC).
//! - [`service`]: the gRPC service mapped onto it.
//!
//! The store is not namespaced; the metadata plugin wraps it, namespaces
//! it and takes over the service on the socket, calling this plugin in
//! process with the same API.

pub mod digest;
pub mod service;
pub mod store;

use crated_plugin_api::{InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

pub use store::{BlobInfo, BlobReader, ContentError, ContentStore, Digest, IngestStatus, Writer};

/// The plugin registration.
pub struct ContentPlugin;

impl Plugin for ContentPlugin {
    fn info() -> PluginInfo {
        PluginInfo::new(crated_plugin_api::types::CONTENT, "content")
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let store = ContentStore::open(&ctx.root).await.map_err(PluginError::failed)?;
        Ok(service::router(store))
    }
}
