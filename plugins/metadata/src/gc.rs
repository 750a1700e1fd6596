//! The garbage collector over the metadata store: containerd's
//! `core/metadata/gc.go` and `db.go` (`GarbageCollect`) with the tricolor
//! marking of `pkg/gc`, over redb.
//!
//! A collection has three steps:
//! 1. *Stop the world*: every snapshotter's lock (so no snapshot change is
//!    between its transaction and its backend call) and one redb write
//!    transaction (so no other write commits). Inside it the store is read
//!    into a [`StoreView`], turned into a reference [`Graph`]
//!    ([`build_graph`]), marked ([`mark`]), and every unreached content
//!    record, snapshot record and lease (with its resource rows) is deleted;
//!    the transaction commits and the locks go. This is the pause. The
//!    writes of the ingests whose records went are aborted in the raw
//!    store before the commit, so a writer re-opening the same ref (which
//!    waits for the transaction) starts afresh.
//! 2. *Backend snapshots*: per snapshotter, the start-up repair
//!    ([`SnapshotStore::recover`]) removes the backend snapshots no record
//!    refers to any more, children first, then the snapshotter's Cleanup
//!    runs if it has one.
//! 3. *Raw blobs*: the raw content store's blobs that no namespace records
//!    (no `blob_refs` row) are deleted, each re-checked under the content
//!    service's blob lock so that a commit recording the blob concurrently
//!    wins.
//!
//! Steps 2 and 3 also remove what a crash left behind (a blob committed
//! but never recorded, a backend snapshot whose record went), so a daemon
//! killed during a collection leaves only such orphans, which the next
//! collection removes.
//!
//! What is reachable (containerd 1.6's rules, in every namespace): roots are
//! images, containers, leases that are not expired (`containerd.io/gc.expire`,
//! RFC 3339) with the resources added to them, and content or snapshots
//! labelled `containerd.io/gc.root`. Edges: an image to its target; a
//! container to its snapshot; a snapshot to its parent; content, images,
//! containers and snapshots to what their `containerd.io/gc.ref.content[...]`
//! and `containerd.io/gc.ref.snapshot.<snapshotter>[/...]` labels name. A
//! lease labelled `containerd.io/gc.flat` keeps only its resources (and a
//! snapshot's parents), not what their labels refer to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_client::services::v1::{AbortRequest, DeleteContentRequest, ListContentRequest, ListContentResponse};
use crated_plugin_api::{Code, Host, Status};
use futures::StreamExt;
use redb::{ReadableTable, WriteTransaction};

use crate::db::{
    decode, ContainerRecord, ContentRecord, Db, DbError, ImageRecord, Labels, LeaseRecord, SnapshotRecord, BLOB_REFS,
    CONTAINERS, CONTENT, IMAGES, INGESTS, INGEST_LEASED, LEASES, LEASE_RESOURCES, SNAPSHOTS,
};
use crate::leases::{parse_rfc3339, EXPIRE_LABEL};
use crate::snapshots::SnapshotStore;

/// A label whose presence makes content or a snapshot a root (containerd
/// matches it as a prefix).
pub const ROOT_LABEL: &str = "containerd.io/gc.root";
/// Labels (this, or this followed by anything) naming content to keep.
pub const CONTENT_REF_LABEL: &str = "containerd.io/gc.ref.content";
/// Labels `<this><snapshotter>[/...]` naming a snapshot to keep.
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/gc.ref.snapshot.";
/// A lease labelled so keeps only its own resources.
pub const FLAT_LABEL: &str = "containerd.io/gc.flat";

/// The kinds of node in the reference graph. The `Flat` kinds are objects
/// reached through a flat lease: kept, but their labels are not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Content,
    ContentFlat,
    Snapshot,
    SnapshotFlat,
    Image,
    Container,
    Lease,
    Ingest,
}

