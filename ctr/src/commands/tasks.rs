//! `ctr tasks` (containerd 1.6's `cmd/ctr/commands/tasks`) and the task
//! life cycle `ctr run` shares with `tasks start`: create with FIFOs, wait,
//! start, forward signals or the terminal size, delete, pass the exit code.

use std::io::Write;

use clap::{Args, Subcommand};
use containerd_client::services::v1::{
    CloseIoRequest, Container, CreateTaskRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest,
    GetRequest, KillRequest, ListPidsRequest, ListTasksRequest, MetricsRequest, PauseTaskRequest, ResizePtyRequest,
    ResumeTaskRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Process;
use tokio::task::JoinHandle;
use tonic::Code;

use super::{ExitStatus, GlobalArgs};
use crate::cio::{FifoConfig, TaskIo};
use crate::client::Client;
use crate::errdefs;
use crate::spec::GoSpec;
use shim_protocol::runc;

/// The type URL of a process spec in an exec request.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// containerd's `UnknownExitStatus`.
const UNKNOWN_EXIT_STATUS: u32 = 255;

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Attach to the IO of a running container
    Attach(IdArg),
    /// Checkpoint a container
    Checkpoint(super::checkpoint::TaskCheckpointArgs),
    /// Delete one or more tasks
    #[command(visible_aliases = ["del", "remove", "rm"])]
    Delete(DeleteArgs),
    /// Execute additional processes in an existing container
    Exec(ExecArgs),
    /// List tasks
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Signal a container (default: SIGTERM)
    Kill(KillArgs),
    /// Pause an existing container
    Pause(IdArg),
    /// List processes for container
    Ps(IdArg),
    /// Resume a paused container
    Resume(IdArg),
    /// Start a container that has been created
    Start(StartArgs),
    /// Get a single data point of metrics for a task with the built-in Linux runtime
    #[command(visible_alias = "metric")]
    Metrics(MetricsArgs),
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// CONTAINER
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl IdArg {
    fn id(&self) -> String {
        self.args.first().cloned().unwrap_or_default()
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print only the task id
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short, long, default_value = "")]
    pub signal: String,
    /// Process ID to kill
    #[arg(long = "exec-id", default_value = "")]
    pub exec_id: String,
    /// Send signal to all processes inside the container
    #[arg(short, long)]
    pub all: bool,
    /// CONTAINER
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Force delete task process
    #[arg(short, long)]
    pub force: bool,
    /// Process ID to kill
    #[arg(long = "exec-id", default_value = "")]
    pub exec_id: String,
    /// CONTAINER [CONTAINER, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Working directory of the new process
    #[arg(long, default_value = "")]
    pub cwd: String,
    /// Allocate a TTY for the container
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Detach from the task after it has started execution
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Exec specific id for the process
    #[arg(long = "exec-id", required = true)]
    pub exec_id: String,
    /// Directory used for storing IO FIFOs
    #[arg(long = "fifo-dir", default_value = "")]
    pub fifo_dir: String,
    /// Log uri for custom shim logging
    #[arg(long = "log-uri", default_value = "")]
    pub log_uri: String,
    /// User id or name
    #[arg(long, default_value = "")]
    pub user: String,
    /// CONTAINER CMD [ARG...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Send all IO to /dev/null
    #[arg(long = "null-io")]
    pub null_io: bool,
    /// Log uri
    #[arg(long = "log-uri", default_value = "")]
    pub log_uri: String,
    /// Directory used for storing IO FIFOs
    #[arg(long = "fifo-dir", default_value = "")]
    pub fifo_dir: String,
    /// File path to write the task's pid
    #[arg(long = "pid-file")]
    pub pid_file: Option<String>,
    /// Detach from the task after it has started execution
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Disable use of pivot-root (linux only)
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// CONTAINER
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// "table" or "json"
    #[arg(long, default_value = "table")]
    pub format: String,
    /// CONTAINER
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: TasksCommand) -> anyhow::Result<()> {
    match command {
        TasksCommand::Attach(a) => attach(global, a).await,
        TasksCommand::Checkpoint(a) => super::checkpoint::task_checkpoint(global, a).await,
        TasksCommand::Delete(a) => delete(global, a).await,
        TasksCommand::Exec(a) => exec(global, a).await,
        TasksCommand::List(a) => list(global, a).await,
        TasksCommand::Kill(a) => kill(global, a).await,
        TasksCommand::Pause(a) => {
            let client = global.client().await?;
            let c = super::containers::load(&client, &a.id()).await?;
            get_task(&client, &c.id).await?;
            let req = PauseTaskRequest { container_id: c.id };
            client.call(client.tasks().pause(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
            Ok(())
        }
        TasksCommand::Resume(a) => {
            let client = global.client().await?;
            let c = super::containers::load(&client, &a.id()).await?;
            get_task(&client, &c.id).await?;
            let req = ResumeTaskRequest { container_id: c.id };
            client.call(client.tasks().resume(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
            Ok(())
        }
        TasksCommand::Ps(a) => ps(global, a).await,
        TasksCommand::Start(a) => start(global, a).await,
        TasksCommand::Metrics(a) => metrics(global, a).await,
    }
}

/// Go's `task.Status.String()` of the protobuf enum.
fn status_upper(s: i32) -> &'static str {
    match s {
        1 => "CREATED",
        2 => "RUNNING",
        3 => "STOPPED",
        4 => "PAUSED",
        5 => "PAUSING",
        _ => "UNKNOWN",
    }
}

/// containerd's `ProcessStatus` text.
fn status_lower(s: i32) -> &'static str {
    match s {
        1 => "created",
        2 => "running",
        3 => "stopped",
        4 => "paused",
        5 => "pausing",
        _ => "unknown",
    }
}

/// `container.Task(ctx, nil)`: the task's main process.
pub async fn get_task(client: &Client, id: &str) -> anyhow::Result<Process> {
    let req = GetRequest { container_id: id.to_string(), exec_id: String::new() };
    match client.call(client.tasks().get(client.request(req))).await {
        Ok(r) => Ok(r.process.unwrap_or_default()),
        Err(s) if s.code() == Code::NotFound => {
            Err(anyhow::anyhow!("no running task found: {}", errdefs::from_grpc(&s)))
        }
        Err(s) => Err(errdefs::from_grpc(&s)),
    }
}

/// `task.LoadProcess`.
async fn get_process(client: &Client, id: &str, exec_id: &str) -> anyhow::Result<Process> {
    let req = GetRequest { container_id: id.to_string(), exec_id: exec_id.to_string() };
    match client.call(client.tasks().get(client.request(req))).await {
        Ok(r) => Ok(r.process.unwrap_or_default()),
        Err(s) if s.code() == Code::NotFound => {
            Err(anyhow::anyhow!("no running process found: {}", errdefs::from_grpc(&s)))
        }
        Err(s) => Err(errdefs::from_grpc(&s)),
    }
}

/// `task.Wait` / `process.Wait`: the exit code, once the process exits.
fn wait(client: &Client, id: &str, exec_id: &str) -> JoinHandle<anyhow::Result<u32>> {
    let client = client.clone();
    let req = WaitRequest { container_id: id.to_string(), exec_id: exec_id.to_string() };
    tokio::spawn(async move {
        let resp = client.call(client.tasks().wait(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        Ok(resp.exit_status)
    })
}

async fn kill_process(client: &Client, id: &str, exec_id: &str, signal: u32, all: bool) -> anyhow::Result<()> {
    let req = KillRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), signal, all };
    client.call(client.tasks().kill(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    Ok(())
}

/// `task.Delete`: refused unless stopped; the exit status.
async fn delete_task(client: &Client, id: &str, force: bool) -> anyhow::Result<u32> {
    if force {
        with_process_kill(client, id, "").await?;
    }
    let p = get_task(client, id).await?;
    if !matches!(p.status, 0 | 3) {
        anyhow::bail!("task must be stopped before deletion: {}: failed precondition", status_lower(p.status));
    }
    let req = DeleteTaskRequest { container_id: id.to_string() };
    let r = client.call(client.tasks().delete(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    Ok(r.exit_status)
}

/// `process.Delete`.
async fn delete_process(client: &Client, id: &str, exec_id: &str, force: bool) -> anyhow::Result<u32> {
    if force {
        with_process_kill(client, id, exec_id).await?;
    }
    let p = get_process(client, id, exec_id).await?;
    if matches!(p.status, 2 | 4 | 5) {
        anyhow::bail!(
            "current process state: {}, process must be stopped before deletion: failed precondition",
            status_lower(p.status)
        );
    }
    let req = DeleteProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string() };
    let r =
        client.call(client.tasks().delete_process(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    Ok(r.exit_status)
}

/// `containerd.WithProcessKill`: SIGKILL to all, then wait for the exit.
async fn with_process_kill(client: &Client, id: &str, exec_id: &str) -> anyhow::Result<()> {
    let waiter = wait(client, id, exec_id);
    let req = KillRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), signal: 9, all: true };
    match client.call(client.tasks().kill(client.request(req))).await {
        Ok(_) => {}
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
            waiter.abort();
            return Ok(());
        }
        Err(s) => {
            waiter.abort();
            return Err(errdefs::from_grpc(&s));
        }
    }
    let _ = waiter.await;
    Ok(())
}

/// The terminal in raw mode for as long as this lives (`console.Current()`
/// and `SetRaw`, `Reset` on drop), output processing left on as
/// containerd/console leaves it.
pub struct RawConsole {
    fd: std::os::fd::RawFd,
    saved: rustix::termios::Termios,
}

impl RawConsole {
    pub fn new() -> anyhow::Result<RawConsole> {
        let fd = [0, 1, 2]
            .into_iter()
            .find(|fd| {
                // SAFETY: the standard descriptors stay open for the whole process.
                let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                rustix::termios::isatty(b)
            })
            .ok_or_else(|| anyhow::anyhow!("provided file is not a console"))?;
        // SAFETY: as above.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let saved = rustix::termios::tcgetattr(b)?;
        let mut raw = saved.clone();
        raw.make_raw();
        // containerd/console's `SetRaw` turns output processing back on
        // after cfmakeraw, so a `\n` the task writes still gets the local
        // terminal's `ONLCR` (`\r\n` from the task's pty becomes `\r\r\n`
        // on the way out): what stock ctr's output looks like byte for byte.
        raw.output_modes.insert(rustix::termios::OutputModes::OPOST);
        rustix::termios::tcsetattr(b, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawConsole { fd, saved })
    }

    pub fn size(&self) -> Option<(u32, u32)> {
        // SAFETY: as in `new`.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        rustix::termios::tcgetwinsize(b).ok().map(|w| (u32::from(w.ws_col), u32::from(w.ws_row)))
    }
}

impl Drop for RawConsole {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        let _ = rustix::termios::tcsetattr(b, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

/// `HandleConsoleResize`: the size now, and again on every SIGWINCH.
fn handle_console_resize(client: &Client, con: &RawConsole, id: &str, exec_id: &str) -> JoinHandle<()> {
    let client = client.clone();
    let (id, exec_id) = (id.to_string(), exec_id.to_string());
    let fd = con.fd;
    let size = move || {
        // SAFETY: as in `RawConsole::new`.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::termios::tcgetwinsize(b).ok().map(|w| (u32::from(w.ws_col), u32::from(w.ws_row)))
    };
    let first = con.size();
    tokio::spawn(async move {
        let resize = |w: u32, h: u32| {
            let req = ResizePtyRequest { container_id: id.clone(), exec_id: exec_id.clone(), width: w, height: h };
            let client = client.clone();
            async move {
                if let Err(s) = client.call(client.tasks().resize_pty(client.request(req))).await {
                    crate::golog::error("resize pty", &errdefs::from_grpc(&s));
                }
            }
        };
        if let Some((w, h)) = first {
            resize(w, h).await;
        }
        let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some((w, h)) = size() {
                resize(w, h).await;
            }
        }
    })
}

/// `commands.ForwardAllSignals`: the catchable signals go to the process.
fn forward_signals(client: &Client, id: &str, exec_id: &str) -> Vec<JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut handles = Vec::new();
    for sig in [1, 2, 3, 10, 12, 15] {
        let Ok(mut stream) = signal(SignalKind::from_raw(sig)) else { continue };
        let client = client.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        handles.push(tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if let Err(e) = kill_process(&client, &id, &exec_id, sig as u32, false).await {
                    crate::golog::error("forward signal", &e);
                }
            }
        }));
    }
    handles
}

/// How a task is created and followed (`run`, `tasks start`).
pub struct TaskOpts {
    pub tty: bool,
    pub null_io: bool,
    pub log_uri: String,
    pub fifo_dir: String,
    pub no_pivot: bool,
    pub detach: bool,
    pub pid_file: Option<String>,
    /// `WithTaskCheckpoint`: the checkpoint to restore the task from, and
    /// the checkpoint's task options (instead of `no_pivot`'s).
    pub checkpoint: Option<containerd_client::types::Descriptor>,
    pub checkpoint_options: Option<prost_types::Any>,
    /// Forward the signals ctr gets to the task (`run --sig-proxy`).
    pub sig_proxy: bool,
}

/// `tasks.NewTask` + `container.NewTask`: streams, rootfs mounts, Create.
async fn new_task(client: &Client, container: &Container, opts: &TaskOpts) -> anyhow::Result<(TaskIo, u32)> {
    let id = container.id.clone();
    let tio = if opts.tty {
        if opts.null_io {
            anyhow::bail!("tty and null-io cannot be used together");
        }
        TaskIo::fifos(&opts.fifo_dir, &id, true, close_stdin(client, &id, ""))?
    } else if opts.null_io {
        TaskIo::null()
    } else if !opts.log_uri.is_empty() {
        let mut t = TaskIo::null();
        t.config = FifoConfig { stdout: opts.log_uri.clone(), stderr: opts.log_uri.clone(), ..Default::default() };
        t
    } else {
        TaskIo::fifos(&opts.fifo_dir, &id, false, close_stdin(client, &id, ""))?
    };
    let c = super::containers::load(client, &id).await?;
    let mut rootfs = Vec::new();
    if !c.snapshot_key.is_empty() {
        if c.snapshotter.is_empty() {
            anyhow::bail!("unable to resolve rootfs mounts without snapshotter on container: invalid argument");
        }
        let req = containerd_client::services::v1::snapshots::MountsRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        };
        rootfs = client
            .call(client.snapshots().mounts(client.request(req)))
            .await
            .map_err(|s| errdefs::from_grpc(&s))?
            .mounts;
    }
    let options = opts.checkpoint_options.clone().or_else(|| {
        opts.no_pivot.then(|| prost_types::Any {
            type_url: runc::OPTIONS_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&runc::Options { no_pivot_root: true, ..Default::default() }),
        })
    });
    let req = CreateTaskRequest {
        container_id: id.clone(),
        rootfs,
        stdin: tio.config.stdin.clone(),
        stdout: tio.config.stdout.clone(),
        stderr: tio.config.stderr.clone(),
        terminal: tio.config.terminal,
        checkpoint: opts.checkpoint.clone(),
        options,
        ..Default::default()
    };
    let r = client.call(client.tasks().create(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    let mut tio = tio;
    tio.start_stdin();
    Ok((tio, r.pid))
}

/// What runs when ctr's stdin ends: `CloseIO` with `WithStdinCloser`.
fn close_stdin(client: &Client, id: &str, exec_id: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
    let client = client.clone();
    let req = CloseIoRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), stdin: true };
    async move {
        let _ = client.call(client.tasks().close_io(client.request(req))).await;
    }
}

