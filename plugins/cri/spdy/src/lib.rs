//! A small SPDY/3.1 server library, for the CRI stream server (exec,
//! attach and port-forward as Kubernetes clients speak them over Go's
//! spdystream): [`frame`] is the codec, [`conn`] a connection over any
//! byte stream that yields the peer's streams.
//!
//! Only what a server of those clients needs: streams are opened by the
//! peer, never by us; no server push; no flow control (spdystream has
//! none); no CREDENTIAL frames.

pub mod conn;
pub mod frame;

pub use conn::{header, Config, Connection, Stream, StreamReader, StreamWriter};
pub use frame::{Frame, Headers, Limits};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spdy: a frame of {0} bytes is longer than the limit of {1}")]
    FrameTooLarge(usize, usize),
    #[error("spdy: unsupported version {0}")]
    Version(u16),
    #[error("spdy: malformed {0} frame: {1}")]
    Malformed(&'static str, String),
    #[error("spdy: header block: {0}")]
    HeaderBlock(String),
    #[error("spdy: protocol error: {0}")]
    Protocol(String),
    #[error("spdy: {0}")]
    Io(#[from] std::io::Error),
    #[error("spdy: the connection is closed")]
    Closed,
}
