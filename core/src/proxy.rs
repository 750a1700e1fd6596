//! `[proxy_plugins]`: plugins served by another process on a unix socket.
//!
//! A proxy plugin `NAME` of `type = "snapshot"` becomes the plugin
//! `io.containerd.snapshotter.v1.NAME` (`"content"`:
//! `io.containerd.content.v1.NAME`) and joins the dependency graph like a
//! plugin from a library: dependents find it by type and call it by name.
//! Like a library snapshotter it serves its API (Snapshots, Content) to its
//! dependents only; the metadata plugin puts the namespaced service on the
//! socket.
//!
//! The handler is the whole point of the bytes-by-method-path ABI: every
//! call's frames and metadata (`containerd-namespace`, `grpc-timeout`...)
//! are forwarded over gRPC with the pass-through codec, so the core has no
//! per-API code. Every streaming kind travels as a bidirectional call,
//! which is the same thing on the wire.
//!
//! Availability, as in containerd: the connection is made lazily, on the
//! first call, so the daemon neither waits for nor fails on a proxy that is
//! down; such a proxy fails its own calls with `Unavailable` naming its
//! address, and a later call reconnects (after the proxy restarts). There
//! is no per-call timeout (containerd has none either): a hung proxy holds
//! the calls sent to it until their clients give up (a client's deadline is
//! forwarded as `grpc-timeout`), while every other call goes on, each being
//! its own HTTP/2 stream and task. Only connecting is bounded.

use std::{error::Error as _, path::PathBuf, sync::Arc, time::Duration};

use abi_stable::std_types::{RErr, ROk, RVec};
use crated_plugin_api::{
    abi::{ByteStream, CallHead},
    grpc::{self, Limits, PassThrough},
    runtime::AbortOnDrop,
    stream, Code, Status,
};
use futures::{FutureExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tonic::{
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};

/// How long connecting to a proxy's socket may take (a listener that does
/// not accept). Calls themselves have no limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a proxy is, for error messages.
#[derive(Clone)]
struct Origin {
    /// What serves it, for messages: "proxy plugin", "isolated plugin".
    label: &'static str,
    /// `type.id`
    key: Arc<str>,
    address: Arc<str>,
}

impl Origin {
    /// A status from the proxy keeps its code and message. One made here by
    /// the transport (it carries a source error: refused, reset, no such
    /// socket) becomes `Unavailable` naming the proxy and its address.
    fn status(&self, s: tonic::Status) -> Status {
        let Some(mut source) = s.source() else {
            return Status::new(Code::from_i32(s.code() as i32), s.message());
        };
        let mut why = s.message().to_string();
        loop {
            let text = source.to_string();
            if !why.contains(&text) {
                why = format!("{why}: {text}");
            }
            match source.source() {
                Some(next) => source = next,
                None => break,
            }
        }
        Status::unavailable(format!("{} {} at {} is unavailable: {why}", self.label, self.key, self.address))
    }
}

/// The client side of one proxy plugin.
pub struct Proxy {
    client: Arc<Client>,
    /// The daemon's runtime. In-process callers poll from their own
    /// library's runtime, whose tokio is another copy: the connection's I/O
    /// and the stream pumps must run here.
    runtime: tokio::runtime::Handle,
}

struct Client {
    origin: Origin,
    channel: Channel,
    limits: Limits,
}

impl Proxy {
    /// A proxy for plugin `key` served at `address` (a socket path, or
    /// `unix://` and a path). Nothing is connected yet. Must be called
    /// within the daemon's runtime.
    pub fn new(key: &str, address: &str) -> Proxy {
        Proxy::labelled("proxy plugin", key, address)
    }

    /// The same, naming the server `label` in errors (e.g. "isolated plugin").
    pub fn labelled(label: &'static str, key: &str, address: &str) -> Proxy {
        let path = PathBuf::from(address.strip_prefix("unix://").unwrap_or(address));
        // The authority is unused on a unix socket but required by the URI.
        let channel = Endpoint::from_static("http://proxy-plugin")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }));
        let client = Client {
            origin: Origin { label, key: key.into(), address: address.into() },
            channel,
            limits: Limits::default(),
        };
        Proxy { client: Arc::new(client), runtime: tokio::runtime::Handle::current() }
    }

    /// Runs `f` on the daemon's runtime; dropping the returned future (a
    /// cancelled call) aborts it.
    async fn on_daemon<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
    ) -> Result<T, Status> {
        let mut task = AbortOnDrop(self.runtime.spawn(f));
        match (&mut task.0).await {
            Ok(r) => r,
            Err(e) => Err(Status::internal(format!("proxy call to {} failed: {e}", self.client.origin.key))),
        }
    }

    /// Forwards a unary call.
    pub async fn unary(&self, head: CallHead, body: RVec<u8>) -> Result<RVec<u8>, Status> {
        let client = self.client.clone();
        self.on_daemon(async move { client.unary(head, body).await }).await
    }

    /// Forwards a streaming call of any kind.
    pub async fn streaming(&self, head: CallHead, input: ByteStream) -> Result<ByteStream, Status> {
        let client = self.client.clone();
        self.on_daemon(async move { client.streaming(head, input).await }).await
    }
}

