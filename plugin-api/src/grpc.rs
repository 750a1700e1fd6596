//! The pass-through gRPC machinery shared by the daemon's socket and the
//! SDK's standalone proxy server ([`crate::proxy`]): a codec that moves
//! frames as bytes, the adapters between tonic's streams and the ABI's
//! [`ByteStream`], one dispatcher that runs any call kind against a
//! [`Backend`], and the unix-socket accept loop.
//!
//! Nothing here decodes a payload: a call is a method path, its metadata
//! and frames. Whether a method streams is the caller's knowledge (a
//! plugin's declaration), since the first frame cannot tell.

use std::{
    convert::Infallible,
    future::Future,
    io,
    os::unix::fs::FileTypeExt,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::Arc,
};

use abi_stable::std_types::{RErr, RNone, ROk, RSome, RString, RVec, Tuple2};
use bytes::{Buf, BufMut, Bytes};
use futures::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{ClientStreamingService, Grpc, ServerStreamingService, StreamingService, UnaryService},
};

use crate::{
    abi::{ByteStream, CallHead, CallKind, RpcStatus},
    stream, Status,
};

/// The codec that moves frames without decoding them; it serves clients and
/// servers alike.
#[derive(Default, Clone, Copy)]
pub struct PassThrough;

impl Codec for PassThrough {
    type Encode = RVec<u8>;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;
    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }
    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = RVec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: RVec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A [`Status`] as tonic writes it.
pub fn to_tonic(s: Status) -> tonic::Status {
    tonic::Status::new(tonic::Code::from(s.code as i32), s.message)
}

/// A tonic status as the ABI carries it.
pub fn from_tonic(s: &tonic::Status) -> RpcStatus {
    RpcStatus { code: s.code() as i32, message: s.message().into() }
}

fn panicked() -> Status {
    Status::internal("plugin panicked while handling the call")
}

/// The headers of the transport, not of the call: never handed to a
/// handler nor forwarded.
pub fn is_transport_header(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "content-type" | "te" | "user-agent" | "grpc-accept-encoding" | "grpc-encoding" | "content-length"
        )
}

/// The gRPC metadata of a request, as the ABI carries it (ASCII values).
pub fn metadata(headers: &http::HeaderMap) -> RVec<Tuple2<RString, RString>> {
    headers
        .iter()
        .filter(|(k, _)| !is_transport_header(k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().into(), v.to_str().ok()?.into()).into()))
        .collect()
}

/// Reads a [`ByteStream`] as tonic's response stream. A panic of the
/// producer (an `FfiFuture` of a plugin) ends it with `Internal`.
pub fn outgoing(bs: ByteStream) -> BoxStream<'static, Result<RVec<u8>, tonic::Status>> {
    futures::stream::unfold(Some(bs), |state| async move {
        let bs = state?;
        match AssertUnwindSafe(bs.next_frame()).catch_unwind().await {
            Ok(RSome(ROk(b))) => Some((Ok(b), Some(bs))),
            Ok(RSome(RErr(s))) => Some((Err(to_tonic(s.into())), None)),
            Ok(RNone) => None,
            Err(_) => Some((Err(to_tonic(panicked())), None)),
        }
    })
    .boxed()
}

/// Feeds tonic's request stream into a [`ByteStream`], pumped by a task on
/// the current runtime.
pub fn incoming(mut input: tonic::Streaming<Bytes>) -> ByteStream {
    let (tx, bs) = stream::channel();
    tokio::spawn(async move {
        loop {
            let frame = match input.message().await {
                Ok(Some(b)) => ROk(RVec::from(&b[..])),
                Ok(None) => break,
                Err(s) => RErr(from_tonic(&s)),
            };
            let last = frame.is_err();
            if tx.send(frame).await.is_err() || last {
                break;
            }
        }
    });
    bs
}

fn one_frame(body: Bytes) -> ByteStream {
    let (tx, bs) = stream::channel();
    // The channel has room for one frame, so this never waits.
    let _ = tx.try_send(ROk(RVec::from(&body[..])));
    bs
}

/// What answers the calls a dispatcher receives: a plugin route in the
/// daemon, a [`crate::ServiceRouter`] in a proxy server.
pub trait Backend: Send + Sync + 'static {
    fn unary(&self, head: CallHead, body: RVec<u8>) -> BoxFuture<'_, Result<RVec<u8>, Status>>;
    /// Any streaming call: for server streaming `input` holds one frame; for
    /// client streaming the output must hold one.
    fn streaming(&self, head: CallHead, input: ByteStream) -> BoxFuture<'_, Result<ByteStream, Status>>;
}

