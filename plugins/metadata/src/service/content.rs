//! The namespaced `containerd.services.content.v1.Content` (containerd's
//! metadata/content.go behind services/content). It takes the service over
//! from the raw content plugin on the socket and calls that plugin in
//! process for the bytes:
//!
//! - Info, Update, List and Delete work on the namespace's records.
//! - Read checks the record, then streams from the raw store.
//! - Status, ListStatuses, Abort and Write use ingest refs prefixed with
//!   `<namespace>/`, so ingests are per namespace; responses strip it.
//! - Write proxies the stream to the raw store. On COMMIT the blob is
//!   recorded in the namespace (labels from the commit) and, with a
//!   `containerd-lease` header, added to that lease, in one transaction.
//!   Under a lease the ingest itself joins the lease when the writer
//!   opens (resource type `ingests`, id the client's ref) and leaves it
//!   at commit, as containerd's writer does.
//!   A blob the raw store already holds is recorded without rewriting it:
//!   a raw `AlreadyExists` on commit is success, and a writer opened with
//!   an expected digest the raw store has never touches the raw store
//!   (containerd's shared content policy, its default).
//! - Delete removes the record and deletes the raw blob at once when no
//!   namespace references it any more (containerd leaves the blob to its
//!   garbage collector; tests rely on the immediate deletion, and the
//!   collector removes any blob left unreferenced anyway). A process-wide
//!   lock orders commits against deletes of raw blobs (the collector's
//!   too), so a commit never records a blob that a delete is removing.

use crated_events_api::topics;
use std::collections::HashMap;
use std::sync::Arc;

use containerd_client::events::ContentDelete;
use containerd_client::services::v1::{
    self as api, AbortRequest, DeleteContentRequest, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest, ReadContentResponse,
    StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use crated_plugin_api::{
    filters::{AnyFilter, Fields},
    Call, Code, Error, Host, ServiceRouter, Status, Streaming,
};
use futures::{stream::BoxStream, SinkExt, StreamExt};

use super::{blocking, labels_in, labels_out, namespace, timestamp, Events};
use crate::content::{self as store, Committed, ContentStore};
use crate::db::Labels;

const SERVICE: &str = "/containerd.services.content.v1.Content";

/// The header carrying the lease of a call (containerd's `leases.WithLease`).
pub const LEASE_HEADER: &str = "containerd-lease";

/// How many infos one List response carries.
const LIST_BATCH: usize = 100;

fn raw(method: &str) -> Call {
    Host::call(&format!("{SERVICE}/{method}"), None)
}

fn raw_ref(ns: &str, r: &str) -> String {
    format!("{ns}/{r}")
}

fn info_out(i: store::Info) -> api::Info {
    api::Info {
        digest: i.digest,
        size: i.size,
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
        labels: labels_out(i.labels),
    }
}

/// The first digest (`sha256:<64 hex>` and the like) in a message.
fn digest_in(message: &str) -> Option<String> {
    for (alg, len) in [("sha256:", 64), ("sha384:", 96), ("sha512:", 128)] {
        for (i, _) in message.match_indices(alg) {
            let hex = &message[i + alg.len()..];
            if hex.len() >= len && hex.as_bytes()[..len].iter().all(|b| b.is_ascii_hexdigit()) {
                return Some(message[i..i + alg.len() + len].to_string());
            }
        }
    }
    None
}

struct StatusFields<'a>(&'a api::Status);

impl Fields for StatusFields<'_> {
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        match (path.first().map(String::as_str), path.len()) {
            (Some("ref"), 1) => Some(std::borrow::Cow::Borrowed(&self.0.r#ref)),
            (Some("expected"), 1) => Some(std::borrow::Cow::Borrowed(&self.0.expected)),
            _ => None,
        }
    }
}

/// The namespaced Content service: the namespaces' records, the raw content
/// plugin it calls through the host, and the lock that orders commits
/// against deletes of raw blobs.
#[derive(Clone)]
pub struct ContentService {
    store: ContentStore,
    host: Host,
    events: Events,
    blob_lock: Arc<tokio::sync::Mutex<()>>,
    pins: BlobPins,
}

/// Raw blobs that open writers rely on without writing them (a namespace
/// committing a blob another namespace stored): the collector must not
/// delete them between the writer's check and its commit. Changed and read
/// under the blob lock.
pub type BlobPins = Arc<std::sync::Mutex<HashMap<String, usize>>>;