/// A node: kind, namespace and key. A snapshot's key is
/// `<snapshotter>/<key>`, as containerd writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub kind: Kind,
    pub ns: String,
    pub key: String,
}

impl Node {
    pub fn new(kind: Kind, ns: &str, key: &str) -> Node {
        Node { kind, ns: ns.to_string(), key: key.to_string() }
    }

    pub fn snapshot(kind: Kind, ns: &str, snapshotter: &str, key: &str) -> Node {
        Node { kind, ns: ns.to_string(), key: format!("{snapshotter}/{key}") }
    }

    /// The object a node keeps: a flat node keeps the same object as its
    /// plain kind.
    pub fn object(&self) -> Node {
        let kind = match self.kind {
            Kind::ContentFlat => Kind::Content,
            Kind::SnapshotFlat => Kind::Snapshot,
            k => k,
        };
        Node { kind, ns: self.ns.clone(), key: self.key.clone() }
    }
}

/// The reference graph: roots, and each node's outgoing edges. Edges may
/// name nodes that do not exist (a label naming missing content); marking
/// them keeps nothing.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub roots: Vec<Node>,
    pub edges: HashMap<Node, Vec<Node>>,
}

/// Tricolor marking (containerd's `pkg/gc.Tricolor`): grey nodes are
/// reached and not yet scanned, black ones scanned. Returns the black set,
/// every node reachable from a root.
pub fn mark(graph: &Graph) -> HashSet<Node> {
    let mut black: HashSet<Node> = HashSet::new();
    let mut grey: Vec<&Node> = Vec::new();
    let mut seen: HashSet<&Node> = HashSet::new();
    for r in &graph.roots {
        if seen.insert(r) {
            grey.push(r);
        }
    }
    while let Some(n) = grey.pop() {
        if let Some(out) = graph.edges.get(n) {
            for m in out {
                if seen.insert(m) {
                    grey.push(m);
                }
            }
        }
        black.insert(n.clone());
    }
    black
}

/// A lease's resource, as the `lease_resources` table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedResource {
    /// `content`, `ingests` or `snapshots/<snapshotter>`.
    pub kind: String,
    pub id: String,
}

/// The part of the store a collection looks at, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// (namespace, digest, labels)
    pub content: Vec<(String, String, Labels)>,
    /// (namespace, snapshotter, key, parent key, labels)
    pub snapshots: Vec<(String, String, String, String, Labels)>,
    /// (namespace, name, target digest, labels)
    pub images: Vec<(String, String, String, Labels)>,
    /// (namespace, id, snapshotter, snapshot key, labels)
    pub containers: Vec<(String, String, String, String, Labels)>,
    /// (namespace, id, labels, resources)
    pub leases: Vec<(String, String, Labels, Vec<LeasedResource>)>,
    /// (namespace, ref, expiry in unix seconds or `INGEST_LEASED`)
    pub ingests: Vec<(String, String, i64)>,
}

/// The nodes an object's reference labels name, in its namespace.
fn label_refs(ns: &str, labels: &Labels, out: &mut Vec<Node>) {
    for (k, v) in labels {
        if k.starts_with(CONTENT_REF_LABEL) {
            out.push(Node::new(Kind::Content, ns, v));
        } else if let Some(rest) = k.strip_prefix(SNAPSHOT_REF_LABEL) {
            let sn = rest.split('/').next().unwrap_or_default();
            if !sn.is_empty() {
                out.push(Node::snapshot(Kind::Snapshot, ns, sn, v));
            }
        }
    }
}

fn is_root(labels: &Labels) -> bool {
    labels.range(ROOT_LABEL.to_string()..).next().is_some_and(|(k, _)| k.starts_with(ROOT_LABEL))
}

/// Whether a lease's `containerd.io/gc.expire` lies before `now` (seconds
/// since the epoch). An unparsable expiry is ignored, as containerd does.
pub fn expired(labels: &Labels, now: i64) -> bool {
    labels.get(EXPIRE_LABEL).and_then(|s| parse_rfc3339(s)).is_some_and(|exp| exp < now)
}

