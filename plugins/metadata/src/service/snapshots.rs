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
        method, Info, LIST_BATCH,
    },
    Call, ServiceRouter, Status,
};

use super::{content::LEASE_HEADER, labels_in, labels_out, namespace, timestamp, Events};
use crate::snapshots::{Snapshot, SnapshotStore};

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
    let svc = SnapshotService { store, events };
    router
        .unary_with(method::PREPARE, &svc, SnapshotService::prepare)
        .unary_with(method::VIEW, &svc, SnapshotService::view)
        .unary_with(method::MOUNTS, &svc, SnapshotService::mounts)
        .unary_with(method::COMMIT, &svc, SnapshotService::commit)
        .unary_with(method::REMOVE, &svc, SnapshotService::remove)
        .unary_with(method::STAT, &svc, SnapshotService::stat)
        .unary_with(method::UPDATE, &svc, SnapshotService::update)
        .unary_with(method::USAGE, &svc, SnapshotService::usage)
        .unary_with(method::CLEANUP, &svc, SnapshotService::cleanup)
        .server_streaming_with(method::LIST, &svc, SnapshotService::list)
}

/// The namespaced Snapshots service over the [`SnapshotStore`]; publishes
/// its changes.
#[derive(Clone)]
struct SnapshotService {
    store: SnapshotStore,
    events: Events,
}

impl SnapshotService {
    async fn prepare(self, call: Call, req: PrepareSnapshotRequest) -> Result<PrepareSnapshotResponse, Status> {
        let ns = namespace(&call)?;
        let mounts = self
            .store
            .create(&ns, &req.snapshotter, &req.key, &req.parent, false, labels_in(req.labels), lease(&call))
            .await?;
        let ev = SnapshotPrepare { key: req.key, parent: req.parent, snapshotter: req.snapshotter };
        self.events.publish(&ns, topics::SNAPSHOT_PREPARE, &ev).await;
        Ok(PrepareSnapshotResponse { mounts })
    }

    async fn view(self, call: Call, req: ViewSnapshotRequest) -> Result<ViewSnapshotResponse, Status> {
        let ns = namespace(&call)?;
        let mounts = self
            .store
            .create(&ns, &req.snapshotter, &req.key, &req.parent, true, labels_in(req.labels), lease(&call))
            .await?;
        Ok(ViewSnapshotResponse { mounts })
    }

    async fn mounts(self, call: Call, req: MountsRequest) -> Result<MountsResponse, Status> {
        let ns = namespace(&call)?;
        Ok(MountsResponse { mounts: self.store.mounts(&ns, &req.snapshotter, &req.key).await? })
    }

    async fn commit(self, call: Call, req: CommitSnapshotRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        self.store.commit(&ns, &req.snapshotter, &req.name, &req.key, labels_in(req.labels), lease(&call)).await?;
        let ev = SnapshotCommit { key: req.key, name: req.name, snapshotter: req.snapshotter };
        self.events.publish(&ns, topics::SNAPSHOT_COMMIT, &ev).await;
        Ok(())
    }

    async fn remove(self, call: Call, req: RemoveSnapshotRequest) -> Result<(), Status> {
        let ns = namespace(&call)?;
        self.store.remove(&ns, &req.snapshotter, &req.key, lease(&call)).await?;
        let ev = SnapshotRemove { key: req.key, snapshotter: req.snapshotter };
        self.events.publish(&ns, topics::SNAPSHOT_REMOVE, &ev).await;
        Ok(())
    }

    async fn stat(self, call: Call, req: StatSnapshotRequest) -> Result<StatSnapshotResponse, Status> {
        let ns = namespace(&call)?;
        Ok(StatSnapshotResponse { info: Some(info_out(self.store.stat(&ns, &req.snapshotter, &req.key).await?)) })
    }

    async fn update(self, call: Call, req: UpdateSnapshotRequest) -> Result<UpdateSnapshotResponse, Status> {
        let ns = namespace(&call)?;
        let info = req.info.unwrap_or_default();
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self.store.update(&ns, &req.snapshotter, &info.name, labels_in(info.labels), paths).await?;
        Ok(UpdateSnapshotResponse { info: Some(info_out(updated)) })
    }

    async fn usage(self, call: Call, req: UsageRequest) -> Result<UsageResponse, Status> {
        let ns = namespace(&call)?;
        let u = self.store.usage(&ns, &req.snapshotter, &req.key).await?;
        Ok(UsageResponse { size: u.size, inodes: u.inodes })
    }

    async fn cleanup(self, call: Call, req: CleanupRequest) -> Result<(), Status> {
        namespace(&call)?;
        self.store.cleanup(&req.snapshotter).await?;
        Ok(())
    }

    async fn list(
        self,
        call: Call,
        req: ListSnapshotsRequest,
    ) -> Result<impl futures::Stream<Item = Result<ListSnapshotsResponse, Status>>, Status> {
        let ns = namespace(&call)?;
        let filter = AnyFilter::parse(&req.filters).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let infos: Vec<Info> =
            self.store.list(&ns, &req.snapshotter, filter).await?.into_iter().map(info_out).collect();
        let batches: Vec<Result<ListSnapshotsResponse, Status>> =
            infos.chunks(LIST_BATCH).map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() })).collect();
        Ok(futures::stream::iter(batches))
    }
}
