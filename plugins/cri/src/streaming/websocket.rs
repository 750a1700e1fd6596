//! WebSocket clients of the stream server, as the kubelet's streaming
//! server serves them (k8s.io/apiserver's `wsstream`, which containerd
//! 1.6 carries as `pkg/cri/streaming/internal/wsstream`): an upgrade with
//! `Upgrade: websocket` on the same URLs as SPDY, a subprotocol from the
//! client's `Sec-WebSocket-Protocol` list (none: binary, as
//! `channel.k8s.io`), then messages that each start with a channel
//! number: a byte for `channel.k8s.io` and `v4.channel.k8s.io` (binary
//! messages), the digit's character for the `base64.` variants, whose
//! payload is base64 both ways (text messages). A channel is read, written,
//! both or ignored, as the protocol fixes them; no channel can be
//! half-closed, so the client's data ends with the connection.
//!
//! Hostile input: a message or frame over [`MAX_MESSAGE`] ends the
//! connection (tungstenite refuses it); each read channel buffers a few
//! messages, and the connection stops reading while one is full; a
//! message for a channel out of range or with bad base64 is dropped.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, watch},
};
use tokio_tungstenite::{
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};

use super::{channel::Closed, respond, Gone, Head, Reader, Writer};

pub const CHANNEL: &str = "channel.k8s.io";
pub const BASE64_CHANNEL: &str = "base64.channel.k8s.io";
pub const V4_CHANNEL: &str = "v4.channel.k8s.io";
pub const V4_BASE64_CHANNEL: &str = "v4.base64.channel.k8s.io";
/// Exec and attach: "" is a client that named no subprotocol.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] = &["", CHANNEL, BASE64_CHANNEL, V4_CHANNEL, V4_BASE64_CHANNEL];
pub const PORTFORWARD_PROTOCOLS: &[&str] = &["", V4_CHANNEL, V4_BASE64_CHANNEL];

/// The largest message (and frame) accepted from a client, as the SPDY
/// side's largest frame.
pub const MAX_MESSAGE: usize = 1 << 20;
/// The largest payload written in one message; longer writes are split.
const MAX_WRITE: usize = 32 << 10;
/// Messages buffered per read channel before the connection waits.
const CHANNEL_BUFFER: usize = 16;
/// Messages queued for the socket.
const OUT_BUFFER: usize = 64;

/// Whether the protocol's payloads are base64 (text messages).
pub fn is_base64(protocol: &str) -> bool {
    protocol == BASE64_CHANNEL || protocol == V4_BASE64_CHANNEL
}

/// Whether the protocol is v4 (a JSON status on the error channel).
pub fn is_v4(protocol: &str) -> bool {
    protocol == V4_CHANNEL || protocol == V4_BASE64_CHANNEL
}

/// `wsstream.IsWebSocketRequest`: `Upgrade: websocket` and a
/// `Connection` header naming upgrade.
pub(super) fn is_request(head: &Head) -> bool {
    head.values("Upgrade").any(|v| v.eq_ignore_ascii_case("websocket"))
        && head.values("Connection").any(|v| v.eq_ignore_ascii_case("upgrade"))
}

/// The subprotocol: the first the client offers that is supported; a
/// client offering none gets "" if that is supported.
pub fn negotiate(offered: &[&str], supported: &[&str]) -> Result<String, String> {
    let wanted: &[&str] = if offered.is_empty() { &[""] } else { offered };
    wanted
        .iter()
        .find(|p| supported.contains(p))
        .map(|p| p.to_string())
        .ok_or_else(|| format!("requested protocol(s) are not supported: {offered:?}; supports {supported:?}"))
}

