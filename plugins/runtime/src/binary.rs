//! Finding and running a shim binary, as containerd 1.6's `runtime/v2`
//! does: the runtime name `io.containerd.runc.v2` names the binary
//! `containerd-shim-runc-v2`, looked up next to the running daemon first
//! (so the project's own shim wins over another one on PATH), then on
//! PATH; an absolute path is used as it is.
//!
//! `start` and `delete` are short-lived runs of the binary: `start` prints
//! the address of the shim it leaves running, `delete` (after the shim
//! died) cleans the task up and prints a `DeleteResponse`. Both run on a
//! blocking thread with a deadline, in their own process group so that a
//! signal meant for the daemon does not reach the shim.

use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crated_plugin_api::Error;

use crate::{
    bundle::Bundle,
    error::{Result, RuntimeError},
};

/// How long a `start` or `delete` run of a shim binary may take.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// `containerd-shim-<name>-<version>` for `<prefix>.<name>.<version>`, or
/// `None` for a name without two dot-separated parts.
pub fn binary_name(runtime: &str) -> Option<String> {
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts[0].is_empty() {
        return None;
    }
    Some(format!("containerd-shim-{}-{}", parts[parts.len() - 2], parts[parts.len() - 1]))
}

/// The shim binary for a runtime name or absolute path, with containerd's
/// texts for what cannot be resolved.
pub fn resolve(runtime: &str, daemon_dir: Option<&Path>) -> Result<PathBuf> {
    if runtime.is_empty() {
        return Err(Error::unknown("no runtime name").into());
    }
    let path = Path::new(runtime);
    if path.is_absolute() {
        return match std::fs::metadata(path) {
            Ok(_) => Ok(path.to_path_buf()),
            Err(e) => Err(RuntimeError::io("invalid custom binary path", e)),
        };
    }
    let Some(name) = binary_name(runtime) else {
        return Err(Error::unknown(format!(
            "invalid runtime name {runtime}, correct runtime name should be either format like \
             `io.containerd.runc.v1` or a full path to the binary"
        ))
        .into());
    };
    let beside = daemon_dir.map(|d| d.join(&name)).filter(|p| is_executable(p));
    let on_path = || {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(&name)).find(|p| is_executable(p)))
    };
    beside.or_else(on_path).ok_or_else(|| {
        Error::unknown(format!("runtime {runtime:?} binary not installed {name:?}: file does not exist")).into()
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What every run of a shim binary gets.
#[derive(Debug, Clone)]
pub struct ShimCommand {
    pub binary: PathBuf,
    pub namespace: String,
    pub id: String,
    pub grpc_address: String,
    pub ttrpc_address: String,
    /// The daemon's own binary (`-publish-binary`).
    pub daemon: PathBuf,
    pub debug: bool,
}

/// What a run printed and how it ended.
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: std::process::ExitStatus,
}

impl ShimCommand {
    fn command(&self, bundle: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-namespace")
            .arg(&self.namespace)
            .arg("-address")
            .arg(&self.grpc_address)
            .arg("-publish-binary")
            .arg(&self.daemon)
            .arg("-id")
            .arg(&self.id);
        if self.debug {
            cmd.arg("-debug");
        }
        cmd.args(args)
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", &self.ttrpc_address)
            .env("GRPC_ADDRESS", &self.grpc_address)
            .env("NAMESPACE", &self.namespace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    /// Runs the binary with `input` on stdin to its end, within the deadline
    /// (past it, the process is killed by its pid, which this run started).
    fn run(&self, mut cmd: Command, input: &[u8]) -> Result<Ran> {
        let what = format!("{} {}", self.binary.display(), self.id);
        let mut child = cmd.spawn().map_err(|e| RuntimeError::io(format!("run {}", self.binary.display()), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A binary that does not read stdin closes it: not an error here.
            let _ = stdin.write_all(input);
        }
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                let _ = tx.send(buf);
            });
            rx
        };
        let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::new(
                        crated_plugin_api::ErrorKind::DeadlineExceeded,
                        format!("{what}: no answer within {COMMAND_DEADLINE:?}"),
                    )
                    .into());
                }
                Err(e) => return Err(RuntimeError::io(format!("wait for {what}"), e)),
            }
        };
        // A process it left behind may hold the pipes open: read what came
        // until the deadline, no longer.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let stdout = out.recv_timeout(left).unwrap_or_default();
        let stderr = err.recv_timeout(Duration::from_millis(200)).unwrap_or_default();
        Ok(Ran { stdout, stderr, status })
    }

    /// `<shim> ... start` in the bundle, runtime options on stdin; returns
    /// the address it printed.
    pub fn start(&self, bundle: &Bundle, options: &[u8]) -> Result<String> {
        let ran = self.run(self.command(&bundle.path, &["start"]), options)?;
        let stdout = String::from_utf8_lossy(&ran.stdout);
        let stderr = String::from_utf8_lossy(&ran.stderr);
        if !ran.status.success() {
            // containerd shows the combined output, then the exit status.
            let output = format!("{}{}", stdout, stderr);
            return Err(Error::unknown(format!("{}: {}", output.trim_end(), exit_text(ran.status))).into());
        }
        let address = parse_address(&stdout).ok_or_else(|| {
            Error::unknown(format!(
                "{} printed no shim address (is it a containerd shim v2?){}",
                self.binary.display(),
                if stderr.trim().is_empty() { String::new() } else { format!(": {}", stderr.trim()) }
            ))
        })?;
        Ok(address)
    }

    /// `<shim> ... -bundle B delete`: the cleanup of a task whose shim is
    /// gone. Returns its `DeleteResponse`.
    pub fn delete(&self, bundle: &Bundle) -> Result<shim_protocol::task::DeleteResponse> {
        let bundle_arg = bundle.path.to_string_lossy().into_owned();
        let ran = self.run(self.command(&bundle.path, &["-bundle", &bundle_arg, "delete"]), &[])?;
        let stderr = String::from_utf8_lossy(&ran.stderr);
        if !ran.status.success() {
            return Err(Error::unknown(format!("{}: {}", stderr.trim_end(), exit_text(ran.status))).into());
        }
        if !stderr.trim().is_empty() {
            crated_plugin_api::tracing::warn!(id = %self.id, namespace = %self.namespace, "cleanup warnings {}", stderr.trim());
        }
        <shim_protocol::task::DeleteResponse as prost::Message>::decode(ran.stdout.as_slice()).map_err(|e| {
            Error::unknown(format!("{} delete printed no DeleteResponse: {e}", self.binary.display())).into()
        })
    }
}

