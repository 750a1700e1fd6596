//! The stream manager: named bidirectional streams of `google.protobuf.Any`
//! that clients open with `Streaming/Stream` and transfers then take by
//! id, as containerd's `core/streaming` does. A stream is registered
//! before its `Empty` acknowledgement is sent, so a client that saw the
//! ack may name it in a Transfer at once; it stays open until the transfer
//! that took it drops it (or the client goes away).
//!
//! On top of a stream: [`ByteReceiver`] and [`ByteSender`], containerd's
//! binary stream protocol (`core/transfer/streaming`): `Data` chunks of at
//! most 32 KiB, flow-controlled by `WindowUpdate` credit that the receiver
//! grants.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        LazyLock, Mutex,
    },
    time::Duration,
};

use containerd_client::{
    services::v1::StreamInit,
    types::transfer::{Data, WindowUpdate},
};
use crated_plugin_api::{tracing, Call, ServiceRouter, Status, Streaming};
use futures::{stream::BoxStream, StreamExt};
use prost::Name;
use prost_types::Any;
use tokio::sync::{mpsc, Notify};

use crate::error::{Result, TransferError};

pub const SERVICE: &str = "containerd.services.streaming.v1.Streaming";
/// The largest `Data` chunk a sender sends.
pub const MAX_CHUNK: usize = 32 << 10;
/// The credit a receiver grants at a time, and the window below which it
/// grants more.
pub const WINDOW: i32 = 64 << 10;
/// How long a transfer waits for a stream the client has not opened yet.
pub const STREAM_WAIT: Duration = Duration::from_secs(5);
/// How long an opened stream waits for a transfer to take it.
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
/// Messages queued towards a client before a sender waits.
const OUTGOING_DEPTH: usize = 16;

/// `google.protobuf.Empty`'s type name, the acknowledgement of a stream.
const EMPTY: &str = "google.protobuf.Empty";

/// The message type an `Any` holds: its type URL without any
/// `type.googleapis.com/`-style prefix (containerd writes the bare name).
pub fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Packs a message as containerd's typeurl does: the bare full name.
pub fn pack<M: Name>(m: &M) -> Any {
    Any { type_url: M::full_name(), value: m.encode_to_vec() }
}

/// Unpacks an `Any` that must hold an `M`.
pub fn unpack<M: Name + Default>(any: &Any) -> Result<M> {
    if type_name(any) != M::full_name() {
        return Err(TransferError::InvalidArgument(format!("expected {}, got {:?}", M::full_name(), any.type_url)));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| TransferError::InvalidArgument(format!("malformed {}: {e}", M::full_name())))
}

/// What goes to the client on a stream.
pub type Outgoing = mpsc::Sender<Result<Any, Status>>;

/// A registered stream, as a transfer takes it.
pub struct StreamHandle {
    pub id: String,
    /// What the client sends after its `StreamInit`.
    pub incoming: BoxStream<'static, Result<Any, Status>>,
    /// What goes to the client; dropping it ends the stream.
    pub outgoing: Outgoing,
}

impl StreamHandle {
    /// Sends a message; a client that went away is an error naming the stream.
    pub fn send(&self, any: Any) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        // Owns what it needs: the handle itself is not `Sync`.
        let (tx, id) = (self.outgoing.clone(), self.id.clone());
        async move { tx.send(Ok(any)).await.map_err(|_| TransferError::Stream(id, "client closed the stream".into())) }
    }
}

#[derive(Default)]
struct Registry {
    /// Open streams no transfer has taken yet, each with the serial number
    /// of its registration.
    streams: Mutex<HashMap<String, (u64, StreamHandle)>>,
    serial: AtomicU64,
    added: Notify,
}

/// The one registry of this library: both plugins see it.
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

