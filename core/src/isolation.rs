//! Isolated plugins: a plugin named in `isolated_plugins` runs in a plugin
//! host process of its own (`crated plugin-host`, see [`crate::plugin_host`])
//! instead of in the daemon, so that a crash (a segfault, an abort, an
//! out-of-memory kill) costs only its calls in flight.
//!
//! The same `.so` and the same registration serve in both places; only the
//! transport changes, which the bytes-by-method-path ABI makes cheap:
//! - the daemon serves the plugin's dependencies back to the host on a
//!   private socket (the *dependency socket*), routing each call exactly as
//!   the in-process [`DependencyHost`] would, the callee named by the
//!   [`TARGET_HEADER`] header where the plugin named one;
//! - the host serves the plugin's services on a second private socket, and
//!   the daemon reaches it through the same [`Proxy`] client as
//!   `[proxy_plugins]`, so a host that is gone fails calls with
//!   `Unavailable`;
//! - the host is handed a [`HostSpec`] (what `init` would receive in
//!   process) on its stdin and answers with one [`HostReply`] line on its
//!   stdout. Its stdin then stays open: when the daemon goes, even by
//!   SIGKILL, the host sees end-of-file and exits.
//!
//! A host that exits is restarted with an exponential backoff (0.1 s,
//! doubling, at most 30 s, back to 0.1 s once a host has stayed up for 30
//! s); meanwhile introspection lists the plugin as failed with the exit
//! reason, and its `io.crated.plugin.host.*` exports give the host's pid and
//! the number of restarts.
//!
//! What isolation does not cover: the daemon still opens the library to read
//! its registrations (dlopen runs the library's initialisers in the
//! daemon), and the routes of the plugin are those of its first start.

use std::{
    convert::Infallible,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use abi_stable::std_types::RVec;
use crated_plugin_api::{
    abi::{ByteStream, CallHead, CallKind, PluginRef},
    duration::format_go_duration,
    grpc::{self, Limits},
    Code, Status,
};
use futures::{future::BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::Notify,
    task::JoinHandle,
};

use crate::{config::IsolationLimits, plugins::PluginState, proxy::Proxy, router::DependencyHost};

/// The header that names a call's callee (`CallHead::target`) on the
/// dependency socket.
pub const TARGET_HEADER: &str = "crated-call-target";
/// Export: the pid of the plugin's host process.
pub const EXPORT_HOST_PID: &str = "io.crated.plugin.host.pid";
/// Export: how many times the host was restarted.
pub const EXPORT_HOST_RESTARTS: &str = "io.crated.plugin.host.restarts";

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A host that stayed up this long restarts at the initial backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// A plugin as its dependents see it (the ABI's `PluginRef`, serialisable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DependencySpec {
    pub plugin_type: String,
    pub id: String,
    pub services: Vec<String>,
    pub exports: Vec<(String, String)>,
}

impl From<&PluginRef> for DependencySpec {
    fn from(p: &PluginRef) -> Self {
        DependencySpec {
            plugin_type: p.plugin_type.to_string(),
            id: p.id.to_string(),
            services: p.services.iter().map(|s| s.to_string()).collect(),
            exports: p.exports.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect(),
        }
    }
}

impl From<&DependencySpec> for PluginRef {
    fn from(d: &DependencySpec) -> Self {
        PluginRef {
            plugin_type: d.plugin_type.as_str().into(),
            id: d.id.as_str().into(),
            services: d.services.iter().map(|s| s.as_str().into()).collect(),
            exports: d.exports.iter().map(|(k, v)| (k.as_str().into(), v.as_str().into()).into()).collect(),
        }
    }
}

/// What the daemon hands a plugin host: one JSON line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostSpec {
    pub library: PathBuf,
    pub plugin_type: String,
    pub id: String,
    pub config_toml: String,
    pub root: String,
    pub state: String,
    pub grpc_address: String,
    pub ttrpc_address: String,
    pub log_level: String,
    pub dependencies: Vec<DependencySpec>,
    /// Where the daemon serves the dependencies.
    pub dependency_socket: PathBuf,
    /// Where the host serves the plugin.
    pub listen: PathBuf,
    pub init_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
}

