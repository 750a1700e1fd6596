//! `containerd.services.content.v1.Content` over a [`ContentStore`],
//! following containerd's `services/content/contentserver`. Errors become
//! gRPC statuses in exactly one place: `impl From<ContentError> for Status`,
//! by their [`crated_plugin_api::ErrorKind`].
//!
//! The raw store is not namespaced: the `containerd-namespace` header is
//! ignored (the metadata plugin namespaces it).

use std::{collections::HashMap, time::SystemTime};

use containerd_client::services::v1 as api;
use crated_plugin_api::{filters::AnyFilter, Call, Code, ServiceRouter, Status, Streaming};
use futures::{stream, Stream, StreamExt};

use crate::store::{BlobInfo, ContentError, ContentStore, Digest, IngestStatus, Writer};

pub const SERVICE: &str = "containerd.services.content.v1.Content";

/// Bytes per `ReadContentResponse` (containerd's buffer is 1 MiB too).
pub const READ_CHUNK: usize = 1 << 20;

/// Infos per `ListContentResponse`, as containerd batches them.
const LIST_BATCH: usize = 100;

fn method(name: &str) -> String {
    format!("/{SERVICE}/{name}")
}

impl From<ContentError> for Status {
    fn from(e: ContentError) -> Status {
        Status::new(e.kind().code(), e.to_string())
    }
}

fn parse_digest(s: &str) -> Result<Digest, Status> {
    Digest::parse(s).map_err(|e| Status::from(ContentError::from(e)))
}

fn parse_filters(filters: &[String]) -> Result<AnyFilter, Status> {
    Ok(AnyFilter::parse(filters)?)
}

fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

fn info_to_api(i: BlobInfo) -> api::Info {
    api::Info {
        digest: i.digest.to_string(),
        size: i.size as i64,
        created_at: ts(i.created_at),
        updated_at: ts(i.updated_at),
        labels: i.labels,
    }
}

