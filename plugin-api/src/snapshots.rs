//! The SDK for snapshotter authors: one trait ([`Snapshotter`]), one entry
//! point that turns it into a plugin ([`SnapshotterPlugin`] +
//! [`export_snapshotters!`](crate::export_snapshotters)), and a typed
//! in-process client ([`SnapshotterClient`]) for the plugins that call
//! snapshotters (the metadata plugin).
//!
//! A snapshotter serves containerd's `containerd.services.snapshots.v1.Snapshots`
//! API, raw (no namespaces): exactly what containerd's proxy snapshotters
//! serve. In crated it serves it to its dependents only
//! ([`ServiceRouter::internal`]); the metadata plugin puts the one namespaced
//! Snapshots service on the socket and picks a snapshotter per request by the
//! request's `snapshotter` name. Because the API is the same bytes either
//! way, the same implementation can also be served on its own unix socket as
//! a proxy plugin, for crated or for containerd.
//!
//! The bundled overlayfs and native snapshotters are written against
//! exactly this trait.

use std::{collections::HashMap, future::Future, marker::PhantomData, sync::Arc};

pub use containerd_client::services::v1::snapshots::{self as api, Info, Kind};
pub use containerd_client::types::Mount;

use crate::{
    filters::{labels_field, AnyFilter, Fields},
    plugin::{InitCtx, Plugin, PluginError, PluginInfo},
    service::{Call, ServiceRouter},
    types, Host, Status,
};

/// The gRPC service every snapshotter serves.
pub const SERVICE: &str = "containerd.services.snapshots.v1.Snapshots";

/// The method paths of [`SERVICE`].
pub mod method {
    pub const PREPARE: &str = "/containerd.services.snapshots.v1.Snapshots/Prepare";
    pub const VIEW: &str = "/containerd.services.snapshots.v1.Snapshots/View";
    pub const MOUNTS: &str = "/containerd.services.snapshots.v1.Snapshots/Mounts";
    pub const COMMIT: &str = "/containerd.services.snapshots.v1.Snapshots/Commit";
    pub const REMOVE: &str = "/containerd.services.snapshots.v1.Snapshots/Remove";
    pub const STAT: &str = "/containerd.services.snapshots.v1.Snapshots/Stat";
    pub const UPDATE: &str = "/containerd.services.snapshots.v1.Snapshots/Update";
    pub const LIST: &str = "/containerd.services.snapshots.v1.Snapshots/List";
    pub const USAGE: &str = "/containerd.services.snapshots.v1.Snapshots/Usage";
    pub const CLEANUP: &str = "/containerd.services.snapshots.v1.Snapshots/Cleanup";
}

/// Labels containerd passes to snapshotters.
pub mod labels {
    /// On a Prepare/Commit: the name a committed snapshot is known by across
    /// namespaces; the metadata plugin shares a layer through it.
    pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
    /// Prefix of labels that are passed through to the snapshotter (the rest
    /// are kept by the metadata store only).
    pub const SNAPSHOT_PREFIX: &str = "containerd.io/snapshot/";
    /// Set by containerd's unpacker for remote (lazy-pulling) snapshotters:
    /// the digest of the compressed layer this snapshot stands for.
    pub const TARGET_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
    /// The image reference the layer comes from (remote snapshotters).
    pub const TARGET_REF: &str = "containerd.io/snapshot/cri.image-ref";
    /// The chain of layers below (remote snapshotters).
    pub const TARGET_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
    /// The manifest the layer belongs to (remote snapshotters).
    pub const TARGET_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
}

