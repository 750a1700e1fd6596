//! The CRI stream server with a real SPDY client: Debian's kubectl 1.20
//! (/opt/crated-test-tools/kubectl, see scripts/install-deps.sh) talks to
//! a fake API server (crated_tests::kube_proxy) that splices its exec and
//! port-forward requests to the URLs the CRI's Exec and PortForward RPCs
//! return, as the kubelet's proxy does. Against a pod sandbox whose task
//! is busybox (the bundle, a real registry, Debian's shim, runc and CNI
//! plugins, as tests/cri_pods.rs): stdout and stderr, a non-zero exit code
//! as kubectl's exit status, stdin echoed through `cat`, a terminal,
//! port-forward to a busybox `nc` in the pod (and to the host's loopback
//! for a host-network pod), a container-port-only mapping served on the
//! pod's IP, spent and unknown tokens
//! refused, garbage answered while the server keeps serving, `kubectl
//! attach -i` to a container reading its stdin, and the RPCs' own checks.
//! A WebSocket client (tokio-tungstenite, as the kubelet's streaming
//! server serves one) on the same URLs: stdin through `cat`, stdout and
//! stderr on their channels, the v4 exit status, base64 channels, a
//! terminal resized, attach, port-forward to `nc`, refused subprotocols
//! and spent tokens.
//!
//! `common::cri`'s guard stops and removes every container and sandbox,
//! the daemon, the bridge and leftover mounts, even when an assertion
//! failed. Needs root.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::cri::{host_network, Pods, CRI, PAUSE};
use crated_tests::kube_proxy::{KubeProxy, KUBECTL};
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, AttachRequest, ContainerConfig, ContainerMetadata,
    CreateContainerRequest, ExecRequest, ImageSpec, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PortForwardRequest, PortMapping, Protocol, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::{transport::Channel, Code};

/// The pod and the container name kubectl is told about.
const POD: &str = "web";
const CONTAINER: &str = "pause";

/// The CRI world of `common::cri` (registry, daemon, CNI bridge, guard),
/// with its conflist written; `n` is the test's own bridge and subnet.
async fn world(n: u8) -> Pods {
    let pods = Pods::start(n, PAUSE).await;
    pods.write_conflist();
    pods
}

/// A child process killed (by its pid) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod sandbox named `name` on the bridge; its id.
async fn run_pod(ch: &Channel, name: &str) -> String {
    let config = pod_config(name);
    rt(ch)
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
        .await
        .expect("run the sandbox")
        .into_inner()
        .pod_sandbox_id
}

fn rt(ch: &Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(ch.clone())
}

/// How kubectl exec is run: `-i`, `-t` (under a pseudo-terminal).
#[derive(Clone, Copy, Default)]
struct Flags {
    stdin: bool,
    tty: bool,
}

/// The CRI's Exec for `cmd` with the streams kubectl will open, routed
/// for the next `kubectl exec`; answers the URL.
async fn exec_url(ch: &Channel, proxy: &KubeProxy, id: &str, cmd: &[&str], f: Flags) -> String {
    let url = cri_exec(ch, id, cmd, f).await;
    proxy.route_next("exec", &url);
    url
}

/// The CRI's Exec URL alone, for raw requests.
async fn cri_exec(ch: &Channel, id: &str, cmd: &[&str], f: Flags) -> String {
    let req = ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: f.tty,
        stdin: f.stdin,
        stdout: true,
        stderr: !f.tty,
    };
    rt(ch).exec(req).await.expect("Exec").into_inner().url
}

/// `kubectl exec` with `input` on its stdin, off the test's runtime.
async fn kubectl_exec(proxy: &KubeProxy, cmd: &[&str], f: Flags, input: &[u8]) -> Output {
    let mut c = proxy.kubectl();
    c.args(["exec", POD, "-c", CONTAINER]);
    if f.stdin {
        c.arg("-i");
    }
    c.arg("--").args(cmd);
    let input = input.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&input).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// `kubectl exec -it` under a pseudo-terminal (`script`), so that kubectl