/// Registers `handle`; its serial number, or the handle back if its id is
/// taken.
fn register(handle: StreamHandle) -> std::result::Result<u64, StreamHandle> {
    let mut streams = REGISTRY.streams.lock().unwrap_or_else(|p| p.into_inner());
    if streams.contains_key(&handle.id) {
        return Err(handle);
    }
    let serial = REGISTRY.serial.fetch_add(1, Ordering::Relaxed);
    streams.insert(handle.id.clone(), (serial, handle));
    drop(streams);
    REGISTRY.added.notify_waiters();
    Ok(serial)
}

fn remove(id: &str) -> Option<StreamHandle> {
    REGISTRY.streams.lock().unwrap_or_else(|p| p.into_inner()).remove(id).map(|(_, h)| h)
}

/// Drops the registration `serial` of `id` if no transfer took it within
/// `ttl`. Without this, a client that opens streams and never names them in
/// a transfer would grow the registry (and hold its HTTP/2 streams) for as
/// long as the daemon runs; dropping the handle ends the client's stream.
async fn reap_unclaimed(id: String, serial: u64, ttl: Duration) {
    tokio::time::sleep(ttl).await;
    let mut streams = REGISTRY.streams.lock().unwrap_or_else(|p| p.into_inner());
    if streams.get(&id).is_some_and(|(s, _)| *s == serial) {
        streams.remove(&id);
        tracing::debug!(stream = %id, "stream dropped: no transfer took it");
    }
}

/// Takes the stream `id` out of the registry, waiting up to `wait` for the
/// client to open it; `NotFound` naming the id after that.
pub async fn take(id: &str, wait: Duration) -> Result<StreamHandle> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let added = REGISTRY.added.notified();
        if let Some(h) = remove(id) {
            return Ok(h);
        }
        // Woken by a registration, or polled now and then in case one
        // slipped in between the check and the wait.
        let next = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
        if tokio::time::timeout_at(next, added).await.is_err() && tokio::time::Instant::now() >= deadline {
            return remove(id).ok_or_else(|| TransferError::StreamNotFound(id.to_string()));
        }
    }
}

/// Serves one `Streaming/Stream` call: reads the `StreamInit`, registers
/// the stream, then acknowledges it.
async fn open(mut input: Streaming<Any>, outgoing: Outgoing) {
    let init = match input.message().await {
        Ok(Some(any)) => unpack::<StreamInit>(&any),
        Ok(None) => return,
        Err(s) => {
            tracing::debug!("stream closed before its init: {}", s.message);
            return;
        }
    };
    let init = match init {
        Ok(init) if !init.id.is_empty() => init,
        Ok(_) => {
            let _ = outgoing.send(Err(Status::invalid_argument("stream id is required"))).await;
            return;
        }
        Err(e) => {
            let _ = outgoing.send(Err(e.into())).await;
            return;
        }
    };
    let ack = outgoing.clone();
    let handle = StreamHandle { id: init.id.clone(), incoming: input.boxed(), outgoing };
    let serial = match register(handle) {
        Ok(serial) => serial,
        Err(h) => {
            let _ = h.outgoing.send(Err(Status::already_exists(format!("stream {}: already exists", init.id)))).await;
            return;
        }
    };
    tokio::spawn(reap_unclaimed(init.id.clone(), serial, UNCLAIMED_TTL));
    let _ = ack.send(Ok(Any { type_url: EMPTY.to_string(), value: Vec::new() })).await;
}

pub fn router() -> ServiceRouter {
    ServiceRouter::new().bidi_streaming(
        &format!("/{SERVICE}/Stream"),
        |_call: Call, input: Streaming<Any>| async move {
            let (tx, rx) = mpsc::channel(OUTGOING_DEPTH);
            // The response starts at once; the init is read on its own task so
            // that a client waiting for response headers is not stuck.
            tokio::spawn(open(input, tx));
            Ok::<_, Status>(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }))
        },
    )
}

/// The receiving end of a binary stream: grants credit, yields chunks.
pub struct ByteReceiver {
    stream: StreamHandle,
    window: i64,
    started: bool,
}

impl ByteReceiver {
    pub fn new(stream: StreamHandle) -> ByteReceiver {
        ByteReceiver { stream, window: 0, started: false }
    }

