//! What the stream server runs, over the plugin's dependencies: exec as a
//! process of the task through the Tasks service (FIFOs for its stdio
//! under the plugin's state dir, ResizePty for the terminal, Wait for the
//! exit code, SIGKILL when the client goes away), port-forward by dialing
//! 127.0.0.1 inside the sandbox's network namespace, and attach through
//! an [`AttachTarget`] the container side provides.

use std::{
    io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, GetContainerResponse, KillRequest,
    ResizePtyRequest, StartRequest, StartResponse, WaitRequest, WaitResponse,
};
use crated_cni::NetNs;
use crated_plugin_api::{Host, Status};
use futures::future::BoxFuture;
use k8s_cri::v1::{AttachRequest, ExecRequest};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{unix::pipe, TcpStream},
    task::JoinHandle,
};

use super::{ExecError, Runtime, StreamIo};
use crate::{sandbox::Sandboxes, service::NAMESPACE};

const CONTAINERS: &str = "/containerd.services.containers.v1.Containers";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const SIGKILL: u32 = 9;

/// Attaching to a container's own stdio: the container side (its IO
/// outlives any one client) implements this; the CRI plugin hands it the
/// client's streams. `io.stdout`/`io.stderr` are closed by the target
/// when the container's output ends; the future resolves when the
/// attach is over.
pub trait AttachTarget: Send + Sync + 'static {
    fn attach(&self, req: AttachRequest, io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>>;
}

pub struct CriRuntime {
    host: Host,
    sandboxes: Sandboxes,
    /// `<state>/io`: the exec FIFOs, one directory per exec.
    io_dir: PathBuf,
    attach: Arc<dyn AttachTarget>,
}

impl CriRuntime {
    pub fn new(host: Host, sandboxes: Sandboxes, state: &Path, attach: Arc<dyn AttachTarget>) -> CriRuntime {
        let io_dir = state.join("io");
        // An exec's session ends with the daemon that served it: FIFO
        // directories a previous daemon left have no reader any more.
        let _ = std::fs::remove_dir_all(&io_dir);
        CriRuntime { host, sandboxes, io_dir, attach }
    }
}

fn failed(s: Status) -> ExecError {
    ExecError::Failed(s.message)
}

/// Tasks and Containers calls in `k8s.io`.
#[derive(Clone)]
struct Calls {
    host: Host,
}

impl Calls {
    async fn tasks<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        crate::calls::tasks(&self.host, method, req).await
    }

    /// The container's OCI process with `cmd` and the terminal setting.
    async fn process_spec(&self, id: &str, cmd: &[String], tty: bool) -> Result<Vec<u8>, Status> {
        let resp: GetContainerResponse = self
            .host
            .unary(&Host::call(&format!("{CONTAINERS}/Get"), Some(NAMESPACE)), &GetContainerRequest { id: id.into() })
            .await?;
        let spec = resp.container.and_then(|c| c.spec).map(|s| s.value).unwrap_or_default();
        let spec: Value = serde_json::from_slice(&spec)
            .map_err(|e| Status::internal(format!("the spec of container {id:?} is not JSON: {e}")))?;
        let mut process = spec.get("process").cloned().unwrap_or_else(|| serde_json::json!({"cwd": "/"}));
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = Value::Bool(tty);
        if let Some(p) = process.as_object_mut() {
            p.remove("consoleSize");
        }
        serde_json::to_vec(&process).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Removes the exec's FIFO directory however the exec ends.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mkfifo(path: &Path) -> io::Result<()> {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(0o700)).map_err(io::Error::from)
}

/// Opens a FIFO for reading once its writer (the shim) has opened it: a
/// blocking open on a pool thread, as containerd's fifo package does, so
/// that reading does not see end-of-file before the shim is there.
fn open_output(path: PathBuf) -> JoinHandle<io::Result<std::fs::File>> {
    tokio::task::spawn_blocking(move || std::fs::File::open(path))
}

/// Lets a blocked [`open_output`] return (the shim never came).
fn unblock(path: &Path) {
    let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc_o_nonblock()).open(path);
}

