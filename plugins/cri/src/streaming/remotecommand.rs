//! Kubernetes' remotecommand protocols, the server side of exec and
//! attach. Over SPDY (`channel.k8s.io` and `v2`-`v4.channel.k8s.io`) the
//! client opens one stream per `streamType` (error, stdin, stdout,
//! stderr, and with a terminal from v3 on, resize) and the server waits
//! for all it expects; over a WebSocket ([`super::websocket`]) the
//! streams are the fixed channels 0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize. Either way the command runs on the client's streams and the
//! outcome goes on the error stream: v4 as a JSON `metav1.Status` (a
//! non-zero exit is reason `NonZeroExitCode` with an `ExitCode` cause,
//! which kubectl turns into its own exit status), older versions as the
//! error's text, nothing on success.

use std::time::Duration;

use bytes::Bytes;
use crated_spdy::{frame::rst, Connection};
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::mpsc;

use super::{websocket, ExecError, Gone, Reader, StreamIo, Writer, STREAM_CREATION_TIMEOUT};

pub const V4: &str = "v4.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V1: &str = "channel.k8s.io";
/// In the kubelet's order of preference.
pub const PROTOCOLS: &[&str] = &[V4, V3, V2, V1];

/// The longest resize message buffered before it must have parsed.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// What the cached request asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How long the peer gets to read what was queued before we go.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The WebSocket channels (`wsstream`'s numbering for remotecommand).
const WS_STDIN: u8 = 0;
const WS_STDOUT: u8 = 1;
const WS_STDERR: u8 = 2;
const WS_ERROR: u8 = 3;
const WS_RESIZE: u8 = 4;

/// The client's streams, whichever transport carries them.
#[derive(Default)]
struct Streams {
    error: Option<Writer>,
    stdin: Option<Reader>,
    stdout: Option<Writer>,
    stderr: Option<Writer>,
    resize: Option<Reader>,
}

impl Streams {
    /// What the runtime gets (terminal sizes decoded on a task of their
    /// own), and the error stream kept for the outcome.
    fn into_io(self, tty: bool, gone: Gone) -> (StreamIo, Option<Writer>) {
        let resize = self.resize.map(|r| {
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(read_resizes(r, tx));
            rx
        });
        let io = StreamIo { stdin: self.stdin, stdout: self.stdout, stderr: self.stderr, tty, resize, gone };
        (io, self.error)
    }
}

/// Writes the outcome on the error stream and ends it.
async fn report(error: Option<&Writer>, v4: bool, outcome: &Result<(), ExecError>) {
    if let Some(error) = error {
        if let Some(m) = status(v4, outcome) {
            let _ = error.write(Bytes::from(m)).await;
        }
        let _ = error.close().await;
    }
}

/// What the caller learns of an outcome: only a failure to run is an
/// error of the session (an exit code is the client's business).
fn session_result(outcome: Result<(), ExecError>) -> Result<(), String> {
    match outcome {
        Err(ExecError::Failed(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Serves one upgraded SPDY connection: `run` gets the streams and runs
/// the command; its outcome goes on the error stream.
pub async fn serve<F>(mut spdy: Connection, protocol: &str, opts: Options, run: F) -> Result<(), String>
where
    F: FnOnce(StreamIo) -> BoxFuture<'static, Result<(), ExecError>>,
{
    let resizing = opts.tty && matches!(protocol, V3 | V4);
    let expected = 1 + [opts.stdin, opts.stdout, opts.stderr, resizing].iter().filter(|b| **b).count();
    let (streams, stdin_writer) =
        match tokio::time::timeout(STREAM_CREATION_TIMEOUT, wait_for_streams(&mut spdy, expected)).await {
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
        if let Some(w) = &stdin_writer {
            let _ = w.close().await;
        }
    }
    let (io, error) = streams.into_io(opts.tty, super::gone(&spdy));
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
    report(error.as_ref(), protocol == V4, &outcome).await;
    spdy.close().await;
    // Give the peer a moment to read what was queued before we go.
    let _ = tokio::time::timeout(CLOSE_WAIT, spdy.closed()).await;
    session_result(outcome)
}

/// Which WebSocket channels the client's data is read on: stdin when
/// asked for, resize with a terminal (`wsstream` reads resize always; a
/// size without a terminal has nowhere to go).
pub fn websocket_channels(opts: Options) -> [bool; 5] {
    let mut readable = [false; 5];
    readable[usize::from(WS_STDIN)] = opts.stdin;
    readable[usize::from(WS_RESIZE)] = opts.tty;
    readable
}

/// Serves one WebSocket connection (opened with [`websocket_channels`]):
/// as [`serve`], with the channels for streams. An empty message on the
/// first channel written (stdout, stderr or error) tells the client
/// the session is up, as the kubelet's server does.
pub async fn serve_websocket<F>(mut ws: websocket::Connection, opts: Options, run: F) -> Result<(), String>
where
    F: FnOnce(StreamIo) -> BoxFuture<'static, Result<(), ExecError>>,
{
    let first = if opts.stdout {
        WS_STDOUT
    } else if opts.stderr {
        WS_STDERR
    } else {
        WS_ERROR
    };
    let _ = ws.writer(first).write(Bytes::new()).await;
    let streams = Streams {
        error: Some(ws.writer(WS_ERROR)),
        stdin: if opts.stdin { ws.reader(WS_STDIN) } else { None },
        stdout: opts.stdout.then(|| ws.writer(WS_STDOUT)),
        stderr: opts.stderr.then(|| ws.writer(WS_STDERR)),
        resize: if opts.tty { ws.reader(WS_RESIZE) } else { None },
    };
    let (io, error) = streams.into_io(opts.tty, ws.gone());
    let outcome = run(io).await;
    report(error.as_ref(), websocket::is_v4(ws.protocol()), &outcome).await;
    ws.close(CLOSE_WAIT).await;
    session_result(outcome)
}

/// The SPDY streams by type, and stdin's writing half (for the v1 close).
async fn wait_for_streams(spdy: &mut Connection, expected: usize) -> Result<(Streams, Option<Writer>), String> {
    let mut s = Streams::default();
    let mut stdin_writer = None;
    let mut received = 0;
    while received < expected {
        let Some(stream) = spdy.accept().await else {
            return Err("the client closed before creating its streams".into());
        };
        let kind = stream.header("streamType").unwrap_or_default().to_ascii_lowercase();
        stream.reply(Vec::new(), false).await.map_err(|e| e.to_string())?;
        let (reader, writer) = stream.split();
        let (reader, writer) = (Reader::Spdy(reader), Writer::Spdy(writer));
        match kind.as_str() {
            "error" => s.error = Some(writer),
            "stdin" => {
                s.stdin = Some(reader);
                stdin_writer = Some(writer);
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
    Ok((s, stdin_writer))
}

/// Decodes the resize stream's JSON objects (`{"Width":..,"Height":..}`,
/// one after another) into sizes.
async fn read_resizes(mut r: Reader, tx: mpsc::Sender<(u16, u16)>) {
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

/// What the error stream carries for an outcome: a v4 protocol's JSON
/// status, or an older one's text.
fn status(v4: bool, outcome: &Result<(), ExecError>) -> Option<String> {
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
        let s: serde_json::Value = serde_json::from_str(&status(true, &Err(ExecError::Exit(3))).unwrap()).unwrap();
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value = serde_json::from_str(&status(true, &Ok(())).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        assert_eq!(status(false, &Ok(())), None, "older protocols say nothing on success");
        assert!(status(false, &Err(ExecError::Failed("boom".into()))).unwrap().contains("boom"));
    }
}
