//! Kubernetes' `portforward.k8s.io` over SPDY: for every local connection
//! the client opens an error stream and a data stream with the same
//! `requestID` and `port` headers; once both are there the server dials
//! the port inside the pod's network and copies both ways. A failure to
//! dial is written on the error stream as text.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use crated_spdy::{frame::rst, Connection, Stream, StreamReader, StreamWriter};
use k8s_cri::v1::PortForwardRequest;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::Runtime;

pub const V1: &str = "portforward.k8s.io";
pub const PROTOCOLS: &[&str] = &[V1];

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
}

/// The stream's request id: the header, or as old clients imply it
/// (the error stream's id; the data stream's id less two).
fn request_id(s: &Stream, kind: &str) -> String {
    match s.header("requestID") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ if kind == "error" => s.id.to_string(),
        _ => s.id.saturating_sub(2).to_string(),
    }
}

fn validate(s: &Stream) -> Result<(String, u16), String> {
    let port = s.header("port").filter(|p| !p.is_empty()).ok_or("\"port\" header is required")?;
    let port: u16 = port.parse().map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port < 1 {
        return Err(format!("port \"{port}\" must be > 0"));
    }
    let kind = s.header("streamType").filter(|t| !t.is_empty()).ok_or("\"streamType\" header is required")?;
    let kind = kind.to_ascii_lowercase();
    if kind != "error" && kind != "data" {
        return Err(format!("invalid stream type {kind:?}"));
    }
    Ok((kind, port))
}

pub async fn serve(mut spdy: Connection, req: PortForwardRequest, runtime: Arc<dyn Runtime>) -> Result<(), String> {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = spdy.accept().await {
        let kind = match validate(&stream) {
            Ok((kind, _)) => kind,
            Err(e) => {
                crated_plugin_api::tracing::debug!("port forward: stream {} refused: {e}", stream.id);
                let _ = stream.writer().reset(rst::REFUSED_STREAM).await;
                continue;
            }
        };
        if stream.reply(Vec::new(), false).await.is_err() {
            break;
        }
        let id = request_id(&stream, &kind);
        let pair = pairs.entry(id.clone()).or_default();
        let slot = if kind == "error" { &mut pair.error } else { &mut pair.data };
        if slot.is_some() {
            let msg = format!("error processing stream for request {id}: {kind} stream already assigned");
            if let Some(e) = &pair.error {
                let _ = e.writer().write(Bytes::from(msg)).await;
            }
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            let pair = pairs.remove(&id).expect("the pair is there");
            let (data, error) = (pair.data.expect("data"), pair.error.expect("error"));
            let gone = super::gone(&spdy);
            tokio::spawn(forward(runtime.clone(), req.pod_sandbox_id.clone(), data, error, gone));
        }
    }
    Ok(())
}

async fn forward(runtime: Arc<dyn Runtime>, sandbox: String, data: Stream, error: Stream, gone: super::Gone) {
    let port: u16 = data.header("port").and_then(|p| p.parse().ok()).unwrap_or(0);
    let (data_r, data_w) = data.split();
    let (_, error_w) = error.split();
    match runtime.port_forward(sandbox.clone(), port).await {
        Ok(conn) => {
            // The client's connection going away ends the copy.
            tokio::select! {
                _ = copy(conn, data_r, data_w.clone()) => {}
                _ = gone => {}
            }
        }
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {sandbox}, uid : {e}");
            crated_plugin_api::tracing::debug!("{msg}");
            let _ = error_w.write(Bytes::from(msg)).await;
            let _ = data_w.close().await;
        }
    }
    let _ = error_w.close().await;
}

/// Both ways until both ends are done: the client's FIN shuts the
/// socket's writing side, the socket's end of file is our FIN.
async fn copy(conn: TcpStream, mut from_client: StreamReader, to_client: StreamWriter) {
    let (mut read, mut write) = conn.into_split();
    let inbound = async move {
        while let Some(chunk) = from_client.read().await {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match read.read(&mut buf).await {
                Ok(0) => {
                    let _ = to_client.close().await;
                    return;
                }
                Ok(n) => {
                    if to_client.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = to_client.reset(rst::CANCEL).await;
                    return;
                }
            }
        }
    };
    tokio::join!(inbound, outbound);
}
