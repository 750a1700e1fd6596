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
//! The world and its guard are `common::cri`'s. Needs root.

mod common;

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use common::cri::{host_network, metadata, run, Pods, CRI, NS, PAUSE};
use containerd_client::services::v1::{
    containers_client::ContainersClient, leases_client::LeasesClient, snapshots::snapshots_client::SnapshotsClient,
    snapshots::StatSnapshotRequest, tasks_client::TasksClient, GetContainerRequest, GetRequest,
    ListRequest as ListLeasesRequest,
};
use crated_tests::transfer_client::with_ns;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, DnsConfig, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest,
    StopPodSandboxRequest,
};
use serde_json::Value;
use tonic::{transport::Channel, Code};

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
    assert_eq!(s.info["lastCNILoadStatus.default"], "OK");
    // What `crictl info` prints besides: go-cni's view of the networks,
    // and the daemon's paths in the config, as containerd's.
    let cni: Value = serde_json::from_str(&s.info["cniconfig"]).expect("cniconfig is JSON");
    let names: Vec<(&str, &str)> = cni["Networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["IFName"].as_str().unwrap(), n["Config"]["Name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("lo", "cni-loopback"), ("eth0", format!("crated-pods-{}", pods.bridge).as_str())]);
    assert_eq!(cni["PluginConfDir"], pods.dir.path().join("net.d").display().to_string());
    let config: Value = serde_json::from_str(&s.info["config"]).expect("config is JSON");
    assert_eq!(config["rootDir"], pods.cri_root().display().to_string());
    assert_eq!(config["stateDir"], pods.d().setup.state().join(CRI).display().to_string());
    assert_eq!(config["containerdEndpoint"], pods.d().setup.socket().display().to_string());

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

/// The ids of the leases in `k8s.io`, sorted.
async fn leases(ch: &Channel) -> Vec<String> {
    let r = LeasesClient::new(ch.clone()).list(with_ns(ListLeasesRequest::default(), NS)).await.unwrap();
    let mut ids: Vec<String> = r.into_inner().leases.into_iter().map(|l| l.id).collect();
    ids.sort();
    ids
}

/// After a failed RunPodSandbox of a pod on the test's CNI network: no
/// sandbox listed, no namespace, no sandbox directory, no container
/// record, no active snapshot, the leases there were before, and the
/// pod's address back in the pool.
async fn assert_nothing_left(pods: &Pods, ch: &Channel, leased_before: &[String]) {
    assert_eq!(list(ch, None).await, Vec::<String>::new());
    assert_eq!(entries(&pods.netns_dir()), 0, "the namespace is removed");
    assert_eq!(entries(&pods.cri_root().join("sandboxes")), 0, "the sandbox directory is removed");
    let containers = ContainersClient::new(ch.clone())
        .list(with_ns(containerd_client::services::v1::ListContainersRequest::default(), NS))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "{containers:?}");
    let mut snapshots = SnapshotsClient::new(ch.clone())
        .list(with_ns(
            containerd_client::services::v1::snapshots::ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: vec![],
            },
            NS,
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(batch) = snapshots.message().await.unwrap() {
        assert!(batch.info.iter().all(|s| s.kind != 2), "an active snapshot is left: {:?}", batch.info);
    }
    assert_eq!(leases(ch).await, leased_before, "a lease is left");
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

    let leased_before = leases(&ch).await;
    for _ in 0..2 {
        let err = run(&ch, config.clone()).await.unwrap_err();
        assert!(err.message().contains("failed to create containerd task"), "{err:?}");
        assert!(err.message().contains("no-such-command"), "{err:?}");
        assert_nothing_left(&pods, &ch, &leased_before).await;
    }
}

/// The CRI runtime's `options` reach the shim (runc's state under the
/// configured `Root`, which wins over the runtime plugin's), and
/// `enable_unprivileged_ports` / `enable_unprivileged_icmp` give a pod with
/// its own network the two sysctls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_options_and_unprivileged_sysctls() {
    let runc_root = tempfile::Builder::new().prefix("crated-cri-runc").tempdir().unwrap();
    let keys = format!(
        "enable_unprivileged_ports = true\nenable_unprivileged_icmp = true\n\
         [plugins.\"{CRI}\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"{CRI}\".containerd.runtimes.runc.options]\nRoot = {:?}\n",
        runc_root.path().display().to_string()
    );
    let pods = Pods::start_with(3, PAUSE, &keys).await;
    pods.write_conflist();
    let ch = pods.channel().await;
    let id = run(&ch, PodSandboxConfig { metadata: metadata("opts"), ..Default::default() }).await.expect("run");
    let (st, info) = status(&ch, &id).await;
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    let sysctl = &info["runtimeSpec"]["linux"]["sysctl"];
    assert_eq!(sysctl["net.ipv4.ip_unprivileged_port_start"], "0", "{sysctl}");
    assert_eq!(sysctl["net.ipv4.ping_group_range"], "0 2147483647", "{sysctl}");
    // The shim keeps each namespace's containers under `<Root>/<namespace>`.
    let listed =
        Command::new("runc").arg("--root").arg(runc_root.path().join(NS)).args(["list", "-q"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).lines().any(|l| l == id), "{listed:?}");
    // The pods go (the guard) before the runc root does.
    drop(pods);
}

/// The runtime option `SystemdCgroup = true` reaches runc (the shim runs it
/// with `--systemd-cgroup`), which refuses to run on this host (no systemd
/// as PID 1): RunPodSandbox fails with runc's reason, promptly, for a pod
/// under a slice parent (the kubelet's systemd driver) and for one with no
/// parent, and leaves nothing made (record, snapshot, lease, namespace,
/// address, sandbox directory); the daemon goes on serving the cgroupfs
/// runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_cgroup_option_reaches_runc_and_a_failed_run_leaves_nothing() {
    let keys = format!(
        "[plugins.\"{CRI}\".containerd.runtimes.sd]\nruntime_type = \"io.containerd.runc.v2\"\n\
         [plugins.\"{CRI}\".containerd.runtimes.sd.options]\nSystemdCgroup = true\n"
    );
    let pods = Pods::start_with(4, PAUSE, &keys).await;
    pods.write_conflist();
    let ch = pods.channel().await;
    let leased_before = leases(&ch).await;
    for parent in ["/crated.slice/crated-pod1.slice", ""] {
        let config = PodSandboxConfig {
            metadata: metadata("systemd"),
            linux: Some(LinuxPodSandboxConfig { cgroup_parent: parent.into(), ..Default::default() }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest { config: Some(config), runtime_handler: "sd".into() };
        let ran = tokio::time::timeout(Duration::from_secs(120), Pods::rt(&ch).run_pod_sandbox(req))
            .await
            .expect("RunPodSandbox answers");
        let err = ran.expect_err("runc's systemd driver cannot run here");
        assert!(err.message().contains("failed to create containerd task"), "{err:?}");
        assert!(err.message().contains("systemd not running on this host"), "{err:?}");
        assert_nothing_left(&pods, &ch, &leased_before).await;
    }
    // The same daemon runs a pod on the default (cgroupfs) runtime.
    let id = run(&ch, PodSandboxConfig { metadata: metadata("cgroupfs"), ..Default::default() }).await.expect("run");
    let (st, _) = status(&ch, &id).await;
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    drop(pods);
}
