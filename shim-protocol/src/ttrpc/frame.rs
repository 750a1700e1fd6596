//! Reading and writing ttrpc frames.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload ttrpc accepts (4 MiB), on both sides.
pub const MAX_MESSAGE_SIZE: usize = 4 << 20;
const HEADER_LEN: usize = 10;

/// A frame's type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    Request = 1,
    Response = 2,
    Data = 3,
}

/// One frame as read: the header's fields and the payload.
#[derive(Debug)]
pub(crate) struct Frame {
    pub stream_id: u32,
    pub kind: u8,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("ttrpc connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame over the limit: its payload is skipped, so the connection
    /// stays in step and the caller can answer this stream with an error.
    #[error("ttrpc message of {len} bytes exceeds the limit of {MAX_MESSAGE_SIZE}")]
    TooLarge { stream_id: u32, len: usize },
}

/// Reads the next frame; `Ok(None)` at a clean end of the connection.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let stream_id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let kind = header[8];
    if len > MAX_MESSAGE_SIZE {
        tokio::io::copy(&mut r.take(len as u64), &mut tokio::io::sink()).await?;
        return Err(FrameError::TooLarge { stream_id, len });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { stream_id, kind, payload }))
}

/// Encodes a frame into one buffer, so that it is written with one call and
/// frames from concurrent writers never interleave.
pub(crate) fn encode_frame(stream_id: u32, kind: MessageType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

pub(crate) async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await
}
