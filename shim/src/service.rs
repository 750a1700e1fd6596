//! The task service: containers over runc, as containerd 1.6's runc shim
//! (`runtime/v2/runc/task/service.go`, `runtime/v2/runc/container.go`,
//! `pkg/process`) keeps them.
//!
//! One shim holds every container of its group. Each container has an init
//! process and exec processes, each a small state machine (created,
//! running, paused, stopped, deleted) whose refusals read as the Go shim's.
//!
//! Ordering of events: `Create` and `Start` hold the lifecycle lock across
//! runc and the event they publish, and the exit handler takes it before it
//! looks a reaped pid up. So an exit is matched only once its process's pid
//! is recorded (a process that exits before runc has even returned its pid,
//! containerd's "early exit", waits in the exit channel meanwhile), and its
//! `/tasks/exit` is queued after that process's `/tasks/start` or
//! `/tasks/exec-started`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;
use shim_protocol::runc::{CheckpointOptions, Options, ProcessDetails, OPTIONS_TYPE_URL, PROCESS_DETAILS_TYPE_URL};
use shim_protocol::task::*;
use shim_protocol::ttrpc::RequestContext;
use shim_protocol::types::{self, topics, ProcessInfo, ProcessStatus};
use shim_protocol::{Code, Status};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cgroup::Cgroup;
use crate::events::{timestamp, Publisher};
use crate::mount::{self, Mount};
use crate::reaper::{Exit, Reaper};
use crate::runc::{read_pid_file, Runc, RuncError, RuncStdio};
use crate::stdio::{Console, ConsoleSocket, Pipes, StdioPaths};

/// How long a delete waits for a process's output to be copied out.
const IO_DRAIN: Duration = Duration::from_secs(2);

fn unknown(msg: impl Into<String>) -> Status {
    Status::new(Code::Unknown, msg)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
    Stopped,
    Deleted,
}

struct ProcState {
    state: State,
    pausing: bool,
    pid: i32,
    exit_status: u32,
    exited_at: Option<SystemTime>,
    /// The shim's write handle on the stdin FIFO; `CloseIO` drops it.
    stdin: Option<OwnedFd>,
    console: Option<Arc<Console>>,
    outputs: Vec<JoinHandle<()>>,
}

/// An init or exec process.
pub struct Process {
    /// The container id (init) or the exec id.
    id: String,
    exec: Option<ExecSpec>,
    stdio: StdioPaths,
    st: Mutex<ProcState>,
    /// Turns true once the process has exited (or will never run).
    done: watch::Sender<bool>,
}

struct ExecSpec {
    /// The OCI process (JSON), as the client sent it.
    spec: Vec<u8>,
}

impl Process {
    fn new(id: &str, exec: Option<ExecSpec>, stdio: StdioPaths) -> Process {
        Process {
            id: id.to_string(),
            exec,
            stdio,
            st: Mutex::new(ProcState {
                state: State::Created,
                pausing: false,
                pid: 0,
                exit_status: 0,
                exited_at: None,
                stdin: None,
                console: None,
                outputs: Vec::new(),
            }),
            done: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.st.lock().expect("process state")
    }

    fn pid(&self) -> i32 {
        self.lock().pid
    }

    fn set_exited(&self, status: u32, at: SystemTime) {
        let mut st = self.lock();
        st.state = State::Stopped;
        st.pausing = false;
        st.exit_status = status;
        st.exited_at = Some(at);
        if let Some(c) = &st.console {
            c.shutdown();
        }
        drop(st);
        self.done.send_replace(true);
    }

    /// Waits (at most [`IO_DRAIN`]) for the output copies to finish.
    async fn drain_output(&self) {
        let outputs = std::mem::take(&mut self.lock().outputs);
        let console = self.lock().console.clone();
        let wait = async {
            for o in outputs {
                let _ = o.await;
            }
        };
        let _ = tokio::time::timeout(IO_DRAIN, wait).await;
        if let Some(c) = console {
            c.shutdown();
        }
    }
}

/// One container of the shim.
pub struct Container {
    id: String,
    bundle: PathBuf,
    runc: Runc,
    rootfs: Option<PathBuf>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    cgroup: Mutex<Option<Cgroup>>,
    no_pivot_root: bool,
    no_new_keyring: bool,
    criu_work_path: String,
    /// The checkpoint image (and its parent) a task created from a
    /// checkpoint is restored from at its first Start, as the Go shim's
    /// "created checkpoint" state does; taken by that Start.
    restore_from: Mutex<Option<(String, String)>>,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<Arc<Process>, Status> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .expect("execs")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("process does not exist {exec_id}: not found")))
    }

    fn all(&self) -> Vec<Arc<Process>> {
        let mut v: Vec<_> = self.execs.lock().expect("execs").values().cloned().collect();
        v.push(self.init.clone());
        v
    }

    fn init_state(&self) -> State {
        self.init.lock().state
    }
}