/// A writer's pin on a raw blob, released when the writer goes.
struct BlobPin {
    pins: BlobPins,
    digest: String,
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

impl ContentService {
    pub fn new(store: ContentStore, host: Host, events: Events) -> Self {
        let blob_lock = Arc::new(tokio::sync::Mutex::new(()));
        ContentService { store, host, events, blob_lock, pins: BlobPins::default() }
    }

    /// The raw blobs open writers rely on, which the collector leaves alone.
    pub fn blob_pins(&self) -> BlobPins {
        self.pins.clone()
    }

    /// The lock that orders commits against deletes of raw blobs, which
    /// the garbage collector shares.
    pub fn blob_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.blob_lock.clone()
    }

    async fn raw_info(&self, digest: &str) -> Result<api::Info, Status> {
        let r: InfoResponse = self.host.unary(&raw("Info"), &InfoRequest { digest: digest.to_string() }).await?;
        r.info.ok_or_else(|| Status::internal("content store answered Info without info"))
    }

    /// The namespace's record of a blob.
    async fn namespaced_info(&self, ns: &str, digest: &str) -> Result<store::Info, Status> {
        let (s, ns, d) = (self.store.clone(), ns.to_string(), digest.to_string());
        blocking(move || Ok(s.info(&ns, &d)?)).await
    }

    /// Records a blob the raw store holds in `ns`. The caller holds the
    /// blob lock. `AlreadyExists` when the namespace had it already.
    async fn record(
        &self,
        ns: &str,
        digest: &str,
        labels: Labels,
        lease: Option<String>,
    ) -> Result<store::Info, Status> {
        let size = self.raw_info(digest).await?.size;
        let (s, n, d) = (self.store.clone(), ns.to_string(), digest.to_string());
        let done = blocking(move || Ok(s.commit(&n, &d, size, labels, lease.as_deref())?)).await?;
        match done {
            // containerd 1.6 publishes no event for new content (2.x
            // added /content/create, which 1.6 clients cannot decode).
            Committed::Created(info) => Ok(info),
            Committed::Existing(_) => Err(Error::already_exists(format!("content {digest}")).into()),
        }
    }
}

enum Mode {
    /// Before the first message.
    Unopened,
    /// The raw store already has the expected blob: nothing to write.
    Shared { digest: String, size: i64, started_at: prost_types::Timestamp },
    /// Proxying to the raw store's Write (connected on the first exchange).
    Raw,
}

type RawOut = BoxStream<'static, Result<WriteContentResponse, Status>>;

struct Writer {
    svc: ContentService,
    ns: String,
    lease: Option<String>,
    client_ref: String,
    input: Streaming<WriteContentRequest>,
    mode: Mode,
    raw: Option<(futures::channel::mpsc::Sender<Result<WriteContentRequest, Status>>, RawOut)>,
    /// The digest of the data written so far, as the raw store last told.
    last_digest: String,
    /// The raw blob a shared-mode writer relies on.
    pin: Option<BlobPin>,
    done: bool,
}

fn now() -> prost_types::Timestamp {
    timestamp(crate::db::now_nanos())
}

impl Writer {
    async fn next(&mut self) -> Option<Result<WriteContentResponse, Status>> {
        let req = match self.input.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(self.handle(req).await)
    }

