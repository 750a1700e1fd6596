//! `io.containerd.gc.v1.scheduler`: decides when the metadata store's
//! garbage collector runs, as containerd's GC scheduler does. The
//! collector itself lives in the metadata plugin and is reached through
//! its internal `crated.gc.v1.Collector` service
//! ([`crated_plugin_api::gc`]); this plugin serves nothing.
//!
//! The policy is a plain library module ([`policy`]) driven by the task in
//! [`scheduler`]; [`config`] reads containerd's keys. This file only
//! registers the plugin.

pub mod config;
pub mod policy;
pub mod scheduler;

use std::sync::Arc;

use crated_plugin_api::{tracing, types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

use crate::{config::Config, scheduler::HostCollector};

pub struct Scheduler;

impl Plugin for Scheduler {
    fn info() -> PluginInfo {
        PluginInfo::new(types::GC, "scheduler").requires(&[types::METADATA]).config_defaults(config::DEFAULTS)
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let (config, unknown) = Config::from_table(&ctx.config)
            .map_err(|e| PluginError::failed(format!("invalid config for {}.{}: {e}", ctx.plugin_type, ctx.id)))?;
        for key in unknown {
            tracing::warn!("ignoring unknown config key `{key}` of {}", types::key(&ctx.plugin_type, &ctx.id));
        }
        let metadata = ctx
            .host
            .dependencies_of_type(types::METADATA)
            .into_iter()
            .next()
            .ok_or_else(|| PluginError::failed("no metadata plugin is running"))?;
        let collector = HostCollector(ctx.host.to(&metadata.key()));
        // The task runs on this library's runtime until shutdown; it ends by
        // itself only when the metadata plugin has no collector.
        let task = Arc::new(tokio::spawn(scheduler::run(collector, config)));
        Ok(ServiceRouter::new().on_shutdown(move || {
            let task = task.clone();
            async move { task.abort() }
        }))
    }
}
