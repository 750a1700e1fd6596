//! containerd 1.7's image transfers, as two plugins of one library that
//! share a process-global stream registry ([`streams`]):
//!
//! - `io.containerd.streaming.v1.manager` serves
//!   `containerd.services.streaming.v1.Streaming`: a client opens a named
//!   bidirectional stream of `Any` messages that a transfer then uses for
//!   bytes (an archive in or out) or progress.
//! - `io.containerd.transfer.v1.local` serves
//!   `containerd.services.transfer.v1.Transfer`: import of OCI layout and
//!   `docker save` tars ([`import`]), unpack into a snapshotter
//!   ([`unpack`]), export ([`export`]), pull ([`pull`], with the
//!   [`registry`] client and credentials from the client's auth stream,
//!   [`auth`]) and push ([`push`]).
//!
//! The pieces a pull or push reuses are modules with async APIs:
//! [`imagestore`] (naming, GC labels, Images create/update), [`unpack`],
//! [`progress`], [`lease`], [`streams`], and plugin-api's content client.

pub mod auth;
pub mod error;
pub mod export;
pub mod imagestore;
pub mod import;
pub mod lease;
pub mod oci;
pub mod progress;
pub mod pull;
pub mod push;
pub mod registry;
pub mod service;
pub mod streams;
pub mod unpack;

use crated_plugin_api::{types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

/// The stream manager: the Streaming service on the socket.
pub struct StreamManager;

impl Plugin for StreamManager {
    fn info() -> PluginInfo {
        PluginInfo::new(types::STREAMING, "manager")
    }

    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(streams::router())
    }
}

/// The local transfer service: import, export, unpack, pull and push in process.
pub struct LocalTransfer;

impl Plugin for LocalTransfer {
    fn info() -> PluginInfo {
        PluginInfo::new(types::TRANSFER, "local").requires(&[types::METADATA, types::DIFF, types::STREAMING])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(service::router(service::TransferService::new(ctx.host.clone())))
    }
}
