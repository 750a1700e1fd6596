//! The CRI's two gRPC services on the daemon's socket, `runtime.v1`
//! `RuntimeService` and `ImageService`, as handlers of the SDK's router.
//! What is served: Version, Status, UpdateRuntimeConfig, the pod sandbox
//! methods ([`crate::sandbox`]), the container methods and stats
//! ([`crate::container`]), Exec, Attach and PortForward (URLs on
//! [`crate::streaming`]'s server) and the whole ImageService. Every other method is registered explicitly and
//! answers `Unimplemented` naming itself, so a kubelet or crictl sees
//! which call crated lacks rather than a generic "unknown method".

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, ListSnapshotsResponse, UsageRequest, UsageResponse,
};
use crated_plugin_api::{Call, Host, ServiceRouter, Status};
use futures::StreamExt;
use k8s_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest,
    ImageStatusResponse, Int64Value, ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse,
    RemoveImageRequest, RemoveImageResponse, RuntimeCondition, RuntimeStatus, StatusRequest, StatusResponse,
    UInt64Value, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse, VersionRequest, VersionResponse,
};

use crated_cni::Cni;
use k8s_cri::v1::{
    ContainerStatsRequest, ContainerStatsResponse, ContainerStatusRequest, ContainerStatusResponse,
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse, LinuxPodSandboxStats,
    ListContainerStatsRequest, ListContainerStatsResponse, ListContainersRequest, ListContainersResponse,
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes,
    PodSandboxFilter, PodSandboxStats, PodSandboxStatsRequest, PodSandboxStatsResponse, ProcessUsage,
    RemoveContainerRequest, RemoveContainerResponse, ReopenContainerLogRequest, ReopenContainerLogResponse,
    StartContainerRequest, StartContainerResponse, StopContainerRequest, StopContainerResponse,
    UpdateContainerResourcesRequest, UpdateContainerResourcesResponse,
};
use k8s_cri::v1::{
    ListPodSandboxRequest, ListPodSandboxResponse, PodSandboxStatusRequest, PodSandboxStatusResponse,
    RemovePodSandboxRequest, RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse,
    StopPodSandboxRequest, StopPodSandboxResponse,
};

use k8s_cri::v1::{AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest, PortForwardResponse};

use crate::{
    config::Config,
    container::Containers,
    images::{CriImage, ImageStore},
    sandbox::Sandboxes,
    streaming::{Request, StreamServer},
};

pub const RUNTIME_SERVICE: &str = "runtime.v1.RuntimeService";
pub const IMAGE_SERVICE: &str = "runtime.v1.ImageService";
/// The containerd namespace every CRI object lives in.
pub const NAMESPACE: &str = "k8s.io";
/// What `Version` calls this runtime. containerd answers "containerd";
/// crated names itself, so that `crictl version` says which daemon it
/// reached (the kubelet only logs the name).
pub const RUNTIME_NAME: &str = "crated";
/// containerd's `kubeAPIVersion`, answered as the `version` field.
pub const KUBE_API_VERSION: &str = "0.1.0";
pub const CRI_VERSION: &str = "v1";

const NETWORK_NOT_READY: &str = "NetworkPluginNotReady";
const NO_DEPRECATIONS: &str = "ContainerdHasNoDeprecationWarnings";
const SNAPSHOTS: &str = "/containerd.services.snapshots.v1.Snapshots";

/// The RuntimeService methods not built yet: unary, then server-streaming.
const RUNTIME_TODO: &[&str] =
    &["CheckpointContainer", "ListMetricDescriptors", "ListPodSandboxMetrics", "RuntimeConfig"];
const RUNTIME_TODO_STREAMING: &[&str] = &["GetContainerEvents"];

