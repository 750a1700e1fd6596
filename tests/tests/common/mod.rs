//! The integration tests' harness: starts the real `crated` binary on a
//! temporary root, state and socket, with a chosen set of test plugins, and
//! talks to it with tonic, our `ctr` and the stock `ctr`.
//!
//! A daemon is stopped by its pid (SIGTERM, then SIGKILL in `Drop`), never
//! by name, and its directory is removed with it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use tonic::transport::{Channel, Endpoint};

pub mod cri;

/// `target/<profile>`, found from the test binary's own path.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf()
}

pub fn crated_bin() -> PathBuf {
    target_dir().join("crated")
}

pub fn ctr_bin() -> PathBuf {
    target_dir().join("ctr")
}

/// A test plugin library built from `tests/examples/<name>.rs`.
pub fn example_so(name: &str) -> PathBuf {
    let p = target_dir().join("examples").join(format!("lib{name}.so"));
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --examples` first", p.display());
    p
}

/// The library of the bundled plugins (`plugins/bundle`).
pub fn bundle_so() -> PathBuf {
    let p = target_dir().join(crated_tests::bundle::LIBRARY);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace` first", p.display());
    p
}

/// The stock containerd 1.6 `ctr` (Debian's `containerd` package).
pub fn stock_ctr_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/ctr");
    assert!(p.exists(), "the stock ctr is missing: install Debian's containerd package (.ci/run does)");
    p
}

/// A config for a test daemon, written into a fresh temporary directory.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    /// Top-level keys and `[plugins...]` tables, added to the config.
    pub extra: String,
    /// Lines added to the `[grpc]` table.
    pub grpc_extra: String,
    /// Environment variables the daemon runs with.
    pub env: Vec<(String, String)>,
    /// The plugin crates whose bundled plugins run, if the bundle is in.
    pub real: Vec<String>,
}

impl Setup {
    /// A directory with `plugins/` holding copies of the named test plugins.
    pub fn new(plugins: &[&str]) -> Setup {
        let tmp = tempfile::Builder::new().prefix("crated-test").tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("plugins")).unwrap();
        let s = Setup { tmp, extra: String::new(), grpc_extra: String::new(), env: Vec::new(), real: Vec::new() };
        for p in plugins {
            s.add_plugin(p);
        }
        s
    }

    /// Adds the real plugins of the crates `plugins/<name>` (content,
    /// metadata, events...): the bundled library, with every other bundled
    /// plugin disabled.
    pub fn with_real_plugins(mut self, names: &[&str]) -> Self {
        std::fs::copy(bundle_so(), self.plugin_dir().join(crated_tests::bundle::LIBRARY)).unwrap();
        self.real.extend(names.iter().map(|n| n.to_string()));
        self
    }

    pub fn add_plugin(&self, name: &str) {
        let src = example_so(name);
        std::fs::copy(&src, self.plugin_dir().join(src.file_name().unwrap())).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn plugin_dir(&self) -> PathBuf {
        self.path().join("plugins")
    }
    pub fn socket(&self) -> PathBuf {
        self.path().join("crated.sock")
    }
    pub fn root(&self) -> PathBuf {
        self.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }
    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.path().join("crated.log")
    }

    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub fn grpc(mut self, lines: &str) -> Self {
        self.grpc_extra.push_str(lines);
        self.grpc_extra.push('\n');
        self
    }

    pub fn config_text(&self) -> String {
        let bundled = self.plugin_dir().join(crated_tests::bundle::LIBRARY).exists();
        let disabled = if bundled {
            format!("disabled_plugins = {:?}\n", crated_tests::bundle::disabled_except(&self.real))
        } else {
            String::new()
        };
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\nplugin_dir = {:?}\n{disabled}{}\n[grpc]\naddress = {:?}\n{}",
            self.root().display().to_string(),
            self.state().display().to_string(),
            self.plugin_dir().display().to_string(),
            self.extra,
            self.socket().display().to_string(),
            self.grpc_extra
        )
    }

    pub fn write_config(&self) -> PathBuf {
        std::fs::write(self.config_path(), self.config_text()).unwrap();
        self.config_path()
    }

    /// Runs `crated` with these args to completion (for failures and
    /// `config` subcommands), with a time limit.
    pub fn run_crated(&self, args: &[&str]) -> Output {
        let mut child = Command::new(crated_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crated");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("crated {args:?} did not exit within 30s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start(self) -> Daemon {
        let config = self.write_config();
        Daemon::spawn(self, &["-c", config.to_str().unwrap()])
    }
}

/// A running test daemon.
pub struct Daemon {
    pub setup: Setup,
    child: Option<Child>,
}

impl Daemon {
    pub fn spawn(setup: Setup, args: &[&str]) -> Daemon {
        let log = std::fs::File::create(setup.log_path()).unwrap();
        let child = Command::new(crated_bin())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn crated");
        let mut d = Daemon { setup, child: Some(child) };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("crated exited with {status} before serving:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("crated did not serve within 30s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }

    pub fn socket(&self) -> PathBuf {
        self.setup.socket()
    }

    /// The daemon's exit status if it has exited (and was reaped here).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait on the daemon"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.setup.log_path()).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM") to this daemon's pid and waits for it.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{signal} {} failed", child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("crated did not stop within 30s after SIG{signal}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon with SIGTERM.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait("TERM")
    }

    /// Our `ctr` against this daemon.
    pub fn ctr(&self, args: &[&str]) -> Output {
        run_client(&ctr_bin(), &self.socket(), args)
    }

    /// The stock `ctr` against this daemon.
    pub fn stock_ctr(&self, args: &[&str]) -> Output {
        run_client(&stock_ctr_bin(), &self.socket(), args)
    }

    /// A gRPC channel to this daemon.
    pub async fn channel(&self) -> Channel {
        channel(&self.socket()).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run_client(bin: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--address")
        .arg(socket)
        .args(args)
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .output()
        .expect("run ctr")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tonic channel over a unix socket.
pub async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
        .expect("connect to crated")
}

fn request<T>(msg: T, namespace: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(ns) = namespace {
        req.metadata_mut().insert("containerd-namespace", ns.parse().unwrap());
    }
    req
}

fn path(p: &str) -> http::uri::PathAndQuery {
    p.parse().unwrap()
}

type Codec<Req, Resp> = tonic_prost::ProstCodec<Req, Resp>;

/// A unary call by method path.
pub async fn unary<Req, Resp>(
    ch: &Channel,
    method: &str,
    namespace: Option<&str>,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(request(req, namespace), path(method), Codec::<Req, Resp>::default()).await.map(|r| r.into_inner())
}

/// A server-streaming call, collected.
pub async fn server_streaming<Req, Resp>(
    ch: &Channel,
    method: &str,
    namespace: Option<&str>,
    req: Req,
) -> Result<Vec<Result<Resp, tonic::Status>>, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut stream =
        grpc.server_streaming(request(req, namespace), path(method), Codec::<Req, Resp>::default()).await?.into_inner();
    let mut out = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => out.push(Ok(m)),
            Ok(None) => break,
            Err(s) => {
                out.push(Err(s));
                break;
            }
        }
    }
    Ok(out)
}