/// The shim's task service.
pub struct Shim {
    namespace: String,
    reaper: Reaper,
    events: Publisher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    lifecycle: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

impl Shim {
    pub fn new(namespace: &str, reaper: Reaper, events: Publisher, shutdown: watch::Sender<bool>) -> Arc<Shim> {
        Arc::new(Shim {
            namespace: namespace.to_string(),
            reaper,
            events,
            containers: Mutex::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            shutdown,
        })
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, Status> {
        self.containers
            .lock()
            .expect("containers")
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found("container not created: not found"))
    }

    /// Matches reaped pids to processes, forever.
    pub async fn handle_exits(self: Arc<Self>, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(exit) = exits.recv().await {
            let _order = self.lifecycle.lock().await;
            let containers: Vec<_> = self.containers.lock().expect("containers").values().cloned().collect();
            let found = containers.iter().find_map(|c| {
                c.all()
                    .into_iter()
                    .find(|p| {
                        let st = p.lock();
                        st.pid == exit.pid && !matches!(st.state, State::Stopped | State::Deleted)
                    })
                    .map(|p| (c.clone(), p))
            });
            let Some((c, p)) = found else { continue };
            if p.exec.is_none() && should_kill_all_on_exit(&c.bundle) {
                let sig = libc::SIGKILL.to_string();
                if let Err(e) =
                    c.runc.run(&self.reaper, &["kill", "--all", &c.id, &sig], RuncStdio::Capture(None)).await
                {
                    crate::log!("failed to kill init's children of {}: {e}", c.id);
                }
            }
            p.set_exited(exit.status, exit.at);
            self.events.publish(
                topics::TASK_EXIT,
                &types::TaskExit {
                    container_id: c.id.clone(),
                    id: p.id.clone(),
                    pid: exit.pid as u32,
                    exit_status: exit.status,
                    exited_at: Some(timestamp(exit.at)),
                },
            );
        }
    }

    /// Runs runc to start a process (create or exec) with its stdio, then
    /// starts the copies. Returns the process's pid.
    async fn launch(
        &self,
        c: &Container,
        p: &Process,
        mut args: Vec<String>,
        pid_file: &Path,
        what: &str,
    ) -> Result<i32, Status> {
        let paths = &p.stdio;
        let mut socket = None;
        let mut pipes = None;
        let stdio = if paths.terminal {
            let s = ConsoleSocket::new()
                .map_err(|e| unknown(format!("failed to create OCI runtime console socket: {e}")))?;
            args.insert(args.len() - 1, "--console-socket".into());
            args.insert(args.len() - 1, s.path().display().to_string());
            socket = Some(s);
            RuncStdio::Capture(None)
        } else {
            let mut pp = Pipes::new(paths).map_err(|e| unknown(format!("failed to create init process I/O: {e}")))?;
            let stdio = RuncStdio::Process {
                stdin: pp.runc_stdin.take(),
                stdout: pp.runc_stdout.take(),
                stderr: pp.runc_stderr.take(),
            };
            pipes = Some(pp);
            stdio
        };
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        if let Err(e) = c.runc.run(&self.reaper, &argv, stdio).await {
            return Err(unknown(c.runc.runtime_error(&e, what)));
        }
        if let Some(s) = socket {
            let master = s.receive_master().map_err(|e| unknown(e.to_string()))?;
            let (console, holder, output) =
                Console::start(master, paths).map_err(|e| unknown(format!("failed to start console copy: {e}")))?;
            let mut st = p.lock();
            st.stdin = holder;
            st.outputs = vec![output];
            st.console = Some(Arc::new(console));
        } else if let Some(pp) = pipes {
            let copies = pp.copy(paths).map_err(|e| unknown(format!("failed to start io pipe copy: {e}")))?;
            let mut st = p.lock();
            st.stdin = copies.stdin_holder;
            st.outputs = copies.outputs;
        }
        read_pid_file(pid_file).map_err(|e| unknown(format!("failed to retrieve OCI runtime container pid: {e}")))
    }

