//! CRI containers, as containerd 1.6's `pkg/cri/server/container_*.go`: a
//! container is a record in `k8s.io` labelled
//! `io.cri-containerd.kind=container` whose extension
//! `io.cri-containerd.container.metadata` keeps the CRI's metadata (id,
//! name, sandbox, config, image, log path, stop signal), a snapshot of its
//! image keyed by its id, and once started a task of the Tasks service
//! whose stdio this plugin reads ([`crate::container_io`]).
//!
//! What a record cannot hold, the status (pid, created/started/finished
//! times, exit code, reason), is kept as containerd keeps it: JSON in
//! `<root>/containers/<id>/status`, written on every change. On init the
//! store is rebuilt from the records, the status files and the live tasks
//! ([`Containers::recover`]): a running container gets its FIFOs reopened
//! (its log continues) and its exit monitor back; one whose task exited
//! meanwhile gets its exit recorded; one whose task vanished is exited
//! with code 255, reason `Unknown`.
//!
//! The exit monitor waits on the task (Tasks `Wait`), lets the output
//! drain, deletes the task, and records the exit: `Completed` for code 0,
//! `OOMKilled` when the container's memory cgroup saw an OOM kill, else
//! `Error`.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use containerd_client::services::v1::{
    container::Runtime as ContainerRuntime,
    snapshots::{PrepareSnapshotRequest, PrepareSnapshotResponse, UsageRequest, UsageResponse},
    Container, CreateContainerRequest, CreateTaskRequest, CreateTaskResponse, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetRequest, GetResponse, KillRequest,
    ListContainersRequest, ListContainersResponse, ListPidsRequest, ListPidsResponse, MetricsRequest, MetricsResponse,
    StartRequest, StartResponse, UpdateContainerRequest, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use crated_plugin_api::{Code, Host, Status};
use k8s_cri::v1::{
    ContainerAttributes, ContainerConfig, ContainerFilter, ContainerResources, ContainerState, ContainerStats,
    ContainerStatsFilter, CpuUsage, FilesystemIdentifier, FilesystemUsage, LinuxContainerResources, MemoryUsage,
    NamespaceMode, UInt64Value,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shim_protocol::cgroups::{v1, v2, V1_TYPE_URL, V2_TYPE_URL};
use tokio::sync::{watch, OnceCell};

use crate::{
    calls::{self, CONTAINERS, SNAPSHOTS, SPEC_TYPE_URL},
    config::Config,
    container_io::{spawn_reader, AttachIo, ContainerIo, FifoSet},
    container_spec::{container_spec, linux_resources, resolve_user, Cgroups, Rootfs, SpecInput},
    images::ImageStore,
    sandbox::{Sandboxes, KIND_LABEL},
    service::NAMESPACE,
    volumes::{copy_image_contents, image_volumes},
};

pub const KIND_CONTAINER: &str = "container";
/// The container extension holding the container's CRI metadata.
pub const METADATA_EXTENSION: &str = "io.cri-containerd.container.metadata";
/// The type URL containerd registers the metadata under (JSON payload).
pub const METADATA_TYPE_URL: &str = "github.com/containerd/containerd/pkg/cri/store/container/Metadata";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

const SIGKILL: u32 = 9;
const SIGTERM: u32 = 15;
const TASK_RUNNING: i32 = 2;
/// containerd's exit code and reason for a container that failed to start.
const START_ERROR_CODE: i32 = 128;
const START_ERROR_REASON: &str = "StartError";
/// The exit code of a container whose task vanished (containerd's
/// `unknownExitCode`).
const UNKNOWN_EXIT_CODE: i32 = 255;
/// ExecSync keeps at most this much of each stream (containerd's
/// `maxStreamSize`).
pub const EXEC_MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// How long the output of an exited process may take to drain.
const DRAIN: Duration = Duration::from_secs(2);

/// What the record's extension keeps: containerd's container `Metadata`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "SandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "Config")]
    pub config: Option<ContainerConfig>,
    #[serde(rename = "ImageRef")]
    pub image_ref: String,
    #[serde(rename = "LogPath")]
    pub log_path: String,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: String,
    #[serde(rename = "ProcessLabel", default)]
    pub process_label: String,
}

/// The status file's shape (containerd's `versionedStatus`).
#[derive(Serialize, Deserialize)]
struct VersionedStatus {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "Status")]
    body: State,
}

impl Metadata {
    fn to_any(&self) -> prost_types::Any {
        calls::extension(METADATA_TYPE_URL, self)
    }

    fn from_container(c: &Container) -> Option<Metadata> {
        calls::from_extension(c, METADATA_EXTENSION)
    }

    fn config(&self) -> ContainerConfig {
        self.config.clone().unwrap_or_default()
    }
}

/// containerd's container `Status`, persisted as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(rename = "Pid")]
    pub pid: u32,
    #[serde(rename = "CreatedAt")]
    pub created_at: i64,
    #[serde(rename = "StartedAt")]
    pub started_at: i64,
    #[serde(rename = "FinishedAt")]
    pub finished_at: i64,
    #[serde(rename = "ExitCode")]
    pub exit_code: i32,
    #[serde(rename = "Reason")]
    pub reason: String,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Starting", default)]
    pub starting: bool,
    #[serde(rename = "Removing", default)]
    pub removing: bool,
    #[serde(rename = "Unknown", default)]
    pub unknown: bool,
    #[serde(rename = "Resources", default)]
    pub resources: Option<ContainerResources>,
}

impl State {
    pub fn state(&self) -> ContainerState {
        if self.unknown {
            ContainerState::ContainerUnknown
        } else if self.finished_at != 0 {
            ContainerState::ContainerExited
        } else if self.started_at != 0 {
            ContainerState::ContainerRunning
        } else {
            ContainerState::ContainerCreated
        }
    }
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// containerd's `makeContainerName`.
fn container_name(c: &k8s_cri::v1::ContainerMetadata, s: &k8s_cri::v1::PodSandboxMetadata) -> String {
    [c.name.as_str(), s.name.as_str(), s.namespace.as_str(), s.uid.as_str(), &c.attempt.to_string()].join("_")
}

/// A signal by name (`SIGTERM`, `TERM`) or number, for the image's
/// `StopSignal`.
pub fn parse_signal(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    const NAMES: &[(&str, u32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// One container in the store.
pub struct Entry {
    pub meta: Metadata,
    record: Container,
    state: Mutex<State>,
    status_path: PathBuf,
    io: Mutex<Option<Arc<ContainerIo>>>,
    /// True once the exit is recorded (or the container never ran).
    exited: watch::Sender<bool>,
    /// Serialises start, stop and remove of this container.
    op: tokio::sync::Mutex<()>,
    /// The previous CPU sample, for `usage_nano_cores`.
    last_cpu: Mutex<Option<(i64, u64)>>,
}

impl Entry {
    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut State)) -> Result<(), Status> {
        let snapshot = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s);
            s.clone()
        };
        write_state(&self.status_path, &snapshot)
    }