    async fn handle(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if matches!(self.mode, Mode::Unopened) {
            if req.r#ref.is_empty() {
                return Err(Status::invalid_argument("first message must have a reference"));
            }
            self.client_ref = req.r#ref.clone();
            self.open(&req).await?;
        }
        match &self.mode {
            Mode::Shared { digest, size, started_at } => {
                let (digest, size, started_at) = (digest.clone(), *size, *started_at);
                self.shared(req, digest, size, started_at).await
            }
            _ => self.proxied(req).await,
        }
    }

    async fn open(&mut self, req: &WriteContentRequest) -> Result<(), Status> {
        self.mode = Mode::Raw;
        if req.expected.is_empty() {
            return self.lease_ingest().await;
        }
        match self.svc.namespaced_info(&self.ns, &req.expected).await {
            Ok(_) => {
                let still_there = match self.lease.clone() {
                    Some(lease) => {
                        let (s, ns, d) = (self.svc.store.clone(), self.ns.clone(), req.expected.clone());
                        blocking(move || Ok(s.lease_existing(&ns, &d, &lease)?)).await?
                    }
                    None => true,
                };
                // A collection may have taken it since the look-up: then
                // it is written like new content.
                if still_there {
                    return Err(Error::already_exists(format!("content {}", req.expected)).into());
                }
            }
            Err(e) if e.code == Code::NotFound => {}
            Err(e) => return Err(e),
        }
        // Checked and pinned under the blob lock, so a collection cannot
        // delete the raw blob between this check and the commit.
        let _guard = self.svc.blob_lock.clone().lock_owned().await;
        if let Ok(info) = self.svc.raw_info(&req.expected).await {
            if req.total == 0 || req.total == info.size {
                self.mode = Mode::Shared { digest: req.expected.clone(), size: info.size, started_at: now() };
                *self.svc.pins.lock().unwrap_or_else(|p| p.into_inner()).entry(req.expected.clone()).or_default() += 1;
                self.pin = Some(BlobPin { pins: self.svc.pins.clone(), digest: req.expected.clone() });
            }
        }
        drop(_guard);
        self.lease_ingest().await
    }

    /// Records the ingest: under a lease it joins the lease (containerd's
    /// `addIngestLease`), so a collection never takes what an import or pull
    /// is writing; without one it expires a day after this open.
    async fn lease_ingest(&mut self) -> Result<(), Status> {
        let (s, ns, r, lease) = (self.svc.store.clone(), self.ns.clone(), self.client_ref.clone(), self.lease.clone());
        let now = now().seconds;
        blocking(move || Ok(s.open_ingest(&ns, &r, lease.as_deref(), now)?)).await
    }

    /// After a commit the lease holds the content; the ingest record goes.
    async fn unlease_ingest(&mut self) {
        let (s, ns, r, lease) = (self.svc.store.clone(), self.ns.clone(), self.client_ref.clone(), self.lease.clone());
        if let Err(e) = blocking(move || Ok(s.close_ingest(&ns, &r, lease.as_deref())?)).await {
            crated_plugin_api::tracing::warn!("forgetting ingest {}: {e}", self.client_ref);
        }
    }

    async fn shared(
        &mut self,
        req: WriteContentRequest,
        digest: String,
        size: i64,
        started_at: prost_types::Timestamp,
    ) -> Result<WriteContentResponse, Status> {
        if req.action == WriteAction::Commit as i32 {
            if req.total != 0 && req.total != size {
                return Err(Status::failed_precondition(format!(
                    "{:?} failed size validation: {size} != {}",
                    self.client_ref, req.total
                )));
            }
            if !req.expected.is_empty() && req.expected != digest {
                return Err(Status::failed_precondition(format!("{:?} unexpected digest", self.client_ref)));
            }
            let _guard = self.svc.blob_lock.clone().lock_owned().await;
            self.svc.record(&self.ns, &digest, labels_in(req.labels), self.lease.clone()).await?;
            self.unlease_ingest().await;
        }
        Ok(WriteContentResponse {
            action: req.action,
            started_at: Some(started_at),
            updated_at: Some(now()),
            offset: size,
            total: size,
            digest,
        })
    }

    /// One request to the raw store's Write, one response back. The raw
    /// store names refs with our `<namespace>/` prefix; the client never
    /// sees it, in errors either.
    async fn exchange(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        let result = self.exchange_raw(req).await;
        result.map_err(|mut s| {
            s.message = s.message.replace(&format!("\"{}/", self.ns), "\"");
            s
        })
    }

    async fn exchange_raw(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        match &mut self.raw {
            Some((tx, _)) => {
                tx.send(Ok(req)).await.map_err(|_| Status::internal("content store closed the write stream"))?;
            }
            None => {
                let (mut tx, rx) = futures::channel::mpsc::channel(4);
                // Sent before connecting: the raw store may read the first
                // message before it answers the call.
                tx.send(Ok(req)).await.map_err(|_| Status::internal("write stream closed"))?;
                let out =
                    self.svc.host.streaming::<WriteContentRequest, WriteContentResponse, _>(&raw("Write"), rx).await?;
                self.raw = Some((tx, out));
            }
        }
        let (_, out) = self.raw.as_mut().expect("connected above");
        let resp = out
            .next()
            .await
            .unwrap_or_else(|| Err(Status::internal("content store ended the write stream without an answer")))?;
        if !resp.digest.is_empty() {
            self.last_digest = resp.digest.clone();
        }
        Ok(resp)
    }

    async fn proxied(&mut self, mut req: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if !req.r#ref.is_empty() {
            req.r#ref = raw_ref(&self.ns, &req.r#ref);
        }
        if req.action != WriteAction::Commit as i32 {
            return self.exchange(req).await;
        }
        let _guard = self.svc.blob_lock.clone().lock_owned().await;
        if !req.data.is_empty() && req.expected.is_empty() {
            // Write the data first so that the digest of the whole blob is
            // known even when the raw store refuses the commit as a duplicate.
            let w = WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: req.r#ref.clone(),
                total: req.total,
                offset: req.offset,
                data: std::mem::take(&mut req.data),
                ..Default::default()
            };
            let resp = self.exchange(w).await?;
            req.offset = resp.offset;
        }
        let labels = labels_in(std::mem::take(&mut req.labels));
        let expected = req.expected.clone();
        let carried_data = !req.data.is_empty();
        let before = self.last_digest.clone();
        let (digest, resp) = match self.exchange(req).await {
            Ok(resp) => {
                let d = if !resp.digest.is_empty() {
                    resp.digest.clone()
                } else if !expected.is_empty() {
                    expected
                } else {
                    before
                };
                (d, Some(resp))
            }
            Err(s) if s.code == Code::AlreadyExists => {
                let d = if !expected.is_empty() {
                    expected
                } else if let Some(d) = digest_in(&s.message) {
                    d
                } else if !carried_data && !before.is_empty() {
                    before
                } else {
                    return Err(s);
                };
                (d, None)
            }
            Err(s) => return Err(s),
        };
        if digest.is_empty() {
            return Err(Status::internal("content store committed without telling the digest"));
        }
        let info = self.svc.record(&self.ns, &digest, labels, self.lease.clone()).await?;
        self.unlease_ingest().await;
        Ok(resp.unwrap_or_else(|| WriteContentResponse {
            action: WriteAction::Commit as i32,
            started_at: Some(now()),
            updated_at: Some(now()),
            offset: info.size,
            total: info.size,
            digest,
        }))
    }
}

