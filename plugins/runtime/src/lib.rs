//! containerd's task runtime, as two plugins of one library that share one
//! shim manager:
//!
//! - `io.containerd.runtime.v2.task` ([`manager`]): starts a shim v2 binary
//!   per task ([`binary`]) in a bundle ([`bundle`]), talks ttrpc to it
//!   (`crated-shim-protocol`), reconnects to the shims an earlier daemon
//!   left, cleans up after shims that die, and serves the daemon's ttrpc
//!   socket that shims publish events to ([`events`]); it serves its tasks'
//!   cgroup metrics to the daemon's metrics endpoint as containerd's
//!   cgroups monitor names them ([`metrics`], the internal
//!   `crated.metrics.v1.Metrics`).
//! - `io.containerd.grpc.v1.tasks` ([`service`]): containerd's Tasks service
//!   on the socket, over the manager; task checkpoints go to and come from
//!   the content store as tars ([`checkpoint`]).
//! - `io.containerd.service.v1.tasks-service`: the same Tasks service,
//!   served to dependents only (containerd 1.6's `tasks-service`, which its
//!   CRI plugin requires by the service type). The CRI plugin is itself a
//!   gRPC-type plugin, so it cannot require the socket's Tasks plugin by
//!   type without requiring itself.
//!
//! The request path: client -> socket -> Tasks (this library) -> shim over
//! ttrpc -> runc; events come back from the shim through the ttrpc socket
//! into the events plugin.

pub mod binary;
pub mod bundle;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod events;
pub mod manager;
pub mod metrics;
pub mod service;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crated_plugin_api::{types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

use crate::manager::{ManagerSettings, ShimManager};

/// The manager the runtime plugin made, for the tasks plugin of the same
/// library (which requires it, so it is initialised after it).
static MANAGER: Mutex<Option<Arc<ShimManager>>> = Mutex::new(None);

/// The shim manager.
pub struct RuntimeTask;

/// An address made absolute: shims run in their bundle directory.
fn absolute(address: &str) -> String {
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    if path.is_absolute() || address.is_empty() {
        return path.display().to_string();
    }
    std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| PathBuf::from(path)).display().to_string()
}

impl Plugin for RuntimeTask {
    fn info() -> PluginInfo {
        PluginInfo::new(types::RUNTIME, "task")
            .requires(&[types::METADATA, types::EVENT])
            .config_defaults("platforms = [\"linux/amd64\"]\nsched_core = false\n")
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let config: config::Config = ctx.config()?;
        config.validate().map_err(|e| PluginError::failed(format!("invalid config: {e}")))?;
        let grpc_address = absolute(&ctx.grpc_address);
        let ttrpc_address =
            if ctx.ttrpc_address.is_empty() { format!("{grpc_address}.ttrpc") } else { absolute(&ctx.ttrpc_address) };
        let server = events::serve(Path::new(&ttrpc_address), ctx.host.clone())
            .await
            .map_err(|e| PluginError::failed(format!("ttrpc socket: {e}")))?
            .abort_handle();
        let manager = Arc::new(ShimManager::new(ManagerSettings {
            root: ctx.root.clone(),
            state: ctx.state.clone(),
            grpc_address,
            ttrpc_address: ttrpc_address.clone(),
            debug: matches!(ctx.log_level.as_str(), "debug" | "trace"),
            config,
            host: ctx.host.clone(),
        }));
        manager.load().await;
        *MANAGER.lock().expect("manager") = Some(manager.clone());
        let router = ServiceRouter::new().internal(crated_plugin_api::metrics::SERVICE).unary(
            crated_plugin_api::metrics::COLLECT,
            move |_call, req| {
                let manager = manager.clone();
                async move { Ok::<_, crated_plugin_api::Status>(metrics::collect(manager, req).await) }
            },
        );
        Ok(router.on_shutdown(move || {
            // Shims keep running, as containerd leaves them; the next daemon
            // reconnects.
            server.abort();
            let _ = std::fs::remove_file(&ttrpc_address);
            async {}
        }))
    }
}

/// The Tasks service over the manager the runtime plugin made.
fn tasks_router(ctx: &InitCtx) -> Result<ServiceRouter, PluginError> {
    let manager = MANAGER
        .lock()
        .expect("manager")
        .clone()
        .ok_or_else(|| PluginError::failed("the shim manager io.containerd.runtime.v2.task is not running"))?;
    Ok(service::router(service::TasksService::new(ctx.host.clone(), manager)))
}

/// The Tasks service.
pub struct Tasks;

impl Plugin for Tasks {
    fn info() -> PluginInfo {
        PluginInfo::new(types::GRPC, "tasks").requires(&[types::RUNTIME, types::METADATA, types::EVENT])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        tasks_router(&ctx)
    }
}

/// The Tasks service for other plugins, off the socket: containerd 1.6's
/// `io.containerd.service.v1.tasks-service`, which its gRPC Tasks plugin and
/// its CRI plugin both require. Here the gRPC plugin keeps its own handler
/// (both sit on the one shim manager), so this one only adds a way in for
/// plugins of the gRPC type, the CRI first.
pub struct TasksInternal;

impl Plugin for TasksInternal {
    fn info() -> PluginInfo {
        PluginInfo::new(types::SERVICE, "tasks-service").requires(&[types::RUNTIME, types::METADATA, types::EVENT])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(tasks_router(&ctx)?.internal(service::SERVICE))
    }
}
