//! `io.containerd.grpc.v1.cri`: the Kubernetes Container Runtime Interface
//! (`runtime.v1`) on the daemon's socket, as containerd 1.6's CRI plugin.
//!
//! It serves the image side, the runtime's identity, pod sandboxes and
//! containers and the stream server: [`config`] (containerd's keys and
//! defaults), [`service`] (Version, Status with CNI's readiness,
//! UpdateRuntimeConfig, the ImageService, the pod sandbox and container
//! methods and stats, Exec, Attach and PortForward; the rest answer
//! `Unimplemented` by name), [`pull`] (PullImage through the transfer
//! plugin), [`images`] (the CRI's view of the `k8s.io` image records),
//! [`reference`] (Docker reference normalisation), [`sandbox`] (pause
//! containers, their network namespaces, CNI and `/dev/shm`, their
//! records), [`container`] (container records, status files, lifecycle,
//! exit monitor, recovery after a restart, ExecSync, stats),
//! [`container_spec`] (a container's OCI spec and security context),
//! [`container_io`] (stdio FIFOs, the CRI log format, and the attach API
//! the stream server uses: [`container::Containers::attach`]), [`calls`]
//! (the calls sandboxes and containers make to dependencies) and
//! [`streaming`] (the URLs Exec, Attach and PortForward answer, served over
//! SPDY/3.1 by the `crated-spdy` library: exec runs through the Tasks
//! service, attach joins the container's stdio, port-forward dials inside
//! the pod's network namespace).
//!
//! Everything goes through the plugin's dependencies in process: image
//! records and snapshots through the metadata plugin, blobs through its
//! namespaced Content service, pulls through the transfer plugin, with
//! credentials on a stream of the streaming plugin, tasks through the
//! internal Tasks service (`io.containerd.service.v1.tasks-service`).

pub mod calls;
pub mod config;
pub mod container;
pub mod container_io;
pub mod container_spec;
pub mod images;
pub mod pull;
pub mod reference;
pub mod sandbox;
pub mod service;
pub mod streaming;
pub mod volumes;

use std::{path::PathBuf, sync::Arc};

use crated_cni::Cni;
use crated_plugin_api::{types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

/// The CRI plugin.
pub struct Cri;

impl Plugin for Cri {
    fn info() -> PluginInfo {
        // containerd's CRI reaches images, content, snapshots, leases,
        // tasks and events through its client; here they are dependencies
        // called in process. Leases are the metadata plugin's (a lease
        // plugin type orders first when one exists). Tasks come from the
        // internal service type (containerd's `tasks-service`): the Tasks
        // plugin on the socket has this plugin's own type, which it cannot
        // require without requiring itself. Optional, so that the image
        // side works without a runtime; pods then fail naming the plugin.
        PluginInfo::new(types::GRPC, "cri")
            .requires(&[
                types::METADATA,
                types::CONTENT,
                types::SNAPSHOTTER,
                types::TRANSFER,
                types::STREAMING,
                types::EVENT,
            ])
            .requires_optional(&[types::LEASE, types::RUNTIME, types::SERVICE, types::DIFF])
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
        let cni = Arc::new(load_cni(&parsed.config.cni, &ctx.state).await);
        let (address, port) = (parsed.config.stream_server_address.clone(), parsed.config.stream_server_port.clone());
        let idle = parsed.config.stream_idle_timeout.clone();
        let svc = service::CriService::new(ctx.host.clone(), parsed.config, image_fs, cni, &ctx.root, &ctx.state)
            .with_endpoint(&ctx.grpc_address);
        // Containers come back from their records and live tasks in the
        // background (every container call waits for it), so that exit
        // monitors and logs resume without waiting for a first call.
        let containers = svc.containers().clone();
        crated_plugin_api::runtime::runtime().spawn({
            let containers = containers.clone();
            async move {
                if let Err(s) = containers.recover().await {
                    crated_plugin_api::tracing::warn!("failed to recover CRI containers: {}", s.message);
                }
            }
        });
        // Bound before init returns: Exec answers URLs on it.
        let runtime = streaming::backend::CriRuntime::new(
            ctx.host.clone(),
            svc.sandboxes().clone(),
            &ctx.state,
            Arc::new(containers),
        );
        let idle = streaming::parse_go_duration(&idle).map_err(PluginError::failed)?;
        let server = streaming::StreamServer::start(&address, &port, idle, Arc::new(runtime))
            .await
            .map_err(|e| PluginError::failed(format!("failed to start the stream server: {e}")))?;
        crated_plugin_api::tracing::info!("CRI stream server listening on {}", server.addr);
        Ok(service::router(svc.with_streaming(server)))
    }
}

/// CNI from the config's `cni` table, its results cache under the plugin's
/// state dir. Kept when the conf dir has no network yet: Status reports
/// that and loads again, as containerd's CRI retries.
async fn load_cni(config: &config::CniConfig, state: &std::path::Path) -> Cni {
    let cni = Cni::new(crated_cni::CniConfig {
        bin_dirs: vec![PathBuf::from(&config.bin_dir)],
        conf_dir: PathBuf::from(&config.conf_dir),
        max_conf_num: usize::try_from(config.max_conf_num).unwrap_or(0),
        cache_dir: state.join("cni-cache"),
    });
    if let Err(e) = cni.reload().await {
        crated_plugin_api::tracing::warn!("failed to load cni during init, please check CRI plugin status: {e}");
    }
    cni
}