/// A client-streaming call.
pub async fn client_streaming<Req, Resp>(
    ch: &Channel,
    method: &str,
    namespace: Option<&str>,
    reqs: Vec<Req>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let stream = tokio_stream::iter(reqs);
    grpc.client_streaming(request(stream, namespace), path(method), Codec::<Req, Resp>::default())
        .await
        .map(|r| r.into_inner())
}

/// A bidi-streaming call: sends `reqs`, collects every response.
pub async fn bidi_streaming<Req, Resp>(
    ch: &Channel,
    method: &str,
    namespace: Option<&str>,
    reqs: Vec<Req>,
) -> Result<Vec<Resp>, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    bidi_streaming_leased(ch, method, namespace, None, reqs).await
}

/// [`bidi_streaming`] under a lease (the `containerd-lease` header).
pub async fn bidi_streaming_leased<Req, Resp>(
    ch: &Channel,
    method: &str,
    namespace: Option<&str>,
    lease: Option<&str>,
    reqs: Vec<Req>,
) -> Result<Vec<Resp>, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let stream = tokio_stream::iter(reqs);
    let mut req = request(stream, namespace);
    if let Some(l) = lease {
        req.metadata_mut()
            .insert("containerd-lease", l.parse().map_err(|_| tonic::Status::invalid_argument("lease id"))?);
    }
    let mut out = grpc.streaming(req, path(method), Codec::<Req, Resp>::default()).await?.into_inner();
    let mut v = Vec::new();
    while let Some(m) = out.message().await? {
        v.push(m);
    }
    Ok(v)
}

impl Daemon {
    /// Starts this daemon again after [`Daemon::stop`], with the same setup
    /// and config file (`-c <config_path>`); the log is appended to.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the daemon is still running");
        let log = std::fs::OpenOptions::new().append(true).create(true).open(self.setup.log_path()).unwrap();
        let child = Command::new(crated_bin())
            .arg("-c")
            .arg(self.setup.config_path())
            .env("RUST_BACKTRACE", "0")
            .envs(self.setup.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn crated");
        self.child = Some(child);
        self.wait_ready();
    }
}

