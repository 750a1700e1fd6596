//! The ttrpc client: one connection, many calls in flight.
//!
//! A writer task owns the socket's write half and sends whole frames from a
//! channel, so concurrent callers never interleave bytes; a reader task owns
//! the read half and hands each response to the caller waiting on its stream
//! id. When the connection ends, every waiting call fails with `Unavailable`,
//! and so does every later one: a client never reconnects by itself, because
//! a new connection to a restarted shim is a decision for its owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, MessageType};
use super::{Code, KeyValue, Request, Response, SocketAddress, Status};

type Pending = Arc<Mutex<PendingCalls>>;

struct PendingCalls {
    waiting: HashMap<u32, oneshot::Sender<Result<Response, Status>>>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
    /// Turns `true` when the connection ends, for [`Client::closed`].
    ended: tokio::sync::watch::Sender<bool>,
}

impl Default for PendingCalls {
    fn default() -> Self {
        PendingCalls { waiting: HashMap::new(), closed: None, ended: tokio::sync::watch::channel(false).0 }
    }
}

/// A ttrpc client on one unix-socket connection. Clones share it.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_stream: AtomicU32,
    reader: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer ends with the channel (and shuts the socket down); the
        // reader would wait for the server to hang up, so end it here.
        self.reader.abort();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ttrpc::Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `address` (`unix:///path`, `/path` or `@abstract`).
    /// Must be called within a tokio runtime: it spawns the connection's two
    /// tasks there.
    pub async fn connect(address: &str) -> std::io::Result<Client> {
        let stream = SocketAddress::parse(address).connect().await?;
        Ok(Client::new(stream))
    }

    /// A client over an already connected stream.
    pub fn new(stream: tokio::net::UnixStream) -> Client {
        let (mut read, mut write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (frames, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();

        let writer_pending = pending.clone();
        tokio::spawn(async move {
            while let Some(buf) = outgoing.recv().await {
                if let Err(e) = frame::write_all(&mut write, &buf).await {
                    fail_all(&writer_pending, format!("ttrpc: write: {e}"));
                    return;
                }
            }
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
        });

        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match frame::read_frame(&mut read).await {
                    Ok(Some(f)) if f.kind == MessageType::Response as u8 => {
                        let waiter = reader_pending.lock().expect("ttrpc pending").waiting.remove(&f.stream_id);
                        if let Some(waiter) = waiter {
                            let answer = Response::decode(f.payload.as_slice())
                                .map_err(|e| Status::internal(format!("ttrpc: bad response: {e}")));
                            let _ = waiter.send(answer);
                        }
                    }
                    // Data frames and unknown types belong to streams this
                    // client never opens.
                    Ok(Some(_)) => {}
                    Ok(None) => break "ttrpc: closed".to_string(),
                    Err(frame::FrameError::TooLarge { stream_id, len }) => {
                        let waiter = reader_pending.lock().expect("ttrpc pending").waiting.remove(&stream_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(Err(Status::new(
                                Code::ResourceExhausted,
                                format!("ttrpc: response of {len} bytes exceeds the limit"),
                            )));
                        }
                    }
                    Err(e) => break e.to_string(),
                }
            };
            fail_all(&reader_pending, why);
        })
        .abort_handle();

        Client { inner: Arc::new(Inner { frames, pending, next_stream: AtomicU32::new(1), reader }) }
    }

    /// Whether the connection has ended (every call would fail).
    pub fn is_closed(&self) -> bool {
        self.inner.pending.lock().expect("ttrpc pending").closed.is_some()
    }

    /// Resolves when the connection ends (the peer hung up or died), at once
    /// if it already has: how the owner of a shim's connection learns that
    /// the shim is gone without making a call.
    pub async fn closed(&self) {
        let mut ended = self.inner.pending.lock().expect("ttrpc pending").ended.subscribe();
        // The sender lives as long as `self`, so this only ends on `true`.
        let _ = ended.wait_for(|e| *e).await;
    }

    /// Calls `service/method` with `req`, waiting at most `timeout` (also
    /// sent to the server as the call's deadline).
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        metadata: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<Resp, Status> {
        let payload = req.encode_to_vec();
        if payload.len() > frame::MAX_MESSAGE_SIZE {
            return Err(Status::new(Code::ResourceExhausted, "ttrpc: request exceeds the message size limit"));
        }
        let request = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: timeout.map(|t| t.as_nanos().min(i64::MAX as u128) as i64).unwrap_or(0),
            metadata: metadata.iter().map(|(k, v)| KeyValue { key: k.to_string(), value: v.to_string() }).collect(),
        };
        let stream_id = self.inner.next_stream.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("ttrpc pending");
            if let Some(why) = &pending.closed {
                return Err(Status::unavailable(why.clone()));
            }
            pending.waiting.insert(stream_id, tx);
        }
        let buf = frame::encode_frame(stream_id, MessageType::Request, &request.encode_to_vec());
        if self.inner.frames.send(buf).is_err() {
            self.forget(stream_id);
            return Err(Status::unavailable("ttrpc: closed"));
        }
        let answer = match timeout {
            Some(t) => match tokio::time::timeout(t, rx).await {
                Ok(a) => a,
                Err(_) => {
                    self.forget(stream_id);
                    return Err(Status::new(
                        Code::DeadlineExceeded,
                        format!("ttrpc: {service}/{method}: no answer within {t:?}"),
                    ));
                }
            },
            None => rx.await,
        };
        let response = answer.map_err(|_| Status::unavailable("ttrpc: closed"))??;
        if let Some(status) = response.status {
            if status.code != Code::Ok as i32 {
                return Err(Status::from_rpc(status));
            }
        }
        Resp::decode(response.payload.as_slice())
            .map_err(|e| Status::internal(format!("ttrpc: {service}/{method}: bad reply: {e}")))
    }

    fn forget(&self, stream_id: u32) {
        self.inner.pending.lock().expect("ttrpc pending").waiting.remove(&stream_id);
    }
}

fn fail_all(pending: &Pending, why: String) {
    let waiting = {
        let mut p = pending.lock().expect("ttrpc pending");
        p.closed.get_or_insert(why.clone());
        p.ended.send_replace(true);
        std::mem::take(&mut p.waiting)
    };
    for (_, w) in waiting {
        let _ = w.send(Err(Status::unavailable(why.clone())));
    }
}
