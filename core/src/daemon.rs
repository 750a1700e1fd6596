//! One run of the daemon: config in, plugins up, socket served, plugins
//! down. `main` is a thin command line over [`run`].

use std::{path::Path, sync::Arc};

use crate::{
    config::Config,
    debug,
    http::{Endpoints, HttpListener},
    introspection::{core_services, server_uuid, Records},
    loader, metrics, plugin_watch,
    plugins::{self, StartError},
    router::GrpcRouter,
    sd_notify,
    server::{self, SocketError},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid proxy plugin {name:?}: {reason}")]
    ProxyPlugin { name: String, reason: String },
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Config(#[from] crate::config::ValueError),
    #[error("cannot serve the metrics endpoint ([metrics] address = {address:?}): {source}")]
    Metrics { address: String, source: SocketError },
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
}

/// Checks the `[proxy_plugins]` tables before anything starts (`plugins.rs`
/// starts them).
pub fn validate_proxy_plugins(config: &Config) -> Result<(), DaemonError> {
    for (name, p) in &config.proxy_plugins {
        let bad = |reason: &str| DaemonError::ProxyPlugin { name: name.clone(), reason: reason.into() };
        if p.r#type.is_empty() {
            return Err(bad("`type` is required (e.g. \"snapshot\" or \"content\")"));
        }
        if !matches!(p.r#type.as_str(), "snapshot" | "content" | "sandbox" | "diff") {
            return Err(bad("`type` must be one of snapshot, content, sandbox, diff"));
        }
        if p.address.is_empty() {
            return Err(bad("`address` is required"));
        }
    }
    Ok(())
}

/// The directory plugins are loaded from.
pub fn plugin_dir(config: &Config) -> Option<&Path> {
    (!config.plugin_dir.is_empty()).then(|| Path::new(&config.plugin_dir))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    // Installed before anything else: a SIGTERM that arrives while plugins
    // start, or just after the socket is bound, must still stop the daemon
    // cleanly instead of killing it with the default action.
    let shutdown = shutdown_signal();
    validate_proxy_plugins(&config)?;
    config.plugin_timeouts()?;
    config.check_isolation()?;
    let address = Path::new(&config.grpc.address).to_path_buf();
    // Refuse a live socket before doing any work.
    server::clear_stale(&address)?;
    for (what, dir) in [("root", &config.root), ("state", &config.state)] {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::Io { what, path: dir.clone(), source })?;
    }
    let uuid = server_uuid(&config.root).map_err(|source| DaemonError::Io {
        what: "server uuid under",
        path: config.root.clone(),
        source,
    })?;

    // Before the scan: see plugin_watch.rs.
    let watch = plugin_watch::watch(&config);
    let dir = plugin_dir(&config).map(Path::to_path_buf);
    let scan = match dir {
        Some(dir) => tokio::task::spawn_blocking(move || loader::scan(&dir)).await.unwrap_or_default(),
        None => {
            tracing::warn!("no plugin_dir configured: only the core's services are served");
            loader::Scan::default()
        }
    };
    let records: Records = Arc::default();
    let set = plugins::start(&config, scan, core_services(records.clone(), uuid), records).await?;

    // The HTTP endpoints are bound before the gRPC socket: a client (or
    // systemd, or a test) that sees the socket may expect them to be there.
    // The socket's gRPC metrics exist only when the endpoint is configured.
    let (registry, grpc_metrics) = match config.metrics.address.is_empty() {
        true => (None, None),
        false => {
            let (r, m) = metrics::grpc_registry(config.metrics.grpc_histogram);
            (Some(r), Some(m))
        }
    };
    let endpoints = match start_endpoints(&config, &set, registry).await {
        Ok(e) => e,
        Err(e) => {
            set.shutdown().await;
            return Err(e);
        }
    };
    let listener = match server::bind(&address, config.grpc.uid, config.grpc.gid) {
        Ok(l) => l,
        Err(e) => {
            endpoints.stop().await;
            set.shutdown().await;
            return Err(e.into());
        }
    };
    let routes = set.routes.clone();
    let config = Arc::new(config);
    let set = Arc::new(tokio::sync::Mutex::new(set));
    let watch = watch.map(|w| plugin_watch::start(config.clone(), set.clone(), w));
    tracing::info!(address = %address.display(), "serving");
    // Connections queue from bind on, so systemd may start dependents now.
    sd_notify::notify_logged(sd_notify::READY);
    // The inits are done: what they freed goes back to the kernel.
    tokio::task::spawn_blocking(crate::malloc::release_free_pages);
    let router = GrpcRouter::new(routes, config.grpc.max_recv_message_size, config.grpc.max_send_message_size)
        .with_metrics(grpc_metrics);
    server::serve(listener, router, shutdown).await;
    tracing::info!("shutting down");
    sd_notify::notify_logged(sd_notify::STOPPING);
    endpoints.stop().await;
    if let Some(w) = watch {
        // A library being loaded now is abandoned: its init thread, if any,
        // is left to the process's exit.
        w.abort();
        let _ = w.await;
    }
    set.lock().await.shutdown().await;
    let _ = std::fs::remove_file(&address);
    Ok(())
}

/// The HTTP endpoints `config` asks for (none by default, as in containerd).
/// `grpc` is the registry of the socket's gRPC metrics when the metrics
/// endpoint is on.
async fn start_endpoints(
    config: &Config,
    set: &plugins::PluginSet,
    grpc: Option<prometheus_client::registry::Registry>,
) -> Result<Endpoints, DaemonError> {
    let mut endpoints = Endpoints::default();
    if !config.debug.address.is_empty() {
        let listener = HttpListener::bind(&config.debug.address, config.debug.uid, config.debug.gid).await?;
        tracing::info!(address = %config.debug.address, "serving the debug endpoint");
        endpoints.start(listener, debug::handler());
    }
    if !config.metrics.address.is_empty() {
        let address = config.metrics.address.clone();
        // containerd serves metrics over TCP; a path is a unix socket owned
        // by root, as the debug socket is when no uid is set.
        let listener = match HttpListener::bind(&address, 0, 0).await {
            Ok(l) => l,
            Err(source) => {
                endpoints.stop().await;
                return Err(DaemonError::Metrics { address, source });
            }
        };
        tracing::info!(address = %address, "serving the metrics endpoint");
        let m = metrics::Metrics::new(grpc.unwrap_or_default(), set.stats.clone(), set.metric_sources.clone());
        endpoints.start(listener, metrics::handler(std::sync::Arc::new(m)));
    }
    Ok(endpoints)
}

/// Installs the SIGTERM and SIGINT handlers now (not when first polled) and
/// returns a future that resolves when either signal has arrived.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