    async fn create_container(&self, req: CreateTaskRequest) -> Result<Arc<Container>, Status> {
        let opts = match &req.options {
            Some(any) if any.type_url.ends_with(OPTIONS_TYPE_URL) => Options::decode(any.value.as_slice())
                .map_err(|e| Status::invalid_argument(format!("runc options: {e}")))?,
            _ => Options::default(),
        };
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let dir = bundle.join("rootfs");
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(unknown(format!("mkdir {}: {e}", dir.display()))),
            }
            Some(dir)
        };
        write_options(&bundle, &opts).map_err(|e| unknown(format!("writing options: {e}")))?;
        std::fs::write(bundle.join("runtime"), &opts.binary_name)
            .map_err(|e| unknown(format!("writing runtime: {e}")))?;
        if let Some(dir) = &rootfs {
            let mounts: Vec<Mount> = req
                .rootfs
                .iter()
                .map(|m| Mount { kind: m.r#type.clone(), source: m.source.clone(), options: m.options.clone() })
                .collect();
            mount::mount_all(&mounts, dir).map_err(|e| unknown(e.to_string()))?;
        }
        let runc =
            Runc::new(&opts.binary_name, &opts.root, &self.namespace, &bundle, opts.systemd_cgroup, &opts.criu_path);
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let container = Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            runc,
            rootfs: rootfs.clone(),
            init: Arc::new(Process::new(&req.id, None, stdio)),
            execs: Mutex::default(),
            cgroup: Mutex::new(None),
            no_pivot_root: opts.no_pivot_root,
            no_new_keyring: opts.no_new_keyring,
            criu_work_path: if opts.criu_work_path.is_empty() {
                bundle.join("work").display().to_string()
            } else {
                opts.criu_work_path.clone()
            },
            restore_from: Mutex::new(None),
        };
        if !req.checkpoint.is_empty() {
            // Nothing runs yet: runc restores the image at Start.
            *container.restore_from.lock().expect("restore_from") =
                Some((req.checkpoint.clone(), req.parent_checkpoint.clone()));
            return Ok(Arc::new(container));
        }
        let pid_file = bundle.join("init.pid");
        let mut args: Vec<String> = vec![
            "create".into(),
            "--bundle".into(),
            req.bundle.clone(),
            "--pid-file".into(),
            pid_file.display().to_string(),
        ];
        if container.no_pivot_root {
            args.push("--no-pivot".into());
        }
        if container.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        args.push(req.id.clone());
        match self.launch(&container, &container.init, args, &pid_file, "OCI runtime create failed").await {
            Ok(pid) => {
                container.init.lock().pid = pid;
                *container.cgroup.lock().expect("cgroup") = Cgroup::of_pid(pid).ok();
                Ok(Arc::new(container))
            }
            Err(e) => {
                if let Some(dir) = &rootfs {
                    let _ = mount::unmount_all(dir);
                }
                Err(e)
            }
        }
    }

