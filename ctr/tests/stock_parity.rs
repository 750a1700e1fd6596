//! Runs the same command sequence with stock containerd 1.6 `ctr`
//! (/usr/bin/ctr) and with ours, each against its own fresh stock containerd
//! (/usr/bin/containerd) on temporary directories, and compares stdout,
//! stderr and exit codes after masking times, ages and dates.
//!
//! Each daemon is stopped by its pid (the child we started) in a `Drop`
//! guard, so a failing assertion does not leave it running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTAINERD: &str = "/usr/bin/containerd";
const STOCK_CTR: &str = "/usr/bin/ctr";
const OURS: &str = env!("CARGO_BIN_EXE_ctr");

const H: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const H2: &str = "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
const Z: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A stock containerd on a temporary root/state; killed (by pid) and its
/// directory removed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

/// Which daemon a transcript runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    /// Stock containerd 1.6.
    Containerd,
    /// crated with its content, metadata and events plugins, from this
    /// workspace's build output (`cargo build --workspace`).
    Crated,
}

/// `target/<profile>`, where `crated` and the plugin libraries are built.
fn build_dir() -> PathBuf {
    Path::new(OURS).parent().expect("target dir").to_path_buf()
}

impl Daemon {
    fn start(tag: &str, server: Server) -> Daemon {
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
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n\
             [ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n\
             [metrics]\n  address = \"\"\n"
        );
        let (binary, config) = match server {
            Server::Containerd => (PathBuf::from(CONTAINERD), config),
            Server::Crated => {
                let plugins = dir.join("plugins");
                std::fs::create_dir_all(&plugins).unwrap();
                for p in ["content", "metadata", "events"] {
                    let name = format!("libcrated_plugin_{p}.so");
                    let src = build_dir().join(&name);
                    assert!(src.exists(), "{} is missing: run `cargo build --workspace`", src.display());
                    std::fs::copy(&src, plugins.join(&name)).unwrap();
                }
                let config = format!(
                    "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\nplugin_dir = \"{d}/plugins\"\n\
                     [grpc]\n  address = \"{d}/c.sock\"\n"
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

    fn socket(&self) -> PathBuf {
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

/// A background `ctr events` process; killed on drop.
struct Events {
    child: Child,
}

impl Events {
    fn start(ctr: &str, sock: &Path, filters: &[&str]) -> Events {
        let child = Command::new(ctr)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("-a")
            .arg(sock)
            .arg("events")
            .args(filters)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ctr events");
        Events { child }
    }

    /// Stop it and return what it printed (stdout then stderr).
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let mut out = String::new();
        use std::io::Read;
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        out.push_str("--- stderr\n");
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut out).unwrap();
        }
        out
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One step: the arguments after `-a <sock>` and an optional stdin.
struct Step(Vec<String>, Option<&'static str>);

/// Split on blanks; `'...'` groups words into one argument.
fn split_args(args: &str) -> Vec<String> {
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

fn step(args: &str) -> Step {
    Step(split_args(args), None)
}

fn step_in(input: &'static str, args: &str) -> Step {
    Step(split_args(args), Some(input))
}

fn run(ctr: &str, sock: &Path, s: &Step) -> String {
    let mut child = Command::new(ctr)
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .env("TZ", "UTC")
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
    format!(
        "$ ctr {}\n{}--- stderr\n{}[rc={}]\n",
        s.0.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    )
}

// ---------------------------------------------------------------------------
// Masking what legitimately differs between two runs.

fn is_digit(b: Option<&u8>) -> bool {
    b.is_some_and(u8::is_ascii_digit)
}

/// Replace `YYYY-MM-DD[T ]hh:mm:ss[.frac][ +0000 UTC|Z|±hh:mm]` by `DATE`.
fn mask_dates(s: &str) -> String {
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
fn mask_log_times(s: &str) -> String {
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
fn mask_ages(s: &str) -> String {
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

fn mask(s: &str) -> String {
    mask_ages(&mask_dates(&mask_log_times(s)))
}

#[test]
fn splitting_args() {
    assert_eq!(split_args("a  'b c' d=''"), ["a", "b c", "d="]);
}

#[test]
fn masking_helpers() {
    assert_eq!(mask("time=\"2026-11-27T20:55:09Z\" level=error msg=x\n"), "time=T level=error msg=x\n");
    assert_eq!(mask("2026-11-27 20:55:09.16051897 +0000 UTC default /x {}\n"), "DATE default /x {}\n");
    assert_eq!(mask("l1 2026-11-27T20:55:10+01:00 a=b\n"), "l1 DATE a=b\n");
    assert_eq!(mask("r3\t5B\tLess than a second\t\n"), "r3\t5B\tAGE\t\n");
    assert_eq!(mask("d\t5B\t12 seconds\t-\nREF\t\tAGE\t\t\n"), "d\t5B\tAGE\t-\nREF\tAGE\t\n");
}

// ---------------------------------------------------------------------------

fn steps() -> Vec<Step> {
    let s = |x: String| step(&x);
    vec![
        // namespaces
        step("ns ls"),
        step("ns ls -q"),
        step("namespace list"),
        step("ns create foo a=b c"),
        step("ns create foo"),
        step("ns create"),
        step("namespaces c bar x=<&>"),
        step("ns ls"),
        // One label per call: with several, stock ctr updates them in Go's
        // random map order.
        step("ns label foo a="),
        step("ns label foo x=y"),
        step("ns label"),
        step("ns label nope k=v"),
        step("ns ls"),
        step("ns ls --quiet"),
        step("ns rm nope foo"),
        step("ns remove bar"),
        // content
        step_in("hello", "content ingest myref"),
        step("content ingest"),
        s(format!("content ingest --expected-size 11 --expected-digest {H2} ref2")),
        step_in("hello", "content ingest again"),
        step("content ls"),
        step("content list -q"),
        s(format!("content get {H}")),
        s(format!("content get {Z}")),
        step("content get foo"),
        step("content get sha256:abc"),
        step("content get md5:abc"),
        step("content get"),
        step("content ls 'bad filter=='"),
        step("content ls labels.a==b"),
        s(format!("content label {H} foo=bar")),
        s(format!("content label {H}")),
        step("content ls"),
        s(format!("content label {H} foo=")),
        s(format!("content label {Z} x=y")),
        step("content label bad x=y"),
        step("content label"),
        // A namespace that still holds objects.
        step("ns rm default"),
        step("ns ls"),
        s(format!("content ingest --expected-digest {Z} r3")),
        step_in("hello", "content ingest --expected-size 10 r4"),
        step_in("hello", "content ingest --expected-size 3 r5"),
        step_in("hello", "content ingest --expected-digest bad r6"),
        step_in("hello", "content ingest r4"),
        step("content active r5"),
        step("content active r[4-5]"),
        step("content active -t 1s --root /x ref==r3"),
        // Keep the garbage collector (triggered by deletions) off both blobs,
        // so the deletions below are deterministic.
        s(format!("content label {H} containerd.io/gc.root=x")),
        s(format!("content label {H2} containerd.io/gc.root=x")),
        s(format!("content rm {H} {Z} bad {H2}")),
        s(format!("content del {H2}")),
        step("content ls"),
        // leases
        step("leases create --id l1 a=b c"),
        step("leases create --id l2 -x 0"),
        step("leases create --id l3 --expires 90m x=y"),
        step("leases create --id l1"),
        step("leases ls"),
        step("leases list -q"),
        step("leases ls id==l2"),
        step("leases ls 'bad filter'"),
        step("leases rm"),
        step("leases rm l2 nope l1"),
        step("leases remove --sync l1 l3"),
        step("leases ls"),
        // events
        step("events 'bad filter'"),
        // images and containers, made over gRPC by `seed`
        step("#seed"),
        step("images ls"),
        step("image list -q"),
        step("i ls name==example.com/multi:latest"),
        step("images ls 'bad filter=='"),
        step("images label docker.io/library/small:1 foo=bar"),
        step("images label docker.io/library/small:1 foo="),
        step("images label -r example.com/multi:latest z=1"),
        step("images label nope x=y"),
        step("images label"),
        step("images ls"),
        step("containers ls"),
        step("c ls -q"),
        step("container list runtime.name==io.containerd.runc.v2"),
        step("c ls 'bad=='"),
        step("containers info c1"),
        step("c info --spec c2"),
        step("c info c2"),
        step("c info nope"),
        step("c info"),
        step("c label c1 a=b"),
        step("c label c1 a="),
        step("c label nope x=y"),
        step("c label"),
        step("c rm nope c1"),
        step("c rm"),
        step("c ls"),
        step("images rm nope docker.io/library/small:1"),
        step("i del --sync example.com/multi:latest example.com/broken:1"),
        step("images ls"),
    ]
}

// The same input for `--expected-digest {Z} r3` needs stdin too.
fn fix_stdin(mut steps: Vec<Step>) -> Vec<Step> {
    for s in &mut steps {
        if s.0.first().map(String::as_str) == Some("content")
            && s.0.get(1).map(String::as_str) == Some("ingest")
            && s.1.is_none()
            && s.0.len() > 2
        {
            s.1 = Some(if s.0.iter().any(|a| a == "ref2") { "hello world" } else { "hello" });
        }
    }
    steps
}

/// A gRPC channel to the daemon's unix socket.
async fn unix_channel(sock: &Path) -> tonic::transport::Channel {
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

/// Publish raw events (an unknown type and a known one) as a third party
/// would, to check how both clients render them.
fn publish_raw(sock: &Path) {
    use containerd_client::services::v1::events_client::EventsClient;
    use containerd_client::services::v1::PublishRequest;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = unix_channel(sock).await;
        let mut client = EventsClient::new(channel);
        // containerd.events.TaskOOM{container_id: "c1"}, then an unknown type.
        for (url, value) in [
            ("containerd.events.TaskOOM", b"\x0a\x02c1".to_vec()),
            ("example.com/Unknown", b"\x0a\x01x".to_vec()),
            ("containerd.events.TaskExit", b"\x0a\x02c1\x18\x07\x20\x01".to_vec()),
        ] {
            let mut req = PublishRequest { topic: "/tasks/test".into(), ..Default::default() };
            let mut any = req.event.take().unwrap_or_default();
            any.type_url = url.into();
            any.value = value;
            req.event = Some(any);
            let mut req = tonic::Request::new(req);
            req.metadata_mut().insert("containerd-namespace", "default".parse().unwrap());
            client.publish(req).await.unwrap();
        }
    });
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(data);
    format!("sha256:{}", sum.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Images and containers for the `images`/`containers` steps: a manifest
/// and its config (ingested under a lease that never expires, so the
/// garbage collector keeps them), an index over it, and records pointing
/// at them (one at missing content), plus two containers.
fn seed(sock: &Path) {
    use containerd_client::services::v1::container::Runtime;
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::content_client::ContentClient;
    use containerd_client::services::v1::images_client::ImagesClient;
    use containerd_client::services::v1::leases_client::LeasesClient;
    use containerd_client::services::v1::{
        Container, CreateContainerRequest, CreateImageRequest, CreateRequest, Image, WriteAction, WriteContentRequest,
    };
    use containerd_client::types::Descriptor;

    fn req<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("containerd-namespace", "default".parse().unwrap());
        r.metadata_mut().insert("containerd-lease", "parity-seed".parse().unwrap());
        r
    }
    fn any(url: &str, value: &[u8]) -> prost_types::Any {
        prost_types::Any { type_url: url.into(), value: value.to_vec() }
    }
    fn desc(media_type: &str, digest: &str, size: usize) -> Option<Descriptor> {
        Some(Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size: size as i64,
            ..Default::default()
        })
    }

    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":1234567}}]}}"#,
        sha256(&config),
        config.len(),
        "1".repeat(64)
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":500,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        "2".repeat(64),
        sha256(&manifest),
        manifest.len()
    )
    .into_bytes();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = unix_channel(sock).await;
        let lease = CreateRequest { id: "parity-seed".into(), labels: Default::default() };
        LeasesClient::new(channel.clone()).create(req(lease)).await.unwrap();
        for (i, blob) in [&config, &manifest, &index].into_iter().enumerate() {
            let w = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: format!("seed-{i}"),
                total: blob.len() as i64,
                expected: sha256(blob),
                offset: 0,
                data: blob.clone(),
                labels: Default::default(),
            };
            let mut resp =
                ContentClient::new(channel.clone()).write(req(tokio_stream::iter(vec![w]))).await.unwrap().into_inner();
            while resp.message().await.unwrap().is_some() {}
        }
        let mut images = ImagesClient::new(channel.clone());
        for (name, target, labels) in [
            ("docker.io/library/small:1", desc("application/vnd.oci.image.manifest.v1+json", &sha256(&manifest), manifest.len()), vec![]),
            ("example.com/multi:latest", desc("application/vnd.oci.image.index.v1+json", &sha256(&index), index.len()), vec![("k", "v")]),
            ("example.com/broken:1", desc("application/vnd.oci.image.manifest.v1+json", Z, 10), vec![]),
        ] {
            let image = Image {
                name: name.into(),
                labels: labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                target,
                created_at: None,
                updated_at: None,
            };
            images.create(req(CreateImageRequest { image: Some(image), source_date_epoch: None })).await.unwrap();
        }
        let spec1 = br#"{"ociVersion":"1.0.2-dev","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}"#;
        let spec2 = br#"{"ociVersion":"1.0.2-dev","process":{"terminal":true,"user":{"uid":1,"gid":2},"env":["A=<b>"],"cwd":"/w","noNewPrivileges":true},"hostname":"h","mounts":[{"destination":"/proc","type":"proc","source":"proc"}],"annotations":{"z":"1","a":"2"},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/x"}],"maskedPaths":["/m"]},"unknown":1}"#;
        let spec_url = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
        let mut c2 = Container {
            id: "c2".into(),
            image: String::new(),
            labels: [("x".to_string(), "y".to_string())].into_iter().collect(),
            runtime: Some(Runtime { name: "io.containerd.runtime.v1.linux".into(), options: Some(any("example.com/Opts", b"\x01\x02")) }),
            spec: Some(any(spec_url, spec2)),
            ..Default::default()
        };
        c2.extensions.insert("my.ext".into(), any("example.com/Ext", b"hi"));
        let c1 = Container {
            id: "c1".into(),
            image: "docker.io/library/small:1".into(),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            spec: Some(any(spec_url, spec1)),
            ..Default::default()
        };
        let mut containers = ContainersClient::new(channel);
        for c in [c1, c2] {
            containers.create(req(CreateContainerRequest { container: Some(c) })).await.unwrap();
        }
    });
}

/// Run the whole sequence with one client on a fresh daemon.
fn transcript(ctr: &'static str, tag: &'static str, server: Server) -> (Vec<String>, String, String) {
    let daemon = Daemon::start(tag, server);
    let sock = daemon.socket();
    let all = Events::start(ctr, &sock, &[]);
    let filtered = Events::start(ctr, &sock, &["topic~=\"/namespaces/\""]);
    // Let the subscriptions register before anything happens.
    std::thread::sleep(Duration::from_millis(300));
    let outputs: Vec<String> = fix_stdin(steps())
        .iter()
        .map(|s| {
            if s.0 == ["#seed"] {
                seed(&sock);
                String::new()
            } else {
                run(ctr, &sock, s)
            }
        })
        .collect();
    publish_raw(&sock);
    std::thread::sleep(Duration::from_millis(300));
    let all = all.finish();
    let filtered = filtered.finish();
    drop(daemon);
    (outputs, all, filtered)
}

#[test]
fn same_output_as_stock_ctr() {
    compare_clients(Server::Containerd);
}

/// Both clients against crated: the stock ctr must work against crated
/// unchanged, and our ctr must answer exactly as it does.
#[test]
fn same_output_as_stock_ctr_against_crated() {
    compare_clients(Server::Crated);
}

fn compare_clients(server: Server) {
    let stock = std::thread::spawn(move || transcript(STOCK_CTR, "stock", server));
    let ours = transcript(OURS, "ours", server);
    let stock = stock.join().expect("stock run panicked");

    for (s, o) in stock.0.iter().zip(&ours.0) {
        assert_eq!(mask(o), mask(s), "\n--- stock:\n{s}\n--- ours:\n{o}");
    }
    assert_eq!(stock.0.len(), ours.0.len());
    assert_eq!(mask(&ours.1), mask(&stock.1), "events differ");
    assert_eq!(mask(&ours.2), mask(&stock.2), "filtered events differ");
    // The events saw what the sequence did.
    assert!(stock.1.contains("/namespaces/create {\"name\":\"foo\",\"labels\":{\"a\":\"b\",\"c\":\"true\"}}"));
    assert!(stock.1.contains("/content/delete"));
}

/// The stock ctr sees the same answers from crated as from containerd.
#[test]
fn crated_answers_like_containerd() {
    let containerd = std::thread::spawn(|| transcript(STOCK_CTR, "containerd", Server::Containerd));
    let crated = transcript(STOCK_CTR, "crated", Server::Crated);
    let containerd = containerd.join().expect("containerd run panicked");
    let steps = fix_stdin(steps());
    let mut diffs = Vec::new();
    for ((c, o), step) in containerd.0.iter().zip(&crated.0).zip(&steps) {
        if mask(c) != mask(o) {
            diffs.push(format!("$ ctr {}\n--- containerd:\n{c}\n--- crated:\n{o}", step.0.join(" ")));
        }
    }
    assert!(diffs.is_empty(), "{} steps differ:\n{}", diffs.len(), diffs.join("\n"));
    assert_eq!(mask(&crated.1), mask(&containerd.1), "events differ");
    assert_eq!(mask(&crated.2), mask(&containerd.2), "filtered events differ");
}
