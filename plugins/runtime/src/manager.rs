//! The shim manager (`io.containerd.runtime.v2.task`): one shim per task,
//! started, connected, watched and cleaned up as containerd 1.6's
//! `runtime/v2` does.
//!
//! - [`ShimManager::create`] makes the bundle (with the log FIFO), runs
//!   `<shim> start`, connects to the address it prints, asks it for its pid
//!   (`Connect`) and creates the task. Any failure on the way removes what
//!   was made: the shim is told to delete and shut down (killed by its pid
//!   if it does not go), the rootfs is unmounted and the bundle removed.
//! - Every connection is watched: a shim that dies while it is registered is
//!   cleaned up at once ([`ShimManager::shim_gone`]): `<shim> delete` (runc's
//!   state, the rootfs mount), `/tasks/exit` and `/tasks/delete` published,
//!   bundle removed.
//! - [`ShimManager::load`] runs at init: every bundle left in the state
//!   directory by an earlier daemon is reconnected through the `address`
//!   file its shim wrote, or cleaned up as above when its shim is gone, so a
//!   daemon killed with SIGKILL and restarted still lists, kills and deletes
//!   its running tasks.
//!
//! Creation and deletion run on tasks of their own, so a client that hangs
//! up half way cannot leave a half-made or half-removed task behind.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use containerd_client::events::{TaskDelete, TaskExit};
use crated_plugin_api::{tracing, validate, Error, ErrorKind, Host, Status};
use prost::Message;
use shim_protocol::{
    task::{ConnectRequest, CreateTaskRequest, DeleteRequest, DeleteResponse, ShutdownRequest, TaskClient},
    types::Mount,
    Client,
};
use tokio::task::AbortHandle;

use crate::{
    binary::{self, ShimCommand},
    bundle::{self, blocking, Bundle},
    config::{self, Config},
    error::{Result, RuntimeError},
};

/// The deadline of a call to a shim (all but `Wait`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a shim told to shut down has to hang up.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long reconnecting to a shim at load may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What a task is created from.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    /// The OCI spec (JSON), written as `config.json`.
    pub spec: Vec<u8>,
    pub rootfs: Vec<Mount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub checkpoint: String,
    /// The runtime name (or absolute shim path) to start.
    pub runtime: String,
    /// Runtime options (the task's, else the container's).
    pub options: Option<prost_types::Any>,
}

/// How a task ended, as its shim reported it.
#[derive(Debug, Clone, Default)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
    pub exited_at: Option<prost_types::Timestamp>,
}

/// A running shim and the task it serves.
pub struct ShimTask {
    pub bundle: Bundle,
    pub client: TaskClient,
    /// The runtime name the task was created with (the shim's path after a
    /// restart).
    pub runtime: String,
    pub shim_pid: u32,
    command: ShimCommand,
    log: Option<AbortHandle>,
    watcher: Mutex<Option<AbortHandle>>,
}

impl ShimTask {
    pub fn id(&self) -> &str {
        &self.bundle.id
    }
    pub fn namespace(&self) -> &str {
        &self.bundle.namespace
    }

    /// Stops following the log and, when `watcher`, watching the
    /// connection (never from the watcher itself: aborting its own task
    /// would cut its cleanup short at the next await).
    fn stop_watching(&self, watcher: bool) {
        if watcher {
            if let Some(w) = self.watcher.lock().expect("watcher").take() {
                w.abort();
            }
        }
        if let Some(l) = &self.log {
            l.abort();
        }
    }
}

enum Slot {
    /// A create in progress holds the id.
    Creating,
    Ready(Arc<ShimTask>),
}

type Key = (String, String);

pub struct ShimManager {
    root: PathBuf,
    state: PathBuf,
    grpc_address: String,
    ttrpc_address: String,
    /// The daemon's binary (the shims' `-publish-binary`) and its directory,
    /// where shims are looked for first.
    daemon: PathBuf,
    debug: bool,
    config: Config,
    host: Host,
    tasks: Mutex<HashMap<Key, Slot>>,
}

/// Where the manager's own settings come from.
pub struct ManagerSettings {
    pub root: PathBuf,
    pub state: PathBuf,
    pub grpc_address: String,
    pub ttrpc_address: String,
    pub debug: bool,
    pub config: Config,
    pub host: Host,
}

