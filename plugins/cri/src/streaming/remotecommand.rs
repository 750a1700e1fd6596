//! Kubernetes' remotecommand protocols over SPDY, the server side of exec
//! and attach (`channel.k8s.io` and `v2`-`v4.channel.k8s.io`): the client
//! opens one stream per `streamType` (error, stdin, stdout, stderr, and
//! with a terminal from v3 on, resize); the server waits for all it
//! expects, runs the command, and reports the outcome on the error
//! stream: v4 as a JSON `metav1.Status` (a non-zero exit is reason
//! `NonZeroExitCode` with an `ExitCode` cause, which kubectl turns into
//! its own exit status), older versions as the error's text, nothing on
//! success.

use std::time::Duration;

use bytes::Bytes;
use crated_spdy::{frame::rst, Connection, StreamReader, StreamWriter};
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::mpsc;

use super::{ExecError, StreamIo, STREAM_CREATION_TIMEOUT};

pub const V4: &str = "v4.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
/// In the kubelet's order of preference.
pub const PROTOCOLS: &[&str] = &[V4, V3, V2, V1];

/// The longest resize message buffered before it must have parsed.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// What the cached request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

#[derive(Default)]
struct Streams {
    error: Option<StreamWriter>,
    stdin: Option<StreamReader>,
    stdin_writer: Option<StreamWriter>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
    resize: Option<StreamReader>,
}

/// Serves one upgraded connection: `run` gets the streams and runs the
/// command; its outcome goes on the error stream.
pub async fn serve<F>(mut spdy: Connection, protocol: &str, opts: Options, run: F) -> Result<(), String>
where
    F: FnOnce(StreamIo) -> BoxFuture<'static, Result<(), ExecError>>,
{
    let resizing = opts.tty && matches!(protocol, V3 | V4);
    let expected = 1 + [opts.stdin, opts.stdout, opts.stderr, resizing].iter().filter(|b| **b).count();
    let streams = match tokio::time::timeout(STREAM_CREATION_TIMEOUT, wait_for_streams(&mut spdy, expected)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            spdy.close().await;
            return Err(e);
        }
        Err(_) => {
            spdy.close().await;
            return Err("timed out waiting for client to create streams".into());
        }
    };
    if protocol == V1 || protocol.is_empty() {
        // channel.k8s.io: the server half-closes stdin right away.
        if let Some(w) = &streams.stdin_writer {
            let _ = w.close().await;
        }
    }
    let resize = streams.resize.map(|r| {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(read_resizes(r, tx));
        rx
    });
    let io = StreamIo {
        stdin: streams.stdin,
        stdout: streams.stdout,
        stderr: streams.stderr,
        tty: opts.tty,
        resize,
        gone: super::gone(&spdy),
    };
    // Streams opened after the expected ones are refused while the
    // command runs (the connection would stall on them otherwise).
    let running = run(io);
    tokio::pin!(running);
    let outcome = loop {
        tokio::select! {
            outcome = &mut running => break outcome,
            extra = spdy.accept() => match extra {
                Some(s) => {
                    let _ = s.writer().reset(rst::REFUSED_STREAM).await;
                }
                None => break running.await,
            },
        }
    };
    if let Some(error) = &streams.error {
        let message = status(protocol, &outcome);
        if let Some(m) = message {
            let _ = error.write(Bytes::from(m)).await;
        }
        let _ = error.close().await;
    }
    spdy.close().await;
    // Give the peer a moment to read what was queued before we go.
    let _ = tokio::time::timeout(Duration::from_secs(5), spdy.closed()).await;
    match outcome {
        Err(ExecError::Failed(e)) => Err(e),
        _ => Ok(()),
    }
}

async fn wait_for_streams(spdy: &mut Connection, expected: usize) -> Result<Streams, String> {
    let mut s = Streams::default();
    let mut received = 0;
    while received < expected {
        let Some(stream) = spdy.accept().await else {
            return Err("the client closed before creating its streams".into());
        };
        let kind = stream.header("streamType").unwrap_or_default().to_ascii_lowercase();
        stream.reply(Vec::new(), false).await.map_err(|e| e.to_string())?;
        let (reader, writer) = stream.split();
        match kind.as_str() {
            "error" => s.error = Some(writer),
            "stdin" => {
                s.stdin = Some(reader);
                s.stdin_writer = Some(writer);
            }
            "stdout" => s.stdout = Some(writer),
            "stderr" => s.stderr = Some(writer),
            "resize" => s.resize = Some(reader),
            other => {
                crated_plugin_api::tracing::debug!("stream server: unexpected stream type {other:?}");
                continue;
            }
        }
        received += 1;
    }
    Ok(s)
}

/// Decodes the resize stream's JSON objects (`{"Width":..,"Height":..}`,
/// one after another) into sizes.
async fn read_resizes(mut r: StreamReader, tx: mpsc::Sender<(u16, u16)>) {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = r.read().await {
        buf.extend_from_slice(&chunk);
        let mut de = serde_json::Deserializer::from_slice(&buf).into_iter::<Size>();
        let mut used = 0;
        loop {
            match de.next() {
                Some(Ok(size)) => {
                    used = de.byte_offset();
                    if tx.send((size.width, size.height)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return,
                None => break,
            }
        }
        buf.drain(..used);
        if buf.len() > MAX_RESIZE_MESSAGE {
            return;
        }
    }
}

/// What the error stream carries for an outcome, by protocol.
fn status(protocol: &str, outcome: &Result<(), ExecError>) -> Option<String> {
    let v4 = protocol == V4;
    match outcome {
        Ok(()) => v4.then(|| json!({"metadata": {}, "status": "Success"}).to_string()),
        Err(ExecError::Exit(code)) => {
            let message = format!("command terminated with non-zero exit code: exit status {code}");
            Some(if v4 {
                json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                })
                .to_string()
            } else {
                message
            })
        }
        Err(ExecError::Failed(e)) => {
            let err = format!("error executing command in container: {e}");
            let message = format!("Internal error occurred: {err}");
            Some(if v4 {
                json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": "InternalError",
                    "details": {"causes": [{"message": err}]},
                    "code": 500,
                })
                .to_string()
            } else {
                message
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_reports_exit_codes_as_kubectl_reads_them() {
        let s: serde_json::Value = serde_json::from_str(&status(V4, &Err(ExecError::Exit(3))).unwrap()).unwrap();
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value = serde_json::from_str(&status(V4, &Ok(())).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        assert_eq!(status(V3, &Ok(())), None, "older protocols say nothing on success");
        assert!(status(V2, &Err(ExecError::Failed("boom".into()))).unwrap().contains("boom"));
    }
}
