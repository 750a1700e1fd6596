//! `io.containerd.grpc.v1.tasks`: containerd's
//! `containerd.services.tasks.v1.Tasks` on the socket, over the shim
//! manager, with containerd 1.6's checks and texts (`services/tasks/local.go`):
//! the container record is looked up first (its own "not found"), a
//! container without a task is `NotFound` "task <id> not found", a second
//! task is `AlreadyExists`, and what a shim answers reaches the client with
//! the shim's code and words.

use std::{
    borrow::Cow,
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use containerd_client::{
    services::v1::snapshots::{MountsRequest, MountsResponse},
    services::v1::{
        CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest, Container, CreateTaskRequest,
        CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest, ExecProcessRequest,
        GetContainerRequest, GetContainerResponse, GetRequest, GetResponse, KillRequest, ListPidsRequest,
        ListPidsResponse, ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, PauseTaskRequest,
        ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
    },
    types::{
        v1::{Process, ProcessInfo, Status as ProcessStatus},
        Descriptor, Metric,
    },
};
use crated_plugin_api::{
    content::{ChunkReader, Committed, ContentClient, LEASE_HEADER},
    filters::{AnyFilter, Fields},
    validate, Call, Error, Host, ServiceRouter, Status,
};
use futures::StreamExt;
use prost::Message;
use shim_protocol::{task as shim, types::Mount};
use tokio::sync::mpsc;

use crate::{
    bundle::blocking,
    checkpoint::{self, ArchiveError, TempImage},
    error::from_shim,
    manager::{now, task_not_found, CreateOpts, ShimManager, ShimTask},
};

pub const SERVICE: &str = "containerd.services.tasks.v1.Tasks";
const CONTAINERS_GET: &str = "/containerd.services.containers.v1.Containers/Get";
const SNAPSHOTS_MOUNTS: &str = "/containerd.services.snapshots.v1.Snapshots/Mounts";

/// The checkpoint images tasks were created from, by (namespace, id),
/// until their task starts or is deleted.
type RestoreImages = Arc<Mutex<HashMap<(String, String), TempImage>>>;

#[derive(Clone)]
pub struct TasksService {
    host: Host,
    manager: Arc<ShimManager>,
    restores: RestoreImages,
}

pub fn router(svc: TasksService) -> ServiceRouter {
    let m = |name: &str| format!("/{SERVICE}/{name}");
    ServiceRouter::new()
        .unary_with(&m("Create"), &svc, TasksService::create)
        .unary_with(&m("Start"), &svc, TasksService::start)
        .unary_with(&m("Delete"), &svc, TasksService::delete)
        .unary_with(&m("DeleteProcess"), &svc, TasksService::delete_process)
        .unary_with(&m("Get"), &svc, TasksService::get)
        .unary_with(&m("List"), &svc, TasksService::list)
        .unary_with(&m("Kill"), &svc, TasksService::kill)
        .unary_with(&m("Exec"), &svc, TasksService::exec)
        .unary_with(&m("ResizePty"), &svc, TasksService::resize_pty)
        .unary_with(&m("CloseIO"), &svc, TasksService::close_io)
        .unary_with(&m("Pause"), &svc, TasksService::pause)
        .unary_with(&m("Resume"), &svc, TasksService::resume)
        .unary_with(&m("ListPids"), &svc, TasksService::list_pids)
        .unary_with(&m("Checkpoint"), &svc, TasksService::checkpoint)
        .unary_with(&m("Update"), &svc, TasksService::update)
        .unary_with(&m("Metrics"), &svc, TasksService::metrics)
        .unary_with(&m("Wait"), &svc, TasksService::wait)
}

/// A shim's refusal, with its code and words.
fn shim_status(s: shim_protocol::Status) -> Status {
    from_shim(s).into()
}

impl TasksService {
    pub fn new(host: Host, manager: Arc<ShimManager>) -> TasksService {
        TasksService { host, manager, restores: RestoreImages::default() }
    }

    async fn container(&self, ns: &str, id: &str) -> Result<Container, Status> {
        let resp: GetContainerResponse =
            self.host.unary(&Host::call(CONTAINERS_GET, Some(ns)), &GetContainerRequest { id: id.into() }).await?;
        resp.container.ok_or_else(|| Error::not_found(format!("container {id:?} in namespace {ns:?}")).into())
    }

    /// The task of container `id`: the container must exist, then its task.
    async fn task(&self, call: &Call, id: &str) -> Result<Arc<ShimTask>, Status> {
        let ns = call.require_namespace()?;
        self.container(ns, id).await?;
        self.manager.get(ns, id).ok_or_else(|| task_not_found(id))
    }

    async fn create(self, call: Call, r: CreateTaskRequest) -> Result<CreateTaskResponse, Status> {
        let ns = call.require_namespace()?.to_string();
        let container = self.container(&ns, &r.container_id).await?;
        let runtime = container.runtime.unwrap_or_default();
        // A CRIU image named in the options, else one from content.
        let mut checkpoint = checkpoint::restore_path(&runtime.name, r.options.as_ref())?;
        let mut restore_image = None;
        if let (true, Some(desc)) = (checkpoint.is_empty(), &r.checkpoint) {
            let image = unpack_from_content(&ContentClient::new(self.host.clone(), &ns), desc).await?;
            checkpoint = image.path().display().to_string();
            restore_image = Some(image);
        }
        let rootfs = if !r.rootfs.is_empty() {
            r.rootfs
        } else if !container.snapshot_key.is_empty() {
            let req = MountsRequest { snapshotter: container.snapshotter.clone(), key: container.snapshot_key.clone() };
            let resp: MountsResponse = self
                .host
                .unary(&Host::call(SNAPSHOTS_MOUNTS, Some(&ns)), &req)
                .await
                .map_err(|s| s.context(format!("rootfs of container {}", container.id)))?;
            resp.mounts
        } else {
            Vec::new()
        };
        let opts = CreateOpts {
            spec: container.spec.map(|s| s.value).unwrap_or_default(),
            // containerd passes type, source and options; the target is the
            // bundle's rootfs.
            rootfs: rootfs
                .into_iter()
                .map(|m| Mount { r#type: m.r#type, source: m.source, target: String::new(), options: m.options })
                .collect(),
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            terminal: r.terminal,
            checkpoint,
            runtime: if r.runtime_path.is_empty() { runtime.name } else { r.runtime_path },
            options: r.options.or(runtime.options),
        };
        let task = match self.manager.create(&ns, &r.container_id, opts).await {
            Ok(task) => task,
            Err(e) => {
                if let Some(image) = restore_image {
                    image.remove().await;
                }
                return Err(e.into());
            }
        };
        if let Some(image) = restore_image {
            // The shim restores when the task starts (`runc restore`); the
            // image stays until then.
            let old = self.restores.lock().expect("restores").insert((ns.clone(), r.container_id.clone()), image);
            if let Some(old) = old {
                old.remove().await;
            }
        }
        let pid = task
            .client
            .connect(&shim::ConnectRequest { id: r.container_id.clone() })
            .await
            .map(|c| c.task_pid)
            .map_err(|e| Status::from(from_shim(e).context("failed to get task pid")))?;
        Ok(CreateTaskResponse { container_id: r.container_id, pid })
    }

    async fn start(self, call: Call, r: StartRequest) -> Result<StartResponse, Status> {
        let t = self.task(&call, &r.container_id).await?;
        let init = r.exec_id.is_empty();
        let resp = t.client.start(&shim::StartRequest { id: r.container_id.clone(), exec_id: r.exec_id }).await;
        if init {
            // Restored or not, the checkpoint image is done with.
            self.drop_restore_image(t.namespace(), &r.container_id).await;
        }
        Ok(StartResponse { pid: resp.map_err(shim_status)?.pid })
    }

    /// Removes the checkpoint image task `id` was created from, if any.
    async fn drop_restore_image(&self, ns: &str, id: &str) {
        let image = self.restores.lock().expect("restores").remove(&(ns.to_string(), id.to_string()));
        if let Some(image) = image {
            image.remove().await;
        }
    }

    async fn delete(self, call: Call, r: DeleteTaskRequest) -> Result<DeleteResponse, Status> {
        let t = self.task(&call, &r.container_id).await?;
        // containerd's client refuses this itself; say the same here so that
        // any client gets a precondition failure, not the shim's "unknown".
        if let Ok(s) = t.client.state(&shim::StateRequest { id: r.container_id.clone(), exec_id: String::new() }).await
        {
            let status = ProcessStatus::try_from(s.status).unwrap_or(ProcessStatus::Unknown);
            if matches!(status, ProcessStatus::Running | ProcessStatus::Paused | ProcessStatus::Pausing) {
                return Err(Error::failed_precondition(format!(
                    "task must be stopped before deletion: {}",
                    status.as_str_name().to_lowercase()
                ))
                .into());
            }
        }
        self.drop_restore_image(t.namespace(), &r.container_id).await;
        let exit = self.manager.delete(t).await?;
        Ok(DeleteResponse { id: String::new(), pid: exit.pid, exit_status: exit.status, exited_at: exit.exited_at })
    }

    async fn delete_process(self, call: Call, r: DeleteProcessRequest) -> Result<DeleteResponse, Status> {
        let t = self.task(&call, &r.container_id).await?;
        let resp = t
            .client
            .delete(&shim::DeleteRequest { id: r.container_id, exec_id: r.exec_id.clone() })
            .await
            .map_err(shim_status)?;
        Ok(DeleteResponse { id: r.exec_id, pid: resp.pid, exit_status: resp.exit_status, exited_at: resp.exited_at })
    }

    async fn get(self, call: Call, r: GetRequest) -> Result<GetResponse, Status> {
        let t = self.task(&call, &r.container_id).await?;
        let process = state(&t, &r.exec_id).await.map_err(|e| match e.code {
            shim_protocol::Code::Unavailable => task_not_found(&r.container_id),
            _ => shim_status(e),
        })?;
        Ok(GetResponse { process: Some(process) })
    }

    async fn list(self, call: Call, _r: ListTasksRequest) -> Result<ListTasksResponse, Status> {
        let ns = call.require_namespace()?;
        let mut tasks = Vec::new();
        for t in self.manager.list(ns) {
            match state(&t, "").await {
                Ok(p) => tasks.push(p),
                // Gone or going: not listed (a race with deletion).
                Err(e) if matches!(e.code, shim_protocol::Code::NotFound | shim_protocol::Code::Unavailable) => {}
                Err(e) => {
                    crated_plugin_api::tracing::warn!(id = t.id(), "state of task: {}", e.message);
                    tasks.push(Process { container_id: t.id().into(), id: t.id().into(), ..Default::default() });
                }
            }
        }
        Ok(ListTasksResponse { tasks })
    }

    async fn kill(self, call: Call, r: KillRequest) -> Result<(), Status> {
        let t = self.task(&call, &r.container_id).await?;
        let req = shim::KillRequest { id: r.container_id, exec_id: r.exec_id, signal: r.signal, all: r.all };
        t.client.kill(&req).await.map_err(shim_status)?;
        Ok(())
    }

    async fn exec(self, call: Call, r: ExecProcessRequest) -> Result<(), Status> {
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec id cannot be empty"));
        }
        let t = self.task(&call, &r.container_id).await?;
        validate::identifier(&r.exec_id)
            .map_err(|e| Error::invalid_argument(format!("invalid exec id {}: {e}", r.exec_id)))?;
        let req = shim::ExecProcessRequest {
            id: r.container_id,
            exec_id: r.exec_id,
            terminal: r.terminal,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            spec: r.spec,
        };
        t.client.exec(&req).await.map_err(shim_status)?;
        Ok(())
    }

    async fn resize_pty(self, call: Call, r: ResizePtyRequest) -> Result<(), Status> {
        let t = self.task(&call, &r.container_id).await?;
        let req = shim::ResizePtyRequest { id: r.container_id, exec_id: r.exec_id, width: r.width, height: r.height };
        t.client.resize_pty(&req).await.map_err(shim_status)?;
        Ok(())
    }

    async fn close_io(self, call: Call, r: CloseIoRequest) -> Result<(), Status> {
        let t = self.task(&call, &r.container_id).await?;
        if r.stdin {
            let req = shim::CloseIoRequest { id: r.container_id, exec_id: r.exec_id, stdin: true };
            t.client.close_io(&req).await.map_err(shim_status)?;
        }
        Ok(())
    }

    async fn pause(self, call: Call, r: PauseTaskRequest) -> Result<(), Status> {
        let t = self.task(&call, &r.container_id).await?;
        t.client.pause(&shim::PauseRequest { id: r.container_id }).await.map_err(shim_status)?;
        Ok(())
    }

    async fn resume(self, call: Call, r: ResumeTaskRequest) -> Result<(), Status> {
        let t = self.task(&call, &r.container_id).await?;
        t.client.resume(&shim::ResumeRequest { id: r.container_id }).await.map_err(shim_status)?;
        Ok(())
    }

    async fn list_pids(self, call: Call, r: ListPidsRequest) -> Result<ListPidsResponse, Status> {
        let t = self.task(&call, &r.container_id).await?;
        let resp = t.client.pids(&shim::PidsRequest { id: r.container_id }).await.map_err(shim_status)?;
        let processes = resp.processes.into_iter().map(|p| ProcessInfo { pid: p.pid, info: p.info }).collect();
        Ok(ListPidsResponse { processes })
    }

    /// Checkpoints the task as containerd 1.6 does: into the image path the
    /// runc options name, else into a temporary directory that is then
    /// written to content as a tar, next to the container's spec; the
    /// directory is removed either way. What the shim answers reaches the
    /// client unchanged.
    async fn checkpoint(self, call: Call, r: CheckpointTaskRequest) -> Result<CheckpointTaskResponse, Status> {
        let ns = call.require_namespace()?.to_string();
        let container = self.container(&ns, &r.container_id).await?;
        let t = self.manager.get(&ns, &r.container_id).ok_or_else(|| task_not_found(&r.container_id))?;
        let runtime = container.runtime.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
        let image_path = checkpoint::checkpoint_path(runtime, r.options.as_ref())?;
        if !image_path.is_empty() {
            let req = shim::CheckpointTaskRequest { id: r.container_id, path: image_path, options: r.options };
            t.client.checkpoint(&req).await.map_err(shim_status)?;
            return Ok(CheckpointTaskResponse { descriptors: Vec::new() });
        }
        // Under the client's lease, so that what is written outlives the
        // call until the client's image holds it.
        let content = ContentClient::new(self.host.clone(), &ns).with_lease(call.header(LEASE_HEADER));
        let spec = container.spec.map(|s| s.encode_to_vec()).unwrap_or_default();
        // On a task of its own: a client hanging up must not leave the
        // directory behind half-written or the shim half-way.
        tokio::spawn(checkpoint_into_content(t, content, spec, r.container_id, r.options))
            .await
            .map_err(|e| Status::internal(format!("checkpoint task: {e}")))?
    }

    async fn update(self, call: Call, r: UpdateTaskRequest) -> Result<(), Status> {
        let t = self.task(&call, &r.container_id).await?;
        let req = shim::UpdateTaskRequest { id: r.container_id, resources: r.resources, annotations: r.annotations };
        t.client.update(&req).await.map_err(shim_status)?;
        Ok(())
    }

    async fn metrics(self, call: Call, r: MetricsRequest) -> Result<MetricsResponse, Status> {
        let ns = call.require_namespace()?;
        let filter = AnyFilter::parse(&r.filters)?;
        let mut metrics = Vec::new();
        for t in self.manager.list(ns) {
            if !filter.matches(&TaskFields(&t)) {
                continue;
            }
            let collected = now();
            match t.client.stats(&shim::StatsRequest { id: t.id().into() }).await {
                Ok(s) => metrics.push(Metric { timestamp: Some(collected), id: t.id().into(), data: s.stats }),
                Err(e) if e.code == shim_protocol::Code::NotFound => {}
                Err(e) => crated_plugin_api::tracing::warn!(id = t.id(), "collecting metrics: {}", e.message),
            }
        }
        Ok(MetricsResponse { metrics })
    }

    async fn wait(self, call: Call, r: WaitRequest) -> Result<WaitResponse, Status> {
        let t = self.task(&call, &r.container_id).await?;
        let resp =
            t.client.wait(&shim::WaitRequest { id: r.container_id, exec_id: r.exec_id }).await.map_err(shim_status)?;
        Ok(WaitResponse { exit_status: resp.exit_status, exited_at: resp.exited_at })
    }
}

/// How many chunks of a tar may wait between the blocking side that reads
/// or writes files and the async side that talks to content.
const CHANNEL_DEPTH: usize = 4;
/// The size of the chunks a checkpoint tar is written to content in.
const WRITE_CHUNK: usize = 1 << 20;

/// A status for a failure of this plugin's own file work (Go's plain
/// errors: `Unknown`).
fn unknown(e: impl std::fmt::Display) -> Status {
    Error::unknown(e.to_string()).into()
}

/// The shim dumps into a fresh temporary directory, which goes to content
/// as a tar, then the spec; the directory is removed whatever happened.
async fn checkpoint_into_content(
    t: Arc<ShimTask>,
    content: ContentClient,
    spec: Vec<u8>,
    id: String,
    options: Option<prost_types::Any>,
) -> Result<CheckpointTaskResponse, Status> {
    let image = blocking(TempImage::new).await.map_err(unknown)?;
    let result = async {
        let path = image.path().display().to_string();
        let req = shim::CheckpointTaskRequest { id, path: path.clone(), options };
        t.client.checkpoint(&req).await.map_err(shim_status)?;
        // containerd's ingest references: the directory, and its `spec`.
        let tar = write_tar_to_content(&content, &path, image.path().to_path_buf()).await?;
        let spec_ref = image.path().join("spec").display().to_string();
        let spec = content.write_all(&spec_ref, &spec, None, HashMap::new()).await?;
        let descriptor = |media_type: &str, c: Committed| Descriptor {
            media_type: media_type.to_string(),
            digest: c.digest,
            size: c.size as i64,
            annotations: HashMap::new(),
        };
        Ok(CheckpointTaskResponse {
            descriptors: vec![
                descriptor(checkpoint::MEDIA_TYPE_CHECKPOINT, tar),
                descriptor(checkpoint::MEDIA_TYPE_CHECKPOINT_CONFIG, spec),
            ],
        })
    }
    .await;
    image.remove().await;
    result
}

/// Streams the tar of `dir` (written on a blocking thread) into content.
async fn write_tar_to_content(content: &ContentClient, reference: &str, dir: PathBuf) -> Result<Committed, Status> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
    let worker = tokio::task::spawn_blocking(move || {
        let sink = ChunkSender { tx, buf: Vec::with_capacity(WRITE_CHUNK) };
        let mut sink = checkpoint::write_tar(&dir, sink)?;
        sink.send().map_err(|e| ArchiveError::Io { op: "send tar of", path: dir.display().to_string(), source: e })
    });
    let mut writer = content.writer(reference);
    let mut write_err = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.write(chunk).await {
            write_err = Some(e);
            break;
        }
    }
    // Unblocks the worker if the write failed.
    drop(rx);
    let worker = worker.await.map_err(|e| Status::internal(format!("checkpoint tar task: {e}")));
    match (write_err, worker) {
        (None, Ok(Ok(()))) => writer.commit(None, HashMap::new()).await,
        (Some(e), _) | (None, Err(e)) => {
            writer.abort().await;
            Err(e)
        }
        (None, Ok(Err(e))) => {
            writer.abort().await;
            Err(unknown(e))
        }
    }
}