fn status_to_api(s: IngestStatus) -> api::Status {
    api::Status {
        started_at: ts(s.started_at),
        updated_at: ts(s.updated_at),
        r#ref: s.reference,
        offset: s.offset as i64,
        total: s.total,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// The router of the Content service.
pub fn router(store: ContentStore) -> ServiceRouter {
    let svc = ContentService { store };
    ServiceRouter::new()
        .unary_with(&method("Info"), &svc, ContentService::info)
        .unary_with(&method("Update"), &svc, ContentService::update)
        .server_streaming_with(&method("List"), &svc, ContentService::list)
        .unary_with(&method("Delete"), &svc, ContentService::delete)
        .server_streaming_with(&method("Read"), &svc, ContentService::read)
        .unary_with(&method("Status"), &svc, ContentService::status)
        .unary_with(&method("ListStatuses"), &svc, ContentService::list_statuses)
        .unary_with(&method("Abort"), &svc, ContentService::abort)
        .bidi_streaming_with(&method("Write"), &svc, ContentService::write)
}

/// The gRPC face of a [`ContentStore`]: one method per RPC.
#[derive(Clone)]
struct ContentService {
    store: ContentStore,
}

impl ContentService {
    async fn info(self, _: Call, req: api::InfoRequest) -> Result<api::InfoResponse, Status> {
        let d = parse_digest(&req.digest)?;
        Ok(api::InfoResponse { info: Some(info_to_api(self.store.info(&d).await?)) })
    }

    async fn update(self, _: Call, req: api::UpdateRequest) -> Result<api::UpdateResponse, Status> {
        let info = req.info.ok_or_else(|| Status::invalid_argument("update: info is required"))?;
        let d = parse_digest(&info.digest)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self.store.update(&d, info.labels, &paths).await?;
        Ok(api::UpdateResponse { info: Some(info_to_api(updated)) })
    }

    async fn list(
        self,
        _: Call,
        req: api::ListContentRequest,
    ) -> Result<impl Stream<Item = Result<api::ListContentResponse, Status>>, Status> {
        let filter = parse_filters(&req.filters)?;
        let infos = self.store.list(&filter).await?;
        let mut batches: Vec<Result<api::ListContentResponse, Status>> = Vec::new();
        let mut it = infos.into_iter().map(info_to_api).peekable();
        while it.peek().is_some() {
            batches.push(Ok(api::ListContentResponse { info: it.by_ref().take(LIST_BATCH).collect() }));
        }
        Ok(stream::iter(batches))
    }

    async fn delete(self, _: Call, req: api::DeleteContentRequest) -> Result<(), Status> {
        let d = parse_digest(&req.digest)?;
        self.store.delete(&d).await?;
        Ok(())
    }

    /// containerd's Read: a negative offset reads from 0, an offset past the
    /// end is `OutOfRange`, a size <= 0 or past the end reads to the end.
    /// Responses carry the absolute offset of their data (containerd counts
    /// from the requested offset; its clients ignore the field).
    async fn read(
        self,
        _: Call,
        req: api::ReadContentRequest,
    ) -> Result<impl Stream<Item = Result<api::ReadContentResponse, Status>>, Status> {
        let d = parse_digest(&req.digest)?;
        let reader = self.store.reader(&d).await?;
        let blob_size = reader.size();
        let offset = req.offset.max(0) as u64;
        if offset > blob_size {
            return Err(Status::new(Code::OutOfRange, format!("read past object length {blob_size} bytes")));
        }
        let end = if req.size <= 0 { blob_size } else { offset.saturating_add(req.size as u64).min(blob_size) };
        Ok(stream::unfold((reader, offset), move |(reader, pos)| async move {
            if pos >= end {
                return None;
            }
            let want = (end - pos).min(READ_CHUNK as u64) as usize;
            match reader.read_at(pos, want).await {
                Ok(data) if data.is_empty() => Some((
                    Err(Status::new(Code::DataLoss, format!("{} ended at {pos} bytes", reader.digest()))),
                    (reader, end),
                )),
                Ok(data) => {
                    let next = pos + data.len() as u64;
                    Some((Ok(api::ReadContentResponse { offset: pos as i64, data }), (reader, next)))
                }
                Err(e) => Some((Err(e.into()), (reader, end))),
            }
        }))
    }

    async fn status(self, _: Call, req: api::StatusRequest) -> Result<api::StatusResponse, Status> {
        let st = self.store.status(&req.r#ref).await?;
        Ok(api::StatusResponse { status: Some(status_to_api(st)) })
    }

    async fn list_statuses(self, _: Call, req: api::ListStatusesRequest) -> Result<api::ListStatusesResponse, Status> {
        let filter = parse_filters(&req.filters)?;
        let statuses = self.store.list_statuses(&filter).await?;
        Ok(api::ListStatusesResponse { statuses: statuses.into_iter().map(status_to_api).collect() })
    }

    async fn abort(self, _: Call, req: api::AbortRequest) -> Result<(), Status> {
        self.store.abort(&req.r#ref).await?;
        Ok(())
    }

    /// containerd's Write: the first message names the ref and takes its lock
    /// (a second writer gets `Unavailable` "ref ... locked"); every message
    /// gets one response; a commit ends the stream; the lock is released
    /// when the stream ends.
    async fn write(
        self,
        _: Call,
        input: Streaming<api::WriteContentRequest>,
    ) -> Result<impl Stream<Item = Result<api::WriteContentResponse, Status>>, Status> {
        let session = Session {
            store: self.store,
            input,
            writer: None,
            reference: String::new(),
            total: 0,
            expected: None,
            done: false,
        };
        Ok(stream::unfold(session, |mut s| async move {
            if s.done {
                return None;
            }
            let req = match s.input.message().await {
                Ok(Some(req)) => req,
                Ok(None) => return None,
                Err(e) => return Some((Err(e), Session { done: true, writer: None, ..s })),
            };
            match s.handle(req).await {
                Ok(resp) => Some((Ok(resp), s)),
                Err(e) => {
                    s.writer = None;
                    s.done = true;
                    Some((Err(e), s))
                }
            }
        })
        .boxed())
    }
}

/// The state of one Write stream.
struct Session {
    store: ContentStore,
    input: Streaming<api::WriteContentRequest>,
    writer: Option<Writer>,
    reference: String,
    total: i64,
    expected: Option<Digest>,
    done: bool,
}

impl Session {
    async fn handle(&mut self, req: api::WriteContentRequest) -> Result<api::WriteContentResponse, Status> {
        let action = api::WriteAction::try_from(req.action)
            .map_err(|_| Status::invalid_argument(format!("unknown write action {}", req.action)))?;
        if req.offset < 0 {
            return Err(Status::invalid_argument(format!("negative write offset {}", req.offset)));
        }
        let req_expected = if req.expected.is_empty() { None } else { Some(parse_digest(&req.expected)?) };

        if self.writer.is_none() {
            if req.r#ref.is_empty() {
                return Err(Status::invalid_argument("first message must have a reference"));
            }
            self.reference = req.r#ref.clone();
            self.total = req.total.max(0);
            self.expected = req_expected.clone();
            let w = self.store.writer(&self.reference, self.total, self.expected.as_ref()).await?;
            if self.total <= 0 {
                self.total = w.total();
            }
            self.writer = Some(w);
        } else if !req.r#ref.is_empty() && req.r#ref != self.reference {
            return Err(Status::invalid_argument(format!(
                "write stream of ref {:?} got a message for ref {:?}",
                self.reference, req.r#ref
            )));
        }

        if let Some(exp) = &req_expected {
            self.expected = Some(exp.clone());
            if self.store.exists(exp).await? {
                // containerd: close the writer, abort the ingest.
                self.writer = None;
                let _ = self.store.abort(&self.reference).await;
                return Err(Status::already_exists(format!("blob with expected digest {exp} exists")));
            }
        }
        let w = self.writer.as_mut().ok_or_else(|| Status::internal("no writer"))?;
        if req.total > 0 {
            self.total = req.total;
            w.set_total(req.total).await?;
        }

        let mut resp = api::WriteContentResponse { action: req.action, ..Default::default() };
        match action {
            api::WriteAction::Stat => {}
            api::WriteAction::Write | api::WriteAction::Commit => {
                let current = w.offset();
                if req.offset > 0 && req.offset as u64 != current {
                    return Err(Status::new(
                        Code::OutOfRange,
                        format!("write @{} must occur at current offset {current}", req.offset),
                    ));
                }
                if req.offset == 0 && current > 0 {
                    w.truncate(0).await?;
                }
                w.write(req.data).await?;
                if action == api::WriteAction::Commit {
                    let labels: Option<HashMap<String, String>> =
                        if req.labels.is_empty() { None } else { Some(req.labels) };
                    let status = w.status();
                    let d = w.commit(self.total, self.expected.as_ref(), labels).await?;
                    self.done = true;
                    resp.offset = status.offset as i64;
                    resp.total = self.total;
                    resp.digest = d.to_string();
                    resp.started_at = ts(status.started_at);
                    resp.updated_at = ts(status.updated_at);
                    self.writer = None;
                    return Ok(resp);
                }
            }
        }
        let status = w.status();
        resp.offset = status.offset as i64;
        resp.total = self.total;
        resp.digest = w.digest().map(|d| d.to_string()).unwrap_or_default();
        resp.started_at = ts(status.started_at);
        resp.updated_at = ts(status.updated_at);
        Ok(resp)
    }
}