impl HostSpec {
    pub fn key(&self) -> String {
        crated_plugin_api::types::key(&self.plugin_type, &self.id)
    }
}

/// A streaming method's kind, as the reply carries it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum StreamKind {
    Client,
    Server,
    Bidi,
}

impl From<CallKind> for StreamKind {
    fn from(k: CallKind) -> Self {
        match k {
            CallKind::ClientStreaming => StreamKind::Client,
            CallKind::ServerStreaming => StreamKind::Server,
            CallKind::BidiStreaming | CallKind::Unary => StreamKind::Bidi,
        }
    }
}

impl From<StreamKind> for CallKind {
    fn from(k: StreamKind) -> Self {
        match k {
            StreamKind::Client => CallKind::ClientStreaming,
            StreamKind::Server => CallKind::ServerStreaming,
            StreamKind::Bidi => CallKind::BidiStreaming,
        }
    }
}

/// What the plugin serves once its init succeeded in the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    pub services: Vec<String>,
    pub internal: Vec<String>,
    pub exports: Vec<(String, String)>,
    pub streaming: Vec<(String, StreamKind)>,
}

/// The host's one answer, a JSON line on its stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HostReply {
    Ready(Ready),
    /// The plugin declined to load (containerd's skip).
    Skipped(String),
    Failed(String),
}

/// The live state of a plugin host, read by introspection.
#[derive(Debug, Clone)]
pub struct HostStatus {
    pub pid: u32,
    pub restarts: u32,
    pub state: PluginState,
}

/// Shared between the supervisor and introspection.
pub type HostStatusCell = Arc<Mutex<HostStatus>>;

/// An isolated plugin, as the daemon's router sees it.
pub struct IsolatedPlugin {
    key: String,
    spec: HostSpec,
    proxy: Proxy,
    status: HostStatusCell,
    cgroup: Option<Cgroup>,
    /// The running host's stdin: dropping it tells the host to stop.
    stdin: Mutex<Option<ChildStdin>>,
    stop: Notify,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    dependency_server: Mutex<Option<JoinHandle<()>>>,
}

/// Why an isolated plugin did not start.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("cannot prepare the plugin host's sockets under {}: {source}", dir.display())]
    Sockets { dir: PathBuf, source: std::io::Error },
    #[error("cannot start the plugin host: {0}")]
    Spawn(std::io::Error),
    #[error("{0}")]
    Cgroup(String),
    #[error("cannot talk to the plugin host: {0}")]
    Pipe(std::io::Error),
    #[error("init did not finish within {}", format_go_duration(*.0))]
    InitTimeout(Duration),
    #[error("the plugin host exited before init finished: {0}")]
    Exited(String),
    #[error("the plugin host's answer is not valid: {0}")]
    Reply(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Skipped(String),
}

impl IsolationError {
    /// The state introspection shows for a plugin that failed this way.
    pub fn into_state(self) -> PluginState {
        match self {
            IsolationError::Skipped(m) => PluginState::Skipped(format!("{m}: skip plugin")),
            e => PluginState::Failed(e.to_string()),
        }
    }
}

/// Where the sockets of isolated plugin number `n` live: short paths,
/// since a unix socket path is limited to 107 bytes.
fn socket_paths(state: &Path, n: usize) -> (PathBuf, PathBuf) {
    let dir = state.join("isolated");
    (dir.join(format!("{n}.deps")), dir.join(format!("{n}.sock")))
}