/// The reference graph of a store at time `now` (seconds since the epoch).
pub fn build_graph(view: &StoreView, now: i64) -> Graph {
    let mut g = Graph::default();
    for (ns, digest, labels) in &view.content {
        let mut out = Vec::new();
        label_refs(ns, labels, &mut out);
        if is_root(labels) {
            g.roots.push(Node::new(Kind::Content, ns, digest));
        }
        g.edges.insert(Node::new(Kind::Content, ns, digest), out);
    }
    for (ns, sn, key, parent, labels) in &view.snapshots {
        let mut out = Vec::new();
        if !parent.is_empty() {
            out.push(Node::snapshot(Kind::Snapshot, ns, sn, parent));
            g.edges.insert(
                Node::snapshot(Kind::SnapshotFlat, ns, sn, key),
                vec![Node::snapshot(Kind::SnapshotFlat, ns, sn, parent)],
            );
        }
        label_refs(ns, labels, &mut out);
        if is_root(labels) {
            g.roots.push(Node::snapshot(Kind::Snapshot, ns, sn, key));
        }
        g.edges.insert(Node::snapshot(Kind::Snapshot, ns, sn, key), out);
    }
    for (ns, name, target, labels) in &view.images {
        let node = Node::new(Kind::Image, ns, name);
        let mut out = vec![Node::new(Kind::Content, ns, target)];
        label_refs(ns, labels, &mut out);
        g.roots.push(node.clone());
        g.edges.insert(node, out);
    }
    for (ns, id, sn, key, labels) in &view.containers {
        let node = Node::new(Kind::Container, ns, id);
        let mut out = Vec::new();
        if !sn.is_empty() {
            out.push(Node::snapshot(Kind::Snapshot, ns, sn, key));
        }
        label_refs(ns, labels, &mut out);
        g.roots.push(node.clone());
        g.edges.insert(node, out);
    }
    for (ns, id, labels, resources) in &view.leases {
        if expired(labels, now) {
            continue;
        }
        let flat = labels.contains_key(FLAT_LABEL);
        let node = Node::new(Kind::Lease, ns, id);
        let mut out = Vec::new();
        for r in resources {
            match r.kind.split_once('/') {
                None if r.kind == "content" => {
                    out.push(Node::new(if flat { Kind::ContentFlat } else { Kind::Content }, ns, &r.id))
                }
                None if r.kind == "ingests" => out.push(Node::new(Kind::Ingest, ns, &r.id)),
                Some(("snapshots", sn)) => {
                    out.push(Node::snapshot(if flat { Kind::SnapshotFlat } else { Kind::Snapshot }, ns, sn, &r.id))
                }
                _ => {}
            }
        }
        g.roots.push(node.clone());
        g.edges.insert(node, out);
    }
    // An ingest written without a lease is a root until it expires; a
    // leased one is reached through its lease only, so it goes with it.
    for (ns, r, expire) in &view.ingests {
        if *expire != INGEST_LEASED && *expire > now {
            g.roots.push(Node::new(Kind::Ingest, ns, r));
        }
    }
    g
}

/// The objects (plain kinds) a store keeps at time `now`.
pub fn live(view: &StoreView, now: i64) -> HashSet<Node> {
    mark(&build_graph(view, now)).iter().map(Node::object).collect()
}

