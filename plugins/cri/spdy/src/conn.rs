//! A SPDY/3.1 server connection over any byte stream: a reader task
//! decodes frames and routes them, a writer task encodes what the streams
//! and the reader send. The peer's streams arrive on a channel with their
//! headers; the server replies, reads, writes, half-closes or resets them.
//! PING is answered by the reader.
//!
//! Hostile input (a malformed or oversized frame, a stream id that breaks
//! the rules) ends the connection with GOAWAY(PROTOCOL_ERROR); a stream
//! beyond the concurrency limit is refused (RST_STREAM REFUSED_STREAM).
//! Memory per stream is bounded: data waits in a small channel, and the
//! reader stops reading while a stream's channel is full.
//!
//! Flow control: the peers this serves (Go's spdystream) neither send nor
//! honour WINDOW_UPDATE, so none is sent and windows are not enforced.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, watch},
};

use crate::{
    frame::{goaway, rst, Decoder, Encoder, Frame, Headers, Limits, FLAG_FIN},
    Error,
};

/// Limits of a [`Connection`].
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub limits: Limits,
    /// Streams open at once from the peer; more are refused.
    pub max_streams: usize,
    /// The largest DATA frame written; longer writes are split.
    pub max_write: usize,
    /// Data frames buffered per stream before the reader waits.
    pub stream_buffer: usize,
    /// No frame either way for this long ends the connection (GOAWAY).
    pub idle_timeout: Option<std::time::Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_streams: 100,
            max_write: 32 << 10,
            stream_buffer: 16,
            idle_timeout: None,
        }
    }
}

/// The connection's handle: the peer's new streams, and closing.
pub struct Connection {
    incoming: mpsc::Receiver<Stream>,
    out: mpsc::Sender<Frame>,
    shutdown: Arc<watch::Sender<bool>>,
    done: watch::Receiver<Option<Result<(), String>>>,
}

/// One stream the peer opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    reader: StreamReader,
    writer: StreamWriter,
}

/// The receiving half of a stream: data until the peer's FIN or reset.
pub struct StreamReader {
    id: u32,
    data: mpsc::Receiver<Bytes>,
    reset: Arc<AtomicBool>,
}

/// The sending half of a stream (cloneable).
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Frame>,
    max_write: usize,
}

impl Stream {
    /// The first value of a header, its name compared without case (Go
    /// canonicalises names, the wire has them lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// SYN_REPLY; Go's spdystream waits for it before using the stream.
    pub async fn reply(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        self.writer.reply(headers, fin).await
    }

    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }

    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }
}

/// The first value of `name` in `headers`, compared without case.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next chunk; `None` once the peer half-closed, reset the stream,
    /// or the connection ended.
    pub async fn read(&mut self) -> Option<Bytes> {
        self.data.recv().await
    }

    /// Whether the stream ended by the peer's RST_STREAM.
    pub fn was_reset(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    async fn send(&self, frame: Frame) -> Result<(), Error> {
        self.out.send(frame).await.map_err(|_| Error::Closed)
    }

    pub async fn reply(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        self.send(Frame::SynReply { stream_id: self.id, flags: if fin { FLAG_FIN } else { 0 }, headers }).await
    }

    /// Sends `data` in DATA frames of at most the configured size.
    pub async fn write(&self, mut data: Bytes) -> Result<(), Error> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(self.max_write));
            self.send(Frame::Data { stream_id: self.id, flags: 0, data: chunk }).await?;
        }
        Ok(())
    }

    /// Half-closes: an empty DATA frame with FIN.
    pub async fn close(&self) -> Result<(), Error> {
        self.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }).await
    }

    pub async fn reset(&self, status: u32) -> Result<(), Error> {
        self.send(Frame::RstStream { stream_id: self.id, status }).await
    }
}