impl IsolatedPlugin {
    /// Starts plugin number `n` in a host of its own: serves its
    /// dependencies, launches the host and waits for its init.
    pub async fn start(
        n: usize,
        daemon_state: &Path,
        mut spec: HostSpec,
        dependencies: DependencyHost,
        limits: &IsolationLimits,
    ) -> Result<(Arc<IsolatedPlugin>, Ready), IsolationError> {
        let key = spec.key();
        let (deps_path, listen) = socket_paths(daemon_state, n);
        let dir = deps_path.parent().unwrap_or(daemon_state).to_path_buf();
        let sockets = |source| IsolationError::Sockets { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(sockets)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(sockets)?;
        grpc::clear_stale(&deps_path).map_err(|e| sockets(std::io::Error::other(e.to_string())))?;
        let listener = tokio::net::UnixListener::bind(&deps_path).map_err(sockets)?;
        spec.dependency_socket = deps_path;
        spec.listen = listen.clone();

        let limits_of_calls = Limits { max_recv: spec.max_recv_message_size, max_send: spec.max_send_message_size };
        let service = DependencyService { host: Arc::new(dependencies), limits: limits_of_calls };
        let dependency_server = tokio::spawn(grpc::serve_connections(listener, service, std::future::pending()));

        let cgroup = Cgroup::create(&key, limits).map_err(IsolationError::Cgroup);
        let cgroup = match cgroup {
            Ok(c) => c,
            Err(e) => {
                dependency_server.abort();
                return Err(e);
            }
        };
        let plugin = Arc::new(IsolatedPlugin {
            proxy: Proxy::labelled("isolated plugin", &key, &listen.display().to_string()),
            key,
            spec,
            status: Arc::new(Mutex::new(HostStatus { pid: 0, restarts: 0, state: PluginState::Running })),
            cgroup,
            stdin: Mutex::new(None),
            stop: Notify::new(),
            supervisor: Mutex::new(None),
            dependency_server: Mutex::new(Some(dependency_server)),
        });
        match plugin.launch().await {
            Ok((child, ready)) => {
                let supervisor = tokio::spawn(plugin.clone().supervise(child, ready.clone()));
                *lock(&plugin.supervisor) = Some(supervisor);
                Ok((plugin, ready))
            }
            Err(e) => {
                plugin.release().await;
                Err(e)
            }
        }
    }

    /// The status introspection shows.
    pub fn status(&self) -> HostStatusCell {
        self.status.clone()
    }

    /// Starts a host and waits for its answer.
    async fn launch(&self) -> Result<(Child, Ready), IsolationError> {
        let exe = std::env::current_exe().map_err(IsolationError::Spawn)?;
        let mut child = Command::new(exe)
            .arg("plugin-host")
            .env("CRATED_PLUGIN_HOST_LOG", &self.spec.log_level)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(IsolationError::Spawn)?;
        let pid = child.id().unwrap_or(0);
        // Into its cgroup before it reads its spec, so before the library
        // is loaded.
        if let Some(cg) = &self.cgroup {
            cg.add(pid).map_err(IsolationError::Cgroup)?;
        }
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(IsolationError::Pipe(std::io::Error::other("no pipes")));
        };
        let mut line = serde_json::to_vec(&self.spec).map_err(|e| IsolationError::Reply(e.to_string()))?;
        line.push(b'\n');
        stdin.write_all(&line).await.map_err(IsolationError::Pipe)?;
        let mut lines = BufReader::new(stdout).lines();
        let reply = match tokio::time::timeout(self.spec.init_timeout, lines.next_line()).await {
            Err(_) => return Err(IsolationError::InitTimeout(self.spec.init_timeout)),
            Ok(Err(e)) => return Err(IsolationError::Pipe(e)),
            Ok(Ok(None)) => return Err(IsolationError::Exited(self.exit_reason(child.wait().await))),
            Ok(Ok(Some(line))) => {
                serde_json::from_str::<HostReply>(&line).map_err(|e| IsolationError::Reply(format!("{e}: {line:?}")))?
            }
        };
        let ready = match reply {
            HostReply::Ready(r) => r,
            HostReply::Skipped(m) => return Err(IsolationError::Skipped(m)),
            HostReply::Failed(m) => return Err(IsolationError::Failed(m)),
        };
        // Whatever the plugin prints on stdout from now on goes to the log.
        let key = self.key.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "plugin", plugin = %key, "{line}");
            }
        });
        *lock(&self.stdin) = Some(stdin);
        let mut status = lock(&self.status);
        status.pid = pid;
        status.state = PluginState::Running;
        tracing::info!(plugin = %self.key, pid, "plugin host started");
        Ok((child, ready))
    }

    /// Waits on the host; restarts it when it exits, until stopped.
    async fn supervise(self: Arc<Self>, mut child: Child, first: Ready) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let started = Instant::now();
            let mut reason = tokio::select! {
                status = child.wait() => self.exit_reason(status),
                _ = self.stop.notified() => return self.stop_child(child).await,
            };
            lock(&self.stdin).take();
            if started.elapsed() >= STABLE_AFTER {
                backoff = INITIAL_BACKOFF;
            }
            loop {
                tracing::error!(plugin = %self.key, "plugin host stopped ({reason}); restarting in {}", format_go_duration(backoff));
                lock(&self.status).state = PluginState::Failed(format!("plugin host restarting after: {reason}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.stop.notified() => return self.release().await,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                match self.launch().await {
                    Ok((next, ready)) => {
                        if ready != first {
                            tracing::warn!(plugin = %self.key, "the restarted plugin serves other services than at its first start; calls are still routed as at first");
                        }
                        lock(&self.status).restarts += 1;
                        child = next;
                        break;
                    }
                    Err(e) => reason = e.to_string(),
                }
            }
        }
    }

    /// Why a host ended, in words.
    fn exit_reason(&self, status: std::io::Result<std::process::ExitStatus>) -> String {
        let reason = match status {
            Err(e) => format!("cannot wait for it: {e}"),
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
                _ => s.to_string(),
            },
        };
        match self.cgroup.as_ref().filter(|c| c.oom_killed()) {
            Some(_) => format!("{reason}, out of memory (memory_limit reached)"),
            None => reason,
        }
    }

    /// Stops the host: closes its stdin (it runs the plugin's shutdown,
    /// bounded by the shutdown timeout), then kills it if it is still there.
    async fn stop_child(&self, mut child: Child) {
        lock(&self.stdin).take();
        let grace = self.spec.shutdown_timeout + Duration::from_secs(1);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(plugin = %self.key, "plugin host did not stop within {}; killing it", format_go_duration(grace));
            let _ = child.kill().await;
        }
        self.release().await;
    }

    /// Frees what the plugin holds in the daemon: its sockets, cgroup and
    /// dependency server.
    async fn release(&self) {
        if let Some(server) = lock(&self.dependency_server).take() {
            server.abort();
        }
        let _ = std::fs::remove_file(&self.spec.dependency_socket);
        let _ = std::fs::remove_file(&self.spec.listen);
        if let Some(cg) = &self.cgroup {
            cg.remove().await;
        }
    }

    /// Stops the plugin for good (daemon shutdown).
    pub async fn stop(&self) {
        self.stop.notify_one();
        let supervisor = lock(&self.supervisor).take();
        if let Some(s) = supervisor {
            let _ = s.await;
        }
    }

    /// A call's error, with the host's state when the host is not there.
    fn explain(&self, s: Status) -> Status {
        if s.code != Code::Unavailable {
            return s;
        }
        match &lock(&self.status).state {
            PluginState::Failed(why) => Status::unavailable(format!("{}: {why}", s.message)),
            _ => s,
        }
    }

    pub async fn unary(&self, head: CallHead, body: RVec<u8>) -> Result<RVec<u8>, Status> {
        self.proxy.unary(head, body).await.map_err(|s| self.explain(s))
    }

    pub async fn streaming(&self, head: CallHead, input: ByteStream) -> Result<ByteStream, Status> {
        self.proxy.streaming(head, input).await.map_err(|s| self.explain(s))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        31 => "SIGSYS",
        _ => "another signal",
    }
}