impl Client {
    async fn client(&self) -> Result<tonic::client::Grpc<Channel>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(self.limits.max_recv)
            .max_encoding_message_size(self.limits.max_send);
        grpc.ready().await.map_err(|e| self.origin.status(tonic::Status::from_error(e.into())))?;
        Ok(grpc)
    }

    async fn unary(&self, head: CallHead, body: RVec<u8>) -> Result<RVec<u8>, Status> {
        let path = method_path(&head)?;
        let mut grpc = self.client().await?;
        match grpc.unary(request(&head, body), path, PassThrough).await {
            Ok(r) => Ok(RVec::from(&r.into_inner()[..])),
            Err(s) => Err(self.origin.status(s)),
        }
    }

    async fn streaming(&self, head: CallHead, input: ByteStream) -> Result<ByteStream, Status> {
        let path = method_path(&head)?;
        let mut grpc = self.client().await?;
        // A caller's stream that fails must not reach the proxy as a clean
        // end (it would commit a partial write): the request stream stalls
        // and the call is dropped, which resets the proxy's stream.
        let (failed_tx, failed) = oneshot::channel::<Status>();
        // Fused: polled again after it resolved (in the loop below) it stays pending.
        let mut failed = failed.fuse();
        let frames = futures::stream::unfold((grpc::outgoing(input), Some(failed_tx)), |(mut input, tx)| async move {
            match input.next().await {
                Some(Ok(frame)) => Some((frame, (input, tx))),
                Some(Err(s)) => {
                    if let Some(tx) = tx {
                        let _ = tx.send(Status::new(Code::from_i32(s.code() as i32), s.message()));
                    }
                    futures::future::pending().await
                }
                None => None,
            }
        });
        let call = grpc.streaming(request(&head, frames), path, PassThrough);
        let mut responses = tokio::select! {
            r = call => r.map_err(|s| self.origin.status(s))?.into_inner(),
            Ok(s) = &mut failed => return Err(s),
        };
        let (tx, out) = stream::channel();
        let origin = self.origin.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    m = responses.message() => match m {
                        Ok(Some(b)) => ROk(RVec::from(&b[..])),
                        Ok(None) => break,
                        Err(s) => RErr(origin.status(s).into()),
                    },
                    Ok(s) = &mut failed => RErr(s.into()),
                    // The caller went away: drop the call, resetting it.
                    _ = tx.closed() => break,
                };
                let last = frame.is_err();
                if tx.send(frame).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(out)
    }
}

fn method_path(head: &CallHead) -> Result<http::uri::PathAndQuery, Status> {
    head.method
        .as_str()
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{:?} is not a gRPC method path", head.method.as_str())))
}

/// The call's metadata as a tonic request; the transport's own headers are
/// left to the transport.
fn request<T>(head: &CallHead, body: T) -> tonic::Request<T> {
    let mut headers = http::HeaderMap::new();
    for t in head.headers.iter() {
        let (k, v) = (t.0.as_str(), t.1.as_str());
        if grpc::is_transport_header(k) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
            headers.append(k, v);
        }
    }
    tonic::Request::from_parts(MetadataMap::from_headers(headers), tonic::Extensions::default(), body)
}

#[cfg(test)]
mod tests {
    //! Forwarding over a real socket to the SDK's proxy server.
    use abi_stable::std_types::{RNone, RSome};
    use crated_plugin_api::{Call, ServiceRouter};
    use prost::Message;

    use super::*;

