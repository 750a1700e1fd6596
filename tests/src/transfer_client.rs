//! The client side of containerd 1.7's Transfer and Streaming services, as
//! the transfer tests drive them through the daemon's socket: named streams
//! opened and acknowledged, the binary stream protocol (flow-controlled
//! `Data` chunks), progress collection, credentials answered on an auth
//! stream, and the `Transfer` call itself.

use std::collections::HashMap;

use containerd_client::{
    services::v1::{
        content_client::ContentClient, images_client::ImagesClient, streaming_client::StreamingClient,
        transfer_client::TransferClient, InfoRequest, ListImagesRequest, StreamInit, TransferOptions, TransferRequest,
    },
    types::transfer::{
        AuthRequest, AuthResponse, AuthType, Data, ImageImportStream, ImageReference, ImageStore, OciRegistry,
        Progress, RegistryResolver, WindowUpdate,
    },
};
use prost::Name;
use prost_types::Any;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// The credit a test's receiver grants, as containerd's.
pub const WINDOW: i32 = 64 << 10;
/// The largest `Data` chunk containerd's sender sends.
pub const MAX_CHUNK: usize = 32 << 10;

pub fn pack<M: Name>(m: &M) -> Any {
    Any { type_url: M::full_name(), value: m.encode_to_vec() }
}

/// Unpacks an `Any` that must hold an `M` (panics otherwise: a test failure).
pub fn unpack<M: Name + Default>(a: &Any) -> M {
    assert_eq!(a.type_url.rsplit('/').next().unwrap(), M::full_name(), "message type");
    M::decode(a.value.as_slice()).unwrap()
}

pub fn with_ns<T>(msg: T, ns: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("containerd-namespace", ns.parse().unwrap());
    req
}

/// A name unique within a test run, for stream ids.
pub fn unique_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{nanos}-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The client's end of a named stream.
pub struct ClientStream {
    pub tx: mpsc::Sender<Any>,
    pub rx: tonic::Streaming<Any>,
}

/// Opens stream `id` and waits for its acknowledgement.
pub async fn open_stream(ch: &Channel, id: &str) -> ClientStream {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pack(&StreamInit { id: id.into() })).await.unwrap();
    let mut client = StreamingClient::new(ch.clone());
    let mut rx_stream =
        client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("open stream").into_inner();
    let ack = rx_stream.message().await.unwrap().expect("ack");
    assert_eq!(ack.type_url, "google.protobuf.Empty");
    ClientStream { tx, rx: rx_stream }
}

/// Sends `data` as the sender of the binary stream protocol: never more
/// than the credit granted; closes at the end. Returns the largest chunk.
pub async fn send_bytes(mut s: ClientStream, data: Vec<u8>) -> usize {
    let (mut credit, mut offset, mut largest) = (0i64, 0usize, 0usize);
    while offset < data.len() {
        while credit <= 0 {
            // The server may stop reading (a failed import): then stop too.
            let Ok(Some(msg)) = s.rx.message().await else { return largest };
            credit += i64::from(unpack::<WindowUpdate>(&msg).update);
        }
        let n = (data.len() - offset).min(MAX_CHUNK).min(credit as usize);
        if s.tx.send(pack(&Data { data: data[offset..offset + n].to_vec() })).await.is_err() {
            break;
        }
        largest = largest.max(n);
        credit -= n as i64;
        offset += n;
    }
    // Close the sending side, then read until the server ends the stream:
    // dropping the response early would reset the stream, losing what is
    // still in flight.
    drop(s.tx);
    while let Ok(Some(_)) = s.rx.message().await {}
    largest
}

/// Receives a binary stream, granting credit as containerd's receiver.
pub async fn receive_bytes(mut s: ClientStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.tx.send(pack(&WindowUpdate { update: WINDOW })).await.unwrap();
    let mut window = i64::from(WINDOW);
    while let Some(msg) = s.rx.message().await.expect("export stream") {
        let data = unpack::<Data>(&msg).data;
        assert!(data.len() <= MAX_CHUNK, "a chunk of {} bytes", data.len());
        window -= data.len() as i64;
        assert!(window >= 0, "the sender exceeded its credit");
        out.extend_from_slice(&data);
        if window < i64::from(WINDOW) {
            let _ = s.tx.send(pack(&WindowUpdate { update: WINDOW })).await;
            window += i64::from(WINDOW);
        }
    }
    out
}

/// Collects progress events until the stream ends.
pub fn collect_progress(mut s: ClientStream) -> tokio::task::JoinHandle<Vec<Progress>> {
    tokio::spawn(async move {
        let _keep = s.tx;
        let mut out = Vec::new();
        while let Ok(Some(msg)) = s.rx.message().await {
            out.push(unpack::<Progress>(&msg));
        }
        out
    })
}