/// Disk usage of a snapshot: bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// A snapshotter, as containerd defines one. Every method is async; keys
/// are the raw (un-namespaced) keys the caller chose.
///
/// Errors: `Self::Error` converts into a [`Status`], and that conversion is
/// part of the contract: a missing key must become `NotFound`, a duplicate
/// key `AlreadyExists`, a parent that is not committed or a parent with
/// children `FailedPrecondition`, bad arguments `InvalidArgument`. Callers
/// (the metadata plugin, ctr, containerd) act on those codes.
pub trait Snapshotter: Send + Sync + 'static {
    type Error: std::error::Error + Into<Status> + Send + 'static;

    /// The snapshot's info (name, parent, kind, labels, times).
    fn stat(&self, key: &str) -> impl Future<Output = Result<Info, Self::Error>> + Send;

    /// Replaces the labels of `info.name`: all of them when `fieldpaths` is
    /// empty, else only those named (`labels` or `labels.<key>`). Returns
    /// the updated info.
    fn update(&self, info: Info, fieldpaths: Vec<String>) -> impl Future<Output = Result<Info, Self::Error>> + Send;

    /// Disk usage: of the layer itself for a committed snapshot, of what was
    /// written so far for an active one.
    fn usage(&self, key: &str) -> impl Future<Output = Result<Usage, Self::Error>> + Send;

    /// The mounts of an active snapshot or view.
    fn mounts(&self, key: &str) -> impl Future<Output = Result<Vec<Mount>, Self::Error>> + Send;

    /// A new active (writable) snapshot on top of committed `parent` (empty:
    /// no parent).
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<Vec<Mount>, Self::Error>> + Send;

    /// A new read-only view of committed `parent`.
    fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<Vec<Mount>, Self::Error>> + Send;

    /// Turns active snapshot `key` into committed snapshot `name`.
    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Removes a snapshot; a committed one with children is refused.
    fn remove(&self, key: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Every snapshot. The SDK applies the request's filters.
    fn list(&self) -> impl Future<Output = Result<Vec<Info>, Self::Error>> + Send;

    /// Removes what no snapshot uses any more (left-overs of crashes).
    // Spelt out rather than `async fn` so that the returned future is
    // declared `Send`, as every other method's is.
    #[allow(clippy::manual_async_fn)]
    fn cleanup(&self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// A snapshotter that can be loaded as a plugin: how it describes itself and
/// how it is built from its init context.
pub trait SnapshotterPlugin: Snapshotter + Sized {
    /// The plugin's id (`overlayfs`, `native`, ...); the type is always
    /// [`types::SNAPSHOTTER`].
    const ID: &'static str;

    /// The plugin's description; override to add config defaults, exports
    /// or requirements. The type and id are set by the SDK.
    fn info() -> PluginInfo {
        PluginInfo::default()
    }

    /// Builds the snapshotter. Return [`PluginError::Skip`] where it cannot
    /// work (e.g. a backing filesystem without overlay support).
    fn new(ctx: InitCtx) -> impl Future<Output = Result<Self, PluginError>> + Send + 'static;
}

/// The generic [`Plugin`] for a [`SnapshotterPlugin`]: what
/// [`export_snapshotters!`](crate::export_snapshotters) registers.
pub struct AsPlugin<S>(PhantomData<S>);

impl<S: SnapshotterPlugin> Plugin for AsPlugin<S> {
    fn info() -> PluginInfo {
        let mut info = S::info();
        info.plugin_type = types::SNAPSHOTTER.into();
        info.id = S::ID.into();
        info
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(router(S::new(ctx).await?).internal(SERVICE))
    }
}

/// Exports snapshotters as the plugins of a library:
/// `export_snapshotters!(Overlay, Native);`
#[macro_export]
macro_rules! export_snapshotters {
    ($($s:ty),+ $(,)?) => {
        $crate::export_plugins!($($crate::snapshots::AsPlugin<$s>),+);
    };
}

fn status<E: Into<Status>>(e: E) -> Status {
    e.into()
}

/// A snapshot's fields for containerd's filters: `name`, `parent`, `kind`,
/// `labels.<key>`.
struct InfoFields<'a>(&'a Info);

impl Fields for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<std::borrow::Cow<'_, str>> {
        let i = self.0;
        match path.first().map(String::as_str)? {
            "name" if path.len() == 1 => Some(i.name.as_str().into()),
            "parent" if path.len() == 1 => Some(i.parent.as_str().into()),
            "kind" if path.len() == 1 => Some(kind_name(i.kind).into()),
            "labels" => labels_field(path, i.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            _ => None,
        }
    }
}

/// The name containerd prints and filters by for a kind.
pub fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::View) => "view",
        Ok(Kind::Active) => "active",
        Ok(Kind::Committed) => "committed",
        _ => "unknown",
    }
}

/// How many infos go in one List response (containerd sends 100).
pub const LIST_BATCH: usize = 100;

