//! Kubernetes' port-forward protocols. `portforward.k8s.io` over SPDY:
//! for every local connection the client opens an error stream and a data
//! stream with the same `requestID` and `port` headers; once both are
//! there the server dials the port inside the pod's network and copies
//! both ways. Over a WebSocket (`v4.channel.k8s.io`, [`super::websocket`])
//! the ports are fixed by the request, one connection each: channel `2i`
//! carries port `i`'s data both ways, `2i+1` its errors, and each starts
//! with the port as a little-endian `u16`. Either way a failure to dial
//! is written on the error stream as text.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use crated_spdy::{frame::rst, Connection, Stream};
use k8s_cri::v1::PortForwardRequest;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{websocket, Gone, Reader, Runtime, Writer};

pub const V1: &str = "portforward.k8s.io";
pub const PROTOCOLS: &[&str] = &[V1];
/// Ports on one WebSocket connection: two channels each, by a byte.
const MAX_WEBSOCKET_PORTS: usize = 127;

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

/// One SPDY stream pair, forwarded.
async fn forward(runtime: Arc<dyn Runtime>, sandbox: String, data: Stream, error: Stream, gone: Gone) {
    let port: u16 = data.header("port").and_then(|p| p.parse().ok()).unwrap_or(0);
    let (data_r, data_w) = data.split();
    let (_, error_w) = error.split();
    let (data_r, data_w, error_w) = (Reader::Spdy(data_r), Writer::Spdy(data_w), Writer::Spdy(error_w));
    forward_port(runtime, &sandbox, port, data_r, data_w, &error_w, gone).await;
    let _ = error_w.close().await;
}

/// Dials `port` in the sandbox and copies between it and the client's
/// data stream until done or the client is gone; a failure to dial goes
/// on the error stream.
async fn forward_port(
    runtime: Arc<dyn Runtime>,
    sandbox: &str,
    port: u16,
    data_r: Reader,
    data_w: Writer,
    error_w: &Writer,
    gone: Gone,
) {
    match runtime.port_forward(sandbox.to_string(), port).await {
        Ok(conn) => {
            // The client's connection going away ends the copy.
            tokio::select! {
                _ = copy(conn, data_r, data_w) => {}
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
}

/// The WebSocket side's ports: the cached request's (what the token was
/// issued for, as containerd serves them), or else the `ports` query
/// parameter (comma-separated, repeatable), as the kubelet reads it for
/// a WebSocket request.
pub fn websocket_ports(req: &PortForwardRequest, query: &str) -> Result<Vec<u16>, String> {
    let mut from_query = Vec::new();
    let mut named = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "ports" {
            continue;
        }
        named = true;
        if value.is_empty() {
            return Err("query parameter \"ports\" cannot be empty".into());
        }
        for p in value.split(',') {
            let port: u16 = p.parse().map_err(|e| format!("unable to parse {value:?} as a port: {e}"))?;
            if port < 1 {
                return Err(format!("port {value:?} must be > 0"));
            }
            from_query.push(port);
        }
    }
    let ports = if !req.port.is_empty() {
        req.port
            .iter()
            .map(|p| u16::try_from(*p).ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port {p}")))
            .collect::<Result<Vec<_>, _>>()?
    } else if named {
        from_query
    } else {
        return Err("query parameter \"ports\" is required".into());
    };
    // Two channels a port, numbered by a byte.
    if ports.len() > MAX_WEBSOCKET_PORTS {
        return Err(format!("at most {MAX_WEBSOCKET_PORTS} ports can be forwarded over a websocket"));
    }
    Ok(ports)
}

/// Which WebSocket channels are read: each port's data channel.
pub fn websocket_channels(ports: &[u16]) -> Vec<bool> {
    ports.iter().flat_map(|_| [true, false]).collect()
}

/// Serves one WebSocket connection (opened with [`websocket_channels`]):
/// every port forwarded at once; the connection closes when all are done.
pub async fn serve_websocket(
    mut ws: websocket::Connection,
    req: PortForwardRequest,
    ports: Vec<u16>,
    runtime: Arc<dyn Runtime>,
) -> Result<(), String> {
    let mut forwards = Vec::new();
    for (i, port) in ports.into_iter().enumerate() {
        let Ok(num) = u8::try_from(i * 2) else { break };
        let (data_w, error_w) = (ws.writer(num), ws.writer(num + 1));
        let Some(data_r) = ws.reader(num) else { break };
        let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
        let _ = data_w.write(prefix.clone()).await;
        let _ = error_w.write(prefix).await;
        let (runtime, sandbox, gone) = (runtime.clone(), req.pod_sandbox_id.clone(), ws.gone());
        forwards.push(async move { forward_port(runtime, &sandbox, port, data_r, data_w, &error_w, gone).await });
    }
    futures::future::join_all(forwards).await;
    ws.close(std::time::Duration::from_secs(5)).await;
    Ok(())
}

/// Both ways until both ends are done: the client's FIN shuts the
/// socket's writing side, the socket's end of file is our FIN. A client
/// that cannot half-close (a WebSocket) is done when the socket is, as
/// containerd ends a forward when either way ends.
async fn copy(conn: TcpStream, mut from_client: Reader, to_client: Writer) {
    let (mut read, mut write) = conn.into_split();
    let half_closes = to_client.half_closes();
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
                    to_client.cancel().await;
                    return;
                }
            }
        }
    };
    if half_closes {
        tokio::join!(inbound, outbound);
    } else {
        let inbound = async move {
            inbound.await;
            futures::future::pending::<()>().await
        };
        tokio::select! {
            _ = outbound => {}
            _ = inbound => {}
        }
    }
}