/// Builds `examples/<name>`, a crate outside the workspace, the way its
/// author would: with its own lockfile (`--locked` proves it is used), into
/// `target/out-of-tree` so it neither waits on the workspace's target dir
/// nor rebuilds from scratch on every run (cargo's own lock serialises
/// concurrent test processes). Returns `target/out-of-tree/debug`.
pub fn build_out_of_tree(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf();
    let manifest = root.join("examples").join(name).join("Cargo.toml");
    let target = root.join("target/out-of-tree");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building {} with its own Cargo.lock into {} (a cold build takes a minute or two)",
        manifest.display(),
        target.display()
    );
    let started = Instant::now();
    let out = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--locked")
        // rustup picks the pinned toolchain from the directory.
        .current_dir(manifest.parent().unwrap())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    eprintln!("cargo build of {name} took {:.1?}", started.elapsed());
    assert!(
        out.status.success(),
        "building the out-of-tree example {name} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug")
}

/// A stock containerd 1.6 (Debian's `containerd`) on temporary directories,
/// the reference the tests and benchmarks compare with. Stopped by its pid.
pub struct StockContainerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl StockContainerd {
    pub fn start() -> StockContainerd {
        Self::start_with("")
    }

    /// Starts one with `extra` appended to its config (e.g. `[proxy_plugins]`).
    pub fn start_with(extra: &str) -> StockContainerd {
        Self::start_with_args(extra, &[])
    }

    /// Starts one with `extra` appended to its config and `args` after the
    /// config flag (e.g. `--log-level debug`).
    pub fn start_with_args(extra: &str, args: &[&str]) -> StockContainerd {
        let bin = PathBuf::from(crated_tests::stock::CONTAINERD);
        assert!(bin.exists(), "the stock containerd is missing: install Debian's containerd package (.ci/run does)");
        let dir = tempfile::Builder::new().prefix("stock-containerd").tempdir().unwrap();
        let cfg = crated_tests::stock::containerd_config(dir.path(), extra);
        std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.path().join("config.toml"))
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn stock containerd");
        let s = StockContainerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(s.socket()).is_err() {
            assert!(Instant::now() < deadline, "stock containerd did not serve");
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    pub fn socket(&self) -> PathBuf {
        crated_tests::stock::containerd_socket(self.dir.path())
    }

    /// The stock `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        run_client(&stock_ctr_bin(), &self.socket(), args)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for StockContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `data` as a blob through `Content.Write` (a WRITE then a COMMIT
/// with `labels`, as containerd's remote writer does), in `namespace` and,
/// with `lease`, under that lease (`containerd-lease` header). Returns the
/// committed digest.
pub async fn write_blob(
    ch: &Channel,
    namespace: &str,
    reference: &str,
    data: &[u8],
    lease: Option<&str>,
    labels: &[(&str, &str)],
) -> Result<String, tonic::Status> {
    use containerd_client::services::v1::{WriteAction, WriteContentRequest, WriteContentResponse};
    let reqs = vec![
        WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.into(),
            total: data.len() as i64,
            data: data.to_vec(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference.into(),
            total: data.len() as i64,
            offset: data.len() as i64,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        },
    ];
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = request(tokio_stream::iter(reqs), Some(namespace));
    if let Some(l) = lease {
        req.metadata_mut()
            .insert("containerd-lease", l.parse().map_err(|_| tonic::Status::invalid_argument("lease id"))?);
    }
    let mut out = grpc
        .streaming(
            req,
            path("/containerd.services.content.v1.Content/Write"),
            Codec::<WriteContentRequest, WriteContentResponse>::default(),
        )
        .await?
        .into_inner();
    let mut last = None;
    while let Some(m) = out.message().await? {
        last = Some(m);
    }
    last.map(|m| m.digest).ok_or_else(|| tonic::Status::internal("no commit response"))
}

/// The `plugins ls` row of `type id`, as its whitespace-separated columns.
pub fn plugin_row<'a>(listing: &'a str, plugin_type: &str, id: &str) -> Option<Vec<&'a str>> {
    listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() >= 3 && cols[0] == plugin_type && cols[1] == id)
}

/// The value of export `key` in `plugins ls -d` output (or in one plugin's
/// block of it).
pub fn plugin_export<'a>(detail: &'a str, key: &str) -> Option<&'a str> {
    detail.lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        (cols.next() == Some(key)).then(|| cols.next().unwrap_or_default())
    })
}

/// `/proc/<pid>/stat`'s state letter and parent pid, if the process exists.
pub fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: " S ppid ...".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut cols = rest.split_whitespace();
    let state = cols.next()?.chars().next()?;
    let ppid = cols.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is gone: no such process, or a zombie nobody has reaped
/// yet (an orphan's reaper is whatever runs as pid 1 here).
pub fn process_gone(pid: u32) -> bool {
    matches!(process_state(pid), None | Some(('Z', _)))
}

/// Waits up to `limit` for `pid` to be gone; false if it is still there.
pub fn wait_process_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !process_gone(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A free TCP port on 127.0.0.1 (bound and released; the daemon binds it
/// next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.1 on `address`: the status line and the body.
pub fn http_get(address: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The value of the first sample of `name` whose labels include every one
/// of `labels` (each written `key="value"`).
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name && labels.iter().all(|want| rest.contains(want))).then(|| value.parse().ok())?
    })
}
