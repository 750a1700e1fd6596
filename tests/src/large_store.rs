//! A large store for measuring a garbage collection: many small blobs under
//! one lease and many snapshots labelled as GC roots, written through a
//! daemon's socket with the same calls whether the daemon is crated or a
//! stock containerd. Used by `tests/gc.rs` (`pause_on_a_large_store`) and by
//! the benchmark harness (`scripts/bench.py`, through the `large_store`
//! example), so both measure the same store.

use std::path::Path;

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::{content_client::ContentClient, CreateRequest};
use containerd_client::services::v1::{WriteAction, WriteContentRequest};
use tonic::transport::{Channel, Endpoint};

/// How many concurrent writers fill the blobs.
const WRITERS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LargeStoreError {
    #[error("connecting to {socket}: {source}")]
    Connect { socket: String, source: tonic::transport::Error },
    #[error("{what}: {status}")]
    Call { what: String, status: tonic::Status },
    #[error("a writer task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn call(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> LargeStoreError {
    let what = what.into();
    move |status| LargeStoreError::Call { what, status }
}

/// A tonic channel over the unix socket `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, LargeStoreError> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:0")
        .expect("a static URI")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|source| LargeStoreError::Connect { socket: socket.display().to_string(), source })
}

fn in_namespace<T>(msg: T, namespace: &str, lease: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("containerd-namespace", namespace.parse().expect("an ASCII namespace"));
    if let Some(lease) = lease {
        req.metadata_mut().insert("containerd-lease", lease.parse().expect("an ASCII lease id"));
    }
    req
}

/// Fills `namespace`: `blobs` small distinct blobs (`blob number <i>`)
/// under the lease `keep`, written [`WRITERS`] at a time, then `snapshots`
/// native snapshots `s<i>` labelled `containerd.io/gc.root`, so that a
/// collection walks all of them and removes none.
pub async fn fill(ch: &Channel, namespace: &str, blobs: usize, snapshots: usize) -> Result<(), LargeStoreError> {
    LeasesClient::new(ch.clone())
        .create(in_namespace(CreateRequest { id: "keep".into(), labels: Default::default() }, namespace, None))
        .await
        .map_err(call("creating the lease keep"))?;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (ch, namespace) = (ch.clone(), namespace.to_string());
        writers.push(tokio::spawn(async move {
            for i in (w..blobs).step_by(WRITERS) {
                write_blob(&ch, &namespace, &format!("r{i}"), format!("blob number {i}").into_bytes(), "keep").await?;
            }
            Ok::<_, LargeStoreError>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let mut client = SnapshotsClient::new(ch.clone());
    for i in 0..snapshots {
        let req = PrepareSnapshotRequest {
            snapshotter: "native".into(),
            key: format!("s{i}"),
            labels: [("containerd.io/gc.root".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        client.prepare(in_namespace(req, namespace, None)).await.map_err(call(format!("preparing snapshot s{i}")))?;
    }
    Ok(())
}

/// Writes one blob through `Content.Write` (a WRITE, then a COMMIT), under
/// `lease`.
async fn write_blob(
    ch: &Channel,
    namespace: &str,
    reference: &str,
    data: Vec<u8>,
    lease: &str,
) -> Result<(), LargeStoreError> {
    let total = data.len() as i64;
    let reqs = vec![
        WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.into(),
            total,
            data,
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference.into(),
            total,
            offset: total,
            ..Default::default()
        },
    ];
    let what = format!("writing blob {reference}");
    let mut responses = ContentClient::new(ch.clone())
        .write(in_namespace(tokio_stream::iter(reqs), namespace, Some(lease)))
        .await
        .map_err(call(what.clone()))?
        .into_inner();
    while responses.message().await.map_err(call(what.clone()))?.is_some() {}
    Ok(())
}
