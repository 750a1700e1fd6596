//! containerd's `containerd.services.diff.v1.Diff` (Apply and Diff) over
//! the applier and the comparison, with blobs read from and written to the
//! metadata plugin's namespaced Content service in process.
//!
//! The async side only moves bytes: the content stream is pumped through a
//! small bounded channel into a blocking thread that mounts, decompresses,
//! hashes and extracts in one pass (no layer is ever held whole in memory),
//! and the other way for Diff. Mounts live in guards on that thread, so they
//! are undone whatever happens there.

use std::{
    collections::HashMap,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use containerd_client::{
    services::v1::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse, InfoRequest, InfoResponse},
    types::{Descriptor, Mount},
};
use crated_plugin_api::{
    content::{sha256_digest, ChunkReader, ContentClient},
    mount::MountedDir,
    Call, Error, Host, ServiceRouter, Status,
};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::{
    apply::{Applier, ApplyError, Tee, Whiteouts},
    compare::write_diff,
    media::{self, Compression},
};

pub const SERVICE: &str = "containerd.services.diff.v1.Diff";
const CONTENT: &str = "/containerd.services.content.v1.Content";
/// Chunks in flight between the async side and the blocking thread.
const CHANNEL_DEPTH: usize = 4;
/// Size of the chunks a Diff writes to content.
const WRITE_CHUNK: usize = 1 << 20;

#[derive(Clone)]
pub struct DiffService {
    host: Host,
    /// Where temporary mount points go (the plugin's state directory).
    mounts_dir: Arc<PathBuf>,
}

fn content_call(method: &str, ns: &str) -> Call {
    Host::call(&format!("{CONTENT}/{method}"), Some(ns))
}

fn unknown(msg: impl std::fmt::Display) -> Status {
    Error::unknown(msg.to_string()).into()
}

/// A blocking writer that sends chunks to the async side, hashing them.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    hash: Sha256,
    size: u64,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| io::Error::other("content write stream closed"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes what goes through it (the uncompressed digest).
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hash.update(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The directory an overlay mount's upper layer lives in, with its lower
/// directories (top first), when the mounts are exactly one overlay with an
/// upper directory: then a layer is applied there directly, with overlay
/// whiteouts, as containerd does.
fn overlay_upper(mounts: &[Mount]) -> Option<(PathBuf, Vec<PathBuf>)> {
    let [m] = mounts else { return None };
    if m.r#type != "overlay" {
        return None;
    }
    let mut upper = None;
    let mut lowers = Vec::new();
    for o in &m.options {
        if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(u));
        } else if let Some(l) = o.strip_prefix("lowerdir=") {
            lowers = l.split(':').map(PathBuf::from).collect();
        }
    }
    upper.map(|u| (u, lowers))
}

/// The mounts made read-only, as containerd's read-only temporary mounts:
/// an overlay's upper directory becomes its top lower directory.
fn readonly(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.r#type == "overlay" {
                let upper = m.options.iter().find_map(|o| o.strip_prefix("upperdir=").map(str::to_string));
                if let Some(upper) = upper {
                    let lower = m.options.iter().find_map(|o| o.strip_prefix("lowerdir=").map(str::to_string));
                    m.options.retain(|o| {
                        !o.starts_with("upperdir=") && !o.starts_with("workdir=") && !o.starts_with("lowerdir=")
                    });
                    let lowerdir = match lower {
                        Some(l) => format!("lowerdir={upper}:{l}"),
                        None => format!("lowerdir={upper}"),
                    };
                    m.options.push(lowerdir);
                }
            }
            m.options.retain(|o| o != "rw");
            m.options.push("ro".to_string());
            m
        })
        .collect()
}

fn apply_failed(e: ApplyError) -> Status {
    unknown(format!("failed to apply layer: {e}"))
}

/// Mount (or not), decompress, hash and extract: the blocking half of Apply.
fn apply_blocking(
    mounts: Vec<Mount>,
    mounts_dir: &Path,
    compression: Compression,
    input: ChunkReader,
) -> Result<(String, u64), Status> {
    let decoder = compression.decoder(input).map_err(|e| unknown(format!("failed to apply layer: {e}")))?;
    let mut hash = Sha256::new();
    let mut tee = Tee::new(decoder, |b: &[u8]| hash.update(b));
    if let Some((upper, lowers)) = overlay_upper(&mounts) {
        let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
        let mut applier = Applier::new(&upper, Whiteouts::Overlay, &lowers).map_err(apply_failed)?;
        applier.apply(&mut tee).map_err(apply_failed)?;
    } else {
        if mounts.is_empty() {
            return Err(Status::invalid_argument("no mounts to apply the layer onto"));
        }
        let mounted =
            MountedDir::mount_all(mounts_dir, &mounts).map_err(|e| unknown(format!("failed to mount: {e}")))?;
        let mut applier = Applier::new(mounted.path(), Whiteouts::Remove, &[]).map_err(apply_failed)?;
        applier.apply(&mut tee).map_err(apply_failed)?;
        drop(mounted);
    }
    // Trailing data (padding after the end of the archive) is part of the
    // uncompressed blob, and a bad gzip trailer surfaces only here.
    io::copy(&mut tee, &mut io::sink()).map_err(|e| unknown(format!("failed to apply layer: {e}")))?;
    let size = tee.count;
    drop(tee);
    Ok((sha256_digest(hash), size))
}

impl DiffService {
    pub fn new(host: Host, mounts_dir: PathBuf) -> DiffService {
        DiffService { host, mounts_dir: Arc::new(mounts_dir) }
    }