/// asks for one; `cmd` is a shell command run with `sh -c` in the pod.
async fn kubectl_exec_tty(proxy: &KubeProxy, cmd: &str) -> Output {
    let line = format!(
        "{KUBECTL} --kubeconfig {} exec -it {POD} -c {CONTAINER} -- /bin/sh -c '{cmd}'",
        proxy.kubeconfig().display()
    );
    tokio::task::spawn_blocking(move || {
        Command::new("script").args(["-qec", &line, "/dev/null"]).stdin(Stdio::null()).output().unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A raw HTTP request to the stream server; the status line answered.
fn raw_request(url: &str, head: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    conn.write_all(head.replace("{path}", path).as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    text(&out).lines().next().unwrap_or_default().to_string()
}

fn upgrade_request() -> &'static str {
    "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
     X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_port_forward_with_kubectl() {
    assert!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing: run scripts/install-deps.sh");
    let world = world(11).await;
    let ch = world.channel().await;
    // A port mapping with a container port only.
    let mut config = pod_config(POD);
    config.port_mappings =
        vec![PortMapping { protocol: Protocol::Tcp as i32, container_port: 8080, ..Default::default() }];
    let id = rt(&ch)
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })
        .await
        .expect("run the sandbox")
        .into_inner()
        .pod_sandbox_id;
    let proxy = KubeProxy::start(world.dir.path(), "default", POD, CONTAINER).await;

    // stdout and stderr apart, exit 0.
    let cmd = ["/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2"];
    let first_url = exec_url(&ch, &proxy, &id, &cmd, Flags::default()).await;
    let out = kubectl_exec(&proxy, &cmd, Flags::default(), b"").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "to-stdout\n");
    assert!(text(&out.stderr).contains("to-stderr\n"), "{out:?}");
    assert!(!text(&out.stderr).contains("to-stdout"), "{out:?}");

    // A non-zero exit is kubectl's exit status.
    let cmd = ["/bin/sh", "-c", "echo bye; exit 3"];
    exec_url(&ch, &proxy, &id, &cmd, Flags::default()).await;
    let out = kubectl_exec(&proxy, &cmd, Flags::default(), b"").await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "bye\n");

    // A command that cannot start: kubectl reports the runtime's error.
    let cmd = ["/no/such/command"];
    exec_url(&ch, &proxy, &id, &cmd, Flags::default()).await;
    let out = kubectl_exec(&proxy, &cmd, Flags::default(), b"").await;
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("/no/such/command"), "{out:?}");

    // stdin through cat, to its end.
    let input = b"hello through stdin\nsecond line\n".repeat(1000);
    let i = Flags { stdin: true, tty: false };
    exec_url(&ch, &proxy, &id, &["/bin/cat"], i).await;
    let out = kubectl_exec(&proxy, &["/bin/cat"], i, &input).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "the echo differs");

    // A terminal: the command sees one.
    let it = Flags { stdin: true, tty: true };
    let shell = "/bin/busybox tty; /bin/busybox stty size";
    exec_url(&ch, &proxy, &id, &["/bin/sh", "-c", shell], it).await;
    let out = kubectl_exec_tty(&proxy, shell).await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("/dev/pts/"), "{out:?}");

    // The first exec's token is spent; an unknown one never existed.
    assert!(raw_request(&first_url, upgrade_request()).contains(" 404 "), "a spent token was accepted");
    let unknown = format!("{}/exec/AAAAAAAA", first_url.rsplitn(3, '/').nth(2).unwrap());
    assert!(raw_request(&unknown, upgrade_request()).contains(" 404 "));

    // Garbage is answered with an error; the server keeps serving.
    assert!(raw_request(&first_url, "\x00\x01\x02 garbage\r\n\r\n").contains(" 400 "));
    let cmd = ["/bin/echo", "still-here"];
    let url = cri_exec(&ch, &id, &cmd, Flags::default()).await;
    // Not the upgrade headers: refused, and the token is spent.
    assert!(raw_request(&url, "POST {path} HTTP/1.1\r\nHost: x\r\n\r\n").contains(" 400 "));
    let url = cri_exec(&ch, &id, &cmd, Flags::default()).await;
    // Upgraded, then garbage instead of SPDY: the server closes.
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    conn.write_all(upgrade_request().replace("{path}", path).as_bytes()).unwrap();
    conn.write_all(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff]).unwrap();
    conn.write_all(&[0xde; 64]).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert!(text(&answer).starts_with("HTTP/1.1 101 "), "{}", text(&answer));
    exec_url(&ch, &proxy, &id, &cmd, Flags::default()).await;
    let out = kubectl_exec(&proxy, &cmd, Flags::default(), b"").await;
    assert_eq!((out.status.success(), text(&out.stdout)), (true, "still-here\n".to_string()), "{out:?}");

    // Port-forward to an echo server in the pod's network.
    let cmd = ["/bin/sh", "-c", "/bin/busybox nc -ll -p 8080 -e /bin/cat </dev/null >/dev/null 2>&1 &"];
    exec_url(&ch, &proxy, &id, &cmd, Flags::default()).await;
    let out = kubectl_exec(&proxy, &cmd, Flags::default(), b"").await;
    assert!(out.status.success(), "{out:?}");
    let url = rt(&ch)
        .port_forward(PortForwardRequest { pod_sandbox_id: id.clone(), port: vec![8080] })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    assert!(url.contains("/portforward/"), "{url}");
    proxy.route_next("portforward", &url);
    port_forward_echo(&proxy, world.dir.path(), 8080).await;

    // The pod's only port mapping names no host port: no rule (portmap
    // gets none, as from containerd), and the pod's IP serves the port
    // (critest's "port mapping with only container port").
    let ip = rt(&ch)
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .and_then(|s| s.network)
        .expect("the pod's network")
        .ip;
    let nat = Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    assert!(!text(&nat.stdout).contains(&format!("{ip}:8080")), "a rule for the container port alone");
    let echoed = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect((ip.as_str(), 8080)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"to the pod's IP\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        text(&got)
    })
    .await
    .unwrap();
    assert_eq!(echoed, "to the pod's IP\n");

    // A host-network pod: the backend dials the host's loopback, where
    // the test's own echo server listens.
    let host_pod = rt(&ch)
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig { linux: host_network(), ..pod_config("hostnet") }),
            runtime_handler: String::new(),
        })
        .await
        .expect("run the host-network pod")
        .into_inner()
        .pod_sandbox_id;
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    // Serves until the test's process ends.
    std::thread::spawn(move || {
        for mut c in echo.incoming().flatten() {
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let _ = c.write_all(&got);
        }
    });
    let url = rt(&ch)
        .port_forward(PortForwardRequest { pod_sandbox_id: host_pod, port: vec![port as i32] })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    proxy.route_next("portforward", &url);
    port_forward_echo(&proxy, world.dir.path(), port).await;
}

