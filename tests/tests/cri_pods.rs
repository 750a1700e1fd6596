//! Pod sandboxes through the CRI (k8s-cri's tonic clients on the daemon's
//! socket), against the bundle, a real registry serving the sandbox image
//! (built from busybox-static, sleeping forever), Debian's shim and runc,
//! and Debian's CNI plugins (bridge + host-local + portmap in a conflist
//! written to the test's own conf dir, with a bridge name and subnet of
//! its own): NetworkReady following the conf dir, RunPodSandbox (the
//! sandbox image pulled on demand), PodSandboxStatus with the pod IP
//! assigned inside the namespace and the host port's DNAT rule, ListPodSandbox
//! with its filters, the records containerd's CRI leaves, a daemon restart,
//! StopPodSandbox and RemovePodSandbox, a host-network pod with no
//! namespace at all; and failed runs that undo everything they made.
//!
//! `restrict_oom_score_adj` is on: the test may run where lowering the
//! OOM score is not allowed (containerd's knob for exactly that).
//!
//! A guard stops and removes every sandbox the daemon still lists, even
//! when an assertion failed, then deletes the bridge; netns mounts left
//! under the test's directory are unmounted last. Needs root.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use common::{Daemon, Setup};
use containerd_client::services::v1::{
    containers_client::ContainersClient, snapshots::snapshots_client::SnapshotsClient, snapshots::StatSnapshotRequest,
    tasks_client::TasksClient, GetContainerRequest, GetRequest,
};
use crated_tests::images::{oci_archive, ImageOptions};
use crated_tests::registry::Registry;
use crated_tests::transfer_client::{plain_http_hosts_toml, push_image, with_ns};
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, DnsConfig, ImageSpec,
    ImageStatusRequest, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest,
    StopPodSandboxRequest,
};
use serde_json::Value;
use tonic::{transport::Channel, Code};

const NS: &str = "k8s.io";
const GO_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
const CNI_BIN: &str = "/usr/lib/cni";
const CRI: &str = "io.containerd.grpc.v1.cri";
const TASK_STATE: &str = "io.containerd.runtime.v2.task";
/// The sandbox image's command: busybox-static sleeping forever.
const PAUSE: &[&str] = &["/bin/busybox", "sleep", "1000000000"];

/// One test's world: registry, daemon, conf dir, bridge. Dropping it
/// stops and removes every sandbox, then the daemon, then the bridge.
struct Pods {
    daemon: Option<Daemon>,
    _registry: Registry,
    dir: tempfile::TempDir,
    bridge: String,
    subnet_prefix: String,
    sandbox_image: String,
}

impl Pods {
    /// `n` makes the bridge and subnet unique among this file's tests, the
    /// pid among concurrent runs. The conf dir starts empty.
    async fn start(n: u8, cmd: &[&str]) -> Pods {
        let registry = Registry::start().expect("registry fixture");
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        plain_http_hosts_toml(&certs, &registry.host());
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let pid = std::process::id();
        let bridge = format!("crp{:x}x{n}", pid % 0xfffff);
        let subnet_prefix = format!("10.{}.{}", 220 + n, pid % 250);
        let sandbox_image = format!("{}/test/pause:1", registry.host());
        let setup = Setup::new(&[])
            .with_real_plugins(&["content", "metadata", "events", "snapshots", "diff", "transfer", "runtime", "cri"])
            .extra(&format!(
                "[plugins.\"{CRI}\"]\nsandbox_image = {sandbox_image:?}\nrestrict_oom_score_adj = true\n\
                 [plugins.\"{CRI}\".registry]\nconfig_path = {:?}\n\
                 [plugins.\"{CRI}\".cni]\nbin_dir = {CNI_BIN:?}\nconf_dir = {:?}\n\
                 [plugins.\"{TASK_STATE}\".runtimes.\"io.containerd.runc.v2\"]\nruntime_path = {GO_SHIM:?}\n\
                 [plugins.\"{TASK_STATE}\".runtimes.\"io.containerd.runc.v2\".options]\nRoot = {:?}\n",
                certs.display().to_string(),
                conf_dir.display().to_string(),
                dir.path().join("runc").display().to_string(),
            ));
        let pods = Pods { daemon: Some(setup.start()), _registry: registry, dir, bridge, subnet_prefix, sandbox_image };
        let ch = pods.channel().await;
        let cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        let archive = oci_archive(&ImageOptions { cmd, ..Default::default() }).unwrap();
        push_image(&ch, &archive, &pods.sandbox_image, None).await;
        pods
    }

    fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon")
    }

    async fn channel(&self) -> Channel {
        self.d().channel().await
    }

    fn rt(ch: &Channel) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(ch.clone())
    }

    /// Writes the bridge + host-local + portmap conflist.
    fn write_conflist(&self) {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"crated-pods-{bridge}","plugins":[
              {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
                "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{p}.0/24"}}]],"dataDir":"{data}"}}}},
              {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            bridge = self.bridge,
            p = self.subnet_prefix,
            data = self.dir.path().join("ipam").display(),
        );
        std::fs::write(self.dir.path().join("net.d/10-pods.conflist"), conf).unwrap();
    }

    fn cri_root(&self) -> PathBuf {
        self.d().setup.root().join(CRI)
    }

    fn netns_dir(&self) -> PathBuf {
        self.d().setup.state().join(CRI).join("netns")
    }

    /// Stops and removes every sandbox the daemon lists.
    async fn clean(&self) {
        let ch = self.channel().await;
        let items = match Pods::rt(&ch).list_pod_sandbox(ListPodSandboxRequest::default()).await {
            Ok(r) => r.into_inner().items,
            Err(_) => return,
        };
        for s in items {
            let id = s.id;
            let _ = Pods::rt(&ch).stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
            let _ = Pods::rt(&ch).remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await;
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        if self.daemon.as_ref().is_some_and(|d| d.setup.socket().exists()) {
            // The guard runs outside the test's runtime (which may be
            // unwinding): a runtime of its own on a thread of its own.
            std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(self.clean());
                });
            });
        }
        self.daemon.take();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        // Whatever namespace mount is still there (only after a failure).
        let dir = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)) {
            let _ = Command::new("umount").arg(m).output();
        }
    }
}

fn metadata(name: &str) -> Option<PodSandboxMetadata> {
    Some(PodSandboxMetadata { name: name.into(), namespace: "default".into(), uid: format!("uid-{name}"), attempt: 0 })
}