impl Connection {
    /// Serves SPDY on `io` with tasks spawned on the current runtime.
    pub fn new<IO>(io: IO, config: Config) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(config.max_streams.max(1));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shutdown = Arc::new(shutdown);
        let (done_tx, done) = watch::channel(None);
        let activity = Activity::new();
        tokio::spawn(write_loop(write, out_rx, shutdown_rx.clone(), activity.clone()));
        if let Some(idle) = config.idle_timeout {
            tokio::spawn(watch_idle(idle, activity.clone(), out_tx.clone(), shutdown.clone()));
        }
        let reader = Reader {
            activity,
            config,
            out: out_tx.clone(),
            incoming: in_tx,
            streams: HashMap::new(),
            last_peer_id: 0,
            decoder: Decoder::new(config.limits),
        };
        let end = shutdown.clone();
        tokio::spawn(async move {
            let result = reader.run(read, shutdown_rx).await;
            // The writer flushes what is queued (a GOAWAY after an error)
            // and closes.
            let _ = end.send(true);
            let _ = done_tx.send(Some(result.map_err(|e| e.to_string())));
        });
        Connection { incoming: in_rx, out: out_tx, shutdown, done }
    }

    /// The next stream the peer opens; `None` when the connection ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Sends GOAWAY(OK) and ends the connection once queued frames are out.
    pub async fn close(&self) {
        let _ = self.out.send(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }).await;
        let _ = self.shutdown.send(true);
    }

    /// Waits until the reading side ended: the peer closed, broke the
    /// protocol (the error), or [`Connection::close`] was called.
    pub async fn closed(&self) -> Result<(), String> {
        let mut done = self.done.clone();
        loop {
            if let Some(r) = done.borrow_and_update().clone() {
                return r;
            }
            if done.changed().await.is_err() {
                return Err("the connection's reader is gone".into());
            }
        }
    }
}

impl Connection {
    /// A future resolving when the reading side ended, independent of
    /// the handle's lifetime.
    pub fn closed_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            let _ = done.wait_for(|d| d.is_some()).await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// When a frame last went either way, in milliseconds since the start.
#[derive(Clone)]
struct Activity {
    start: std::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: std::time::Instant::now(), last: Arc::default() }
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Ends the connection once it has been idle for `timeout`.
async fn watch_idle(
    timeout: std::time::Duration,
    activity: Activity,
    out: mpsc::Sender<Frame>,
    shutdown: Arc<watch::Sender<bool>>,
) {
    let mut ended = shutdown.subscribe();
    loop {
        let idle = activity.idle();
        if idle >= timeout {
            let _ = out.send(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }).await;
            let _ = shutdown.send(true);
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(timeout - idle) => {}
            _ = ended.wait_for(|s| *s) => return,
        }
    }
}

async fn write_loop<W: AsyncWrite>(
    write: W,
    mut frames: mpsc::Receiver<Frame>,
    mut shutdown: watch::Receiver<bool>,
    activity: Activity,
) {
    let mut write = std::pin::pin!(write);
    let mut encoder = Encoder::new();
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::select! {
            f = frames.recv() => f,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(frame) = frame else { break };
        // What else is queued goes out in the same write.
        let mut next = Some(frame);
        while let Some(f) = next {
            if encoder.encode(&f, &mut buf).is_err() {
                break;
            }
            next = frames.try_recv().ok();
        }
        if write.write_all(&buf).await.is_err() || write.flush().await.is_err() {
            return;
        }
        activity.touch();
        buf.clear();
    }
    // Shut down: flush what is already queued, then close our side.
    while let Ok(f) = frames.try_recv() {
        let _ = encoder.encode(&f, &mut buf);
    }
    let _ = write.write_all(&buf).await;
    let _ = write.shutdown().await;
}

struct PeerStream {
    data: Option<mpsc::Sender<Bytes>>,
    reset: Arc<AtomicBool>,
}

struct Reader {
    activity: Activity,
    config: Config,
    out: mpsc::Sender<Frame>,
    incoming: mpsc::Sender<Stream>,
    streams: HashMap<u32, PeerStream>,
    last_peer_id: u32,
    decoder: Decoder,
}

