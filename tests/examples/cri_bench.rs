//! Times the CRI calls that start a pod with one container, for the `cri`
//! scenario of `scripts/bench.py`, against any daemon serving
//! `runtime.v1.RuntimeService` on a unix socket (crated, or containerd 1.6
//! with its CRI plugin).
//!
//! Each run: RunPodSandbox (host network, so that both daemons skip CNI and
//! the row measures the runtimes, not the bridge plugin), CreateContainer
//! (`sleep` in the image, its log under `<log dir>`), StartContainer; then,
//! timed apart, StopContainer, RemoveContainer, StopPodSandbox and
//! RemovePodSandbox. One JSON object per run on stdout, times in ms. The
//! pods' cgroups go under `<cgroup parent>`, which the caller removes.
//!
//! Usage: cri_bench <socket> <image> <runs> <log dir> <cgroup parent>

use std::path::Path;
use std::time::Instant;

use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata, CreateContainerRequest,
    ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};

fn sandbox_config(run: usize, log_dir: &Path, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{run}"),
            uid: format!("bench-uid-{run}-{}", std::process::id()),
            namespace: "bench".into(),
            attempt: 0,
        }),
        log_directory: log_dir.join(format!("pod-{run}")).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, image, runs, log_dir, cgroup_parent] = args.as_slice() else {
        return Err("usage: cri_bench <socket> <image> <runs> <log dir> <cgroup parent>".into());
    };
    let ch = crated_tests::large_store::connect(Path::new(socket)).await?;
    let mut rt = RuntimeServiceClient::new(ch);
    for run in 0..runs.parse::<usize>()? {
        let config = sandbox_config(run, Path::new(log_dir), cgroup_parent);
        let t0 = Instant::now();
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let run_pod = ms(t0);
        let t1 = Instant::now();
        let container = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata { name: "sleeper".into(), attempt: 0 }),
                    image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
                    command: vec!["/bin/sleep".into(), "3600".into()],
                    log_path: "sleeper.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(config),
            })
            .await?
            .into_inner()
            .container_id;
        let create = ms(t1);
        let t2 = Instant::now();
        rt.start_container(StartContainerRequest { container_id: container.clone() }).await?;
        let start = ms(t2);
        let total = ms(t0);

        let t3 = Instant::now();
        rt.stop_container(StopContainerRequest { container_id: container.clone(), timeout: 0 }).await?;
        rt.remove_container(RemoveContainerRequest { container_id: container }).await?;
        rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await?;
        let teardown = ms(t3);
        println!(
            "{{\"run_pod_sandbox_ms\": {run_pod:.2}, \"create_container_ms\": {create:.2}, \"start_container_ms\": {start:.2}, \
             \"total_ms\": {total:.2}, \"teardown_ms\": {teardown:.2}}}"
        );
    }
    Ok(())
}