/// Reads the store into a [`StoreView`].
pub fn read_view(txn: &WriteTransaction) -> Result<StoreView, DbError> {
    let mut v = StoreView::default();
    for item in txn.open_table(CONTENT)?.iter()? {
        let (k, val) = item?;
        let (ns, digest) = k.value();
        let rec: ContentRecord = decode("content", val.value())?;
        v.content.push((ns.to_string(), digest.to_string(), rec.labels));
    }
    for item in txn.open_table(SNAPSHOTS)?.iter()? {
        let (k, val) = item?;
        let (ns, sn, key) = k.value();
        let rec: SnapshotRecord = decode("snapshots", val.value())?;
        v.snapshots.push((ns.to_string(), sn.to_string(), key.to_string(), rec.parent, rec.labels));
    }
    for item in txn.open_table(IMAGES)?.iter()? {
        let (k, val) = item?;
        let (ns, name) = k.value();
        let rec: ImageRecord = decode("images", val.value())?;
        v.images.push((ns.to_string(), name.to_string(), rec.target.digest, rec.labels));
    }
    for item in txn.open_table(CONTAINERS)?.iter()? {
        let (k, val) = item?;
        let (ns, id) = k.value();
        let rec: ContainerRecord = decode("containers", val.value())?;
        v.containers.push((ns.to_string(), id.to_string(), rec.snapshotter, rec.snapshot_key, rec.labels));
    }
    let mut resources: BTreeMap<(String, String), Vec<LeasedResource>> = BTreeMap::new();
    for item in txn.open_table(LEASE_RESOURCES)?.iter()? {
        let (k, _) = item?;
        let (ns, lease, kind, id) = k.value();
        resources
            .entry((ns.to_string(), lease.to_string()))
            .or_default()
            .push(LeasedResource { kind: kind.to_string(), id: id.to_string() });
    }
    for item in txn.open_table(LEASES)?.iter()? {
        let (k, val) = item?;
        let (ns, id) = k.value();
        let rec: LeaseRecord = decode("leases", val.value())?;
        let res = resources.remove(&(ns.to_string(), id.to_string())).unwrap_or_default();
        v.leases.push((ns.to_string(), id.to_string(), rec.labels, res));
    }
    for item in txn.open_table(INGESTS)?.iter()? {
        let (k, val) = item?;
        let (ns, r) = k.value();
        v.ingests.push((ns.to_string(), r.to_string(), val.value()));
    }
    Ok(v)
}

/// What the sweep transaction removed.
#[derive(Debug, Default)]
pub struct Swept {
    pub content: usize,
    pub snapshots: usize,
    pub leases: usize,
    /// (namespace, ref) of the ingests whose records went: their writes
    /// are aborted after the transaction.
    pub ingests: Vec<(String, String)>,
}

/// Marks and deletes the unreached records, all in the caller's write
/// transaction.
pub fn sweep_in(txn: &WriteTransaction, now: i64) -> Result<Swept, DbError> {
    let view = read_view(txn)?;
    let live = live(&view, now);
    let mut swept = Swept::default();
    {
        let mut content = txn.open_table(CONTENT)?;
        let mut refs = txn.open_table(BLOB_REFS)?;
        for (ns, digest, _) in &view.content {
            if !live.contains(&Node::new(Kind::Content, ns, digest)) {
                content.remove((ns.as_str(), digest.as_str()))?;
                refs.remove((digest.as_str(), ns.as_str()))?;
                swept.content += 1;
            }
        }
    }
    let snapshot_records = txn.open_table(SNAPSHOTS)?;
    let mut dead_snapshots = Vec::new();
    for (ns, sn, key, _, _) in &view.snapshots {
        if !live.contains(&Node::snapshot(Kind::Snapshot, ns, sn, key)) {
            let rec: SnapshotRecord = match snapshot_records.get((ns.as_str(), sn.as_str(), key.as_str()))? {
                Some(v) => decode("snapshots", v.value())?,
                None => continue,
            };
            dead_snapshots.push((ns, sn, key, rec));
        }
    }
    drop(snapshot_records);
    for (ns, sn, key, rec) in dead_snapshots {
        crate::snapshots::delete_in(txn, ns, sn, key, &rec).map_err(|e| match e {
            crate::snapshots::SnapshotError::Db(d) => d,
            other => DbError::Corrupt { table: "snapshots", message: other.to_string() },
        })?;
        swept.snapshots += 1;
    }
    for (ns, id, _, _) in &view.leases {
        if !live.contains(&Node::new(Kind::Lease, ns, id)) {
            crate::leases::delete_in(txn, ns, id).map_err(|e| match e {
                crate::leases::LeaseError::Db(d) => d,
                other => DbError::Corrupt { table: "leases", message: other.to_string() },
            })?;
            swept.leases += 1;
        }
    }
    let mut ingests = txn.open_table(INGESTS)?;
    for (ns, r, _) in &view.ingests {
        if !live.contains(&Node::new(Kind::Ingest, ns, r)) {
            ingests.remove((ns.as_str(), r.as_str()))?;
            swept.ingests.push((ns.clone(), r.clone()));
        }
    }
    Ok(swept)
}

