//! What the parity tests share: a stock containerd (or crated) on temporary
//! directories, stopped by pid in a `Drop` guard; running one `ctr` step
//! and recording its stdout, stderr and exit code; and masking what
//! legitimately differs between two runs (times, ages, dates).

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crated_tests::stock::CONTAINERD;
pub const STOCK_CTR: &str = "/usr/bin/ctr";
pub const OURS: &str = env!("CARGO_BIN_EXE_ctr");

/// A stock containerd on a temporary root/state; killed (by pid) and its
/// directory removed on drop.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
}

/// Which daemon a transcript runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Server {
    /// Stock containerd 1.6.
    Containerd,
    /// crated with its content, metadata and events plugins, from this
    /// workspace's build output (`cargo build --workspace`).
    Crated,
}

/// The plugins a crated daemon loads unless told otherwise.
pub const CRATED_PLUGINS: [&str; 3] = ["content", "metadata", "events"];

/// Every plugin crate of the bundled library (`plugins/<name>`).
pub fn built_crated_plugins() -> Vec<String> {
    crated_tests::bundle::crates()
}

/// `target/<profile>`, where `crated` and the plugin libraries are built.
pub fn build_dir() -> PathBuf {
    Path::new(OURS).parent().expect("target dir").to_path_buf()
}

impl Daemon {
    /// A fresh daemon; crated loads [`CRATED_PLUGINS`].
    pub fn start(tag: &str, server: Server) -> Daemon {
        Daemon::start_with_plugins(tag, server, &CRATED_PLUGINS)
    }

    /// A fresh daemon; crated loads the named plugins (ignored for
    /// containerd, which has all of its plugins built in).
    pub fn start_with_plugins<S: AsRef<str>>(tag: &str, server: Server, crated_plugins: &[S]) -> Daemon {
        Daemon::start_with_config(tag, server, crated_plugins, "")
    }

