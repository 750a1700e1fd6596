//! A task's standard streams as containerd's `cio` gives them to ctr: three
//! FIFOs in a fresh temporary directory (`<fifo-dir>/<random>/<id>-stdin`,
//! `-stdout`, `-stderr`; no stderr with a terminal) whose paths go to the
//! runtime, and copies between them and ctr's own stdin, stdout and stderr.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// containerd's `defaults.DefaultFIFODir`.
pub const DEFAULT_FIFO_DIR: &str = "/run/containerd/fifo";

/// The FIFO paths sent to the runtime (empty: not connected).
#[derive(Debug, Clone, Default)]
pub struct FifoConfig {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Streams being copied; the directory goes when this is closed.
pub struct TaskIo {
    pub config: FifoConfig,
    dir: Option<PathBuf>,
    stdin: Option<JoinHandle<()>>,
    pending_stdin: Option<(pipe::Sender, PendingEof)>,
    outputs: Vec<JoinHandle<()>>,
}

type PendingEof = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// Go's `os.MkdirTemp(root, "")`: a new directory with a random numeric name.
fn mkdir_temp(root: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    use std::os::unix::fs::DirBuilderExt;
    for _ in 0..10_000 {
        let mut b = [0u8; 4];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut b);
        }
        let dir = root.join(u32::from_le_bytes(b).to_string());
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary directory name"))
}

fn mkfifo(path: &Path) -> io::Result<()> {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(0o700)).map_err(io::Error::from)
}

/// containerd/fifo's `O_CREAT`: a FIFO at `path` unless something is
/// there already; a failure reads `error creating fifo <path>: <os error>`.
fn ensure_fifo(path: &str) -> io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    mkfifo(Path::new(path))
        .map_err(|e| io::Error::new(e.kind(), format!("error creating fifo {path}: {}", crate::errdefs::os_text(&e))))
}

async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, mut w: W) {
    // A reader or writer that goes away ends the copy, as in Go.
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = tokio::io::AsyncWriteExt::flush(&mut w).await;
}

/// Copy a FIFO to `w` once its writer (the runtime) has opened it: a
/// blocking open, as containerd's fifo package does, so the copy does not
/// see end-of-file before the runtime has connected.
async fn copy_fifo<W: AsyncWrite + Unpin>(path: String, w: W) {
    let opened = tokio::task::spawn_blocking(move || std::fs::File::open(path)).await;
    let Ok(Ok(file)) = opened else { return };
    let Ok(r) = pipe::Receiver::from_file(file) else { return };
    copy(r, w).await;
}

impl TaskIo {
    /// No streams at all (`cio.NullIO`).
    pub fn null() -> TaskIo {
        TaskIo { config: FifoConfig::default(), dir: None, stdin: None, pending_stdin: None, outputs: Vec::new() }
    }