/// Aborts the raw store's ingest of `r` in `ns` (the metadata plugin names
/// raw refs `<namespace>/<ref>`); one already gone is fine.
async fn abort_raw_ingest(host: &Host, ns: &str, r: &str) {
    let req = AbortRequest { r#ref: format!("{ns}/{r}") };
    match host.unary::<_, ()>(&Host::call(&format!("{RAW_CONTENT}/Abort"), None), &req).await {
        Ok(()) => {}
        Err(e) if e.code == Code::NotFound => {}
        Err(e) => crated_plugin_api::tracing::warn!("gc: aborting ingest {r} in {ns}: {}", e.message),
    }
}

/// What one collection did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub duration: Duration,
    pub pause: Duration,
    /// By kind: `content` and `snapshots` (records), `leases`, `blobs` and
    /// `backend_snapshots` (raw blobs and backend snapshots deleted).
    pub removed: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("garbage collection: {0}")]
    Backend(String),
}

/// The collector: one collection at a time.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    snapshots: SnapshotStore,
    host: Host,
    blob_lock: Arc<tokio::sync::Mutex<()>>,
    /// Raw blobs open writers rely on (the content service's pins).
    blob_pins: crate::service::content::BlobPins,
    running: tokio::sync::Mutex<()>,
}

const RAW_CONTENT: &str = "/containerd.services.content.v1.Content";

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