#[derive(Clone)]
pub struct CriService {
    host: Host,
    config: Arc<Config>,
    /// `<root>/io.containerd.snapshotter.v1.<snapshotter>`: the image
    /// filesystem reported by ImageFsInfo, as containerd's `imageFSPath`.
    image_fs: PathBuf,
    /// The pod CIDR the kubelet last set (UpdateRuntimeConfig), for CNI.
    pod_cidr: Arc<Mutex<String>>,
    cni: Arc<Cni>,
    sandboxes: Sandboxes,
    containers: Containers,
    /// The stream server Exec, Attach and PortForward answer URLs of.
    streams: Option<StreamServer>,
    /// The keys containerd's `Config` adds to the plugin's config in the
    /// verbose Status: `containerdRootDir`, `containerdEndpoint`,
    /// `rootDir`, `stateDir`.
    daemon_paths: Arc<serde_json::Map<String, serde_json::Value>>,
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl CriService {
    pub fn new(host: Host, config: Config, image_fs: PathBuf, cni: Arc<Cni>, root: &Path, state: &Path) -> CriService {
        let config = Arc::new(config);
        let sandboxes = Sandboxes::new(host.clone(), config.clone(), cni.clone(), root, state);
        let containers =
            Containers::new(host.clone(), config.clone(), sandboxes.clone(), root, state, image_fs.clone());
        let daemon_paths = Arc::new(serde_json::Map::from_iter([
            ("containerdRootDir".to_string(), root.parent().unwrap_or(root).display().to_string().into()),
            ("rootDir".to_string(), root.display().to_string().into()),
            ("stateDir".to_string(), state.display().to_string().into()),
        ]));
        CriService {
            host,
            config,
            image_fs,
            pod_cidr: Arc::default(),
            cni,
            sandboxes,
            containers,
            streams: None,
            daemon_paths,
        }
    }

    /// The daemon's gRPC address, for the verbose Status's config.
    pub fn with_endpoint(mut self, address: &str) -> CriService {
        Arc::make_mut(&mut self.daemon_paths).insert("containerdEndpoint".into(), address.into());
        self
    }

    pub fn sandboxes(&self) -> &Sandboxes {
        &self.sandboxes
    }

    /// Serves Exec, Attach and PortForward through `server`.
    pub fn with_streaming(mut self, server: StreamServer) -> CriService {
        self.streams = Some(server);
        self
    }

    fn stream_server(&self) -> Result<&StreamServer, Status> {
        self.streams.as_ref().ok_or_else(|| Status::unavailable("the CRI stream server is not running"))
    }

    /// Caches `request` and answers its URL.
    fn stream_url(&self, request: Request) -> Result<String, Status> {
        let server = self.stream_server()?;
        let kind = request.kind();
        let token = server.cache.insert(request).map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(server.url(kind, &token))
    }

    /// The container's task must run (any task of `k8s.io`, sandboxes'
    /// included).
    async fn running_task(&self, id: &str) -> Result<(), Status> {
        let req = containerd_client::services::v1::GetRequest { container_id: id.into(), exec_id: String::new() };
        let resp: containerd_client::services::v1::GetResponse = crate::calls::tasks(&self.host, "Get", &req)
            .await
            .map_err(|s| s.context(format!("failed to find container {id:?} in store")))?;
        // containerd's `types.Status` RUNNING.
        if resp.process.map(|p| p.status) != Some(2) {
            return Err(Status::failed_precondition(format!("container {id:?} is not running")));
        }
        Ok(())
    }

    async fn exec(self, _c: Call, r: ExecRequest) -> Result<ExecResponse, Status> {
        validate_stdio(&r.container_id, r.tty, r.stdin, r.stdout, r.stderr)?;
        self.stream_server()?;
        self.running_task(&r.container_id).await?;
        Ok(ExecResponse { url: self.stream_url(Request::Exec(r))? })
    }

    async fn attach(self, _c: Call, r: AttachRequest) -> Result<AttachResponse, Status> {
        validate_stdio(&r.container_id, r.tty, r.stdin, r.stdout, r.stderr)?;
        self.stream_server()?;
        // A CRI container (not a sandbox), running, with its IO.
        self.containers.attach(&r.container_id).await?;
        Ok(AttachResponse { url: self.stream_url(Request::Attach(r))? })
    }

    async fn port_forward(self, _c: Call, r: PortForwardRequest) -> Result<PortForwardResponse, Status> {
        if r.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("missing required pod_sandbox_id"));
        }
        self.stream_server()?;
        self.sandboxes.netns_path(&r.pod_sandbox_id).await?;
        Ok(PortForwardResponse { url: self.stream_url(Request::PortForward(r))? })
    }

    /// CNI's readiness, loading the conf dir again while it is not ready
    /// (containerd's CRI keeps retrying the load until a network appears).
    async fn network_status(&self) -> Result<(), String> {
        if self.cni.status().is_err() {
            let _ = self.cni.reload().await;
        }
        self.cni.status().map_err(|e| e.to_string())
    }

    /// The containers, for recovering them at init.
    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    fn images(&self) -> ImageStore {
        ImageStore::new(self.host.clone(), NAMESPACE)
    }

    async fn version(self, _c: Call, _r: VersionRequest) -> Result<VersionResponse, Status> {
        Ok(VersionResponse {
            version: KUBE_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: concat!("v", env!("CARGO_PKG_VERSION")).into(),
            runtime_api_version: CRI_VERSION.into(),
        })
    }

    async fn status(self, _c: Call, r: StatusRequest) -> Result<StatusResponse, Status> {
        let network = match self.network_status().await {
            Ok(()) => RuntimeCondition { r#type: "NetworkReady".into(), status: true, ..Default::default() },
            Err(e) => RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: NETWORK_NOT_READY.into(),
                message: format!("Network plugin returns error: {e}"),
            },
        };
        let conditions = vec![
            RuntimeCondition { r#type: "RuntimeReady".into(), status: true, ..Default::default() },
            network,
            RuntimeCondition { r#type: NO_DEPRECATIONS.into(), status: true, ..Default::default() },
        ];
        let mut info = HashMap::new();
        if r.verbose {
            // containerd's keys but `golang` (the Go version it was built
            // with: there is none here).
            let mut config = serde_json::to_value(&*self.config).map_err(|e| Status::internal(e.to_string()))?;
            if let Some(c) = config.as_object_mut() {
                c.extend(self.daemon_paths.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            info.insert("config".to_string(), config.to_string());
            info.insert("cniconfig".to_string(), self.cni.config_report().to_string());
            // containerd names each network plugin's load too; there is
            // only the default one here.
            let last = self.cni.load_error().unwrap_or_else(|| "OK".to_string());
            info.insert("lastCNILoadStatus.default".to_string(), last.clone());
            info.insert("lastCNILoadStatus".to_string(), last);
        }
        Ok(StatusResponse { status: Some(RuntimeStatus { conditions }), info, ..Default::default() })
    }

    async fn update_runtime_config(
        self,
        _c: Call,
        r: UpdateRuntimeConfigRequest,
    ) -> Result<UpdateRuntimeConfigResponse, Status> {
        let cidr = r.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
        if !cidr.is_empty() {
            *self.pod_cidr.lock().unwrap_or_else(|e| e.into_inner()) = cidr;
        }
        Ok(UpdateRuntimeConfigResponse {})
    }

    /// The pod CIDR last set by UpdateRuntimeConfig (empty until then).
    pub fn pod_cidr(&self) -> String {
        self.pod_cidr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn run_pod_sandbox(self, _c: Call, r: RunPodSandboxRequest) -> Result<RunPodSandboxResponse, Status> {
        let pod_sandbox_id = self.sandboxes.run(r.config, r.runtime_handler).await?;
        Ok(RunPodSandboxResponse { pod_sandbox_id })
    }

    async fn stop_pod_sandbox(self, _c: Call, r: StopPodSandboxRequest) -> Result<StopPodSandboxResponse, Status> {
        // Its containers stop first, forcibly (containerd's StopPodSandbox).
        let (sandbox, _) = self.sandboxes.find(&r.pod_sandbox_id).await?;
        for id in self.containers.of_sandbox(&sandbox.id).await? {
            self.containers.stop(&id, 0).await?;
        }
        self.sandboxes.stop(&r.pod_sandbox_id).await?;
        Ok(StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        self,
        _c: Call,
        r: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, Status> {
        // Its containers go first (containerd's RemovePodSandbox).
        match self.sandboxes.find(&r.pod_sandbox_id).await {
            Ok((sandbox, _)) => {
                for id in self.containers.of_sandbox(&sandbox.id).await? {
                    self.containers.remove(&id).await?;
                }
            }
            Err(s) if s.code == crated_plugin_api::Code::NotFound => return Ok(RemovePodSandboxResponse {}),
            Err(s) => return Err(s),
        }
        self.sandboxes.remove(&r.pod_sandbox_id).await?;
        Ok(RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        self,
        _c: Call,
        r: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, Status> {
        let (status, info) = self.sandboxes.status(&r.pod_sandbox_id, r.verbose).await?;
        Ok(PodSandboxStatusResponse { status: Some(status), info, ..Default::default() })
    }

    async fn list_pod_sandbox(self, _c: Call, r: ListPodSandboxRequest) -> Result<ListPodSandboxResponse, Status> {
        Ok(ListPodSandboxResponse { items: self.sandboxes.list(r.filter).await? })
    }

    async fn create_container(self, _c: Call, r: CreateContainerRequest) -> Result<CreateContainerResponse, Status> {
        let container_id = self.containers.create(&r.pod_sandbox_id, r.config, r.sandbox_config).await?;
        Ok(CreateContainerResponse { container_id })
    }

    async fn start_container(self, _c: Call, r: StartContainerRequest) -> Result<StartContainerResponse, Status> {
        self.containers.start(&r.container_id).await?;
        Ok(StartContainerResponse {})
    }

    async fn stop_container(self, _c: Call, r: StopContainerRequest) -> Result<StopContainerResponse, Status> {
        self.containers.stop(&r.container_id, r.timeout).await?;
        Ok(StopContainerResponse {})
    }

    async fn remove_container(self, _c: Call, r: RemoveContainerRequest) -> Result<RemoveContainerResponse, Status> {
        self.containers.remove(&r.container_id).await?;
        Ok(RemoveContainerResponse {})
    }

    async fn list_containers(self, _c: Call, r: ListContainersRequest) -> Result<ListContainersResponse, Status> {
        Ok(ListContainersResponse { containers: self.containers.list(r.filter).await? })
    }

    async fn container_status(self, _c: Call, r: ContainerStatusRequest) -> Result<ContainerStatusResponse, Status> {
        let (status, info) = self.containers.status(&r.container_id, r.verbose).await?;
        Ok(ContainerStatusResponse { status: Some(status), info })
    }

    async fn update_container_resources(
        self,
        _c: Call,
        r: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse, Status> {
        self.containers.update_resources(&r.container_id, r.linux).await?;
        Ok(UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        self,
        _c: Call,
        r: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, Status> {
        self.containers.reopen_log(&r.container_id).await?;
        Ok(ReopenContainerLogResponse {})
    }

    async fn exec_sync(self, _c: Call, r: ExecSyncRequest) -> Result<ExecSyncResponse, Status> {
        let (stdout, stderr, exit_code) = self.containers.exec_sync(&r.container_id, r.cmd, r.timeout).await?;
        Ok(ExecSyncResponse { stdout, stderr, exit_code })
    }

    async fn container_stats(self, _c: Call, r: ContainerStatsRequest) -> Result<ContainerStatsResponse, Status> {
        Ok(ContainerStatsResponse { stats: Some(self.containers.stats(&r.container_id).await?) })
    }

    async fn list_container_stats(
        self,
        _c: Call,
        r: ListContainerStatsRequest,
    ) -> Result<ListContainerStatsResponse, Status> {
        Ok(ListContainerStatsResponse { stats: self.containers.list_stats(r.filter).await? })
    }

    /// A sandbox's stats: its task's cgroup CPU and memory, and its
    /// running containers'.
    async fn sandbox_stats(&self, id: &str) -> Result<PodSandboxStats, Status> {
        let (status, _) = self.sandboxes.status(id, false).await?;
        let metrics = self.containers.metrics().await;
        let (cpu, memory) = match metrics.get(&status.id) {
            Some((ts, any)) => crate::container::cgroup_usage(*ts, any),
            None => (None, None),
        };
        let containers = self.containers.sandbox_container_stats(&status.id, &metrics).await;
        let timestamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        let (pid, running) = self.sandboxes.task_state(&status.id).await;
        let network = match (running, self.sandboxes.netns_path(&status.id).await?.is_empty()) {
            (true, false) => network_usage(pid, timestamp),
            _ => None,
        };
        let process = Some(ProcessUsage {
            timestamp,
            process_count: Some(UInt64Value { value: self.containers.sandbox_process_count(&status.id).await? }),
        });
        Ok(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: status.id.clone(),
                metadata: status.metadata.clone(),
                labels: status.labels.clone(),
                annotations: status.annotations.clone(),
            }),
            linux: Some(LinuxPodSandboxStats { cpu, memory, network, process, containers }),
            windows: None,
        })
    }

    async fn pod_sandbox_stats(self, _c: Call, r: PodSandboxStatsRequest) -> Result<PodSandboxStatsResponse, Status> {
        Ok(PodSandboxStatsResponse { stats: Some(self.sandbox_stats(&r.pod_sandbox_id).await?) })
    }

    async fn list_pod_sandbox_stats(
        self,
        _c: Call,
        r: ListPodSandboxStatsRequest,
    ) -> Result<ListPodSandboxStatsResponse, Status> {
        let f = r.filter.unwrap_or_default();
        let filter = PodSandboxFilter {
            id: f.id,
            label_selector: f.label_selector,
            // Only ready sandboxes have stats (containerd's).
            state: Some(k8s_cri::v1::PodSandboxStateValue { state: k8s_cri::v1::PodSandboxState::SandboxReady as i32 }),
        };
        let mut stats = Vec::new();
        for s in self.sandboxes.list(Some(filter)).await? {
            stats.push(self.sandbox_stats(&s.id).await?);
        }
        Ok(ListPodSandboxStatsResponse { stats })
    }

    async fn pull_image(self, _c: Call, r: PullImageRequest) -> Result<PullImageResponse, Status> {
        let image = r.image.map(|i| i.image).unwrap_or_default();
        let image_ref = crate::pull::pull(&self.host, &self.config, NAMESPACE, &image, r.auth).await?;
        Ok(PullImageResponse { image_ref })
    }

    async fn list_images(self, _c: Call, _r: ListImagesRequest) -> Result<ListImagesResponse, Status> {
        // containerd 1.6 ignores the filter too.
        let images = self.images().list().await?;
        Ok(ListImagesResponse { images: images.iter().map(to_cri_image).collect() })
    }

    async fn image_status(self, _c: Call, r: ImageStatusRequest) -> Result<ImageStatusResponse, Status> {
        let name = r.image.map(|i| i.image).unwrap_or_default();
        // An unknown image is an empty answer, not NotFound (containerd's).
        let Some(image) = self.images().find(&name).await? else {
            return Ok(ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if r.verbose {
            let verbose = serde_json::json!({ "chainID": image.chain_id, "imageSpec": image.spec });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(ImageStatusResponse { image: Some(to_cri_image(&image)), info })
    }

    async fn remove_image(self, _c: Call, r: RemoveImageRequest) -> Result<RemoveImageResponse, Status> {
        let name = r.image.map(|i| i.image).unwrap_or_default();
        let store = self.images();
        let Some(image) = store.find(&name).await? else {
            return Ok(RemoveImageResponse {});
        };
        let last = image.references.len().saturating_sub(1);
        for (i, reference) in image.references.iter().enumerate() {
            // The last deletion collects garbage before answering, as
            // containerd's `SynchronousDelete`.
            store
                .delete(reference, i == last)
                .await
                .map_err(|s| s.context(format!("failed to delete image reference {reference:?} for {:?}", image.id)))?;
        }
        Ok(RemoveImageResponse {})
    }

    async fn image_fs_info(self, _c: Call, _r: ImageFsInfoRequest) -> Result<ImageFsInfoResponse, Status> {
        let snapshotter = self.config.containerd.snapshotter.clone();
        let call = Host::call(&format!("{SNAPSHOTS}/List"), Some(NAMESPACE));
        let req = ListSnapshotsRequest { snapshotter: snapshotter.clone(), ..Default::default() };
        let mut batches =
            self.host.streaming::<_, ListSnapshotsResponse, _>(&call, futures::stream::iter([Ok(req)])).await?;
        let mut keys = Vec::new();
        while let Some(batch) = batches.next().await {
            keys.extend(batch?.info.into_iter().map(|i| i.name));
        }
        let (mut used, mut inodes) = (0u64, 0u64);
        let usage_call = Host::call(&format!("{SNAPSHOTS}/Usage"), Some(NAMESPACE));
        for key in keys {
            let req = UsageRequest { snapshotter: snapshotter.clone(), key };
            // A snapshot removed meanwhile counts for nothing.
            if let Ok(u) = self.host.unary::<_, UsageResponse>(&usage_call, &req).await {
                used += u64::try_from(u.size).unwrap_or(0);
                inodes += u64::try_from(u.inodes).unwrap_or(0);
            }
        }
        Ok(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(FilesystemIdentifier { mountpoint: self.image_fs.display().to_string() }),
                used_bytes: Some(UInt64Value { value: used }),
                inodes_used: Some(UInt64Value { value: inodes }),
            }],
            container_filesystems: Vec::new(),
        })
    }
}

fn to_cri_image(image: &CriImage) -> Image {
    let (repo_tags, repo_digests) = image.repo_tags_and_digests();
    let (uid, username) = image.user();
    Image {
        id: image.id.clone(),
        repo_tags,
        repo_digests,
        size: image.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: None,
        pinned: image.pinned,
    }
}

/// containerd's stream server's request checks (`validateExecRequest`).
fn validate_stdio(id: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("missing required container_id"));
    }
    if tty && stderr {
        return Err(Status::invalid_argument("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

fn not_yet(service: &str, method: &str) -> Status {
    Status::unimplemented(format!("{service}/{method} is not implemented by crated yet"))
}

pub fn router(svc: CriService) -> ServiceRouter {
    let rt = |m: &str| format!("/{RUNTIME_SERVICE}/{m}");
    let im = |m: &str| format!("/{IMAGE_SERVICE}/{m}");
    let mut router = ServiceRouter::new()
        .unary_with(&rt("Version"), &svc, CriService::version)
        .unary_with(&rt("Status"), &svc, CriService::status)
        .unary_with(&rt("UpdateRuntimeConfig"), &svc, CriService::update_runtime_config)
        .unary_with(&rt("RunPodSandbox"), &svc, CriService::run_pod_sandbox)
        .unary_with(&rt("StopPodSandbox"), &svc, CriService::stop_pod_sandbox)
        .unary_with(&rt("RemovePodSandbox"), &svc, CriService::remove_pod_sandbox)
        .unary_with(&rt("PodSandboxStatus"), &svc, CriService::pod_sandbox_status)
        .unary_with(&rt("ListPodSandbox"), &svc, CriService::list_pod_sandbox)
        .unary_with(&rt("CreateContainer"), &svc, CriService::create_container)
        .unary_with(&rt("StartContainer"), &svc, CriService::start_container)
        .unary_with(&rt("StopContainer"), &svc, CriService::stop_container)
        .unary_with(&rt("RemoveContainer"), &svc, CriService::remove_container)
        .unary_with(&rt("ListContainers"), &svc, CriService::list_containers)
        .unary_with(&rt("ContainerStatus"), &svc, CriService::container_status)
        .unary_with(&rt("UpdateContainerResources"), &svc, CriService::update_container_resources)
        .unary_with(&rt("ReopenContainerLog"), &svc, CriService::reopen_container_log)
        .unary_with(&rt("ExecSync"), &svc, CriService::exec_sync)
        .unary_with(&rt("ContainerStats"), &svc, CriService::container_stats)
        .unary_with(&rt("ListContainerStats"), &svc, CriService::list_container_stats)
        .unary_with(&rt("PodSandboxStats"), &svc, CriService::pod_sandbox_stats)
        .unary_with(&rt("ListPodSandboxStats"), &svc, CriService::list_pod_sandbox_stats)
        .unary_with(&rt("Exec"), &svc, CriService::exec)
        .unary_with(&rt("Attach"), &svc, CriService::attach)
        .unary_with(&rt("PortForward"), &svc, CriService::port_forward)
        .unary_with(&im("PullImage"), &svc, CriService::pull_image)
        .unary_with(&im("ListImages"), &svc, CriService::list_images)
        .unary_with(&im("ImageStatus"), &svc, CriService::image_status)
        .unary_with(&im("RemoveImage"), &svc, CriService::remove_image)
        .unary_with(&im("ImageFsInfo"), &svc, CriService::image_fs_info);
    for method in RUNTIME_TODO {
        let method = method.to_string();
        // `()` decodes any request, skipping its fields.
        router = router.unary(&rt(&method), move |_c: Call, _r: ()| {
            let status = not_yet(RUNTIME_SERVICE, &method);
            async move { Err::<(), Status>(status) }
        });
    }
    for method in RUNTIME_TODO_STREAMING {
        let method = method.to_string();
        router = router.server_streaming(&rt(&method), move |_c: Call, _r: ()| {
            let status = not_yet(RUNTIME_SERVICE, &method);
            async move { Err::<futures::stream::Empty<Result<(), Status>>, Status>(status) }
        });
    }
    router
}

/// The pod's `eth0` counters, read from `/proc/<pid>/net/dev` of its
/// sandbox task (the file shows the reading process's network namespace,
/// so no setns is needed), as containerd reads them with netlink in the
/// pod's namespace. `None` when the interface is not there.
fn network_usage(pid: u32, timestamp: i64) -> Option<NetworkUsage> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let (rx_bytes, rx_errors, tx_bytes, tx_errors) = eth0_counters(&dev)?;
    let v = |value| Some(UInt64Value { value });
    Some(NetworkUsage {
        timestamp,
        default_interface: Some(NetworkInterfaceUsage {
            name: "eth0".into(),
            rx_bytes: v(rx_bytes),
            rx_errors: v(rx_errors),
            tx_bytes: v(tx_bytes),
            tx_errors: v(tx_errors),
        }),
        interfaces: Vec::new(),
    })
}

/// `eth0`'s received bytes and errors, transmitted bytes and errors, from
/// the text of `/proc/net/dev` (eight receive columns, then transmit).
fn eth0_counters(dev: &str) -> Option<(u64, u64, u64, u64)> {
    let line = dev.lines().find_map(|l| l.trim_start().strip_prefix("eth0:"))?;
    let f: Vec<u64> = line.split_whitespace().map(|n| n.parse().ok()).collect::<Option<_>>()?;
    Some((*f.first()?, *f.get(2)?, *f.get(8)?, *f.get(10)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn eth0_counters_come_from_proc_net_dev() {
        let dev = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5120      40    3    0    0     0          0         0     2048      20    7    0    0     0       0          0
";
        assert_eq!(super::eth0_counters(dev), Some((5120, 3, 2048, 7)));
        assert_eq!(super::eth0_counters("  lo: 1 2 3"), None);
    }
}
