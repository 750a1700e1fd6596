//! Plain HTTP/1.1 endpoints beside the gRPC socket: the debug socket
//! (`[debug] address`, pprof, see `debug.rs`) and the metrics endpoint
//! (`[metrics] address`). Both are off unless configured, as in containerd,
//! so a daemon that does not use them pays nothing for them at start.
//!
//! Responses are whole bodies: every endpoint here produces a document of
//! a few kilobytes to a few megabytes (a profile, a scrape), and Go's
//! clients (the stock `ctr pprof`, Prometheus) read them whole anyway.

use std::{convert::Infallible, future::Future, path::Path, sync::Arc};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinHandle,
};

use crate::server::{self, SocketError};

pub type HttpResponse = Response<Full<Bytes>>;

/// What answers one endpoint's requests.
pub type HttpHandler = Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, HttpResponse> + Send + Sync>;

/// A bound endpoint.
pub enum HttpListener {
    Unix(UnixListener, std::path::PathBuf),
    Tcp(TcpListener),
}

impl HttpListener {
    /// Binds `address` as containerd does: an absolute path is a unix socket
    /// (mode 0660, owned by `uid:gid`, a stale one replaced, a live one
    /// refused), anything else is `host:port` over TCP.
    pub async fn bind(address: &str, uid: u32, gid: u32) -> Result<Self, SocketError> {
        let path = Path::new(address);
        if path.is_absolute() {
            return Ok(HttpListener::Unix(server::bind(path, uid, gid)?, path.to_path_buf()));
        }
        let tcp =
            TcpListener::bind(address).await.map_err(|source| SocketError::Io { path: address.into(), source })?;
        Ok(HttpListener::Tcp(tcp))
    }

    /// Serves HTTP/1.1 until `shutdown` resolves, each connection on its own
    /// task; a unix socket is removed afterwards.
    pub async fn serve(self, handler: HttpHandler, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let stream: Box<dyn IoStream> = tokio::select! {
                _ = &mut shutdown => break,
                accepted = accept(&self) => match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("http endpoint: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let handler = handler.clone();
            connections.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                if let Err(e) =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
                {
                    tracing::debug!("http connection ended: {e}");
                }
            });
        }
        connections.shutdown().await;
        if let HttpListener::Unix(_, path) = &self {
            let _ = std::fs::remove_file(path);
        }
    }
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> IoStream for T {}

async fn accept(listener: &HttpListener) -> std::io::Result<Box<dyn IoStream>> {
    Ok(match listener {
        HttpListener::Unix(l, _) => Box::new(l.accept().await?.0),
        HttpListener::Tcp(l) => Box::new(l.accept().await?.0),
    })
}

/// A response with a body and content type.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    respond(status, "text/plain; charset=utf-8", body)
}

/// The value of query parameter `name`, if present (no percent-decoding:
/// every parameter here is a number or a word).
pub fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The HTTP endpoints a daemon runs; all stop together.
pub struct Endpoints {
    stop: watch::Sender<bool>,
    running: Vec<JoinHandle<()>>,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints { stop: watch::channel(false).0, running: Vec::new() }
    }
}

impl Endpoints {
    /// Serves `handler` on `listener` until [`Endpoints::stop`].
    pub fn start(&mut self, listener: HttpListener, handler: HttpHandler) {
        let mut stop = self.stop.subscribe();
        self.running.push(tokio::spawn(listener.serve(handler, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for r in self.running {
            let _ = r.await;
        }
    }
}
