//! A Snapshots gRPC client bound to one snapshotter and namespace: every
//! request names the snapshotter and carries the `containerd-namespace`
//! header, which containerd's namespaced service requires and a standalone
//! proxy snapshotter ignores.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Info, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use containerd_client::types::Mount;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

/// The gRPC header containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// Connect to a unix socket (`unix://` prefix optional).
pub(crate) async fn connect(address: &str) -> Result<Channel, tonic::transport::Error> {
    let path = address.strip_prefix("unix://").unwrap_or(address).to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(Path::new(&path)).await?)) }
    });
    // The URI is required by tonic but unused: the connector decides.
    Endpoint::from_static("http://[::]:0").connect_with_connector(connector).await
}

/// Snapshots calls for one snapshotter in one namespace.
#[derive(Clone)]
pub(crate) struct Snapshots {
    client: SnapshotsClient<Channel>,
    snapshotter: String,
    namespace: Option<AsciiMetadataValue>,
}

impl Snapshots {
    pub(crate) fn new(channel: Channel, snapshotter: &str, namespace: &str) -> Result<Snapshots, String> {
        let namespace = if namespace.is_empty() {
            None
        } else {
            Some(namespace.parse().map_err(|_| format!("namespace {namespace:?} is not a valid header value"))?)
        };
        Ok(Snapshots {
            client: SnapshotsClient::new(channel).max_decoding_message_size(64 << 20),
            snapshotter: snapshotter.to_string(),
            namespace,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(ns) = &self.namespace {
            request.metadata_mut().insert(NAMESPACE_HEADER, ns.clone());
        }
        request
    }

    pub(crate) async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let req = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        Ok(self.client.clone().prepare(self.request(req)).await?.into_inner().mounts)
    }

    pub(crate) async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let req = ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        Ok(self.client.clone().view(self.request(req)).await?.into_inner().mounts)
    }

    pub(crate) async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Status> {
        let req = MountsRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        Ok(self.client.clone().mounts(self.request(req)).await?.into_inner().mounts)
    }

    pub(crate) async fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<(), Status> {
        let req =
            CommitSnapshotRequest { snapshotter: self.snapshotter.clone(), name: name.into(), key: key.into(), labels };
        self.client.clone().commit(self.request(req)).await?;
        Ok(())
    }

    pub(crate) async fn remove(&self, key: &str) -> Result<(), Status> {
        let req = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        self.client.clone().remove(self.request(req)).await?;
        Ok(())
    }

    pub(crate) async fn stat(&self, key: &str) -> Result<Info, Status> {
        let req = StatSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        self.client.clone().stat(self.request(req)).await?.into_inner().info.ok_or_else(|| Status::internal("no info"))
    }

    pub(crate) async fn update(&self, info: Info, paths: &[&str]) -> Result<Info, Status> {
        let update_mask = (!paths.is_empty())
            .then(|| prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() });
        let req = UpdateSnapshotRequest { snapshotter: self.snapshotter.clone(), info: Some(info), update_mask };
        self.client
            .clone()
            .update(self.request(req))
            .await?
            .into_inner()
            .info
            .ok_or_else(|| Status::internal("no info"))
    }

    /// List (a server stream), all pages collected.
    pub(crate) async fn list(&self, filters: &[String]) -> Result<Vec<Info>, Status> {
        let req = ListSnapshotsRequest { snapshotter: self.snapshotter.clone(), filters: filters.to_vec() };
        let mut stream = self.client.clone().list(self.request(req)).await?.into_inner();
        let mut all = Vec::new();
        while let Some(page) = stream.message().await? {
            all.extend(page.info);
        }
        Ok(all)
    }

    /// (size in bytes, inodes)
    pub(crate) async fn usage(&self, key: &str) -> Result<(i64, i64), Status> {
        let req = UsageRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        let usage = self.client.clone().usage(self.request(req)).await?.into_inner();
        Ok((usage.size, usage.inodes))
    }

    pub(crate) async fn cleanup(&self) -> Result<(), Status> {
        let req = CleanupRequest { snapshotter: self.snapshotter.clone() };
        self.client.clone().cleanup(self.request(req)).await?;
        Ok(())
    }
}
