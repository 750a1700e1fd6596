//! A real registry for pull and push tests: Debian's `docker-registry`
//! (distribution 2.x) on 127.0.0.1, on a free port, with a temporary
//! storage directory and an optional htpasswd user; and [`FaultProxy`], an
//! HTTP proxy in front of it that injects the failures clients must
//! handle (5xx, 404, a bearer-token challenge with its own token endpoint,
//! a connection cut in the middle of a blob).
//!
//! The registry is stopped by its pid on drop; the proxy runs on a thread
//! of its own and stops on drop.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Where Debian installs the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Why the fixture could not start.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{REGISTRY_BIN} is missing: run scripts/install-deps.sh (package docker-registry)")]
    Missing,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("hashing the htpasswd password: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("the registry did not answer GET /v2/ on {addr} within 20 s; its log:\n{log}")]
    NotReady { addr: SocketAddr, log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FixtureError {
    let what = what.into();
    move |source| FixtureError::Io { what, source }
}

/// A free port on 127.0.0.1 (free when asked; the registry binds it next).
fn free_port() -> Result<u16, FixtureError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("local address"))?.port())
}

/// Whether something at `addr` answers `GET /v2/` with an HTTP status line.
fn answers_v2(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

/// A running `docker-registry`.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry.
    pub fn start() -> Result<Registry, FixtureError> {
        Registry::start_with(None)
    }

    /// A registry that wants basic auth as `user`/`password` (htpasswd,
    /// bcrypt-hashed here).
    pub fn start_with_user(user: &str, password: &str) -> Result<Registry, FixtureError> {
        Registry::start_with(Some((user, password)))
    }

    fn start_with(user: Option<(&str, &str)>) -> Result<Registry, FixtureError> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(FixtureError::Missing);
        }
        let dir = tempfile::Builder::new().prefix("crated-registry-").tempdir().map_err(io("temporary directory"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = user {
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 4)?;
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).map_err(io("writing htpasswd"))?;
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: crated-test\n    path: {}\n", htpasswd.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(io("writing the registry config"))?;
        let log = std::fs::File::create(dir.path().join("log")).map_err(io("creating the registry log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("log"))?)
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {REGISTRY_BIN}")))?;
        let mut registry = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers_v2(addr) {
            let exited = registry.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(registry.dir.path().join("log")).unwrap_or_default();
                return Err(FixtureError::NotReady { addr, log });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the host part of references to this registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The failures [`FaultProxy`] injects; change them at any time through
/// [`FaultProxy::faults`].
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer this many of the next requests with 500.
    pub fail_next: u32,
    /// Answer this many of the next requests with 404.
    pub not_found_next: u32,
    /// Demand `Authorization: Bearer <token>`: without it, 401 with a
    /// `Bearer realm="http://<proxy>/token",service="crated-test"`
    /// challenge. The proxy serves the realm itself and hands out the token
    /// to anyone, or only to the basic-auth user of `token_user` if set.
    pub bearer_token: Option<String>,
    pub token_user: Option<(String, String)>,
    /// Cut the connection after this many bytes of the next `cut_times`
    /// blob bodies.
    pub cut_blob_after: Option<u64>,
    pub cut_times: u32,
    /// Cut only blobs whose path holds this (a digest); any blob if `None`.
    pub cut_only: Option<String>,
}

/// An HTTP proxy in front of a registry that injects [`Faults`] and logs
/// every request (`"<METHOD> <path>"`, and the `Range` headers apart).
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    log: Arc<Mutex<Vec<String>>>,
    ranges: Arc<Mutex<Vec<(String, String)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ProxyState {
    upstream: SocketAddr,
    own: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    log: Arc<Mutex<Vec<String>>>,
    ranges: Arc<Mutex<Vec<(String, String)>>>,
}

type ProxyBody = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed()).expect("a valid response")
}

impl FaultProxy {
    /// A proxy to `upstream` on a free port of 127.0.0.1.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy, FixtureError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding the proxy"))?;
        listener.set_nonblocking(true).map_err(io("proxy socket"))?;
        let addr = listener.local_addr().map_err(io("proxy address"))?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(ProxyState {
            upstream,
            own: addr,
            faults: faults.clone(),
            log: log.clone(),
            ranges: ranges.clone(),
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io("proxy runtime"))?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let state = state.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    let state = state.clone();
                                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Ok(FaultProxy { addr, faults, log, ranges, stop: Some(stop), thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The faults to inject, to change.
    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }

    /// Every request so far, as `"<METHOD> <path>"`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The requests that carried a `Range` header, as (path, header value):
    /// how a client resumes a download.
    pub fn ranges(&self) -> Vec<(String, String)> {
        self.ranges.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one request gets: a fault, the token, or the upstream's answer.
async fn handle(state: &ProxyState, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    state.log.lock().unwrap().push(format!("{} {}", req.method(), path));
    if let Some(range) = req.headers().get(hyper::header::RANGE).and_then(|v| v.to_str().ok()) {
        state.ranges.lock().unwrap().push((path.clone(), range.to_string()));
    }
    let cut_after;
    {
        let mut f = state.faults.lock().unwrap();
        if f.fail_next > 0 {
            f.fail_next -= 1;
            return full(StatusCode::INTERNAL_SERVER_ERROR, &[], "injected failure\n");
        }
        if f.not_found_next > 0 {
            f.not_found_next -= 1;
            return full(StatusCode::NOT_FOUND, &[], "injected not found\n");
        }
        if let Some(token) = f.bearer_token.clone() {
            if path == "/token" {
                let authorized = match &f.token_user {
                    None => true,
                    Some((u, p)) => req
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v == basic_header(u, p)),
                };
                return if authorized {
                    let body = format!("{{\"token\":\"{token}\",\"access_token\":\"{token}\",\"expires_in\":300}}");
                    full(StatusCode::OK, &[("content-type", "application/json".into())], body)
                } else {
                    full(StatusCode::UNAUTHORIZED, &[], "bad credentials for the token\n")
                };
            }
            let presented = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if presented != Some(format!("Bearer {token}").as_str()) {
                let challenge = format!("Bearer realm=\"http://{}/token\",service=\"crated-test\"", state.own);
                return full(
                    StatusCode::UNAUTHORIZED,
                    &[("www-authenticate", challenge), ("content-type", "application/json".into())],
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
            }
        }
        cut_after = match f.cut_blob_after {
            Some(k)
                if f.cut_times > 0
                    && req.method() == hyper::Method::GET
                    && path.contains("/blobs/sha256:")
                    && f.cut_only.as_ref().is_none_or(|d| path.contains(d.as_str())) =>
            {
                f.cut_times -= 1;
                Some(k)
            }
            _ => None,
        };
    }
    match forward(state.upstream, req, cut_after).await {
        Ok(r) => r,
        Err(e) => full(StatusCode::BAD_GATEWAY, &[], format!("proxy: {e}\n")),
    }
}

fn basic_header(user: &str, password: &str) -> String {
    use base64_lite::encode;
    format!("Basic {}", encode(format!("{user}:{password}").as_bytes()))
}

/// Sends the request upstream (without its Authorization, which was meant
/// for the proxy) and streams the answer back, cut after `cut_after` bytes
/// if asked (the connection then breaks: hyper cannot finish the body).
async fn forward(
    upstream: SocketAddr,
    mut req: Request<Incoming>,
    cut_after: Option<u64>,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>> {
    req.headers_mut().remove(hyper::header::AUTHORIZATION);
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(req).await?;
    let (parts, body) = response.into_parts();
    let body: ProxyBody = match cut_after {
        None => body.map_err(std::io::Error::other).boxed(),
        Some(limit) => {
            let mut sent = 0u64;
            let frames = body.into_data_stream().map(move |chunk| {
                let chunk = chunk.map_err(std::io::Error::other)?;
                if sent >= limit {
                    return Err(std::io::Error::other("cut by the fault proxy"));
                }
                let take = (limit - sent).min(chunk.len() as u64) as usize;
                sent += take as u64;
                Ok(Frame::data(chunk.slice(..take)))
            });
            // After the limit, one more error ends the body early.
            let frames =
                frames.chain(futures::stream::once(async { Err(std::io::Error::other("cut by the fault proxy")) }));
            let mut done = false;
            let frames = frames.take_while(move |f| {
                let keep = !done;
                done = done || f.is_err();
                futures::future::ready(keep)
            });
            BodyExt::boxed(StreamBody::new(frames))
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// Just enough base64 for a Basic header, to need no crate for it.
mod base64_lite {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