    fn watch_oom(&self, c: &Container) {
        let Some(dir) = c.cgroup.lock().expect("cgroup").as_ref().and_then(|cg| cg.memory_dir().map(Path::to_path_buf))
        else {
            return;
        };
        let efd = match crate::cgroup::oom_eventfd(&dir) {
            Ok(fd) => fd,
            Err(e) => {
                crate::log!("add cg to OOM monitor: {e}");
                return;
            }
        };
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
        // and the same for the AsyncFd's whole life.
        let Ok(efd) = (unsafe { AsyncFd::register(efd) }) else { return };
        let events = self.events.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = efd.readable().await else { return };
                let mut buf = [0u8; 8];
                match guard.try_io(|f| rustix::io::read(f.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                    Ok(Ok(8)) => {}
                    Ok(_) => return,
                    Err(_would_block) => continue,
                }
                // The eventfd also fires when the cgroup goes away.
                if !dir.exists() {
                    return;
                }
                events.publish(topics::TASK_OOM, &types::TaskOom { container_id: id.clone() });
            }
        });
    }

    /// `runc restore` of a task created from a checkpoint: the container
    /// comes back running from `image` (its stdio wired as at create).
    async fn restore(&self, c: &Container, image: &str, parent: &str) -> Result<i32, Status> {
        let pid_file = c.bundle.join("init.pid");
        let mut args: Vec<String> = vec![
            "restore".into(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.display().to_string(),
            "--image-path".into(),
            image.to_string(),
            "--work-path".into(),
            c.criu_work_path.clone(),
        ];
        if !parent.is_empty() {
            args.extend(["--parent-path".into(), parent.to_string()]);
        }
        if c.no_pivot_root {
            args.push("--no-pivot".into());
        }
        args.extend(["--bundle".into(), c.bundle.display().to_string(), c.id.clone()]);
        self.launch(c, &c.init, args, &pid_file, "OCI runtime restore failed").await
    }

    async fn start_exec(&self, c: &Container, p: &Process, exec_id: &str) -> Result<i32, Status> {
        let spec = &p.exec.as_ref().expect("an exec process").spec;
        let mut value: serde_json::Value = serde_json::from_slice(spec).map_err(|e| unknown(e.to_string()))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("terminal".into(), serde_json::Value::Bool(p.stdio.terminal));
        }
        let process_file = c.bundle.join(format!(".{exec_id}.process.json"));
        std::fs::write(&process_file, serde_json::to_vec(&value).unwrap_or_default())
            .map_err(|e| unknown(e.to_string()))?;
        let pid_file = c.bundle.join(format!("{exec_id}.pid"));
        let args: Vec<String> = vec![
            "exec".into(),
            "--process".into(),
            process_file.display().to_string(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.display().to_string(),
            c.id.clone(),
        ];
        let res = self.launch(c, p, args, &pid_file, "OCI runtime exec failed").await;
        let _ = std::fs::remove_file(&process_file);
        if res.is_err() {
            // A waiter must not wait for a process that never ran.
            p.done.send_replace(true);
        }
        res
    }
}

/// containerd's `ShouldKillAllOnExit`: unless the container has its own pid
/// namespace, its init's death does not take the others with it.
fn should_kill_all_on_exit(bundle: &Path) -> bool {
    let Ok(data) = std::fs::read(bundle.join("config.json")) else { return true };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&data) else { return true };
    let own_pid_ns = spec["linux"]["namespaces"].as_array().is_some_and(|nss| {
        nss.iter().any(|ns| ns["type"] == "pid" && ns.get("path").and_then(|p| p.as_str()).unwrap_or("").is_empty())
    });
    !own_pid_ns
}

/// `options.json` in the bundle, as Go's `json.Marshal` of the options
/// writes it (the `delete` action reads it back).
fn write_options(bundle: &Path, o: &Options) -> std::io::Result<()> {
    let mut m = serde_json::Map::new();
    let mut b = |k: &str, v: bool| {
        if v {
            m.insert(k.into(), true.into());
        }
    };
    b("no_pivot_root", o.no_pivot_root);
    b("no_new_keyring", o.no_new_keyring);
    b("systemd_cgroup", o.systemd_cgroup);
    for (k, v) in [
        ("shim_cgroup", &o.shim_cgroup),
        ("binary_name", &o.binary_name),
        ("root", &o.root),
        ("criu_path", &o.criu_path),
        ("criu_image_path", &o.criu_image_path),
        ("criu_work_path", &o.criu_work_path),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), v.clone().into());
        }
    }
    for (k, v) in [("io_uid", o.io_uid), ("io_gid", o.io_gid)] {
        if v != 0 {
            m.insert(k.into(), v.into());
        }
    }
    std::fs::write(bundle.join("options.json"), serde_json::to_vec(&serde_json::Value::Object(m))?)
}