fn libc_o_nonblock() -> i32 {
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

/// Sends the client's terminal sizes to the pty of the task's process
/// `exec_id` (`""`: its init) until the client stops sending them.
pub(crate) fn forward_resizes(
    host: Host,
    id: &str,
    exec_id: &str,
    mut sizes: tokio::sync::mpsc::Receiver<(u16, u16)>,
) -> JoinHandle<()> {
    let (id, exec_id) = (id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        while let Some((width, height)) = sizes.recv().await {
            let r = ResizePtyRequest {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
                width: u32::from(width),
                height: u32::from(height),
            };
            let _ = crate::calls::tasks::<_, ()>(&host, "ResizePty", &r).await;
        }
    })
}

/// Waits until every output copy has ended, or the client is gone; then
/// stops what is left of them.
pub(crate) async fn finish_copies<T>(mut copies: Vec<JoinHandle<T>>, gone: &mut super::Gone) {
    let outputs_done = futures::future::join_all(copies.iter_mut());
    tokio::select! {
        _ = outputs_done => {}
        _ = gone => {}
    }
    for c in copies {
        c.abort();
    }
}

/// Copies an output FIFO to the client's stream (`None`: drains it),
/// then half-closes the stream.
async fn copy_out(opened: JoinHandle<io::Result<std::fs::File>>, to: Option<super::Writer>) {
    let close = |to: Option<super::Writer>| async move {
        if let Some(to) = to {
            let _ = to.close().await;
        }
    };
    let Ok(Ok(file)) = opened.await else {
        return close(to).await;
    };
    let Ok(mut r) = pipe::Receiver::from_file(file) else {
        return close(to).await;
    };
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(to) = &to {
                    if to.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    close(to).await;
}

impl CriRuntime {
    async fn exec_inner(calls: Calls, io_dir: PathBuf, req: ExecRequest, mut io: StreamIo) -> Result<(), ExecError> {
        let id = req.container_id.clone();
        let spec = calls.process_spec(&id, &req.cmd, req.tty).await.map_err(failed)?;
        let exec_id = uuid::Uuid::new_v4().simple().to_string();
        let dir = io_dir.join(&exec_id);
        std::fs::create_dir_all(&dir).map_err(|e| ExecError::Failed(format!("failed to create {dir:?}: {e}")))?;
        let _remove = RemoveDir(dir.clone());
        Self::exec_in(&calls, &dir, &exec_id, &req, spec, &mut io).await
    }

    async fn exec_in(
        calls: &Calls,
        dir: &Path,
        exec_id: &str,
        req: &ExecRequest,
        spec: Vec<u8>,
        io: &mut StreamIo,
    ) -> Result<(), ExecError> {
        let id = req.container_id.as_str();
        let fifo = |name: &str| -> Result<PathBuf, ExecError> {
            let p = dir.join(format!("{exec_id}-{name}"));
            mkfifo(&p).map_err(|e| ExecError::Failed(format!("error creating fifo {p:?}: {e}")))?;
            Ok(p)
        };
        let stdin_path = if io.stdin.is_some() { Some(fifo("stdin")?) } else { None };
        // Both outputs whether the client reads them or not, as
        // containerd's newExecIO: a shim given stdout alone fails to open
        // the empty stderr path. What nobody reads is drained.
        let stdout_path = Some(fifo("stdout")?);
        let stderr_path = if req.tty { None } else { Some(fifo("stderr")?) };
        // Read-write: the open does not wait for the shim, and what the
        // client sends before the shim reads stays in the pipe.
        let stdin_fifo = match &stdin_path {
            Some(p) => Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(|e| ExecError::Failed(format!("failed to open {p:?}: {e}")))?,
            ),
            None => None,
        };
        let outputs: Vec<(PathBuf, JoinHandle<io::Result<std::fs::File>>)> =
            [&stdout_path, &stderr_path].into_iter().flatten().map(|p| (p.clone(), open_output(p.clone()))).collect();
        let show = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let exec = ExecProcessRequest {
            container_id: id.into(),
            stdin: show(&stdin_path),
            stdout: show(&stdout_path),
            stderr: show(&stderr_path),
            terminal: req.tty,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: spec }),
            exec_id: exec_id.into(),
        };
        let started = async {
            calls.tasks::<_, ()>("Exec", &exec).await.map_err(|s| s.context("failed to create exec"))?;
            if let Err(s) = calls
                .tasks::<_, StartResponse>("Start", &StartRequest { container_id: id.into(), exec_id: exec_id.into() })
                .await
            {
                let _ = calls
                    .tasks::<_, ()>(
                        "DeleteProcess",
                        &DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() },
                    )
                    .await;
                return Err(s.context(format!("failed to start exec {exec_id:?}")));
            }
            Ok::<(), Status>(())
        }
        .await;
        if let Err(s) = started {
            for (p, h) in outputs {
                unblock(&p);
                let _ = h.await;
            }
            return Err(failed(s));
        }

        // The copies.
        let mut copies = Vec::new();
        let writers = [io.stdout.take(), if req.tty { None } else { io.stderr.take() }];
        for ((_, opened), to) in outputs.into_iter().zip(writers) {
            copies.push(tokio::spawn(copy_out(opened, to)));
        }
        // Without a terminal a stderr stream the client opened but the
        // process does not have still ends.
        if let Some(w) = io.stderr.take() {
            let _ = w.close().await;
        }
        let stdin_task = match (io.stdin.take(), stdin_fifo) {
            (Some(mut from), Some(mut fifo)) => {
                let calls = calls.clone();
                let (id, exec_id) = (id.to_string(), exec_id.to_string());
                Some(tokio::spawn(async move {
                    while let Some(chunk) = from.read().await {
                        if fifo.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    drop(fifo);
                    let close = CloseIoRequest { container_id: id, exec_id, stdin: true };
                    let _ = calls.tasks::<_, ()>("CloseIO", &close).await;
                }))
            }
            _ => None,
        };
        let resize_task = io.resize.take().map(|sizes| forward_resizes(calls.host.clone(), id, exec_id, sizes));

        let wait = WaitRequest { container_id: id.into(), exec_id: exec_id.into() };
        let waited = {
            let wait_fut = calls.tasks::<_, WaitResponse>("Wait", &wait);
            tokio::pin!(wait_fut);
            tokio::select! {
                w = &mut wait_fut => w,
                _ = &mut io.gone => {
                    // The client went away: the process goes too.
                    let kill = KillRequest { container_id: id.into(), exec_id: exec_id.into(), signal: SIGKILL, all: false };
                    let _ = calls.tasks::<_, ()>("Kill", &kill).await;
                    wait_fut.await
                }
            }
        };
        // All output reaches the client before the status does; a client
        // gone meanwhile ends the wait.
        finish_copies(copies, &mut io.gone).await;
        if let Some(t) = stdin_task {
            t.abort();
        }
        if let Some(t) = resize_task {
            t.abort();
        }
        let _ = calls
            .tasks::<_, ()>("DeleteProcess", &DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() })
            .await;
        let code = waited.map_err(|s| failed(s.context("failed to wait for exec")))?.exit_status;
        if code == 0 {
            Ok(())
        } else {
            Err(ExecError::Exit(code as i32))
        }
    }
}