fn host_network() -> Option<LinuxPodSandboxConfig> {
    Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

async fn run(ch: &Channel, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    let req = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
    Pods::rt(ch).run_pod_sandbox(req).await.map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(ch: &Channel, id: &str) -> (k8s_cri::v1::PodSandboxStatus, Value) {
    let req = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
    let r = Pods::rt(ch).pod_sandbox_status(req).await.expect("sandbox status").into_inner();
    let info = serde_json::from_str(&r.info["info"]).expect("verbose info is JSON");
    (r.status.unwrap(), info)
}

async fn list(ch: &Channel, filter: Option<PodSandboxFilter>) -> Vec<String> {
    let r = Pods::rt(ch).list_pod_sandbox(ListPodSandboxRequest { filter }).await.expect("list").into_inner();
    let mut ids: Vec<String> = r.items.into_iter().map(|s| s.id).collect();
    ids.sort();
    ids
}

fn state_filter(state: PodSandboxState) -> Option<PodSandboxFilter> {
    Some(PodSandboxFilter { state: Some(PodSandboxStateValue { state: state as i32 }), ..Default::default() })
}

/// The network namespace path of the spec's network namespace, if any.
fn spec_netns(info: &Value) -> Option<String> {
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .map(|n| n["path"].as_str().unwrap_or_default().to_string())
}

/// The IPv4 addresses of `eth0` inside a namespace, by `ip -j addr`.
fn addresses_in(netns: &str) -> Vec<String> {
    let out = Command::new("nsenter").arg(format!("--net={netns}")).args(["ip", "-j", "addr"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"] == "eth0")
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .map(|a| a["local"].as_str().unwrap().to_string())
        .collect()
}

/// The nat table, where portmap puts a pod's host ports.
fn nat_rules() -> String {
    let out = Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_run_list_restart_stop_remove() {
    let mut pods = Pods::start(1, PAUSE).await;
    let ch = pods.channel().await;

    // No network in the conf dir: not ready, as containerd says it.
    let s = Pods::rt(&ch).status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let net = s.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert_eq!(net.message, "Network plugin returns error: cni plugin not initialized");
    assert!(s.info["lastCNILoadStatus"].contains("no network config found"), "{:?}", s.info);
    // Once a network is there, Status loads it.
    pods.write_conflist();
    let s = Pods::rt(&ch).status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let net = s.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(net.status, "{net:?}");
    assert_eq!(s.info["lastCNILoadStatus"], "OK");

    // A pod on the bridge; the sandbox image is pulled on demand.
    let host_port = 20000 + (std::process::id() % 20000) as i32;
    let web = run(
        &ch,
        PodSandboxConfig {
            metadata: metadata("web"),
            hostname: "web-host".into(),
            labels: HashMap::from([("app".into(), "web".into()), ("tier".into(), "front".into())]),
            annotations: HashMap::from([("note".into(), "hello".into())]),
            dns_config: Some(DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: vec![PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 80,
                host_port,
                host_ip: String::new(),
            }],
            ..Default::default()
        },
    )
    .await
    .expect("run the web sandbox");
    assert_eq!(web.len(), 64, "{web}");
    assert!(web.chars().all(|c| c.is_ascii_hexdigit()), "{web}");
    let image = ImageServiceClient::new(ch.clone())
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec { image: pods.sandbox_image.clone(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("the sandbox image was pulled");
    assert!(image.pinned, "{image:?}");

    let (st, info) = status(&ch, &web).await;
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata, metadata("web"));
    assert_eq!(st.labels["app"], "web");
    assert_eq!(st.annotations["note"], "hello");
    let ip = st.network.clone().unwrap().ip;
    assert!(ip.starts_with(&format!("{}.", pods.subnet_prefix)), "{ip} not in {}.0/24", pods.subnet_prefix);
    assert_eq!(info["processStatus"], "running");
    assert!(info["pid"].as_u64().unwrap() > 0, "{info}");
    assert_eq!(info["runtimeSpec"]["hostname"], "web-host");
    assert_eq!(info["runtimeSpec"]["annotations"]["io.kubernetes.cri.sandbox-id"], web.as_str());
    let netns = spec_netns(&info).expect("a network namespace");
    assert!(Path::new(&netns).starts_with(pods.netns_dir()), "{netns}");
    assert_eq!(addresses_in(&netns), vec![ip.clone()], "the pod IP is on eth0 inside the namespace");
    let resolv = std::fs::read_to_string(pods.cri_root().join("sandboxes").join(&web).join("resolv.conf")).unwrap();
    assert_eq!(resolv, "search svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n");
    assert!(nat_rules().contains(&format!("--dport {host_port}")), "portmap set no DNAT for {host_port}");
    let mounts = info["runtimeSpec"]["mounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["destination"] == "/etc/resolv.conf"), "{mounts:?}");

    // The record containerd's CRI leaves.
    let c = ContainersClient::new(ch.clone())
        .get(with_ns(GetContainerRequest { id: web.clone() }, NS))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(c.labels["io.cri-containerd.kind"], "sandbox");
    assert_eq!(c.labels["app"], "web");
    assert!(c.extensions.contains_key("io.cri-containerd.sandbox.metadata"), "{:?}", c.extensions.keys());
    assert_eq!(c.snapshot_key, web);

    // A host-network pod: no namespace, no IP.
    let db = run(
        &ch,
        PodSandboxConfig {
            metadata: metadata("db"),
            labels: HashMap::from([("app".into(), "db".into())]),
            linux: host_network(),
            ..Default::default()
        },
    )
    .await
    .expect("run the host-network sandbox");
    let (st, info) = status(&ch, &db).await;
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(st.network.unwrap().ip, "");
    assert_eq!(spec_netns(&info), None, "a host-network pod joins no namespace");
    assert_eq!(entries(&pods.netns_dir()), 1, "only the web pod has a namespace");

    // The same name twice is refused.
    let again = run(&ch, PodSandboxConfig { metadata: metadata("db"), linux: host_network(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // Lists and filters.
    let mut both = vec![web.clone(), db.clone()];
    both.sort();
    assert_eq!(list(&ch, None).await, both);
    let by_id = PodSandboxFilter { id: web[..12].to_string(), ..Default::default() };
    assert_eq!(list(&ch, Some(by_id)).await, vec![web.clone()]);
    let by_label =
        PodSandboxFilter { label_selector: HashMap::from([("app".into(), "web".into())]), ..Default::default() };
    assert_eq!(list(&ch, Some(by_label)).await, vec![web.clone()]);
    assert_eq!(list(&ch, state_filter(PodSandboxState::SandboxReady)).await, both);
    assert_eq!(list(&ch, state_filter(PodSandboxState::SandboxNotready)).await, Vec::<String>::new());

    // A restarted daemon lists the same sandboxes, still ready (the shims
    // kept running).
    {
        let d = pods.daemon.as_mut().unwrap();
        d.stop();
        d.restart();
    }
    let ch = pods.channel().await;
    assert_eq!(list(&ch, None).await, both);
    let (st, _) = status(&ch, &web).await;
    assert_eq!((st.state, st.network.unwrap().ip), (PodSandboxState::SandboxReady as i32, ip.clone()));

    // Stop: the task is gone, the namespace too.
    Pods::rt(&ch).stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: web.clone() }).await.expect("stop");
    let (st, info) = status(&ch, &web).await;
    assert_eq!(st.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(st.network.unwrap().ip, "");
    assert_eq!(info["netNamespaceClosed"], true);
    assert!(!Path::new(&netns).exists(), "{netns} is still there");
    assert!(!nat_rules().contains(&format!("--dport {host_port}")), "CNI DEL left the DNAT for {host_port}");
    let task = TasksClient::new(ch.clone())
        .get(with_ns(GetRequest { container_id: web.clone(), exec_id: String::new() }, NS))
        .await
        .unwrap_err();
    assert_eq!(task.code(), Code::NotFound, "{task:?}");
    assert_eq!(list(&ch, state_filter(PodSandboxState::SandboxReady)).await, vec![db.clone()]);
    assert_eq!(list(&ch, state_filter(PodSandboxState::SandboxNotready)).await, vec![web.clone()]);

    // Remove: record, snapshot and files gone; again is fine.
    Pods::rt(&ch).remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: web.clone() }).await.expect("remove");
    assert_eq!(list(&ch, None).await, vec![db.clone()]);
    let gone = ContainersClient::new(ch.clone()).get(with_ns(GetContainerRequest { id: web.clone() }, NS)).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    let snap = SnapshotsClient::new(ch.clone())
        .stat(with_ns(StatSnapshotRequest { snapshotter: "overlayfs".into(), key: web.clone() }, NS))
        .await;
    assert_eq!(snap.unwrap_err().code(), Code::NotFound);
    assert!(!pods.cri_root().join("sandboxes").join(&web).exists());
    Pods::rt(&ch).remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: web.clone() }).await.expect("again");
    let unknown = Pods::rt(&ch).stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: web.clone() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    // A ready sandbox is stopped by its removal.
    Pods::rt(&ch).remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: db.clone() }).await.expect("remove db");
    assert_eq!(list(&ch, None).await, Vec::<String>::new());
    let task = TasksClient::new(ch.clone())
        .get(with_ns(GetRequest { container_id: db.clone(), exec_id: String::new() }, NS))
        .await
        .unwrap_err();
    assert_eq!(task.code(), Code::NotFound, "{task:?}");
    assert_eq!(entries(&pods.netns_dir()), 0);
}

/// Runs that fail leave nothing: an unknown runtime handler fails before
/// anything is made; a sandbox image whose command does not exist fails
/// at the task, after the namespace, CNI, snapshot and record were made,
/// and all of them are undone (the name is free again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_leave_nothing_behind() {
    let pods = Pods::start(2, &["/bin/no-such-command"]).await;
    pods.write_conflist();
    let ch = pods.channel().await;
    let config = PodSandboxConfig { metadata: metadata("broken"), ..Default::default() };

    let req = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "nope".into() };
    let err = Pods::rt(&ch).run_pod_sandbox(req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no runtime for \"nope\""), "{err:?}");

    for _ in 0..2 {
        let err = run(&ch, config.clone()).await.unwrap_err();
        assert!(err.message().contains("failed to create containerd task"), "{err:?}");
        assert!(err.message().contains("no-such-command"), "{err:?}");
        assert_eq!(list(&ch, None).await, Vec::<String>::new());
        assert_eq!(entries(&pods.netns_dir()), 0, "the namespace is removed");
        assert_eq!(entries(&pods.cri_root().join("sandboxes")), 0, "the sandbox directory is removed");
        let containers = ContainersClient::new(ch.clone())
            .list(with_ns(containerd_client::services::v1::ListContainersRequest::default(), NS))
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(containers.is_empty(), "{containers:?}");
        let snapshots = SnapshotsClient::new(ch.clone())
            .list(with_ns(
                containerd_client::services::v1::snapshots::ListSnapshotsRequest {
                    snapshotter: "overlayfs".into(),
                    filters: vec![],
                },
                NS,
            ))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .map(|r| r.info)
            .unwrap_or_default();
        assert!(snapshots.iter().all(|s| s.kind != 2), "an active snapshot is left: {snapshots:?}");
        // The pod's address went back to the pool: host-local keeps one
        // file per address it hands out.
        let ipam = pods.dir.path().join("ipam").join(format!("crated-pods-{}", pods.bridge));
        let leased = std::fs::read_dir(&ipam)
            .expect("host-local ran (its data dir)")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
            .count();
        assert_eq!(leased, 0, "CNI DEL released the address");
    }
}