pub fn routes(router: ServiceRouter, svc: ContentService) -> ServiceRouter {
    router
        .unary_with(&format!("{SERVICE}/Info"), &svc, ContentService::info)
        .unary_with(&format!("{SERVICE}/Update"), &svc, ContentService::update)
        .server_streaming_with(&format!("{SERVICE}/List"), &svc, ContentService::list)
        .unary_with(&format!("{SERVICE}/Delete"), &svc, ContentService::delete)
        .server_streaming_with(&format!("{SERVICE}/Read"), &svc, ContentService::read)
        .unary_with(&format!("{SERVICE}/Status"), &svc, ContentService::status)
        .unary_with(&format!("{SERVICE}/ListStatuses"), &svc, ContentService::list_statuses)
        .unary_with(&format!("{SERVICE}/Abort"), &svc, ContentService::abort)
        .bidi_streaming_with(&format!("{SERVICE}/Write"), &svc, ContentService::write)
}

/// The RPCs, one method each.
impl ContentService {
    async fn info(self, call: Call, req: InfoRequest) -> Result<InfoResponse, Status> {
        let ns = namespace(&call)?;
        Ok(InfoResponse { info: Some(info_out(self.namespaced_info(&ns, &req.digest).await?)) })
    }

    async fn update(self, call: Call, req: UpdateRequest) -> Result<UpdateResponse, Status> {
        let ns = namespace(&call)?;
        let info = req.info.ok_or_else(|| Status::invalid_argument("info must be provided"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let s = self.store;
        let i = blocking(move || Ok(s.update(&ns, &info.digest, labels_in(info.labels), &paths)?)).await?;
        Ok(UpdateResponse { info: Some(info_out(i)) })
    }

    async fn list(
        self,
        call: Call,
        req: ListContentRequest,
    ) -> Result<impl futures::Stream<Item = Result<ListContentResponse, Status>>, Status> {
        let ns = namespace(&call)?;
        let filter = AnyFilter::parse(&req.filters)?;
        let s = self.store;
        let all = blocking(move || Ok(s.list(&ns, &filter)?)).await?;
        let batches: Vec<Result<ListContentResponse, Status>> = all
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListContentResponse { info: c.iter().cloned().map(info_out).collect() }))
            .collect();
        Ok(futures::stream::iter(batches))
    }