/// Serves `s` as the raw Snapshots API. The plugin entry point marks it
/// internal; a proxy server serves the same router on its own socket.
pub fn router<S: Snapshotter>(s: S) -> ServiceRouter {
    let svc = SnapshotsService(Arc::new(s));
    ServiceRouter::new()
        .unary_with(method::PREPARE, &svc, SnapshotsService::prepare)
        .unary_with(method::VIEW, &svc, SnapshotsService::view)
        .unary_with(method::MOUNTS, &svc, SnapshotsService::mounts)
        .unary_with(method::COMMIT, &svc, SnapshotsService::commit)
        .unary_with(method::REMOVE, &svc, SnapshotsService::remove)
        .unary_with(method::STAT, &svc, SnapshotsService::stat)
        .unary_with(method::UPDATE, &svc, SnapshotsService::update)
        .unary_with(method::USAGE, &svc, SnapshotsService::usage)
        .unary_with(method::CLEANUP, &svc, SnapshotsService::cleanup)
        .server_streaming_with(method::LIST, &svc, SnapshotsService::list)
}

/// The gRPC face of a [`Snapshotter`]: decodes, validates, converts errors.
struct SnapshotsService<S>(Arc<S>);

impl<S> Clone for SnapshotsService<S> {
    fn clone(&self) -> Self {
        SnapshotsService(self.0.clone())
    }
}

impl<S: Snapshotter> SnapshotsService<S> {
    async fn prepare(self, _: Call, req: api::PrepareSnapshotRequest) -> Result<api::PrepareSnapshotResponse, Status> {
        validate_labels(&req.labels)?;
        let mounts = self.0.prepare(&req.key, &req.parent, req.labels).await.map_err(status)?;
        Ok(api::PrepareSnapshotResponse { mounts })
    }

    async fn view(self, _: Call, req: api::ViewSnapshotRequest) -> Result<api::ViewSnapshotResponse, Status> {
        validate_labels(&req.labels)?;
        let mounts = self.0.view(&req.key, &req.parent, req.labels).await.map_err(status)?;
        Ok(api::ViewSnapshotResponse { mounts })
    }

    async fn mounts(self, _: Call, req: api::MountsRequest) -> Result<api::MountsResponse, Status> {
        Ok(api::MountsResponse { mounts: self.0.mounts(&req.key).await.map_err(status)? })
    }

    async fn commit(self, _: Call, req: api::CommitSnapshotRequest) -> Result<(), Status> {
        validate_labels(&req.labels)?;
        self.0.commit(&req.name, &req.key, req.labels).await.map_err(status)
    }

    async fn remove(self, _: Call, req: api::RemoveSnapshotRequest) -> Result<(), Status> {
        self.0.remove(&req.key).await.map_err(status)
    }

    async fn stat(self, _: Call, req: api::StatSnapshotRequest) -> Result<api::StatSnapshotResponse, Status> {
        Ok(api::StatSnapshotResponse { info: Some(self.0.stat(&req.key).await.map_err(status)?) })
    }

    async fn update(self, _: Call, req: api::UpdateSnapshotRequest) -> Result<api::UpdateSnapshotResponse, Status> {
        let info = req.info.ok_or_else(|| Status::invalid_argument("update: info is required"))?;
        validate_labels(&info.labels)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        Ok(api::UpdateSnapshotResponse { info: Some(self.0.update(info, paths).await.map_err(status)?) })
    }

    async fn usage(self, _: Call, req: api::UsageRequest) -> Result<api::UsageResponse, Status> {
        let u = self.0.usage(&req.key).await.map_err(status)?;
        Ok(api::UsageResponse { size: u.size, inodes: u.inodes })
    }

    async fn cleanup(self, _: Call, _: api::CleanupRequest) -> Result<(), Status> {
        self.0.cleanup().await.map_err(status)
    }

    async fn list(
        self,
        _: Call,
        req: api::ListSnapshotsRequest,
    ) -> Result<impl futures::Stream<Item = Result<api::ListSnapshotsResponse, Status>>, Status> {
        let filter = AnyFilter::parse(&req.filters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let infos: Vec<Info> =
            self.0.list().await.map_err(status)?.into_iter().filter(|i| filter.matches(&InfoFields(i))).collect();
        let batches: Vec<Result<api::ListSnapshotsResponse, Status>> =
            infos.chunks(LIST_BATCH).map(|c| Ok(api::ListSnapshotsResponse { info: c.to_vec() })).collect();
        Ok(futures::stream::iter(batches))
    }
}

fn validate_labels(labels: &HashMap<String, String>) -> Result<(), Status> {
    crate::validate::labels(labels).map_err(Status::invalid_argument)
}

/// A typed client of one snapshotter, in process, over the [`Host`]: the
/// host should be aimed at the snapshotter with [`Host::to`]. Errors come
/// back as [`Status`] with the snapshotter's code.
#[derive(Clone)]
pub struct SnapshotterClient {
    host: Host,
}

impl SnapshotterClient {
    /// A client of the dependency `key` (`io.containerd.snapshotter.v1.<id>`).
    pub fn new(host: &Host, key: &str) -> SnapshotterClient {
        SnapshotterClient { host: host.to(key) }
    }

