//! Pod sandboxes, as containerd 1.6's `pkg/cri/server/sandbox_*.go`: a
//! sandbox is a pause container of the configured `sandbox_image`, a
//! container record in `k8s.io` labelled `io.cri-containerd.kind=sandbox`
//! whose extension `io.cri-containerd.sandbox.metadata` keeps the CRI's
//! metadata (config, netns path, pod IPs), and a task started through the
//! Tasks service in its own network namespace attached by CNI.
//!
//! There is no in-memory sandbox store: the records are the store, and a
//! sandbox's state is its task's (running is READY, anything else
//! NOTREADY), so a daemon restarted over the same root lists the same
//! sandboxes with the same states.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use containerd_client::{
    services::v1::{
        container::Runtime as ContainerRuntime,
        snapshots::{PrepareSnapshotRequest, PrepareSnapshotResponse},
        Container, CreateContainerRequest, CreateTaskRequest, CreateTaskResponse, DeleteContainerRequest,
        DeleteTaskRequest, GetRequest, GetResponse, KillRequest, ListContainersRequest, ListContainersResponse,
        StartRequest, StartResponse, UpdateContainerRequest, WaitRequest,
    },
    types::Mount,
};
use crated_cni::{Cni, DnsCapability, NetNs, PodNetworkArgs, PortMapping};
use crated_plugin_api::{Code, Host, Status};
use k8s_cri::v1::{
    LinuxPodSandboxStatus, Namespace, NamespaceMode, NamespaceOption, PodIp, PodSandbox, PodSandboxConfig,
    PodSandboxFilter, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus, Protocol,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shim_protocol::oci::DEFAULT_CAPS;

use crate::{
    calls::{self, CONTAINERS, SNAPSHOTS, SPEC_TYPE_URL},
    config::Config,
    container_spec::{default_mounts, mount, Cgroups, MASKED_PATHS, READONLY_PATHS},
    images::ImageStore,
    service::NAMESPACE,
};

/// The label containerd's CRI puts on its containers, and its values.
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
pub const KIND_SANDBOX: &str = "sandbox";
/// The container extension holding the sandbox's CRI metadata.
pub const METADATA_EXTENSION: &str = "io.cri-containerd.sandbox.metadata";
/// The type URL containerd registers the metadata under (JSON payload).
pub const METADATA_TYPE_URL: &str = "github.com/containerd/containerd/pkg/cri/store/sandbox/Metadata";

/// containerd's `defaultSandboxOOMAdj`.
const SANDBOX_OOM_ADJ: i32 = -998;

/// The sandbox's OOM score: containerd's -998, or with
/// `restrict_oom_score_adj` no lower than the daemon's own (a daemon
/// without CAP_SYS_RESOURCE cannot lower it, and runc would fail).
fn sandbox_oom_score_adj(restrict: bool) -> i32 {
    if !restrict {
        return SANDBOX_OOM_ADJ;
    }
    let current = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    SANDBOX_OOM_ADJ.max(current)
}
/// The task status a running task reports (containerd's `types.Status`).
const TASK_RUNNING: i32 = 2;
const SIGKILL: u32 = 9;

/// What the container record's extension keeps: containerd's
/// `versionedMetadata`, same JSON names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Config")]
    pub config: Option<PodSandboxConfig>,
    #[serde(rename = "NetNSPath")]
    pub netns_path: String,
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "AdditionalIPs", default)]
    pub additional_ips: Vec<String>,
    #[serde(rename = "RuntimeHandler")]
    pub runtime_handler: String,
    #[serde(rename = "CNIResult", default)]
    pub cni_result: Option<Value>,
}

impl Metadata {
    fn to_any(&self) -> prost_types::Any {
        calls::extension(METADATA_TYPE_URL, self)
    }

    fn from_container(c: &Container) -> Option<Metadata> {
        calls::from_extension(c, METADATA_EXTENSION)
    }

    fn host_network(&self) -> bool {
        host_network(self.config.as_ref())
    }
}

fn namespace_options(config: Option<&PodSandboxConfig>) -> Option<NamespaceOption> {
    config?.linux.as_ref()?.security_context.as_ref()?.namespace_options.clone()
}

/// Mounts the pod's `/dev/shm` tmpfs (containerd's options and size).
fn mount_shm(path: &Path) -> std::io::Result<()> {
    use rustix::mount::{mount, MountFlags};
    std::fs::create_dir_all(path)?;
    mount("shm", path, "tmpfs", MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOSUID, c"mode=1777,size=65536k")?;
    Ok(())
}

/// Unmounts the pod's `/dev/shm`; one that is not mounted is fine.
fn unmount_shm(path: &Path) {
    if let Err(e) = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        if !matches!(e, rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) {
            crated_plugin_api::tracing::warn!("failed to unmount sandbox shm {path:?}: {e}");
        }
    }
}

