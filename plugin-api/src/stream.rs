//! FFI-safe streams of protobuf frames ([`ByteStream`]) and their typed views.
//!
//! A stream a plugin produces is driven by a pump task on the plugin's own
//! runtime (it may read files or sockets, which need that runtime's reactor)
//! and handed over through a tokio channel, which needs no reactor, so the
//! core can poll it from its own threads. One hop per stream, not per message.

use std::{
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RNone, ROption, RSome, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use futures::{stream::BoxStream, FutureExt as _, Stream, StreamExt};
use tokio::sync::{mpsc, Mutex};

use crate::{
    abi::{ByteStream, Frame, FrameSource, FrameSource_TO, RpcStatus},
    runtime::{runtime, AbortOnDrop},
    Status,
};

/// How many frames may wait between producer and consumer. Frames are up
/// to a MiB (content reads), and a blob crosses several hops (content ->
/// metadata -> diff), each with its own buffer: at 16 a slow consumer (an
/// unpack waiting on the filesystem) held some 50 MiB in flight and doubled
/// the daemon's peak RSS during an unpack (`scripts/bench-unpack.sh`: 105
/// MiB against containerd's 50; 74 at 4, 62 at 2). Two still keep every
/// hop pipelined: a 256 MiB blob reads at 925 MiB/s against containerd's
/// 715 (`--bench content`).
const STREAM_BUFFER: usize = 2;

struct ChannelSource {
    rx: Arc<Mutex<mpsc::Receiver<Frame>>>,
    _pump: Option<AbortOnDrop<()>>,
}

impl FrameSource for ChannelSource {
    fn next_frame(&self) -> FfiFuture<ROption<Frame>> {
        let rx = self.rx.clone();
        async move {
            match rx.lock().await.recv().await {
                Some(f) => RSome(f),
                None => RNone,
            }
        }
        .into_ffi()
    }
}

/// The sending half of a channel-backed [`ByteStream`].
pub type FrameSender = mpsc::Sender<Frame>;

/// A [`ByteStream`] fed by the returned sender. Usable from any runtime.
pub fn channel() -> (FrameSender, ByteStream) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let src = ChannelSource { rx: Arc::new(Mutex::new(rx)), _pump: None };
    (tx, FrameSource_TO::from_value(src, TD_Opaque))
}

/// A [`ByteStream`] that yields nothing.
pub fn empty() -> ByteStream {
    channel().1
}

/// Turns a stream of encoded messages into a [`ByteStream`], driving it on
/// this library's runtime. An `Err` item ends the stream with that status.
pub fn byte_stream<S>(stream: S) -> ByteStream
where
    S: Stream<Item = Result<Vec<u8>, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Frame>(STREAM_BUFFER);
    let pump = runtime().spawn(async move {
        futures::pin_mut!(stream);
        loop {
            // A panic while producing an item ends the stream with Internal
            // instead of silently closing it, which would look like success.
            let item = match std::panic::AssertUnwindSafe(stream.next()).catch_unwind().await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(p) => Err(Status::internal(format!(
                    "plugin panicked while streaming: {}",
                    crate::runtime::panic_message(&*p)
                ))),
            };
            let last = item.is_err();
            let frame: Frame = match item {
                Ok(bytes) => abi_stable::std_types::ROk(RVec::from(bytes)),
                Err(s) => abi_stable::std_types::RErr(RpcStatus::from(s)),
            };
            if tx.send(frame).await.is_err() || last {
                break;
            }
        }
    });
    let src = ChannelSource { rx: Arc::new(Mutex::new(rx)), _pump: Some(AbortOnDrop(pump)) };
    FrameSource_TO::from_value(src, TD_Opaque)
}

/// Reads a [`ByteStream`] as a stream of raw frames.
pub fn frames(stream: ByteStream) -> BoxStream<'static, Result<Vec<u8>, Status>> {
    futures::stream::unfold(Some(stream), |state| async move {
        let stream = state?;
        match stream.next_frame().await {
            RSome(abi_stable::std_types::ROk(bytes)) => Some((Ok(bytes.into_vec()), Some(stream))),
            RSome(abi_stable::std_types::RErr(status)) => Some((Err(status.into()), None)),
            RNone => None,
        }
    })
    .boxed()
}

/// A stream of decoded request messages of type `M`.
pub struct Streaming<M> {
    inner: BoxStream<'static, Result<Vec<u8>, Status>>,
    _m: PhantomData<fn() -> M>,
}

impl<M: prost::Message + Default> Streaming<M> {
    pub fn new(stream: ByteStream) -> Self {
        Streaming { inner: frames(stream), _m: PhantomData }
    }

    /// The next message, `None` at the end of the stream.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        match self.inner.next().await {
            Some(Ok(b)) => Ok(Some(M::decode(b.as_slice())?)),
            Some(Err(s)) => Err(s),
            None => Ok(None),
        }
    }
}

impl<M: prost::Message + Default> Stream for Streaming<M> {
    type Item = Result<M, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx).map(|o| o.map(|r| r.and_then(|b| Ok(M::decode(b.as_slice())?))))
    }
}

/// Encodes a stream of messages into a [`ByteStream`] driven on this runtime.
pub fn encode_stream<M, S>(stream: S) -> ByteStream
where
    M: prost::Message + 'static,
    S: Stream<Item = Result<M, Status>> + Send + 'static,
{
    byte_stream(stream.map(|r| r.map(|m| m.encode_to_vec())))
}