    async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        self.host.unary(&Host::call(method, None), req).await
    }

    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let req = api::PrepareSnapshotRequest { key: key.into(), parent: parent.into(), labels, ..Default::default() };
        let r: api::PrepareSnapshotResponse = self.call(method::PREPARE, &req).await?;
        Ok(r.mounts)
    }

    pub async fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>, Status> {
        let req = api::ViewSnapshotRequest { key: key.into(), parent: parent.into(), labels, ..Default::default() };
        let r: api::ViewSnapshotResponse = self.call(method::VIEW, &req).await?;
        Ok(r.mounts)
    }

    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Status> {
        let r: api::MountsResponse =
            self.call(method::MOUNTS, &api::MountsRequest { key: key.into(), ..Default::default() }).await?;
        Ok(r.mounts)
    }

    pub async fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<(), Status> {
        let req = api::CommitSnapshotRequest { name: name.into(), key: key.into(), labels, ..Default::default() };
        self.call::<_, ()>(method::COMMIT, &req).await
    }

    pub async fn remove(&self, key: &str) -> Result<(), Status> {
        let req = api::RemoveSnapshotRequest { key: key.into(), ..Default::default() };
        self.call::<_, ()>(method::REMOVE, &req).await
    }

    pub async fn stat(&self, key: &str) -> Result<Info, Status> {
        let r: api::StatSnapshotResponse =
            self.call(method::STAT, &api::StatSnapshotRequest { key: key.into(), ..Default::default() }).await?;
        r.info.ok_or_else(|| Status::internal("snapshotter answered Stat without info"))
    }

    pub async fn update(&self, info: Info, fieldpaths: Vec<String>) -> Result<Info, Status> {
        let req = api::UpdateSnapshotRequest {
            info: Some(info),
            update_mask: (!fieldpaths.is_empty()).then_some(prost_types::FieldMask { paths: fieldpaths }),
            ..Default::default()
        };
        let r: api::UpdateSnapshotResponse = self.call(method::UPDATE, &req).await?;
        r.info.ok_or_else(|| Status::internal("snapshotter answered Update without info"))
    }

    pub async fn usage(&self, key: &str) -> Result<Usage, Status> {
        let r: api::UsageResponse =
            self.call(method::USAGE, &api::UsageRequest { key: key.into(), ..Default::default() }).await?;
        Ok(Usage { size: r.size, inodes: r.inodes })
    }

    pub async fn cleanup(&self) -> Result<(), Status> {
        self.call::<_, ()>(method::CLEANUP, &api::CleanupRequest::default()).await
    }

    /// Every snapshot matching `filters` (containerd's syntax; empty: all).
    pub async fn list(&self, filters: Vec<String>) -> Result<Vec<Info>, Status> {
        use futures::StreamExt;
        let req = api::ListSnapshotsRequest { filters, ..Default::default() };
        let mut out = Vec::new();
        let mut s = self
            .host
            .streaming::<_, api::ListSnapshotsResponse, _>(
                &Host::call(method::LIST, None),
                futures::stream::once(async move { Ok(req) }),
            )
            .await?;
        while let Some(r) = s.next().await {
            out.extend(r?.info);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_see_name_parent_kind_and_labels() {
        let info = Info {
            name: "a".into(),
            parent: "p".into(),
            kind: Kind::Committed as i32,
            labels: [("team".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        let matches = |f: &str| AnyFilter::parse(&[f]).unwrap().matches(&InfoFields(&info));
        assert!(matches("name==a"));
        assert!(matches("parent==p"));
        assert!(matches("kind==committed"));
        assert!(matches("labels.team==x"));
        assert!(!matches("labels.team==y"));
        assert!(!matches("labels.other"));
    }
}
