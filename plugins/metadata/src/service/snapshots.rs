//! The namespaced `containerd.services.snapshots.v1.Snapshots` on the
//! socket (containerd's services/snapshots over metadata/snapshot.go): each
//! request goes to the snapshotter its `snapshotter` field names, through
//! [`SnapshotStore`]. Prepare, Commit and Remove publish
//! `/snapshot/prepare`, `/snapshot/commit` and `/snapshot/remove` with
//! containerd's events once they succeeded (View publishes nothing, as in
//! containerd 1.6). A `containerd-lease` header adds what is created to
//! that lease.

use containerd_client::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use crated_events_api::topics;
use crated_plugin_api::{
    filters::AnyFilter,
    snapshots::{
        api::{
            CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse, MountsRequest,
            MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse, RemoveSnapshotRequest,
            StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest,
            UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
        },
        method, Info,
    },
    Call, ServiceRouter, Status,
};

use super::{content::LEASE_HEADER, labels_in, labels_out, namespace, timestamp, Events};
use crate::snapshots::{Snapshot, SnapshotStore};

/// How many infos one List response carries (containerd sends 100).
const LIST_BATCH: usize = 100;

fn info_out(s: Snapshot) -> Info {
    Info {
        name: s.name,
        parent: s.parent,
        kind: s.kind as i32,
        created_at: Some(timestamp(s.created_at)),
        updated_at: Some(timestamp(s.updated_at)),
        labels: labels_out(s.labels),
    }
}

fn lease(call: &Call) -> Option<String> {
    call.header(LEASE_HEADER).filter(|l| !l.is_empty()).map(str::to_string)
}

pub fn routes(router: ServiceRouter, store: SnapshotStore, events: Events) -> ServiceRouter {
    let s = store.clone();
    let e = events.clone();
    let router = router.unary(method::PREPARE, move |call: Call, req: PrepareSnapshotRequest| {
        let (s, events) = (s.clone(), e.clone());
        async move {
            let ns = namespace(&call)?;
            let mounts = s
                .create(&ns, &req.snapshotter, &req.key, &req.parent, false, labels_in(req.labels), lease(&call))
                .await?;
            let ev = SnapshotPrepare { key: req.key, parent: req.parent, snapshotter: req.snapshotter };
            events.publish(&ns, topics::SNAPSHOT_PREPARE, &ev).await;
            Ok(PrepareSnapshotResponse { mounts })
        }
    });
    let s = store.clone();
    let router = router.unary(method::VIEW, move |call: Call, req: ViewSnapshotRequest| {
        let s = s.clone();
        async move {
            let ns = namespace(&call)?;
            let mounts = s
                .create(&ns, &req.snapshotter, &req.key, &req.parent, true, labels_in(req.labels), lease(&call))
                .await?;
            Ok(ViewSnapshotResponse { mounts })
        }
    });
    let s = store.clone();
    let router = router.unary(method::MOUNTS, move |call: Call, req: MountsRequest| {
        let s = s.clone();
        async move {
            let ns = namespace(&call)?;
            Ok(MountsResponse { mounts: s.mounts(&ns, &req.snapshotter, &req.key).await? })
        }
    });
    let s = store.clone();
    let e = events.clone();
    let router = router.unary(method::COMMIT, move |call: Call, req: CommitSnapshotRequest| {
        let (s, events) = (s.clone(), e.clone());
        async move {
            let ns = namespace(&call)?;
            s.commit(&ns, &req.snapshotter, &req.name, &req.key, labels_in(req.labels), lease(&call)).await?;
            let ev = SnapshotCommit { key: req.key, name: req.name, snapshotter: req.snapshotter };
            events.publish(&ns, topics::SNAPSHOT_COMMIT, &ev).await;
            Ok(())
        }
    });
    let s = store.clone();
    let e = events;
    let router = router.unary(method::REMOVE, move |call: Call, req: RemoveSnapshotRequest| {
        let (s, events) = (s.clone(), e.clone());
        async move {
            let ns = namespace(&call)?;
            s.remove(&ns, &req.snapshotter, &req.key, lease(&call)).await?;
            let ev = SnapshotRemove { key: req.key, snapshotter: req.snapshotter };
            events.publish(&ns, topics::SNAPSHOT_REMOVE, &ev).await;
            Ok(())
        }
    });
    let s = store.clone();
    let router = router.unary(method::STAT, move |call: Call, req: StatSnapshotRequest| {
        let s = s.clone();
        async move {
            let ns = namespace(&call)?;
            Ok(StatSnapshotResponse { info: Some(info_out(s.stat(&ns, &req.snapshotter, &req.key).await?)) })
        }
    });
    let s = store.clone();
    let router = router.unary(method::UPDATE, move |call: Call, req: UpdateSnapshotRequest| {
        let s = s.clone();
        async move {
            let ns = namespace(&call)?;
            let info = req.info.unwrap_or_default();
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let updated = s.update(&ns, &req.snapshotter, &info.name, labels_in(info.labels), paths).await?;
            Ok(UpdateSnapshotResponse { info: Some(info_out(updated)) })
        }
    });
    let s = store.clone();
    let router = router.unary(method::USAGE, move |call: Call, req: UsageRequest| {
        let s = s.clone();
        async move {
            let ns = namespace(&call)?;
            let u = s.usage(&ns, &req.snapshotter, &req.key).await?;
            Ok(UsageResponse { size: u.size, inodes: u.inodes })
        }
    });
    let s = store.clone();
    let router = router.unary(method::CLEANUP, move |call: Call, req: CleanupRequest| {
        let s = s.clone();
        async move {
            namespace(&call)?;
            s.cleanup(&req.snapshotter).await?;
            Ok(())
        }
    });
    let s = store;
    router.server_streaming(method::LIST, move |call: Call, req: ListSnapshotsRequest| {
        let s = s.clone();
        async move {
            let ns = namespace(&call)?;
            let filter = AnyFilter::parse(&req.filters).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let infos: Vec<Info> = s.list(&ns, &req.snapshotter, filter).await?.into_iter().map(info_out).collect();
            let batches: Vec<Result<ListSnapshotsResponse, Status>> =
                infos.chunks(LIST_BATCH).map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() })).collect();
            Ok(futures::stream::iter(batches))
        }
    })
}
