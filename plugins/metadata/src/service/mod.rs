//! gRPC services over the stores: containerd's Namespaces, Leases, the
//! namespaced Content API, Images, Containers and Snapshots. Each store error becomes a [`Status`] in exactly
//! one `From` impl here.

pub mod containers;
pub mod content;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod snapshots;

use std::collections::{BTreeMap, HashMap};

use crated_plugin_api::{Call, Code, Host, Status};

use crate::{
    containers::ContainerError, content::ContentError, db::DbError, images::ImageError, leases::LeaseError,
    namespaces::NamespaceError, snapshots::SnapshotError,
};

impl From<DbError> for Status {
    fn from(e: DbError) -> Status {
        Status::internal(e.to_string())
    }
}

impl From<NamespaceError> for Status {
    fn from(e: NamespaceError) -> Status {
        let code = match &e {
            NamespaceError::InvalidArgument(_) => Code::InvalidArgument,
            NamespaceError::AlreadyExists(_) => Code::AlreadyExists,
            NamespaceError::NotFound(_) => Code::NotFound,
            NamespaceError::NotEmpty { .. } => Code::FailedPrecondition,
            NamespaceError::Db(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

fn lease_code(e: &LeaseError) -> Code {
    match e {
        LeaseError::InvalidArgument(_) => Code::InvalidArgument,
        LeaseError::AlreadyExists(_) => Code::AlreadyExists,
        LeaseError::NotFound(_) => Code::NotFound,
        LeaseError::Unsupported(_) => Code::Unimplemented,
        LeaseError::Db(_) => Code::Internal,
    }
}

impl From<LeaseError> for Status {
    fn from(e: LeaseError) -> Status {
        Status::new(lease_code(&e), e.to_string())
    }
}

impl From<ContentError> for Status {
    fn from(e: ContentError) -> Status {
        let code = match &e {
            ContentError::InvalidArgument(_) => Code::InvalidArgument,
            ContentError::NotFound(_) => Code::NotFound,
            ContentError::AlreadyExists(_) => Code::AlreadyExists,
            ContentError::Lease(l) => lease_code(l),
            ContentError::Db(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let code = match &e {
            ImageError::InvalidArgument(_) => Code::InvalidArgument,
            ImageError::NotFound(_) => Code::NotFound,
            ImageError::AlreadyExists(_) => Code::AlreadyExists,
            ImageError::Db(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Status {
        let code = match &e {
            ContainerError::InvalidArgument(_) => Code::InvalidArgument,
            ContainerError::NotFound(_) => Code::NotFound,
            ContainerError::AlreadyExists(_) => Code::AlreadyExists,
            ContainerError::Db(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        let code = match &e {
            SnapshotError::InvalidArgument(_) | SnapshotError::Snapshotter(_) => Code::InvalidArgument,
            SnapshotError::NotFound(_) => Code::NotFound,
            SnapshotError::AlreadyExists(_) => Code::AlreadyExists,
            SnapshotError::FailedPrecondition(_) => Code::FailedPrecondition,
            SnapshotError::Unexpected(_) => Code::Unknown,
            SnapshotError::Lease(l) => lease_code(l),
            SnapshotError::Backend(s) => s.code,
            SnapshotError::Db(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

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