/// One call on its way to a backend; implements each of tonic's call kinds.
struct Dispatch<B> {
    backend: Arc<B>,
    head: CallHead,
}

type TonicFuture<T> = BoxFuture<'static, Result<tonic::Response<T>, tonic::Status>>;
type OutStream = BoxStream<'static, Result<RVec<u8>, tonic::Status>>;

impl<B: Backend> UnaryService<Bytes> for Dispatch<B> {
    type Response = RVec<u8>;
    type Future = TonicFuture<RVec<u8>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let (backend, head) = (self.backend.clone(), std::mem::take(&mut self.head));
        async move {
            let body = RVec::from(&req.get_ref()[..]);
            backend.unary(head, body).await.map(tonic::Response::new).map_err(to_tonic)
        }
        .boxed()
    }
}

impl<B: Backend> ServerStreamingService<Bytes> for Dispatch<B> {
    type Response = RVec<u8>;
    type ResponseStream = OutStream;
    type Future = TonicFuture<OutStream>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let (backend, head) = (self.backend.clone(), std::mem::take(&mut self.head));
        async move {
            let out = backend.streaming(head, one_frame(req.into_inner())).await.map_err(to_tonic)?;
            Ok(tonic::Response::new(outgoing(out)))
        }
        .boxed()
    }
}

impl<B: Backend> ClientStreamingService<Bytes> for Dispatch<B> {
    type Response = RVec<u8>;
    type Future = TonicFuture<RVec<u8>>;
    fn call(&mut self, req: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let (backend, head) = (self.backend.clone(), std::mem::take(&mut self.head));
        async move {
            let out = backend.streaming(head, incoming(req.into_inner())).await.map_err(to_tonic)?;
            match outgoing(out).next().await {
                Some(Ok(b)) => Ok(tonic::Response::new(b)),
                Some(Err(s)) => Err(s),
                None => Err(tonic::Status::internal("plugin ended a client-streaming call without a response")),
            }
        }
        .boxed()
    }
}

impl<B: Backend> StreamingService<Bytes> for Dispatch<B> {
    type Response = RVec<u8>;
    type ResponseStream = OutStream;
    type Future = TonicFuture<OutStream>;
    fn call(&mut self, req: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let (backend, head) = (self.backend.clone(), std::mem::take(&mut self.head));
        async move {
            let out = backend.streaming(head, incoming(req.into_inner())).await.map_err(to_tonic)?;
            Ok(tonic::Response::new(outgoing(out)))
        }
        .boxed()
    }
}

/// Message-size limits of a server, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_recv: usize,
    pub max_send: usize,
}

impl Default for Limits {
    /// containerd's defaults: 16 MiB each way.
    fn default() -> Self {
        Limits { max_recv: 16 << 20, max_send: 16 << 20 }
    }
}

/// Runs one HTTP/2 request as a gRPC call of `kind` against `backend`.
pub async fn dispatch<B, Body>(
    backend: Arc<B>,
    kind: CallKind,
    req: http::Request<Body>,
    limits: Limits,
) -> http::Response<tonic::body::Body>
where
    B: Backend,
    Body: http_body::Body<Data = Bytes> + Send + 'static,
    Body::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let head = CallHead { method: req.uri().path().into(), target: "".into(), headers: metadata(req.headers()) };
    let svc = Dispatch { backend, head };
    let mut grpc =
        Grpc::new(PassThrough).max_decoding_message_size(limits.max_recv).max_encoding_message_size(limits.max_send);
    match kind {
        CallKind::Unary => grpc.unary(svc, req).await,
        CallKind::ServerStreaming => grpc.server_streaming(svc, req).await,
        CallKind::ClientStreaming => grpc.client_streaming(svc, req).await,
        CallKind::BidiStreaming => grpc.streaming(svc, req).await,
    }
}

/// Why a unix socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{}: another daemon is serving this socket; stop it or choose another address", .0.display())]
    InUse(PathBuf),
    #[error("{}: exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// An I/O error on `path`.
pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io { path: path.to_path_buf(), source }
}

/// Refuses a socket that a live server answers on, and removes a stale one
/// (a socket file nobody listens on, left by a server that died).
pub fn clear_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_path_buf())),
        Err(_) => {
            tracing::warn!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io_err(path))
        }
    }
}

/// Serves HTTP/2 connections on `listener` with `svc` until `shutdown`
/// resolves; each connection runs on its own task, and the connections
/// still open are closed when it returns.
pub async fn serve_connections<S>(listener: UnixListener, svc: S, shutdown: impl Future<Output = ()>)
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let svc = svc.clone();
                    connections.spawn(async move {
                        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc);
                        if let Err(e) = conn.await {
                            tracing::debug!("connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
}