/// Answers every `AuthRequest` on the stream with `user`/`secret` (or
/// anonymous access when `None`); returns the requests seen.
pub fn serve_credentials(
    mut s: ClientStream,
    creds: Option<(String, String)>,
) -> tokio::task::JoinHandle<Vec<AuthRequest>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(msg)) = s.rx.message().await {
            seen.push(unpack::<AuthRequest>(&msg));
            let resp = match &creds {
                Some((u, p)) => AuthResponse {
                    auth_type: AuthType::Credentials as i32,
                    username: u.clone(),
                    secret: p.clone(),
                    expire_at: None,
                },
                None => AuthResponse::default(),
            };
            if s.tx.send(pack(&resp)).await.is_err() {
                break;
            }
        }
        seen
    })
}

/// One `Transfer` call in namespace `ns`, with progress on stream `progress` (if not empty).
pub async fn transfer(
    ch: &Channel,
    ns: &str,
    source: Any,
    destination: Any,
    progress: &str,
) -> Result<(), tonic::Status> {
    let req = TransferRequest {
        source: Some(source),
        destination: Some(destination),
        options: Some(TransferOptions { progress_stream: progress.into() }),
    };
    TransferClient::new(ch.clone()).transfer(with_ns(req, ns)).await.map(|_| ())
}

/// Imports `tar` into `ns` with `destination`; returns the progress events.
pub async fn import(
    ch: &Channel,
    ns: &str,
    tar: Vec<u8>,
    destination: ImageStore,
) -> Result<Vec<Progress>, tonic::Status> {
    let id = format!("import-{}", unique_id());
    let input = open_stream(ch, &id).await;
    let progress = collect_progress(open_stream(ch, &format!("{id}-progress")).await);
    let sender = tokio::spawn(send_bytes(input, tar));
    let source = ImageImportStream { stream: id.clone(), ..Default::default() };
    let result = transfer(ch, ns, pack(&source), pack(&destination), &format!("{id}-progress")).await;
    let largest = sender.await.unwrap();
    assert!(largest <= MAX_CHUNK);
    let events = progress.await.unwrap();
    result.map(|_| events)
}

/// Imports an archive's image into `ns` as `docker.io/library/<name>:latest`
/// (the name the archive's `latest` ref gets under that prefix).
pub async fn import_image(ch: &Channel, ns: &str, name: &str, tar: Vec<u8>) -> String {
    let store = ImageStore {
        extra_references: vec![ImageReference {
            name: format!("docker.io/library/{name}"),
            is_prefix: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    import(ch, ns, tar, store).await.expect("import");
    format!("docker.io/library/{name}:latest")
}

/// The images of `ns`: name to target digest.
pub async fn images(ch: &Channel, ns: &str) -> HashMap<String, String> {
    let r = ImagesClient::new(ch.clone()).list(with_ns(ListImagesRequest::default(), ns)).await.unwrap();
    r.into_inner().images.into_iter().map(|i| (i.name, i.target.unwrap().digest)).collect()
}

/// The labels of the blob `digest` in `ns`.
pub async fn labels(ch: &Channel, ns: &str, digest: &str) -> HashMap<String, String> {
    let r = ContentClient::new(ch.clone()).info(with_ns(InfoRequest { digest: digest.into() }, ns)).await.unwrap();
    r.into_inner().info.unwrap().labels
}

/// Events of a list of progress messages, for assertions.
pub fn events(progress: &[Progress]) -> Vec<&str> {
    progress.iter().map(|p| p.event.as_str()).collect()
}

/// `<dir>/<host>/hosts.toml` saying the registry speaks plain HTTP.
pub fn plain_http_hosts_toml(dir: &std::path::Path, host: &str) {
    let d = dir.join(host);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("hosts.toml"),
        format!("server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
}

/// Imports the test image into namespace `src` and pushes it as `remote`
/// (plain HTTP), with credentials when the registry wants them.
pub async fn push_image(ch: &Channel, archive: &crate::images::Archive, remote: &str, creds: Option<(&str, &str)>) {
    let local = import_image(ch, "src", &format!("import-{}", unique_id()), archive.tar.clone()).await;
    let mut resolver = RegistryResolver { default_scheme: "http".into(), ..Default::default() };
    let auth = match creds {
        Some((u, p)) => {
            resolver.auth_stream = format!("auth-{}", unique_id());
            let s = open_stream(ch, &resolver.auth_stream).await;
            Some(serve_credentials(s, Some((u.into(), p.into()))))
        }
        None => None,
    };
    let source = ImageStore { name: local, ..Default::default() };
    let destination = OciRegistry { reference: remote.into(), resolver: Some(resolver) };
    transfer(ch, "src", pack(&source), pack(&destination), "").await.expect("push");
    if let Some(a) = auth {
        a.await.unwrap();
    }
}