pub fn host_ipc(config: Option<&PodSandboxConfig>) -> bool {
    namespace_options(config).is_some_and(|n| n.ipc == NamespaceMode::Node as i32)
}

fn host_network(config: Option<&PodSandboxConfig>) -> bool {
    namespace_options(config).is_some_and(|n| n.network == NamespaceMode::Node as i32)
}

/// containerd's `makeSandboxName`.
fn sandbox_name(m: &k8s_cri::v1::PodSandboxMetadata) -> String {
    [m.name.as_str(), m.namespace.as_str(), m.uid.as_str(), &m.attempt.to_string()].join("_")
}

/// containerd's `parseDNSOptions`.
pub fn resolv_conf(servers: &[String], searches: &[String], options: &[String]) -> Result<String, Status> {
    if searches.len() > 6 {
        return Err(Status::invalid_argument("DNSOption.Searches has more than 6 domains"));
    }
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !servers.is_empty() {
        out.push_str(&format!("nameserver {}\n", servers.join("\nnameserver ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    Ok(out)
}

/// The sandbox's files its spec mounts.
pub struct SandboxFiles<'a> {
    pub resolv: &'a Path,
    /// The pod's `/dev/shm` tmpfs, none in the host's IPC namespace.
    pub shm: Option<&'a Path>,
}

/// The pause container's OCI runtime spec: containerd's default spec
/// with the image's process, the pod's hostname and namespaces (the
/// network one at `netns`), `/etc/resolv.conf` from the sandbox
/// directory, and containerd's sandbox annotations. Checked against the
/// runtime spec's types (oci-spec) before use.
/// The runtime's `options` table as the shim reads them: runc's
/// `Options` for the runc shims, as containerd's CRI hands them over (the
/// runtime plugin fills what they leave empty from its own config). Other
/// runtimes get none.
fn runtime_options(runtime: &crate::config::Runtime) -> Result<Option<prost_types::Any>, Status> {
    if !runtime.runtime_type.starts_with("io.containerd.runc.") || runtime.options.is_empty() {
        return Ok(None);
    }
    let options = shim_protocol::runc::runc_options(&runtime.options)
        .map_err(|e| Status::invalid_argument(format!("failed to get runtime options: {e}")))?;
    Ok(Some(prost_types::Any {
        type_url: shim_protocol::runc::OPTIONS_TYPE_URL.into(),
        value: prost::Message::encode_to_vec(&options),
    }))
}

/// What the CRI config adds to a sandbox's spec: containerd's
/// `enable_unprivileged_ports` / `enable_unprivileged_icmp` (sysctls a pod
/// with a network namespace of its own gets unless its config sets them)
/// the runtime's `pod_annotations` (patterns of the pod annotations
/// passed through to the runtime in the spec), and where its cgroup is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxSpecOptions<'a> {
    pub unprivileged_ports: bool,
    pub unprivileged_icmp: bool,
    pub pod_annotations: &'a [String],
    pub cgroups: Cgroups,
}

/// containerd's `DefaultSandboxCPUshares`: the pause container's CPU
/// shares, unless `disable_cgroup`.
const SANDBOX_CPU_SHARES: u64 = 2;

pub fn sandbox_spec(
    id: &str,
    config: &PodSandboxConfig,
    image_config: &Value,
    netns: Option<&Path>,
    files: &SandboxFiles,
    oom_score_adj: i32,
    options: SandboxSpecOptions<'_>,
) -> Result<Vec<u8>, Status> {
    let img = image_config.get("config").cloned().unwrap_or(Value::Null);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let mut args = strings(img.get("Entrypoint"));
    args.extend(strings(img.get("Cmd")));
    if args.is_empty() {
        return Err(Status::invalid_argument("no command specified in the sandbox image"));
    }
    let mut env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    for e in strings(img.get("Env")) {
        let name = e.split('=').next().unwrap_or_default().to_string();
        env.retain(|x| x.split('=').next() != Some(name.as_str()));
        env.push(e);
    }
    let cwd = img.get("WorkingDir").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("/");
    let linux = config.linux.clone().unwrap_or_default();
    let sec = linux.security_context.clone().unwrap_or_default();
    let ns = sec.namespace_options.clone().unwrap_or_default();
    let uid = sec.run_as_user.map(|u| u.value).unwrap_or(0);
    let gid = sec.run_as_group.map(|g| g.value).unwrap_or(0);

    let mut namespaces = Vec::new();
    if ns.pid != NamespaceMode::Node as i32 {
        namespaces.push(json!({"type": "pid"}));
    }
    if ns.ipc != NamespaceMode::Node as i32 {
        namespaces.push(json!({"type": "ipc"}));
    }
    let host_net = ns.network == NamespaceMode::Node as i32;
    let mut sysctls = linux.sysctls.clone();
    if !host_net {
        if options.unprivileged_ports {
            sysctls.entry("net.ipv4.ip_unprivileged_port_start".into()).or_insert_with(|| "0".into());
        }
        if options.unprivileged_icmp {
            sysctls.entry("net.ipv4.ping_group_range".into()).or_insert_with(|| "0 2147483647".into());
        }
    }
    if !host_net {
        // A hostname needs a UTS namespace of its own; a host-network pod
        // shares the host's (containerd drops both).
        namespaces.push(json!({"type": "uts"}));
    }
    namespaces.push(json!({"type": "mount"}));
    if !host_net {
        let path = netns.map(|p| p.display().to_string()).unwrap_or_default();
        namespaces.push(json!({"type": "network", "path": path}));
    }
    let caps = DEFAULT_CAPS.to_vec();
    let meta = config.metadata.clone().unwrap_or_default();
    let mut annotations = calls::passthrough_annotations(&config.annotations, options.pod_annotations);
    annotations.insert("io.kubernetes.cri.container-type".into(), KIND_SANDBOX.into());
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), id.into());
    annotations.insert("io.kubernetes.cri.sandbox-namespace".into(), meta.namespace.clone());
    annotations.insert("io.kubernetes.cri.sandbox-uid".into(), meta.uid.clone());
    annotations.insert("io.kubernetes.cri.sandbox-name".into(), meta.name.clone());
    annotations.insert("io.kubernetes.cri.sandbox-log-directory".into(), config.log_directory.clone());
    let mut mounts = default_mounts(false);
    mounts.push(mount("/etc/resolv.conf", "bind", &files.resolv.display().to_string(), &["rbind", "ro"]));
    if let Some(shm) = files.shm {
        mounts.retain(|m| m["destination"] != "/dev/shm");
        mounts.push(mount(
            "/dev/shm",
            "bind",
            &shm.display().to_string(),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        ));
    }
    let mut doc = json!({
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs", "readonly": sec.readonly_rootfs},
        "process": {
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true,
            "oomScoreAdj": oom_score_adj,
        },
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "sysctl": sysctls,
        },
        "annotations": annotations,
    });
    if !host_net && !config.hostname.is_empty() {
        doc["hostname"] = json!(config.hostname);
    }
    if let Some(path) = options.cgroups.path(&linux.cgroup_parent, id) {
        doc["linux"]["cgroupsPath"] = json!(path);
    }
    if !options.cgroups.disabled {
        doc["linux"]["resources"]["cpu"] = json!({"shares": SANDBOX_CPU_SHARES});
    }
    let spec: oci_spec::runtime::Spec =
        serde_json::from_value(doc).map_err(|e| Status::internal(format!("invalid sandbox spec: {e}")))?;
    serde_json::to_vec(&spec).map_err(|e| Status::internal(e.to_string()))
}

