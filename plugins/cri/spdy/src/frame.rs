//! SPDY/3.1 frames on the wire: the eight-byte frame header (control bit,
//! version and type, or stream id; flags; 24-bit length), each control
//! frame's body, and the name/value header blocks compressed with one zlib
//! stream per direction, primed with the SPDY/3 dictionary and flushed
//! (sync) after every block.
//!
//! Decoding is bounded: a frame longer than the codec's limit is refused
//! from its header, before its body is buffered, and a header block may
//! inflate to no more than its own limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::Error;

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// The SPDY/3 header compression dictionary (from the SPDY/3 draft).
pub const DICTIONARY: &[u8] = include_bytes!("dictionary.bin");

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// A header block's name/value pairs in order; a value holding several
/// values NUL-separated on the wire is one pair per value here.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// Entries as (flags, id, value).
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

/// Limits of a [`Decoder`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest frame body accepted (the wire allows 2^24 - 1).
    pub max_frame: usize,
    /// The most a header block may inflate to.
    pub max_header_block: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_frame: 1 << 20, max_header_block: 64 << 10 }
    }
}

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

fn malformed(kind: &'static str, why: impl Into<String>) -> Error {
    Error::Malformed(kind, why.into())
}

/// Reads frames from bytes, holding the inflate side of the connection.
pub struct Decoder {
    limits: Limits,
    inflate: Decompress,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, inflate: Decompress::new(true) }
    }

    /// The next whole frame at the front of `buf`, consumed; `None` while
    /// more bytes are needed. Unknown control frame types are skipped
    /// (SPDY/3 says to ignore them) and answer `None` with `buf` advanced.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        loop {
            if buf.len() < 8 {
                return Ok(None);
            }
            let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
            if len > self.limits.max_frame {
                return Err(Error::FrameTooLarge(len, self.limits.max_frame));
            }
            if buf.len() < 8 + len {
                // Room for the rest of the frame, no more than the limit.
                buf.reserve(8 + len - buf.len());
                return Ok(None);
            }
            let head = buf.split_to(8);
            let mut body = buf.split_to(len).freeze();
            let flags = head[4];
            if head[0] & 0x80 == 0 {
                let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(malformed("DATA", "stream id 0"));
                }
                return Ok(Some(Frame::Data { stream_id, flags, data: body }));
            }
            let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
            if version != VERSION {
                return Err(Error::Version(version));
            }
            let kind = u16::from_be_bytes([head[2], head[3]]);
            let frame = match kind {
                SYN_STREAM => {
                    need(&body, 10, "SYN_STREAM")?;
                    let stream_id = body.get_u32() & STREAM_ID_MASK;
                    let associated_to = body.get_u32() & STREAM_ID_MASK;
                    let priority = body.get_u8() >> 5;
                    let _slot = body.get_u8();
                    let headers = self.header_block(&body)?;
                    Frame::SynStream { stream_id, associated_to, priority, flags, headers }
                }
                SYN_REPLY => {
                    need(&body, 4, "SYN_REPLY")?;
                    let stream_id = body.get_u32() & STREAM_ID_MASK;
                    let headers = self.header_block(&body)?;
                    Frame::SynReply { stream_id, flags, headers }
                }
                HEADERS => {
                    need(&body, 4, "HEADERS")?;
                    let stream_id = body.get_u32() & STREAM_ID_MASK;
                    let headers = self.header_block(&body)?;
                    Frame::Headers { stream_id, flags, headers }
                }
                RST_STREAM => {
                    exact(&body, 8, "RST_STREAM")?;
                    Frame::RstStream { stream_id: body.get_u32() & STREAM_ID_MASK, status: body.get_u32() }
                }
                SETTINGS => {
                    need(&body, 4, "SETTINGS")?;
                    let n = body.get_u32() as usize;
                    if body.len() != n.saturating_mul(8) {
                        return Err(malformed("SETTINGS", format!("{n} entries in {} bytes", body.len())));
                    }
                    let entries = (0..n)
                        .map(|_| {
                            let word = body.get_u32();
                            ((word >> 24) as u8, word & 0x00ff_ffff, body.get_u32())
                        })
                        .collect();
                    Frame::Settings { flags, entries }
                }
                PING => {
                    exact(&body, 4, "PING")?;
                    Frame::Ping { id: body.get_u32() }
                }
                GOAWAY => {
                    exact(&body, 8, "GOAWAY")?;
                    Frame::GoAway { last_good_stream_id: body.get_u32() & STREAM_ID_MASK, status: body.get_u32() }
                }
                WINDOW_UPDATE => {
                    exact(&body, 8, "WINDOW_UPDATE")?;
                    Frame::WindowUpdate {
                        stream_id: body.get_u32() & STREAM_ID_MASK,
                        delta: body.get_u32() & STREAM_ID_MASK,
                    }
                }
                _ => continue,
            };
            return Ok(Some(frame));
        }
    }

    /// Inflates one header block (the connection's zlib stream goes on)
    /// and parses its pairs.
    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, Error> {
        let max = self.limits.max_header_block;
        let mut out: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut input = compressed;
        loop {
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self.inflate.decompress(input, &mut chunk, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            let made = (self.inflate.total_out() - before_out) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => return Err(Error::HeaderBlock("the zlib stream ended".into())),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::HeaderBlock(format!("dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(Error::HeaderBlock(e.to_string())),
            }
            if out.len() + made > max {
                return Err(Error::HeaderBlock(format!("inflates to more than {max} bytes")));
            }
            out.extend_from_slice(&chunk[..made]);
            if input.is_empty() && made < chunk.len() {
                break;
            }
            if used == 0 && made == 0 {
                return Err(Error::HeaderBlock("corrupt compressed data".into()));
            }
        }
        parse_pairs(&out)
    }
}

fn need(body: &Bytes, n: usize, kind: &'static str) -> Result<(), Error> {
    if body.len() < n {
        return Err(malformed(kind, format!("{} bytes, at least {n} needed", body.len())));
    }
    Ok(())
}

fn exact(body: &Bytes, n: usize, kind: &'static str) -> Result<(), Error> {
    if body.len() != n {
        return Err(malformed(kind, format!("{} bytes, {n} expected", body.len())));
    }
    Ok(())
}

fn parse_pairs(mut b: &[u8]) -> Result<Headers, Error> {
    let bad = |why: &str| Error::HeaderBlock(why.to_string());
    let take = |b: &mut &[u8]| -> Result<Vec<u8>, Error> {
        if b.len() < 4 {
            return Err(bad("truncated length"));
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(bad("truncated string"));
        }
        let s = b[..n].to_vec();
        b.advance(n);
        Ok(s)
    };
    if b.len() < 4 {
        return Err(bad("no pair count"));
    }
    let count = b.get_u32() as usize;
    // Each pair takes at least 8 bytes: a count beyond that is a lie.
    if count > b.len() / 8 {
        return Err(bad("more pairs than bytes"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = String::from_utf8(take(&mut b)?).map_err(|_| bad("a name is not UTF-8"))?;
        if name.is_empty() {
            return Err(bad("an empty name"));
        }
        let value = String::from_utf8(take(&mut b)?).map_err(|_| bad("a value is not UTF-8"))?;
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    if !b.is_empty() {
        return Err(bad("bytes after the last pair"));
    }
    Ok(headers)
}

/// Writes frames, holding the deflate side of the connection.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(DICTIONARY).expect("a fresh deflate stream takes a dictionary");
        Encoder { deflate }
    }

    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), Error> {
        match frame {
            Frame::Data { stream_id, flags, data } => {
                if data.len() > 0x00ff_ffff {
                    return Err(Error::FrameTooLarge(data.len(), 0x00ff_ffff));
                }
                out.put_u32(stream_id & STREAM_ID_MASK);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream { stream_id, associated_to, priority, flags, headers } => {
                let mut body = BytesMut::new();
                body.put_u32(*stream_id);
                body.put_u32(*associated_to);
                body.put_u8(priority << 5);
                body.put_u8(0);
                self.header_block(headers, &mut body)?;
                control(out, SYN_STREAM, *flags, &body);
            }
            Frame::SynReply { stream_id, flags, headers } => {
                let mut body = BytesMut::new();
                body.put_u32(*stream_id);
                self.header_block(headers, &mut body)?;
                control(out, SYN_REPLY, *flags, &body);
            }
            Frame::Headers { stream_id, flags, headers } => {
                let mut body = BytesMut::new();
                body.put_u32(*stream_id);
                self.header_block(headers, &mut body)?;
                control(out, HEADERS, *flags, &body);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, RST_STREAM, 0, &[stream_id.to_be_bytes(), status.to_be_bytes()].concat())
            }
            Frame::Settings { flags, entries } => {
                let mut body = BytesMut::new();
                body.put_u32(entries.len() as u32);
                for (f, id, value) in entries {
                    body.put_u32((u32::from(*f) << 24) | (id & 0x00ff_ffff));
                    body.put_u32(*value);
                }
                control(out, SETTINGS, *flags, &body);
            }
            Frame::Ping { id } => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good_stream_id, status } => {
                control(out, GOAWAY, 0, &[last_good_stream_id.to_be_bytes(), status.to_be_bytes()].concat())
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, WINDOW_UPDATE, 0, &[stream_id.to_be_bytes(), delta.to_be_bytes()].concat())
            }
        }
        Ok(())
    }

    fn header_block(&mut self, headers: &Headers, out: &mut BytesMut) -> Result<(), Error> {
        // Several values of one name travel as one NUL-joined value.
        let mut merged: Vec<(String, Vec<&str>)> = Vec::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => merged.push((name, vec![value])),
            }
        }
        let mut plain = BytesMut::new();
        plain.put_u32(merged.len() as u32);
        for (name, values) in &merged {
            let value = values.join("\0");
            plain.put_u32(name.len() as u32);
            plain.extend_from_slice(name.as_bytes());
            plain.put_u32(value.len() as u32);
            plain.extend_from_slice(value.as_bytes());
        }
        let mut input = &plain[..];
        let mut chunk = [0u8; 4096];
        loop {
            let (before_in, before_out) = (self.deflate.total_in(), self.deflate.total_out());
            self.deflate
                .compress(input, &mut chunk, FlushCompress::Sync)
                .map_err(|e| Error::HeaderBlock(format!("compress: {e}")))?;
            let used = (self.deflate.total_in() - before_in) as usize;
            let made = (self.deflate.total_out() - before_out) as usize;
            input = &input[used..];
            out.extend_from_slice(&chunk[..made]);
            if input.is_empty() && made < chunk.len() {
                return Ok(());
            }
        }
    }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, body: &[u8]) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | body.len() as u32);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        for f in frames {
            enc.encode(f, &mut buf).unwrap();
        }
        let mut out = Vec::new();
        // Byte by byte: partial frames wait for the rest.
        let mut feed = BytesMut::new();
        for b in buf.iter() {
            feed.put_u8(*b);
            while let Some(f) = dec.decode(&mut feed).unwrap() {
                out.push(f);
            }
        }
        assert!(feed.is_empty());
        out
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "stdout"), ("port", "80"), ("x", "a"), ("x", "b")]),
            },
            Frame::SynReply { stream_id: 1, flags: 0, headers: vec![] },
            Frame::Headers { stream_id: 3, flags: FLAG_FIN, headers: h(&[("k", "v")]) },
            Frame::RstStream { stream_id: 5, status: rst::CANCEL },
            Frame::Settings { flags: 1, entries: vec![(1, 4, 100), (0, 7, 65536)] },
            Frame::Ping { id: 7 },
            Frame::GoAway { last_good_stream_id: 9, status: goaway::OK },
            Frame::WindowUpdate { stream_id: 1, delta: 1000 },
            Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"hello") },
            Frame::Data { stream_id: 3, flags: 0, data: Bytes::new() },
            // The second block reuses the compression context.
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                flags: FLAG_UNIDIRECTIONAL,
                headers: h(&[("streamtype", "stdout"), ("port", "80")]),
            },
        ];
        assert_eq!(round_trip(&frames), frames);
    }

    #[test]
    fn a_large_header_block_round_trips() {
        let big = "v".repeat(20000);
        let frames = vec![Frame::SynReply { stream_id: 1, flags: 0, headers: h(&[("big", &big)]) }];
        assert_eq!(round_trip(&frames), frames);
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut buf = BytesMut::new();
        control(&mut buf, 10, 0, b"credential");
        Encoder::new().encode(&Frame::Ping { id: 1 }, &mut buf).unwrap();
        assert_eq!(Decoder::new(Limits::default()).decode(&mut buf).unwrap(), Some(Frame::Ping { id: 1 }));
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        let err = Decoder::new(Limits::default()).decode(&mut buf).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge(0xff_ffff, _)), "{err}");
        assert!(buf.capacity() < 1 << 20, "nothing was reserved for the body");
    }

    #[test]
    fn hostile_frames_are_errors() {
        let cases: Vec<Vec<u8>> = vec![
            // Version 2.
            vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
            // PING of 3 bytes.
            vec![0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1],
            // SETTINGS claiming 1000 entries in 4 bytes.
            vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 3, 0xe8],
            // SYN_STREAM with a header block that is not zlib.
            vec![0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            // DATA on stream 0.
            vec![0, 0, 0, 0, 0, 0, 0, 1, 9],
        ];
        for case in cases {
            let mut buf = BytesMut::from(&case[..]);
            assert!(Decoder::new(Limits::default()).decode(&mut buf).is_err(), "{case:?} was accepted");
        }
    }

    #[test]
    fn a_header_bomb_is_bounded() {
        // 1 MB of one value compresses to a few KB; the limit is 64 KiB.
        let big = "a".repeat(1 << 20);
        let mut buf = BytesMut::new();
        Encoder::new()
            .encode(
                &Frame::SynStream { stream_id: 1, associated_to: 0, priority: 0, flags: 0, headers: h(&[("x", &big)]) },
                &mut buf,
            )
            .unwrap();
        assert!(buf.len() < 1 << 16, "{}", buf.len());
        let err = Decoder::new(Limits::default()).decode(&mut buf).unwrap_err();
        assert!(err.to_string().contains("inflates to more than"), "{err}");
    }

    #[test]
    fn lying_pair_counts_are_refused() {
        let mut plain = BytesMut::new();
        plain.put_u32(u32::MAX);
        assert!(parse_pairs(&plain).is_err());
        let mut plain = BytesMut::new();
        plain.put_u32(1);
        plain.put_u32(100);
        plain.put_u32(0);
        assert!(parse_pairs(&plain).is_err());
        let mut plain = BytesMut::new();
        plain.put_u32(1);
        plain.put_u32(0);
        plain.put_u32(0);
        assert!(parse_pairs(&plain).unwrap_err().to_string().contains("empty name"));
    }

    proptest::proptest! {
        /// Any bytes: frames, a clean error or a wait for more; no panic,
        /// and never a buffer beyond the frame limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let mut dec = Decoder::new(Limits { max_frame: 4096, max_header_block: 4096 });
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
            proptest::prop_assert!(buf.capacity() <= 8 + 4096 + bytes.len());
        }

        /// Valid control frame headers with arbitrary bodies.
        #[test]
        fn arbitrary_control_bodies_never_panic(kind in 0u16..12, flags in proptest::num::u8::ANY,
                                                body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut buf = BytesMut::new();
            control(&mut buf, kind, flags, &body);
            let mut dec = Decoder::new(Limits::default());
            let _ = dec.decode(&mut buf);
        }
    }
}
