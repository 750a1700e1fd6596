//! Reading an image archive into content as containerd's
//! `images/archive.ImportIndex` does: an OCI image layout tar (`oci-layout`,
//! `index.json`, `blobs/<alg>/<hex>`) or a `docker save` tar
//! (`manifest.json`, configs, `layer.tar`s). The tar is read once, as it
//! streams in: each entry is written to content while it is read, hashed on
//! the way, and a blob under `blobs/` whose bytes do not hash to its name
//! fails the import naming it. The result is the descriptor of the index
//! that names the archive's images (`index.json`, or one written for a
//! docker archive).

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Read},
};

use crated_plugin_api::{
    content::{BlobWriter, ChunkReader, ContentClient},
    Status,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::{
    error::{Result, TransferError},
    lease::unique_part,
    oci::{self, Descriptor, Index, Manifest},
    progress::ProgressSink,
};

/// The most an `oci-layout` or `manifest.json` may hold (containerd's limit).
const JSON_LIMIT: u64 = 20 << 20;
/// Bytes per chunk handed from the tar reader to the content writer.
const READ_CHUNK: usize = 256 << 10;
/// Chunks in flight between the async side and the tar thread.
const CHANNEL_DEPTH: usize = 4;
/// How often (in bytes) a blob's "downloading" progress is sent.
const PROGRESS_EVERY: u64 = 4 << 20;

/// What the tar thread tells the writer.
enum TarEvent {
    File { path: String, size: u64 },
    Symlink { path: String, target: String },
    Chunk(Vec<u8>),
    End,
    Failed(String),
}

/// `path.Clean` of a tar name, without a leading `./` or `/`.
fn clean(name: &str) -> String {
    crated_plugin_api::paths::clean(name).join("/")
}

/// Walks the tar on a blocking thread, sending its regular files and
/// symlinks as events; stops when the writer side goes away.
fn read_tar(input: ChunkReader, tx: mpsc::Sender<TarEvent>) {
    let send = |ev| tx.blocking_send(ev).is_ok();
    let fail = |e: io::Error| {
        let _ = tx.blocking_send(TarEvent::Failed(e.to_string()));
    };
    let mut archive = tar::Archive::new(input);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => return fail(e),
        };
        let path = match entry.path() {
            Ok(p) => clean(&p.to_string_lossy()),
            Err(e) => return fail(e),
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry.link_name().ok().flatten().map(|t| t.to_string_lossy().to_string());
            let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let target = clean(&format!("{dir}/{}", target.unwrap_or_default()));
            if !send(TarEvent::Symlink { path, target }) {
                return;
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        if !send(TarEvent::File { path: path.clone(), size }) {
            return;
        }
        loop {
            let mut chunk = vec![0u8; READ_CHUNK];
            let mut filled = 0;
            while filled < chunk.len() {
                match entry.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return fail(io::Error::other(format!("reading {path}: {e}"))),
                }
            }
            if filled == 0 {
                break;
            }
            chunk.truncate(filled);
            if !send(TarEvent::Chunk(chunk)) {
                return;
            }
        }
        if !send(TarEvent::End) {
            return;
        }
    }
}

/// The digest a file under `blobs/<alg>/<hex>` must have.
fn expected_digest(path: &str) -> Option<String> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    (!hex.contains('/') && !hex.is_empty()).then(|| format!("{alg}:{hex}"))
}

/// Where the bytes of the file being read go.
enum Sink {
    /// A small JSON document read whole.
    Json(Vec<u8>),
    /// A blob already in content: only hashed, to check the archive.
    Check(Sha256),
    Blob(BlobWriter),
}

struct Current {
    path: String,
    size: u64,
    expected: Option<String>,
    sink: Sink,
    read: u64,
    reported: u64,
    /// The first bytes, to tell a gzip layer from a plain one.
    head: Vec<u8>,
}

/// What an archive held.
#[derive(Default)]
struct Ingested {
    layout: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    blobs: HashMap<String, (Descriptor, Vec<u8>)>,
    symlinks: BTreeMap<String, String>,
}

fn progress_name(cur: &Current) -> String {
    cur.expected.clone().unwrap_or_else(|| cur.path.clone())
}

async fn begin(content: &ContentClient, path: String, size: u64, progress: &mut ProgressSink) -> Result<Current> {
    let expected = expected_digest(&path);
    let sink = if path == "oci-layout" || path == "manifest.json" {
        if size > JSON_LIMIT {
            return Err(TransferError::archive(path, "too large"));
        }
        Sink::Json(Vec::new())
    } else {
        let exists = match &expected {
            Some(d) => content.info(d).await.map_err(|s| s.context(format!("blob {path}")))?.is_some(),
            None => false,
        };
        if exists {
            Sink::Check(Sha256::new())
        } else {
            Sink::Blob(content.writer(&format!("tar-{path}-{}", unique_part())))
        }
    };
    let cur = Current { path, size, expected, sink, read: 0, reported: 0, head: Vec::new() };
    if matches!(cur.sink, Sink::Blob(_)) {
        progress.bytes("waiting", &progress_name(&cur), 0, size).await;
    }
    Ok(cur)
}

