//! runc, driven as containerd's go-runc drives it: global flags `--root
//! <root>/<namespace> --log <bundle>/log.json --log-format json`, each
//! command a child process reaped by the [`Reaper`], killed if the shim dies
//! (parent death signal), and errors that carry runc's own words: the last
//! `error` entry of `log.json` when there is one (as the Go shim's
//! `runtimeError` reads it), else the command's output.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::io::AsyncReadExt;

use crate::reaper::Reaper;

/// The runc state root of the Go shim when the options name none.
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("spawning {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("{binary} did not terminate successfully: exit status {status}: {output}")]
    Failed { binary: String, status: u32, output: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One runc binary on one state root, logging into one bundle.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: String,
    /// `--root`: `<options root or DEFAULT_ROOT>/<namespace>`.
    pub root: PathBuf,
    /// `--log`: `<bundle>/log.json`.
    pub log: PathBuf,
    pub systemd_cgroup: bool,
    pub criu: String,
}

/// The stdio runc's own process gets: `Null` for /dev/null, or the fds of a
/// container process's pipes.
pub enum RuncStdio {
    /// Capture stdout and stderr together, optionally feeding stdin.
    Capture(Option<Vec<u8>>),
    /// Hand these to runc (and through it to the container process).
    Process { stdin: Option<OwnedFd>, stdout: Option<OwnedFd>, stderr: Option<OwnedFd> },
}

impl Runc {
    pub fn new(binary: &str, root: &str, namespace: &str, bundle: &Path, systemd_cgroup: bool, criu: &str) -> Runc {
        let binary = if binary.is_empty() { "runc" } else { binary };
        let root = if root.is_empty() { DEFAULT_ROOT } else { root };
        Runc {
            binary: binary.to_string(),
            root: Path::new(root).join(namespace),
            log: bundle.join("log.json"),
            systemd_cgroup,
            criu: criu.to_string(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(&self.log).arg("--log-format").arg("json");
        if !self.criu.is_empty() {
            cmd.arg("--criu").arg(&self.criu);
        }
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args);
        // NOTIFY_SOCKET changes runc's behaviour; only systemd should set it.
        cmd.env_remove("NOTIFY_SOCKET");
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one async-signal-safe system call (prctl).
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                Ok(())
            });
        }
        cmd
    }

    /// Runs `runc <args>`; returns its output (captured runs) on success.
    pub async fn run(&self, reaper: &Reaper, args: &[&str], stdio: RuncStdio) -> Result<String, RuncError> {
        let mut cmd = self.command(args);
        let mut capture = None;
        let mut feed = None;
        match stdio {
            RuncStdio::Capture(input) => {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
                cmd.stdout(Stdio::from(w.try_clone()?)).stderr(Stdio::from(w));
                capture = Some(r);
                match input {
                    Some(data) => {
                        let (r, w) =
                            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
                        cmd.stdin(Stdio::from(r));
                        feed = Some((w, data));
                    }
                    None => {
                        cmd.stdin(Stdio::null());
                    }
                }
            }
            RuncStdio::Process { stdin, stdout, stderr } => {
                cmd.stdin(stdin.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stdout(stdout.map(Stdio::from).unwrap_or_else(Stdio::null));
                cmd.stderr(stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
            }
        }
        let child = cmd.spawn().map_err(|source| RuncError::Spawn { binary: self.binary.clone(), source })?;
        // Registered in the poll that spawned it (see reaper's notes).
        let exited = reaper.wait_for(child.id() as i32);
        // The child's ends of the pipes live in `cmd`: close them now so
        // that reading sees EOF when runc is done.
        drop(cmd);
        drop(child);
        if let Some((w, data)) = feed {
            let mut sender = tokio::net::unix::pipe::Sender::from_owned_fd(w)?;
            tokio::spawn(async move {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut sender, &data).await;
            });
        }
        let mut output = Vec::new();
        if let Some(r) = capture {
            let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(r)?;
            receiver.read_to_end(&mut output).await?;
        }
        let exit = exited.await.map_err(|_| std::io::Error::other("the reaper stopped"))?;
        let output = String::from_utf8_lossy(&output).into_owned();
        if exit.status != 0 {
            return Err(RuncError::Failed { binary: self.binary.clone(), status: exit.status, output });
        }
        Ok(output)
    }

    /// The last error runc logged, trimmed, if any (Go's
    /// `getLastRuntimeError`).
    pub fn last_error(&self) -> Option<String> {
        let data = std::fs::read_to_string(&self.log).ok()?;
        let mut last = None;
        for line in data.lines() {
            #[derive(serde::Deserialize)]
            struct Entry {
                #[serde(default)]
                level: String,
                #[serde(default)]
                msg: String,
            }
            if let Ok(e) = serde_json::from_str::<Entry>(line) {
                if e.level == "error" {
                    last = Some(e.msg.trim().to_string());
                }
            }
        }
        last
    }

    /// A failed command as the Go shim words it: `<what>: <runc's last
    /// logged error>`, or `<what>: <the command's error>`.
    pub fn runtime_error(&self, err: &RuncError, what: &str) -> String {
        match self.last_error() {
            Some(msg) if !msg.is_empty() => format!("{what}: {msg}"),
            _ => format!("{what}: {err}"),
        }
    }
}

/// Reads a pid file runc wrote.
pub fn read_pid_file(path: &Path) -> std::io::Result<i32> {
    let s = std::fs::read_to_string(path)?;
    s.trim().parse().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad pid file {s:?}")))
}
