//! A stand-in for the metadata plugin's namespaced Snapshots service, so
//! that snapshotters (from a `.so` or a `[proxy_plugins]` socket) can be
//! driven from the socket, by the stock `ctr snapshots --snapshotter NAME`,
//! before the metadata plugin is there: `io.crated.testrelay.v1.snapshots`
//! serves `containerd.services.snapshots.v1.Snapshots` and sends each call,
//! unchanged (no namespaces), to the snapshotter the request names.

use crated_plugin_api::{
    export_plugins,
    snapshots::{api, method, SnapshotterClient, SERVICE},
    types, Call, Host, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter, Status,
};

struct Relay;

/// The client of the snapshotter called `name`, which must be a dependency.
fn to(host: &Host, name: &str) -> Result<SnapshotterClient, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("snapshotter name is required"));
    }
    Ok(SnapshotterClient::new(host, &types::key(types::SNAPSHOTTER, name)))
}

impl Plugin for Relay {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.testrelay.v1", "snapshots").requires_optional(&[types::SNAPSHOTTER])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let h = ctx.host.clone();
        let r = ServiceRouter::new();
        let host = h.clone();
        let r = r.unary(method::PREPARE, move |_: Call, q: api::PrepareSnapshotRequest| {
            let host = host.clone();
            async move {
                let mounts = to(&host, &q.snapshotter)?.prepare(&q.key, &q.parent, q.labels).await?;
                Ok(api::PrepareSnapshotResponse { mounts })
            }
        });
        let host = h.clone();
        let r = r.unary(method::VIEW, move |_: Call, q: api::ViewSnapshotRequest| {
            let host = host.clone();
            async move {
                let mounts = to(&host, &q.snapshotter)?.view(&q.key, &q.parent, q.labels).await?;
                Ok(api::ViewSnapshotResponse { mounts })
            }
        });
        let host = h.clone();
        let r = r.unary(method::MOUNTS, move |_: Call, q: api::MountsRequest| {
            let host = host.clone();
            async move { Ok(api::MountsResponse { mounts: to(&host, &q.snapshotter)?.mounts(&q.key).await? }) }
        });
        let host = h.clone();
        let r = r.unary(method::COMMIT, move |_: Call, q: api::CommitSnapshotRequest| {
            let host = host.clone();
            async move { to(&host, &q.snapshotter)?.commit(&q.name, &q.key, q.labels).await }
        });
        let host = h.clone();
        let r = r.unary(method::REMOVE, move |_: Call, q: api::RemoveSnapshotRequest| {
            let host = host.clone();
            async move { to(&host, &q.snapshotter)?.remove(&q.key).await }
        });
        let host = h.clone();
        let r = r.unary(method::STAT, move |_: Call, q: api::StatSnapshotRequest| {
            let host = host.clone();
            async move { Ok(api::StatSnapshotResponse { info: Some(to(&host, &q.snapshotter)?.stat(&q.key).await?) }) }
        });
        let host = h.clone();
        let r = r.unary(method::UPDATE, move |_: Call, q: api::UpdateSnapshotRequest| {
            let host = host.clone();
            async move {
                let info = q.info.ok_or_else(|| Status::invalid_argument("info is required"))?;
                let paths = q.update_mask.map(|m| m.paths).unwrap_or_default();
                Ok(api::UpdateSnapshotResponse { info: Some(to(&host, &q.snapshotter)?.update(info, paths).await?) })
            }
        });
        let host = h.clone();
        let r = r.unary(method::USAGE, move |_: Call, q: api::UsageRequest| {
            let host = host.clone();
            async move {
                let u = to(&host, &q.snapshotter)?.usage(&q.key).await?;
                Ok(api::UsageResponse { size: u.size, inodes: u.inodes })
            }
        });
        let host = h;
        let r = r.server_streaming(method::LIST, move |_: Call, q: api::ListSnapshotsRequest| {
            let host = host.clone();
            async move {
                let info = to(&host, &q.snapshotter)?.list(q.filters).await?;
                Ok(futures::stream::iter([Ok(api::ListSnapshotsResponse { info })]))
            }
        });
        debug_assert!(r.services().iter().any(|s| s == SERVICE));
        Ok(r)
    }
}

export_plugins!(Relay);
