//! One client stream as the protocol code sees it, whatever carries it:
//! a SPDY stream (its own half-close and reset) or a channel of a
//! WebSocket connection (messages prefixed with the channel's number, no
//! half-close). The remotecommand and portforward logic, the exec backend
//! and attach read and write these, so both transports share them.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::websocket;

/// The connection under the stream is gone.
#[derive(Debug, thiserror::Error)]
#[error("the client's connection is closed")]
pub struct Closed;

/// What the client sends on one stream.
pub enum Reader {
    Spdy(crated_spdy::StreamReader),
    /// A WebSocket channel's messages (decoded); ends with the connection.
    Channel(mpsc::Receiver<Bytes>),
}

impl Reader {
    /// The next chunk; `None` once the client is done with the stream
    /// (its FIN or reset on SPDY, the connection's end on a WebSocket).
    pub async fn read(&mut self) -> Option<Bytes> {
        match self {
            Reader::Spdy(r) => r.read().await,
            Reader::Channel(r) => r.recv().await,
        }
    }
}

/// What goes to the client on one stream (cloneable).
#[derive(Clone)]
pub enum Writer {
    Spdy(crated_spdy::StreamWriter),
    WebSocket(websocket::ChannelWriter),
}

impl Writer {
    pub async fn write(&self, data: Bytes) -> Result<(), Closed> {
        match self {
            Writer::Spdy(w) => w.write(data).await.map_err(|_| Closed),
            Writer::WebSocket(w) => w.write(data).await,
        }
    }

    /// The end of what we send: FIN on SPDY. A WebSocket channel cannot
    /// be half-closed (the channel protocols have no such message): the
    /// client learns the end from the connection's close.
    pub async fn close(&self) -> Result<(), Closed> {
        match self {
            Writer::Spdy(w) => w.close().await.map_err(|_| Closed),
            Writer::WebSocket(_) => Ok(()),
        }
    }

    /// Aborts the stream (SPDY RST_STREAM CANCEL); nothing on a WebSocket.
    pub async fn cancel(&self) {
        if let Writer::Spdy(w) = self {
            let _ = w.reset(crated_spdy::frame::rst::CANCEL).await;
        }
    }

    /// Whether [`Writer::close`] tells the client anything.
    pub fn half_closes(&self) -> bool {
        matches!(self, Writer::Spdy(_))
    }
}