impl Collector {
    /// A collector over `db`, the snapshot store, and the raw content
    /// plugin reached through `host`; `blob_lock` is the content service's
    /// lock ordering commits against deletes of raw blobs.
    pub fn new(
        db: Db,
        snapshots: SnapshotStore,
        host: Host,
        blob_lock: Arc<tokio::sync::Mutex<()>>,
        blob_pins: crate::service::content::BlobPins,
    ) -> Self {
        let running = tokio::sync::Mutex::new(());
        Collector { inner: Arc::new(Inner { db, snapshots, host, blob_lock, blob_pins, running }) }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Runs one collection (waiting for one in progress to finish first).
    pub async fn collect(&self) -> Result<Report, GcError> {
        let inner = &self.inner;
        let _serial = inner.running.lock().await;
        let started = Instant::now();

        // 1. Stop the world: mark and sweep the records.
        let guards = inner.snapshots.lock_all().await;
        let paused = Instant::now();
        let db = inner.db.clone();
        let now = now_secs();
        let (host, runtime) = (inner.host.clone(), tokio::runtime::Handle::current());
        let swept = tokio::task::spawn_blocking(move || {
            db.write_quiet(|txn| {
                let swept = sweep_in(txn, now)?;
                // The writes of swept ingests are aborted before the
                // transaction commits: a writer re-opening the same ref
                // records it in a transaction of its own, which waits for
                // this one, so it always gets a fresh ingest and never one
                // this collection is about to abort.
                for (ns, r) in &swept.ingests {
                    runtime.block_on(abort_raw_ingest(&host, ns, r));
                }
                Ok::<_, DbError>(swept)
            })
        })
        .await
        .map_err(|e| GcError::Backend(format!("sweep task: {e}")))??;
        let pause = paused.elapsed();
        drop(guards);

        // 2. Backend snapshots without a record, then Cleanup.
        let mut backend_snapshots = 0u64;
        for sn in inner.snapshots.snapshotters() {
            match inner.snapshots.recover(&sn).await {
                Ok((_, removed)) => backend_snapshots += removed as u64,
                Err(e) => crated_plugin_api::tracing::warn!("gc: snapshotter {sn}: {e}"),
            }
            match inner.snapshots.cleanup(&sn).await {
                Ok(()) => {}
                Err(e) if e.kind() == crated_plugin_api::ErrorKind::NotImplemented => {}
                Err(e) => crated_plugin_api::tracing::warn!("gc: snapshotter {sn}: cleanup: {e}"),
            }
        }

        // 3. Raw blobs no namespace records.
        let blobs = self.remove_unreferenced_blobs().await?;

        let mut removed = BTreeMap::new();
        removed.insert("content".to_string(), swept.content as u64);
        removed.insert("snapshots".to_string(), swept.snapshots as u64);
        removed.insert("leases".to_string(), swept.leases as u64);
        removed.insert("ingests".to_string(), swept.ingests.len() as u64);
        removed.insert("blobs".to_string(), blobs);
        removed.insert("backend_snapshots".to_string(), backend_snapshots);
        let report = Report { duration: started.elapsed(), pause, removed };
        crated_plugin_api::tracing::debug!(
            "garbage collected in {:?} (paused {:?}): removed {} content records, {} snapshot records, {} leases, \
             {} blobs, {} backend snapshots",
            report.duration,
            report.pause,
            swept.content,
            swept.snapshots,
            swept.leases,
            blobs,
            backend_snapshots
        );
        Ok(report)
    }

    /// Deletes the raw blobs with no `blob_refs` row. The list is taken
    /// without the blob lock; each deletion re-checks under it, so a blob
    /// a commit records meanwhile stays.
    async fn remove_unreferenced_blobs(&self) -> Result<u64, GcError> {
        let inner = &self.inner;
        let call = Host::call(&format!("{RAW_CONTENT}/List"), None);
        let mut stream = inner
            .host
            .streaming::<ListContentRequest, ListContentResponse, _>(
                &call,
                futures::stream::iter([Ok(ListContentRequest::default())]),
            )
            .await
            .map_err(|e| GcError::Backend(format!("listing blobs: {}", e.message)))?;
        let mut digests: BTreeSet<String> = BTreeSet::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| GcError::Backend(format!("listing blobs: {}", e.message)))?;
            digests.extend(batch.info.into_iter().map(|i| i.digest));
        }
        let unreferenced = |db: &Db, digests: Vec<String>| -> Result<Vec<String>, DbError> {
            db.read(|txn| {
                let refs = txn.open_table(BLOB_REFS)?;
                let mut out = Vec::new();
                for d in digests {
                    let referenced = match refs.range((d.as_str(), "")..)?.next() {
                        Some(item) => item?.0.value().0 == d,
                        None => false,
                    };
                    if !referenced {
                        out.push(d);
                    }
                }
                Ok(out)
            })
        };
        let db = inner.db.clone();
        let all: Vec<String> = digests.into_iter().collect();
        let candidates = tokio::task::spawn_blocking(move || unreferenced(&db, all))
            .await
            .map_err(|e| GcError::Backend(format!("blob check task: {e}")))??;
        if candidates.is_empty() {
            return Ok(0);
        }
        let _blobs = inner.blob_lock.lock().await;
        let db = inner.db.clone();
        let mut doomed = tokio::task::spawn_blocking(move || unreferenced(&db, candidates))
            .await
            .map_err(|e| GcError::Backend(format!("blob check task: {e}")))??;
        {
            let pins = inner.blob_pins.lock().unwrap_or_else(|p| p.into_inner());
            doomed.retain(|d| !pins.contains_key(d));
        }
        let mut removed = 0;
        for digest in doomed {
            let call = Host::call(&format!("{RAW_CONTENT}/Delete"), None);
            match inner.host.unary::<_, ()>(&call, &DeleteContentRequest { digest: digest.clone() }).await {
                Ok(()) => removed += 1,
                Err(e) if e.code == Code::NotFound => {}
                Err(e) => crated_plugin_api::tracing::warn!("gc: deleting blob {digest}: {e}"),
            }
        }
        Ok(removed)
    }
}