    /// `cio.NewCreator(cio.WithStreams(...), cio.WithFIFODir(dir))`: FIFOs
    /// for `id` connected to this process's stdio. `on_stdin_eof` runs when
    /// ctr's stdin ends (it closes the task's stdin).
    pub fn fifos(
        fifo_dir: &str,
        id: &str,
        terminal: bool,
        on_stdin_eof: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> io::Result<TaskIo> {
        let root = if fifo_dir.is_empty() { DEFAULT_FIFO_DIR } else { fifo_dir };
        let dir = mkdir_temp(Path::new(root))?;
        let path = |s: &str| dir.join(format!("{id}-{s}"));
        let config = FifoConfig {
            stdin: path("stdin").display().to_string(),
            stdout: path("stdout").display().to_string(),
            stderr: if terminal { String::new() } else { path("stderr").display().to_string() },
            terminal,
        };
        let mut tio =
            TaskIo { config: config.clone(), dir: Some(dir), stdin: None, pending_stdin: None, outputs: Vec::new() };
        mkfifo(Path::new(&config.stdin))?;
        // Read-write: the open does not wait for the runtime to open its
        // end. The copy starts once the task exists ([`TaskIo::start_stdin`]):
        // input that ended before would be dropped with the last open end,
        // and the runtime would wait for a writer forever.
        tio.pending_stdin =
            Some((pipe::OpenOptions::new().read_write(true).open_sender(&config.stdin)?, Box::pin(on_stdin_eof)));
        mkfifo(Path::new(&config.stdout))?;
        tio.outputs.push(tokio::spawn(copy_fifo(config.stdout.clone(), tokio::io::stdout())));
        if !terminal {
            mkfifo(Path::new(&config.stderr))?;
            tio.outputs.push(tokio::spawn(copy_fifo(config.stderr.clone(), tokio::io::stderr())));
        }
        Ok(tio)
    }

    /// `cio.NewAttach(cio.WithStdio)`: connect to the FIFOs a task was
    /// created with.
    pub fn attach(config: FifoConfig) -> io::Result<TaskIo> {
        let mut tio =
            TaskIo { config: config.clone(), dir: None, stdin: None, pending_stdin: None, outputs: Vec::new() };
        if !config.stdin.is_empty() {
            let stdin_fifo = pipe::OpenOptions::new().read_write(true).open_sender(&config.stdin)?;
            tio.stdin = Some(tokio::spawn(copy(tokio::io::stdin(), stdin_fifo)));
        }
        if !config.stdout.is_empty() {
            tio.outputs.push(tokio::spawn(copy_fifo(config.stdout.clone(), tokio::io::stdout())));
        }
        if !config.terminal && !config.stderr.is_empty() {
            tio.outputs.push(tokio::spawn(copy_fifo(config.stderr.clone(), tokio::io::stderr())));
        }
        Ok(tio)
    }

    /// `ctr shim exec`'s `prepareStdio`: FIFOs at the given paths (made
    /// when missing), ctr's stdin copied into the first once
    /// [`TaskIo::start_stdin`] is called (after the shim has opened it), the
    /// second (and the third, without a terminal) copied out;
    /// [`TaskIo::wait`] waits for the output copies. The directory holding
    /// them is the caller's.
    pub fn existing_fifos(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> io::Result<TaskIo> {
        let config =
            FifoConfig { stdin: stdin.to_string(), stdout: stdout.to_string(), stderr: stderr.to_string(), terminal };
        let mut tio = TaskIo { config, dir: None, stdin: None, pending_stdin: None, outputs: Vec::new() };
        for path in [stdin, stdout, stderr] {
            ensure_fifo(path)?;
        }
        let stdin_fifo = pipe::OpenOptions::new().read_write(true).open_sender(stdin)?;
        tio.pending_stdin = Some((stdin_fifo, Box::pin(async {})));
        tio.outputs.push(tokio::spawn(copy_fifo(stdout.to_string(), tokio::io::stdout())));
        if !terminal {
            tio.outputs.push(tokio::spawn(copy_fifo(stderr.to_string(), tokio::io::stderr())));
        }
        Ok(tio)
    }

    /// Start copying ctr's stdin to the task, once the runtime has the FIFO.
    pub fn start_stdin(&mut self) {
        if let Some((fifo, on_eof)) = self.pending_stdin.take() {
            self.stdin = Some(tokio::spawn(async move {
                copy(tokio::io::stdin(), fifo).await;
                on_eof.await;
            }));
        }
    }

    /// `IO.Wait`: until the runtime has closed the output FIFOs and all
    /// output is copied.
    pub async fn wait(&mut self) {
        for h in self.outputs.drain(..) {
            let _ = h.await;
        }
    }

    /// `IO.Close`: stop copying and remove the FIFO directory.
    pub fn close(&mut self) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        for h in self.outputs.drain(..) {
            h.abort();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for TaskIo {
    fn drop(&mut self) {
        self.close();
    }
}
