//! The CRI stream server, as containerd 1.6's `pkg/cri/streaming`: the
//! Exec, Attach and PortForward RPCs cache their request under a
//! single-use token and answer a URL on this server
//! (`http://<stream_server_address>:<port>/{exec,attach,portforward}/<token>`);
//! the client (the kubelet's proxy, or kubectl through the API server)
//! upgrades an HTTP/1.1 request on that URL to SPDY/3.1, or to a
//! WebSocket ([`websocket`]), and speaks the Kubernetes remotecommand
//! ([`remotecommand`]) or portforward ([`portforward`]) protocol on its
//! streams. Both transports hand the protocol code the same
//! [`Reader`]/[`Writer`] streams ([`channel`]), and the runtime the same
//! [`StreamIo`].
//!
//! The HTTP side is small on purpose: one request per connection, read up
//! to a bounded head, answered with an error or `101 Switching Protocols`.
//! TLS streaming is not served.

pub mod backend;
pub mod cache;
pub mod channel;
pub mod portforward;
pub mod remotecommand;
pub mod websocket;

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use crated_spdy::Connection;
use futures::future::BoxFuture;
use k8s_cri::v1::{AttachRequest, ExecRequest};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
};

pub use cache::{Cache, Request};
pub use channel::{Reader, Writer};

/// `X-Stream-Protocol-Version`: what the client offers, what we choose.
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// The longest request head read before the upgrade.
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to open its streams after the upgrade
/// (the kubelet's and containerd's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("invalid stream server address {0:?}: {1}")]
    Address(String, String),
    #[error("failed to listen on {0}: {1}")]
    Listen(String, io::Error),
    #[error("invalid stream idle timeout {0:?}")]
    IdleTimeout(String),
}