impl From<GcError> for Status {
    fn from(e: GcError) -> Status {
        Status::internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn labels_roots_leases_and_flat() {
        let mut v = StoreView::default();
        v.content.push(("a".into(), "idx".into(), labels(&[("containerd.io/gc.ref.content.m.0", "man")])));
        v.content.push(("a".into(), "man".into(), labels(&[("containerd.io/gc.ref.snapshot.overlayfs/0", "s2")])));
        v.content.push(("a".into(), "loose".into(), Labels::new()));
        v.content.push(("a".into(), "pinned".into(), labels(&[(ROOT_LABEL, "x")])));
        v.content.push(("a".into(), "flat".into(), labels(&[("containerd.io/gc.ref.content", "behind-flat")])));
        v.content.push(("a".into(), "behind-flat".into(), Labels::new()));
        v.content.push(("a".into(), "expired".into(), Labels::new()));
        v.snapshots.push(("a".into(), "overlayfs".into(), "s1".into(), "".into(), Labels::new()));
        v.snapshots.push(("a".into(), "overlayfs".into(), "s2".into(), "s1".into(), Labels::new()));
        v.snapshots.push(("a".into(), "overlayfs".into(), "s3".into(), "".into(), Labels::new()));
        v.images.push(("a".into(), "img".into(), "idx".into(), Labels::new()));
        let res = |kind: &str, id: &str| LeasedResource { kind: kind.into(), id: id.into() };
        v.leases.push(("a".into(), "f".into(), labels(&[(FLAT_LABEL, "")]), vec![res("content", "flat")]));
        v.leases.push((
            "a".into(),
            "old".into(),
            labels(&[(EXPIRE_LABEL, "2000-01-01T00:00:00Z")]),
            vec![res("content", "expired")],
        ));
        let live = live(&v, parse_rfc3339("2024-01-01T00:00:00Z").unwrap());
        let has = |k: Kind, key: &str| live.contains(&Node::new(k, "a", key));
        assert!(has(Kind::Content, "idx") && has(Kind::Content, "man") && has(Kind::Content, "pinned"));
        assert!(has(Kind::Snapshot, "overlayfs/s2") && has(Kind::Snapshot, "overlayfs/s1"));
        assert!(has(Kind::Content, "flat") && !has(Kind::Content, "behind-flat"));
        assert!(!has(Kind::Content, "loose") && !has(Kind::Content, "expired"));
        assert!(!has(Kind::Snapshot, "overlayfs/s3"));
        assert!(has(Kind::Lease, "f") && !has(Kind::Lease, "old"));
    }

    #[test]
    fn ingests_kept_by_their_lease_or_until_they_expire() {
        let mut v = StoreView::default();
        let now = parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
        let res = |id: &str| LeasedResource { kind: "ingests".into(), id: id.into() };
        v.leases.push(("a".into(), "pull".into(), Labels::new(), vec![res("leased")]));
        v.ingests.push(("a".into(), "leased".into(), INGEST_LEASED));
        v.ingests.push(("a".into(), "orphaned".into(), INGEST_LEASED));
        v.ingests.push(("a".into(), "fresh".into(), now + 60));
        v.ingests.push(("a".into(), "stale".into(), now - 60));
        let live = live(&v, now);
        let has = |key: &str| live.contains(&Node::new(Kind::Ingest, "a", key));
        assert!(has("leased") && has("fresh"));
        assert!(!has("orphaned") && !has("stale"));
    }
}