    pub async fn apply(&self, ns: &str, req: ApplyRequest) -> Result<ApplyResponse, Status> {
        let desc = req.diff.ok_or_else(|| Status::invalid_argument("diff descriptor is required"))?;
        let compression = Compression::of_layer(&desc.media_type).ok_or_else(|| {
            unknown(format!("failed to get stream processor for {}: no processor for media-type", desc.media_type))
        })?;
        // As containerd's ReaderAt: the blob must be known in the namespace.
        let _: InfoResponse = self
            .host
            .unary(&content_call("Info", ns), &InfoRequest { digest: desc.digest.clone() })
            .await
            .map_err(|s| s.context("failed to get reader from content store"))?;
        let mut stream = ContentClient::new(self.host.clone(), ns).read(&desc.digest).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let pump = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let stop = item.is_err();
                if tx.send(item.map_err(|s| s.context("read content"))).await.is_err() || stop {
                    break;
                }
            }
        });
        let dir = self.mounts_dir.clone();
        let reader = ChunkReader::new(rx);
        let result = tokio::task::spawn_blocking(move || apply_blocking(req.mounts, &dir, compression, reader))
            .await
            .map_err(|e| Status::internal(format!("apply task: {e}")))?;
        pump.abort();
        let (digest, size) = result?;
        Ok(ApplyResponse {
            applied: Some(Descriptor {
                media_type: media::LAYER.to_string(),
                digest,
                size: size as i64,
                annotations: HashMap::new(),
            }),
        })
    }

    pub async fn diff(&self, ns: &str, req: DiffRequest) -> Result<DiffResponse, Status> {
        let media_type = if req.media_type.is_empty() { media::LAYER_GZIP.to_string() } else { req.media_type };
        let compression = Compression::of_diff(&media_type)
            .ok_or_else(|| Error::not_implemented(format!("unsupported diff media type: {media_type}")))?;
        let reference = if req.r#ref.is_empty() {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
            format!("{nanos}-{}", uuid::Uuid::new_v4().simple())
        } else {
            req.r#ref
        };

        let (chunk_tx, mut chunk_rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
        let (lower, upper, dir) = (readonly(&req.left), readonly(&req.right), self.mounts_dir.clone());
        let worker = tokio::task::spawn_blocking(move || -> Result<(String, String, u64), Status> {
            let failed = |e: &dyn std::fmt::Display| unknown(format!("failed to write diff: {e}"));
            let lower = MountedDir::mount_all(&dir, &lower).map_err(|e| failed(&e))?;
            let upper = MountedDir::mount_all(&dir, &upper).map_err(|e| failed(&e))?;
            let sink =
                ChannelWriter { tx: chunk_tx, buf: Vec::with_capacity(WRITE_CHUNK), hash: Sha256::new(), size: 0 };
            let encoder = compression.encoder(sink).map_err(|e| failed(&e))?;
            let hashing = HashingWriter { inner: encoder, hash: Sha256::new() };
            let hashing = write_diff(lower.path(), upper.path(), hashing).map_err(|e| failed(&e))?;
            let uncompressed = sha256_digest(hashing.hash);
            let mut sink = hashing.inner.finish().map_err(|e| failed(&e))?;
            sink.send().map_err(|e| failed(&e))?;
            Ok((uncompressed, sha256_digest(sink.hash), sink.size))
        });

        let content = ContentClient::new(self.host.clone(), ns);
        let mut writer = content.writer(&reference);
        let mut write_err = None;
        while let Some(chunk) = chunk_rx.recv().await {
            if let Err(e) = writer.write(chunk).await {
                write_err = Some(e);
                break;
            }
        }
        // Unblocks the worker if the write stream failed.
        drop(chunk_rx);
        let worker = worker.await.map_err(|e| Status::internal(format!("diff task: {e}")));
        let (uncompressed, digest) = match (write_err, worker) {
            (None, Ok(Ok((uncompressed, digest, _)))) => (uncompressed, digest),
            (Some(e), _) | (None, Err(e)) | (None, Ok(Err(e))) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let mut labels = req.labels;
        if compression != Compression::None {
            labels.insert(media::UNCOMPRESSED_LABEL.to_string(), uncompressed.clone());
        }
        // An existing blob is success (the ingest is dropped).
        writer.commit(Some(&digest), labels).await?;
        let info: InfoResponse =
            self.host.unary(&content_call("Info", ns), &InfoRequest { digest: digest.clone() }).await?;
        let info = info.info.unwrap_or_default();
        // A blob that existed before without the label gets it, as containerd
        // does.
        if compression != Compression::None && !info.labels.contains_key(media::UNCOMPRESSED_LABEL) {
            content.set_labels(&info.digest, &[(media::UNCOMPRESSED_LABEL.to_string(), uncompressed)]).await?;
        }
        Ok(DiffResponse {
            diff: Some(Descriptor { media_type, digest: info.digest, size: info.size, annotations: HashMap::new() }),
        })
    }
}

pub fn router(svc: DiffService) -> ServiceRouter {
    ServiceRouter::new()
        .unary_with(&format!("/{SERVICE}/Apply"), &svc, |svc: DiffService, call: Call, req: ApplyRequest| async move {
            svc.apply(call.require_namespace()?, req).await
        })
        .unary_with(&format!("/{SERVICE}/Diff"), &svc, |svc: DiffService, call: Call, req: DiffRequest| async move {
            svc.diff(call.require_namespace()?, req).await
        })
}
