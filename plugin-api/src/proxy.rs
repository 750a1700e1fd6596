//! Serving a [`ServiceRouter`] on its own unix socket, as a proxy plugin:
//! what containerd's `[proxy_plugins]` (and crated's) connect to. The same
//! router a plugin returns from `init` (a snapshotter's
//! [`crate::snapshots::router`], say) is served here over gRPC, so one crate
//! can ship both as a `.so` and as a standalone binary.
//!
//! ```ignore
//! fn main() -> Result<(), crated_plugin_api::proxy::ServeError> {
//!     let router = crated_plugin_api::snapshots::router(MySnapshotter::open("/var/lib/mine")?);
//!     crated_plugin_api::proxy::run(router, "/run/mine.sock")
//! }
//! ```
//!
//! Every service of the router is served, including those it marks
//! internal (a snapshotter's Snapshots API): on its own socket there is no
//! daemon socket to keep them off. Handlers run as they do in a `.so`: on
//! the SDK's runtime ([`crate::runtime`]).

use std::{collections::HashMap, convert::Infallible, future::Future, path::Path, sync::Arc};

use abi_stable::std_types::{RErr, ROk, RVec};
use futures::{future::BoxFuture, FutureExt};

use crate::{
    abi::{ByteStream, CallHead, CallKind, Handler},
    grpc::{self, Backend, Limits, SocketError},
    ServiceRouter, Status,
};

/// Why a proxy server stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl Backend for ServiceRouter {
    fn unary(&self, head: CallHead, body: RVec<u8>) -> BoxFuture<'_, Result<RVec<u8>, Status>> {
        Handler::unary(self, head, body)
            .map(|r| match r {
                ROk(v) => Ok(v),
                RErr(s) => Err(s.into()),
            })
            .boxed()
    }

    fn streaming(&self, head: CallHead, input: ByteStream) -> BoxFuture<'_, Result<ByteStream, Status>> {
        Handler::streaming(self, head, input)
            .map(|r| match r {
                ROk(v) => Ok(v),
                RErr(s) => Err(s.into()),
            })
            .boxed()
    }
}

/// The HTTP/2 service of a proxy server.
#[derive(Clone)]
struct ProxyService {
    router: Arc<ServiceRouter>,
    kinds: Arc<HashMap<String, CallKind>>,
    limits: Limits,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for ProxyService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let service = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default();
        if !self.router.services().iter().chain(&self.router.internal_services()).any(|s| s == service) {
            let e = tonic::Status::unimplemented(format!("unknown service {service}"));
            return futures::future::ready(Ok(e.into_http())).boxed();
        }
        let kind = self.kinds.get(req.uri().path()).copied().unwrap_or(CallKind::Unary);
        grpc::dispatch(self.router.clone(), kind, req, self.limits).map(Ok).boxed()
    }
}

/// Serves `router` on the unix socket `path` until `shutdown` resolves,
/// then runs the router's shutdown hook and removes the socket. A stale
/// socket file is replaced; one a live server answers on is refused.
pub async fn serve_with_shutdown(
    router: ServiceRouter,
    path: impl AsRef<Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let path = path.as_ref();
    grpc::clear_stale(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(grpc::io_err(parent))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(grpc::io_err(path))?;
    let kinds = router.streaming_methods().into_iter().map(|m| (m.path.into_string(), m.kind)).collect();
    let router = Arc::new(router);
    let svc = ProxyService { router: router.clone(), kinds: Arc::new(kinds), limits: Limits::default() };
    tracing::info!(socket = %path.display(), "serving");
    grpc::serve_connections(listener, svc, shutdown).await;
    Handler::shutdown(&*router).await;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Serves `router` on `path` until SIGTERM or SIGINT.
pub async fn serve(router: ServiceRouter, path: impl AsRef<Path>) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    serve_with_shutdown(router, path, stop).await
}

/// Runs [`serve`] to completion on the SDK's runtime: a whole `main` for
/// a proxy binary that needs no runtime of its own.
pub fn run(router: ServiceRouter, path: impl AsRef<Path>) -> Result<(), ServeError> {
    crate::runtime::runtime().block_on(serve(router, path))
}