    /// A test message: one string.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Text {
        #[prost(string, tag = "1")]
        text: String,
    }

    const SAY: &str = "/crated.test.Proxy/Say";
    const REPEAT: &str = "/crated.test.Proxy/Repeat";
    const JOIN: &str = "/crated.test.Proxy/Join";

    /// Answers with the text and the namespace it was called in; `Repeat`
    /// streams the text three times; `Join` concatenates a request stream.
    fn router() -> ServiceRouter {
        ServiceRouter::new()
            .unary(SAY, |call: Call, req: Text| async move {
                if req.text.is_empty() {
                    return Err(Status::not_found("nothing to say"));
                }
                Ok(Text { text: format!("{} in {}", req.text, call.namespace().unwrap_or("-")) })
            })
            .server_streaming(REPEAT, |_: Call, req: Text| async move {
                Ok(futures::stream::iter((0..3).map(move |i| Ok(Text { text: format!("{}{i}", req.text) }))))
            })
            .client_streaming(JOIN, |_: Call, mut input: crated_plugin_api::Streaming<Text>| async move {
                let mut all = String::new();
                while let Some(m) = input.message().await? {
                    all.push_str(&m.text);
                }
                Ok(Text { text: all })
            })
    }

    fn head(method: &str, namespace: &str) -> CallHead {
        CallHead {
            method: method.into(),
            target: "".into(),
            headers: vec![("containerd-namespace".into(), namespace.into()).into()].into(),
        }
    }

    fn text(b: &[u8]) -> String {
        Text::decode(b).unwrap().text
    }

    async fn collect(bs: ByteStream) -> Vec<Result<String, Status>> {
        let mut out = Vec::new();
        loop {
            match bs.next_frame().await {
                RSome(ROk(b)) => out.push(Ok(text(&b))),
                RSome(RErr(s)) => {
                    out.push(Err(s.into()));
                    break;
                }
                RNone => break,
            }
        }
        out
    }

    fn frames(texts: &[&str]) -> ByteStream {
        let (tx, bs) = stream::channel();
        let texts: Vec<Vec<u8>> = texts.iter().map(|t| Text { text: t.to_string() }.encode_to_vec()).collect();
        tokio::spawn(async move {
            for t in texts {
                let _ = tx.send(ROk(t.into())).await;
            }
        });
        bs
    }

    #[tokio::test]
    async fn forwards_every_call_kind_with_metadata_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("proxy.sock");
        let proxy = Proxy::new("io.crated.test.v1.p", sock.to_str().unwrap());

        // Down: Unavailable, naming the address; nothing was started.
        let e = proxy.unary(head(SAY, "ns"), Text { text: "hi".into() }.encode_to_vec().into()).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{e}");
        assert!(e.message.contains(sock.to_str().unwrap()), "{e}");

        let serve = |stop: oneshot::Receiver<()>| {
            let sock = sock.clone();
            tokio::spawn(async move {
                crated_plugin_api::proxy::serve_with_shutdown(router(), &sock, async move {
                    let _ = stop.await;
                })
                .await
            })
        };
        let (stop, stopped) = oneshot::channel();
        let server = serve(stopped);
        while !sock.exists() {
            tokio::task::yield_now().await;
        }

        // Up (the same Proxy reconnects): unary with the namespace, errors keep their code.
        let r = proxy.unary(head(SAY, "ns1"), Text { text: "hi".into() }.encode_to_vec().into()).await.unwrap();
        assert_eq!(text(&r), "hi in ns1");
        let e = proxy.unary(head(SAY, "ns1"), Text::default().encode_to_vec().into()).await.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (Code::NotFound, "nothing to say"));
        // Server streaming and client streaming, both as bidi calls.
        let out = proxy.streaming(head(REPEAT, "ns1"), frames(&["x"])).await.unwrap();
        assert_eq!(collect(out).await, vec![Ok("x0".into()), Ok("x1".into()), Ok("x2".into())]);
        let out = proxy.streaming(head(JOIN, "ns1"), frames(&["a", "b", "c"])).await.unwrap();
        assert_eq!(collect(out).await, vec![Ok("abc".into())]);

        // Stopped: Unavailable again; restarted: served again.
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        let e = proxy.unary(head(SAY, "ns"), Text { text: "hi".into() }.encode_to_vec().into()).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{e}");
        let (stop, stopped) = oneshot::channel();
        let server = serve(stopped);
        while !sock.exists() {
            tokio::task::yield_now().await;
        }
        let r = proxy.unary(head(SAY, "ns2"), Text { text: "again".into() }.encode_to_vec().into()).await.unwrap();
        assert_eq!(text(&r), "again in ns2");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
