//! A CRI container's stdio, as containerd 1.6's `pkg/cri/io`: FIFOs in the
//! container's volatile directory handed to the task (`<id>-stdin`,
//! `<id>-stdout`, `<id>-stderr`), read by this plugin, written to the
//! container's log in the CRI log format
//! (`<RFC3339Nano> <stream> <P|F> <content>`, lines longer than
//! `max_container_log_line_size` split into partial `P` entries) and fanned
//! out to whoever attached.
//!
//! The attach API for the streaming server ([`ContainerIo::attach`]):
//! an [`AttachIo`] carries a receiver of each output stream (raw bytes as
//! the container wrote them, from the moment of attaching, `None` at the
//! end of the stream) and, when the container was created with `stdin`, a
//! [`Stdin`] to write to; with `stdin_once`, closing that `Stdin` closes
//! the container's stdin for good (containerd's `StdinOnce`).
//!
//! Each FIFO is read on a thread of its own with blocking reads: opening a
//! FIFO for reading blocks until the shim opens its end, which is what
//! containerd's fifo package waits for too, and a thread needs no reactor.

use std::{
    fs::File,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::{broadcast, watch};

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("failed to create fifo {path:?}: {source}")]
    Fifo { path: PathBuf, source: rustix::io::Errno },
    #[error("failed to open {path:?}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("the container has no stdin")]
    NoStdin,
    #[error("failed to write stdin: {0}")]
    Write(std::io::Error),
}

/// The stream names of the CRI log format.
pub const STDOUT: &str = "stdout";
pub const STDERR: &str = "stderr";
/// How much output a subscriber may lag behind before losing chunks.
const FANOUT_CHUNKS: usize = 256;
const READ_SIZE: usize = 32 * 1024;

/// Creates a FIFO (mode 0700, as containerd's) unless it exists.
pub fn mkfifo(path: &Path) -> Result<(), IoError> {
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o700),
        0,
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(source) => Err(IoError::Fifo { path: path.to_path_buf(), source }),
    }
}

/// Unblocks a reader still waiting in `open` for a writer that will never
/// come (a task that failed to start): an open for writing that does not
/// block completes the reader's open, and closing it is its EOF.
pub fn release_reader(path: &Path) {
    let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc_o_nonblock()).open(path);
}

fn libc_o_nonblock() -> i32 {
    // O_NONBLOCK's value, from rustix's flags (same bits as libc's).
    rustix::fs::OFlags::NONBLOCK.bits() as i32
}

/// Go's `time.RFC3339Nano` of now, in UTC: trailing zeros of the fraction
/// dropped, as the kubelet's log parser expects.
pub fn rfc3339_nano_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    crated_plugin_api::duration::rfc3339_nano(d.as_secs() as i64, d.subsec_nanos())
}

/// Splits a stream into CRI log entries: full lines (`F`, without their
/// `\n` or `\r\n`) and, past `max_len` bytes (none when `max_len <= 0`), or
/// for what is left unterminated at the end, partial ones (`P`).
pub struct LineSplitter {
    buf: Vec<u8>,
    max_len: usize,
}

impl LineSplitter {
    pub fn new(max_len: i64) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            max_len: usize::try_from(max_len).ok().filter(|m| *m > 0).unwrap_or(usize::MAX),
        }
    }

    /// The entries completed by `data`, as `(partial, content)`.
    pub fn push(&mut self, data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.push((false, line));
                continue;
            }
            self.buf.push(b);
            if self.buf.len() > self.max_len {
                let rest = self.buf.split_off(self.max_len);
                out.push((true, std::mem::replace(&mut self.buf, rest)));
            }
        }
        out
    }

    /// What is left at the end of the stream: a partial entry.
    pub fn finish(&mut self) -> Option<(bool, Vec<u8>)> {
        (!self.buf.is_empty()).then(|| (true, std::mem::take(&mut self.buf)))
    }
}

/// The container's log file, reopened on request (ReopenContainerLog).
pub struct LogFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl LogFile {
    pub fn open(path: &Path) -> Result<LogFile, IoError> {
        let log = LogFile { path: path.to_path_buf(), file: Mutex::new(None) };
        log.reopen()?;
        Ok(log)
    }

    pub fn reopen(&self) -> Result<(), IoError> {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0640()
            .open(&self.path)
            .map_err(|source| IoError::Open { path: self.path.clone(), source })?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        Ok(())
    }

    fn write_entry(&self, stream: &str, partial: bool, content: &[u8]) {
        let mut line = format!("{} {stream} {} ", rfc3339_nano_now(), if partial { "P" } else { "F" }).into_bytes();
        line.extend_from_slice(content);
        line.push(b'\n');
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            // A failed write is dropped; the stream must still be drained.
            let _ = f.write_all(&line);
        }
    }
}

trait Mode0640 {
    fn mode_0640(&mut self) -> &mut Self;
}

impl Mode0640 for std::fs::OpenOptions {
    fn mode_0640(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o640)
    }
}