/// A blocking writer that hands full chunks to the async side.
struct ChunkSender {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| std::io::Error::other("content write stopped"))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The checkpoint tar `desc` from content, unpacked into a fresh temporary
/// directory (containerd's `archive.Apply` in Create), for the shim to
/// restore from.
async fn unpack_from_content(content: &ContentClient, desc: &Descriptor) -> Result<TempImage, Status> {
    let image = blocking(TempImage::new).await.map_err(unknown)?;
    if desc.media_type != checkpoint::MEDIA_TYPE_CHECKPOINT {
        image.remove().await;
        return Err(unknown(format!("unsupported checkpoint type {:?}", desc.media_type)));
    }
    let mut stream = match content.read(&desc.digest).await {
        Ok(s) => s,
        Err(e) => {
            image.remove().await;
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let pump = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let dir = image.path().to_path_buf();
    let reader = ChunkReader::new(rx);
    let result = tokio::task::spawn_blocking(move || checkpoint::unpack(reader, &dir))
        .await
        .map_err(|e| Status::internal(format!("checkpoint unpack task: {e}")));
    pump.abort();
    match result {
        Ok(Ok(())) => Ok(image),
        Ok(Err(e)) => {
            image.remove().await;
            Err(unknown(e))
        }
        Err(e) => {
            image.remove().await;
            Err(e)
        }
    }
}

/// A process's state as the Tasks API reports it; `id` is the exec id, or
/// the container's id for the task itself.
async fn state(t: &ShimTask, exec_id: &str) -> Result<Process, shim_protocol::Status> {
    let s = t.client.state(&shim::StateRequest { id: t.id().into(), exec_id: exec_id.into() }).await?;
    Ok(Process {
        container_id: t.id().into(),
        id: if exec_id.is_empty() { t.id().into() } else { exec_id.into() },
        pid: s.pid,
        // containerd.v1.types.Status and the shim's status share numbers.
        status: s.status,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
        exit_status: s.exit_status,
        exited_at: s.exited_at,
    })
}

/// The fields a Metrics filter sees: `id`, `namespace`, `runtime`.
struct TaskFields<'a>(&'a ShimTask);

impl Fields for TaskFields<'_> {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path.first().map(String::as_str) {
            Some("id") => Some(Cow::Borrowed(self.0.id())),
            Some("namespace") => Some(Cow::Borrowed(self.0.namespace())),
            Some("runtime") => Some(Cow::Borrowed(self.0.runtime.as_str())),
            _ => None,
        }
    }
}