/// Checks the upgrade request as Go's `x/net/websocket` server does and
/// answers `101 Switching Protocols` with the negotiated subprotocol (its
/// name answered). Anything wrong is answered with its status.
pub(super) async fn accept(conn: &mut TcpStream, head: &Head, supported: &[&str]) -> Result<String, String> {
    if head.method != "GET" {
        let msg = format!("websocket: method {} is not GET", head.method);
        respond(conn, "405 Method Not Allowed", &[], &msg).await;
        return Err(msg);
    }
    if !head.values("Sec-WebSocket-Version").any(|v| v == "13") {
        let msg = "websocket: unsupported Sec-WebSocket-Version (13 is)";
        respond(conn, "400 Bad Request", &[("Sec-WebSocket-Version", "13")], msg).await;
        return Err(msg.into());
    }
    let Some(key) = head.values("Sec-WebSocket-Key").next().map(str::to_string) else {
        let msg = "websocket: missing Sec-WebSocket-Key";
        respond(conn, "400 Bad Request", &[], msg).await;
        return Err(msg.into());
    };
    let offered: Vec<&str> = head.values("Sec-WebSocket-Protocol").collect();
    let protocol = match negotiate(&offered, supported) {
        Ok(p) => p,
        Err(msg) => {
            respond(conn, "403 Forbidden", &[], &msg).await;
            return Err(msg);
        }
    };
    let mut reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if !protocol.is_empty() {
        reply.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    reply.push_str("\r\n");
    conn.write_all(reply.as_bytes()).await.map_err(|e| e.to_string())?;
    Ok(protocol)
}

/// A WebSocket connection split into numbered channels.
pub struct Connection {
    protocol: String,
    readers: Vec<Option<mpsc::Receiver<Bytes>>>,
    out: mpsc::Sender<Message>,
    shutdown: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
}

/// Writes one channel's data as messages of the connection.
#[derive(Clone)]
pub struct ChannelWriter {
    num: u8,
    base64: bool,
    out: mpsc::Sender<Message>,
}

impl ChannelWriter {
    /// `data` as messages of at most [`MAX_WRITE`] bytes; empty data is
    /// one message of the channel's prefix alone.
    pub async fn write(&self, mut data: Bytes) -> Result<(), Closed> {
        loop {
            let chunk = data.split_to(data.len().min(MAX_WRITE));
            self.out.send(encode(self.num, self.base64, &chunk)).await.map_err(|_| Closed)?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }
}

/// One message of channel `num`.
fn encode(num: u8, base64: bool, data: &[u8]) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + num));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::text(text)
    } else {
        let mut frame = Vec::with_capacity(1 + data.len());
        frame.push(num);
        frame.extend_from_slice(data);
        Message::binary(frame)
    }
}

/// A message's channel and payload (`None`: empty, or bad base64).
fn decode(base64: bool, message: &[u8]) -> Option<(u8, Bytes)> {
    let (&first, payload) = message.split_first()?;
    if base64 {
        let data = base64::engine::general_purpose::STANDARD.decode(payload).ok()?;
        Some((first.wrapping_sub(b'0'), Bytes::from(data)))
    } else {
        Some((first, Bytes::copy_from_slice(payload)))
    }
}

impl Connection {
    /// Serves the channel protocol on `io` (upgraded; `prefix` is what
    /// the client sent after its request head) with one channel per
    /// entry of `readable`: whether the client's data on it is read (the
    /// rest is dropped). `idle`: no message either way for this long
    /// ends the connection.
    pub async fn new<IO>(
        io: IO,
        prefix: Vec<u8>,
        protocol: &str,
        readable: &[bool],
        idle: Option<Duration>,
    ) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
        let ws = WebSocketStream::from_partially_read(io, prefix, Role::Server, Some(config)).await;
        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::channel(OUT_BUFFER);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for &r in readable {
            if r {
                let (tx, rx) = mpsc::channel(CHANNEL_BUFFER);
                senders.push(Some(tx));
                readers.push(Some(rx));
            } else {
                senders.push(None);
                readers.push(None);
            }
        }
        let activity = Activity::new();
        tokio::spawn(write_loop(sink, out_rx, shutdown_rx.clone(), activity.clone()));
        let base64 = is_base64(protocol);
        tokio::spawn(async move {
            read_loop(stream, senders, base64, idle, activity, shutdown_rx).await;
            let _ = done_tx.send(true);
        });
        Connection { protocol: protocol.to_string(), readers, out, shutdown: Arc::new(shutdown), done }
    }

    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The client's data on channel `num` (a readable one, once).
    pub fn reader(&mut self, num: u8) -> Option<Reader> {
        self.readers.get_mut(usize::from(num)).and_then(Option::take).map(Reader::Channel)
    }

    pub fn writer(&self, num: u8) -> Writer {
        Writer::WebSocket(ChannelWriter { num, base64: is_base64(&self.protocol), out: self.out.clone() })
    }

    /// Resolves once the client's side ended (closed, broke the
    /// protocol, went idle).
    pub fn gone(&self) -> Gone {
        let mut done = self.done.clone();
        let fut: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
            let _ = done.wait_for(|d| *d).await;
        });
        futures::FutureExt::shared(fut)
    }

    /// Sends a close message after what is queued; then waits (at most
    /// `wait`) for the client's side to end, so that it reads the rest.
    pub async fn close(&self, wait: Duration) {
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = self.out.send(Message::Close(Some(close))).await;
        let _ = tokio::time::timeout(wait, self.gone()).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// When a message last went either way, in milliseconds since the start.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: Instant::now(), last: Arc::default() }
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When the connection turns idle after `idle`.
    fn deadline(&self, idle: Duration) -> tokio::time::Instant {
        let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(last + idle)
    }
}