fn exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// The address a shim printed: a plain address (Rust and older Go shims)
/// or containerd's JSON `{"version":..,"address":..,"protocol":..}`.
pub fn parse_address(stdout: &str) -> Option<String> {
    let text = stdout.trim();
    if text.is_empty() {
        return None;
    }
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        return v.get("address").and_then(|a| a.as_str()).filter(|a| !a.is_empty()).map(str::to_string);
    }
    // One line, no spaces: anything else is not an address.
    (!text.contains(char::is_whitespace)).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_map_to_binaries_as_containerd_does() {
        assert_eq!(binary_name("io.containerd.runc.v2").as_deref(), Some("containerd-shim-runc-v2"));
        assert_eq!(binary_name("a.b").as_deref(), Some("containerd-shim-a-b"));
        assert_eq!(binary_name("runc"), None);
        assert_eq!(binary_name(".runc.v2"), None);
        let e = resolve("runc", None).unwrap_err().to_string();
        assert!(e.contains("invalid runtime name runc"), "{e}");
        let e = resolve("io.containerd.nope.v9", None).unwrap_err().to_string();
        assert_eq!(
            e,
            "runtime \"io.containerd.nope.v9\" binary not installed \"containerd-shim-nope-v9\": file does not exist"
        );
        assert_eq!(resolve("/bin/true", None).unwrap(), PathBuf::from("/bin/true"));
    }

    #[test]
    fn a_binary_beside_the_daemon_wins() {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("containerd-shim-x-v1");
        std::fs::write(&shim, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve("io.containerd.x.v1", Some(dir.path())).unwrap(), shim);
    }

    #[test]
    fn addresses_plain_and_json() {
        assert_eq!(parse_address("unix:///run/s/abc\n").as_deref(), Some("unix:///run/s/abc"));
        assert_eq!(
            parse_address(r#"{"version":3,"address":"unix:///run/s/x","protocol":"ttrpc"}"#).as_deref(),
            Some("unix:///run/s/x")
        );
        assert_eq!(parse_address(""), None);
        assert_eq!(parse_address("usage: foo bar"), None);
    }
}
