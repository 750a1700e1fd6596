//! The client side of containerd's Transfer service (1.7+): the streams a
//! transfer uses besides its request (`Streaming/Stream`, a bidi stream
//! of `Any` opened with `StreamInit{id}` and acknowledged with
//! `google.protobuf.Empty`), the credit-based byte streams of imports and
//! exports (`Data` chunks of at most 32 KiB, never more than the
//! `WindowUpdate` credit granted), the progress stream and the credentials
//! stream, then the `Transfer` call itself.

use std::pin::Pin;

use containerd_client::services::v1::{StreamInit, TransferOptions, TransferRequest};
use containerd_client::types::transfer::{AuthRequest, AuthResponse, AuthType, Data, Progress, WindowUpdate};
use futures::{FutureExt as _, Stream, StreamExt as _};
use prost::{Message, Name};
use prost_types::Any;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;

/// The most a `Data` message carries (containerd's `maxRead`).
pub const MAX_CHUNK: usize = 32 * 1024;
/// The credit a receiver grants at a time (containerd's `windowSize`).
pub const WINDOW: i32 = 64 * 1024;
/// The prefix some encoders put before a type name.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Grpc(#[from] tonic::Status),
    #[error("stream {id}: {what}")]
    Protocol { id: String, what: String },
    #[error("failed to decode {type_url}: {source}")]
    Decode { type_url: String, source: prost::DecodeError },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `typeurl.MarshalAny` for a proto message: the type URL is the bare full
/// name, as containerd registers it.
pub fn to_any<M: Message + Name>(msg: &M) -> Any {
    Any { type_url: M::full_name(), value: msg.encode_to_vec() }
}

/// The full message name an `Any` carries, with or without a URL prefix.
pub fn type_name(any: &Any) -> &str {
    let url = any.type_url.as_str();
    url.strip_prefix(TYPE_URL_PREFIX).or_else(|| url.strip_prefix('/')).unwrap_or(url)
}

/// Decode `any` as `M` if that is what it holds.
pub fn from_any<M: Message + Name + Default>(any: &Any) -> Option<Result<M, TransferError>> {
    (type_name(any) == M::full_name()).then(|| {
        M::decode(any.value.as_slice())
            .map_err(|source| TransferError::Decode { type_url: any.type_url.clone(), source })
    })
}

type Inbound = Pin<Box<dyn Stream<Item = Result<Any, tonic::Status>> + Send>>;

/// One open stream: what we send and what the daemon sends.
pub struct AnyStream {
    pub id: String,
    tx: Option<mpsc::Sender<Any>>,
    rx: Inbound,
}

impl AnyStream {
    pub fn new(id: String, tx: mpsc::Sender<Any>, rx: Inbound) -> Self {
        AnyStream { id, tx: Some(tx), rx }
    }

    fn closed(&self, what: &str) -> TransferError {
        TransferError::Protocol { id: self.id.clone(), what: what.to_string() }
    }

    pub async fn send(&mut self, any: Any) -> Result<(), TransferError> {
        match &self.tx {
            Some(tx) => tx.send(any).await.map_err(|_| self.closed("closed by the daemon")),
            None => Err(self.closed("already closed for sending")),
        }
    }

    /// The next message; `None` once the daemon closed its side.
    pub async fn recv(&mut self) -> Result<Option<Any>, TransferError> {
        Ok(self.rx.next().await.transpose()?)
    }

    /// A message already received, without waiting.
    fn try_recv(&mut self) -> Option<Result<Option<Any>, TransferError>> {
        self.rx.next().now_or_never().map(|m| m.transpose().map_err(TransferError::from))
    }

    /// End our side (the receiver sees EOF).
    pub fn close_send(&mut self) {
        self.tx = None;
    }
}

/// containerd's `GenerateID`: `<prefix>-<nanos>-<random>`.
pub fn generate_id(prefix: &str) -> String {
    format!("{prefix}-{}", crate::commands::image_ops::unique_part())
}

/// Open `Streaming/Stream` under `id`: send `StreamInit`, wait for the ack.
pub async fn open_stream(client: &Client, id: &str) -> Result<AnyStream, TransferError> {
    let (tx, rx) = mpsc::channel::<Any>(16);
    tx.send(to_any(&StreamInit { id: id.to_string() }))
        .await
        .map_err(|_| TransferError::Protocol { id: id.to_string(), what: "closed before init".into() })?;
    let resp = client.streaming().stream(client.request(ReceiverStream::new(rx))).await?;
    let mut stream = AnyStream::new(id.to_string(), tx, Box::pin(resp.into_inner()));
    match stream.recv().await? {
        Some(ack) if type_name(&ack) == "google.protobuf.Empty" => Ok(stream),
        Some(other) => Err(stream.closed(&format!("expected an acknowledgement, got {}", other.type_url))),
        None => Err(stream.closed("closed before acknowledging")),
    }
}

