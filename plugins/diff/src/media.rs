//! Layer media types: which decompressor a layer needs, which compressor a
//! diff asks for.

use std::io::{BufReader, Read, Write};

/// The uncompressed OCI layer: what Apply returns and what it hashes.
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
const NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The label containerd puts on a compressed diff: its uncompressed digest.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer of `media_type`; `None` for a type no
    /// processor handles.
    pub fn of_layer(media_type: &str) -> Option<Compression> {
        match media_type {
            LAYER | NONDIST => Some(Compression::None),
            LAYER_GZIP | NONDIST_GZIP | DOCKER_LAYER | DOCKER_FOREIGN => Some(Compression::Gzip),
            LAYER_ZSTD | NONDIST_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The compression a Diff of `media_type` is written with (containerd's
    /// walking differ writes the three OCI layer types only).
    pub fn of_diff(media_type: &str) -> Option<Compression> {
        match media_type {
            LAYER => Some(Compression::None),
            LAYER_GZIP => Some(Compression::Gzip),
            LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The uncompressed stream of `input`. Gzip may be several concatenated
    /// members, zstd several frames, as the formats allow.
    pub fn decoder<'a>(self, input: impl Read + Send + 'a) -> std::io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(input),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(input))),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        })
    }

    /// A compressing writer onto `out`; `finish` flushes the trailer.
    pub fn encoder<'a, W: Write + Send + 'a>(self, out: W) -> std::io::Result<Encoder<'a, W>> {
        Ok(match self {
            Compression::None => Encoder::None(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::default())),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
        })
    }
}

/// A writer that compresses (or not) into `W`.
pub enum Encoder<'a, W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'a, W>),
}

impl<W: Write> Encoder<'_, W> {
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}
