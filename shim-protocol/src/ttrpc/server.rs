//! The ttrpc server: handlers by service name, each call on its own task.
//!
//! A handler gets the method name and the request's bytes and returns the
//! reply's bytes; [`crate::task::serve_task`] adapts a typed implementation.
//! Calls of one connection run concurrently (a `Wait` must not hold up a
//! `Kill`), and their responses go back through one writer task in the order
//! they finish.
//!
//! The server counts the calls whose answer is not yet written, so that a
//! shim that was asked to shut down can exit as soon as its answer to
//! `Shutdown` has left ([`Server::answered`]) rather than after a guessed
//! delay: the daemon's `Delete` waits for the shim's connection to close.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use super::frame::{self, MessageType};
use super::{Code, Request, Response, Status, NAMESPACE_KEY};

/// What a handler learns about a call besides its payload.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub metadata: Vec<(String, String)>,
    /// The caller's deadline, if it sent one.
    pub timeout: Option<Duration>,
}

impl RequestContext {
    /// The call's containerd namespace, if the caller sent one.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == NAMESPACE_KEY).map(|(_, v)| v.as_str())
    }
}

/// The future a handler returns: the encoded reply or a status.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, Status>> + Send>>;

/// One ttrpc service.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: RequestContext, method: &str, payload: Vec<u8>) -> HandlerFuture;
}

/// Serves registered services on unix-socket connections.
#[derive(Clone, Default)]
pub struct Server {
    services: Arc<HashMap<String, Arc<dyn Handler>>>,
    /// Calls received whose answer is not written yet, on every connection.
    unanswered: Arc<watch::Sender<usize>>,
}

/// One call's place in [`Server::unanswered`]: taken when its request is
/// read, given back when its answer is written or can no longer be (the
/// frame dropped with a dead connection), whichever way it goes.
struct Unanswered(Arc<watch::Sender<usize>>);

impl Unanswered {
    fn new(count: &Arc<watch::Sender<usize>>) -> Unanswered {
        count.send_modify(|n| *n += 1);
        Unanswered(count.clone())
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Server {
    pub fn new() -> Server {
        Server::default()
    }

    /// Adds a service under its full name (e.g. `containerd.task.v2.Task`).
    pub fn register(mut self, service: &str, handler: Arc<dyn Handler>) -> Server {
        Arc::make_mut(&mut self.services).insert(service.to_string(), handler);
        self
    }

    /// How many calls received have no answer written yet.
    pub fn unanswered(&self) -> usize {
        *self.unanswered.borrow()
    }

    /// Resolves once every call received so far has had its answer written
    /// to its connection (at once when there are none).
    pub async fn answered(&self) {
        let mut rx = self.unanswered.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Accepts connections until the listener fails; each is served on its
    /// own task.
    pub async fn serve(&self, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let server = self.clone();
            tokio::spawn(async move { server.serve_connection(stream).await });
        }
    }

    /// Serves one connection until the peer hangs up.
    pub async fn serve_connection(&self, stream: UnixStream) {
        let (mut read, mut write) = stream.into_split();
        let (frames, mut outgoing) = mpsc::unbounded_channel::<(Vec<u8>, Unanswered)>();
        let writer = tokio::spawn(async move {
            while let Some((buf, _answered_when_dropped)) = outgoing.recv().await {
                if frame::write_all(&mut write, &buf).await.is_err() {
                    return;
                }
            }
        });
        loop {
            let f = match frame::read_frame(&mut read).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(frame::FrameError::TooLarge { stream_id, len }) => {
                    let status = Status::new(
                        Code::ResourceExhausted,
                        format!("ttrpc: request of {len} bytes exceeds the limit"),
                    );
                    let _ = frames.send((response_frame(stream_id, Err(status)), Unanswered::new(&self.unanswered)));
                    continue;
                }
                Err(_) => break,
            };
            if f.kind != MessageType::Request as u8 {
                continue;
            }
            let request = match Request::decode(f.payload.as_slice()) {
                Ok(r) => r,
                Err(e) => {
                    let status = Status::invalid_argument(format!("ttrpc: bad request: {e}"));
                    let _ = frames.send((response_frame(f.stream_id, Err(status)), Unanswered::new(&self.unanswered)));
                    continue;
                }
            };
            let Some(handler) = self.services.get(&request.service).cloned() else {
                let status = Status::unimplemented(format!("service {}", request.service));
                let _ = frames.send((response_frame(f.stream_id, Err(status)), Unanswered::new(&self.unanswered)));
                continue;
            };
            let ctx = RequestContext {
                metadata: request.metadata.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                timeout: (request.timeout_nano > 0).then(|| Duration::from_nanos(request.timeout_nano as u64)),
            };
            let frames = frames.clone();
            let stream_id = f.stream_id;
            let pending = Unanswered::new(&self.unanswered);
            tokio::spawn(async move {
                let answer = handler.call(ctx, &request.method, request.payload).await;
                let _ = frames.send((response_frame(stream_id, answer), pending));
            });
        }
        // Calls still running finish on their own tasks; their answers go
        // nowhere, and the writer ends when the last of them drops its
        // sender.
        drop((frames, writer));
    }
}

fn response_frame(stream_id: u32, answer: Result<Vec<u8>, Status>) -> Vec<u8> {
    let response = match answer {
        Ok(payload) => Response { status: Some(super::RpcStatus::default()), payload },
        Err(status) => Response { status: Some(status.to_rpc()), payload: Vec::new() },
    };
    frame::encode_frame(stream_id, MessageType::Response, &response.encode_to_vec())
}

/// Decodes a request payload, failing the call with `InvalidArgument`.
pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, Status> {
    M::decode(payload).map_err(|e| Status::invalid_argument(format!("ttrpc: bad request payload: {e}")))
}