/// The pod's IPs from a CNI result: `eth0`'s, IPv4 first (containerd's
/// `selectPodIPs` with the default preference).
fn select_pod_ips(result: &crated_cni::PodNetworkResult) -> (String, Vec<String>) {
    let mut ips: Vec<IpAddr> =
        result.interfaces.get("eth0").map(|i| i.ips.iter().map(|ip| ip.address.addr).collect()).unwrap_or_default();
    ips.sort_by_key(|ip| !ip.is_ipv4());
    let mut it = ips.into_iter().map(|ip| ip.to_string());
    (it.next().unwrap_or_default(), it.collect())
}

fn network_args(config: &PodSandboxConfig) -> PodNetworkArgs {
    let meta = config.metadata.clone().unwrap_or_default();
    PodNetworkArgs {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        port_mappings: config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: Protocol::try_from(p.protocol)
                    .map(|p| p.as_str_name().to_ascii_lowercase())
                    .unwrap_or_else(|_| "tcp".into()),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        dns: config.dns_config.as_ref().map(|d| DnsCapability {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        annotations: config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    }
}

/// The pod sandboxes of the CRI, over the plugin's dependencies.
#[derive(Clone)]
pub struct Sandboxes {
    host: Host,
    config: Arc<Config>,
    cni: Arc<Cni>,
    /// `<root>/sandboxes/<id>`: resolv.conf, hostname.
    root: PathBuf,
    /// `<state>/netns`: the pods' network namespaces.
    netns_dir: PathBuf,
    /// `<state>/sandboxes/<id>`: the pod's `/dev/shm` (a tmpfs).
    state: PathBuf,
    /// Names being run now (containerd's name index for runs in flight).
    reserved: Arc<Mutex<HashSet<String>>>,
}

/// What a run made so far, for undoing it on failure.
#[derive(Default)]
struct Made {
    /// The lease holding the snapshot until the record references it:
    /// a garbage collection in between would take the snapshot (as
    /// containerd's client, which leases every container it creates).
    lease: Option<crated_plugin_api::lease::LeaseGuard>,
    dir: Option<PathBuf>,
    shm: Option<PathBuf>,
    netns: Option<NetNs>,
    snapshot: bool,
    container: bool,
    network: bool,
    task: bool,
}

impl Sandboxes {
    pub fn new(host: Host, config: Arc<Config>, cni: Arc<Cni>, root: &Path, state: &Path) -> Sandboxes {
        Sandboxes {
            host,
            config,
            cni,
            root: root.join("sandboxes"),
            netns_dir: state.join("netns"),
            state: state.join("sandboxes"),
            reserved: Arc::default(),
        }
    }

    /// The pod's shared `/dev/shm`, a tmpfs mounted while the sandbox
    /// runs (none for a pod in the host's IPC namespace).
    pub fn shm(&self, id: &str) -> PathBuf {
        self.state.join(id).join("shm")
    }

    /// The sandbox's directory: `hostname`, `hosts`, `resolv.conf`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Every sandbox record of `k8s.io`.
    async fn records(&self) -> Result<Vec<(Container, Metadata)>, Status> {
        let req = ListContainersRequest { filters: vec![] };
        let resp: ListContainersResponse = calls::unary(&self.host, format!("{CONTAINERS}/List"), &req).await?;
        Ok(resp
            .containers
            .into_iter()
            .filter(|c| c.labels.get(KIND_LABEL).map(String::as_str) == Some(KIND_SANDBOX))
            .filter_map(|c| Metadata::from_container(&c).map(|m| (c, m)))
            .collect())
    }

    /// The sandbox a full or unique truncated id names.
    pub async fn find(&self, id: &str) -> Result<(Container, Metadata), Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("sandbox id is empty"));
        }
        let mut found: Vec<_> = self.records().await?.into_iter().filter(|(c, _)| c.id.starts_with(id)).collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Status::not_found(format!("an error occurred when try to find sandbox {id:?}: not found"))),
            _ => Err(Status::invalid_argument(format!("sandbox id {id:?} is ambiguous"))),
        }
    }

    /// The sandbox's task: its pid and whether it runs.
    pub async fn task_state(&self, id: &str) -> (u32, bool) {
        let req = GetRequest { container_id: id.into(), exec_id: String::new() };
        match calls::tasks::<_, GetResponse>(&self.host, "Get", &req).await {
            Ok(r) => r.process.map(|p| (p.pid, p.status == TASK_RUNNING)).unwrap_or((0, false)),
            Err(_) => (0, false),
        }
    }

    /// The network namespace of a ready sandbox, for port forwarding
    /// ("" for a host-network pod); a sandbox not running is refused.
    pub async fn netns_path(&self, id: &str) -> Result<String, Status> {
        let (c, meta) = self.find(id).await.map_err(|s| s.context(format!("failed to find sandbox {id:?}")))?;
        let (_, running) = self.task_state(&c.id).await;
        if !running {
            return Err(Status::failed_precondition(format!("sandbox container {:?} is not running", c.id)));
        }
        Ok(if meta.host_network() { String::new() } else { meta.netns_path })
    }

    pub async fn run(&self, config: Option<PodSandboxConfig>, runtime_handler: String) -> Result<String, Status> {
        let config = config.ok_or_else(|| Status::invalid_argument("sandbox config must include metadata"))?;
        let meta =
            config.metadata.clone().ok_or_else(|| Status::invalid_argument("sandbox config must include metadata"))?;
        let id = calls::generate_id();
        let name = sandbox_name(&meta);
        {
            let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
            if !reserved.insert(name.clone()) {
                return Err(Status::already_exists(format!(
                    "failed to reserve sandbox name {name:?}: name {name:?} is reserved"
                )));
            }
        }
        let result = async {
            if let Some((c, _)) = self.records().await?.into_iter().find(|(_, m)| m.name == name) {
                return Err(Status::already_exists(format!(
                    "failed to reserve sandbox name {name:?}: name {name:?} is reserved for {:?}",
                    c.id
                )));
            }
            let mut made = Made::default();
            let r = self.run_inner(&id, &name, &config, &runtime_handler, &mut made).await;
            let lease = made.lease.take();
            if r.is_err() {
                self.undo(&id, &config, made).await;
            }
            if let Some(lease) = lease {
                lease.release().await;
            }
            r
        }
        .await;
        self.reserved.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
        result.map(|_| id)
    }

    async fn run_inner(
        &self,
        id: &str,
        name: &str,
        config: &PodSandboxConfig,
        runtime_handler: &str,
        made: &mut Made,
    ) -> Result<(), Status> {
        let sandbox_image = &self.config.sandbox_image;
        let images = ImageStore::new(self.host.clone(), NAMESPACE);
        let image = match images.find(sandbox_image).await? {
            Some(i) => i,
            None => {
                crate::pull::pull(&self.host, &self.config, NAMESPACE, sandbox_image, None)
                    .await
                    .map_err(|s| s.context(format!("failed to get sandbox image {sandbox_image:?}")))?;
                images.find(sandbox_image).await?.ok_or_else(|| {
                    Status::not_found(format!("failed to get sandbox image {sandbox_image:?}: not found after pull"))
                })?
            }
        };
        let handler = if runtime_handler.is_empty() {
            self.config.containerd.default_runtime_name.clone()
        } else {
            runtime_handler.to_string()
        };
        let runtime = self.config.containerd.runtimes.get(&handler).ok_or_else(|| {
            Status::not_found(format!("failed to get sandbox runtime: no runtime for {handler:?} is configured"))
        })?;

        // The sandbox's files: hostname and resolv.conf.
        let dir = self.root.join(id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Status::internal(format!("failed to create sandbox root directory {dir:?}: {e}")))?;
        made.dir = Some(dir.clone());
        let hostname = if config.hostname.is_empty() {
            rustix::system::uname().nodename().to_string_lossy().into_owned()
        } else {
            config.hostname.clone()
        };
        let write = |p: PathBuf, s: String| async move {
            tokio::fs::write(&p, s).await.map_err(|e| Status::internal(format!("failed to write {p:?}: {e}")))
        };
        write(dir.join("hostname"), format!("{hostname}\n")).await?;
        // The containers' /etc/hosts: the host's, as containerd copies it.
        let hosts = tokio::fs::read_to_string("/etc/hosts").await.unwrap_or_default();
        write(dir.join("hosts"), hosts).await?;
        let resolv = dir.join("resolv.conf");
        match &config.dns_config {
            Some(d) => write(resolv.clone(), resolv_conf(&d.servers, &d.searches, &d.options)?).await?,
            None => {
                let host = tokio::fs::read_to_string("/etc/resolv.conf").await.unwrap_or_default();
                write(resolv.clone(), host).await?;
            }
        }

        if !host_ipc(Some(config)) {
            let shm = self.shm(id);
            made.shm = Some(shm.clone());
            mount_shm(&shm).map_err(|e| Status::internal(format!("failed to mount sandbox shm {shm:?}: {e}")))?;
        }
        let host_net = host_network(Some(config));
        if !host_net {
            let ns = NetNs::create_unique(&self.netns_dir)
                .await
                .map_err(|e| Status::internal(format!("failed to create network namespace for sandbox {id:?}: {e}")))?;
            made.netns = Some(ns);
        }
        let netns_path = made.netns.as_ref().map(|n| n.path().to_path_buf());
        let oom = sandbox_oom_score_adj(self.config.restrict_oom_score_adj);
        let files = SandboxFiles { resolv: &resolv, shm: made.shm.as_deref() };
        let options = SandboxSpecOptions {
            unprivileged_ports: self.config.enable_unprivileged_ports,
            unprivileged_icmp: self.config.enable_unprivileged_icmp,
            pod_annotations: &runtime.pod_annotations,
            cgroups: Cgroups::new(&self.config, runtime),
        };
        let spec = sandbox_spec(id, config, &image.spec, netns_path.as_deref(), &files, oom, options)?;

        let snapshotter = self.config.containerd.snapshotter.clone();
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.clone(),
            key: id.into(),
            parent: image.chain_id.clone(),
            labels: HashMap::new(),
        };
        let lease = made.lease.insert(calls::lease(&self.host, id).await?);
        let mounts: Vec<Mount> = self
            .host
            .unary::<_, PrepareSnapshotResponse>(&lease.call(&format!("{SNAPSHOTS}/Prepare")), &prepare)
            .await
            .map_err(|s| s.context("failed to prepare the sandbox snapshot"))?
            .mounts;
        made.snapshot = true;

        let mut labels: HashMap<String, String> = image
            .spec
            .pointer("/config/Labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        labels.extend(config.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels.insert(KIND_LABEL.into(), KIND_SANDBOX.into());
        let mut metadata = Metadata {
            id: id.into(),
            name: name.into(),
            config: Some(config.clone()),
            netns_path: netns_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            runtime_handler: runtime_handler.into(),
            ..Default::default()
        };
        let container = Container {
            id: id.into(),
            labels,
            image: image.references.first().cloned().unwrap_or_else(|| sandbox_image.clone()),
            runtime: Some(ContainerRuntime { name: runtime.runtime_type.clone(), options: runtime_options(runtime)? }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value: spec }),
            snapshotter,
            snapshot_key: id.into(),
            extensions: HashMap::from([(METADATA_EXTENSION.to_string(), metadata.to_any())]),
            ..Default::default()
        };
        calls::unary::<_, ()>(
            &self.host,
            format!("{CONTAINERS}/Create"),
            &CreateContainerRequest { container: Some(container) },
        )
        .await
        .map_err(|s| s.context("failed to create containerd container"))?;
        made.container = true;

        if let Some(ns) = &made.netns {
            // containerd's CRI reloads the conf dir on changes (its
            // syncer); loading again while not ready is the same in effect.
            if self.cni.status().is_err() {
                let _ = self.cni.reload().await;
            }
            made.network = true;
            let result = self
                .cni
                .setup(id, ns.path(), &network_args(config))
                .await
                .map_err(|e| Status::internal(format!("failed to setup network for sandbox {id:?}: {e}")))?;
            let (ip, additional) = select_pod_ips(&result);
            metadata.ip = ip;
            metadata.additional_ips = additional;
            metadata.cni_result = serde_json::to_value(
                result.raw.iter().map(|(n, r)| (n.clone(), r.clone())).collect::<BTreeMap<_, _>>(),
            )
            .ok();
            let update = UpdateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    extensions: HashMap::from([(METADATA_EXTENSION.to_string(), metadata.to_any())]),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec![format!("extensions.{METADATA_EXTENSION}")] }),
            };
            calls::unary::<_, ()>(&self.host, format!("{CONTAINERS}/Update"), &update)
                .await
                .map_err(|s| s.context("failed to update the sandbox metadata"))?;
        }

        let create = CreateTaskRequest { container_id: id.into(), rootfs: mounts, ..Default::default() };
        calls::tasks::<_, CreateTaskResponse>(&self.host, "Create", &create)
            .await
            .map_err(|s| s.context("failed to create containerd task"))?;
        made.task = true;
        calls::tasks::<_, StartResponse>(
            &self.host,
            "Start",
            &StartRequest { container_id: id.into(), exec_id: String::new() },
        )
        .await
        .map_err(|s| s.context(format!("failed to start sandbox container task {id:?}")))?;
        // The files and namespace belong to the sandbox now.
        made.netns = None;
        made.dir = None;
        made.shm = None;
        Ok(())
    }

    /// Undoes a failed run, last made first; failures are logged.
    async fn undo(&self, id: &str, config: &PodSandboxConfig, made: Made) {
        if made.task {
            self.stop_task(id).await;
        }
        if let (true, Some(ns)) = (made.network, &made.netns) {
            if let Err(e) = self.cni.teardown(id, ns.path(), &network_args(config)).await {
                crated_plugin_api::tracing::warn!("failed to destroy network for sandbox {id:?}: {e}");
            }
        }
        if let Some(ns) = &made.netns {
            if let Err(e) = ns.remove().await {
                crated_plugin_api::tracing::warn!("failed to remove network namespace of sandbox {id:?}: {e}");
            }
        }
        if made.container {
            let _ = calls::unary::<_, ()>(
                &self.host,
                format!("{CONTAINERS}/Delete"),
                &DeleteContainerRequest { id: id.into() },
            )
            .await;
        }
        if made.snapshot {
            calls::remove_snapshot(&self.host, &self.config.containerd.snapshotter, id, "sandbox").await;
        }
        if let Some(dir) = made.dir {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        if let Some(shm) = made.shm {
            unmount_shm(&shm);
            let _ = std::fs::remove_dir_all(self.state.join(id));
        }
    }

    /// Kills the task, waits for it and deletes it; a missing task is fine.
    async fn stop_task(&self, id: &str) -> Option<Status> {
        let kill = KillRequest { container_id: id.into(), exec_id: String::new(), signal: SIGKILL, all: true };
        if let Err(s) = calls::tasks::<_, ()>(&self.host, "Kill", &kill).await {
            if calls::not_found(s.kind()) {
                return None;
            }
            // An exited task refuses the signal; it still has to go.
            crated_plugin_api::tracing::debug!("kill of sandbox {id:?}: {}", s.message);
        }
        let _ =
            calls::tasks::<_, ()>(&self.host, "Wait", &WaitRequest { container_id: id.into(), exec_id: String::new() })
                .await;
        match calls::tasks::<_, ()>(&self.host, "Delete", &DeleteTaskRequest { container_id: id.into() }).await {
            Err(s) if !calls::not_found(s.kind()) => Some(s.context(format!("failed to delete sandbox task {id:?}"))),
            _ => None,
        }
    }

    pub async fn stop(&self, id: &str) -> Result<(), Status> {
        let (c, meta) = self.find(id).await?;
        self.stop_found(&c, &meta).await
    }

    async fn stop_found(&self, c: &Container, meta: &Metadata) -> Result<(), Status> {
        if let Some(s) = self.stop_task(&c.id).await {
            return Err(s.context(format!("failed to stop sandbox container {:?}", c.id)));
        }
        unmount_shm(&self.shm(&c.id));
        if !meta.netns_path.is_empty() {
            let path = Path::new(&meta.netns_path);
            if path.exists() {
                let config = meta.config.clone().unwrap_or_default();
                self.cni
                    .teardown(&c.id, path, &network_args(&config))
                    .await
                    .map_err(|e| Status::internal(format!("failed to destroy network for sandbox {:?}: {e}", c.id)))?;
                NetNs::from_path(path).remove().await.map_err(|e| {
                    Status::internal(format!("failed to remove network namespace for sandbox {:?}: {e}", c.id))
                })?;
            }
        }
        Ok(())
    }

    pub async fn remove(&self, id: &str) -> Result<(), Status> {
        let (c, meta) = match self.find(id).await {
            Ok(found) => found,
            // Removing a sandbox that is gone is not an error.
            Err(s) if s.code == Code::NotFound => return Ok(()),
            Err(s) => return Err(s),
        };
        // A sandbox still running is stopped first, as containerd forces it.
        self.stop_found(&c, &meta).await?;
        match calls::unary::<_, ()>(
            &self.host,
            format!("{CONTAINERS}/Delete"),
            &DeleteContainerRequest { id: c.id.clone() },
        )
        .await
        {
            Err(s) if !calls::not_found(s.kind()) => {
                return Err(s.context(format!("failed to delete sandbox container {:?}", c.id)))
            }
            _ => {}
        }
        calls::remove_snapshot(&self.host, &self.config.containerd.snapshotter, &c.id, "sandbox").await;
        let _ = tokio::fs::remove_dir_all(self.state.join(&c.id)).await;
        let dir = self.root.join(&c.id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Status::internal(format!("failed to remove sandbox root directory {dir:?}: {e}")));
            }
        }
        Ok(())
    }

    fn state_of(running: bool) -> i32 {
        if running {
            PodSandboxState::SandboxReady as i32
        } else {
            PodSandboxState::SandboxNotready as i32
        }
    }

    pub async fn status(&self, id: &str, verbose: bool) -> Result<(PodSandboxStatus, HashMap<String, String>), Status> {
        let (c, meta) = self.find(id).await?;
        let (pid, running) = self.task_state(&c.id).await;
        let config = meta.config.clone().unwrap_or_default();
        let netns_open = !meta.netns_path.is_empty() && Path::new(&meta.netns_path).exists();
        let (ip, additional) = if meta.host_network() || !netns_open {
            (String::new(), Vec::new())
        } else {
            (meta.ip.clone(), meta.additional_ips.clone())
        };
        let status = PodSandboxStatus {
            id: c.id.clone(),
            metadata: config.metadata.clone(),
            state: Self::state_of(running),
            created_at: created_at(&c),
            network: Some(PodSandboxNetworkStatus {
                ip,
                additional_ips: additional.into_iter().map(|ip| PodIp { ip }).collect(),
            }),
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace { options: namespace_options(Some(&config)) }),
            }),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            runtime_handler: meta.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let spec: Value =
                c.spec.as_ref().and_then(|s| serde_json::from_slice(&s.value).ok()).unwrap_or(Value::Null);
            let v = json!({
                "pid": pid,
                "processStatus": if running { "running" } else { "stopped" },
                "netNamespaceClosed": !netns_open,
                "image": c.image,
                "snapshotKey": c.snapshot_key,
                "snapshotter": c.snapshotter,
                "runtimeHandler": meta.runtime_handler,
                "runtimeType": c.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                "config": config,
                "runtimeSpec": spec,
                "cniResult": meta.cni_result,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((status, info))
    }

    pub async fn list(&self, filter: Option<PodSandboxFilter>) -> Result<Vec<PodSandbox>, Status> {
        let mut out = Vec::new();
        for (c, meta) in self.records().await? {
            let config = meta.config.clone().unwrap_or_default();
            if let Some(f) = &filter {
                if !f.id.is_empty() && !c.id.starts_with(&f.id) {
                    continue;
                }
                if !f.label_selector.iter().all(|(k, v)| config.labels.get(k) == Some(v)) {
                    continue;
                }
            }
            let (_, running) = self.task_state(&c.id).await;
            let state = Self::state_of(running);
            if let Some(want) = filter.as_ref().and_then(|f| f.state.as_ref()) {
                if want.state != state {
                    continue;
                }
            }
            out.push(PodSandbox {
                id: c.id.clone(),
                metadata: config.metadata.clone(),
                state,
                created_at: created_at(&c),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                runtime_handler: meta.runtime_handler.clone(),
            });
        }
        Ok(out)
    }
}

