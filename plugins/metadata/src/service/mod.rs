//! gRPC services over the stores: containerd's Namespaces, Leases, the
//! namespaced Content API, Images, Containers and Snapshots. Each store error becomes a [`Status`] in exactly
//! one `From` impl here.

pub mod containers;
pub mod content;
pub mod gc;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod snapshots;

use std::collections::{BTreeMap, HashMap};

use crated_plugin_api::{Call, Host, Status};

use crate::{
    containers::ContainerError, content::ContentError, db::DbError, images::ImageError, leases::LeaseError,
    namespaces::NamespaceError, snapshots::SnapshotError,
};

impl From<DbError> for Status {
    fn from(e: DbError) -> Status {
        Status::internal(e.to_string())
    }
}

/// Each store error has an `ErrorKind`, which gives its code; the text is
/// the error's own.
macro_rules! status_by_kind {
    ($($t:ty),*) => {$(
        impl From<$t> for Status {
            fn from(e: $t) -> Status {
                Status::new(e.kind().code(), e.to_string())
            }
        }
    )*};
}
status_by_kind!(NamespaceError, LeaseError, ContentError, ImageError, ContainerError, SnapshotError);

/// The filters of a List, with containerd's metadata-store wording: its
/// stores wrap the parse error (already "invalid argument") once more.
pub(crate) fn store_filter(filters: &[String]) -> Result<crated_plugin_api::filters::AnyFilter, Status> {
    crated_plugin_api::filters::AnyFilter::parse(filters)
        .map_err(|e| Status::invalid_argument(format!("{e}: invalid argument: invalid argument")))
}

/// Runs blocking store work (redb) off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("metadata store task failed: {e}")))?
}

/// The call's namespace, required and validated as containerd's
/// `namespaces.NamespaceRequired` does.
pub(crate) fn namespace(call: &Call) -> Result<String, Status> {
    let ns = call.require_namespace()?;
    crate::namespaces::validate_identifier(ns)
        .map_err(|e| Status::invalid_argument(format!("namespace validation: {e}")))?;
    Ok(ns.to_string())
}

pub(crate) fn labels_in(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

pub(crate) fn labels_out(m: BTreeMap<String, String>) -> HashMap<String, String> {
    m.into_iter().collect()
}

pub(crate) fn any_in(a: prost_types::Any) -> crate::db::AnyRecord {
    crate::db::AnyRecord { type_url: a.type_url, value: a.value }
}

pub(crate) fn any_out(a: crate::db::AnyRecord) -> prost_types::Any {
    prost_types::Any { type_url: a.type_url, value: a.value }
}

pub(crate) fn timestamp(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: nanos.div_euclid(1_000_000_000), nanos: nanos.rem_euclid(1_000_000_000) as i32 }
}

/// Publishes containerd events through the events plugin, in process.
/// A failure is logged and never fails the operation that published.
#[derive(Clone)]
pub struct Events {
    host: Host,
}

impl Events {
    pub fn new(host: Host) -> Self {
        Events { host }
    }

    pub async fn publish<M: prost::Name>(&self, namespace: &str, topic: &str, event: &M) {
        if let Err(e) = crated_events_api::publish(&self.host, namespace, topic, event).await {
            crated_plugin_api::tracing::warn!("publishing {topic} in namespace {namespace} failed: {e}");
        }
    }
}
