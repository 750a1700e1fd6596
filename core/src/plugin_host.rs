//! `crated plugin-host`: the process an isolated plugin runs in (the
//! daemon's side is [`crate::isolation`]).
//!
//! It reads one [`HostSpec`] line on stdin, loads the library through the
//! same checks as the daemon's loader, initialises the one plugin (under the
//! same init timeout), serves its services, internal ones included, on the
//! socket the daemon named, and answers with one [`HostReply`] line on
//! stdout. The plugin's calls to its dependencies go back to the daemon over
//! the dependency socket. It stops when its stdin closes (the daemon
//! stopped it, or died) or on SIGTERM/SIGINT, running the plugin's shutdown
//! within the shutdown timeout, and then exits whatever the plugin's
//! threads are doing.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, Write},
    sync::Arc,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RErr, ROk, RResult, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use crated_plugin_api::abi::{
    ByteStream, CallHead, InitContext, InitErrorKind, PluginRef, RpcStatus, ServiceHost, ServiceHost_TO,
};
use tokio::io::AsyncReadExt;

use crate::{
    isolation::{HostReply, HostSpec, Ready, StreamKind, TARGET_HEADER},
    lane::Lane,
    loader,
    plugins::{plugin_log, run_init, shutdown_route},
    proxy::Proxy,
    router::{to_rresult, GrpcRouter, LiveRoutes, PluginTarget, Route, RouteTable, Target},
};

/// Why the host could not serve.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read the plugin host's spec from stdin: {0}")]
    Spec(String),
    #[error("cannot start the plugin host's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The plugin's dependencies, reached through the daemon.
struct RemoteHost {
    daemon: Arc<Proxy>,
    dependencies: Vec<PluginRef>,
}

/// Names the callee in a header: the socket carries no `CallHead::target`.
fn with_target(mut call: CallHead) -> CallHead {
    if !call.target.is_empty() {
        let target = std::mem::take(&mut call.target);
        call.headers.push((TARGET_HEADER.into(), target).into());
    }
    call
}

impl ServiceHost for RemoteHost {
    fn unary(&self, call: CallHead, body: RVec<u8>) -> FfiFuture<RResult<RVec<u8>, RpcStatus>> {
        let daemon = self.daemon.clone();
        async move { to_rresult(daemon.unary(with_target(call), body).await) }.into_ffi()
    }

    fn streaming(&self, call: CallHead, input: ByteStream) -> FfiFuture<RResult<ByteStream, RpcStatus>> {
        let daemon = self.daemon.clone();
        async move { to_rresult(daemon.streaming(with_target(call), input).await) }.into_ffi()
    }

    fn dependencies(&self) -> RVec<PluginRef> {
        self.dependencies.clone().into()
    }
}

fn reply(r: &HostReply) {
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"Failed\":\"cannot encode the reply: {e}\"}}"));
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the host to its end; the process exits with what this returns.
pub fn run() -> Result<(), HostError> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| HostError::Spec(e.to_string()))?;
    let spec: HostSpec = serde_json::from_str(&line).map_err(|e| HostError::Spec(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(HostError::Runtime)?;
    runtime.block_on(serve(spec));
    // The plugin's own threads may be stuck; the process ends anyway.
    std::process::exit(0)
}

async fn serve(spec: HostSpec) {
    let key = spec.key();
    let lib = match tokio::task::spawn_blocking({
        let path = spec.library.clone();
        move || loader::load(&path)
    })
    .await
    {
        Ok(Ok(lib)) => lib,
        Ok(Err(m)) => return reply(&HostReply::Failed(format!("{}: {m}", spec.library.display()))),
        Err(e) => return reply(&HostReply::Failed(format!("loading the library failed: {e}"))),
    };
    let Some(reg) = lib.registrations.into_iter().find(|r| r.plugin_type == *spec.plugin_type && r.id == *spec.id)
    else {
        return reply(&HostReply::Failed(format!("{} no longer registers {key}", spec.library.display())));
    };
    let daemon = Arc::new(Proxy::labelled("daemon for", &key, &spec.dependency_socket.display().to_string()));
    let remote = RemoteHost { daemon, dependencies: spec.dependencies.iter().map(PluginRef::from).collect() };
    let ctx = InitContext {
        plugin_type: spec.plugin_type.as_str().into(),
        id: spec.id.as_str().into(),
        config_toml: spec.config_toml.as_str().into(),
        root: spec.root.as_str().into(),
        state: spec.state.as_str().into(),
        grpc_address: spec.grpc_address.as_str().into(),
        ttrpc_address: spec.ttrpc_address.as_str().into(),
        log_level: spec.log_level.as_str().into(),
        host: ServiceHost_TO::from_ptr(RArc::new(remote), TD_Opaque),
        log: plugin_log,
    };
    let instance = match run_init(reg.init, ctx, spec.init_timeout).await {
        Ok(ROk(inst)) => inst,
        Ok(RErr(e)) => {
            return reply(&match e.kind {
                InitErrorKind::Skip => HostReply::Skipped(e.message.into_string()),
                InitErrorKind::Failed => HostReply::Failed(e.message.into_string()),
            })
        }
        Err(m) => return reply(&HostReply::Failed(m)),
    };

    let lane = Arc::new(Lane::new(&spec.id));
    let ready = Ready {
        services: instance.services.iter().map(|s| s.to_string()).collect(),
        internal: instance.internal.iter().map(|s| s.to_string()).collect(),
        exports: instance.exports.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect(),
        streaming: instance.streaming.iter().map(|m| (m.path.to_string(), StreamKind::from(m.kind))).collect(),
    };
    let all: Vec<String> = ready.services.iter().chain(&ready.internal).cloned().collect();
    let route = Arc::new(Route {
        owner: key.clone(),
        target: Target::Plugin(PluginTarget { handler: Arc::new(instance.handler), lane }),
        streaming: instance.streaming.iter().map(|m| (m.path.to_string(), m.kind)).collect::<HashMap<_, _>>(),
        services: all.iter().cloned().collect(),
        stats: crate::metrics::PluginStats::new(&spec.plugin_type, &spec.id),
    });
    let mut table = RouteTable::default();
    if let Err(e) = table.insert(&all, route.clone(), &HashSet::new()) {
        return reply(&HostReply::Failed(e));
    }
    let listener = match bind(&spec.listen) {
        Ok(l) => l,
        Err(e) => return reply(&HostReply::Failed(e)),
    };
    reply(&HostReply::Ready(ready));

    let router =
        GrpcRouter::new(Arc::new(LiveRoutes::new(table)), spec.max_recv_message_size, spec.max_send_message_size);
    crated_plugin_api::grpc::serve_connections(listener, router, stopped()).await;
    shutdown_route(&key, &route, spec.shutdown_timeout).await;
    let _ = std::fs::remove_file(&spec.listen);
}

fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    crated_plugin_api::grpc::clear_stale(path).map_err(|e| e.to_string())?;
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    Ok(listener)
}

/// Resolves when the daemon closes our stdin, or on SIGTERM or SIGINT.
async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let eof = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return eof.await;
    };
    tokio::select! {
        _ = eof => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
