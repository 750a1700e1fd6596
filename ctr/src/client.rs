//! The connection to the daemon and the per-command request context.
//!
//! Mirrors what containerd's Go client does for ctr:
//! * dialing: `unix` socket, retried every 10ms while the socket file does not
//!   exist, until the connect timeout (`--connect-timeout`, 10s when 0);
//!   any other dial error fails at once;
//! * every request carries the namespace in the `containerd-namespace` gRPC
//!   header;
//! * `--timeout` (when > 0) is a deadline for the whole command, started
//!   after the connection is established.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::streaming_client::StreamingClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::transfer_client::TransferClient;
use containerd_client::services::v1::version_client::VersionClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status, Streaming};

use crate::duration::GoDuration;

/// The gRPC header containerd reads the namespace from.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC header containerd reads the request's lease from.
pub const LEASE_HEADER: &str = "containerd-lease";
/// containerd's client uses this when no connect timeout is given.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// containerd's client raises gRPC message limits to 16 MiB.
const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Delay between dial attempts while the socket does not exist yet.
const DIAL_RETRY: Duration = Duration::from_millis(10);

/// What a command needs to reach the daemon (from the global flags).
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub address: String,
    pub namespace: String,
    pub timeout: GoDuration,
    pub connect_timeout: GoDuration,
}

/// A connected client plus the request context of one command.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    namespace: AsciiMetadataValue,
    deadline: Option<Instant>,
    /// The lease every request runs under (Go's `leases.WithLease(ctx)`).
    lease: Option<AsciiMetadataValue>,
}

impl Client {
    /// Connect to the daemon (`commands.NewClient` in ctr).
    pub async fn connect(opts: &ConnectOptions) -> anyhow::Result<Self> {
        let namespace = AsciiMetadataValue::try_from(opts.namespace.as_str())
            .with_context(|| format!("invalid namespace {:?}", opts.namespace))?;
        let connect_timeout = opts.connect_timeout.positive().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let connect_deadline = Instant::now() + connect_timeout;
        let channel = connect_channel(&opts.address, connect_deadline)
            .await
            .map_err(|e| anyhow!("failed to dial {:?}: {e}", opts.address))?;
        Ok(Client { channel, namespace, deadline: opts.timeout.positive().map(|t| Instant::now() + t), lease: None })
    }

    /// This client with every request carrying the lease `id`.
    pub fn with_lease(&self, id: &str) -> anyhow::Result<Client> {
        let lease = AsciiMetadataValue::try_from(id).with_context(|| format!("invalid lease id {id:?}"))?;
        Ok(Client { lease: Some(lease), ..self.clone() })
    }

    /// Whether requests already run under a lease.
    pub fn has_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// The raw channel, for service clients not wrapped here.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn transfer(&self) -> TransferClient<Channel> {
        TransferClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn streaming(&self) -> StreamingClient<Channel> {
        StreamingClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The next message of a server stream, within the command deadline
    /// (`Ok(None)` at the end of the stream).
    pub async fn recv<T>(&self, stream: &mut Streaming<T>) -> Result<Option<T>, Status> {
        let exceeded = || Status::deadline_exceeded("context deadline exceeded");
        let res = match self.deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, stream.message()).await.unwrap_or_else(|_| Err(exceeded()))
            }
            None => stream.message().await,
        };
        match res {
            Err(_) if self.deadline.is_some_and(|d| Instant::now() >= d) => Err(exceeded()),
            other => other,
        }
    }

    /// The command deadline (`--timeout`), if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Wrap a message in a request carrying the namespace and the remaining
    /// command timeout.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = &self.lease {
            req.metadata_mut().insert(LEASE_HEADER, lease.clone());
        }
        if let Some(deadline) = self.deadline {
            req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        req
    }

    /// Await a unary call within the command deadline. An error once the
    /// deadline has passed is reported as `DeadlineExceeded`, as Go's
    /// context deadline would be.
    pub async fn call<T>(&self, fut: impl Future<Output = Result<Response<T>, Status>>) -> Result<T, Status> {
        let exceeded = || Status::deadline_exceeded("context deadline exceeded");
        let res = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, fut).await.unwrap_or_else(|_| Err(exceeded())),
            None => fut.await,
        };
        match res {
            Ok(resp) => Ok(resp.into_inner()),
            Err(_) if self.deadline.is_some_and(|d| Instant::now() >= d) => Err(exceeded()),
            Err(status) => Err(status),
        }
    }
}

/// Accept `unix:///path` as well as a plain path.
fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Dial the socket, retrying while it does not exist.
async fn dial(address: &str, deadline: Instant) -> Result<UnixStream, String> {
    let path = socket_path(address);
    let attempt = async {
        loop {
            match UnixStream::connect(path).await {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::NotFound => tokio::time::sleep(DIAL_RETRY).await,
                Err(e) => {
                    return Err(format!(
                        "connection error: desc = \"transport: error while dialing: dial unix {path}: connect: {}\"",
                        crate::errdefs::os_text(&e)
                    ))
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "context deadline exceeded: connection error: desc = \"transport: error while dialing: dial unix://{address}: timeout\""
        )),
    }
}

/// Dial, then establish the HTTP/2 channel over the dialled stream. Later
/// reconnects (if the connection drops) dial again.
async fn connect_channel(address: &str, deadline: Instant) -> Result<Channel, String> {
    let first = dial(address, deadline).await?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path = socket_path(address).to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let pre_dialled = first.lock().ok().and_then(|mut s| s.take());
        let path = path.clone();
        async move {
            let stream = match pre_dialled {
                Some(s) => s,
                None => UnixStream::connect(path).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by tonic but unused: the connector decides.
    let endpoint = Endpoint::from_static("http://[::]:0");
    match tokio::time::timeout_at(deadline, endpoint.connect_with_connector(connector)).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!("connection error: desc = \"transport: {}\"", error_chain(&e))),
        Err(_) => Err("context deadline exceeded".to_string()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_like_go() {
        let e = io::Error::from_raw_os_error(111);
        assert_eq!(crate::errdefs::os_text(&e), "connection refused");
        let e = io::Error::from_raw_os_error(13);
        assert_eq!(crate::errdefs::os_text(&e), "permission denied");
    }

    #[test]
    fn unix_prefix_is_optional() {
        assert_eq!(socket_path("unix:///run/c.sock"), "/run/c.sock");
        assert_eq!(socket_path("/run/c.sock"), "/run/c.sock");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_socket_times_out_like_stock() {
        let dir = std::env::temp_dir().join(format!("ctr-test-{}", std::process::id()));
        let addr = dir.join("nope.sock").display().to_string();
        let err = dial(&addr, Instant::now() + Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(
            err,
            format!("context deadline exceeded: connection error: desc = \"transport: error while dialing: dial unix://{addr}: timeout\"")
        );
    }
}