/// `commands.WritePidFile`: written next to the target, then renamed.
fn write_pid_file(path: &str, pid: u32) -> anyhow::Result<()> {
    let path = std::path::absolute(path)?;
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let tmp = dir.join(format!(".{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?.write_all(pid.to_string().as_bytes())?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// Create the task of `container`, start it and, unless detached, follow
/// it to its exit and delete it; a non-zero exit code becomes ctr's.
pub async fn run_new_task(client: &Client, container: &Container, opts: &TaskOpts) -> anyhow::Result<()> {
    let console = if opts.tty { Some(RawConsole::new()?) } else { None };
    let id = container.id.clone();
    let (mut tio, pid) = new_task(client, container, opts).await?;
    let waiter = (!opts.detach).then(|| wait(client, &id, ""));
    let res = follow(client, &id, opts, console.as_ref(), &mut tio, waiter, pid).await;
    if opts.detach && res.is_ok() {
        // The runtime holds the FIFOs now; `tasks attach` reopens them.
        std::mem::forget(tio);
        return Ok(());
    }
    if !opts.detach {
        // The deferred `task.Delete`; its error is dropped.
        let _ = delete_task(client, &id, false).await;
    }
    drop(console);
    res
}

/// `container.NewTask` then `task.Start`, nothing followed (`containers
/// restore`): the streams are left to the runtime when ctr exits.
pub async fn create_and_start(client: &Client, container: &Container, opts: &TaskOpts) -> anyhow::Result<()> {
    let (tio, _pid) = new_task(client, container, opts).await?;
    let req = StartRequest { container_id: container.id.clone(), exec_id: String::new() };
    client.call(client.tasks().start(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    std::mem::forget(tio);
    Ok(())
}

async fn follow(
    client: &Client,
    id: &str,
    opts: &TaskOpts,
    console: Option<&RawConsole>,
    tio: &mut TaskIo,
    waiter: Option<JoinHandle<anyhow::Result<u32>>>,
    pid: u32,
) -> anyhow::Result<()> {
    if let Some(path) = &opts.pid_file {
        write_pid_file(path, pid)?;
    }
    // The handlers are in place before the task starts (stock ctr sets
    // them up after Start, so a signal in between kills ctr itself).
    let _forwarders: Vec<JoinHandle<()>> = match (&waiter, console) {
        (Some(_), None) if opts.sig_proxy => forward_signals(client, id, ""),
        _ => Vec::new(),
    };
    let req = StartRequest { container_id: id.to_string(), exec_id: String::new() };
    client.call(client.tasks().start(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    let Some(waiter) = waiter else { return Ok(()) };
    let _resizer: Option<JoinHandle<()>> = console.map(|con| handle_console_resize(client, con, id, ""));
    let code = waiter.await.map_err(|e| anyhow::anyhow!("{e}"))?.inspect_err(|_| ()).unwrap_or(UNKNOWN_EXIT_STATUS);
    // `task.Delete`: output copied out first.
    tio.wait().await;
    delete_task(client, id, false).await?;
    if code != 0 {
        return Err(ExitStatus(code as i32).into());
    }
    Ok(())
}

async fn start(global: &GlobalArgs, args: StartArgs) -> anyhow::Result<()> {
    let id = args.args.first().cloned().unwrap_or_default();
    if id.is_empty() {
        anyhow::bail!("container id must be provided");
    }
    let client = global.client().await?;
    let c = super::containers::load(&client, &id).await?;
    let spec = GoSpec::from_bytes(&c.spec.clone().unwrap_or_default().value)?;
    let tty = spec.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let opts = TaskOpts {
        tty,
        null_io: args.null_io,
        log_uri: args.log_uri,
        fifo_dir: args.fifo_dir,
        no_pivot: args.no_pivot,
        detach: args.detach,
        pid_file: args.pid_file,
        checkpoint: None,
        checkpoint_options: None,
        sig_proxy: true,
    };
    run_new_task(&client, &c, &opts).await
}

async fn list(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let resp = client
        .call(client.tasks().list(client.request(ListTasksRequest { filter: String::new() })))
        .await
        .map_err(|s| errdefs::raw(&s))?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for t in &resp.tasks {
            writeln!(out, "{}", t.id)?;
        }
        return Ok(());
    }
    let mut tw = crate::tabwriter::TabWriter::new(out, 4, 8, 4, ' ');
    writeln!(tw, "TASK\tPID\tSTATUS\t")?;
    for t in &resp.tasks {
        writeln!(tw, "{}\t{}\t{}", t.id, t.pid, status_upper(t.status))?;
    }
    tw.flush()?;
    Ok(())
}

/// moby's `signal.ParseSignal`: a number, or a name with or without `SIG`.
pub fn parse_signal(s: &str) -> anyhow::Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if n == 0 {
            anyhow::bail!("Invalid signal: {s}");
        }
        return Ok(n);
    }
    const NAMES: [(&str, u32); 31] = [
        ("ABRT", 6),
        ("ALRM", 14),
        ("BUS", 7),
        ("CHLD", 17),
        ("CLD", 17),
        ("CONT", 18),
        ("FPE", 8),
        ("HUP", 1),
        ("ILL", 4),
        ("INT", 2),
        ("IO", 29),
        ("IOT", 6),
        ("KILL", 9),
        ("PIPE", 13),
        ("POLL", 29),
        ("PROF", 27),
        ("PWR", 30),
        ("QUIT", 3),
        ("SEGV", 11),
        ("STKFLT", 16),
        ("STOP", 19),
        ("SYS", 31),
        ("TERM", 15),
        ("TRAP", 5),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("USR1", 10),
        ("USR2", 12),
        ("WINCH", 28),
    ];
    let name = s.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| anyhow::anyhow!("Invalid signal: {s}"))
}

async fn kill(global: &GlobalArgs, args: KillArgs) -> anyhow::Result<()> {
    let id = args.args.first().cloned().unwrap_or_default();
    if id.is_empty() {
        anyhow::bail!("container id must be provided");
    }
    if args.all && !args.exec_id.is_empty() {
        anyhow::bail!("specify an exec-id or all; not both");
    }
    let client = global.client().await?;
    let c = super::containers::load(&client, &id).await?;
    let sig = if !args.signal.is_empty() {
        parse_signal(&args.signal)?
    } else {
        // `GetStopSignal`: the image's, else SIGTERM.
        match c.labels.get(super::run::STOP_SIGNAL_LABEL) {
            Some(s) => parse_signal(s)?,
            None => 15,
        }
    };
    get_task(&client, &id).await?;
    kill_process(&client, &id, &args.exec_id, sig, args.all).await
}

async fn delete(global: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    if !args.exec_id.is_empty() {
        let id = args.args.first().cloned().unwrap_or_default();
        super::containers::load(&client, &id).await?;
        get_task(&client, &id).await?;
        get_process(&client, &id, &args.exec_id).await?;
        let code = delete_process(&client, &id, &args.exec_id, args.force).await?;
        if code != 0 {
            return Err(ExitStatus(code as i32).into());
        }
        return Ok(());
    }
    let mut exit_err: Option<anyhow::Error> = None;
    for target in &args.args {
        let loaded = async {
            super::containers::load(&client, target).await?;
            get_task(&client, target).await
        }
        .await;
        if let Err(e) = loaded {
            crate::golog::error(&format!("failed to load task from {target}"), &e);
            exit_err.get_or_insert(e);
            continue;
        }
        match delete_task(&client, target, args.force).await {
            Ok(0) => {}
            Ok(code) => crate::golog::warn_plain(&format!("task {target} exit with non-zero exit code {code}")),
            Err(e) => {
                crate::golog::error(&format!("unable to delete {target}"), &e);
                exit_err.get_or_insert(e);
            }
        }
    }
    match exit_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn ps(global: &GlobalArgs, args: IdArg) -> anyhow::Result<()> {
    let id = args.id();
    if id.is_empty() {
        anyhow::bail!("container id must be provided");
    }
    let client = global.client().await?;
    super::containers::load(&client, &id).await?;
    get_task(&client, &id).await?;
    let req = ListPidsRequest { container_id: id };
    let resp = client.call(client.tasks().list_pids(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    let mut tw = crate::tabwriter::TabWriter::new(std::io::stdout().lock(), 1, 8, 4, ' ');
    writeln!(tw, "PID\tINFO")?;
    for p in &resp.processes {
        let info = match &p.info {
            None => "-".to_string(),
            Some(a) if a.type_url == runc::PROCESS_DETAILS_TYPE_URL => {
                let d = <runc::ProcessDetails as prost::Message>::decode(a.value.as_slice())?;
                format!("&ProcessDetails{{ExecID:{},XXX_unrecognized:[],}}", d.exec_id)
            }
            Some(a) => anyhow::bail!("type with url {}: not found", a.type_url),
        };
        writeln!(tw, "{}\t{}", p.pid, info)?;
    }
    tw.flush()?;
    Ok(())
}

async fn exec(global: &GlobalArgs, args: ExecArgs) -> anyhow::Result<()> {
    let id = args.args.first().cloned().unwrap_or_default();
    if id.is_empty() {
        anyhow::bail!("container id must be provided");
    }
    let client = global.client().await?;
    let c = super::containers::load(&client, &id).await?;
    let mut spec = GoSpec::from_bytes(&c.spec.clone().unwrap_or_default().value)?;
    if !args.user.is_empty() {
        let req = containerd_client::services::v1::snapshots::MountsRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        };
        if c.snapshot_key.is_empty() {
            let root = spec.spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
            spec.with_user(&args.user, &root)?;
        } else {
            let mounts = client
                .call(client.snapshots().mounts(client.request(req)))
                .await
                .map_err(|s| errdefs::from_grpc(&s))?
                .mounts;
            let tmp = super::run::TempMount::new(mounts)?;
            spec.with_user(&args.user, &tmp.dir)?;
        }
    }
    if let Some(p) = spec.spec.process_mut() {
        p.set_terminal(Some(args.tty));
        p.set_args(Some(args.args[1..].to_vec()));
        if !args.cwd.is_empty() {
            p.set_cwd(args.cwd.clone().into());
        }
    }
    get_task(&client, &id).await?;
    let console = if args.tty {
        if !args.log_uri.is_empty() {
            anyhow::bail!("can't use log-uri with tty");
        }
        Some(RawConsole::new()?)
    } else {
        None
    };
    if !args.log_uri.is_empty() && !args.fifo_dir.is_empty() {
        anyhow::bail!("can't use log-uri with fifo-dir");
    }
    let mut tio = if !args.log_uri.is_empty() {
        let mut t = TaskIo::null();
        t.config = FifoConfig { stdout: args.log_uri.clone(), stderr: args.log_uri.clone(), ..Default::default() };
        t
    } else {
        TaskIo::fifos(&args.fifo_dir, &args.exec_id, args.tty, close_stdin(&client, &id, &args.exec_id))?
    };
    let process = spec.process_json()?.compact().into_bytes();
    let req = ExecProcessRequest {
        container_id: id.clone(),
        stdin: tio.config.stdin.clone(),
        stdout: tio.config.stdout.clone(),
        stderr: tio.config.stderr.clone(),
        terminal: tio.config.terminal,
        spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.to_string(), value: process }),
        exec_id: args.exec_id.clone(),
    };
    client.call(client.tasks().exec(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    tio.start_stdin();
    let res = async {
        let waiter = wait(&client, &id, &args.exec_id);
        let req = StartRequest { container_id: id.clone(), exec_id: args.exec_id.clone() };
        client.call(client.tasks().start(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        if args.detach {
            waiter.abort();
            return Ok(None);
        }
        let _helpers = match &console {
            Some(con) => vec![handle_console_resize(&client, con, &id, &args.exec_id)],
            None => forward_signals(&client, &id, &args.exec_id),
        };
        let code = waiter.await.map_err(|e| anyhow::anyhow!("{e}"))??;
        tio.wait().await;
        Ok::<_, anyhow::Error>(Some(code))
    }
    .await;
    if args.detach && res.is_ok() {
        std::mem::forget(tio);
        return Ok(());
    }
    // The deferred `process.Delete`; its error is dropped.
    let _ = delete_process(&client, &id, &args.exec_id, false).await;
    drop(console);
    match res? {
        Some(code) if code != 0 => Err(ExitStatus(code as i32).into()),
        _ => Ok(()),
    }
}

async fn attach(global: &GlobalArgs, args: IdArg) -> anyhow::Result<()> {
    let client = global.client().await?;
    let c = super::containers::load(&client, &args.id()).await?;
    let spec = GoSpec::from_bytes(&c.spec.clone().unwrap_or_default().value)?;
    let tty = spec.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let console = if tty { Some(RawConsole::new()?) } else { None };
    let p = get_task(&client, &c.id).await?;
    let config = FifoConfig { stdin: p.stdin, stdout: p.stdout, stderr: p.stderr, terminal: p.terminal };
    if config.stdin.is_empty() && config.stdout.is_empty() && config.stderr.is_empty() {
        anyhow::bail!("cannot attach, missing fifos");
    }
    let mut tio = TaskIo::attach(config)?;
    let waiter = wait(&client, &c.id, "");
    let _helpers = match &console {
        Some(con) => vec![handle_console_resize(&client, con, &c.id, "")],
        None => forward_signals(&client, &c.id, ""),
    };
    let code = waiter.await.map_err(|e| anyhow::anyhow!("{e}"))?;
    tio.wait().await;
    // The deferred `task.Delete`; its error is dropped.
    let _ = delete_task(&client, &c.id, false).await;
    drop(console);
    let code = code?;
    if code != 0 {
        return Err(ExitStatus(code as i32).into());
    }
    Ok(())
}

async fn metrics(global: &GlobalArgs, args: MetricsArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let id = args.args.first().cloned().unwrap_or_default();
    super::containers::load(&client, &id).await?;
    get_task(&client, &id).await?;
    let req = MetricsRequest { filters: vec![format!("id=={id}")] };
    let resp = client.call(client.tasks().metrics(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    let Some(m) = resp.metrics.into_iter().next() else {
        anyhow::bail!("no metrics received for {id}: not found");
    };
    let data = m.data.clone().unwrap_or_default();
    let decoded = crate::metrics::decode(&data)?;
    match args.format.as_str() {
        "table" => {
            let ts =
                crate::gotime::go_string_utc(super::proto_time(m.timestamp.as_ref().map(|t| (t.seconds, t.nanos))));
            let mut tw = crate::tabwriter::TabWriter::new(std::io::stdout().lock(), 1, 8, 4, ' ');
            writeln!(tw, "ID\tTIMESTAMP\t")?;
            write!(tw, "{}\t{}\t\n\n", m.id, ts)?;
            crate::metrics::write_table(&mut tw, &decoded)?;
            tw.flush()?;
            Ok(())
        }
        "json" => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", crate::metrics::indent2(&decoded))?;
            Ok(())
        }
        _ => anyhow::bail!("format must be table or json"),
    }
}