/// The FIFO paths of one process's stdio (empty: not used).
#[derive(Debug, Clone, Default)]
pub struct FifoSet {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

impl FifoSet {
    /// Creates `<dir>/<id>-{stdin,stdout,stderr}`: stdin only if asked,
    /// stderr only without a terminal (a tty merges it into stdout).
    pub fn create(dir: &Path, id: &str, stdin: bool, tty: bool) -> Result<FifoSet, IoError> {
        let make = |name: &str| -> Result<String, IoError> {
            let p = dir.join(format!("{id}-{name}"));
            mkfifo(&p)?;
            Ok(p.display().to_string())
        };
        Ok(FifoSet {
            stdin: if stdin { make("stdin")? } else { String::new() },
            stdout: make("stdout")?,
            stderr: if tty { String::new() } else { make("stderr")? },
        })
    }

    /// Releases readers still blocked in open and removes the FIFOs.
    pub fn remove(&self) {
        for p in [&self.stdout, &self.stderr] {
            if !p.is_empty() {
                release_reader(Path::new(p));
            }
        }
        for p in [&self.stdin, &self.stdout, &self.stderr] {
            if !p.is_empty() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Reads a FIFO to its end on a thread of its own, handing each chunk to
/// `sink`; `done` is called once at the end.
pub fn spawn_reader(path: String, mut sink: impl FnMut(&[u8]) + Send + 'static, done: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // Blocks until the shim opens its end (or release_reader does).
        if let Ok(mut f) = File::open(&path) {
            let mut buf = vec![0u8; READ_SIZE];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sink(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        done();
    });
}

/// One chunk of output to an attached client; `None` ends the stream.
pub type Chunk = Option<Arc<Vec<u8>>>;

/// The stdio of a started container: the FIFOs, the log, the fan-out.
pub struct ContainerIo {
    pub fifos: FifoSet,
    pub tty: bool,
    stdin_once: bool,
    /// Our write end of the stdin FIFO (opened read-write, so that it never
    /// blocks and the shim sees no EOF until we close it).
    stdin: Mutex<Option<File>>,
    stdout: broadcast::Sender<Chunk>,
    stderr: broadcast::Sender<Chunk>,
    log: Option<Arc<LogFile>>,
    /// How many output streams are still open.
    open_streams: watch::Sender<usize>,
}

/// What an attaching client gets (see the module doc).
pub struct AttachIo {
    pub stdin: Option<Stdin>,
    pub stdout: broadcast::Receiver<Chunk>,
    /// `None` for a tty, whose stderr is its stdout.
    pub stderr: Option<broadcast::Receiver<Chunk>>,
    pub tty: bool,
}

/// The container's stdin, for one attached client.
pub struct Stdin {
    io: Arc<ContainerIo>,
}

impl Stdin {
    /// Writes to the container's stdin (blocking while the pipe is full,
    /// off the async runtime).
    pub async fn write(&self, data: Vec<u8>) -> Result<(), IoError> {
        let io = self.io.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = io.stdin.lock().unwrap_or_else(|e| e.into_inner());
            let f = guard.as_mut().ok_or(IoError::NoStdin)?;
            f.write_all(&data).map_err(IoError::Write)
        })
        .await
        .map_err(|e| IoError::Write(std::io::Error::other(e.to_string())))?
    }

    /// The client is done with stdin: with `stdin_once` our end of the
    /// container's stdin is closed for good, and true is returned: the
    /// caller then closes the shim's end too (Tasks CloseIO), which holds
    /// the FIFO open for writing until told, so that the process sees EOF.
    /// Otherwise stdin stays open for the next client.
    pub fn close(self) -> bool {
        if self.io.stdin_once {
            self.io.close_stdin();
        }
        self.io.stdin_once
    }
}

impl ContainerIo {
    /// Opens the container's side of `fifos` and starts copying output to
    /// the log at `log_path` (none when empty) and to subscribers.
    pub fn start(
        fifos: FifoSet,
        tty: bool,
        stdin_once: bool,
        log_path: &str,
        max_line: i64,
    ) -> Result<Arc<ContainerIo>, IoError> {
        let stdin = if fifos.stdin.is_empty() {
            None
        } else {
            Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&fifos.stdin)
                    .map_err(|source| IoError::Open { path: fifos.stdin.clone().into(), source })?,
            )
        };
        let log = if log_path.is_empty() { None } else { Some(Arc::new(LogFile::open(Path::new(log_path))?)) };
        let streams = 1 + usize::from(!fifos.stderr.is_empty());
        let io = Arc::new(ContainerIo {
            fifos,
            tty,
            stdin_once,
            stdin: Mutex::new(stdin),
            stdout: broadcast::channel(FANOUT_CHUNKS).0,
            stderr: broadcast::channel(FANOUT_CHUNKS).0,
            log,
            open_streams: watch::channel(streams).0,
        });
        for (path, name, tx) in
            [(&io.fifos.stdout, STDOUT, io.stdout.clone()), (&io.fifos.stderr, STDERR, io.stderr.clone())]
        {
            if path.is_empty() {
                continue;
            }
            let log = io.log.clone();
            let done_log = log.clone();
            let tx_done = tx.clone();
            let open = io.open_streams.clone();
            let shared = Arc::new(Mutex::new(LineSplitter::new(max_line)));
            let shared_end = shared.clone();
            spawn_reader(
                path.clone(),
                move |data| {
                    if let Some(log) = &log {
                        for (partial, content) in shared.lock().unwrap_or_else(|e| e.into_inner()).push(data) {
                            log.write_entry(name, partial, &content);
                        }
                    }
                    // No receiver is fine.
                    let _ = tx.send(Some(Arc::new(data.to_vec())));
                },
                move || {
                    if let (Some(log), Some((partial, content))) =
                        (&done_log, shared_end.lock().unwrap_or_else(|e| e.into_inner()).finish())
                    {
                        log.write_entry(name, partial, &content);
                    }
                    let _ = tx_done.send(None);
                    open.send_modify(|n| *n = n.saturating_sub(1));
                },
            );
        }
        Ok(io)
    }