    /// [`Daemon::start_with_plugins`] with `extra` appended to crated's
    /// config (plugin tables; ignored for containerd).
    pub fn start_with_config<S: AsRef<str>>(tag: &str, server: Server, crated_plugins: &[S], extra: &str) -> Daemon {
        assert!(
            Path::new(CONTAINERD).exists() && Path::new(STOCK_CTR).exists(),
            "stock_parity needs containerd 1.6 installed as {CONTAINERD} and {STOCK_CTR} \
             (e.g. `apt-get install containerd`)"
        );
        let dir = std::env::temp_dir().join(format!(
            "ctr-parity-{}-{tag}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = crated_tests::stock::containerd_config(&dir, "");
        let d = dir.display();
        let (binary, config) = match server {
            Server::Containerd => (PathBuf::from(CONTAINERD), config),
            Server::Crated => {
                let plugins = dir.join("plugins");
                std::fs::create_dir_all(&plugins).unwrap();
                let library = crated_tests::bundle::LIBRARY;
                let src = build_dir().join(library);
                assert!(src.exists(), "{} is missing: run `cargo build --workspace`", src.display());
                std::fs::copy(&src, plugins.join(library)).unwrap();
                let disabled = crated_tests::bundle::disabled_except(crated_plugins);
                let config = format!(
                    "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\nplugin_dir = \"{d}/plugins\"\n\
                     disabled_plugins = {disabled:?}\n[grpc]\n  address = \"{d}/c.sock\"\n{extra}"
                );
                (build_dir().join("crated"), config)
            }
        };
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        // containerd runs under a small watchdog shell that records its pid
        // and stops it if this test process dies without running `Drop`
        // (e.g. killed by a harness timeout).
        let watchdog = r#"
            "$1" -c "$2" & c=$!
            echo $c > "$3"
            trap 'kill $c 2>/dev/null; exit 0' TERM INT
            while kill -0 "$4" 2>/dev/null && kill -0 $c 2>/dev/null; do sleep 0.2; done
            kill $c 2>/dev/null; wait $c
        "#;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(watchdog)
            .arg("sh")
            .arg(&binary)
            .arg(dir.join("config.toml"))
            .arg(dir.join("containerd.pid"))
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        let daemon = Daemon { child, dir };
        let sock = daemon.socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// The pid of the containerd process itself.
    fn containerd_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("containerd.pid")).ok().and_then(|s| s.trim().parse().ok())
    }

    /// The temporary directory holding the daemon's root, state and socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stop containerd by its pid; the watchdog then exits by itself.
        if let Some(pid) = self.containerd_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    if let Some(pid) = self.containerd_pid() {
                        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                    }
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One step: the arguments after `-a <sock>` and an optional stdin.
pub struct Step(pub Vec<String>, pub Option<&'static str>);

/// Split on blanks; `'...'` groups words into one argument.
pub fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in args.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

pub fn step(args: &str) -> Step {
    Step(split_args(args), None)
}

pub fn step_in(input: &'static str, args: &str) -> Step {
    Step(split_args(args), Some(input))
}

pub fn run(ctr: &str, sock: &Path, s: &Step) -> String {
    run_env(ctr, sock, s, &[])
}

/// [`run`] with extra environment variables, shown before `ctr` in the
/// recorded command line.
pub fn run_env(ctr: &str, sock: &Path, s: &Step, env: &[(&str, &str)]) -> String {
    let mut child = Command::new(ctr)
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .env_remove("CONTAINERD_SNAPSHOTTER")
        .env("TZ", "UTC")
        .envs(env.iter().copied())
        .arg("-a")
        .arg(sock)
        .args(&s.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = s.1 {
            // A client may exit before reading its input (a refused
            // ingest): a broken pipe here is not a failure.
            let _ = stdin.write_all(input.as_bytes());
        }
    }
    // No step may hang the test: stop it after a while (by its pid).
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    let _ = killer.join();
    let env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    format!(
        "$ {env}ctr {}\n{}--- stderr\n{}[rc={}]\n",
        s.0.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    )
}

// ---------------------------------------------------------------------------
// Masking what legitimately differs between two runs.

pub fn is_digit(b: Option<&u8>) -> bool {
    b.is_some_and(u8::is_ascii_digit)
}

/// Replace `YYYY-MM-DD[T ]hh:mm:ss[.frac][ +0000 UTC|Z|±hh:mm]` by `DATE`.
pub fn mask_dates(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let shape = b.len() >= i + 12
            && (0..10).all(|k| if k == 4 || k == 7 { b[i + k] == b'-' } else { b[i + k].is_ascii_digit() })
            && (b[i + 10] == b'T' || b[i + 10] == b' ')
            && b[i + 11].is_ascii_digit();
        if !shape {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let mut j = i + 11;
        while j < b.len() && (b[j].is_ascii_digit() || b[j] == b':' || b[j] == b'.') {
            j += 1;
        }
        if s[j..].starts_with(" +0000 UTC") {
            j += " +0000 UTC".len();
        } else if s[j..].starts_with('Z') {
            j += 1;
        } else if j < b.len() && (b[j] == b'+' || b[j] == b'-') && is_digit(b.get(j + 1)) {
            j += 6;
        }
        out.extend_from_slice(b"DATE");
        i = j.min(b.len());
    }
    String::from_utf8(out).unwrap()
}

/// `time="..."` (logrus) -> `time=T`.
pub fn mask_log_times(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("time=\"") {
        out.push_str(&rest[..i]);
        out.push_str("time=T");
        let after = &rest[i + 6..];
        rest = after.find('"').map_or("", |j| &after[j + 1..]);
    }
    out.push_str(rest);
    out
}

/// Ages ("Less than a second", "3 seconds") -> `AGE`; on a line holding an
/// age the tab padding depends on it, so runs of tabs are collapsed there.
pub fn mask_ages(s: &str) -> String {
    s.lines()
        .map(|line| {
            let mut l = line.replace("Less than a second", "AGE");
            for unit in [" seconds", " second"] {
                while let Some(i) = l.find(unit) {
                    let start = l[..i].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |p| p + 1);
                    if start == i {
                        break;
                    }
                    l.replace_range(start..i + unit.len(), "AGE");
                }
            }
            if l.contains("AGE") {
                let mut collapsed = String::new();
                for c in l.chars() {
                    if !(c == '\t' && collapsed.ends_with('\t')) {
                        collapsed.push(c);
                    }
                }
                l = collapsed;
            }
            l + "\n"
        })
        .collect()
}

/// In every blank-separated word that is a comma-separated list of
/// `key=value` labels, sort the labels (Go prints maps in random order;
/// the same length, so columns stay put).
pub fn sort_label_lists(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains(',') && word.contains('=') {
            let mut labels: Vec<&str> = word.split(',').collect();
            labels.sort();
            out.push_str(&labels.join(","));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in s.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

pub fn mask(s: &str) -> String {
    mask_ages(&mask_dates(&mask_log_times(s)))
}

/// A gRPC channel to the daemon's unix socket.
pub async fn unix_channel(sock: &Path) -> tonic::transport::Channel {
    use hyper_util::rt::TokioIo;
    use tonic::transport::{Endpoint, Uri};

    let path = sock.to_path_buf();
    Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap()
}

/// Compare two transcripts step by step, naming every step that differs.
pub fn assert_same(left_name: &str, left: &[String], right_name: &str, right: &[String]) {
    let diffs: Vec<String> = left
        .iter()
        .zip(right)
        .filter(|(l, r)| l != r)
        .map(|(l, r)| format!("--- {left_name}:\n{l}--- {right_name}:\n{r}"))
        .collect();
    assert!(diffs.is_empty(), "{} steps differ:\n{}", diffs.len(), diffs.join("\n"));
    assert_eq!(left.len(), right.len());
}

/// Undoes `ctr images mount` on drop, even when the test fails first:
/// stock `ctr images unmount --rm`, then a lazy unmount in case the daemon
/// is gone or refused.
pub struct MountGuard {
    pub sock: PathBuf,
    pub target: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new(STOCK_CTR)
            .arg("-a")
            .arg(&self.sock)
            .args(["images", "unmount", "--rm"])
            .arg(&self.target)
            .output();
        let _ = Command::new("umount").arg("-l").arg(&self.target).output();
    }
}

/// What a mount target holds: one line per entry, sorted, with `/` after
/// directories and symlinks shown with their targets.
pub fn list_dir(dir: &Path) -> String {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                match std::fs::symlink_metadata(e.path()) {
                    Ok(m) if m.file_type().is_symlink() => {
                        format!("{name} -> {}", std::fs::read_link(e.path()).unwrap().display())
                    }
                    Ok(m) if m.is_dir() => format!("{name}/"),
                    Ok(m) => format!("{name} ({} bytes)", m.len()),
                    Err(e) => format!("{name}: {e}"),
                }
            })
            .collect(),
        Err(e) => return format!("error: {}\n", e.kind()),
    };
    names.sort();
    names.into_iter().map(|n| n + "\n").collect()
}

/// `run` for listings whose result a background garbage collection could
/// change (`content ls`, `snapshots ... ls`): a sync collection first (a
/// throwaway lease removed with `--sync`), so that the listing does not
/// depend on whether the daemon's scheduler has run yet. Other steps run
/// as they are.
pub fn run_settled(ctr: &str, sock: &Path, s: &Step) -> String {
    let listing =
        s.0.first().is_some_and(|a| a == "content" || a == "snapshots") && s.0.iter().any(|a| a == "ls" || a == "list");
    if listing {
        for args in ["leases create --id gc-settle", "leases rm --sync gc-settle"] {
            let out = run(STOCK_CTR, sock, &step(args));
            assert!(out.ends_with("[rc=0]\n"), "settling the collector: {out}");
        }
    }
    run(ctr, sock, s)
}