impl ShimManager {
    pub fn new(s: ManagerSettings) -> ShimManager {
        let daemon = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("crated"));
        ShimManager {
            root: s.root,
            state: s.state,
            grpc_address: s.grpc_address,
            ttrpc_address: s.ttrpc_address,
            daemon,
            debug: s.debug,
            config: s.config,
            host: s.host,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.tasks.lock().expect("task table")
    }

    /// The task `id` of `namespace`, if it runs.
    pub fn get(&self, namespace: &str, id: &str) -> Option<Arc<ShimTask>> {
        match self.slots().get(&(namespace.to_string(), id.to_string())) {
            Some(Slot::Ready(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// The tasks of `namespace`, by id.
    pub fn list(&self, namespace: &str) -> Vec<Arc<ShimTask>> {
        let mut v: Vec<Arc<ShimTask>> = self
            .slots()
            .iter()
            .filter_map(|((ns, _), s)| match s {
                Slot::Ready(t) if ns == namespace => Some(t.clone()),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        v
    }

    /// Every task of every namespace (for the metrics endpoint).
    pub fn all(&self) -> Vec<Arc<ShimTask>> {
        self.slots()
            .values()
            .filter_map(|s| match s {
                Slot::Ready(t) => Some(t.clone()),
                Slot::Creating => None,
            })
            .collect()
    }

    fn command(&self, namespace: &str, id: &str, binary: PathBuf) -> ShimCommand {
        ShimCommand {
            binary,
            namespace: namespace.into(),
            id: id.into(),
            grpc_address: self.grpc_address.clone(),
            ttrpc_address: self.ttrpc_address.clone(),
            daemon: self.daemon.clone(),
            debug: self.debug,
        }
    }

    /// Starts a shim for `namespace/id` and creates the task in it.
    pub async fn create(self: &Arc<Self>, namespace: &str, id: &str, opts: CreateOpts) -> Result<Arc<ShimTask>> {
        validate::identifier(id).map_err(|e| Error::invalid_argument(format!("invalid task id {id}: {e}")))?;
        let key = (namespace.to_string(), id.to_string());
        {
            let mut slots = self.slots();
            if slots.contains_key(&key) {
                return Err(Error::already_exists(format!("task {id}")).into());
            }
            slots.insert(key.clone(), Slot::Creating);
        }
        let me = self.clone();
        let (ns, task_id) = key.clone();
        let made = tokio::spawn(async move { me.start_and_create(&ns, &task_id, opts).await }).await;
        let made = made.unwrap_or_else(|e| Err(Error::internal(format!("creating task {id}: {e}")).into()));
        let mut slots = self.slots();
        match made {
            Ok(task) => {
                slots.insert(key, Slot::Ready(task.clone()));
                drop(slots);
                self.watch(&task);
                Ok(task)
            }
            Err(e) => {
                slots.remove(&key);
                Err(e)
            }
        }
    }

    async fn start_and_create(&self, namespace: &str, id: &str, opts: CreateOpts) -> Result<Arc<ShimTask>> {
        let runtime = self.config.runtime(&opts.runtime);
        let daemon_dir = self.daemon.parent().map(Path::to_path_buf);
        let shim = runtime.shim.clone();
        let binary = blocking(move || binary::resolve(&shim, daemon_dir.as_deref()))
            .await
            .map_err(|e| e.context("failed to resolve runtime path").context("failed to start shim"))?;
        tracing::info!(namespace, id, runtime = %opts.runtime, shim = %binary.display(), "starting shim");
        let options = runtime_options(opts.options.clone(), runtime.options.as_ref());
        let options_bytes = options.as_ref().map(|o| o.encode_to_vec()).unwrap_or_default();

        let (root, state, ns, tid, spec) =
            (self.root.clone(), self.state.clone(), namespace.to_string(), id.to_string(), opts.spec.clone());
        let bundle = blocking(move || Bundle::create(&root, &state, &ns, &tid, &spec))
            .await
            .map_err(|e| e.context("failed to start shim"))?;
        let log = follow_log(&bundle);
        let command = self.command(namespace, id, binary);

        let started = {
            let (c, b) = (command.clone(), bundle.clone());
            blocking(move || c.start(&b, &options_bytes)).await
        };
        let address = match started {
            Ok(a) => a,
            Err(e) => {
                abort(log);
                remove_bundle(&bundle).await;
                return Err(e.context("start failed").context("failed to start shim"));
            }
        };
        let path = bundle.file(bundle::SHIM_BINARY_PATH);
        let binary_text = command.binary.to_string_lossy().into_owned();
        let _ = blocking(move || std::fs::write(path, binary_text)).await;

        let connected = connect(&address, namespace).await;
        let (client, shim_pid) = match connected {
            Ok(c) => c,
            Err(e) => {
                // Without a connection the shim cannot be told to go: kill
                // it by the pid it recorded in the bundle, if it did.
                kill_recorded_shim(&bundle).await;
                abort(log);
                remove_bundle(&bundle).await;
                return Err(e.context(format!("connect to shim at {address}")).context("failed to start shim"));
            }
        };
        tracing::info!(namespace, id, shim = %command.binary.display(), shim_pid, %address, "shim started");

        let request = CreateTaskRequest {
            id: id.to_string(),
            bundle: bundle.path.to_string_lossy().into_owned(),
            rootfs: opts.rootfs.clone(),
            terminal: opts.terminal,
            stdin: opts.stdin.clone(),
            stdout: opts.stdout.clone(),
            stderr: opts.stderr.clone(),
            checkpoint: opts.checkpoint.clone(),
            parent_checkpoint: String::new(),
            options,
        };
        if let Err(e) = client.create(&request).await {
            let err = RuntimeError::from(e).context("failed to create shim task");
            let _ = client.delete(&DeleteRequest { id: id.to_string(), exec_id: String::new() }).await;
            if !self.shim_shared(shim_pid) {
                shut_down(&client, id, shim_pid).await;
            }
            abort(log);
            remove_bundle(&bundle).await;
            return Err(err);
        }
        Ok(Arc::new(ShimTask {
            bundle,
            client,
            runtime: opts.runtime,
            shim_pid,
            command,
            log,
            watcher: Mutex::new(None),
        }))
    }

    /// Cleans up when the task's shim hangs up while it is registered.
    fn watch(self: &Arc<Self>, task: &Arc<ShimTask>) {
        let me = self.clone();
        let weak = Arc::downgrade(task);
        let conn = task.client.connection().clone();
        let handle = tokio::spawn(async move {
            conn.closed().await;
            drop(conn);
            if let Some(task) = weak.upgrade() {
                me.shim_gone(&task).await;
            }
        })
        .abort_handle();
        *task.watcher.lock().expect("watcher") = Some(handle);
    }

    /// Takes `task` out of the table if it is still there (true when this
    /// call did).
    fn unregister(&self, task: &Arc<ShimTask>) -> bool {
        let key = (task.namespace().to_string(), task.id().to_string());
        let mut slots = self.slots();
        match slots.get(&key) {
            Some(Slot::Ready(t)) if Arc::ptr_eq(t, task) => {
                slots.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// A registered shim died: clean its task up as containerd's
    /// `cleanupAfterDeadShim` does.
    async fn shim_gone(&self, task: &Arc<ShimTask>) -> Option<Exit> {
        if !self.unregister(task) {
            return None;
        }
        tracing::warn!(namespace = task.namespace(), id = task.id(), "shim disconnected; cleaning up");
        task.stop_watching(false);
        Some(self.cleanup_dead(&task.command, &task.bundle).await)
    }

    /// `<shim> delete`, the exit and delete events, the bundle removed.
    async fn cleanup_dead(&self, command: &ShimCommand, bundle: &Bundle) -> Exit {
        let deleted = {
            let (c, b) = (command.clone(), bundle.clone());
            blocking(move || c.delete(&b)).await
        };
        let exit = match deleted {
            Ok(r) => Exit { pid: r.pid, status: r.exit_status, exited_at: r.exited_at },
            Err(e) => {
                tracing::warn!(namespace = %bundle.namespace, id = %bundle.id, "failed to clean up after the shim: {e}");
                Exit { pid: 0, status: 255, exited_at: Some(now()) }
            }
        };
        let exited_at = exit.exited_at.or_else(|| Some(now()));
        let (ns, id) = (bundle.namespace.as_str(), bundle.id.as_str());
        let ev =
            TaskExit { container_id: id.into(), id: id.into(), pid: exit.pid, exit_status: exit.status, exited_at };
        self.publish(ns, crated_events_api::topics::TASK_EXIT, &ev).await;
        let ev = TaskDelete {
            container_id: id.into(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at,
            id: String::new(),
        };
        self.publish(ns, crated_events_api::topics::TASK_DELETE, &ev).await;
        remove_bundle(bundle).await;
        exit
    }

    async fn publish<M: prost::Name>(&self, namespace: &str, topic: &str, event: &M) {
        if let Err(e) = crated_events_api::publish(&self.host, namespace, topic, event).await {
            tracing::warn!(namespace, topic, "cannot publish: {}", e.message);
        }
    }

    /// Deletes the task: the shim deletes it, shuts down, and the bundle
    /// goes. A running task stays (the shim refuses).
    pub async fn delete(self: &Arc<Self>, task: Arc<ShimTask>) -> Result<Exit> {
        let me = self.clone();
        tokio::spawn(async move { me.delete_now(task).await })
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("deleting task: {e}")).into()))
    }

    async fn delete_now(self: &Arc<Self>, task: Arc<ShimTask>) -> Result<Exit> {
        let id = task.id().to_string();
        let answer = task.client.delete(&DeleteRequest { id: id.clone(), exec_id: String::new() }).await;
        let response: DeleteResponse = match answer {
            Ok(r) => r,
            Err(e) if matches!(e.code, shim_protocol::Code::Unavailable) => {
                // The shim is gone: the same cleanup as when it dies.
                return match self.shim_gone(&task).await {
                    Some(exit) => Ok(exit),
                    None => Err(Error::not_found(format!("task {id}")).into()),
                };
            }
            Err(e) => return Err(RuntimeError::from(e).context("failed to delete task")),
        };
        if !self.unregister(&task) {
            // Someone else (a concurrent delete, the watcher) finished it.
            return Err(Error::not_found(format!("task {id}")).into());
        }
        task.stop_watching(true);
        if !self.shim_shared(task.shim_pid) {
            shut_down(&task.client, &id, task.shim_pid).await;
        }
        remove_bundle(&task.bundle).await;
        Ok(Exit { pid: response.pid, status: response.exit_status, exited_at: response.exited_at })
    }

    /// Whether a registered task is served by the shim of pid `shim_pid`:
    /// the Go shim serves all the containers of a pod in one process
    /// (grouped by the `io.kubernetes.cri.sandbox-id` annotation), and
    /// such a shim must stay, neither shut down nor killed, while it has
    /// tasks left (it exits by itself on the last one's Shutdown).
    fn shim_shared(&self, shim_pid: u32) -> bool {
        shim_pid > 1 && self.all().iter().any(|t| t.shim_pid == shim_pid)
    }

    /// Reconnects to the shims of the bundles an earlier daemon left, and
    /// cleans up after the ones that are gone.
    pub async fn load(self: &Arc<Self>) {
        let state = self.state.clone();
        for bundle in blocking(move || bundle::scan(&state)).await {
            let (ns, id) = (bundle.namespace.clone(), bundle.id.clone());
            let read = |name: &str| {
                let p = bundle.file(name);
                async move { blocking(move || std::fs::read_to_string(p)).await.ok() }
            };
            let Some(binary) = read(bundle::SHIM_BINARY_PATH).await.filter(|b| !b.trim().is_empty()) else {
                tracing::warn!(namespace = %ns, id = %id, "bundle without a shim binary path; removing it");
                remove_bundle(&bundle).await;
                continue;
            };
            let command = self.command(&ns, &id, PathBuf::from(binary.trim()));
            let address = read(bundle::ADDRESS).await.unwrap_or_default();
            let reconnected = if address.trim().is_empty() {
                Err(Error::not_found("no address file").into())
            } else {
                match tokio::time::timeout(LOAD_TIMEOUT, connect(address.trim(), &ns)).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::new(ErrorKind::DeadlineExceeded, "no answer").into()),
                }
            };
            match reconnected {
                Ok((client, shim_pid)) => {
                    tracing::info!(namespace = %ns, id = %id, shim_pid, shim = %command.binary.display(), "reconnected to shim");
                    let log = follow_log(&bundle);
                    let task = Arc::new(ShimTask {
                        runtime: command.binary.to_string_lossy().into_owned(),
                        bundle,
                        client,
                        shim_pid,
                        command,
                        log,
                        watcher: Mutex::new(None),
                    });
                    self.slots().insert((ns, id), Slot::Ready(task.clone()));
                    self.watch(&task);
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, id = %id, "shim is gone ({e}); cleaning up");
                    self.cleanup_dead(&command, &bundle).await;
                }
            }
        }
    }
}

/// The options a shim gets: the given ones (runc options filled from the
/// configured ones), else the configured ones.
fn runtime_options(
    given: Option<prost_types::Any>,
    configured: Option<&shim_protocol::runc::Options>,
) -> Option<prost_types::Any> {
    let runc_url = shim_protocol::runc::OPTIONS_TYPE_URL;
    let is_runc = |a: &prost_types::Any| a.type_url.rsplit('/').next() == Some(runc_url);
    match (given, configured) {
        (Some(a), Some(c)) if is_runc(&a) => match shim_protocol::runc::Options::decode(a.value.as_slice()) {
            Ok(o) => Some(prost_types::Any { type_url: a.type_url, value: config::merge(o, c).encode_to_vec() }),
            Err(_) => Some(a),
        },
        (Some(a), _) => Some(a),
        (None, Some(c)) => Some(prost_types::Any { type_url: runc_url.to_string(), value: c.encode_to_vec() }),
        (None, None) => None,
    }
}

/// Connects to a shim and asks for its pid.
async fn connect(address: &str, namespace: &str) -> Result<(TaskClient, u32)> {
    let conn = Client::connect(address).await.map_err(|e| RuntimeError::io(format!("dial {address}"), e))?;
    let client = TaskClient::new(conn, namespace, Some(CALL_TIMEOUT));
    let connected = tokio::time::timeout(LOAD_TIMEOUT, client.connect(&ConnectRequest { id: String::new() }))
        .await
        .map_err(|_| Error::new(ErrorKind::DeadlineExceeded, "shim did not answer Connect"))??;
    Ok((client, connected.shim_pid))
}

/// Tells the shim to go and waits for it to hang up; kills it by its pid
/// if it does not.
async fn shut_down(client: &TaskClient, id: &str, shim_pid: u32) {
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, client.shutdown(&ShutdownRequest { id: id.into(), now: false })).await;
    if tokio::time::timeout(SHUTDOWN_WAIT, client.connection().closed()).await.is_err() && shim_pid > 1 {
        tracing::warn!(id, shim_pid, "shim did not exit after Shutdown; killing it");
        if let Some(pid) = rustix::process::Pid::from_raw(shim_pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Kills the shim a bundle's `shim.pid` names (the Go shim writes it).
async fn kill_recorded_shim(bundle: &Bundle) {
    let p = bundle.file("shim.pid");
    let pid = blocking(move || std::fs::read_to_string(p)).await.ok().and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| *p > 1).and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

async fn remove_bundle(bundle: &Bundle) {
    let b = bundle.clone();
    if let Err(e) = blocking(move || b.delete()).await {
        tracing::error!(namespace = %bundle.namespace, id = %bundle.id, "failed to delete bundle: {e}");
    }
}

fn abort(h: Option<AbortHandle>) {
    if let Some(h) = h {
        h.abort();
    }
}

/// Copies the shim's log FIFO into the daemon's log, line by line. The FIFO
/// is opened read-write, as containerd does, so that it never reads an end
/// of file between two writers.
fn follow_log(bundle: &Bundle) -> Option<AbortHandle> {
    use tokio::io::AsyncBufReadExt;
    let path = bundle.file(bundle::LOG);
    let rx = match tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(&path) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot open the shim log: {e}");
            return None;
        }
    };
    let (ns, id) = (bundle.namespace.clone(), bundle.id.clone());
    Some(
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(rx).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "shim", namespace = %ns, id = %id, "{line}");
            }
        })
        .abort_handle(),
    )
}

pub fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// A status for a task that does not run, in containerd's words.
pub fn task_not_found(id: &str) -> Status {
    Status::not_found(format!("task {id} not found"))
}
