//! A container process's stdio, as the Go shim's `pkg/process/io.go` and
//! the runc platform's `CopyConsole` do it.
//!
//! Without a terminal the process gets pipes (one per stream the client
//! named), and the shim copies between them and the client's FIFOs: stdout
//! and stderr FIFOs opened read-write, so that neither open nor write ever
//! fails for want of a reader (the client may open its end later); the
//! stdin FIFO opened for reading plus a write handle the shim holds, so the
//! process sees EOF only after `CloseIO` drops that handle and the client
//! closed its own. A stdout or stderr that is a regular file (or a
//! `file://` URI) is appended to.
//!
//! With a terminal, runc sends the pty master over a console socket; the
//! shim copies stdin to it and its output to stdout, and on the process's
//! exit drains what is left and stops.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::pipe::{pipe_with, PipeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The copy buffer: small, the shim's memory is what it is about.
const BUF: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("creating pipes: {0}")]
    Pipe(io::Error),
    #[error("containerd-shim: opening {path} failed: {source}")]
    Open { path: String, source: io::Error },
    #[error("unknown STDIO scheme {0}")]
    Scheme(String),
    #[error("failed to retrieve console master: {0}")]
    Console(io::Error),
}

/// The stdio paths a client named for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    fn target(uri: &str) -> Result<String, StdioError> {
        match uri.split_once("://") {
            None => Ok(uri.to_string()),
            Some(("fifo" | "file", path)) => Ok(path.to_string()),
            Some((scheme, _)) => Err(StdioError::Scheme(scheme.to_string())),
        }
    }
}

/// A process's pipes, before runc has them: the ends for runc (and the
/// process) and the ends the shim keeps.
pub struct Pipes {
    pub runc_stdin: Option<OwnedFd>,
    pub runc_stdout: Option<OwnedFd>,
    pub runc_stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    pipe_with(PipeFlags::CLOEXEC).map_err(|e| StdioError::Pipe(e.into()))
}

impl Pipes {
    /// A pipe per stream the client named (none for an empty name).
    pub fn new(paths: &StdioPaths) -> Result<Pipes, StdioError> {
        let mut p =
            Pipes { runc_stdin: None, runc_stdout: None, runc_stderr: None, stdin: None, stdout: None, stderr: None };
        if !paths.stdin.is_empty() {
            let (r, w) = pipe()?;
            p.runc_stdin = Some(r);
            p.stdin = Some(w);
        }
        if !paths.stdout.is_empty() {
            let (r, w) = pipe()?;
            p.runc_stdout = Some(w);
            p.stdout = Some(r);
        }
        if !paths.stderr.is_empty() {
            let (r, w) = pipe()?;
            p.runc_stderr = Some(w);
            p.stderr = Some(r);
        }
        Ok(p)
    }

    /// Starts copying (after runc has started the process and the runc
    /// ends are closed). Returns the output copies, to wait for before a
    /// delete, and the stdin write handle that `CloseIO` drops.
    pub fn copy(self, paths: &StdioPaths) -> Result<Copies, StdioError> {
        let mut outputs = Vec::new();
        for (src, path) in [(self.stdout, &paths.stdout), (self.stderr, &paths.stderr)] {
            let Some(src) = src else { continue };
            let dst = open_output(&StdioPaths::target(path)?)?;
            let src = pipe::Receiver::from_owned_fd(src).map_err(StdioError::Pipe)?;
            outputs.push(tokio::spawn(async move {
                let _ = copy_stream(src, dst).await;
            }));
        }
        let mut stdin_holder = None;
        if let (Some(dst), false) = (self.stdin, paths.stdin.is_empty()) {
            let (src, holder) = open_stdin(&StdioPaths::target(&paths.stdin)?)?;
            stdin_holder = Some(holder);
            let dst = pipe::Sender::from_owned_fd(dst).map_err(StdioError::Pipe)?;
            tokio::spawn(async move {
                let _ = copy_stream(src, Output::Pipe(dst)).await;
            });
        }
        Ok(Copies { outputs, stdin_holder })
    }
}

/// The copies of a process's output, and the stdin handle.
#[derive(Default)]
pub struct Copies {
    pub outputs: Vec<JoinHandle<()>>,
    pub stdin_holder: Option<OwnedFd>,
}

enum Output {
    Pipe(pipe::Sender),
    File(tokio::fs::File),
}

fn open_err(path: &str) -> impl FnOnce(io::Error) -> StdioError + '_ {
    move |source| StdioError::Open { path: path.to_string(), source }
}

fn is_fifo(path: &str) -> io::Result<bool> {
    Ok(std::fs::metadata(path)?.file_type().is_fifo())
}

fn open_output(path: &str) -> Result<Output, StdioError> {
    if is_fifo(path).unwrap_or(false) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(open_err(path))?;
        Ok(Output::Pipe(pipe::Sender::from_file(f).map_err(open_err(path))?))
    } else {
        if let Some(dir) = Path::new(path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = std::fs::OpenOptions::new().append(true).create(true).open(path).map_err(open_err(path))?;
        Ok(Output::File(tokio::fs::File::from_std(f)))
    }
}