async fn write_loop<S>(
    mut sink: S,
    mut out: mpsc::Receiver<Message>,
    mut shutdown: watch::Receiver<bool>,
    activity: Activity,
) where
    S: futures::Sink<Message> + Unpin,
{
    loop {
        let message = tokio::select! {
            m = out.recv() => m,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(message) = message else { break };
        let last = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || last {
            break;
        }
        activity.touch();
    }
    let _ = sink.close().await;
}

async fn read_loop<S>(
    mut stream: S,
    mut channels: Vec<Option<mpsc::Sender<Bytes>>>,
    base64: bool,
    idle: Option<Duration>,
    activity: Activity,
    mut shutdown: watch::Receiver<bool>,
) where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let idle_at = idle.map(|i| activity.deadline(i));
        let next = tokio::select! {
            m = stream.next() => m,
            _ = shutdown.wait_for(|s| *s) => return,
            _ = async {
                match idle_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => futures::future::pending().await,
                }
            } => {
                if idle.is_some_and(|i| activity.deadline(i) <= tokio::time::Instant::now()) {
                    crated_plugin_api::tracing::debug!("stream server: websocket idle, closing");
                    return;
                }
                continue;
            }
        };
        let data = match next {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                crated_plugin_api::tracing::debug!("stream server: websocket: {e}");
                return;
            }
        };
        activity.touch();
        let Some((num, payload)) = decode(base64, &data) else { continue };
        let Some(slot) = channels.get_mut(usize::from(num)) else { continue };
        let Some(tx) = slot else { continue };
        let sent = tokio::select! {
            r = tx.send(payload) => r.is_ok(),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if !sent {
            // Nobody reads this channel any more: what follows is dropped.
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_as_wsstream() {
        let ours = REMOTECOMMAND_PROTOCOLS;
        assert_eq!(negotiate(&[], ours).unwrap(), "");
        assert_eq!(negotiate(&["v9.x", V4_BASE64_CHANNEL, CHANNEL], ours).unwrap(), V4_BASE64_CHANNEL);
        assert!(negotiate(&["v3.channel.k8s.io"], ours).is_err());
        assert!(negotiate(&[CHANNEL], PORTFORWARD_PROTOCOLS).is_err());
        assert!(is_v4(V4_BASE64_CHANNEL) && !is_v4(BASE64_CHANNEL) && is_base64(BASE64_CHANNEL));
    }

    #[test]
    fn channel_prefixes_both_codecs() {
        assert_eq!(encode(1, false, b"hi"), Message::binary(vec![1, b'h', b'i']));
        assert_eq!(encode(2, true, b"hi"), Message::text("2aGk="));
        assert_eq!(encode(3, true, b""), Message::text("3"));
        assert_eq!(decode(false, &[0, b'x']), Some((0, Bytes::from_static(b"x"))));
        assert_eq!(decode(true, b"0Zm9vCg=="), Some((0, Bytes::from_static(b"foo\n"))));
        assert_eq!(decode(true, b"0!!"), None);
        assert_eq!(decode(false, b""), None);
    }
}