    fn spec(&self) -> Value {
        self.record.spec.as_ref().and_then(|s| serde_json::from_slice(&s.value).ok()).unwrap_or(Value::Null)
    }
}

fn write_state(path: &Path, state: &State) -> Result<(), Status> {
    let v = VersionedStatus { version: calls::METADATA_VERSION.into(), body: state.clone() };
    let data = serde_json::to_vec(&v).map_err(|e| Status::internal(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Status::internal(format!("failed to write container status {path:?}: {e}")))
}

fn read_state(path: &Path) -> Option<State> {
    let data = std::fs::read(path).ok()?;
    serde_json::from_slice::<VersionedStatus>(&data).ok().map(|v| v.body)
}

/// The CRI's containers, over the plugin's dependencies.
#[derive(Clone)]
pub struct Containers {
    host: Host,
    config: Arc<Config>,
    sandboxes: Sandboxes,
    /// `<root>/containers/<id>`: the status file.
    root: PathBuf,
    /// `<state>/containers/<id>`: the FIFOs.
    state: PathBuf,
    /// The image filesystem (writable layers' `fs_id`).
    image_fs: PathBuf,
    store: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
    /// Names being created now.
    reserved: Arc<Mutex<HashSet<String>>>,
    recovered: Arc<OnceCell<()>>,
}

impl Containers {
    pub fn new(
        host: Host,
        config: Arc<Config>,
        sandboxes: Sandboxes,
        root: &Path,
        state: &Path,
        image_fs: PathBuf,
    ) -> Containers {
        Containers {
            host,
            config,
            sandboxes,
            root: root.join("containers"),
            state: state.join("containers"),
            image_fs,
            store: Arc::default(),
            reserved: Arc::default(),
            recovered: Arc::default(),
        }
    }

    /// Rebuilds the store once (see the module doc); every method waits
    /// for it first.
    pub async fn recover(&self) -> Result<(), Status> {
        self.recovered.get_or_try_init(|| self.recover_inner()).await.map(|_| ())
    }

    async fn recover_inner(&self) -> Result<(), Status> {
        let resp: ListContainersResponse =
            calls::unary(&self.host, format!("{CONTAINERS}/List"), &ListContainersRequest { filters: vec![] }).await?;
        for c in resp.containers {
            if c.labels.get(KIND_LABEL).map(String::as_str) != Some(KIND_CONTAINER) {
                continue;
            }
            let Some(meta) = Metadata::from_container(&c) else { continue };
            let dir = self.root.join(&c.id);
            let _ = std::fs::create_dir_all(&dir);
            let status_path = dir.join("status");
            let mut state = read_state(&status_path).unwrap_or_else(|| State {
                created_at: c.created_at.as_ref().map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos)).unwrap_or(0),
                ..Default::default()
            });
            let task = calls::tasks::<_, GetResponse>(
                &self.host,
                "Get",
                &GetRequest { container_id: c.id.clone(), exec_id: String::new() },
            )
            .await
            .ok()
            .and_then(|r| r.process);
            let monitor = match (&task, state.state()) {
                (Some(p), _) if p.status == TASK_RUNNING => {
                    state.pid = p.pid;
                    if state.started_at == 0 {
                        state.started_at = now_nanos();
                    }
                    state.finished_at = 0;
                    true
                }
                // Exited while we were away: the monitor collects it.
                (Some(_), ContainerState::ContainerRunning) => true,
                (Some(_), _) => {
                    let _ =
                        calls::tasks::<_, ()>(&self.host, "Delete", &DeleteTaskRequest { container_id: c.id.clone() })
                            .await;
                    false
                }
                (None, ContainerState::ContainerRunning) => {
                    state.finished_at = now_nanos();
                    state.exit_code = UNKNOWN_EXIT_CODE;
                    state.reason = "Unknown".into();
                    false
                }
                (None, _) => false,
            };
            let _ = write_state(&status_path, &state);
            let entry = Arc::new(Entry {
                meta: meta.clone(),
                record: c.clone(),
                state: Mutex::new(state.clone()),
                status_path,
                io: Mutex::new(None),
                exited: watch::channel(!monitor).0,
                op: tokio::sync::Mutex::new(()),
                last_cpu: Mutex::new(None),
            });
            if monitor {
                let config = meta.config();
                let fifos = self.fifos_of(&c.id, &config);
                // Only a running task still writes: the FIFOs of one that
                // exited have no writer left to open them against.
                let running = task.as_ref().is_some_and(|p| p.status == TASK_RUNNING);
                if running && std::path::Path::new(&fifos.stdout).exists() {
                    match ContainerIo::start(
                        fifos,
                        config.tty,
                        config.stdin_once,
                        &meta.log_path,
                        self.config.max_container_log_line_size,
                    ) {
                        Ok(io) => *entry.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io),
                        Err(e) => {
                            crated_plugin_api::tracing::warn!("failed to reopen the io of container {:?}: {e}", c.id)
                        }
                    }
                }
                self.spawn_monitor(entry.clone());
            }
            self.store.lock().unwrap_or_else(|e| e.into_inner()).insert(c.id.clone(), entry);
        }
        Ok(())
    }

    fn fifos_of(&self, id: &str, config: &ContainerConfig) -> FifoSet {
        let dir = self.state.join(id);
        let p = |n: &str| dir.join(format!("{id}-{n}")).display().to_string();
        FifoSet {
            stdin: if config.stdin { p("stdin") } else { String::new() },
            stdout: p("stdout"),
            stderr: if config.tty { String::new() } else { p("stderr") },
        }
    }

    /// The task pid of `target`, whose pid namespace a container of
    /// `sandbox` asks to join (CRI's `TARGET` mode, for ephemeral debug
    /// containers): it must be a running container of the same pod, as
    /// containerd's `validateTargetContainer` requires.
    async fn target_pid(&self, sandbox: &str, target: &str) -> Result<u32, Status> {
        let e = self.get(target).await?;
        if e.meta.sandbox_id != sandbox {
            return Err(Status::invalid_argument(format!(
                "container {target:?} (sandbox {}) does not belong to sandbox {sandbox}",
                e.meta.sandbox_id
            )));
        }
        let st = e.state();
        if st.state() != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {target:?} is not running - in state {}",
                st.state().as_str_name()
            )));
        }
        Ok(st.pid)
    }

    /// The container a full or unique truncated id names.
    pub async fn get(&self, id: &str) -> Result<Arc<Entry>, Status> {
        self.recover().await?;
        if id.is_empty() {
            return Err(Status::invalid_argument("container id is empty"));
        }
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let found: Vec<&Arc<Entry>> = store.iter().filter(|(k, _)| k.starts_with(id)).map(|(_, v)| v).collect();
        match found.len() {
            1 => Ok(found[0].clone()),
            0 => Err(Status::not_found(format!("an error occurred when try to find container {id:?}: not found"))),
            _ => Err(Status::invalid_argument(format!("container id {id:?} is ambiguous"))),
        }
    }

    fn all(&self) -> Vec<Arc<Entry>> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// The ids of the containers of a sandbox.
    pub async fn of_sandbox(&self, sandbox_id: &str) -> Result<Vec<String>, Status> {
        self.recover().await?;
        Ok(self.all().into_iter().filter(|e| e.meta.sandbox_id == sandbox_id).map(|e| e.meta.id.clone()).collect())
    }

    /// The attach API for the streaming server: the running container's
    /// output from now on, and its stdin if it has one (see
    /// [`crate::container_io`]).
    pub async fn attach(&self, id: &str) -> Result<AttachIo, Status> {
        let e = self.get(id).await?;
        if e.state().state() != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!("container {:?} is not running", e.meta.id)));
        }
        let io = e.io.lock().unwrap_or_else(|e| e.into_inner()).clone();
        io.map(|io| io.attach()).ok_or_else(|| Status::failed_precondition("the container's io is not available"))
    }

    pub async fn create(
        &self,
        sandbox_id: &str,
        config: Option<ContainerConfig>,
        sandbox_config: Option<k8s_cri::v1::PodSandboxConfig>,
    ) -> Result<String, Status> {
        self.recover().await?;
        let config = config.ok_or_else(|| Status::invalid_argument("container config must include metadata"))?;
        let cmeta = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("container config must include metadata"))?;
        let (sandbox, smeta) = self.sandboxes.find(sandbox_id).await?;
        // The request's sandbox config, as containerd takes it (the log
        // directory, the name); the recorded one when a client sends none.
        let sandbox_config = sandbox_config.or_else(|| smeta.config.clone()).unwrap_or_default();
        let (sandbox_pid, running) = self.sandboxes.task_state(&sandbox.id).await;
        if !running {
            return Err(Status::failed_precondition(format!("sandbox container {:?} is not running", sandbox.id)));
        }
        let name = container_name(&cmeta, &sandbox_config.metadata.clone().unwrap_or_default());
        {
            let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
            let holder = self.all().into_iter().find(|e| e.meta.name == name).map(|e| e.meta.id.clone());
            if let Some(other) = holder {
                return Err(Status::already_exists(format!(
                    "failed to reserve container name {name:?}: name {name:?} is reserved for {other:?}"
                )));
            }
            if !reserved.insert(name.clone()) {
                return Err(Status::already_exists(format!(
                    "failed to reserve container name {name:?}: name {name:?} is reserved"
                )));
            }
        }
        let id = calls::generate_id();
        let mut made = Made::default();
        let result = self
            .create_inner(&id, &name, &sandbox, &smeta.runtime_handler, &sandbox_config, sandbox_pid, config, &mut made)
            .await;
        let lease = made.lease.take();
        if result.is_err() {
            self.undo(&id, made).await;
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        self.reserved.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
        result.map(|()| id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_inner(
        &self,
        id: &str,
        name: &str,
        sandbox: &Container,
        runtime_handler: &str,
        sandbox_config: &k8s_cri::v1::PodSandboxConfig,
        sandbox_pid: u32,
        config: ContainerConfig,
        made: &mut Made,
    ) -> Result<(), Status> {
        let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        let image = ImageStore::new(self.host.clone(), NAMESPACE)
            .find(&image_name)
            .await?
            .ok_or_else(|| Status::not_found(format!("failed to resolve image {image_name:?}: not found")))?;

        let dir = self.root.join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Status::internal(format!("failed to create container root directory {dir:?}: {e}")))?;
        made.dirs.push(dir.clone());
        let volatile = self.state.join(id);
        std::fs::create_dir_all(&volatile).map_err(|e| {
            Status::internal(format!("failed to create volatile container root directory {volatile:?}: {e}"))
        })?;
        made.dirs.push(volatile);

        let snapshotter = self.config.containerd.snapshotter.clone();
        // Annotations meant for snapshotters (containerd's
        // `FilterInheritedLabels`: `containerd.io/snapshot/` prefixed).
        let labels: HashMap<String, String> = config
            .annotations
            .iter()
            .filter(|(k, _)| k.starts_with("containerd.io/snapshot/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.clone(),
            key: id.into(),
            parent: image.chain_id.clone(),
            labels,
        };
        let lease = made.lease.insert(calls::lease(&self.host, id).await?);
        let mounts = self
            .host
            .unary::<_, PrepareSnapshotResponse>(&lease.call(&format!("{SNAPSHOTS}/Prepare")), &prepare)
            .await
            .map_err(|s| s.context("failed to prepare the container snapshot"))?
            .mounts;
        made.snapshot = true;

        let sec = config.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default();
        let image_user = image.spec.pointer("/config/User").and_then(Value::as_str).unwrap_or_default();
        let user = resolve_user(
            &Rootfs::from_mounts(&mounts),
            image_user,
            sec.run_as_user.map(|u| u.value),
            &sec.run_as_username,
            sec.run_as_group.map(|g| g.value),
            &sec.supplemental_groups,
        )?;
        let sandbox_dir = self.sandboxes.dir(&sandbox.id);
        let handler =
            if runtime_handler.is_empty() { &self.config.containerd.default_runtime_name } else { runtime_handler };
        let runtime = self.config.containerd.runtimes.get(handler).cloned().unwrap_or_default();
        let target_pid = match sec.namespace_options.as_ref() {
            Some(ns) if ns.pid == NamespaceMode::Target as i32 => {
                self.target_pid(&sandbox.id, &ns.target_id).await.map_err(|s| s.context("invalid target container"))?
            }
            _ => sandbox_pid,
        };
        // The image's volumes go into the spec as CRI mounts; the record
        // keeps the request's config (ContainerStatus lists its mounts).
        let volumes = match self.config.ignore_image_defined_volumes {
            true => Vec::new(),
            false => image_volumes(&image.spec, &config.mounts, &dir),
        };
        let mut spec_config = config.clone();
        spec_config.mounts.extend(volumes.iter().cloned());
        let spec = container_spec(&SpecInput {
            id,
            sandbox_id: &sandbox.id,
            sandbox_pid,
            target_pid,
            sandbox: sandbox_config,
            sandbox_dir: &sandbox_dir,
            sandbox_shm: &self.sandboxes.shm(&sandbox.id),
            config: &spec_config,
            image_config: &image.spec,
            image_name: &image_name,
            user: &user,
            pod_annotations: &runtime.pod_annotations,
            container_annotations: &runtime.container_annotations,
            cgroups: Cgroups::new(&self.config, &runtime),
            device_ownership: self.config.device_ownership_from_security_context,
            privileged_without_host_devices: runtime.privileged_without_host_devices,
        })?;
        // The spec made the volumes' directories; now the image's content.
        if !volumes.is_empty() {
            let scratch = dir.clone();
            tokio::task::spawn_blocking(move || copy_image_contents(&mounts, &volumes, &scratch))
                .await
                .map_err(|e| Status::internal(format!("copying image volumes: {e}")))??;
        }

        let log_path = if !sandbox_config.log_directory.is_empty() && !config.log_path.is_empty() {
            Path::new(&sandbox_config.log_directory).join(&config.log_path).display().to_string()
        } else {
            String::new()
        };
        let meta = Metadata {
            id: id.into(),
            name: name.into(),
            sandbox_id: sandbox.id.clone(),
            config: Some(config.clone()),
            image_ref: image.id.clone(),
            log_path,
            stop_signal: image.spec.pointer("/config/StopSignal").and_then(Value::as_str).unwrap_or_default().into(),
            process_label: String::new(),
        };
        let mut labels: HashMap<String, String> = image
            .spec
            .pointer("/config/Labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        labels.extend(config.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels.insert(KIND_LABEL.into(), KIND_CONTAINER.into());
        let record = Container {
            id: id.into(),
            labels,
            image: image.references.first().cloned().unwrap_or_else(|| image_name.clone()),
            // The sandbox's runtime and options (containerd's
            // `getRuntimeOptions(sandboxInfo)`).
            runtime: sandbox.runtime.clone().or(Some(ContainerRuntime { name: String::new(), options: None })),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value: spec }),
            snapshotter,
            snapshot_key: id.into(),
            extensions: HashMap::from([(METADATA_EXTENSION.to_string(), meta.to_any())]),
            ..Default::default()
        };
        calls::unary::<_, ()>(
            &self.host,
            format!("{CONTAINERS}/Create"),
            &CreateContainerRequest { container: Some(record.clone()) },
        )
        .await
        .map_err(|s| s.context("failed to create containerd container"))?;
        made.record = true;

        let status_path = dir.join("status");
        let mut state = State { created_at: now_nanos(), ..Default::default() };
        state.resources = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| ContainerResources { linux: Some(r), windows: None });
        write_state(&status_path, &state)?;
        let entry = Arc::new(Entry {
            meta,
            record,
            state: Mutex::new(state),
            status_path,
            io: Mutex::new(None),
            exited: watch::channel(true).0,
            op: tokio::sync::Mutex::new(()),
            last_cpu: Mutex::new(None),
        });
        self.store.lock().unwrap_or_else(|e| e.into_inner()).insert(id.into(), entry);
        Ok(())
    }

    async fn undo(&self, id: &str, made: Made) {
        if made.record {
            let _ = calls::unary::<_, ()>(
                &self.host,
                format!("{CONTAINERS}/Delete"),
                &DeleteContainerRequest { id: id.into() },
            )
            .await;
        }
        if made.snapshot {
            calls::remove_snapshot(&self.host, &self.config.containerd.snapshotter, id, "container").await;
        }
        for d in made.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), Status> {
        let e = self.get(id).await?;
        let _op = e.op.lock().await;
        let st = e.state();
        if st.state() != ContainerState::ContainerCreated || st.starting {
            return Err(Status::failed_precondition(format!("container is in {} state", st.state().as_str_name())));
        }
        let (_, running) = self.sandboxes.task_state(&e.meta.sandbox_id).await;
        if !running {
            return Err(Status::failed_precondition(format!(
                "sandbox container {:?} is not running",
                e.meta.sandbox_id
            )));
        }
        let result = self.start_task(&e).await;
        if let Err(s) = &result {
            if let Some(io) = e.io.lock().unwrap_or_else(|e| e.into_inner()).take() {
                io.close();
            }
            let _ = calls::tasks::<_, ()>(&self.host, "Delete", &DeleteTaskRequest { container_id: e.meta.id.clone() })
                .await;
            let message = s.message.clone();
            e.update(|st| {
                st.finished_at = now_nanos();
                st.exit_code = START_ERROR_CODE;
                st.reason = START_ERROR_REASON.into();
                st.message = message;
            })?;
        }
        result
    }

    async fn start_task(&self, e: &Arc<Entry>) -> Result<(), Status> {
        let config = e.meta.config();
        let id = e.meta.id.clone();
        let dir = self.state.join(&id);
        std::fs::create_dir_all(&dir).map_err(|err| Status::internal(format!("{dir:?}: {err}")))?;
        let fifos = FifoSet::create(&dir, &id, config.stdin, config.tty)
            .map_err(|err| Status::internal(format!("failed to create container io: {err}")))?;
        let io = ContainerIo::start(
            fifos.clone(),
            config.tty,
            config.stdin_once,
            &e.meta.log_path,
            self.config.max_container_log_line_size,
        )
        .map_err(|err| Status::internal(format!("failed to start container io: {err}")))?;
        *e.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
        let create = CreateTaskRequest {
            container_id: id.clone(),
            stdin: fifos.stdin,
            stdout: fifos.stdout,
            stderr: fifos.stderr,
            terminal: config.tty,
            ..Default::default()
        };
        calls::tasks::<_, CreateTaskResponse>(&self.host, "Create", &create)
            .await
            .map_err(|s| s.context("failed to create containerd task"))?;
        e.exited.send_replace(false);
        let pid = match calls::tasks::<_, StartResponse>(
            &self.host,
            "Start",
            &StartRequest { container_id: id.clone(), exec_id: String::new() },
        )
        .await
        {
            Ok(r) => r.pid,
            Err(s) => {
                e.exited.send_replace(true);
                return Err(s.context(format!("failed to start containerd task {id:?}")));
            }
        };
        e.update(|st| {
            st.pid = pid;
            st.started_at = now_nanos();
        })?;
        self.spawn_monitor(e.clone());
        Ok(())
    }

    /// Waits for the task's exit and records it (see the module doc).
    fn spawn_monitor(&self, e: Arc<Entry>) {
        let this = self.clone();
        tokio::spawn(async move {
            let id = e.meta.id.clone();
            let wait = calls::tasks::<_, WaitResponse>(
                &this.host,
                "Wait",
                &WaitRequest { container_id: id.clone(), exec_id: String::new() },
            )
            .await;
            let (code, at) = match wait {
                Ok(w) => (
                    w.exit_status as i32,
                    w.exited_at.map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos)).filter(|t| *t > 0),
                ),
                Err(s) => {
                    crated_plugin_api::tracing::warn!("failed to wait for container {id:?}: {}", s.message);
                    (UNKNOWN_EXIT_CODE, None)
                }
            };
            let io = e.io.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(io) = &io {
                io.drained(DRAIN).await;
            }
            let oom = this.oom_killed(&e);
            if let Err(s) =
                calls::tasks::<_, ()>(&this.host, "Delete", &DeleteTaskRequest { container_id: id.clone() }).await
            {
                if !calls::not_found(s.kind()) {
                    crated_plugin_api::tracing::warn!("failed to delete the task of container {id:?}: {}", s.message);
                }
            }
            if let Some(io) = io {
                io.close();
            }
            let reason = if oom {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let _ = e.update(|st| {
                st.finished_at = at.unwrap_or_else(now_nanos);
                st.exit_code = code;
                st.pid = 0;
                if st.reason.is_empty() {
                    st.reason = reason.into();
                }
            });
            e.exited.send_replace(true);
        });
    }

    /// Whether the container's memory cgroup (v1 or v2) counted an OOM
    /// kill, read from the cgroup the spec names before the task is gone.
    fn oom_killed(&self, e: &Entry) -> bool {
        let path = e.spec().pointer("/linux/cgroupsPath").and_then(Value::as_str).unwrap_or_default().to_string();
        if path.is_empty() || path.contains(':') {
            return false;
        }
        let rel = path.trim_start_matches('/');
        let count = |file: PathBuf, key: &str| -> bool {
            std::fs::read_to_string(file)
                .map(|t| {
                    t.lines()
                        .any(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|n| n > 0))
                })
                .unwrap_or(false)
        };
        count(Path::new("/sys/fs/cgroup/memory").join(rel).join("memory.oom_control"), "oom_kill ")
            || count(Path::new("/sys/fs/cgroup").join(rel).join("memory.events"), "oom_kill ")
    }

    async fn wait_exited(e: &Entry, limit: Duration) -> bool {
        let mut rx = e.exited.subscribe();
        let exited = tokio::time::timeout(limit, rx.wait_for(|x| *x)).await.is_ok();
        exited
    }

    pub async fn stop(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let e = self.get(id).await?;
        let _op = e.op.lock().await;
        self.stop_entry(&e, timeout).await
    }

    async fn stop_entry(&self, e: &Entry, timeout: i64) -> Result<(), Status> {
        if e.state().state() != ContainerState::ContainerRunning {
            return Ok(());
        }
        let id = e.meta.id.clone();
        if timeout > 0 {
            let signal = parse_signal(&e.meta.stop_signal).unwrap_or(SIGTERM);
            let kill = KillRequest { container_id: id.clone(), exec_id: String::new(), signal, all: false };
            match calls::tasks::<_, ()>(&self.host, "Kill", &kill).await {
                // A process that exited just now refuses the signal: the
                // exit monitor is about to record it.
                Err(s) if !calls::not_found(s.kind()) && !Self::wait_exited(e, DRAIN).await => {
                    return Err(s.context(format!("failed to stop container {id:?}")));
                }
                _ => {}
            }
            if Self::wait_exited(e, Duration::from_secs(timeout as u64)).await {
                return Ok(());
            }
        }
        let kill = KillRequest { container_id: id.clone(), exec_id: String::new(), signal: SIGKILL, all: true };
        if let Err(s) = calls::tasks::<_, ()>(&self.host, "Kill", &kill).await {
            if !calls::not_found(s.kind()) {
                crated_plugin_api::tracing::debug!("kill of container {id:?}: {}", s.message);
            }
        }
        if !Self::wait_exited(e, Duration::from_secs(120)).await {
            return Err(Status::new(Code::DeadlineExceeded, format!("container {id:?} did not exit after SIGKILL")));
        }
        Ok(())
    }

    pub async fn remove(&self, id: &str) -> Result<(), Status> {
        let e = match self.get(id).await {
            Ok(e) => e,
            // Removing a container that is gone is not an error.
            Err(s) if s.code == Code::NotFound => return Ok(()),
            Err(s) => return Err(s),
        };
        let _op = e.op.lock().await;
        // A running container is stopped first, forcibly, as containerd.
        self.stop_entry(&e, 0).await?;
        e.update(|st| st.removing = true)?;
        let id = e.meta.id.clone();
        match calls::tasks::<_, ()>(&self.host, "Delete", &DeleteTaskRequest { container_id: id.clone() }).await {
            Err(s) if !calls::not_found(s.kind()) && s.code != Code::FailedPrecondition => {
                crated_plugin_api::tracing::debug!("delete of the task of {id:?}: {}", s.message)
            }
            _ => {}
        }
        match calls::unary::<_, ()>(
            &self.host,
            format!("{CONTAINERS}/Delete"),
            &DeleteContainerRequest { id: id.clone() },
        )
        .await
        {
            Err(s) if !calls::not_found(s.kind()) => {
                return Err(s.context(format!("failed to delete containerd container {id:?}")));
            }
            _ => {}
        }
        calls::remove_snapshot(&self.host, &self.config.containerd.snapshotter, &id, "container").await;
        // The log file stays: it is the kubelet's (containerd leaves it).
        let _ = std::fs::remove_dir_all(self.root.join(&id));
        let _ = std::fs::remove_dir_all(self.state.join(&id));
        self.store.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        Ok(())
    }

    fn to_cri(e: &Entry) -> k8s_cri::v1::Container {
        let config = e.meta.config();
        k8s_cri::v1::Container {
            id: e.meta.id.clone(),
            pod_sandbox_id: e.meta.sandbox_id.clone(),
            metadata: config.metadata.clone(),
            image: config.image.clone(),
            image_ref: e.meta.image_ref.clone(),
            state: e.state().state() as i32,
            created_at: e.state().created_at,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            image_id: e.meta.image_ref.clone(),
        }
    }

    pub async fn list(&self, filter: Option<ContainerFilter>) -> Result<Vec<k8s_cri::v1::Container>, Status> {
        self.recover().await?;
        let f = filter.unwrap_or_default();
        let mut out: Vec<_> = self
            .all()
            .into_iter()
            .filter(|e| e.meta.id.starts_with(&f.id))
            .filter(|e| e.meta.sandbox_id.starts_with(&f.pod_sandbox_id))
            .filter(|e| f.state.as_ref().is_none_or(|s| s.state == e.state().state() as i32))
            .filter(|e| {
                let labels = e.meta.config().labels;
                f.label_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|e| Self::to_cri(&e))
            .collect();
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    pub async fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(k8s_cri::v1::ContainerStatus, HashMap<String, String>), Status> {
        let e = self.get(id).await?;
        let st = e.state();
        let config = e.meta.config();
        let image = config.image.clone();
        let status = k8s_cri::v1::ContainerStatus {
            id: e.meta.id.clone(),
            metadata: config.metadata.clone(),
            state: st.state() as i32,
            created_at: st.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            image,
            image_ref: e.meta.image_ref.clone(),
            reason: st.reason.clone(),
            message: st.message.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            mounts: config.mounts.clone(),
            log_path: e.meta.log_path.clone(),
            resources: st.resources.clone(),
            image_id: e.meta.image_ref.clone(),
            user: None,
        };
        let mut info = HashMap::new();
        if verbose {
            let v = json!({
                "sandboxID": e.meta.sandbox_id,
                "pid": st.pid,
                "removing": st.removing,
                "snapshotKey": e.record.snapshot_key,
                "snapshotter": e.record.snapshotter,
                "runtimeType": e.record.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                "runtimeOptions": Value::Null,
                "config": config,
                "runtimeSpec": e.spec(),
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((status, info))
    }

    pub async fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let e = self.get(id).await?;
        if e.state().state() != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition("container is not running"));
        }
        let io = e.io.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match io {
            Some(io) => {
                io.reopen_log().map_err(|err| Status::internal(format!("failed to reopen container log: {err}")))
            }
            None => Ok(()),
        }
    }

    pub async fn update_resources(&self, id: &str, resources: Option<LinuxContainerResources>) -> Result<(), Status> {
        let e = self.get(id).await?;
        let _op = e.op.lock().await;
        let resources = resources.unwrap_or_default();
        let mut spec = e.spec();
        let mut merged = spec.pointer("/linux/resources").cloned().unwrap_or_else(|| json!({}));
        if let (Value::Object(m), Value::Object(new)) = (&mut merged, linux_resources(&resources)) {
            for (k, v) in new {
                match (m.get_mut(&k), v) {
                    (Some(Value::Object(old)), Value::Object(v)) => old.extend(v),
                    (_, v) => {
                        m.insert(k, v);
                    }
                }
            }
        }
        spec["linux"]["resources"] = merged.clone();
        if resources.oom_score_adj != 0 {
            spec["process"]["oomScoreAdj"] = json!(resources.oom_score_adj);
        }
        let update = UpdateContainerRequest {
            container: Some(Container {
                id: e.meta.id.clone(),
                spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value: spec.to_string().into_bytes() }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["spec".into()] }),
        };
        calls::unary::<_, ()>(&self.host, format!("{CONTAINERS}/Update"), &update)
            .await
            .map_err(|s| s.context("failed to update container spec"))?;
        if e.state().state() == ContainerState::ContainerRunning {
            let req = UpdateTaskRequest {
                container_id: e.meta.id.clone(),
                resources: Some(prost_types::Any {
                    type_url: RESOURCES_TYPE_URL.into(),
                    value: merged.to_string().into_bytes(),
                }),
                annotations: HashMap::new(),
            };
            calls::tasks::<_, ()>(&self.host, "Update", &req)
                .await
                .map_err(|s| s.context("failed to update resources"))?;
        }
        e.update(|st| st.resources = Some(ContainerResources { linux: Some(resources), windows: None }))
    }

    /// ExecSync: the command in the container's process environment, its
    /// output (at most [`EXEC_MAX_OUTPUT`] per stream) and exit code;
    /// past `timeout` seconds (none when 0) the process is killed and the
    /// call fails with DeadlineExceeded.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<(Vec<u8>, Vec<u8>, i32), Status> {
        let e = self.get(id).await?;
        if e.state().state() != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!("container {:?} is not running", e.meta.id)));
        }
        if cmd.is_empty() {
            return Err(Status::invalid_argument("exec command is empty"));
        }
        let mut process = e.spec().get("process").cloned().unwrap_or_else(|| json!({}));
        process["args"] = json!(cmd);
        process["terminal"] = json!(false);
        let exec_id = calls::generate_id();
        let dir = self.state.join(&e.meta.id).join(format!("exec-{}", &exec_id[..16]));
        std::fs::create_dir_all(&dir).map_err(|err| Status::internal(format!("{dir:?}: {err}")))?;
        let result = self.exec_in(&e.meta.id, &exec_id, &dir, process, timeout).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn exec_in(
        &self,
        id: &str,
        exec_id: &str,
        dir: &Path,
        process: Value,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32), Status> {
        let fifos = FifoSet::create(dir, exec_id, false, false)
            .map_err(|err| Status::internal(format!("failed to create exec io: {err}")))?;
        let collect = |path: String| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let sink = buf.clone();
            spawn_reader(
                path,
                move |data| {
                    let mut b = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let room = EXEC_MAX_OUTPUT.saturating_sub(b.len());
                    b.extend_from_slice(&data[..data.len().min(room)]);
                },
                move || {
                    let _ = tx.send(());
                },
            );
            (buf, rx)
        };
        let (out, out_done) = collect(fifos.stdout.clone());
        let (err, err_done) = collect(fifos.stderr.clone());
        let req = ExecProcessRequest {
            container_id: id.into(),
            stdin: String::new(),
            stdout: fifos.stdout.clone(),
            stderr: fifos.stderr.clone(),
            terminal: false,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value: process.to_string().into_bytes() }),
            exec_id: exec_id.into(),
        };
        if let Err(s) = calls::tasks::<_, ()>(&self.host, "Exec", &req).await {
            fifos.remove();
            return Err(s.context("failed to create exec process"));
        }
        let delete = || async {
            let _ = calls::tasks::<_, ()>(
                &self.host,
                "DeleteProcess",
                &DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() },
            )
            .await;
        };
        if let Err(s) = calls::tasks::<_, StartResponse>(
            &self.host,
            "Start",
            &StartRequest { container_id: id.into(), exec_id: exec_id.into() },
        )
        .await
        {
            delete().await;
            fifos.remove();
            return Err(s.context("failed to start exec process"));
        }
        let wait_req = WaitRequest { container_id: id.into(), exec_id: exec_id.into() };
        let wait = calls::tasks::<_, WaitResponse>(&self.host, "Wait", &wait_req);
        let waited = if timeout > 0 {
            tokio::time::timeout(Duration::from_secs(timeout as u64), wait).await
        } else {
            Ok(wait.await)
        };
        let code = match waited {
            Ok(Ok(w)) => w.exit_status as i32,
            Ok(Err(s)) => {
                delete().await;
                fifos.remove();
                return Err(s.context("failed to wait for exec process"));
            }
            Err(_) => {
                let kill =
                    KillRequest { container_id: id.into(), exec_id: exec_id.into(), signal: SIGKILL, all: false };
                let _ = calls::tasks::<_, ()>(&self.host, "Kill", &kill).await;
                let _ = calls::tasks::<_, WaitResponse>(
                    &self.host,
                    "Wait",
                    &WaitRequest { container_id: id.into(), exec_id: exec_id.into() },
                )
                .await;
                delete().await;
                fifos.remove();
                return Err(Status::new(Code::DeadlineExceeded, format!("timeout {timeout}s exceeded")));
            }
        };
        let _ = tokio::time::timeout(DRAIN, async {
            let _ = out_done.await;
            let _ = err_done.await;
        })
        .await;
        delete().await;
        fifos.remove();
        let take = |b: Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()));
        Ok((take(out), take(err), code))
    }

    /// Every task's cgroup metrics, by container id.
    pub async fn metrics(&self) -> HashMap<String, (i64, prost_types::Any)> {
        let resp: Result<MetricsResponse, _> =
            calls::tasks(&self.host, "Metrics", &MetricsRequest { filters: vec![] }).await;
        resp.map(|r| {
            r.metrics
                .into_iter()
                .filter_map(|m| {
                    let ts =
                        m.timestamp.map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos)).unwrap_or_else(now_nanos);
                    Some((m.id, (ts, m.data?)))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    async fn stats_of(&self, e: &Entry, metrics: &HashMap<String, (i64, prost_types::Any)>) -> ContainerStats {
        let config = e.meta.config();
        let mut stats = ContainerStats {
            attributes: Some(ContainerAttributes {
                id: e.meta.id.clone(),
                metadata: config.metadata.clone(),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
            }),
            ..Default::default()
        };
        if let Some((ts, any)) = metrics.get(&e.meta.id) {
            let (cpu, memory) = cgroup_usage(*ts, any);
            if let Some(mut cpu) = cpu {
                let total = cpu.usage_core_nano_seconds.as_ref().map(|v| v.value).unwrap_or(0);
                let mut last = e.last_cpu.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((t0, u0)) = *last {
                    if *ts > t0 && total >= u0 {
                        let nano_cores = (total - u0) as f64 / ((*ts - t0) as f64 / 1e9);
                        cpu.usage_nano_cores = Some(UInt64Value { value: nano_cores as u64 });
                    }
                }
                *last = Some((*ts, total));
                stats.cpu = Some(cpu);
            }
            stats.memory = memory;
        }
        let usage = UsageRequest { snapshotter: e.record.snapshotter.clone(), key: e.record.snapshot_key.clone() };
        if let Ok(u) = calls::unary::<_, UsageResponse>(&self.host, format!("{SNAPSHOTS}/Usage"), &usage).await {
            stats.writable_layer = Some(FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(FilesystemIdentifier { mountpoint: self.image_fs.display().to_string() }),
                used_bytes: Some(UInt64Value { value: u64::try_from(u.size).unwrap_or(0) }),
                inodes_used: Some(UInt64Value { value: u64::try_from(u.inodes).unwrap_or(0) }),
            });
        }
        stats
    }

    pub async fn stats(&self, id: &str) -> Result<ContainerStats, Status> {
        let e = self.get(id).await?;
        let metrics = self.metrics().await;
        Ok(self.stats_of(&e, &metrics).await)
    }

    pub async fn list_stats(&self, filter: Option<ContainerStatsFilter>) -> Result<Vec<ContainerStats>, Status> {
        self.recover().await?;
        let f = filter.unwrap_or_default();
        let metrics = self.metrics().await;
        let mut out = Vec::new();
        for e in self.all() {
            let labels = e.meta.config().labels;
            if !e.meta.id.starts_with(&f.id)
                || !e.meta.sandbox_id.starts_with(&f.pod_sandbox_id)
                || !f.label_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                // containerd lists the stats of running containers only.
                || e.state().state() != ContainerState::ContainerRunning
            {
                continue;
            }
            out.push(self.stats_of(&e, &metrics).await);
        }
        Ok(out)
    }

    /// The stats of the running containers of a sandbox.
    pub async fn sandbox_container_stats(
        &self,
        sandbox_id: &str,
        metrics: &HashMap<String, (i64, prost_types::Any)>,
    ) -> Vec<ContainerStats> {
        let mut out = Vec::new();
        for e in self.all() {
            if e.meta.sandbox_id == sandbox_id && e.state().state() == ContainerState::ContainerRunning {
                out.push(self.stats_of(&e, metrics).await);
            }
        }
        out
    }

    /// How many processes the sandbox's running containers hold (their
    /// tasks' ListPids), as containerd counts a pod's `ProcessUsage`.
    pub async fn sandbox_process_count(&self, sandbox_id: &str) -> Result<u64, Status> {
        let mut count = 0;
        for e in self.all() {
            if e.meta.sandbox_id == sandbox_id && e.state().state() == ContainerState::ContainerRunning {
                let pids: ListPidsResponse =
                    calls::tasks(&self.host, "ListPids", &ListPidsRequest { container_id: e.meta.id.clone() }).await?;
                count += pids.processes.len() as u64;
            }
        }
        Ok(count)
    }
}

/// CPU and memory of a shim's cgroup metrics (v1 or v2), as the CRI
/// reports them: working set is usage minus inactive file pages.
pub fn cgroup_usage(ts: i64, any: &prost_types::Any) -> (Option<CpuUsage>, Option<MemoryUsage>) {
    let v = |value: u64| Some(UInt64Value { value });
    if any.type_url.ends_with(V1_TYPE_URL) {
        let Ok(m) = v1::Metrics::decode(&any.value[..]) else { return (None, None) };
        let cpu = m.cpu.and_then(|c| c.usage).map(|u| CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: v(u.total),
            usage_nano_cores: None,
        });
        let memory = m.memory.map(|mem| {
            let usage = mem.usage.as_ref().map(|u| u.usage).unwrap_or(0);
            let limit = mem.usage.as_ref().map(|u| u.limit).unwrap_or(0);
            let working = usage.saturating_sub(mem.total_inactive_file);
            MemoryUsage {
                timestamp: ts,
                working_set_bytes: v(working),
                available_bytes: v(limit.saturating_sub(working)),
                usage_bytes: v(usage),
                rss_bytes: v(mem.total_rss),
                page_faults: v(mem.total_pg_fault),
                major_page_faults: v(mem.total_pg_maj_fault),
            }
        });
        (cpu, memory)
    } else if any.type_url.ends_with(V2_TYPE_URL) {
        let Ok(m) = v2::Metrics::decode(&any.value[..]) else { return (None, None) };
        let cpu = m.cpu.map(|c| CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: v(c.usage_usec.saturating_mul(1000)),
            usage_nano_cores: None,
        });
        let memory = m.memory.map(|mem| {
            let working = mem.usage.saturating_sub(mem.inactive_file);
            MemoryUsage {
                timestamp: ts,
                working_set_bytes: v(working),
                available_bytes: v(mem.usage_limit.saturating_sub(working)),
                usage_bytes: v(mem.usage),
                rss_bytes: v(mem.anon),
                page_faults: v(mem.pgfault),
                major_page_faults: v(mem.pgmajfault),
            }
        });
        (cpu, memory)
    } else {
        (None, None)
    }
}

