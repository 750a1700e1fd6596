//! `containerd-shim-runc-v2`, the project's own: a drop-in for containerd
//! 1.6's Go runc shim, speaking the shim v2 task API over ttrpc
//! (`crated-shim-protocol`) and running containers with runc.
//!
//! Three ways to run, as the Go shim's `shim.Run` has them:
//! - `start`: pick the socket address (grouping containers that ask for
//!   it), bind it, spawn the serving shim detached with the socket as fd 3,
//!   print the address;
//! - `delete`: clean up after a shim that died (`runc delete --force`,
//!   unmount the rootfs), print a `DeleteResponse`;
//! - no action: serve the task API until `Shutdown` finds no container left.
//!
//! The server runs on a current-thread tokio runtime: one thread, so the
//! shim stays small beside the containers it watches.

mod address;
mod cgroup;
mod events;
mod flags;
mod mount;
mod reaper;
mod runc;
mod service;
mod stdio;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use prost::Message;
use shim_protocol::task::{serve_task, DeleteResponse, TASK_SERVICE};
use shim_protocol::ttrpc::Server;
use tokio::signal::unix::{signal, SignalKind};

use crate::address::{group_of, socket_address, socket_path, write_atomic, SOCKET_DIR};
use crate::flags::Flags;

/// Writes one line to the shim's log (the bundle's `log` FIFO once the
/// server runs; the daemon copies it into its own log). Never fails: a full
/// or closed log loses lines, it does not stop the shim.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "containerd-shim-runc-v2 (crated) pid={}: {}", std::process::id(), format_args!($($arg)*));
    }};
}

const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";

fn main() {
    let flags = match Flags::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(flags) {
        // The Go shim's words: "<runtime name>: <error>".
        let _ = write!(std::io::stderr(), "io.containerd.runc.v2: {e:#}");
        std::process::exit(1);
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.version {
        println!("{}:", std::env::args().next().unwrap_or_default());
        println!("  Version:  {} (crated)", env!("CARGO_PKG_VERSION"));
        println!();
        return Ok(());
    }
    if flags.namespace.is_empty() {
        bail!("shim namespace cannot be empty");
    }
    match flags.action.as_deref() {
        Some("start") => start(&flags),
        Some("delete") => delete(&flags),
        None => serve(&flags),
        Some(other) => bail!("unknown action {other:?}"),
    }
}

/// The `start` action.
fn start(flags: &Flags) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    let config = std::fs::read(cwd.join("config.json")).context("open config.json")?;
    let group = group_of(&config, &flags.id).context("read config.json")?;
    let address = socket_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address).expect("a unix:// address");

    std::fs::create_dir_all(SOCKET_DIR).context(SOCKET_DIR)?;
    let listener = match std::os::unix::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // A shim of this group is serving (or died and left its socket).
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                write_atomic(&cwd, "address", address.as_bytes()).context("write existing socket for shim")?;
                print!("{address}");
                return Ok(());
            }
            std::fs::remove_file(&path).context("remove pre-existing socket")?;
            std::os::unix::net::UnixListener::bind(&path).context("try create new shim socket 2x")?
        }
        Err(e) => return Err(e).context("create new shim socket"),
    };
    let started = (|| -> anyhow::Result<u32> {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        write_atomic(&cwd, "address", address.as_bytes())?;
        let pid = spawn_server(flags, &cwd, listener.into())?;
        let mut opts = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut opts);
        if !opts.is_empty() {
            let any = prost_types::Any::decode(opts.as_slice()).context("runtime options")?;
            if any.type_url.ends_with(shim_protocol::runc::OPTIONS_TYPE_URL) {
                let o = shim_protocol::runc::Options::decode(any.value.as_slice()).context("runc options")?;
                if !o.shim_cgroup.is_empty() {
                    cgroup::add_pid(&o.shim_cgroup, pid)
                        .with_context(|| format!("failed to join cgroup {}", o.shim_cgroup))?;
                }
            }
        }
        adjust_oom_score(pid).context("failed to adjust OOM score for shim")?;
        Ok(pid)
    })();
    match started {
        Ok(_) => {
            print!("{address}");
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Spawns the serving shim: same binary, same bundle, its own session,
/// stdio on /dev/null, the listening socket as fd 3.
fn spawn_server(flags: &Flags, cwd: &Path, listener: OwnedFd) -> anyhow::Result<u32> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: runs in the forked child before exec, making only
    // async-signal-safe system calls (setsid, dup2, fcntl) on fds the child
    // inherited; `listener` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            if fd == 3 {
                let three = std::os::fd::BorrowedFd::borrow_raw(3);
                rustix::io::fcntl_setfd(three, rustix::io::FdFlags::empty())?;
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawn the shim server")?;
    drop(listener);
    Ok(child.id())
}

/// The shim's OOM score: its daemon's plus one, so the kernel kills the
/// shim before the daemon.
fn adjust_oom_score(pid: u32) -> std::io::Result<()> {
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get()).unwrap_or(1);
    let score: i32 = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj"))?.trim().parse().unwrap_or(0);
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), (score + 1).min(1000).to_string())
}