/// `kubectl port-forward` (routed by the caller) from a free local port
/// to `remote`: bytes sent through it come back from the echo server
/// there.
async fn port_forward_echo(proxy: &KubeProxy, dir: &Path, remote: u16) {
    let local = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // kubectl prints a line per connection: its output goes to a file
    // (a closed pipe would kill it).
    let pf_out = dir.join(format!("port-forward-{remote}.out"));
    let mut pf = Child(
        proxy
            .kubectl()
            .args(["port-forward", POD, &format!("{local}:{remote}")])
            .stdout(std::fs::File::create(&pf_out).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    for _ in 0..300 {
        if text(&std::fs::read(&pf_out).unwrap()).contains("Forwarding from") || pf.0.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = text(&std::fs::read(&pf_out).unwrap());
    assert!(ready.contains("Forwarding from"), "{ready}");
    let echoed = tokio::task::spawn_blocking(move || {
        // nc may not listen yet: a refused dial closes the local
        // connection empty, and the next try goes through.
        for _ in 0..50 {
            let Ok(mut c) = TcpStream::connect(("127.0.0.1", local)) else {
                return "kubectl port-forward is gone".to_string();
            };
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(b"ping through the forward\n").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            if !got.is_empty() {
                return text(&got);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        String::new()
    })
    .await
    .unwrap();
    if echoed != "ping through the forward\n" {
        let _ = pf.0.kill();
        let mut err = String::new();
        let _ = pf.0.stderr.take().unwrap().read_to_string(&mut err);
        panic!("{echoed:?}; kubectl port-forward said: {err}");
    }
    drop(pf);
}

/// The RPCs' own checks, without a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_checked() {
    let world = world(12).await;
    let ch = world.channel().await;
    let id = run_pod(&ch, "chk").await;
    let exec = |r: ExecRequest| {
        let ch = ch.clone();
        async move { rt(&ch).exec(r).await }
    };
    let cmd = vec!["/bin/true".to_string()];
    let e = exec(ExecRequest { container_id: id.clone(), cmd: cmd.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "one of stdin, stdout, or stderr must be set"));
    let both =
        ExecRequest { container_id: id.clone(), cmd: cmd.clone(), tty: true, stderr: true, ..Default::default() };
    let e = exec(both).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "tty and stderr cannot both be true"));
    let e = exec(ExecRequest { container_id: "nope".into(), cmd: cmd.clone(), stdout: true, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let url = exec(ExecRequest { container_id: id.clone(), cmd, stdout: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:") && url.contains("/exec/"), "{url}");
    assert_eq!(url.rsplit('/').next().unwrap().len(), 8, "{url}");

    // Attach joins a CRI container's stdio: a sandbox is not one.
    let e = rt(&ch)
        .attach(AttachRequest { container_id: id.clone(), stdout: true, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let e =
        rt(&ch).port_forward(PortForwardRequest { pod_sandbox_id: "nope".into(), port: vec![80] }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    rt(&ch).stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    let e = rt(&ch).port_forward(PortForwardRequest { pod_sandbox_id: id.clone(), port: vec![80] }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = rt(&ch)
        .exec(ExecRequest { container_id: id, cmd: vec!["/bin/true".into()], stdout: true, ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(e.code(), Code::NotFound | Code::FailedPrecondition), "{e:?}");
}

/// Whether a process with exactly these arguments runs (on the host's
/// view of /proc, which sees the pod's processes).
fn running(args: &[&str]) -> bool {
    let want = args.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| c == want.as_bytes())
}

/// Waits (boundedly) for `cond`; whether it came true.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// kubectl killed mid-exec: the process in the pod is killed and the
/// exec's FIFOs are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_kills_its_exec() {
    assert!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing: run scripts/install-deps.sh");
    let world = world(13).await;
    let ch = world.channel().await;
    let id = run_pod(&ch, POD).await;
    let proxy = KubeProxy::start(world.dir.path(), "default", POD, CONTAINER).await;
    let seconds = format!("{}", 500_000 + std::process::id());
    let cmd = ["/bin/busybox", "sleep", seconds.as_str()];
    exec_url(&ch, &proxy, &id, &cmd, Flags::default()).await;
    let mut kubectl = Child(
        proxy
            .kubectl()
            .args(["exec", POD, "-c", CONTAINER, "--"])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(eventually(|| running(&cmd)).await, "the exec never ran");
    let io_dir = world.d().setup.state().join(CRI).join("io");
    assert_eq!(std::fs::read_dir(&io_dir).unwrap().count(), 1, "one exec's FIFO directory");
    kubectl.0.kill().unwrap();
    kubectl.0.wait().unwrap();
    assert!(eventually(|| !running(&cmd)).await, "the exec outlived its client");
    assert!(eventually(|| std::fs::read_dir(&io_dir).unwrap().count() == 0).await, "the FIFOs are left");
}

/// `kubectl attach -i` to a CRI container whose shell echoes its stdin:
/// what the client types reaches the container, what the container prints
/// reaches the client (and the container's log), and the client closing
/// its stdin ends the container's (`stdin_once`), which ends the attach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_kubectl() {
    assert!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing: run scripts/install-deps.sh");
    let world = world(14).await;
    let ch = world.channel().await;
    let sandbox = run_pod(&ch, POD).await;
    let proxy = KubeProxy::start(world.dir.path(), "default", POD, CONTAINER).await;
    let script = "echo started; while read line; do echo got:$line; done; echo stdin-closed";
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: CONTAINER.into(), attempt: 0 }),
        image: Some(ImageSpec { image: world.sandbox_image.clone(), ..Default::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: true,
        stdin_once: true,
        log_path: "attached.log".into(),
        ..Default::default()
    };
    let log_dir = world.dir.path().join("pod-logs");
    let mut sandbox_config = pod_config(POD);
    sandbox_config.log_directory = log_dir.display().to_string();
    let id = start_container(&ch, &sandbox, config, sandbox_config).await;

    let url = attach_url(&ch, &id).await;
    assert!(url.contains("/attach/"), "{url}");
    proxy.route_next("attach", &url);
    let mut c = proxy.kubectl();
    c.args(["attach", POD, "-c", CONTAINER, "-i"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The attach is up once kubectl has read the first answer; what is
        // typed before that waits in kubectl's pipe.
        stdin.write_all(b"hello\nworld\n").unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = text(&out.stdout);
    assert!(printed.contains("got:hello\ngot:world\n"), "{out:?}");
    assert!(printed.contains("stdin-closed"), "the container's stdin was not closed: {out:?}");
    let log = std::fs::read_to_string(log_dir.join("attached.log")).unwrap();
    assert!(log.contains(" stdout F got:world"), "{log}");
}

/// Creates and starts a container in `sandbox`; its id.
async fn start_container(ch: &Channel, sandbox: &str, config: ContainerConfig, pod: PodSandboxConfig) -> String {
    let req =
        CreateContainerRequest { pod_sandbox_id: sandbox.into(), config: Some(config), sandbox_config: Some(pod) };
    let id = rt(ch).create_container(req).await.expect("create the container").into_inner().container_id;
    rt(ch).start_container(StartContainerRequest { container_id: id.clone() }).await.expect("start the container");
    id
}

/// The CRI's Attach URL for all three streams, no terminal.
async fn attach_url(ch: &Channel, id: &str) -> String {
    let req = AttachRequest { container_id: id.into(), stdin: true, stdout: true, stderr: true, tty: false };
    rt(ch).attach(req).await.expect("Attach").into_inner().url
}

/// The sandbox config `run_pod` runs with.
fn pod_config(name: &str) -> PodSandboxConfig {
    let metadata =
        PodSandboxMetadata { name: name.into(), namespace: "default".into(), uid: format!("uid-{name}"), attempt: 0 };
    PodSandboxConfig { metadata: Some(metadata), ..Default::default() }
}

/// A WebSocket on the stream server.
type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket on a URL the CRI answered (`query` appended),
/// offering `protocol`; the HTTP status of a refusal otherwise.
async fn ws_open(url: &str, query: &str, protocol: &str) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    let ws_url = format!("ws://{}{query}", url.strip_prefix("http://").unwrap());
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    match tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(req)).await {
        Ok(Ok((ws, resp))) => {
            assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], protocol, "the subprotocol answered");
            Ok(ws)
        }
        Ok(Err(Error::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("websocket to {url}: {e}"),
        Err(_) => panic!("websocket to {url}: no answer"),
    }
}

/// Sends `data` on `channel` (base64 for the base64 protocols).
async fn ws_send(ws: &mut Ws, base64: bool, channel: u8, data: &[u8]) {
    use base64::Engine;
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let message = if base64 {
        let mut text = char::from(b'0' + channel).to_string();
        text.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::text(text)
    } else {
        Message::binary([&[channel][..], data].concat())
    };
    ws.send(message).await.expect("send on the websocket");
}

/// The next data message, its channel and payload (decoded when the
/// message is text: base64); `None` once the server closed. A server
/// silent for 30 s fails the test.
async fn ws_next(ws: &mut Ws) -> Option<(u8, Vec<u8>)> {
    use base64::Engine;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("the server went silent");
        match next? {
            Ok(Message::Binary(b)) => return Some((b[0], b[1..].to_vec())),
            Ok(Message::Text(t)) => {
                let t = t.as_bytes();
                let data = base64::engine::general_purpose::STANDARD.decode(&t[1..]).expect("base64 from the server");
                return Some((t[0] - b'0', data));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Everything until the server closes, by channel.
async fn ws_drain(ws: &mut Ws) -> [Vec<u8>; 5] {
    let mut out: [Vec<u8>; 5] = Default::default();
    while let Some((ch, data)) = ws_next(ws).await {
        out[usize::from(ch)].extend(data);
    }
    out
}

/// Reads `channel` until its data contains `want` (other channels
/// kept in `seen`); false if the server closed first.
async fn ws_until(ws: &mut Ws, channel: u8, want: &str, seen: &mut [Vec<u8>; 5]) -> bool {
    while !text(&seen[usize::from(channel)]).contains(want) {
        let Some((ch, data)) = ws_next(ws).await else { return false };
        seen[usize::from(ch)].extend(data);
    }
    true
}

async fn ws_close(mut ws: Ws) {
    let _ = ws.close(None).await;
    while ws_next(&mut ws).await.is_some() {}
}

/// The CRI's Exec with these streams.
async fn cri_exec_streams(ch: &Channel, id: &str, cmd: &[&str], stdin: bool, stderr: bool, tty: bool) -> String {
    let req = ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr,
    };
    rt(ch).exec(req).await.expect("Exec").into_inner().url
}

/// The CRI's PortForward URL for these ports.
async fn ws_port_forward_url(ch: &Channel, id: &str, port: Vec<i32>) -> String {
    let req = PortForwardRequest { pod_sandbox_id: id.into(), port };
    rt(ch).port_forward(req).await.expect("PortForward").into_inner().url
}

/// Exec, attach and port-forward over a WebSocket, as the
/// kubelet's streaming server serves them to the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_port_forward_over_websocket() {
    let world = world(15).await;
    let ch = world.channel().await;
    let id = run_pod(&ch, POD).await;

    // stdin through cat, on base64 channels: what is sent comes back on
    // stdout; the client closing ends the exec.
    let cat_url = cri_exec_streams(&ch, &id, &["/bin/cat"], true, true, false).await;
    let mut ws = ws_open(&cat_url, "", "v4.base64.channel.k8s.io").await.expect("upgrade");
    let mut seen = Default::default();
    ws_send(&mut ws, true, 0, b"first line through cat\n").await;
    assert!(ws_until(&mut ws, 1, "first line through cat\n", &mut seen).await, "no echo: {seen:?}");
    ws_send(&mut ws, true, 0, b"second\n").await;
    assert!(ws_until(&mut ws, 1, "second\n", &mut seen).await, "no echo: {seen:?}");
    assert_eq!(text(&seen[1]), "first line through cat\nsecond\n");
    ws_close(ws).await;
    let io_dir = world.d().setup.state().join(CRI).join("io");
    assert!(eventually(|| std::fs::read_dir(&io_dir).unwrap().count() == 0).await, "the exec outlived its client");

    // stdout and stderr apart, and the v4 status of a failing command
    // (binary channels).
    let script = "read line; echo out:$line; echo err:$line >&2; exit 3";
    let url = cri_exec_streams(&ch, &id, &["/bin/sh", "-c", script], true, true, false).await;
    let mut ws = ws_open(&url, "", "v4.channel.k8s.io").await.expect("upgrade");
    ws_send(&mut ws, false, 0, b"hello\n").await;
    let got = ws_drain(&mut ws).await;
    assert_eq!(text(&got[1]), "out:hello\n");
    assert_eq!(text(&got[2]), "err:hello\n");
    let status: serde_json::Value = serde_json::from_slice(&got[3]).expect("a JSON status");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");
    // Before v4 the status is the error's text.
    let url = cri_exec_streams(&ch, &id, &["/bin/sh", "-c", "exit 5"], false, false, false).await;
    let mut ws = ws_open(&url, "", "channel.k8s.io").await.expect("upgrade");
    let got = ws_drain(&mut ws).await;
    assert_eq!(text(&got[3]), "command terminated with non-zero exit code: exit status 5");

    // A terminal resized by the client: the shell inside sees the size.
    let shell = "while read x; do /bin/busybox stty size; done";
    let url = cri_exec_streams(&ch, &id, &["/bin/sh", "-c", shell], true, false, true).await;
    let mut ws = ws_open(&url, "", "v4.channel.k8s.io").await.expect("upgrade");
    let mut seen: [Vec<u8>; 5] = Default::default();
    let mut resized = false;
    // The size and the line travel apart (ResizePty, the stdin FIFO):
    // ask again until a line was read after the resize took.
    for _ in 0..50 {
        ws_send(&mut ws, false, 4, br#"{"Width":123,"Height":45}"#).await;
        ws_send(&mut ws, false, 0, b"\n").await;
        let before = seen[1].len();
        while seen[1].len() == before || !text(&seen[1]).ends_with('\n') {
            let Some((c, data)) = ws_next(&mut ws).await else { break };
            seen[usize::from(c)].extend(data);
        }
        if text(&seen[1]).contains("45 123") {
            resized = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(resized, "the terminal never took the size: {:?}", text(&seen[1]));
    ws_close(ws).await;

    // Attach to a container echoing its stdin: the same channels.
    let script = "while read line; do echo got:$line; echo err:$line >&2; done";
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "ws-attached".into(), attempt: 0 }),
        image: Some(ImageSpec { image: world.sandbox_image.clone(), ..Default::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: true,
        ..Default::default()
    };
    let container = start_container(&ch, &id, config, pod_config(POD)).await;
    let url = attach_url(&ch, &container).await;
    let mut ws = ws_open(&url, "", "v4.channel.k8s.io").await.expect("upgrade");
    let mut seen = Default::default();
    ws_send(&mut ws, false, 0, b"attached\n").await;
    assert!(ws_until(&mut ws, 1, "got:attached\n", &mut seen).await, "no echo: {seen:?}");
    assert!(ws_until(&mut ws, 2, "err:attached\n", &mut seen).await, "no stderr: {seen:?}");
    ws_close(ws).await;

    // Port-forward to an echo server in the pod's network.
    let nc = "/bin/busybox nc -ll -p 8080 -e /bin/cat </dev/null >/dev/null 2>&1 &";
    let url = cri_exec_streams(&ch, &id, &["/bin/sh", "-c", nc], false, false, false).await;
    let mut ws = ws_open(&url, "", "v4.channel.k8s.io").await.expect("upgrade");
    let status: serde_json::Value = serde_json::from_slice(&ws_drain(&mut ws).await[3]).unwrap();
    assert_eq!(status["status"], "Success", "{status}");
    let mut echoed = false;
    let mut last = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..50 {
        // A request naming no port: the query's (the one below, its own).
        let url = ws_port_forward_url(&ch, &id, vec![]).await;
        let mut ws = ws_open(&url, "?ports=8080", "v4.channel.k8s.io").await.expect("upgrade");
        let mut seen: [Vec<u8>; 5] = Default::default();
        // Each channel starts with the port, little-endian.
        while seen[0].len() < 2 || seen[1].len() < 2 {
            let (c, data) = ws_next(&mut ws).await.expect("the ports first");
            seen[usize::from(c)].extend(data);
        }
        assert_eq!(seen[0][..2], [0x90, 0x1f], "port 8080 on the data channel");
        assert_eq!(seen[1][..2], [0x90, 0x1f], "port 8080 on the error channel");
        ws_send(&mut ws, false, 0, b"ping through the websocket\n").await;
        if ws_until(&mut ws, 0, "ping through the websocket\n", &mut seen).await {
            assert_eq!(text(&seen[0][2..]), "ping through the websocket\n");
            ws_close(ws).await;
            echoed = true;
            break;
        }
        // nc not listening yet: the dial's error, then the close.
        last = seen;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(echoed, "no echo through the forward; the error channel said {:?}", text(&last[1]));
    // A port nothing listens on: the dial's error on the error channel.
    let url = ws_port_forward_url(&ch, &id, vec![9]).await;
    let mut ws = ws_open(&url, "", "v4.base64.channel.k8s.io").await.expect("upgrade");
    let got = ws_drain(&mut ws).await;
    assert_eq!(got[1][..2], [9, 0]);
    assert!(text(&got[1][2..]).starts_with("error forwarding port 9 to pod "), "{:?}", text(&got[1]));

    // Refused: a subprotocol the server does not speak (v3 has no
    // WebSocket form), then the token it spent; SPDY's protocol names
    // are not WebSocket subprotocols for port-forward.
    let url = cri_exec_streams(&ch, &id, &["/bin/true"], false, false, false).await;
    assert_eq!(ws_open(&url, "", "v3.channel.k8s.io").await.err(), Some(403));
    assert_eq!(ws_open(&url, "", "v4.channel.k8s.io").await.err(), Some(404), "a spent token was accepted");
    assert_eq!(ws_open(&cat_url, "", "v4.channel.k8s.io").await.err(), Some(404), "a used token was accepted");
    let url = ws_port_forward_url(&ch, &id, vec![8080]).await;
    assert_eq!(ws_open(&url, "", "portforward.k8s.io").await.err(), Some(403));
}
