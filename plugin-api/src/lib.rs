//! The plugin API of crated: the stable ABI between the daemon and its
//! `.so` plugins ([`abi`]), and the SDK a plugin author writes against.
//!
//! # Writing a plugin
//!
//! A plugin library is a `cdylib` crate that depends on `crated-plugin-api`
//! (nothing else is required). For each plugin, implement [`Plugin`]:
//! a static [`PluginInfo`] (type, id, requires, default config) and an async
//! `init` that returns a [`ServiceRouter`] with the gRPC methods it serves.
//! Then export every plugin of the library once:
//!
//! ```ignore
//! use crated_plugin_api::{export_plugins, Plugin, PluginInfo, PluginError, InitCtx, ServiceRouter, Status};
//!
//! struct Hello;
//! impl Plugin for Hello {
//!     fn info() -> PluginInfo { PluginInfo::new("io.example.hello.v1", "hello") }
//!     async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
//!         Ok(ServiceRouter::new().unary("/example.Hello/Greet", |_call, req: MyReq| async move {
//!             Ok::<_, Status>(MyResp { /* ... */ })
//!         }))
//!     }
//! }
//! export_plugins!(Hello);
//! ```
//!
//! Build it with `cargo build --release`, with your own lockfile, and drop
//! `target/release/lib<name>.so` into the daemon's `plugin_dir`. The daemon
//! checks the library's ABI at load and refuses an incompatible one with a
//! message; it never crashes on it.
//!
//! # Rules the SDK enforces for you
//! - Every handler runs on, or inside the context of, the library's own
//!   tokio runtime ([`runtime`]); use tokio freely inside handlers.
//! - A panic in a handler becomes an `Internal` status for that call only.
//! - Errors are [`Status`] values. Give failures a kind with [`Error`]
//!   (`Error::not_found(..)`, `.context(..)`), which turns into the right
//!   `Status` with `?`; an error type of your own wraps it and converts
//!   through it. Check a failure's [`Error::kind`], never its message.
//! - The namespace of a call is [`Call::namespace`].
//! - Log with `tracing` (re-exported as `crated_plugin_api::tracing`): the
//!   SDK routes the events into the daemon's log ([`logging`]).
//! - Dependencies (the types in `requires`) are called in process through
//!   [`InitCtx::host`].

pub mod abi;
#[cfg(feature = "archive")]
pub mod archive;
#[cfg(feature = "content")]
pub mod content;
pub mod duration;
pub mod errdefs;
pub mod filters;
pub mod gc;
#[cfg(feature = "proxy-server")]
pub mod grpc;
pub mod host;
#[cfg(feature = "content")]
pub mod lease;
pub mod logging;
pub mod metrics;
#[cfg(feature = "mount")]
pub mod mount;
pub mod paths;
pub mod plugin;
#[cfg(feature = "proxy-server")]
pub mod proxy;
pub mod runtime;
pub mod service;
#[cfg(feature = "snapshots")]
pub mod snapshots;
pub mod status;
pub mod stream;
pub mod types;
pub mod validate;

pub use abi_stable;
pub use errdefs::{Error, ErrorKind};
pub use host::{Dependency, Host};
pub use plugin::{build_platform, InitCtx, Plugin, PluginError, PluginInfo};
pub use prost;
pub use service::{Call, ServiceRouter, NAMESPACE_HEADER};
pub use status::{Code, Status};
pub use stream::Streaming;
pub use tracing;

/// The version of this crate, recorded in every library built against it.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn exported_loader_symbol_is_the_one_abi_stable_looks_for() {
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, "_1as_0lib_1header_0root_bmodule_bloader");
    }
}