async fn chunk(cur: &mut Current, data: Vec<u8>, progress: &mut ProgressSink) -> Result<()> {
    if cur.head.len() < 2 {
        cur.head.extend(data.iter().take(2 - cur.head.len()));
    }
    cur.read += data.len() as u64;
    match &mut cur.sink {
        Sink::Json(buf) => buf.extend_from_slice(&data),
        Sink::Check(h) => h.update(&data),
        Sink::Blob(w) => {
            w.write(data).await.map_err(|s| s.context(format!("failed to ingest {}", cur.path)))?;
            if cur.read - cur.reported >= PROGRESS_EVERY {
                cur.reported = cur.read;
                progress.bytes("downloading", &progress_name(cur), cur.read, cur.size).await;
            }
        }
    }
    Ok(())
}

async fn end(cur: Current, ingested: &mut Ingested, progress: &mut ProgressSink) -> Result<()> {
    let name = progress_name(&cur);
    let mismatch = |actual: String| TransferError::BlobDigest {
        path: cur.path.clone(),
        expected: cur.expected.clone().unwrap_or_default(),
        actual,
    };
    let digest = match cur.sink {
        Sink::Json(buf) => {
            match cur.path.as_str() {
                "oci-layout" => ingested.layout = Some(buf),
                _ => ingested.docker_manifest = Some(buf),
            }
            return Ok(());
        }
        Sink::Check(h) => {
            let actual = crated_plugin_api::content::sha256_digest(h);
            if cur.expected.as_deref() != Some(actual.as_str()) {
                return Err(mismatch(actual));
            }
            progress.named("already exists", &name, None).await;
            actual
        }
        Sink::Blob(w) => {
            if let Some(expected) = &cur.expected {
                if w.digest() != *expected {
                    let actual = w.digest();
                    w.abort().await;
                    return Err(mismatch(actual));
                }
            }
            let committed = w
                .commit(cur.expected.as_deref(), HashMap::new())
                .await
                .map_err(|s| s.context(format!("failed to ingest {}", cur.path)))?;
            progress.bytes("downloading", &name, cur.read, cur.size).await;
            progress.named(if committed.existed { "already exists" } else { "complete" }, &name, None).await;
            committed.digest
        }
    };
    let desc = Descriptor { digest, size: cur.read as i64, ..Default::default() };
    ingested.blobs.insert(cur.path, (desc, cur.head));
    Ok(())
}