/// What a create made so far, for undoing it on failure.
#[derive(Default)]
struct Made {
    /// The lease holding the snapshot until the record references it:
    /// a garbage collection in between would take the snapshot (as
    /// containerd's client, which leases every container it creates).
    lease: Option<crated_plugin_api::lease::LeaseGuard>,
    dirs: Vec<PathBuf>,
    snapshot: bool,
    record: bool,
}

/// Attach on the stream server: the client's streams joined to the running
/// container's stdio ([`Containers::attach`]) until the container's output
/// ends or the client goes away, as containerd's attach does. The client's
/// stdin goes to the container's (closed for good at its end when the
/// config says `stdin_once`), its terminal sizes to the task's pty. An
/// attach reports no exit code: the container's exit is its status's.
impl crate::streaming::backend::AttachTarget for Containers {
    fn attach(
        &self,
        req: k8s_cri::v1::AttachRequest,
        mut io: crate::streaming::StreamIo,
    ) -> futures::future::BoxFuture<'static, Result<(), crate::streaming::ExecError>> {
        use crate::streaming::ExecError;
        let containers = self.clone();
        Box::pin(async move {
            let id = req.container_id;
            let attached = containers.attach(&id).await.map_err(|s| ExecError::Failed(s.message))?;
            let mut copies = Vec::new();
            if let Some(to) = io.stdout.take() {
                copies.push(tokio::spawn(forward_output(attached.stdout, to)));
            }
            match (io.stderr.take(), attached.stderr) {
                (Some(to), Some(from)) => copies.push(tokio::spawn(forward_output(from, to))),
                // A terminal has no stderr of its own: the stream ends.
                (Some(to), None) => {
                    let _ = to.close().await;
                }
                _ => {}
            }
            let stdin_task = match (io.stdin.take(), attached.stdin) {
                (Some(mut from), Some(to)) => {
                    let (host, id) = (containers.host.clone(), id.clone());
                    Some(tokio::spawn(async move {
                        while let Some(chunk) = from.read().await {
                            if to.write(chunk.to_vec()).await.is_err() {
                                break;
                            }
                        }
                        if to.close() {
                            let close = containerd_client::services::v1::CloseIoRequest {
                                container_id: id,
                                exec_id: String::new(),
                                stdin: true,
                            };
                            if let Err(s) = crate::calls::tasks::<_, ()>(&host, "CloseIO", &close).await {
                                crated_plugin_api::tracing::warn!(
                                    "failed to close the stdin of {}: {}",
                                    close.container_id,
                                    s.message
                                );
                            }
                        }
                    }))
                }
                _ => None,
            };
            let resize_task = io
                .resize
                .take()
                .map(|sizes| crate::streaming::backend::forward_resizes(containers.host.clone(), &id, "", sizes));
            crate::streaming::backend::finish_copies(copies, &mut io.gone).await;
            for t in [stdin_task, resize_task].into_iter().flatten() {
                t.abort();
            }
            Ok(())
        })
    }
}

/// Copies the container's output chunks to one client stream until the
/// output ends (a `None` chunk, or the sender gone) or the client stops
/// reading; then closes the client's stream. A client that fell behind
/// loses what it missed, not the attach.
async fn forward_output(
    mut from: tokio::sync::broadcast::Receiver<crate::container_io::Chunk>,
    to: crate::streaming::Writer,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match from.recv().await {
            Ok(Some(chunk)) => {
                if to.write(bytes::Bytes::copy_from_slice(&chunk)).await.is_err() {
                    return;
                }
            }
            Ok(None) | Err(RecvError::Closed) => break,
            Err(RecvError::Lagged(_)) => continue,
        }
    }
    let _ = to.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("quit"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn states_follow_the_times() {
        let mut s = State::default();
        assert_eq!(s.state(), ContainerState::ContainerCreated);
        s.started_at = 1;
        assert_eq!(s.state(), ContainerState::ContainerRunning);
        s.finished_at = 2;
        assert_eq!(s.state(), ContainerState::ContainerExited);
        let v = VersionedStatus { version: "v1".into(), body: s };
        let back: VersionedStatus = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back.body.finished_at, 2);
    }
}