    async fn delete(self, call: Call, req: DeleteContentRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        let digest = req.digest;
        {
            let _guard = self.blob_lock.lock().await;
            let (s, n, d) = (self.store.clone(), ns.clone(), digest.clone());
            let orphan = blocking(move || Ok(s.delete(&n, &d)?)).await?;
            if orphan {
                let req = DeleteContentRequest { digest: digest.clone() };
                match self.host.unary::<_, ()>(&raw("Delete"), &req).await {
                    Ok(()) => {}
                    Err(e) if e.code == Code::NotFound => {}
                    // The record is gone; a blob left behind is only space.
                    Err(e) => crated_plugin_api::tracing::warn!("deleting blob {digest}: {e}"),
                }
            }
        }
        let ev = ContentDelete { digest };
        self.events.publish(&ns, topics::CONTENT_DELETE, &ev).await;
        Ok(())
    }

    async fn read(
        self,
        call: Call,
        req: ReadContentRequest,
    ) -> Result<BoxStream<'static, Result<ReadContentResponse, Status>>, Status> {
        let ns = namespace(&call)?;
        self.namespaced_info(&ns, &req.digest).await?;
        self.host
            .streaming::<ReadContentRequest, ReadContentResponse, _>(&raw("Read"), futures::stream::iter([Ok(req)]))
            .await
    }

    async fn status(self, call: Call, req: StatusRequest) -> Result<StatusResponse, Status> {
        let ns = namespace(&call)?;
        let inner = StatusRequest { r#ref: raw_ref(&ns, &req.r#ref) };
        let mut r: StatusResponse = self.host.unary(&raw("Status"), &inner).await?;
        if let Some(st) = r.status.as_mut() {
            st.r#ref = req.r#ref;
        }
        Ok(r)
    }

    async fn list_statuses(self, call: Call, req: ListStatusesRequest) -> Result<ListStatusesResponse, Status> {
        let ns = namespace(&call)?;
        let filter = AnyFilter::parse(&req.filters)?;
        let all: ListStatusesResponse =
            self.host.unary(&raw("ListStatuses"), &ListStatusesRequest { filters: vec![] }).await?;
        let prefix = format!("{ns}/");
        let statuses = all
            .statuses
            .into_iter()
            .filter_map(|mut s| {
                s.r#ref = s.r#ref.strip_prefix(&prefix)?.to_string();
                Some(s)
            })
            .filter(|s| filter.matches(&StatusFields(s)))
            .collect();
        Ok(ListStatusesResponse { statuses })
    }

    async fn abort(self, call: Call, req: AbortRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        self.host.unary::<_, ()>(&raw("Abort"), &AbortRequest { r#ref: raw_ref(&ns, &req.r#ref) }).await?;
        let s = self.store.clone();
        blocking(move || Ok(s.close_ingest(&ns, &req.r#ref, None)?)).await
    }

    async fn write(
        self,
        call: Call,
        input: Streaming<WriteContentRequest>,
    ) -> Result<impl futures::Stream<Item = Result<WriteContentResponse, Status>>, Status> {
        let ns = namespace(&call)?;
        let lease = call.header(LEASE_HEADER).filter(|l| !l.is_empty()).map(str::to_string);
        let w = Writer {
            svc: self,
            ns,
            lease,
            client_ref: String::new(),
            input,
            mode: Mode::Unopened,
            raw: None,
            last_digest: String::new(),
            pin: None,
            done: false,
        };
        Ok(futures::stream::unfold(w, |mut w| async move {
            if w.done {
                return None;
            }
            let item = w.next().await?;
            w.done = item.is_err();
            Some((item, w))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_in_messages() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(digest_in(&format!("content {d}: already exists")).as_deref(), Some(d));
        assert_eq!(digest_in("content sha256:abc: already exists"), None);
        assert_eq!(digest_in("nothing"), None);
    }
}