    async fn grant(&mut self) -> Result<()> {
        self.stream.send(pack(&WindowUpdate { update: WINDOW })).await?;
        self.window += i64::from(WINDOW);
        Ok(())
    }

    /// The next chunk, `None` when the sender closed the stream.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if !self.started {
            self.started = true;
            self.grant().await?;
        }
        loop {
            let any = match self.stream.incoming.next().await {
                None => return Ok(None),
                Some(Err(s)) => return Err(TransferError::Stream(self.stream.id.clone(), s.message)),
                Some(Ok(any)) => any,
            };
            if type_name(&any) != Data::full_name() {
                // Nothing else is meaningful from a sender; skip it.
                continue;
            }
            let data = unpack::<Data>(&any)?.data;
            self.window -= data.len() as i64;
            if self.window < i64::from(WINDOW) {
                // A peer that ignores its credit only gets more of it late;
                // what it sent is still read.
                self.grant().await?;
            }
            if data.is_empty() {
                continue;
            }
            return Ok(Some(data));
        }
    }
}

/// The sending end of a binary stream: sends within the granted credit.
pub struct ByteSender {
    stream: StreamHandle,
    credit: i64,
}

impl ByteSender {
    pub fn new(stream: StreamHandle) -> ByteSender {
        ByteSender { stream, credit: 0 }
    }

    /// Waits for credit from the receiver.
    async fn wait_credit(&mut self) -> Result<()> {
        while self.credit <= 0 {
            match self.stream.incoming.next().await {
                None => return Err(TransferError::Stream(self.stream.id.clone(), "receiver closed the stream".into())),
                Some(Err(s)) => return Err(TransferError::Stream(self.stream.id.clone(), s.message)),
                Some(Ok(any)) if type_name(&any) == WindowUpdate::full_name() => {
                    self.credit += i64::from(unpack::<WindowUpdate>(&any)?.update.max(0));
                }
                Some(Ok(_)) => {}
            }
        }
        Ok(())
    }

    /// Sends `data` as `Data` chunks, each within the credit.
    pub async fn send(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            self.wait_credit().await?;
            let n = data.len().min(MAX_CHUNK).min(self.credit as usize);
            self.stream.send(pack(&Data { data: data[..n].to_vec() })).await?;
            self.credit -= n as i64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the stream (the receiver sees its end).
    pub fn close(self) {
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: &str) -> (StreamHandle, mpsc::Receiver<std::result::Result<Any, Status>>) {
        let (outgoing, rx) = mpsc::channel(1);
        (StreamHandle { id: id.into(), incoming: futures::stream::pending().boxed(), outgoing }, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn unclaimed_streams_are_dropped_and_claimed_ones_kept() {
        // Never taken: gone after the TTL, and the client's stream ends.
        let (h, mut client) = handle("reap-unclaimed");
        let serial = register(h).map_err(|_| ()).unwrap();
        tokio::spawn(reap_unclaimed("reap-unclaimed".into(), serial, UNCLAIMED_TTL));
        tokio::time::sleep(UNCLAIMED_TTL + Duration::from_secs(1)).await;
        assert!(remove("reap-unclaimed").is_none());
        assert!(client.recv().await.is_none(), "the stream is closed");

        // Taken in time: the reaper leaves the new registration of the same
        // id alone.
        let (h, _client) = handle("reap-taken");
        let serial = register(h).map_err(|_| ()).unwrap();
        tokio::spawn(reap_unclaimed("reap-taken".into(), serial, UNCLAIMED_TTL));
        let taken = take("reap-taken", Duration::ZERO).await.unwrap();
        let (again, _client2) = handle("reap-taken");
        register(again).map_err(|_| ()).unwrap();
        tokio::time::sleep(UNCLAIMED_TTL + Duration::from_secs(1)).await;
        assert!(remove("reap-taken").is_some(), "a later registration of the id survives the first one's reaper");
        drop(taken);
    }
}