fn created_at(c: &Container) -> i64 {
    c.created_at.as_ref().map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_containerds_format() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let out = resolv_conf(&s(&["8.8.8.8", "1.1.1.1"]), &s(&["a.local", "b"]), &s(&["ndots:5"])).unwrap();
        assert_eq!(out, "search a.local b\nnameserver 8.8.8.8\nnameserver 1.1.1.1\noptions ndots:5\n");
        assert!(resolv_conf(&[], &s(&["1", "2", "3", "4", "5", "6", "7"]), &[]).is_err());
        assert_eq!(resolv_conf(&[], &[], &[]).unwrap(), "");
    }

    #[test]
    fn the_spec_joins_the_netns_or_shares_the_hosts() {
        let image = json!({"config": {"Entrypoint": ["/bin/sleep"], "Cmd": ["inf"], "Env": ["PATH=/bin"]}});
        let config = PodSandboxConfig {
            hostname: "pod".into(),
            annotations: HashMap::from([
                ("io.example/passed".to_string(), "yes".to_string()),
                ("io.other/kept-out".to_string(), "no".to_string()),
            ]),
            ..Default::default()
        };
        let passed = ["io.example/*".to_string()];
        let files = SandboxFiles { resolv: Path::new("/r/resolv.conf"), shm: Some(Path::new("/s/shm")) };
        let options = SandboxSpecOptions {
            unprivileged_ports: true,
            unprivileged_icmp: true,
            pod_annotations: &passed,
            ..Default::default()
        };
        let spec_of = |config: &PodSandboxConfig, netns: Option<&Path>, oom: i32| -> Value {
            serde_json::from_slice(&sandbox_spec("abc", config, &image, netns, &files, oom, options).unwrap()).unwrap()
        };
        let spec = spec_of(&config, Some(Path::new("/run/ns1")), -998);
        assert_eq!(spec["process"]["args"], json!(["/bin/sleep", "inf"]));
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin"]));
        assert_eq!(spec["hostname"], "pod");
        assert_eq!(spec["process"]["oomScoreAdj"], -998);
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/run/ns1"), "{ns:?}");
        assert_eq!(spec["annotations"]["io.kubernetes.cri.sandbox-id"], "abc");
        // The runtime's pod_annotations patterns pass those they match.
        assert_eq!(spec["annotations"]["io.example/passed"], "yes");
        assert!(spec["annotations"].get("io.other/kept-out").is_none());
        // enable_unprivileged_ports / _icmp, for a pod with its own network.
        assert_eq!(spec["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"], "0");
        assert_eq!(spec["linux"]["sysctl"]["net.ipv4.ping_group_range"], "0 2147483647");
        let mounts = spec["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/resolv.conf"));
        assert!(mounts.iter().any(|m| m["destination"] == "/dev/shm" && m["source"] == "/s/shm"), "{mounts:?}");

        let mut host = config.clone();
        host.linux = Some(k8s_cri::v1::LinuxPodSandboxConfig {
            security_context: Some(k8s_cri::v1::LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = spec_of(&host, None, 0);
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network" || n["type"] == "uts"), "{ns:?}");
        assert!(spec.get("hostname").is_none());
        // The host's network keeps the host's sysctls.
        assert_eq!(spec["linux"]["sysctl"], json!({}), "{}", spec["linux"]);
    }

    #[test]
    fn the_spec_has_the_cgroups_path_and_shares_unless_cgroups_are_disabled() {
        let image = json!({"config": {"Cmd": ["/pause"]}});
        let files = SandboxFiles { resolv: Path::new("/r/resolv.conf"), shm: None };
        let spec = |parent: &str, cgroups: Cgroups| -> Value {
            let config = PodSandboxConfig {
                linux: Some(k8s_cri::v1::LinuxPodSandboxConfig { cgroup_parent: parent.into(), ..Default::default() }),
                ..Default::default()
            };
            let options = SandboxSpecOptions { cgroups, ..Default::default() };
            serde_json::from_slice(&sandbox_spec("abc", &config, &image, None, &files, 0, options).unwrap()).unwrap()
        };
        let s = spec("/kubepods/pod1", Cgroups::default());
        assert_eq!(s["linux"]["cgroupsPath"], "/kubepods/pod1/abc");
        assert_eq!(s["linux"]["resources"]["cpu"]["shares"], 2);
        let s = spec("/kubepods.slice/kubepods-pod1.slice", Cgroups { systemd: true, disabled: false });
        assert_eq!(s["linux"]["cgroupsPath"], "kubepods-pod1.slice:cri-containerd:abc");
        let s = spec("", Cgroups { systemd: true, disabled: false });
        assert!(s["linux"].get("cgroupsPath").is_none(), "{}", s["linux"]);
        let s = spec("/kubepods/pod1", Cgroups { disabled: true, systemd: false });
        assert!(s["linux"].get("cgroupsPath").is_none(), "{}", s["linux"]);
        assert_eq!(s["linux"]["resources"], json!({"devices": [{"allow": false, "access": "rwm"}]}));
    }

    #[test]
    fn ids_are_64_hex_and_metadata_round_trips() {
        let id = calls::generate_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        let m = Metadata { id: id.clone(), name: "n".into(), netns_path: "/x".into(), ..Default::default() };
        let c = Container {
            extensions: HashMap::from([(METADATA_EXTENSION.to_string(), m.to_any())]),
            ..Default::default()
        };
        let back = Metadata::from_container(&c).unwrap();
        assert_eq!((back.id, back.netns_path), (id, "/x".to_string()));
    }
}