/// The `delete` action: what is left of a container whose shim died.
fn delete(flags: &Flags) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    let bundle: PathBuf = match cwd.parent() {
        Some(parent) => parent.join(&flags.id),
        None => PathBuf::from(&flags.bundle),
    };
    let (binary, root) = service::read_options(&bundle);
    let runc = runc::Runc::new(&binary, &root, &flags.namespace, &bundle, false, "");
    let out = runc.command(&["delete", "--force", &flags.id]).stdin(Stdio::null()).output();
    match out {
        Ok(o) if !o.status.success() => {
            log!("failed to remove runc container: {}", String::from_utf8_lossy(&o.stderr).trim())
        }
        Err(e) => log!("failed to remove runc container: {e}"),
        Ok(_) => {}
    }
    if let Err(e) = mount::unmount_all(&bundle.join("rootfs")) {
        log!("failed to cleanup rootfs mount: {e}");
    }
    let pid = runc::read_pid_file(&bundle.join("init.pid")).unwrap_or(0);
    let resp = DeleteResponse {
        pid: pid as u32,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(events::timestamp(SystemTime::now())),
    };
    std::io::stdout().write_all(&resp.encode_to_vec())?;
    Ok(())
}

/// Points stderr at the bundle's `log` FIFO, which the daemon reads.
fn open_log() {
    let log = std::fs::OpenOptions::new().write(true).custom_flags_nonblock().open("log");
    if let Ok(f) = log {
        let _ = rustix::stdio::dup2_stderr(&f);
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NONBLOCK)
    }
}

/// Serving: the task API on the inherited socket until shut down.
fn serve(flags: &Flags) -> anyhow::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).context("set subreaper")?;
    open_log();
    let listener = if flags.socket.is_empty() {
        // SAFETY: the start action hands the bound, listening socket over as
        // fd 3 and nothing else in this process uses that number.
        unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) }
    } else {
        std::os::unix::net::UnixListener::bind(&flags.socket).with_context(|| format!("listen on {}", flags.socket))?
    };
    listener.set_nonblocking(true)?;
    let own_address = std::fs::read_to_string("address").ok();
    let ttrpc_address = std::env::var(TTRPC_ADDRESS_ENV).unwrap_or_else(|_| format!("{}.ttrpc", flags.address));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (reaper, exits) = reaper::Reaper::start()?;
        let publisher = events::Publisher::start(ttrpc_address, flags.namespace.clone());
        let (shutdown, mut shutdown_requested) = tokio::sync::watch::channel(false);
        let shim = service::Shim::new(&flags.namespace, reaper, publisher.clone(), shutdown);
        tokio::spawn(shim.clone().handle_exits(exits));
        let server = Server::new().register(TASK_SERVICE, serve_task(shim));
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let serving = tokio::spawn({
            let server = server.clone();
            async move { server.serve(listener).await }
        });
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        log!("serving the task API");
        tokio::select! {
            _ = shutdown_requested.wait_for(|s| *s) => {}
            _ = term.recv() => log!("caught SIGTERM"),
            _ = int.recv() => log!("caught SIGINT"),
        }
        if tokio::time::timeout(Duration::from_secs(5), publisher.flush()).await.is_err() {
            log!("publisher not closed");
        }
        // The answer to `Shutdown` must reach the daemon before the process
        // ends, and the daemon's `Delete` waits for this process to hang up:
        // exit as soon as every answer is written. A call that never
        // answers (a client's `Wait` on a process that cannot end) holds the
        // exit back for at most a second.
        if tokio::time::timeout(Duration::from_secs(1), server.answered()).await.is_err() {
            log!("calls still unanswered at exit");
        }
        serving.abort();
        anyhow::Ok(())
    })?;
    if let Some(path) = own_address.as_deref().and_then(socket_path) {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