/// `SendStream`: send `reader` as `Data` chunks of at most [`MAX_CHUNK`]
/// bytes, never more in flight than the credit the daemon granted with
/// `WindowUpdate`s; close our side at the end. The bytes sent.
pub async fn send_stream<R: AsyncRead + Unpin>(stream: &mut AnyStream, mut reader: R) -> Result<u64, TransferError> {
    let mut remaining: i64 = 0;
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        // Take the updates already here; wait for one when out of credit.
        loop {
            let msg = if remaining > 0 {
                match stream.try_recv() {
                    Some(m) => m?,
                    None => break,
                }
            } else {
                stream.recv().await?
            };
            match msg {
                Some(any) => {
                    if let Some(update) = from_any::<WindowUpdate>(&any) {
                        remaining += i64::from(update?.update);
                    }
                }
                None => return Err(stream.closed("closed by the daemon before the data was sent")),
            }
        }
        let max = (remaining as usize).min(MAX_CHUNK);
        let n = reader.read(&mut buf[..max]).await?;
        if n == 0 {
            // Half-close, then read until the daemon ends the stream:
            // dropping our receiving side now would reset the HTTP/2
            // stream, and the last chunks still queued would be lost.
            stream.close_send();
            while let Some(_update) = stream.recv().await? {}
            return Ok(sent);
        }
        remaining -= n as i64;
        sent += n as u64;
        stream.send(to_any(&Data { data: buf[..n].to_vec() })).await?;
    }
}

/// `ReceiveStream`: write the `Data` the daemon sends to `writer`,
/// granting [`WINDOW`] bytes of credit at the start and whenever the
/// outstanding credit falls below it, until the daemon closes the stream.
/// The bytes received.
pub async fn receive_stream<W: AsyncWrite + Unpin>(
    stream: &mut AnyStream,
    mut writer: W,
) -> Result<u64, TransferError> {
    let mut window: i64 = 0;
    let mut received: u64 = 0;
    loop {
        if window < i64::from(WINDOW) {
            // The daemon may already have closed its side: a failed grant
            // matters only if more data was expected.
            if stream.send(to_any(&WindowUpdate { update: WINDOW })).await.is_ok() {
                window += i64::from(WINDOW);
            }
        }
        let Some(any) = stream.recv().await? else {
            writer.flush().await?;
            return Ok(received);
        };
        if let Some(data) = from_any::<Data>(&any) {
            let data = data?.data;
            if data.len() as i64 > window {
                return Err(stream.closed("the daemon sent more than the credit granted"));
            }
            writer.write_all(&data).await?;
            window -= data.len() as i64;
            received += data.len() as u64;
        }
    }
}

/// Answer the daemon's credential requests with `username`/`secret` until
/// it closes the stream.
pub async fn serve_credentials(mut stream: AnyStream, username: String, secret: String) -> Result<(), TransferError> {
    while let Some(any) = stream.recv().await? {
        if from_any::<AuthRequest>(&any).is_none() {
            continue;
        }
        let resp = AuthResponse {
            auth_type: AuthType::Credentials as i32,
            username: username.clone(),
            secret: secret.clone(),
            expire_at: None,
        };
        stream.send(to_any(&resp)).await?;
    }
    Ok(())
}