/// The runc options `delete` needs back from a bundle.
pub fn read_options(bundle: &Path) -> (String, String) {
    let runtime = std::fs::read_to_string(bundle.join("runtime")).unwrap_or_default();
    let root = std::fs::read(bundle.join("options.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| v["root"].as_str().map(str::to_string))
        .unwrap_or_default();
    (runtime, root)
}

/// Go's `checkKillError`, on runc's words.
fn kill_error(err: &str) -> Status {
    let lower = err.to_lowercase();
    if err.contains("os: process already finished")
        || err.contains("container not running")
        || lower.contains("no such process")
    {
        Status::not_found("process already finished: not found")
    } else if err.contains("does not exist") {
        Status::not_found("no such container: not found")
    } else {
        unknown(format!("unknown error after kill: {err}"))
    }
}

fn status_of(state: State, pausing: bool) -> ProcessStatus {
    if pausing {
        return ProcessStatus::Pausing;
    }
    match state {
        State::Created => ProcessStatus::Created,
        State::Running => ProcessStatus::Running,
        State::Paused => ProcessStatus::Paused,
        State::Stopped => ProcessStatus::Stopped,
        State::Deleted => ProcessStatus::Unknown,
    }
}

impl TaskService for Shim {
    async fn create(&self, _ctx: RequestContext, req: CreateTaskRequest) -> Result<CreateTaskResponse, Status> {
        let _order = self.lifecycle.lock().await;
        if self.containers.lock().expect("containers").contains_key(&req.id) {
            return Err(Status::already_exists(format!("container {}: already exists", req.id)));
        }
        let event = types::TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(types::TaskIo {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            }),
            checkpoint: req.checkpoint.clone(),
            pid: 0,
        };
        let c = self.create_container(req).await?;
        let pid = c.init.pid() as u32;
        self.containers.lock().expect("containers").insert(c.id.clone(), c);
        self.events.publish(topics::TASK_CREATE, &types::TaskCreate { pid, ..event });
        Ok(CreateTaskResponse { pid })
    }

    async fn start(&self, _ctx: RequestContext, req: StartRequest) -> Result<StartResponse, Status> {
        let c = self.container(&req.id)?;
        let _order = self.lifecycle.lock().await;
        let p = c.process(&req.exec_id)?;
        let state = p.lock().state;
        match state {
            State::Created => {}
            State::Running => return Err(unknown("cannot start a running process")),
            State::Paused => return Err(unknown("cannot start a paused process")),
            State::Stopped => return Err(unknown("cannot start a stopped process")),
            State::Deleted => return Err(unknown("cannot start a deleted process")),
        }
        if req.exec_id.is_empty() {
            let restore_from = c.restore_from.lock().expect("restore_from").take();
            if let Some((image, parent)) = restore_from {
                let pid = self.restore(&c, &image, &parent).await?;
                p.lock().pid = pid;
            } else if let Err(e) = c.runc.run(&self.reaper, &["start", &c.id], RuncStdio::Capture(None)).await {
                return Err(unknown(c.runc.runtime_error(&e, "OCI runtime start failed")));
            }
            {
                let mut st = p.lock();
                if st.state == State::Created {
                    st.state = State::Running;
                }
            }
            if c.cgroup.lock().expect("cgroup").is_none() {
                *c.cgroup.lock().expect("cgroup") = Cgroup::of_pid(p.pid()).ok();
            }
            self.watch_oom(&c);
            let pid = p.pid() as u32;
            self.events.publish(topics::TASK_START, &types::TaskStart { container_id: c.id.clone(), pid });
            Ok(StartResponse { pid })
        } else {
            let pid = self.start_exec(&c, &p, &req.exec_id).await?;
            {
                let mut st = p.lock();
                st.pid = pid;
                if st.state == State::Created {
                    st.state = State::Running;
                }
            }
            self.events.publish(
                topics::TASK_EXEC_STARTED,
                &types::TaskExecStarted { container_id: c.id.clone(), exec_id: req.exec_id.clone(), pid: pid as u32 },
            );
            Ok(StartResponse { pid: pid as u32 })
        }
    }

    async fn delete(&self, _ctx: RequestContext, req: DeleteRequest) -> Result<DeleteResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        match p.lock().state {
            State::Running => return Err(unknown("cannot delete a running process")),
            State::Paused => return Err(unknown("cannot delete a paused process")),
            State::Deleted => return Err(unknown("cannot delete a deleted process")),
            State::Created | State::Stopped => {}
        }
        p.drain_output().await;
        let mut result = Ok(());
        if req.exec_id.is_empty() {
            if let Err(e) = c.runc.run(&self.reaper, &["delete", &c.id], RuncStdio::Capture(None)).await {
                if !e.to_string().contains("does not exist") {
                    result = Err(unknown(c.runc.runtime_error(&e, "failed to delete task")));
                }
            }
            if let Some(dir) = &c.rootfs {
                if let Err(e) = mount::unmount_all(dir) {
                    crate::log!("failed to cleanup rootfs mount: {e}");
                    if result.is_ok() {
                        result = Err(unknown(format!("failed rootfs umount: {e}")));
                    }
                }
            }
        } else {
            let _ = std::fs::remove_file(c.bundle.join(format!("{}.pid", req.exec_id)));
        }
        let (pid, exit_status, exited_at) = {
            let mut st = p.lock();
            st.state = State::Deleted;
            st.stdin = None;
            st.console = None;
            (st.pid as u32, st.exit_status, st.exited_at.map(timestamp))
        };
        p.done.send_replace(true);
        result?;
        if req.exec_id.is_empty() {
            self.containers.lock().expect("containers").remove(&c.id);
            self.events.publish(
                topics::TASK_DELETE,
                &types::TaskDelete { container_id: c.id.clone(), pid, exit_status, exited_at, id: String::new() },
            );
        } else {
            c.execs.lock().expect("execs").remove(&req.exec_id);
        }
        Ok(DeleteResponse { pid, exit_status, exited_at })
    }

    async fn exec(&self, _ctx: RequestContext, req: ExecProcessRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        match c.init_state() {
            State::Created | State::Running => {}
            State::Paused => return Err(unknown("cannot exec in a paused state")),
            State::Stopped => return Err(unknown("cannot exec in a stopped state")),
            State::Deleted => return Err(unknown("cannot exec in a deleted state")),
        }
        let spec = req.spec.map(|a| a.value).unwrap_or_default();
        let p = Arc::new(Process::new(
            &req.exec_id,
            Some(ExecSpec { spec }),
            StdioPaths { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
        ));
        {
            let mut execs = c.execs.lock().expect("execs");
            if execs.contains_key(&req.exec_id) {
                return Err(Status::already_exists(format!("id {}: already exists", req.exec_id)));
            }
            execs.insert(req.exec_id.clone(), p);
        }
        self.events.publish(
            topics::TASK_EXEC_ADDED,
            &types::TaskExecAdded { container_id: c.id.clone(), exec_id: req.exec_id },
        );
        Ok(Empty {})
    }

    async fn resize_pty(&self, _ctx: RequestContext, req: ResizePtyRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let console = p.lock().console.clone();
        if let Some(console) = console {
            console.resize(req.width, req.height).map_err(|e| unknown(e.to_string()))?;
        }
        Ok(Empty {})
    }

    async fn state(&self, _ctx: RequestContext, req: StateRequest) -> Result<StateResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let init_status = {
            let st = c.init.lock();
            status_of(st.state, st.pausing)
        };
        let st = p.lock();
        let mut status = status_of(st.state, st.pausing);
        if p.exec.is_some() && matches!(init_status, ProcessStatus::Paused | ProcessStatus::Pausing) {
            status = init_status;
        }
        Ok(StateResponse {
            id: p.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: st.pid as u32,
            status: status as i32,
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: st.exit_status,
            exited_at: st.exited_at.map(timestamp),
            exec_id: req.exec_id.clone(),
        })
    }

    async fn pause(&self, _ctx: RequestContext, req: PauseRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        {
            let mut st = c.init.lock();
            match st.state {
                State::Running => st.pausing = true,
                State::Created => return Err(unknown("cannot pause task in created state")),
                State::Paused => return Err(unknown("cannot pause a paused container")),
                State::Stopped => return Err(unknown("cannot pause a stopped container")),
                State::Deleted => return Err(unknown("cannot pause a deleted process")),
            }
        }
        let res = c.runc.run(&self.reaper, &["pause", &c.id], RuncStdio::Capture(None)).await;
        let mut st = c.init.lock();
        st.pausing = false;
        if let Err(e) = res {
            return Err(unknown(c.runc.runtime_error(&e, "OCI runtime pause failed")));
        }
        if st.state == State::Running {
            st.state = State::Paused;
        }
        drop(st);
        self.events.publish(topics::TASK_PAUSED, &types::TaskPaused { container_id: c.id.clone() });
        Ok(Empty {})
    }

    async fn resume(&self, _ctx: RequestContext, req: ResumeRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        match c.init_state() {
            State::Paused => {}
            State::Running => return Err(unknown("cannot resume a running process")),
            State::Created => return Err(unknown("cannot resume task in created state")),
            State::Stopped => return Err(unknown("cannot resume a stopped container")),
            State::Deleted => return Err(unknown("cannot resume a deleted process")),
        }
        if let Err(e) = c.runc.run(&self.reaper, &["resume", &c.id], RuncStdio::Capture(None)).await {
            return Err(unknown(c.runc.runtime_error(&e, "OCI runtime resume failed")));
        }
        {
            let mut st = c.init.lock();
            if st.state == State::Paused {
                st.state = State::Running;
            }
        }
        self.events.publish(topics::TASK_RESUMED, &types::TaskResumed { container_id: c.id.clone() });
        Ok(Empty {})
    }

    async fn kill(&self, _ctx: RequestContext, req: KillRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.exec.is_none() {
            if p.lock().state == State::Deleted {
                return Err(unknown("cannot kill a deleted process"));
            }
            let sig = req.signal.to_string();
            let mut args = vec!["kill"];
            if req.all {
                args.push("--all");
            }
            args.extend([c.id.as_str(), sig.as_str()]);
            return match c.runc.run(&self.reaper, &args, RuncStdio::Capture(None)).await {
                Ok(_) => Ok(Empty {}),
                Err(e @ RuncError::Failed { .. }) => Err(kill_error(&e.to_string())),
                Err(e) => Err(unknown(e.to_string())),
            };
        }
        let (pid, state) = {
            let st = p.lock();
            (st.pid, st.state)
        };
        if pid == 0 {
            return Err(Status::failed_precondition("process not created: failed precondition"));
        }
        if matches!(state, State::Stopped | State::Deleted) {
            return Err(Status::not_found("process already finished: not found"));
        }
        // SAFETY: kill(2) with a pid and a signal number has no memory
        // effects; the pid is this shim's own (unreaped) child.
        if unsafe { libc::kill(pid, req.signal as i32) } != 0 {
            let e = std::io::Error::last_os_error();
            let status = kill_error(&e.to_string());
            return Err(Status::new(status.code, format!("exec kill error: {}", status.message)));
        }
        Ok(Empty {})
    }

    async fn pids(&self, _ctx: RequestContext, req: PidsRequest) -> Result<PidsResponse, Status> {
        let c = self.container(&req.id)?;
        let out = c
            .runc
            .run(&self.reaper, &["ps", "--format", "json", &c.id], RuncStdio::Capture(None))
            .await
            .map_err(|e| unknown(e.to_string()))?;
        let pids: Vec<i32> = serde_json::from_str(out.trim()).map_err(|e| unknown(format!("runc ps: {e}")))?;
        let execs: Vec<(i32, String)> =
            c.execs.lock().expect("execs").values().map(|p| (p.pid(), p.id.clone())).collect();
        let processes = pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid as u32,
                info: execs.iter().find(|(p, _)| *p == pid).map(|(_, id)| prost_types::Any {
                    type_url: PROCESS_DETAILS_TYPE_URL.to_string(),
                    value: ProcessDetails { exec_id: id.clone() }.encode_to_vec(),
                }),
            })
            .collect();
        Ok(PidsResponse { processes })
    }

    async fn close_io(&self, _ctx: RequestContext, req: CloseIoRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.lock().stdin = None;
        Ok(Empty {})
    }

    async fn checkpoint(&self, _ctx: RequestContext, req: CheckpointTaskRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        match c.init_state() {
            State::Running | State::Paused => {}
            State::Created => return Err(unknown("cannot checkpoint a task in created state")),
            State::Stopped => return Err(unknown("cannot checkpoint a stopped container")),
            State::Deleted => return Err(unknown("cannot checkpoint a deleted process")),
        }
        let opts = match &req.options {
            Some(any) => {
                CheckpointOptions::decode(any.value.as_slice()).map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            None => CheckpointOptions::default(),
        };
        let (work, temporary) = if opts.work_path.is_empty() {
            (PathBuf::from(&c.criu_work_path).join("criu-work"), true)
        } else {
            (PathBuf::from(&opts.work_path), false)
        };
        let mut args: Vec<String> = vec!["checkpoint".into()];
        let image = if opts.image_path.is_empty() { req.path.clone() } else { opts.image_path.clone() };
        if !image.is_empty() {
            args.extend(["--image-path".into(), image]);
        }
        args.extend(["--work-path".into(), work.display().to_string()]);
        if opts.open_tcp {
            args.push("--tcp-established".into());
        }
        if opts.external_unix_sockets {
            args.push("--ext-unix-sk".into());
        }
        if opts.terminal {
            args.push("--shell-job".into());
        }
        if opts.file_locks {
            args.push("--file-locks".into());
        }
        for ns in &opts.empty_namespaces {
            args.extend(["--empty-ns".into(), ns.clone()]);
        }
        if !opts.exit {
            args.push("--leave-running".into());
        }
        args.push(c.id.clone());
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let res = c.runc.run(&self.reaper, &argv, RuncStdio::Capture(None)).await;
        let out = match res {
            Ok(_) => Ok(Empty {}),
            Err(e) => {
                let dump_log = c.bundle.join("criu-dump.log");
                let _ = std::fs::copy(work.join("dump.log"), &dump_log);
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                Err(unknown(format!("{first} path= {}", dump_log.display())))
            }
        };
        if temporary {
            let _ = std::fs::remove_dir_all(&work);
        }
        out
    }

    async fn update(&self, _ctx: RequestContext, req: UpdateTaskRequest) -> Result<Empty, Status> {
        let c = self.container(&req.id)?;
        match c.init_state() {
            State::Stopped => return Err(unknown("cannot update a stopped container")),
            State::Deleted => return Err(unknown("cannot update a deleted process")),
            _ => {}
        }
        let resources = req.resources.map(|a| a.value).unwrap_or_default();
        c.runc
            .run(&self.reaper, &["update", "--resources", "-", &c.id], RuncStdio::Capture(Some(resources)))
            .await
            .map_err(|e| unknown(e.to_string()))?;
        Ok(Empty {})
    }

    async fn wait(&self, _ctx: RequestContext, req: WaitRequest) -> Result<WaitResponse, Status> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let mut done = p.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        let st = p.lock();
        Ok(WaitResponse { exit_status: st.exit_status, exited_at: st.exited_at.map(timestamp) })
    }

    async fn stats(&self, _ctx: RequestContext, req: StatsRequest) -> Result<StatsResponse, Status> {
        let c = self.container(&req.id)?;
        let cg = c.cgroup.lock().expect("cgroup").clone();
        let cg = cg.ok_or_else(|| Status::not_found("cgroup does not exist: not found"))?;
        Ok(StatsResponse { stats: Some(cg.metrics()) })
    }

    async fn connect(&self, _ctx: RequestContext, req: ConnectRequest) -> Result<ConnectResponse, Status> {
        let task_pid = self.container(&req.id).map(|c| c.init.pid() as u32).unwrap_or(0);
        Ok(ConnectResponse { shim_pid: std::process::id(), task_pid, version: env!("CARGO_PKG_VERSION").to_string() })
    }

    async fn shutdown(&self, _ctx: RequestContext, _req: ShutdownRequest) -> Result<Empty, Status> {
        if self.containers.lock().expect("containers").is_empty() {
            self.shutdown.send_replace(true);
        }
        Ok(Empty {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_errors_read_like_go() {
        let s = kill_error("runc did not terminate successfully: exit status 1: container not running");
        assert_eq!((s.code, s.message.as_str()), (Code::NotFound, "process already finished: not found"));
        assert_eq!(kill_error("container \"x\" does not exist").message, "no such container: not found");
        assert_eq!(kill_error("boom").code, Code::Unknown);
    }

    #[test]
    fn kill_all_unless_own_pid_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let write = |s: &str| std::fs::write(dir.path().join("config.json"), s).unwrap();
        write(r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#);
        assert!(!should_kill_all_on_exit(dir.path()));
        write(r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#);
        assert!(should_kill_all_on_exit(dir.path()));
        write(r#"{"linux":{"namespaces":[{"type":"mount"}]}}"#);
        assert!(should_kill_all_on_exit(dir.path()));
    }

    #[test]
    fn options_round_trip_through_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let o = Options { binary_name: "/usr/sbin/runc".into(), root: "/r".into(), ..Default::default() };
        write_options(dir.path(), &o).unwrap();
        std::fs::write(dir.path().join("runtime"), &o.binary_name).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("options.json")).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"binary_name": "/usr/sbin/runc", "root": "/r"}));
        assert_eq!(read_options(dir.path()), ("/usr/sbin/runc".to_string(), "/r".to_string()));
    }
}