/// Go's `time.ParseDuration` for what configs hold ("4h0m0s", "90s",
/// "1.5h", "300ms"); zero is `None` (no timeout), as spdystream takes it.
pub fn parse_go_duration(text: &str) -> Result<Option<Duration>, StreamingError> {
    let bad = || StreamingError::IdleTimeout(text.to_string());
    if text == "0" {
        return Ok(None);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Ok((total > 0.0).then(|| Duration::from_secs_f64(total)))
}

/// The standard input and outputs of an exec or attach, as the client
/// opened them, plus its terminal resizes.
pub struct StreamIo {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub tty: bool,
    /// (width, height) as the client's terminal changes.
    pub resize: Option<tokio::sync::mpsc::Receiver<(u16, u16)>>,
    /// Resolves when the client's connection is gone (again and again:
    /// it may be polled after it resolved, and cloned).
    pub gone: Gone,
}

/// A future resolving when the client's connection ended.
pub type Gone = futures::future::Shared<BoxFuture<'static, ()>>;

/// How an exec ended when it did not run to a zero exit.
#[derive(Debug)]
pub enum ExecError {
    /// The command ran and exited with this non-zero code.
    Exit(i32),
    /// The command could not be run (or attached to).
    Failed(String),
}

/// What the server asks of the CRI: running the cached requests.
pub trait Runtime: Send + Sync + 'static {
    fn exec(&self, req: ExecRequest, io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>>;
    fn attach(&self, req: AttachRequest, io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>>;
    /// A connection to `port` on 127.0.0.1 inside the sandbox's network.
    fn port_forward(&self, sandbox_id: String, port: u16) -> BoxFuture<'static, Result<TcpStream, String>>;
}

/// The running server: where it listens, and its request cache.
#[derive(Clone)]
pub struct StreamServer {
    pub addr: SocketAddr,
    pub cache: Arc<Cache>,
}

impl StreamServer {
    /// Binds `address:port` (port "0": a free one, as containerd picks)
    /// and serves connections on the current runtime.
    /// `idle`: a connection with no frame for this long is closed
    /// (containerd's `stream_idle_timeout`).
    pub async fn start(
        address: &str,
        port: &str,
        idle: Option<Duration>,
        runtime: Arc<dyn Runtime>,
    ) -> Result<StreamServer, StreamingError> {
        let host = if address.contains(':') && !address.starts_with('[') {
            format!("[{address}]")
        } else {
            address.to_string()
        };
        let spec = format!("{host}:{port}");
        let addr: SocketAddr =
            spec.parse().map_err(|e: std::net::AddrParseError| StreamingError::Address(spec.clone(), e.to_string()))?;
        let listener = TcpListener::bind(addr).await.map_err(|e| StreamingError::Listen(spec.clone(), e))?;
        let addr = listener.local_addr().map_err(|e| StreamingError::Listen(spec, e))?;
        let cache = Arc::new(Cache::default());
        let server = StreamServer { addr, cache: cache.clone() };
        tokio::spawn(async move {
            loop {
                let (conn, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        crated_plugin_api::tracing::warn!("stream server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (cache, runtime) = (cache.clone(), runtime.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &cache, idle, runtime).await {
                        crated_plugin_api::tracing::debug!("stream server: {e}");
                    }
                });
            }
        });
        Ok(server)
    }

    /// The URL a cached request is served at (containerd's `buildURL`).
    pub fn url(&self, method: &str, token: &str) -> String {
        format!("http://{}/{method}/{token}", self.addr)
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// Reads the request head; what follows it is kept for the upgrade.
async fn read_head(conn: &mut TcpStream) -> Result<(Head, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                };
                return Ok((head, buf[n..].to_vec()));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("malformed request: {e}")),
        }
        if buf.len() >= MAX_HEAD {
            return Err(format!("request head longer than {MAX_HEAD} bytes"));
        }
        let mut chunk = [0u8; 2048];
        let want = chunk.len().min(MAX_HEAD - buf.len());
        let n = conn.read(&mut chunk[..want]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the client closed before its request head ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(conn: &mut TcpStream, status: &str, extra: &[(&str, &str)], body: &str) {
    let mut text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len() + 1
    );
    for (n, v) in extra {
        text.push_str(&format!("{n}: {v}\r\n"));
    }
    text.push_str(&format!("\r\n{body}\n"));
    let _ = conn.write_all(text.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Serves one connection: route, token, handshake, then the protocol.
async fn serve(
    mut conn: TcpStream,
    cache: &Cache,
    idle: Option<Duration>,
    runtime: Arc<dyn Runtime>,
) -> Result<(), String> {
    let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            respond(&mut conn, "400 Bad Request", &[], &e).await;
            return Err(e);
        }
        Err(_) => return Err("timed out reading the request head".into()),
    };
    let path = head.path.split('?').next().unwrap_or_default().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let known = matches!(kind, "exec" | "attach" | "portforward") && !token.is_empty() && !token.contains('/');
    if !known || !matches!(head.method.as_str(), "GET" | "POST") {
        respond(&mut conn, "404 Not Found", &[], "404 page not found").await;
        return Err(format!("{} {}: no such route", head.method, head.path));
    }
    // The token is spent whatever happens next, as containerd's Consume.
    let request = match cache.consume(token) {
        Some(r) if r.kind() == kind => r,
        _ => {
            respond(&mut conn, "404 Not Found", &[], "404 page not found").await;
            return Err(format!("{path}: unknown or expired token"));
        }
    };
    if websocket::is_request(&head) {
        return serve_websocket(conn, &head, rest, request, idle, runtime).await;
    }
    let supported: &[&str] = match request {
        Request::PortForward(_) => portforward::PROTOCOLS,
        _ => remotecommand::PROTOCOLS,
    };
    // httpstream.Handshake: the first protocol the client offers that we
    // support; none offered is the legacy protocol ("").
    let offered: Vec<&str> = head.values(PROTOCOL_HEADER).collect();
    let protocol = if offered.is_empty() {
        ""
    } else if let Some(p) = offered.iter().find(|p| supported.contains(p)) {
        p
    } else {
        let msg = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
        );
        let accepted = supported.join(", ");
        respond(&mut conn, "403 Forbidden", &[("X-Accepted-Stream-Protocol-Versions", &accepted)], &msg).await;
        return Err(msg);
    };
    let upgrade = head.values("Connection").any(|v| v.eq_ignore_ascii_case("upgrade"))
        && head.values("Upgrade").any(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if !upgrade {
        let msg = "unable to upgrade: missing upgrade headers in request";
        respond(&mut conn, "400 Bad Request", &[], msg).await;
        return Err(msg.into());
    }
    let mut reply = String::from("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
    if !protocol.is_empty() {
        reply.push_str(&format!("{PROTOCOL_HEADER}: {protocol}\r\n"));
    }
    reply.push_str("\r\n");
    conn.write_all(reply.as_bytes()).await.map_err(|e| e.to_string())?;
    let spdy = Connection::new(
        Prefixed { prefix: rest, pos: 0, io: conn },
        crated_spdy::Config { idle_timeout: idle, ..Default::default() },
    );
    match request {
        Request::PortForward(r) => portforward::serve(spdy, r, runtime).await,
        command => {
            let opts = command_options(&command);
            remotecommand::serve(spdy, protocol, opts, move |io| run_command(&*runtime, command, io)).await
        }
    }
}

/// Serves a WebSocket upgrade request: its subprotocol, then the
/// protocol over the connection's channels.
async fn serve_websocket(
    mut conn: TcpStream,
    head: &Head,
    rest: Vec<u8>,
    request: Request,
    idle: Option<Duration>,
    runtime: Arc<dyn Runtime>,
) -> Result<(), String> {
    let query = head.path.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let (supported, readable, ports) = match &request {
        Request::PortForward(r) => match portforward::websocket_ports(r, query) {
            Ok(ports) => (websocket::PORTFORWARD_PROTOCOLS, portforward::websocket_channels(&ports), ports),
            Err(e) => {
                respond(&mut conn, "400 Bad Request", &[], &e).await;
                return Err(e);
            }
        },
        command => {
            let readable = remotecommand::websocket_channels(command_options(command)).to_vec();
            (websocket::REMOTECOMMAND_PROTOCOLS, readable, Vec::new())
        }
    };
    let protocol = websocket::accept(&mut conn, head, supported).await?;
    let ws = websocket::Connection::new(conn, rest, &protocol, &readable, idle).await;
    match request {
        Request::PortForward(r) => portforward::serve_websocket(ws, r, ports, runtime).await,
        command => {
            let opts = command_options(&command);
            remotecommand::serve_websocket(ws, opts, move |io| run_command(&*runtime, command, io)).await
        }
    }
}

/// The streams an exec or attach asked for (none for a port-forward).
fn command_options(request: &Request) -> remotecommand::Options {
    match request {
        Request::Exec(r) => remotecommand::Options { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty },
        Request::Attach(r) => remotecommand::Options { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty },
        Request::PortForward(_) => remotecommand::Options::default(),
    }
}

/// Runs a cached exec or attach on the client's streams.
fn run_command(runtime: &dyn Runtime, request: Request, io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>> {
    match request {
        Request::Exec(r) => runtime.exec(r, io),
        Request::Attach(r) => runtime.attach(r, io),
        Request::PortForward(_) => Box::pin(async { Err(ExecError::Failed("a port-forward runs no command".into())) }),
    }
}

/// A connection whose first bytes were already read (after the head).
struct Prefixed<IO> {
    prefix: Vec<u8>,
    pos: usize,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A future that resolves when the connection's reading side ended.
pub(crate) fn gone(spdy: &Connection) -> Gone {
    let closed = spdy.closed_signal();
    let fut: BoxFuture<'static, ()> = Box::pin(closed);
    futures::FutureExt::shared(fut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use crated_spdy::frame::{Decoder, Encoder, Frame, Limits, FLAG_FIN};
    use k8s_cri::v1::PortForwardRequest;

    /// Writes "hi" on stdout, echoes stdin to stdout (its first chunk
    /// only for the command "once"), writes the first terminal size;
    /// exits 2 without a terminal.
    struct Fake;

    impl Runtime for Fake {
        fn exec(&self, req: ExecRequest, mut io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>> {
            Box::pin(async move {
                let out = io.stdout.take().unwrap();
                out.write(Bytes::from_static(b"hi\n")).await.unwrap();
                if let Some(mut stdin) = io.stdin.take() {
                    while let Some(chunk) = stdin.read().await {
                        out.write(chunk).await.unwrap();
                        if req.cmd == ["once"] {
                            break;
                        }
                    }
                }
                if let Some(mut sizes) = io.resize.take() {
                    let (w, h) = sizes.recv().await.unwrap();
                    out.write(Bytes::from(format!("{w}x{h}\n"))).await.unwrap();
                }
                out.close().await.unwrap();
                if io.tty {
                    Ok(())
                } else {
                    Err(ExecError::Exit(2))
                }
            })
        }
        fn attach(&self, _req: AttachRequest, _io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>> {
            Box::pin(async { Err(ExecError::Failed("no".into())) })
        }
        fn port_forward(&self, _s: String, _p: u16) -> BoxFuture<'static, Result<TcpStream, String>> {
            Box::pin(async { Err("no".to_string()) })
        }
    }

    async fn request_on(server: &StreamServer, path: &str, headers: &str) -> (TcpStream, String) {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        (conn, String::from_utf8_lossy(&head).into_owned())
    }

    /// The next frame the server sends.
    async fn next_frame(conn: &mut TcpStream, dec: &mut Decoder, buf: &mut BytesMut) -> Frame {
        loop {
            if let Some(f) = dec.decode(buf).unwrap() {
                return f;
            }
            assert!(conn.read_buf(buf).await.unwrap() > 0, "closed early");
        }
    }

    const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n";

    fn exec_request(stdin: bool) -> Request {
        Request::Exec(ExecRequest { container_id: "c".into(), stdin, stdout: true, ..Default::default() })
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("4h0m0s").unwrap(), Some(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h").unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0s").unwrap(), None);
        assert_eq!(parse_go_duration("0").unwrap(), None);
        for bad in ["", "4", "4x", "h", "1h-2m"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn routes_tokens_and_handshakes() {
        let server = StreamServer::start("127.0.0.1", "0", None, Arc::new(Fake)).await.unwrap();
        assert_ne!(server.addr.port(), 0);
        let (_, head) = request_on(&server, "/exec/nope", UPGRADE).await;
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        let (_, head) = request_on(&server, "/other/x", UPGRADE).await;
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        // A token of another kind is not served on this route.
        let t = server.cache.insert(exec_request(false)).unwrap();
        let (_, head) = request_on(&server, &format!("/portforward/{t}"), UPGRADE).await;
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        let t = server.cache.insert(exec_request(false)).unwrap();
        let (_, head) =
            request_on(&server, &format!("/exec/{t}"), &format!("{UPGRADE}{PROTOCOL_HEADER}: v9.nope\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
        let t = server.cache.insert(exec_request(false)).unwrap();
        let (_, head) = request_on(&server, &format!("/exec/{t}"), "").await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        let t = server.cache.insert(exec_request(false)).unwrap();
        let offered = format!("{UPGRADE}{PROTOCOL_HEADER}: v4.channel.k8s.io\r\n{PROTOCOL_HEADER}: channel.k8s.io\r\n");
        let (_, head) = request_on(&server, &format!("/exec/{t}"), &offered).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"), "{head}");
        let (_, head) = request_on(&server, &format!("/exec/{t}"), &offered).await;
        assert!(head.starts_with("HTTP/1.1 404 "), "spent: {head}");
        // Garbage instead of a request.
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(b"\x00\x01\x02\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    }

    /// Opens `streams` (id, type) on an upgraded exec connection with
    /// `protocol`, sends `data`; answers stdout (stream 5) and the error
    /// stream (1) once both ended.
    async fn client(request: Request, protocol: &str, streams: &[(u32, &str)], data: Vec<Frame>) -> (Vec<u8>, Vec<u8>) {
        let server = StreamServer::start("127.0.0.1", "0", None, Arc::new(Fake)).await.unwrap();
        let t = server.cache.insert(request).unwrap();
        let (mut conn, head) =
            request_on(&server, &format!("/exec/{t}"), &format!("{UPGRADE}{PROTOCOL_HEADER}: {protocol}\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let (mut enc, mut dec) = (Encoder::new(), Decoder::new(Limits::default()));
        let mut out = BytesMut::new();
        for (id, kind) in streams {
            let headers = vec![("streamtype".to_string(), kind.to_string())];
            let syn = Frame::SynStream { stream_id: *id, associated_to: 0, priority: 0, flags: 0, headers };
            enc.encode(&syn, &mut out).unwrap();
        }
        for f in &data {
            enc.encode(f, &mut out).unwrap();
        }
        conn.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        let (mut stdout, mut error, mut replies, mut fins) = (Vec::new(), Vec::new(), 0, 0);
        while fins < 2 {
            let frame = next_frame(&mut conn, &mut dec, &mut buf).await;
            match frame {
                Frame::SynReply { .. } => replies += 1,
                Frame::Data { stream_id, flags, data } => {
                    match stream_id {
                        5 => stdout.extend_from_slice(&data),
                        1 => error.extend_from_slice(&data),
                        _ => {}
                    }
                    if flags & FLAG_FIN != 0 && (stream_id == 1 || stream_id == 5) {
                        fins += 1;
                    }
                }
                _ => {}
            }
        }
        assert_eq!(replies, streams.len());
        (stdout, error)
    }

    #[tokio::test]
    async fn exec_v4_streams_and_status() {
        let data = vec![Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"echo\n") }];
        let (stdout, error) =
            client(exec_request(true), remotecommand::V4, &[(1, "error"), (3, "stdin"), (5, "stdout")], data).await;
        assert_eq!(stdout, b"hi\necho\n");
        let status: serde_json::Value = serde_json::from_slice(&error).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "2");
    }

    #[tokio::test]
    async fn exec_v3_terminal_resizes() {
        let tty =
            Request::Exec(ExecRequest { container_id: "c".into(), tty: true, stdout: true, ..Default::default() });
        // Two sizes, the first split across frames.
        let data = vec![
            Frame::Data { stream_id: 7, flags: 0, data: Bytes::from_static(b"{\"Width\":132,") },
            Frame::Data {
                stream_id: 7,
                flags: 0,
                data: Bytes::from_static(b"\"Height\":43}{\"Width\":1,\"Height\":1}"),
            },
        ];
        let (stdout, error) = client(tty, remotecommand::V3, &[(1, "error"), (5, "stdout"), (7, "resize")], data).await;
        assert_eq!(stdout, b"hi\n132x43\n");
        assert!(error.is_empty(), "v3 says nothing on success");
    }

    #[tokio::test]
    async fn port_forward_pairs_streams_and_reports_dial_errors() {
        let server = StreamServer::start("127.0.0.1", "0", None, Arc::new(Fake)).await.unwrap();
        let req = PortForwardRequest { pod_sandbox_id: "pod".into(), port: vec![80] };
        let t = server.cache.insert(Request::PortForward(req)).unwrap();
        let offered = format!("{UPGRADE}{PROTOCOL_HEADER}: portforward.k8s.io\r\n");
        let (mut conn, head) = request_on(&server, &format!("/portforward/{t}"), &offered).await;
        assert!(head.contains("X-Stream-Protocol-Version: portforward.k8s.io\r\n"), "{head}");
        let (mut enc, mut dec) = (Encoder::new(), Decoder::new(Limits::default()));
        let mut out = BytesMut::new();
        let h = |pairs: &[(&str, &str)]| pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let syns = [
            (1, h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")])),
            (3, h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")])),
            // No port: refused.
            (5, h(&[("streamtype", "data")])),
        ];
        for (id, headers) in syns {
            enc.encode(&Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers }, &mut out)
                .unwrap();
        }
        conn.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        let (mut error, mut refused, mut error_fin) = (Vec::new(), false, false);
        while !(refused && error_fin) {
            let frame = next_frame(&mut conn, &mut dec, &mut buf).await;
            match frame {
                Frame::RstStream { stream_id: 5, status } => {
                    assert_eq!(status, crated_spdy::frame::rst::REFUSED_STREAM);
                    refused = true;
                }
                Frame::Data { stream_id: 1, flags, data } => {
                    error.extend_from_slice(&data);
                    error_fin |= flags & FLAG_FIN != 0;
                }
                _ => {}
            }
        }
        assert_eq!(String::from_utf8_lossy(&error), "error forwarding port 80 to pod pod, uid : no");
    }

    /// A WebSocket client of `path` offering `protocols`.
    async fn ws_client(
        server: &StreamServer,
        path: &str,
        protocols: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{path}", server.addr).into_client_request().unwrap();
        if !protocols.is_empty() {
            req.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        }
        let conn = TcpStream::connect(server.addr).await.unwrap();
        tokio_tungstenite::client_async(req, conn).await.map(|(ws, _)| ws)
    }

    /// The next data message as (channel, payload), decoding base64; `None`
    /// once the server closed.
    async fn ws_next(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Option<(u8, Vec<u8>)> {
        use base64::Engine;
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match ws.next().await? {
                Ok(Message::Binary(b)) => return Some((b[0], b[1..].to_vec())),
                Ok(Message::Text(t)) => {
                    let t = t.as_bytes();
                    let data = base64::engine::general_purpose::STANDARD.decode(&t[1..]).unwrap();
                    return Some((t[0] - b'0', data));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn websocket_handshakes() {
        use tokio_tungstenite::tungstenite::Error;
        let server = StreamServer::start("127.0.0.1", "0", None, Arc::new(Fake)).await.unwrap();
        let status = |r: Result<_, Error>| match r {
            Err(Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
            Ok(_) => 101,
        };
        let t = server.cache.insert(exec_request(false)).unwrap();
        assert_eq!(status(ws_client(&server, &format!("/exec/{t}"), "v3.channel.k8s.io").await), 403);
        assert_eq!(status(ws_client(&server, &format!("/exec/{t}"), websocket::V4_CHANNEL).await), 404, "spent");
        let t = server.cache.insert(exec_request(false)).unwrap();
        let offered = format!("v9.x, {}", websocket::BASE64_CHANNEL);
        let mut ws = ws_client(&server, &format!("/exec/{t}"), &offered).await.unwrap();
        // Not v4: the exit is the text of the error channel.
        let mut got = Vec::new();
        while let Some(m) = ws_next(&mut ws).await {
            got.push(m);
        }
        assert_eq!(got[0], (1, vec![]), "the empty first message on stdout");
        assert_eq!(got[1], (1, b"hi\n".to_vec()));
        assert_eq!(got[2].0, 3);
        assert_eq!(text(&got[2].1), "command terminated with non-zero exit code: exit status 2");
        // A POST is refused; so is a port-forward naming no port (before
        // the upgrade is looked at).
        let t = server.cache.insert(exec_request(false)).unwrap();
        let ws_head = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
        let (_, head) = request_on(&server, &format!("/exec/{t}"), ws_head).await;
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
        let t = server.cache.insert(Request::PortForward(PortForwardRequest::default())).unwrap();
        let (_, head) = request_on(&server, &format!("/portforward/{t}"), ws_head).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "no ports: {head}");
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[tokio::test]
    async fn websocket_exec_v4_base64_stdin_and_status() {
        use base64::Engine;
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let server = StreamServer::start("127.0.0.1", "0", None, Arc::new(Fake)).await.unwrap();
        let once = || ExecRequest {
            container_id: "c".into(),
            cmd: vec!["once".into()],
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let req = once();
        let t = server.cache.insert(Request::Exec(req)).unwrap();
        let mut ws = ws_client(&server, &format!("/exec/{t}"), websocket::V4_BASE64_CHANNEL).await.unwrap();
        let echo = base64::engine::general_purpose::STANDARD.encode(b"echo\n");
        // A message for no channel, and bad base64, are dropped.
        ws.send(Message::text("9AAAA")).await.unwrap();
        ws.send(Message::text("0!!!")).await.unwrap();
        ws.send(Message::text(format!("0{echo}"))).await.unwrap();
        let mut stdout = Vec::new();
        let mut status = Vec::new();
        while let Some((ch, data)) = ws_next(&mut ws).await {
            match ch {
                1 => stdout.extend(data),
                3 => status.extend(data),
                other => panic!("channel {other}"),
            }
        }
        assert_eq!(text(&stdout), "hi\necho\n");
        let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "2");

        // A message over the limit ends the connection unread.
        let t = server.cache.insert(Request::Exec(once())).unwrap();
        let mut ws = ws_client(&server, &format!("/exec/{t}"), websocket::V4_CHANNEL).await.unwrap();
        let mut big = vec![0u8; websocket::MAX_MESSAGE + 1];
        big[1..4].copy_from_slice(b"big");
        let _ = ws.send(Message::binary(big)).await;
        let mut stdout = Vec::new();
        while let Some((ch, data)) = ws_next(&mut ws).await {
            if ch == 1 {
                stdout.extend(data);
            }
        }
        assert_eq!(text(&stdout), "hi\n", "the oversized message was read");
    }

    #[tokio::test]
    async fn websocket_terminal_resizes_and_port_forward_errors() {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let server = StreamServer::start("127.0.0.1", "0", None, Arc::new(Fake)).await.unwrap();
        let tty = ExecRequest { container_id: "c".into(), tty: true, stdout: true, ..Default::default() };
        let t = server.cache.insert(Request::Exec(tty)).unwrap();
        let mut ws = ws_client(&server, &format!("/exec/{t}"), websocket::V4_CHANNEL).await.unwrap();
        ws.send(Message::binary(b"\x04{\"Width\":132,\"Height\":43}".to_vec())).await.unwrap();
        let mut stdout = Vec::new();
        let mut status = Vec::new();
        while let Some((ch, data)) = ws_next(&mut ws).await {
            if ch == 1 {
                stdout.extend(data);
            } else {
                status.extend(data);
            }
        }
        assert_eq!(text(&stdout), "hi\n132x43\n");
        let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["status"], "Success");

        // Port-forward: the ports of the request, each channel starting
        // with its port; the dial's error on the error channel.
        let req = PortForwardRequest { pod_sandbox_id: "pod".into(), port: vec![80, 443] };
        let t = server.cache.insert(Request::PortForward(req)).unwrap();
        let mut ws = ws_client(&server, &format!("/portforward/{t}?ports=1"), websocket::V4_CHANNEL).await.unwrap();
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); 4];
        while let Some((ch, data)) = ws_next(&mut ws).await {
            got[usize::from(ch)].extend(data);
        }
        assert_eq!(got[0], 80u16.to_le_bytes());
        assert_eq!(got[2], 443u16.to_le_bytes());
        assert_eq!(got[1][..2], 80u16.to_le_bytes());
        assert_eq!(text(&got[1][2..]), "error forwarding port 80 to pod pod, uid : no");
        assert_eq!(text(&got[3][2..]), "error forwarding port 443 to pod pod, uid : no");
        // Without ports in the request, the query's.
        let t = server.cache.insert(Request::PortForward(PortForwardRequest::default())).unwrap();
        let path = format!("/portforward/{t}?x=1&ports=8080,9090");
        let mut ws = ws_client(&server, &path, "").await.unwrap();
        let mut channels = Vec::new();
        while let Some((ch, data)) = ws_next(&mut ws).await {
            if data.len() == 2 {
                channels.push((ch, u16::from_le_bytes([data[0], data[1]])));
            }
        }
        channels.sort();
        assert_eq!(channels, [(0, 8080), (1, 8080), (2, 9090), (3, 9090)]);
    }
}