/// The stdin FIFO for reading, and a write handle that keeps it from
/// reporting EOF until dropped.
fn open_stdin(path: &str) -> Result<(pipe::Receiver, OwnedFd), StdioError> {
    let r = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(open_err(path))?;
    let w =
        std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(open_err(path))?;
    Ok((pipe::Receiver::from_file(r).map_err(open_err(path))?, w.into()))
}

async fn copy_stream<R: AsyncRead + Unpin>(mut src: R, mut dst: Output) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        match &mut dst {
            Output::Pipe(p) => p.write_all(&buf[..n]).await?,
            Output::File(f) => f.write_all(&buf[..n]).await?,
        }
    }
    if let Output::File(f) = &mut dst {
        f.flush().await?;
    }
    Ok(())
}

/// A console socket runc connects to with the pty master.
pub struct ConsoleSocket {
    dir: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    /// A socket in a fresh directory under `XDG_RUNTIME_DIR` or the temp
    /// directory (as go-runc's `NewTempConsoleSocket`).
    pub fn new() -> io::Result<ConsoleSocket> {
        let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let mut dir;
        let mut n = 0u32;
        loop {
            dir = base.join(format!("pty{}-{}", std::process::id(), n));
            match std::fs::create_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        }
        let listener = std::os::unix::net::UnixListener::bind(dir.join("pty.sock"))?;
        Ok(ConsoleSocket { dir, listener })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("pty.sock")
    }

    /// The master runc sent (runc connected during `create`/`exec`, which
    /// has returned, so the connection is waiting in the backlog).
    pub fn receive_master(&self) -> Result<OwnedFd, StdioError> {
        self.listener.set_nonblocking(true).map_err(StdioError::Console)?;
        let (conn, _) = self.listener.accept().map_err(StdioError::Console)?;
        conn.set_nonblocking(false).map_err(StdioError::Console)?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(StdioError::Console)?;
        recv_fd(&conn).map_err(StdioError::Console)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn recv_fd(conn: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    // CMSG_SPACE(sizeof(int)) on Linux: 24 bytes, aligned.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec { iov_base: name.as_mut_ptr().cast(), iov_len: name.len() };
    // SAFETY: an all-zero msghdr is a valid empty header; every pointer set
    // below points into buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` describes valid, writable buffers; the fd is a connected
    // unix socket that we own for the duration of the call.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg`; CMSG_FIRSTHDR reads only within
    // msg_control/msg_controllen.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::other("recvfd: no control message"));
    }
    // SAFETY: `cmsg` is non-null and points into `control`.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Err(io::Error::other("recvfd: not SCM_RIGHTS"));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int; read it
    // unaligned from the message's data.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) };
    // SAFETY: the kernel installed this fd in our table for us; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pty master being copied: resized by `ResizePty`, drained and stopped
/// when its process exits.
pub struct Console {
    master: Arc<AsyncFd<OwnedFd>>,
    shutdown: watch::Sender<bool>,
}

impl Console {
    /// Starts copying `stdin` (FIFO) into the master and the master into
    /// `stdout`. Returns the console, the stdin write handle and the output
    /// copy.
    pub fn start(
        master: OwnedFd,
        paths: &StdioPaths,
    ) -> Result<(Console, Option<OwnedFd>, JoinHandle<()>), StdioError> {
        rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).map_err(|e| StdioError::Console(e.into()))?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
        // and the same for the AsyncFd's whole life.
        let master =
            unsafe { AsyncFd::register(master) }.map_err(|e| StdioError::Console(io::Error::other(e.to_string())))?;
        let master = Arc::new(master);
        let (shutdown, mut stopped) = watch::channel(false);
        let mut holder = None;
        if !paths.stdin.is_empty() {
            let (mut src, h) = open_stdin(&StdioPaths::target(&paths.stdin)?)?;
            holder = Some(h);
            let m = master.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; BUF];
                while let Ok(n) = src.read(&mut buf).await {
                    if n == 0 || write_fd(&m, &buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut dst =
            if paths.stdout.is_empty() { None } else { Some(open_output(&StdioPaths::target(&paths.stdout)?)?) };
        let m = master.clone();
        let output = tokio::spawn(async move {
            let mut buf = vec![0u8; BUF];
            let mut draining = false;
            loop {
                let n = if draining {
                    match rustix::io::read(m.get_ref(), &mut buf) {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        r = read_fd(&m, &mut buf) => match r { Ok(n) => n, Err(_) => break },
                        _ = stopped.changed() => { draining = true; continue; }
                    }
                };
                if n == 0 {
                    break;
                }
                let written = match &mut dst {
                    Some(Output::Pipe(p)) => p.write_all(&buf[..n]).await,
                    Some(Output::File(f)) => f.write_all(&buf[..n]).await,
                    None => Ok(()),
                };
                if written.is_err() {
                    break;
                }
            }
        });
        Ok((Console { master, shutdown }, holder, output))
    }

    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let ws = rustix::termios::Winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(self.master.get_ref().as_fd(), ws).map_err(io::Error::from)
    }

    /// The process exited: copy what is buffered, then stop.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

async fn read_fd(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| rustix::io::read(f.get_ref(), &mut *buf).map_err(io::Error::from)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn write_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| rustix::io::write(f.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
