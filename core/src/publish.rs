//! `crated publish`: the binary containerd's Go shims run to send an event
//! to the daemon (`<publish-binary> --address ADDR publish --topic T
//! --namespace NS`, the event a protobuf `google.protobuf.Any` on stdin).
//! As containerd 1.6's `publish` command: the topic is required, stdin is
//! read whole and decoded, the socket is dialled within 2 seconds (retrying
//! while it does not exist), and the event goes to the Events service's
//! `Publish` in the namespace given, where the daemon stamps it.

use std::io::Read;
use std::time::Duration;

use containerd_client::services::v1::{events_client::EventsClient, PublishRequest};
use prost::Message;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::transport::{Endpoint, Uri};

/// containerd's `connect` gives up dialling after this long.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Delay between dial attempts while the socket does not exist yet
/// (containerd's `dialer.timeoutDialer`).
const DIAL_RETRY: Duration = Duration::from_millis(10);
/// The gRPC header the daemon reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("topic required to publish event: invalid argument")]
    NoTopic,
    #[error("reading the event from stdin: {0}")]
    Stdin(std::io::Error),
    #[error("decoding the event on stdin (a protobuf google.protobuf.Any): {0}")]
    Decode(#[from] prost::DecodeError),
    // containerd wraps the dial error twice (`connect` and `connectEvents`).
    #[error("failed to dial {address:?}: failed to dial {address:?}: {reason}")]
    Dial { address: String, reason: String },
    #[error("invalid namespace {0:?}")]
    Namespace(String),
    #[error("{0}")]
    Publish(String),
}

/// What `crated publish` was asked to do.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The daemon's gRPC socket (`unix://` optional).
    pub address: String,
    pub namespace: String,
    pub topic: String,
}

/// Decodes the event a shim writes on stdin.
pub fn decode_event(bytes: &[u8]) -> Result<prost_types::Any, PublishError> {
    Ok(prost_types::Any::decode(bytes)?)
}

/// Reads the event from `input` and publishes it.
pub async fn run(p: &Publish, mut input: impl Read) -> Result<(), PublishError> {
    if p.topic.is_empty() {
        return Err(PublishError::NoTopic);
    }
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(PublishError::Stdin)?;
    let event = decode_event(&bytes)?;
    let channel = connect(&p.address).await?;
    let mut req = tonic::Request::new(PublishRequest { topic: p.topic.clone(), event: Some(event) });
    let ns = p.namespace.parse().map_err(|_| PublishError::Namespace(p.namespace.clone()))?;
    req.metadata_mut().insert(NAMESPACE_HEADER, ns);
    EventsClient::new(channel).publish(req).await.map_err(|s| PublishError::Publish(status_text(&s)))?;
    Ok(())
}

/// `errdefs.FromGRPC`'s text: the status message, or the code's name when
/// the daemon sent none.
fn status_text(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    }
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Go's text for an errno (`connect: connection refused`).
fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    // Rust appends " (os error N)" and capitalises; Go prints the bare C text.
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// Dials within [`DIAL_TIMEOUT`]: a missing socket is retried, any other
/// dial error fails at once (gRPC's `FailOnNonTempDialError`).
async fn connect(address: &str) -> Result<tonic::transport::Channel, PublishError> {
    let deadline = Instant::now() + DIAL_TIMEOUT;
    let dial_err = |reason: String| PublishError::Dial { address: address.to_string(), reason };
    let path = socket_path(address).to_string();
    let attempt = async {
        loop {
            match UnixStream::connect(&path).await {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => tokio::time::sleep(DIAL_RETRY).await,
                Err(e) => {
                    return Err(format!(
                        "connection error: desc = \"transport: error while dialing: dial unix {path}: connect: {}\"",
                        os_text(&e)
                    ))
                }
            }
        }
    };
    let stream = match tokio::time::timeout_at(deadline, attempt).await {
        Ok(r) => r.map_err(dial_err)?,
        Err(_) => {
            return Err(dial_err(format!(
                "context deadline exceeded: connection error: desc = \"transport: error while dialing: dial unix://{address}: timeout\""
            )))
        }
    };
    let first = std::sync::Mutex::new(Some(stream));
    let connector = tower::service_fn(move |_: Uri| {
        let pre = first.lock().ok().and_then(|mut s| s.take());
        let path = path.clone();
        async move {
            let s = match pre {
                Some(s) => s,
                None => UnixStream::connect(path).await?,
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    // The URI is required by tonic but unused: the connector decides.
    let endpoint = Endpoint::from_static("http://[::]:0");
    match tokio::time::timeout_at(deadline, endpoint.connect_with_connector(connector)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(dial_err(format!("connection error: desc = \"transport: {e}\""))),
        Err(_) => Err(dial_err("context deadline exceeded".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_decodes_or_says_why() {
        let any = prost_types::Any { type_url: "containerd.events.TaskExit".into(), value: vec![10, 1, b'x'] };
        assert_eq!(decode_event(&any.encode_to_vec()).unwrap(), any);
        let err = decode_event(b"\xff\xff\xff").unwrap_err();
        assert!(err.to_string().starts_with("decoding the event on stdin"), "{err}");
    }

    #[test]
    fn errno_text_like_go() {
        assert_eq!(os_text(&std::io::Error::from_raw_os_error(111)), "connection refused");
    }

    #[tokio::test]
    async fn missing_topic_is_invalid_argument() {
        let p = Publish { address: "/nonexistent".into(), namespace: "default".into(), topic: String::new() };
        let err = run(&p, &b""[..]).await.unwrap_err();
        assert_eq!(err.to_string(), "topic required to publish event: invalid argument");
    }
}