impl Runtime for CriRuntime {
    fn exec(&self, req: ExecRequest, io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>> {
        Box::pin(Self::exec_inner(Calls { host: self.host.clone() }, self.io_dir.clone(), req, io))
    }

    fn attach(&self, req: AttachRequest, io: StreamIo) -> BoxFuture<'static, Result<(), ExecError>> {
        self.attach.attach(req, io)
    }

    fn port_forward(&self, sandbox_id: String, port: u16) -> BoxFuture<'static, Result<TcpStream, String>> {
        let sandboxes = self.sandboxes.clone();
        Box::pin(async move {
            let netns = sandboxes.netns_path(&sandbox_id).await.map_err(|s| s.message)?;
            let dial = move || std::net::TcpStream::connect(("127.0.0.1", port));
            let conn = if netns.is_empty() {
                // A host-network pod: the host's loopback is the pod's.
                tokio::task::spawn_blocking(dial).await.map_err(|e| e.to_string())?
            } else {
                NetNs::from_path(&netns).run(dial).await.map_err(|e| e.to_string())?
            }
            .map_err(|e| format!("failed to connect to localhost:{port} inside namespace {sandbox_id:?}: {e}"))?;
            conn.set_nonblocking(true).map_err(|e| e.to_string())?;
            TcpStream::from_std(conn).map_err(|e| e.to_string())
        })
    }
}
