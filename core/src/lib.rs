//! The crated core: config, loader, dependency graph, router and
//! introspection. Everything that does container work is a plugin; the core
//! only finds plugins, starts them in order and routes calls to them.

pub mod config;
pub mod daemon;
pub mod debug;
pub mod graph;
pub mod grpc_metrics;
pub mod http;
pub mod introspection;
pub mod isolation;
pub mod lane;
pub mod loader;
pub mod malloc;
pub mod metrics;
pub mod oci_hook;
pub mod plugin_host;
pub mod plugin_watch;
pub mod plugins;
pub mod proxy;
pub mod publish;
pub mod router;
pub mod sd_notify;
pub mod server;
pub mod threads;
