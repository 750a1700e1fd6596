//! The ttrpc server: handlers by service name, each call on its own task.
//!
//! A handler gets the method name and the request's bytes and returns the
//! reply's bytes; [`crate::task::serve_task`] adapts a typed implementation.
//! Calls of one connection run concurrently (a `Wait` must not hold up a
//! `Kill`), and their responses go back through one writer task in the order
//! they finish.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

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
        let (frames, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(buf) = outgoing.recv().await {
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
                    let _ = frames.send(response_frame(stream_id, Err(status)));
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
                    let _ = frames.send(response_frame(f.stream_id, Err(status)));
                    continue;
                }
            };
            let Some(handler) = self.services.get(&request.service).cloned() else {
                let status = Status::unimplemented(format!("service {}", request.service));
                let _ = frames.send(response_frame(f.stream_id, Err(status)));
                continue;
            };
            let ctx = RequestContext {
                metadata: request.metadata.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                timeout: (request.timeout_nano > 0).then(|| Duration::from_nanos(request.timeout_nano as u64)),
            };
            let frames = frames.clone();
            let stream_id = f.stream_id;
            tokio::spawn(async move {
                let answer = handler.call(ctx, &request.method, request.payload).await;
                let _ = frames.send(response_frame(stream_id, answer));
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