impl Reader {
    async fn run<R: AsyncRead>(mut self, read: R, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let mut read = std::pin::pin!(read);
        let mut buf = BytesMut::with_capacity(16 << 10);
        loop {
            loop {
                match self.decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        self.activity.touch();
                        if let Err(e) = self.handle(frame).await {
                            self.fail().await;
                            return Err(e);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.fail().await;
                        return Err(e);
                    }
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 << 10);
            }
            let n = tokio::select! {
                n = read.read_buf(&mut buf) => n?,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            if n == 0 {
                // The peer closed: every stream sees its end.
                self.streams.clear();
                return Ok(());
            }
        }
    }

    /// GOAWAY(PROTOCOL_ERROR) and the end of the connection.
    async fn fail(&mut self) {
        self.streams.clear();
        let _ = self
            .out
            .send(Frame::GoAway { last_good_stream_id: self.last_peer_id, status: goaway::PROTOCOL_ERROR })
            .await;
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), Error> {
        match frame {
            Frame::SynStream { stream_id, flags, headers, .. } => {
                // Client streams are odd and increase (SPDY/3 2.3.2).
                if stream_id % 2 == 0 || stream_id <= self.last_peer_id {
                    if self.streams.contains_key(&stream_id) {
                        self.rst(stream_id, rst::STREAM_IN_USE).await;
                        return Ok(());
                    }
                    return Err(Error::Protocol(format!(
                        "SYN_STREAM with stream id {stream_id} after {}",
                        self.last_peer_id
                    )));
                }
                self.last_peer_id = stream_id;
                self.streams.retain(|_, s| s.data.as_ref().is_some_and(|d| !d.is_closed()));
                if self.streams.len() >= self.config.max_streams {
                    self.rst(stream_id, rst::REFUSED_STREAM).await;
                    return Ok(());
                }
                let (tx, rx) = mpsc::channel(self.config.stream_buffer.max(1));
                let reset = Arc::new(AtomicBool::new(false));
                let stream = Stream {
                    id: stream_id,
                    headers,
                    reader: StreamReader { id: stream_id, data: rx, reset: reset.clone() },
                    writer: StreamWriter { id: stream_id, out: self.out.clone(), max_write: self.config.max_write },
                };
                let fin = flags & FLAG_FIN != 0;
                self.streams.insert(stream_id, PeerStream { data: (!fin).then_some(tx), reset });
                if self.incoming.send(stream).await.is_err() {
                    // Nobody accepts streams any more.
                    self.rst(stream_id, rst::REFUSED_STREAM).await;
                }
            }
            Frame::Data { stream_id, flags, data } => {
                let Some(s) = self.streams.get_mut(&stream_id) else {
                    self.rst(stream_id, rst::INVALID_STREAM).await;
                    return Ok(());
                };
                let Some(tx) = s.data.clone() else {
                    self.rst(stream_id, rst::STREAM_ALREADY_CLOSED).await;
                    return Ok(());
                };
                if !data.is_empty() && tx.send(data).await.is_err() {
                    // The server dropped its reader: the data goes nowhere.
                    s.data = None;
                }
                if flags & FLAG_FIN != 0 {
                    self.streams.remove(&stream_id);
                }
            }
            Frame::Headers { stream_id, flags, .. } => {
                if flags & FLAG_FIN != 0 {
                    self.streams.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(s) = self.streams.remove(&stream_id) {
                    s.reset.store(true, Ordering::Relaxed);
                }
            }
            Frame::Ping { id } => {
                // Only the peer's own (odd) pings are answered; an even one
                // would be the answer to ours, and we send none.
                if id % 2 == 1 {
                    let _ = self.out.send(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => {
                // The peer opens no more streams; those open go on.
            }
            Frame::SynReply { stream_id, .. } => {
                return Err(Error::Protocol(format!(
                    "SYN_REPLY for stream {stream_id}, which this server never opened"
                )));
            }
            Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
        }
        Ok(())
    }

    async fn rst(&self, stream_id: u32, status: u32) {
        let _ = self.out.send(Frame::RstStream { stream_id, status }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// The client side of a test: raw frames over a duplex pipe.
    struct Client {
        io: DuplexStream,
        enc: Encoder,
        dec: Decoder,
        buf: BytesMut,
    }

    impl Client {
        fn start(config: Config) -> (Client, Connection) {
            let (a, b) = tokio::io::duplex(1 << 20);
            let client =
                Client { io: a, enc: Encoder::new(), dec: Decoder::new(Limits::default()), buf: BytesMut::new() };
            (client, Connection::new(b, config))
        }

        async fn send(&mut self, f: Frame) {
            let mut b = BytesMut::new();
            self.enc.encode(&f, &mut b).unwrap();
            self.io.write_all(&b).await.unwrap();
        }

        async fn raw(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        /// The next frame, or `None` at EOF.
        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }

        async fn syn(&mut self, id: u32, headers: &[(&str, &str)], flags: u8) {
            let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            self.send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags, headers }).await;
        }
    }

    #[tokio::test]
    async fn streams_reply_read_write_close_and_pings() {
        let (mut c, mut conn) = Client::start(Config::default());
        c.syn(1, &[("streamtype", "stdin")], 0).await;
        let s = conn.accept().await.unwrap();
        assert_eq!((s.id, s.header("streamType")), (1, Some("stdin")));
        s.reply(vec![], false).await.unwrap();
        assert_eq!(c.recv().await, Some(Frame::SynReply { stream_id: 1, flags: 0, headers: vec![] }));

        c.send(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"abc") }).await;
        c.send(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"def") }).await;
        let (mut r, w) = s.split();
        assert_eq!(r.read().await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(r.read().await.as_deref(), Some(&b"def"[..]));
        assert_eq!(r.read().await, None, "FIN ends the reading half");

        // Writes are split at max_write.
        w.write(Bytes::from(vec![7u8; 40 << 10])).await.unwrap();
        let Some(Frame::Data { data, .. }) = c.recv().await else { panic!() };
        assert_eq!(data.len(), 32 << 10);
        let Some(Frame::Data { data, .. }) = c.recv().await else { panic!() };
        assert_eq!(data.len(), 8 << 10);
        w.close().await.unwrap();
        assert_eq!(c.recv().await, Some(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() }));

        c.send(Frame::Ping { id: 5 }).await;
        assert_eq!(c.recv().await, Some(Frame::Ping { id: 5 }));

        // A stream opened with FIN reads nothing; a reset ends the read.
        c.syn(3, &[], FLAG_FIN).await;
        let (mut r3, _) = conn.accept().await.unwrap().split();
        assert_eq!(r3.read().await, None);
        c.syn(5, &[], 0).await;
        let (mut r5, w5) = conn.accept().await.unwrap().split();
        c.send(Frame::RstStream { stream_id: 5, status: rst::CANCEL }).await;
        assert_eq!(r5.read().await, None);
        assert!(r5.was_reset());
        w5.reset(rst::CANCEL).await.unwrap();
        assert_eq!(c.recv().await, Some(Frame::RstStream { stream_id: 5, status: rst::CANCEL }));

        // Data for a stream that does not exist is answered, not fatal.
        c.send(Frame::Data { stream_id: 99, flags: 0, data: Bytes::from_static(b"x") }).await;
        assert_eq!(c.recv().await, Some(Frame::RstStream { stream_id: 99, status: rst::INVALID_STREAM }));

        conn.close().await;
        assert_eq!(c.recv().await, Some(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }));
        assert_eq!(c.recv().await, None);
        assert_eq!(conn.closed().await, Ok(()));
    }

    #[tokio::test]
    async fn the_peer_closing_ends_every_stream() {
        let (mut c, mut conn) = Client::start(Config::default());
        c.syn(1, &[], 0).await;
        let (mut r, _) = conn.accept().await.unwrap().split();
        drop(c);
        assert_eq!(r.read().await, None);
        assert!(conn.accept().await.is_none());
        assert_eq!(conn.closed().await, Ok(()));
    }

    async fn expect_protocol_error(c: &mut Client, conn: &Connection) {
        loop {
            match c.recv().await {
                Some(Frame::GoAway { status, .. }) => {
                    assert_eq!(status, goaway::PROTOCOL_ERROR);
                    break;
                }
                Some(_) => continue,
                None => panic!("closed without GOAWAY"),
            }
        }
        assert_eq!(c.recv().await, None, "the connection is closed after GOAWAY");
        assert!(conn.closed().await.is_err());
    }

    #[tokio::test]
    async fn garbage_ends_the_connection_with_goaway() {
        let (mut c, conn) = Client::start(Config::default());
        c.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        expect_protocol_error(&mut c, &conn).await;
    }

    #[tokio::test]
    async fn an_oversized_frame_ends_the_connection() {
        let (mut c, conn) = Client::start(Config::default());
        c.raw(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]).await;
        expect_protocol_error(&mut c, &conn).await;
    }

    #[tokio::test]
    async fn stream_ids_must_be_odd_and_increasing() {
        let (mut c, mut conn) = Client::start(Config::default());
        c.syn(3, &[], 0).await;
        let _s = conn.accept().await.unwrap();
        c.syn(3, &[], 0).await;
        assert_eq!(c.recv().await, Some(Frame::RstStream { stream_id: 3, status: rst::STREAM_IN_USE }));
        c.syn(1, &[], 0).await;
        expect_protocol_error(&mut c, &conn).await;

        let (mut c, conn) = Client::start(Config::default());
        c.syn(2, &[], 0).await;
        expect_protocol_error(&mut c, &conn).await;
    }

    #[tokio::test]
    async fn too_many_streams_are_refused() {
        let (mut c, mut conn) = Client::start(Config { max_streams: 2, ..Config::default() });
        c.syn(1, &[], 0).await;
        c.syn(3, &[], 0).await;
        c.syn(5, &[], 0).await;
        let a = conn.accept().await.unwrap();
        let _b = conn.accept().await.unwrap();
        assert_eq!(c.recv().await, Some(Frame::RstStream { stream_id: 5, status: rst::REFUSED_STREAM }));
        // A stream whose reader is gone frees its place.
        drop(a);
        c.syn(7, &[], 0).await;
        assert_eq!(conn.accept().await.unwrap().id, 7);
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_the_connection_not_memory() {
        let (mut c, mut conn) = Client::start(Config { stream_buffer: 2, ..Config::default() });
        c.syn(1, &[], 0).await;
        let (mut r, _) = conn.accept().await.unwrap().split();
        for _ in 0..10 {
            c.send(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from(vec![1u8; 1000]) }).await;
        }
        c.send(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() }).await;
        let mut total = 0;
        while let Some(d) = r.read().await {
            total += d.len();
        }
        assert_eq!(total, 10_000);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let idle = std::time::Duration::from_millis(200);
        let (mut c, mut conn) = Client::start(Config { idle_timeout: Some(idle), ..Config::default() });
        // Activity keeps it open past the timeout.
        c.syn(1, &[], 0).await;
        let _s = conn.accept().await.unwrap();
        for id in [1, 3, 5] {
            tokio::time::sleep(idle / 2).await;
            c.send(Frame::Ping { id }).await;
            assert_eq!(c.recv().await, Some(Frame::Ping { id }));
        }
        assert_eq!(c.recv().await, Some(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }));
        assert_eq!(c.recv().await, None);
        assert_eq!(conn.closed().await, Ok(()));
    }
}
