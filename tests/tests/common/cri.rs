//! The CRI tests' world (`cri_pods`, `cri_containers`): a registry, the
//! bundle daemon with the CRI on a temporary root, Debian's shim and runc,
//! a CNI conf dir and bridge of the test's own, and a sandbox image built
//! from busybox-static. Dropping it removes every container and sandbox
//! the daemon still lists, even after a failed assertion, then stops the
//! daemon, deletes the bridge and unmounts what is left under its
//! directory.

use std::{path::PathBuf, process::Command};

use crated_tests::images::{oci_archive, Archive, ImageOptions};
use crated_tests::registry::Registry;
use crated_tests::transfer_client::{plain_http_hosts_toml, push_image};
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListContainersRequest, ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

use super::{Daemon, Setup};

pub const NS: &str = "k8s.io";
pub const GO_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
pub const CNI_BIN: &str = "/usr/lib/cni";
pub const CRI: &str = "io.containerd.grpc.v1.cri";
pub const TASK_STATE: &str = "io.containerd.runtime.v2.task";
/// The sandbox image's command: busybox-static sleeping forever.
pub const PAUSE: &[&str] = &["/bin/busybox", "sleep", "1000000000"];

/// One test's world: registry, daemon, conf dir, bridge. Dropping it
/// stops and removes every sandbox, then the daemon, then the bridge.
pub struct Pods {
    pub daemon: Option<Daemon>,
    pub _registry: Registry,
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub subnet_prefix: String,
    pub sandbox_image: String,
}

impl Pods {
    /// `n` makes the bridge and subnet unique among this file's tests, the
    /// pid among concurrent runs. The conf dir starts empty.
    pub async fn start(n: u8, cmd: &[&str]) -> Pods {
        Pods::start_with(n, cmd, "").await
    }

    /// [`Pods::start`] with more keys of the CRI's table (TOML lines).
    pub async fn start_with(n: u8, cmd: &[&str], cri_keys: &str) -> Pods {
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
                "[plugins.\"{CRI}\"]\nsandbox_image = {sandbox_image:?}\nrestrict_oom_score_adj = true\n{cri_keys}\n\
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

    pub fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon")
    }

    pub async fn channel(&self) -> Channel {
        self.d().channel().await
    }

    pub fn rt(ch: &Channel) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(ch.clone())
    }

    /// Writes the bridge + host-local + portmap conflist.
    pub fn write_conflist(&self) {
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

    pub fn cri_root(&self) -> PathBuf {
        self.d().setup.root().join(CRI)
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.d().setup.state().join(CRI).join("netns")
    }

    /// Pushes an image to the test's registry as `<registry>/<name>`.
    pub async fn push(&self, name: &str, archive: &Archive) -> String {
        let reference = format!("{}/{name}", self._registry.host());
        push_image(&self.channel().await, archive, &reference, None).await;
        reference
    }

    /// Removes every container, then stops and removes every sandbox the
    /// daemon lists.
    pub async fn clean(&self) {
        let ch = self.channel().await;
        if let Ok(r) = Pods::rt(&ch).list_containers(ListContainersRequest::default()).await {
            for c in r.into_inner().containers {
                let _ = Pods::rt(&ch).remove_container(RemoveContainerRequest { container_id: c.id }).await;
            }
        }
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
        if std::thread::panicking() {
            // What the daemon said, for the failure at hand.
            if let Some(d) = &self.daemon {
                let log = d.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- daemon log (last lines) ---\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
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
        // Whatever shm mount is still under the daemon's directory (only
        // after a failure) goes before the directory does.
        if let Some(d) = &self.daemon {
            unmount_under(&d.setup.path().display().to_string());
        }
        self.daemon.take();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        // Whatever namespace mount is still there (only after a failure).
        unmount_under(&self.dir.path().display().to_string());
    }
}

/// Unmounts every mount below `dir`.
fn unmount_under(dir: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(dir)) {
        let _ = Command::new("umount").arg(m).output();
    }
}

pub fn metadata(name: &str) -> Option<PodSandboxMetadata> {
    Some(PodSandboxMetadata { name: name.into(), namespace: "default".into(), uid: format!("uid-{name}"), attempt: 0 })
}

pub fn host_network() -> Option<LinuxPodSandboxConfig> {
    Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub async fn run(ch: &Channel, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    let req = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
    Pods::rt(ch).run_pod_sandbox(req).await.map(|r| r.into_inner().pod_sandbox_id)
}