    /// Subscribes to the output from now on, with stdin if there is one.
    pub fn attach(self: &Arc<Self>) -> AttachIo {
        let has_stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        AttachIo {
            stdin: has_stdin.then(|| Stdin { io: self.clone() }),
            stdout: self.stdout.subscribe(),
            stderr: (!self.tty).then(|| self.stderr.subscribe()),
            tty: self.tty,
        }
    }

    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn reopen_log(&self) -> Result<(), IoError> {
        match &self.log {
            Some(log) => log.reopen(),
            None => Ok(()),
        }
    }

    /// Waits until every output stream reached its end (the shim closed
    /// them after the process exited), at most `limit`.
    pub async fn drained(&self, limit: std::time::Duration) {
        let mut rx = self.open_streams.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }

    /// Closes stdin, releases readers and removes the FIFOs.
    pub fn close(&self) {
        self.close_stdin();
        self.fifos.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_go_rfc3339_nano() {
        use crated_plugin_api::duration::rfc3339_nano;
        assert_eq!(rfc3339_nano(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(1_700_000_000, 120_000_000), "2023-11-14T22:13:20.12Z");
        assert_eq!(rfc3339_nano(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert!(rfc3339_nano_now().ends_with('Z'));
    }

    /// The shim's side played by the test: output written to the stdout
    /// FIFO reaches an attached client and the log; what the client writes
    /// reaches the stdin FIFO; with stdin_once its close is the end.
    #[tokio::test]
    async fn attached_clients_see_output_and_feed_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let fifos = FifoSet::create(dir.path(), "c", true, false).unwrap();
        let log = dir.path().join("logs/c.log");
        let io = ContainerIo::start(fifos.clone(), false, true, &log.display().to_string(), 0).unwrap();
        let mut attached = io.attach();
        assert!(attached.stderr.is_some() && !attached.tty);

        let mut stdout = std::fs::OpenOptions::new().write(true).open(&fifos.stdout).unwrap();
        let stderr = std::fs::OpenOptions::new().write(true).open(&fifos.stderr).unwrap();
        stdout.write_all(b"hello\nwor").unwrap();
        let chunk = attached.stdout.recv().await.unwrap().expect("a chunk");
        assert_eq!(chunk.as_slice(), b"hello\nwor");
        drop((stdout, stderr));
        assert!(attached.stdout.recv().await.unwrap().is_none(), "the end of the stream");
        io.drained(std::time::Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&log).unwrap();
        let entries: Vec<Vec<&str>> = text.lines().map(|l| l.splitn(4, ' ').skip(1).collect()).collect();
        assert_eq!(entries, vec![vec!["stdout", "F", "hello"], vec!["stdout", "P", "wor"]]);

        let mut shim_stdin =
            std::fs::OpenOptions::new().read(true).custom_flags(libc_o_nonblock()).open(&fifos.stdin).unwrap();
        let stdin = attached.stdin.take().expect("stdin was asked for");
        stdin.write(b"typed".to_vec()).await.unwrap();
        let mut buf = [0u8; 16];
        let n = shim_stdin.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"typed");
        assert!(stdin.close(), "stdin_once: the shim's end is to be closed too");
        assert!(io.attach().stdin.is_none(), "stdin_once: closed for good");
        io.close();
        assert!(!Path::new(&fifos.stdout).exists());
    }

    #[test]
    fn lines_split_at_the_limit_and_at_the_end() {
        let mut s = LineSplitter::new(4);
        let out = s.push(b"ab\r\nabcdefghij\nxy");
        let got: Vec<(bool, &[u8])> = out.iter().map(|(p, c)| (*p, c.as_slice())).collect();
        assert_eq!(got, vec![(false, &b"ab"[..]), (true, b"abcd"), (true, b"efgh"), (false, b"ij")],);
        assert_eq!(s.finish(), Some((true, b"xy".to_vec())));
        assert_eq!(s.finish(), None);
        let mut unlimited = LineSplitter::new(-1);
        assert_eq!(unlimited.push(&[b'x'; 100_000]).len(), 0);
    }
}