/// The daemon's side of the dependency socket.
#[derive(Clone)]
struct DependencyService {
    host: Arc<DependencyHost>,
    limits: Limits,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for DependencyService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let target = req.headers().get(TARGET_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let probe = CallHead { method: req.uri().path().into(), target: target.into(), headers: RVec::new() };
        let route = match self.host.resolve(&probe) {
            Ok(route) => route,
            Err(s) => return futures::future::ready(Ok(grpc::to_tonic(s.into()).into_http())).boxed(),
        };
        let kind = route.streaming.get(req.uri().path()).copied().unwrap_or(CallKind::Unary);
        grpc::dispatch(route, kind, req, self.limits).map(Ok).boxed()
    }
}

/// A plugin host's cgroup, where limits are set: cgroup v2 when the
/// unified hierarchy is mounted at `/sys/fs/cgroup`, else v1's memory and
/// cpu controllers. Named `crated-plugin-<daemon pid>-<plugin>` at the top
/// of each hierarchy, and removed when the plugin stops.
struct Cgroup {
    /// The directories, one per hierarchy (v2: one).
    dirs: Vec<PathBuf>,
    /// Where the OOM kill counter is (v2 `memory.events`, v1 `memory.oom_control`).
    oom_file: Option<PathBuf>,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Cgroup {
    fn create(key: &str, limits: &IsolationLimits) -> Result<Option<Cgroup>, String> {
        let memory = limits.memory_bytes()?;
        if memory.is_none() && limits.cpus == 0.0 {
            return Ok(None);
        }
        let name = format!("crated-plugin-{}-{key}", std::process::id());
        let root = Path::new(CGROUP_ROOT);
        let write = |file: PathBuf, value: String| {
            std::fs::write(&file, &value).map_err(|e| format!("cannot write {value} to {}: {e}", file.display()))
        };
        let mkdir = |dir: &Path| {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))
        };
        // cpu.max / cfs quota over a 100 ms period.
        let quota = (limits.cpus > 0.0).then(|| ((limits.cpus * 100_000.0) as u64).max(1000));
        let mut cg = Cgroup { dirs: vec![], oom_file: None };
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(&name);
            mkdir(&dir)?;
            cg.dirs.push(dir.clone());
            if let Some(m) = memory {
                write(dir.join("memory.max"), m.to_string())?;
                write(dir.join("memory.swap.max"), "0".into()).ok();
                cg.oom_file = Some(dir.join("memory.events"));
            }
            if let Some(q) = quota {
                write(dir.join("cpu.max"), format!("{q} 100000"))?;
            }
        } else {
            if let Some(m) = memory {
                let dir = root.join("memory").join(&name);
                mkdir(&dir)?;
                cg.dirs.push(dir.clone());
                write(dir.join("memory.limit_in_bytes"), m.to_string())?;
                cg.oom_file = Some(dir.join("memory.oom_control"));
            }
            if let Some(q) = quota {
                let dir = root.join("cpu").join(&name);
                mkdir(&dir)?;
                cg.dirs.push(dir.clone());
                write(dir.join("cpu.cfs_period_us"), "100000".into())?;
                write(dir.join("cpu.cfs_quota_us"), q.to_string())?;
            }
        }
        Ok(Some(cg))
    }

    fn add(&self, pid: u32) -> Result<(), String> {
        for dir in &self.dirs {
            let file = dir.join("cgroup.procs");
            std::fs::write(&file, pid.to_string())
                .map_err(|e| format!("cannot move the plugin host into {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer has killed in this cgroup.
    fn oom_killed(&self) -> bool {
        let Some(text) = self.oom_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) else { return false };
        text.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0"))
    }

    async fn remove(&self) {
        for dir in &self.dirs {
            // Retried briefly: the last process leaves asynchronously.
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }
}
