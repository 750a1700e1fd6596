//! `crated.gc.v1.Collector` (plugin-api's `gc` contract), served to the
//! metadata plugin's dependents only: the GC scheduler asks for
//! collections and watches the committed changes it counts.

use crated_plugin_api::{
    gc::{CollectRequest, CollectResponse, MutationNotice, WatchRequest, COLLECT, SERVICE, WATCH},
    Call, ServiceRouter, Status,
};

use crate::db::Changes;
use crate::gc::Collector;

pub fn routes(router: ServiceRouter, gc: Collector) -> ServiceRouter {
    router.unary_with(COLLECT, &gc, collect).server_streaming_with(WATCH, &gc, watch).internal(SERVICE)
}

async fn collect(gc: Collector, _: Call, _: CollectRequest) -> Result<CollectResponse, Status> {
    let r = gc.collect().await?;
    Ok(CollectResponse {
        duration_ns: r.duration.as_nanos() as u64,
        pause_ns: r.pause.as_nanos() as u64,
        removed: r.removed.into_iter().collect(),
    })
}

/// One notice per wake-up of the change counter: what was committed since
/// the previous notice (several commits coalesce when the watcher is slow).
async fn watch(
    gc: Collector,
    _: Call,
    _: WatchRequest,
) -> Result<impl futures::Stream<Item = Result<MutationNotice, Status>>, Status> {
    let mut rx = gc.db().changes();
    let seen = *rx.borrow_and_update();
    Ok(futures::stream::unfold((rx, seen), |(mut rx, seen): (_, Changes)| async move {
        loop {
            rx.changed().await.ok()?;
            let now = *rx.borrow_and_update();
            let notice =
                MutationNotice { mutations: now.mutations - seen.mutations, deletions: now.deletions - seen.deletions };
            if notice.mutations > 0 {
                return Some((Ok(notice), (rx, now)));
            }
        }
    }))
}
