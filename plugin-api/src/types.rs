//! The one table of plugin types: containerd's versioned type names, and
//! crated's own. Plugins, the core and tests name a type through these
//! constants, never through a string literal, so that a rename or a new
//! version happens in exactly one place.
//!
//! A plugin is addressed as `<type>.<id>` (containerd's plugin URI), e.g.
//! `io.containerd.snapshotter.v1.overlayfs`; [`key`] builds one.

/// The content-addressed blob store (raw, not namespaced).
pub const CONTENT: &str = "io.containerd.content.v1";
/// Snapshotters: overlayfs, native, and third-party ones. Each serves the
/// Snapshots API to its dependents only (the metadata plugin puts the one
/// namespaced Snapshots service on the socket).
pub const SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";
/// The metadata store over content and snapshotters.
pub const METADATA: &str = "io.containerd.metadata.v1";
/// The events exchange.
pub const EVENT: &str = "io.containerd.event.v1";
/// Layer differs (apply and compare).
pub const DIFF: &str = "io.containerd.differ.v1";
/// Garbage collection schedulers.
pub const GC: &str = "io.containerd.gc.v1";
/// Lease managers.
pub const LEASE: &str = "io.containerd.lease.v1";
/// Task runtimes (shim v2).
pub const RUNTIME: &str = "io.containerd.runtime.v2";
/// gRPC services in containerd's sense (introspection, version, CRI...).
pub const GRPC: &str = "io.containerd.grpc.v1";
/// Image transfers (import, export, pull, push): containerd 1.7's
/// Transfer service.
pub const TRANSFER: &str = "io.containerd.transfer.v1";
/// The stream manager the Transfer service moves bytes and progress over:
/// containerd 1.7's Streaming service.
pub const STREAMING: &str = "io.containerd.streaming.v1";
/// Internal services.
pub const SERVICE: &str = "io.containerd.service.v1";
/// A library that failed to load: listed under this type with status `error`.
pub const LIBRARY: &str = "io.crated.library.v1";

/// The type a `[proxy_plugins]` entry's `type` stands for, as containerd maps
/// it (`snapshot`, `content`); `None` for a proxy type crated does not serve.
pub fn proxy_type(kind: &str) -> Option<&'static str> {
    match kind {
        "snapshot" => Some(SNAPSHOTTER),
        "content" => Some(CONTENT),
        _ => None,
    }
}

/// The gRPC service a plugin of `plugin_type` serves to its dependents,
/// for the types a `[proxy_plugins]` entry can stand for: what the proxy's
/// socket must serve.
pub fn proxy_service(plugin_type: &str) -> Option<&'static str> {
    match plugin_type {
        SNAPSHOTTER => Some("containerd.services.snapshots.v1.Snapshots"),
        CONTENT => Some("containerd.services.content.v1.Content"),
        _ => None,
    }
}

/// A plugin's URI, `<type>.<id>`.
pub fn key(plugin_type: &str, id: &str) -> String {
    format!("{plugin_type}.{id}")
}
