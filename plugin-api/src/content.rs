//! A typed client of the namespaced `containerd.services.content.v1.Content`
//! service (the metadata plugin's) over the [`Host`]: what plugins that
//! move blobs (diff, transfer) share. Blobs are read as streams of chunks
//! and written chunk by chunk with their digest computed on the way, so
//! no blob is ever held whole in memory unless the caller asks for it.

use std::{
    collections::HashMap,
    io::{self, Read},
};

use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, InfoResponse, ReadContentRequest, ReadContentResponse, UpdateRequest,
    UpdateResponse, WriteAction, WriteContentRequest, WriteContentResponse,
};
use futures::{stream::BoxStream, SinkExt, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::{service::Call, Error, ErrorKind, Host, Status};

const CONTENT: &str = "/containerd.services.content.v1.Content";
/// The gRPC metadata key that adds what a call creates to a lease.
pub const LEASE_HEADER: &str = "containerd-lease";

/// `sha256:<hex>` of what a hasher has seen.
pub fn sha256_digest(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The Content service of one namespace, optionally under a lease.
#[derive(Clone)]
pub struct ContentClient {
    host: Host,
    namespace: String,
    lease: Option<String>,
}

impl ContentClient {
    pub fn new(host: Host, namespace: &str) -> ContentClient {
        ContentClient { host, namespace: namespace.to_string(), lease: None }
    }

    /// The same client, with every blob it writes added to `lease`.
    pub fn with_lease(mut self, lease: Option<&str>) -> ContentClient {
        self.lease = lease.map(str::to_string);
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn call(&self, method: &str) -> Call {
        let mut call = Host::call(&format!("{CONTENT}/{method}"), Some(&self.namespace));
        if let Some(lease) = &self.lease {
            call.headers.push((LEASE_HEADER.to_string(), lease.clone()));
        }
        call
    }

    /// The blob's info, `None` if the namespace does not have it.
    pub async fn info(&self, digest: &str) -> Result<Option<Info>, Status> {
        let req = InfoRequest { digest: digest.to_string() };
        match self.host.unary::<_, InfoResponse>(&self.call("Info"), &req).await {
            Ok(r) => Ok(r.info),
            Err(s) if s.kind() == ErrorKind::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Sets labels on a blob (an empty value removes the label), touching
    /// no other label.
    pub async fn set_labels(&self, digest: &str, labels: &[(String, String)]) -> Result<(), Status> {
        if labels.is_empty() {
            return Ok(());
        }
        let info = Info {
            digest: digest.to_string(),
            labels: labels.iter().filter(|(_, v)| !v.is_empty()).cloned().collect(),
            ..Default::default()
        };
        let update = UpdateRequest {
            info: Some(info),
            update_mask: Some(prost_types::FieldMask {
                paths: labels.iter().map(|(k, _)| format!("labels.{k}")).collect(),
            }),
        };
        let _: UpdateResponse = self.host.unary(&self.call("Update"), &update).await?;
        Ok(())
    }

    /// The blob as a stream of chunks.
    pub async fn read(&self, digest: &str) -> Result<BoxStream<'static, Result<Vec<u8>, Status>>, Status> {
        let read = ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 };
        let stream = self
            .host
            .streaming::<_, ReadContentResponse, _>(&self.call("Read"), futures::stream::once(async { Ok(read) }))
            .await?;
        Ok(stream.map(|r| r.map(|r| r.data)).boxed())
    }

    /// The whole blob (for manifests, indexes and configs: small documents).
    pub async fn read_all(&self, digest: &str) -> Result<Vec<u8>, Status> {
        let mut stream = self.read(digest).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// Starts writing a blob under the ingest reference `reference`.
    pub fn writer(&self, reference: &str) -> BlobWriter {
        BlobWriter {
            client: self.clone(),
            reference: reference.to_string(),
            conn: None,
            offset: 0,
            hash: Some(Sha256::new()),
            store_digest: String::new(),
        }
    }

    /// Opens the ingest `reference` for the blob `expected` of `total`
    /// bytes, as containerd's `content.OpenWriter` with a descriptor: what
    /// an earlier writer of the same reference left (an interrupted
    /// download) is kept, and [`BlobWriter::offset`] says where to go on
    /// from. `AlreadyExists` if the blob is in content already.
    pub async fn resume(&self, reference: &str, expected: &str, total: u64) -> Result<BlobWriter, Status> {
        let mut w = self.writer(reference);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total: total as i64,
            expected: expected.to_string(),
            ..Default::default()
        };
        let resp = w.exchange(stat).await?;
        w.offset = u64::try_from(resp.offset).unwrap_or(0);
        if w.offset > 0 {
            // The bytes already there were hashed by the store, not here.
            w.hash = None;
            w.store_digest = resp.digest;
        }
        Ok(w)
    }

    /// Writes a small blob in one go; an existing blob is success.
    pub async fn write_all(
        &self,
        reference: &str,
        data: &[u8],
        expected: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<Committed, Status> {
        let mut w = self.writer(reference);
        for chunk in data.chunks(1 << 20) {
            w.write(chunk.to_vec()).await?;
        }
        w.commit(expected, labels).await
    }

    /// Drops an ingest (best effort: it may not exist).
    pub async fn abort(&self, reference: &str) {
        let req = AbortRequest { r#ref: reference.to_string() };
        let _: Result<(), Status> = self.host.unary(&self.call("Abort"), &req).await;
    }
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub digest: String,
    pub size: u64,
    /// The blob was there already (the ingest was dropped).
    pub existed: bool,
}

type WriteRequests = futures::channel::mpsc::Sender<Result<WriteContentRequest, Status>>;
type WriteResponses = BoxStream<'static, Result<WriteContentResponse, Status>>;

/// One client-side Write stream to content: each request gets its answer
/// before the next goes. The digest of what was written is computed here.
pub struct BlobWriter {
    client: ContentClient,
    reference: String,
    conn: Option<(WriteRequests, WriteResponses)>,
    offset: u64,
    /// The digest of what this writer wrote; `None` for a resumed ingest,
    /// whose digest only the store knows (`store_digest`).
    hash: Option<Sha256>,
    store_digest: String,
}

impl BlobWriter {
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    async fn exchange(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        let closed = || Status::internal("content write stream closed");
        match &mut self.conn {
            Some((tx, _)) => tx.send(Ok(req)).await.map_err(|_| closed())?,
            None => {
                let (mut tx, rx) = futures::channel::mpsc::channel(1);
                // Sent before connecting: the store reads it before answering.
                tx.send(Ok(req)).await.map_err(|_| closed())?;
                let call = self.client.call("Write");
                let out = self.client.host.streaming::<WriteContentRequest, WriteContentResponse, _>(&call, rx).await?;
                self.conn = Some((tx, out));
            }
        }
        let (_, out) = self.conn.as_mut().expect("connected above");
        out.next().await.unwrap_or_else(|| Err(closed()))
    }

    /// Appends a chunk.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(h) = &mut self.hash {
            h.update(&data);
        }
        let len = data.len() as u64;
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            offset: self.offset as i64,
            data,
            ..Default::default()
        };
        let resp = self.exchange(req).await?;
        self.offset += len;
        self.store_digest = resp.digest;
        Ok(())
    }

    /// The digest of what was written so far (for a resumed ingest, as the
    /// store computed it over the whole ingest).
    pub fn digest(&self) -> String {
        match &self.hash {
            Some(h) => sha256_digest(h.clone()),
            None => self.store_digest.clone(),
        }
    }

    /// Commits what was written. With `expected`, a different digest fails
    /// (`FailedPrecondition`, naming both) and the ingest is dropped. A
    /// blob that exists already is success, with `existed` set.
    pub async fn commit(
        mut self,
        expected: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<Committed, Status> {
        let digest = self.digest();
        if let Some(expected) = expected.filter(|e| *e != digest) {
            self.client.abort(&self.reference).await;
            return Err(
                Error::failed_precondition(format!("unexpected commit digest {digest}, expected {expected}")).into()
            );
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.offset as i64,
            offset: self.offset as i64,
            expected: digest.clone(),
            labels,
            ..Default::default()
        };
        let existed = match self.exchange(commit).await {
            Ok(_) => false,
            Err(s) if s.kind() == ErrorKind::AlreadyExists => true,
            Err(s) => {
                self.client.abort(&self.reference).await;
                return Err(s.context("failed to commit"));
            }
        };
        if existed {
            self.client.abort(&self.reference).await;
        }
        Ok(Committed { digest, size: self.offset, existed })
    }

    /// Gives up the ingest.
    pub async fn abort(self) {
        self.client.abort(&self.reference).await;
    }
}

/// A blocking reader over chunks that the async side sends: how a blob
/// streamed from content (or an archive streamed from a client) reaches
/// code that parses with `std::io::Read` on a blocking thread. An `Err`
/// chunk fails the read with the status's message; a closed channel is
/// the end.
pub struct ChunkReader {
    rx: mpsc::Receiver<Result<Vec<u8>, Status>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<Result<Vec<u8>, Status>>) -> ChunkReader {
        ChunkReader { rx, buf: Vec::new(), pos: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Some(Err(s)) => return Err(io::Error::other(s.message)),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