/// Forward the daemon's `Progress` messages to `tx` until it closes.
pub async fn receive_progress(mut stream: AnyStream, tx: mpsc::UnboundedSender<Progress>) -> Result<(), TransferError> {
    while let Some(any) = stream.recv().await? {
        if let Some(p) = from_any::<Progress>(&any) {
            if tx.send(p?).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// Run one transfer: `Transfer/Transfer(source, destination, options)`.
pub async fn transfer(
    client: &Client,
    source: Any,
    destination: Any,
    progress_stream: Option<String>,
) -> Result<(), tonic::Status> {
    let req = TransferRequest {
        source: Some(source),
        destination: Some(destination),
        options: Some(TransferOptions { progress_stream: progress_stream.unwrap_or_default() }),
    };
    client.call(client.transfer().transfer(client.request(req))).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two connected in-memory ends: what one sends the other receives.
    fn pair() -> (AnyStream, AnyStream) {
        let (a_tx, a_rx) = mpsc::channel::<Any>(1024);
        let (b_tx, b_rx) = mpsc::channel::<Any>(1024);
        let a = AnyStream::new("a".into(), a_tx, Box::pin(ReceiverStream::new(b_rx).map(Ok)));
        let b = AnyStream::new("b".into(), b_tx, Box::pin(ReceiverStream::new(a_rx).map(Ok)));
        (a, b)
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn any_type_names() {
        let a = to_any(&Data { data: vec![1] });
        assert_eq!(a.type_url, "containerd.types.transfer.Data");
        let prefixed = Any { type_url: format!("{TYPE_URL_PREFIX}containerd.types.transfer.Data"), value: a.value };
        assert_eq!(from_any::<Data>(&prefixed).unwrap().unwrap().data, vec![1]);
        assert!(from_any::<WindowUpdate>(&prefixed).is_none());
    }

    /// The sender never has more bytes in flight than granted, sends
    /// chunks of at most 32 KiB, and everything arrives in order.
    #[tokio::test(flavor = "current_thread")]
    async fn sender_respects_the_window() {
        let input = payload(300_000);
        let (mut ours, mut daemon) = pair();
        let expected = input.clone();
        let daemon_side = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut granted: usize = 0;
            // Grant in uneven steps; check the credit before each grant.
            for grant in [10_000usize, 50_000, 100, 70_000].iter().cycle() {
                daemon.send(to_any(&WindowUpdate { update: *grant as i32 })).await.unwrap();
                granted += grant;
                // Drain everything the sender may send with this credit.
                loop {
                    let msg = tokio::time::timeout(std::time::Duration::from_millis(50), daemon.recv()).await;
                    match msg {
                        Ok(Ok(Some(any))) => {
                            let data = from_any::<Data>(&any).unwrap().unwrap().data;
                            assert!(data.len() <= MAX_CHUNK, "chunk of {}", data.len());
                            got.extend_from_slice(&data);
                            assert!(got.len() <= granted, "{} bytes sent with {granted} granted", got.len());
                        }
                        Ok(Ok(None)) => return got,
                        Ok(Err(e)) => panic!("{e}"),
                        Err(_) => break,
                    }
                }
            }
            unreachable!()
        });
        let sent = send_stream(&mut ours, &input[..]).await.unwrap();
        assert_eq!(sent, expected.len() as u64);
        drop(ours);
        assert_eq!(daemon_side.await.unwrap(), expected);
    }

    /// The receiver grants 64 KiB first, grants again whenever its credit
    /// drops below 64 KiB, and writes what it receives.
    #[tokio::test(flavor = "current_thread")]
    async fn receiver_grants_credit() {
        let input = payload(500_000);
        let (mut ours, mut daemon) = pair();
        let to_send = input.clone();
        let daemon_side = tokio::spawn(async move {
            let mut credit: i64 = 0;
            let mut grants = 0;
            let mut offset = 0;
            while offset < to_send.len() {
                // Wait for credit when out of it (a sender must).
                while credit <= 0 {
                    let any = daemon.recv().await.unwrap().expect("a window update");
                    credit += i64::from(from_any::<WindowUpdate>(&any).unwrap().unwrap().update);
                    grants += 1;
                }
                while let Some(Ok(Some(any))) = daemon.try_recv() {
                    credit += i64::from(from_any::<WindowUpdate>(&any).unwrap().unwrap().update);
                    grants += 1;
                }
                let n = (credit as usize).min(MAX_CHUNK).min(to_send.len() - offset);
                daemon.send(to_any(&Data { data: to_send[offset..offset + n].to_vec() })).await.unwrap();
                credit -= n as i64;
                offset += n;
            }
            daemon.close_send();
            grants
        });
        let mut out = Vec::new();
        let got = receive_stream(&mut ours, &mut out).await.unwrap();
        let grants = daemon_side.await.unwrap();
        assert_eq!(got, input.len() as u64);
        assert_eq!(out, input);
        // Every grant is 64 KiB: at least enough of them for the data.
        assert!(grants as usize * WINDOW as usize >= input.len(), "{grants} grants");
    }

    /// Data beyond the granted credit is a protocol error.
    #[tokio::test(flavor = "current_thread")]
    async fn receiver_refuses_data_beyond_credit() {
        let (mut ours, mut daemon) = pair();
        daemon.send(to_any(&Data { data: vec![0; WINDOW as usize + 1] })).await.unwrap();
        let err = receive_stream(&mut ours, Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("more than the credit"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn credentials_answer_each_request() {
        let (ours, mut daemon) = pair();
        let serving = tokio::spawn(serve_credentials(ours, "u".into(), "p".into()));
        for host in ["a", "b"] {
            daemon.send(to_any(&AuthRequest { host: host.into(), ..Default::default() })).await.unwrap();
            let any = daemon.recv().await.unwrap().unwrap();
            let resp = from_any::<AuthResponse>(&any).unwrap().unwrap();
            assert_eq!((resp.auth_type, resp.username.as_str(), resp.secret.as_str()), (1, "u", "p"));
        }
        daemon.close_send();
        serving.await.unwrap().unwrap();
    }
}