/// Reads the archive that arrives as chunks from `input` into content and
/// returns the descriptor of the index naming its images.
pub async fn import_archive<S>(content: &ContentClient, mut input: S, progress: &mut ProgressSink) -> Result<Descriptor>
where
    S: ChunkSource + 'static,
{
    let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Vec<u8>, Status>>(CHANNEL_DEPTH);
    let (event_tx, mut event_rx) = mpsc::channel::<TarEvent>(CHANNEL_DEPTH);
    let reader = ChunkReader::new(chunk_rx);
    let tar_thread = tokio::task::spawn_blocking(move || read_tar(reader, event_tx));
    // The input is pumped on its own task, so that reading it never waits
    // on the writer and the other way round.
    let pump = tokio::spawn(async move {
        loop {
            match input.next_chunk().await {
                Ok(Some(c)) => {
                    if chunk_tx.send(Ok(c)).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = chunk_tx.send(Err(Status::unavailable(e.to_string()))).await;
                    return Err(e);
                }
            }
        }
    });

    let mut ingested = Ingested::default();
    let mut current: Option<Current> = None;
    let result: Result<()> = async {
        while let Some(event) = event_rx.recv().await {
            match event {
                TarEvent::Failed(e) => return Err(TransferError::archive("reading the archive", e)),
                TarEvent::Symlink { path, target } => {
                    ingested.symlinks.insert(path, target);
                }
                TarEvent::File { path, size } => current = Some(begin(content, path, size, progress).await?),
                TarEvent::Chunk(data) => {
                    if let Some(cur) = current.as_mut() {
                        chunk(cur, data, progress).await?;
                    }
                }
                TarEvent::End => {
                    if let Some(cur) = current.take() {
                        end(cur, &mut ingested, progress).await?;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    drop(event_rx);
    let _ = tar_thread.await;
    if let Some(Current { sink: Sink::Blob(w), .. }) = current {
        w.abort().await;
    }
    // A failure of the input stream explains a failure of the tar better.
    let pumped = if result.is_err() && !pump.is_finished() {
        pump.abort();
        Ok(())
    } else {
        pump.await.unwrap_or(Ok(()))
    };
    pumped?;
    result?;
    index_of(content, ingested).await
}

/// Where an archive's bytes come from.
pub trait ChunkSource: Send {
    /// The next chunk, `None` at the end.
    fn next_chunk(&mut self) -> impl std::future::Future<Output = Result<Option<Vec<u8>>>> + Send;
}

impl ChunkSource for crate::streams::ByteReceiver {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        crate::streams::ByteReceiver::next_chunk(self).await
    }
}

#[derive(serde::Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

async fn index_of(content: &ContentClient, mut ingested: Ingested) -> Result<Descriptor> {
    if let Some(layout) = &ingested.layout {
        let layout: Layout =
            serde_json::from_slice(layout).map_err(|e| TransferError::archive("untar oci layout \"oci-layout\"", e))?;
        if layout.version != "1.0.0" {
            return Err(TransferError::archive("oci-layout", format!("unsupported OCI version {}", layout.version)));
        }
        let (mut index, _) = ingested
            .blobs
            .remove("index.json")
            .ok_or_else(|| TransferError::archive("oci-layout", "missing index.json in OCI layout 1.0.0"))?;
        index.media_type = oci::OCI_INDEX.to_string();
        return Ok(index);
    }
    let Some(manifests) = &ingested.docker_manifest else {
        return Err(TransferError::archive("the archive", "unrecognized image format"));
    };
    let manifests: Vec<DockerManifest> =
        serde_json::from_slice(manifests).map_err(|e| TransferError::archive("untar manifest \"manifest.json\"", e))?;
    for (name, target) in &ingested.symlinks {
        let blob = ingested.blobs.get(target).cloned().ok_or_else(|| {
            TransferError::archive(name.clone(), format!("no target for symlink layer from {name:?} to {target:?}"))
        })?;
        ingested.blobs.insert(name.clone(), blob);
    }
    let mut index = Index { schema_version: 2, ..Default::default() };
    for m in manifests {
        let (mut config, _) = ingested
            .blobs
            .get(&m.config)
            .cloned()
            .ok_or_else(|| TransferError::archive(m.config.clone(), "image config not found"))?;
        config.media_type = oci::DOCKER_CONFIG.to_string();
        let mut layers = Vec::new();
        for l in &m.layers {
            let (mut layer, head) =
                ingested.blobs.get(l).cloned().ok_or_else(|| TransferError::archive(l.clone(), "layer not found"))?;
            let gzip = head.starts_with(&[0x1f, 0x8b]);
            layer.media_type = if gzip { oci::DOCKER_LAYER_GZIP } else { oci::DOCKER_LAYER }.to_string();
            layers.push(layer);
        }
        let platform = {
            let doc = content.read_all(&config.digest).await.map_err(|s| s.context(format!("config {}", m.config)))?;
            let c: oci::ImageConfig =
                serde_json::from_slice(&doc).map_err(|e| TransferError::archive(m.config.clone(), e))?;
            c.platform()
        };
        let manifest = Manifest { schema_version: 2, media_type: oci::DOCKER_MANIFEST.to_string(), config, layers };
        let mut desc = write_document(content, &manifest, oci::DOCKER_MANIFEST).await?;
        desc.platform = Some(platform);
        match m.repo_tags.unwrap_or_default() {
            tags if tags.is_empty() => index.manifests.push(desc),
            tags => {
                for tag in tags {
                    let name = oci::normalize_reference(&tag);
                    let mut d = desc.clone();
                    d.annotations.insert(oci::IMAGE_NAME_ANNOTATION.into(), name.clone());
                    d.annotations.insert(oci::REF_NAME_ANNOTATION.into(), oci::oci_reference_name(&name));
                    index.manifests.push(d);
                }
            }
        }
    }
    write_document(content, &index, oci::OCI_INDEX).await
}

/// Writes a JSON document to content and returns its descriptor.
pub async fn write_document<T: serde::Serialize>(
    content: &ContentClient,
    doc: &T,
    media_type: &str,
) -> Result<Descriptor> {
    let bytes = serde_json::to_vec(doc).map_err(|e| TransferError::Failed(format!("encoding {media_type}: {e}")))?;
    let digest = crated_plugin_api::content::sha256_digest(Sha256::new_with_prefix(&bytes));
    content
        .write_all(&format!("manifest-{digest}"), &bytes, Some(&digest), HashMap::new())
        .await
        .map_err(|s| s.context(format!("write {media_type} {digest}")))?;
    Ok(Descriptor { media_type: media_type.to_string(), digest, size: bytes.len() as i64, ..Default::default() })
}
