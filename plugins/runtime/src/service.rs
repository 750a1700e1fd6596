//! `io.containerd.grpc.v1.tasks`: containerd's
//! `containerd.services.tasks.v1.Tasks` on the socket, over the shim
//! manager, with containerd 1.6's checks and texts (`services/tasks/local.go`):
//! the container record is looked up first (its own "not found"), a
//! container without a task is `NotFound` "task <id> not found", a second
//! task is `AlreadyExists`, and what a shim answers reaches the client with
//! the shim's code and words.

use std::{borrow::Cow, sync::Arc};

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
        Metric,
    },
};
use crated_plugin_api::{
    filters::{AnyFilter, Fields},
    validate, Call, Error, Host, ServiceRouter, Status,
};
use prost::Message;
use shim_protocol::{runc::CheckpointOptions, task as shim, types::Mount};

use crate::{
    error::from_shim,
    manager::{now, task_not_found, CreateOpts, ShimManager, ShimTask},
};

pub const SERVICE: &str = "containerd.services.tasks.v1.Tasks";
const CONTAINERS_GET: &str = "/containerd.services.containers.v1.Containers/Get";
const SNAPSHOTS_MOUNTS: &str = "/containerd.services.snapshots.v1.Snapshots/Mounts";

#[derive(Clone)]
pub struct TasksService {
    host: Host,
    manager: Arc<ShimManager>,
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
        TasksService { host, manager }
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
        if r.checkpoint.is_some() {
            return Err(Error::not_implemented("restoring a task from a checkpoint image").into());
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
        let runtime = container.runtime.unwrap_or_default();
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
            checkpoint: String::new(),
            runtime: if r.runtime_path.is_empty() { runtime.name } else { r.runtime_path },
            options: r.options.or(runtime.options),
        };
        let task = self.manager.create(&ns, &r.container_id, opts).await?;
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
        let resp = t
            .client
            .start(&shim::StartRequest { id: r.container_id, exec_id: r.exec_id })
            .await
            .map_err(shim_status)?;
        Ok(StartResponse { pid: resp.pid })
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

    /// Checkpoints into the image path the runc options name; writing the
    /// checkpoint into the content store (containerd's default) is not done.
    async fn checkpoint(self, call: Call, r: CheckpointTaskRequest) -> Result<CheckpointTaskResponse, Status> {
        let t = self.task(&call, &r.container_id).await?;
        let image_path = r
            .options
            .as_ref()
            .filter(|a| a.type_url.rsplit('/').next() == Some(shim_protocol::runc::CHECKPOINT_OPTIONS_TYPE_URL))
            .and_then(|a| CheckpointOptions::decode(a.value.as_slice()).ok())
            .map(|o| o.image_path)
            .unwrap_or_default();
        if image_path.is_empty() {
            return Err(Error::not_implemented(
                "checkpoint into the content store (give an image path in the runc checkpoint options)",
            )
            .into());
        }
        let req = shim::CheckpointTaskRequest { id: r.container_id, path: image_path, options: r.options };
        t.client.checkpoint(&req).await.map_err(shim_status)?;
        Ok(CheckpointTaskResponse { descriptors: Vec::new() })
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
