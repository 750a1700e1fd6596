//! CRI containers through k8s-cri's tonic clients on the bundle daemon,
//! in a pod on a real CNI bridge, from an image pulled from a real
//! registry (busybox-static with an `/etc/passwd` and `/etc/group`), run
//! by Debian's shim and runc: the create/start/status/list/stop/remove
//! lifecycle with exit codes and reasons, the CRI log on disk (a long line
//! split into `P` and `F` entries), the records containerd's CRI leaves,
//! a running container surviving a daemon restart with its log and exit
//! monitor back, one exiting while the daemon is down found exited, stop
//! escalating to SIGKILL for a process ignoring SIGTERM, ExecSync (output,
//! exit code, timeout), the security context observed from inside
//! (uid/gid/groups, read-only rootfs, CapEff, NoNewPrivs, seccomp
//! `runtime/default` refusing mount(2) that succeeds unconfined), a
//! read-only host mount, a volume through a symlink, mount propagation
//! (rprivate, rshared, rslave) seen both ways, host and pod IPC
//! namespaces, seccomp names refused and profiles ignored when
//! privileged, the pod's shared `/dev/shm`, stats,
//! UpdateContainerResources seen in the cgroup, ReopenContainerLog after a
//! rotation, a start failing with StartError, and bad input that leaves
//! nothing behind; the CRI config's `device_ownership_from_security_context`
//! and `disable_cgroup`, a slice cgroup parent's systemd path, and a
//! privileged container's host devices.
//!
//! The world (registry, daemon, CNI) and its guard, which removes every
//! container and sandbox even when an assertion failed, are
//! `common::cri`'s. Needs root.

mod common;

use std::{collections::HashMap, path::Path, time::Duration};

use common::cri::{host_network, metadata, run, Pods, NS, PAUSE};
use containerd_client::services::v1::{
    containers_client::ContainersClient,
    snapshots::{snapshots_client::SnapshotsClient, ListSnapshotsRequest, StatSnapshotRequest},
    GetContainerRequest, ListContainersRequest as CtrListContainers,
};
use crated_tests::images::{oci_archive_of, rootfs_layer, ImageOptions};
use crated_tests::transfer_client::with_ns;
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, Capability, ContainerConfig, ContainerFilter, ContainerMetadata,
    ContainerState, ContainerStateValue, ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest, Device,
    ExecSyncRequest, ImageSpec, Int64Value, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, ListContainerStatsRequest, ListContainersRequest, Mount, MountPropagation,
    PodSandboxConfig, PodSandboxStatsRequest, PullImageRequest, RemoveContainerRequest, ReopenContainerLogRequest,
    SecurityProfile, StartContainerRequest, StopContainerRequest, UpdateContainerResourcesRequest,
};
use serde_json::Value;
use tonic::{transport::Channel, Code};

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1001::/tmp:/bin/sh\n";
const GROUP: &[u8] = b"root:x:0:\nalice:x:1001:\nwheel:x:10:alice\n";

/// The layer adding `etc/passwd` and `etc/group` (root-owned, 0644).
fn etc_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        append(&mut b, path, tar::EntryType::Regular, 0o644, (0, 0), data);
    }
    b.into_inner().unwrap()
}

/// Appends an entry to a layer: its path, type, mode, owner and content.
fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, mode: u32, owner: (u64, u64), data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// Pushes the app image (busybox and [`etc_layer`]) to the world's
/// registry and pulls it into `k8s.io`; its reference.
async fn app_image(pods: &Pods, ch: &Channel) -> String {
    let options = ImageOptions { cmd: Some(vec!["/bin/sh".into()]), ..Default::default() };
    let archive = oci_archive_of(&options, vec![rootfs_layer().unwrap(), etc_layer()]).unwrap();
    let image = pods.push("test/app:1", &archive).await;
    pull(ch, &image).await;
    image
}

/// Pulls `image` (pushed to the world's registry) into `k8s.io`.
async fn pull(ch: &Channel, image: &str) {
    ImageServiceClient::new(ch.clone())
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e:?}"));
}

/// Starts the world with a small log line limit, a network, the app image
/// pulled into `k8s.io`, and one pod whose logs go under the test's dir.
async fn world(n: u8) -> (Pods, Channel, String, String, PodSandboxConfig) {
    world_with(n, "").await
}

/// [`world`] with more keys of the CRI's table.
async fn world_with(n: u8, cri_keys: &str) -> (Pods, Channel, String, String, PodSandboxConfig) {
    let pods = Pods::start_with(n, PAUSE, &format!("max_container_log_line_size = 64\n{cri_keys}")).await;
    pods.write_conflist();
    let ch = pods.channel().await;
    let image = app_image(&pods, &ch).await;
    let sandbox_config = PodSandboxConfig {
        metadata: metadata("app"),
        hostname: "app-host".into(),
        log_directory: pods.dir.path().join("logs/app").display().to_string(),
        ..Default::default()
    };
    let sandbox = run(&ch, sandbox_config.clone()).await.expect("run the pod");
    (pods, ch, image, sandbox, sandbox_config)
}

fn config(name: &str, image: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: HashMap::from([("name".into(), name.into())]),
        ..Default::default()
    }
}

fn security(sec: LinuxContainerSecurityContext) -> Option<LinuxContainerConfig> {
    Some(LinuxContainerConfig { resources: None, security_context: Some(sec) })
}

async fn create(
    ch: &Channel,
    sandbox: &str,
    sandbox_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    let req = CreateContainerRequest {
        pod_sandbox_id: sandbox.into(),
        config: Some(config),
        sandbox_config: Some(sandbox_config.clone()),
    };
    Pods::rt(ch).create_container(req).await.map(|r| r.into_inner().container_id)
}

async fn start(ch: &Channel, id: &str) {
    Pods::rt(ch).start_container(StartContainerRequest { container_id: id.into() }).await.expect("start container");
}

async fn status(ch: &Channel, id: &str) -> (k8s_cri::v1::ContainerStatus, Value) {
    let req = ContainerStatusRequest { container_id: id.into(), verbose: true };
    let r = Pods::rt(ch).container_status(req).await.expect("container status").into_inner();
    (r.status.unwrap(), serde_json::from_str(&r.info["info"]).expect("verbose info is JSON"))
}

/// Polls until the container has exited (the exit monitor recorded it).
async fn exited(ch: &Channel, id: &str) -> k8s_cri::v1::ContainerStatus {
    for _ in 0..300 {
        let (st, _) = status(ch, id).await;
        if st.state == ContainerState::ContainerExited as i32 {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container {id} did not exit");
}

async fn list(ch: &Channel, filter: ContainerFilter) -> Vec<String> {
    let r = Pods::rt(ch).list_containers(ListContainersRequest { filter: Some(filter) }).await.expect("list");
    let mut ids: Vec<String> = r.into_inner().containers.into_iter().map(|c| c.id).collect();
    ids.sort();
    ids
}

fn state_is(state: ContainerState) -> ContainerFilter {
    ContainerFilter { state: Some(ContainerStateValue { state: state as i32 }), ..Default::default() }
}

async fn exec(ch: &Channel, id: &str, script: &str, timeout: i64) -> Result<(String, String, i32), tonic::Status> {
    let req =
        ExecSyncRequest { container_id: id.into(), cmd: vec!["/bin/sh".into(), "-c".into(), script.into()], timeout };
    let r = Pods::rt(ch).exec_sync(req).await?.into_inner();
    Ok((String::from_utf8_lossy(&r.stdout).into_owned(), String::from_utf8_lossy(&r.stderr).into_owned(), r.exit_code))
}

/// The entries of a CRI log file: (stream, tag, content); every timestamp
/// must parse as RFC 3339.
fn log_entries(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap();
            assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "timestamp {ts:?} in {l:?}");
            let stream = f.next().unwrap().to_string();
            let tag = f.next().unwrap().to_string();
            (stream, tag, f.next().unwrap_or_default().to_string())
        })
        .collect()
}

/// A cgroup parent of the test's own, removed from every hierarchy when
/// dropped (runc leaves a pod's parent behind, as under containerd).
struct CgroupParent(String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        crated_tests::cgroups::remove(&self.0);
    }
}

/// Host directories for critest's mount propagation specs, one per mode,
/// each a bind mount of itself made rprivate or rshared as critest makes
/// them. Dropping it detaches every mount under its directory (lazily:
/// a container may still hold them) and removes the directory only when
/// nothing is mounted there any more (a bind of `/etc` that propagated
/// back must not be emptied by a recursive removal).
struct PropagationDirs(Option<tempfile::TempDir>);

impl PropagationDirs {
    fn new() -> PropagationDirs {
        PropagationDirs(Some(tempfile::tempdir().unwrap()))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }

    /// `<dir>/<mode>/mnt` (the volume, bound onto itself and made
    /// `make`), `<dir>/<mode>/src/flag`; answers the volume.
    fn volume(&self, mode: &str, make: &str) -> std::path::PathBuf {
        let base = self.path().join(mode);
        let volume = base.join("mnt");
        std::fs::create_dir_all(volume.join("propagated")).unwrap();
        std::fs::create_dir_all(base.join("src")).unwrap();
        std::fs::write(base.join("src/flag"), "").unwrap();
        mount(&["--bind", &volume.display().to_string(), &volume.display().to_string()]);
        mount(&[make, &volume.display().to_string()]);
        volume
    }

    fn mounted(&self) -> Vec<String> {
        let dir = self.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)).map(String::from).collect()
    }
}

impl Drop for PropagationDirs {
    fn drop(&mut self) {
        for _ in 0..3 {
            for m in self.mounted().iter().rev() {
                let _ = std::process::Command::new("umount").args(["-l", m]).output();
            }
        }
        let left = self.mounted();
        if !left.is_empty() {
            eprintln!("still mounted, left in place: {left:?}");
            std::mem::forget(self.0.take());
        }
    }
}

/// `mount args`, which must succeed.
fn mount(args: &[&str]) {
    let out = std::process::Command::new("mount").args(args).output().unwrap();
    assert!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A character device of the host's `/dev` that runc does not make in a
/// container by itself, and its `uid:gid:major:minor` (hex numbers, as
/// busybox's `stat -c %u:%g:%t:%T` prints them).
fn host_device_beyond_runcs_defaults() -> (String, String) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let runcs = ["null", "zero", "full", "random", "urandom", "tty", "console", "ptmx"];
    let mut entries: Vec<_> = std::fs::read_dir("/dev").unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries
        .into_iter()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            if !m.file_type().is_char_device() || runcs.contains(&name.as_str()) {
                return None;
            }
            let (major, minor) = ((m.rdev() >> 8) & 0xfff, (m.rdev() & 0xff) | ((m.rdev() >> 12) & 0xfff00));
            Some((name, format!("{}:{}:{major:x}:{minor:x}", m.uid(), m.gid())))
        })
        .expect("a character device in the host's /dev")
}

/// Polls until the CRI log at `path` has an entry with `content`.
async fn wait_for_line(path: &Path, content: &str) {
    for _ in 0..100 {
        if path.exists() && log_entries(path).iter().any(|e| e.2 == content) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{content:?} never reached {path:?}");
}

async fn container_records(ch: &Channel) -> Vec<String> {
    let r = ContainersClient::new(ch.clone()).list(with_ns(CtrListContainers::default(), NS)).await.unwrap();
    let mut ids: Vec<String> = r
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| c.labels.get("io.cri-containerd.kind").map(String::as_str) == Some("container"))
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

async fn snapshot_exists(ch: &Channel, key: &str) -> bool {
    SnapshotsClient::new(ch.clone())
        .stat(with_ns(StatSnapshotRequest { snapshotter: "overlayfs".into(), key: key.into() }, NS))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_log_restart_stop_remove() {
    let (mut pods, ch, image, sandbox, sandbox_config) = world(3).await;

    // A container that writes to both streams, a line longer than the
    // limit (64), an unterminated last line, and exits 3.
    let script = "echo hello; echo oops >&2; printf 'x%.0s' $(seq 1 100); echo; printf tail; exit 3";
    let echo = create(&ch, &sandbox, &sandbox_config, config("echo", &image, script)).await.expect("create");
    assert_eq!(echo.len(), 64);
    let (st, info) = status(&ch, &echo).await;
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    assert!(st.created_at > 0 && st.started_at == 0, "{st:?}");
    assert_eq!(info["sandboxID"], sandbox.as_str());
    let spec = &info["runtimeSpec"];
    assert_eq!(spec["annotations"]["io.kubernetes.cri.container-type"], "container");
    assert_eq!(spec["annotations"]["io.kubernetes.cri.sandbox-id"], sandbox.as_str());
    let ns = spec["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.iter().any(|n| n["type"] == "network" && n["path"].as_str().unwrap().ends_with("/ns/net")), "{ns:?}");
    assert!(ns.iter().any(|n| n["type"] == "pid" && n["path"].as_str().unwrap().ends_with("/ns/pid")), "{ns:?}");
    let mounts = spec["mounts"].as_array().unwrap();
    for dest in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
        assert!(mounts.iter().any(|m| m["destination"] == dest), "{dest} not mounted: {mounts:?}");
    }

    // The record containerd's CRI leaves, and its snapshot.
    let c = ContainersClient::new(ch.clone())
        .get(with_ns(GetContainerRequest { id: echo.clone() }, NS))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(c.labels["io.cri-containerd.kind"], "container");
    assert_eq!(c.labels["name"], "echo");
    assert!(c.extensions.contains_key("io.cri-containerd.container.metadata"), "{:?}", c.extensions.keys());
    assert_eq!(c.snapshot_key, echo);
    assert!(snapshot_exists(&ch, &echo).await);

    start(&ch, &echo).await;
    let st = exited(&ch, &echo).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"), "{st:?}");
    assert!(st.started_at > 0 && st.finished_at >= st.started_at, "{st:?}");
    let log = pods.dir.path().join("logs/app/echo.log");
    assert_eq!(st.log_path, log.display().to_string());
    let entries = log_entries(&log);
    let of = |stream: &str| -> Vec<(String, String)> {
        entries.iter().filter(|e| e.0 == stream).map(|e| (e.1.clone(), e.2.clone())).collect()
    };
    let s = |t: &str, c: &str| (t.to_string(), c.to_string());
    assert_eq!(
        of("stdout"),
        vec![s("F", "hello"), s("P", &"x".repeat(64)), s("F", &"x".repeat(36)), s("P", "tail")],
        "{entries:?}"
    );
    assert_eq!(of("stderr"), vec![s("F", "oops")]);

    // A clean exit is Completed.
    let ok = create(&ch, &sandbox, &sandbox_config, config("ok", &image, "exit 0")).await.unwrap();
    start(&ch, &ok).await;
    let st = exited(&ch, &ok).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    let again = Pods::rt(&ch).start_container(StartContainerRequest { container_id: ok.clone() }).await;
    assert!(again.is_err(), "an exited container starts again: {again:?}");

    // A process that ignores SIGTERM, still running across a restart.
    let stubborn = create(
        &ch,
        &sandbox,
        &sandbox_config,
        config(
            "stubborn",
            &image,
            "trap '' TERM; echo up; while true; do [ -f /dev/shm/ping ] && echo pong && rm /dev/shm/ping; sleep 0.1; done",
        ),
    )
    .await
    .unwrap();
    start(&ch, &stubborn).await;
    let (st, info) = status(&ch, &stubborn).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    assert!(info["pid"].as_u64().unwrap() > 0, "{info}");

    // Lists and filters.
    let mut all = vec![echo.clone(), ok.clone(), stubborn.clone()];
    all.sort();
    assert_eq!(list(&ch, ContainerFilter::default()).await, all);
    assert_eq!(list(&ch, state_is(ContainerState::ContainerRunning)).await, vec![stubborn.clone()]);
    let mut done = vec![echo.clone(), ok.clone()];
    done.sort();
    assert_eq!(list(&ch, state_is(ContainerState::ContainerExited)).await, done);
    assert_eq!(
        list(&ch, ContainerFilter { id: stubborn[..10].into(), ..Default::default() }).await,
        vec![stubborn.clone()]
    );
    assert_eq!(list(&ch, ContainerFilter { pod_sandbox_id: sandbox.clone(), ..Default::default() }).await, all);
    assert_eq!(
        list(&ch, ContainerFilter { pod_sandbox_id: "0000".into(), ..Default::default() }).await,
        Vec::<String>::new()
    );
    let by_label =
        ContainerFilter { label_selector: HashMap::from([("name".into(), "ok".into())]), ..Default::default() };
    assert_eq!(list(&ch, by_label).await, vec![ok.clone()]);

    // One that exits while the daemon is down, told to by a file in the
    // pod's /dev/shm (a tmpfs the host sees too).
    let brief = create(
        &ch,
        &sandbox,
        &sandbox_config,
        config("brief", &image, "while [ ! -f /dev/shm/stop ]; do sleep 0.1; done; echo bye; exit 5"),
    )
    .await
    .unwrap();
    start(&ch, &brief).await;
    let (_, info) = status(&ch, &brief).await;
    let brief_pid = info["pid"].as_u64().unwrap() as u32;
    let shm = pods.d().setup.state().join(common::cri::CRI).join("sandboxes").join(&sandbox).join("shm");

    // A restarted daemon lists the same containers, the same states; the
    // one that exited meanwhile has its exit recorded.
    {
        let d = pods.daemon.as_mut().unwrap();
        d.stop();
        std::fs::write(shm.join("stop"), "").unwrap();
        assert!(common::wait_process_gone(brief_pid, Duration::from_secs(30)), "brief did not exit");
        d.restart();
    }
    let ch = pods.channel().await;
    all.push(brief.clone());
    all.sort();
    assert_eq!(list(&ch, ContainerFilter::default()).await, all);
    // The exit monitor, back, collects the exit.
    let st = exited(&ch, &brief).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (5, "Error"), "{st:?}");
    assert_eq!(list(&ch, state_is(ContainerState::ContainerRunning)).await, vec![stubborn.clone()]);
    let (st, _) = status(&ch, &echo).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));

    // Its output still reaches its log: the FIFOs were opened again.
    std::fs::write(shm.join("ping"), "").unwrap();
    let stubborn_log = pods.dir.path().join("logs/app/stubborn.log");
    wait_for_line(&stubborn_log, "pong").await;

    // Stop: SIGTERM is ignored, SIGKILL after the timeout ends it, and the
    // exit monitor re-attached after the restart records it.
    Pods::rt(&ch)
        .stop_container(StopContainerRequest { container_id: stubborn.clone(), timeout: 1 })
        .await
        .expect("stop");
    let st = exited(&ch, &stubborn).await;
    assert_eq!(st.exit_code, 137, "killed by SIGKILL: {st:?}");
    let entries = log_entries(&stubborn_log);
    let lines: Vec<&str> = entries.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(lines, ["up", "pong"]);

    // Remove: record, snapshot and status gone; the log stays (the
    // kubelet's); removing again is fine.
    for id in &all {
        Pods::rt(&ch).remove_container(RemoveContainerRequest { container_id: id.clone() }).await.expect("remove");
    }
    assert_eq!(list(&ch, ContainerFilter::default()).await, Vec::<String>::new());
    assert_eq!(container_records(&ch).await, Vec::<String>::new());
    assert!(!snapshot_exists(&ch, &echo).await);
    assert!(!pods.cri_root().join("containers").join(&echo).exists());
    assert!(log.exists());
    Pods::rt(&ch).remove_container(RemoveContainerRequest { container_id: echo.clone() }).await.expect("again");
    let gone = Pods::rt(&ch).container_status(ContainerStatusRequest { container_id: echo, verbose: false }).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_security_stats_and_bad_input() {
    // Declared first, dropped last: after the world removed the pods.
    let cgroup_parent = CgroupParent(format!("crated-test-cri-{}", std::process::id()));
    let (pods, ch, image, sandbox, sandbox_config) = world(4).await;
    let forever = "while true; do sleep 1; done";

    // A non-root user from the image's passwd, a read-only rootfs, no new
    // privileges.
    let data = pods.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("note"), "from the host\n").unwrap();
    let mut cfg = config("secure", &image, forever);
    cfg.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: data.display().to_string(),
        readonly: true,
        propagation: MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }];
    cfg.linux = security(LinuxContainerSecurityContext {
        run_as_username: "alice".into(),
        supplemental_groups: vec![5000],
        readonly_rootfs: true,
        no_new_privs: true,
        ..Default::default()
    });
    let secure = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create secure");
    start(&ch, &secure).await;
    let (out, _, code) = exec(&ch, &secure, "id -u; id -g; id -G", 10).await.unwrap();
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["1000", "1001"], "{out}");
    let groups: Vec<&str> = lines[2].split(' ').collect();
    assert!(groups.contains(&"10") && groups.contains(&"5000"), "{out}");
    let (_, err, code) = exec(&ch, &secure, "echo x > /written", 10).await.unwrap();
    assert_ne!(code, 0, "a read-only rootfs took a write");
    assert!(err.contains("Read-only file system"), "{err}");
    let (out, _, _) = exec(&ch, &secure, "grep NoNewPrivs /proc/self/status", 10).await.unwrap();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["NoNewPrivs:", "1"]);
    let (out, _, _) = exec(&ch, &secure, "cat /etc/hostname", 10).await.unwrap();
    assert_eq!(out.trim(), "app-host");
    // A host directory, read-only.
    let (out, _, _) = exec(&ch, &secure, "cat /data/note", 10).await.unwrap();
    assert_eq!(out, "from the host\n");
    let (_, _, code) = exec(&ch, &secure, "touch /data/other", 10).await.unwrap();
    assert_ne!(code, 0, "a read-only mount took a write");

    // Capabilities: all dropped, one added, as root.
    let mut cfg = config("caps", &image, forever);
    cfg.linux = security(LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: 0 }),
        capabilities: Some(Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    let caps = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create caps");
    start(&ch, &caps).await;
    let (out, _, _) = exec(&ch, &caps, "grep CapEff /proc/self/status", 10).await.unwrap();
    // CAP_NET_ADMIN is bit 12.
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["CapEff:", "0000000000001000"]);
    let (out, _, _) = exec(&ch, &secure, "grep NoNewPrivs /proc/self/status", 10).await.unwrap();
    assert!(out.contains('1'));
    let (out, _, _) = exec(&ch, &caps, "grep NoNewPrivs /proc/self/status", 10).await.unwrap();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["NoNewPrivs:", "0"]);

    // The pod's containers share its /dev/shm.
    let (_, _, code) = exec(&ch, &caps, "echo shared > /dev/shm/note", 10).await.unwrap();
    assert_eq!(code, 0);
    let (out, _, _) = exec(&ch, &secure, "cat /dev/shm/note", 10).await.unwrap();
    assert_eq!(out, "shared\n");

    // ExecSync: both streams and the exit code; a timeout kills the
    // process and fails the call.
    let (out, err, code) = exec(&ch, &caps, "echo out; echo err >&2; exit 7", 10).await.unwrap();
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 7));
    let late = exec(&ch, &caps, "sleep 30", 1).await.unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    // The pod shares one pid namespace: no `sleep 30` is left in it.
    let (out, _, _) = exec(&ch, &caps, "ps -o args | grep -c '^sleep 30' || true", 10).await.unwrap();
    assert_eq!(out.trim(), "0", "the timed-out exec is still running");

    // Stats: CPU and memory from the cgroup, the writable layer.
    let (_, _, _) = exec(&ch, &caps, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done", 30).await.unwrap();
    let stats = Pods::rt(&ch)
        .container_stats(ContainerStatsRequest { container_id: caps.clone() })
        .await
        .expect("stats")
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.attributes.as_ref().unwrap().id, caps);
    assert!(stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds).unwrap().value > 0, "{stats:?}");
    assert!(stats.memory.as_ref().and_then(|m| m.working_set_bytes).unwrap().value > 0, "{stats:?}");
    assert!(stats.writable_layer.is_some(), "{stats:?}");
    let listed = Pods::rt(&ch).list_container_stats(ListContainerStatsRequest { filter: None }).await.unwrap();
    let mut ids: Vec<String> = listed.into_inner().stats.into_iter().map(|s| s.attributes.unwrap().id).collect();
    ids.sort();
    let mut both = vec![secure.clone(), caps.clone()];
    both.sort();
    assert_eq!(ids, both);
    // The pod's network counters: a connection attempt from the host to
    // the pod's IP is received and refused on its eth0; the counters are
    // what the pod itself reads before the stats are taken, or more.
    let ip = Pods::rt(&ch)
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest { pod_sandbox_id: sandbox.clone(), verbose: false })
        .await
        .expect("sandbox status")
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap();
    let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 1);
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    let (dev, _, _) = exec(&ch, &caps, "cat /proc/net/dev", 10).await.unwrap();
    let eth0: Vec<u64> = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("eth0:"))
        .expect("eth0 in the pod")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let pod = Pods::rt(&ch)
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: sandbox.clone() })
        .await
        .expect("pod stats")
        .into_inner()
        .stats
        .unwrap();
    let linux = pod.linux.unwrap();
    assert_eq!(linux.containers.len(), 2);
    assert!(linux.cpu.and_then(|c| c.usage_core_nano_seconds).unwrap().value > 0);
    let net = linux.network.and_then(|n| n.default_interface).expect("the pod's network stats");
    assert_eq!(net.name, "eth0");
    let counter = |c: Option<k8s_cri::v1::UInt64Value>| c.unwrap().value;
    let (rx, tx) = (counter(net.rx_bytes), counter(net.tx_bytes));
    assert!(eth0[0] > 0 && rx >= eth0[0] && rx < eth0[0] + 1_000_000, "rx {rx}, the pod read {}", eth0[0]);
    assert!(eth0[8] > 0 && tx >= eth0[8] && tx < eth0[8] + 1_000_000, "tx {tx}, the pod read {}", eth0[8]);
    assert_eq!((counter(net.rx_errors), counter(net.tx_errors)), (eth0[2], eth0[10]));
    // Each running container's shell, at least.
    let processes = linux.process.and_then(|p| p.process_count).unwrap().value;
    assert!(processes >= 2, "{processes} processes");

    // UpdateContainerResources reaches the cgroup and the status.
    let limit = 64 * 1024 * 1024;
    Pods::rt(&ch)
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: caps.clone(),
            linux: Some(LinuxContainerResources { memory_limit_in_bytes: limit, ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("update resources");
    let v1 = Path::new("/sys/fs/cgroup/memory").join(&caps).join("memory.limit_in_bytes");
    let v2 = Path::new("/sys/fs/cgroup").join(&caps).join("memory.max");
    let set = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2)).expect("the container's cgroup");
    assert_eq!(set.trim(), limit.to_string());
    let (st, _) = status(&ch, &caps).await;
    assert_eq!(st.resources.and_then(|r| r.linux).unwrap().memory_limit_in_bytes, limit);

    // ReopenContainerLog: after a rotation, new output goes to a new file.
    let ticker = create(
        &ch,
        &sandbox,
        &sandbox_config,
        config("ticker", &image, "while true; do if [ -f /tmp/go ]; then echo tick; rm /tmp/go; fi; sleep 0.1; done"),
    )
    .await
    .unwrap();
    start(&ch, &ticker).await;
    let log = pods.dir.path().join("logs/app/ticker.log");
    let rotated = pods.dir.path().join("logs/app/ticker.log.1");
    exec(&ch, &ticker, "touch /tmp/go", 10).await.unwrap();
    wait_for_line(&log, "tick").await;
    std::fs::rename(&log, &rotated).unwrap();
    Pods::rt(&ch).reopen_container_log(ReopenContainerLogRequest { container_id: ticker.clone() }).await.unwrap();
    exec(&ch, &ticker, "touch /tmp/go", 10).await.unwrap();
    wait_for_line(&log, "tick").await;
    assert_eq!(log_entries(&rotated).len(), 1);

    // Seccomp runtime/default refuses mount(2) even with CAP_SYS_ADMIN,
    // which succeeds unconfined.
    for (name, profile, allowed) in
        [("confined", ProfileType::RuntimeDefault, false), ("free", ProfileType::Unconfined, true)]
    {
        let mut cfg = config(name, &image, forever);
        cfg.linux = security(LinuxContainerSecurityContext {
            capabilities: Some(Capability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() }),
            seccomp: Some(SecurityProfile { profile_type: profile as i32, localhost_ref: String::new() }),
            ..Default::default()
        });
        let id = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create");
        start(&ch, &id).await;
        let (_, err, code) = exec(&ch, &id, "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m", 10).await.unwrap();
        assert_eq!(code == 0, allowed, "{name}: {err}");
        if !allowed {
            assert!(err.contains("Operation not permitted") || err.contains("permission denied"), "{err}");
        }
        let (_, info) = status(&ch, &id).await;
        assert_eq!(info["runtimeSpec"]["linux"].get("seccomp").is_some(), !allowed, "{name}");
    }

    // A command that does not exist fails the start, and the container
    // is exited with containerd's StartError (128).
    let mut cfg = config("missing", &image, "");
    cfg.command = vec!["/bin/no-such-command".into()];
    let missing = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create missing");
    let err = Pods::rt(&ch).start_container(StartContainerRequest { container_id: missing.clone() }).await.unwrap_err();
    assert!(err.message().contains("no-such-command"), "{err:?}");
    let (st, _) = status(&ch, &missing).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!((st.exit_code, st.reason.as_str()), (128, "StartError"), "{st:?}");
    assert!(st.message.contains("no-such-command"), "{st:?}");

    // Bad input leaves nothing behind.
    let records = container_records(&ch).await;
    let snapshots = || async {
        let mut s = SnapshotsClient::new(ch.clone())
            .list(with_ns(ListSnapshotsRequest { snapshotter: "overlayfs".into(), filters: vec![] }, NS))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(batch) = s.message().await.unwrap() {
            n += batch.info.len();
        }
        n
    };
    let before = snapshots().await;
    let err = create(&ch, "0123456789", &sandbox_config, config("lost", &image, "true")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = create(&ch, &sandbox, &sandbox_config, config("caps", &image, "true")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err =
        create(&ch, &sandbox, &sandbox_config, config("ghost", "example.invalid/nothing:1", "true")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut cfg = config("nobody", &image, "true");
    cfg.linux = security(LinuxContainerSecurityContext { run_as_username: "nobody".into(), ..Default::default() });
    let err = create(&ch, &sandbox, &sandbox_config, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(container_records(&ch).await, records);
    assert_eq!(snapshots().await, before, "a failed create left a snapshot");
    assert_eq!(std::fs::read_dir(pods.cri_root().join("containers")).unwrap().count(), 6);

    // CRI's TARGET pid mode (kubectl debug's ephemeral containers): a
    // container joins the pid namespace of another running container of
    // the pod, here one with a pid namespace of its own.
    let pid_mode = |pid: k8s_cri::v1::NamespaceMode, target: &str| {
        security(LinuxContainerSecurityContext {
            namespace_options: Some(k8s_cri::v1::NamespaceOption {
                pid: pid as i32,
                target_id: target.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let mut cfg = config("isolated", &image, "while true; do sleep 1; done");
    cfg.linux = pid_mode(k8s_cri::v1::NamespaceMode::Container, "");
    let isolated = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create isolated");
    let mut cfg = config("debugger", &image, "while true; do sleep 2; done");
    cfg.linux = pid_mode(k8s_cri::v1::NamespaceMode::Target, &isolated);
    let err = create(&ch, &sandbox, &sandbox_config, cfg.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "a target not running yet: {err:?}");
    assert!(err.message().contains("invalid target container"), "{err:?}");
    start(&ch, &isolated).await;
    let debugger = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create debugger");
    start(&ch, &debugger).await;
    let cmdline = "cat /proc/1/cmdline";
    let (target_init, _, _) = exec(&ch, &isolated, cmdline, 10).await.unwrap();
    assert!(target_init.contains("sleep 1;"), "{target_init}");
    let (seen, err, code) = exec(&ch, &debugger, cmdline, 10).await.unwrap();
    assert_eq!((seen.as_str(), code), (target_init.as_str(), 0), "{err}");
    let mut cfg = config("lost-debugger", &image, "true");
    cfg.linux = pid_mode(k8s_cri::v1::NamespaceMode::Target, "0123456789abcdef");
    let err = create(&ch, &sandbox, &sandbox_config, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("invalid target container"), "{err:?}");

    // A container of a host-network pod under a cgroup parent: the host's
    // network namespace, the parent in its cgroups path.
    let mut host_pod = sandbox_config.clone();
    host_pod.metadata = metadata("hostnet");
    host_pod.linux = host_network();
    host_pod.linux.as_mut().unwrap().cgroup_parent = format!("/{}", cgroup_parent.0);
    let host_sandbox = run(&ch, host_pod.clone()).await.expect("run the host-network pod");
    let on_host = create(&ch, &host_sandbox, &host_pod, config("onhost", &image, forever)).await.unwrap();
    start(&ch, &on_host).await;
    let (_, info) = status(&ch, &on_host).await;
    let spec = &info["runtimeSpec"];
    assert_eq!(spec["linux"]["cgroupsPath"], format!("/{}/{on_host}", cgroup_parent.0));
    let ns = spec["linux"]["namespaces"].as_array().unwrap();
    assert!(!ns.iter().any(|n| n["type"] == "network" || n["type"] == "uts"), "{ns:?}");
    let (out, _, code) = exec(&ch, &on_host, "echo ok", 10).await.unwrap();
    assert_eq!((out.as_str(), code), ("ok\n", 0));
    Pods::rt(&ch).stop_container(StopContainerRequest { container_id: on_host.clone(), timeout: 0 }).await.unwrap();
    assert_eq!(exited(&ch, &on_host).await.exit_code, 137);

    // A pod whose cgroup parent is a systemd slice (the kubelet's systemd
    // driver): runc's systemd form of the path, named for the last slice,
    // as containerd's getCgroupsPath (created only: cgroupfs runc here).
    let mut slice_pod = sandbox_config.clone();
    slice_pod.linux.get_or_insert_with(Default::default).cgroup_parent =
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice".into();
    let sliced = create(&ch, &sandbox, &slice_pod, config("sliced", &image, forever)).await.unwrap();
    let (_, info) = status(&ch, &sliced).await;
    let path = &info["runtimeSpec"]["linux"]["cgroupsPath"];
    assert_eq!(*path, format!("kubepods-besteffort-pod1.slice:cri-containerd:{sliced}"));
    Pods::rt(&ch).remove_container(RemoveContainerRequest { container_id: sliced }).await.unwrap();
    drop(pods);
}

/// The rest of critest's security-context specs, observed from inside:
/// masked and read-only paths (containerd's defaults), a privileged
/// container in a privileged pod (every capability the host has, nothing
/// masked) and one refused in an unprivileged pod, a group without a user
/// refused, a pod in the host's pid and IPC namespaces (and one in its
/// own IPC namespace), a pod's sysctls, a `localhost/` seccomp profile
/// refusing sethostname(2) that the same container may call without it,
/// a profile name without `localhost/` refused, and a blocking profile
/// ignored for a privileged container. Also critest's mount specs: a
/// volume whose host path is a symlink, and mount propagation rprivate,
/// rshared and rslave seen both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_masked_paths_host_pid_sysctls_and_localhost_seccomp() {
    let (pods, ch, image, sandbox, sandbox_config) = world(5).await;
    // Declared after the world, dropped before it: the host's mounts go
    // first (lazily), then the containers holding them.
    let propagation = PropagationDirs::new();
    let forever = "while true; do sleep 1; done";
    let mountinfo_has = |mountinfo: &str, target: &str| {
        mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(target))
            .map(|l| l.split(' ').nth(5).unwrap().to_string())
    };

    // Defaults: /proc/keys masked (runc masks what exists; this kernel has
    // no /proc/kcore), /proc/sys read-only. A volume whose host path is a
    // symlink mounts the symlink's target (containerd resolves it).
    let target = pods.dir.path().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("note"), "through the link\n").unwrap();
    let link = pods.dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut cfg = config("plain", &image, forever);
    cfg.mounts =
        vec![Mount { container_path: "/linked".into(), host_path: link.display().to_string(), ..Default::default() }];
    let plain = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create plain");
    start(&ch, &plain).await;
    let (mountinfo, _, _) = exec(&ch, &plain, "cat /proc/self/mountinfo", 10).await.unwrap();
    let (st, info) = status(&ch, &plain).await;
    let linux = &info["runtimeSpec"]["linux"];
    assert!(mountinfo_has(&mountinfo, "/proc/keys").is_some(), "/proc/keys is not masked:\n{mountinfo}\n{linux}");
    let sys = mountinfo_has(&mountinfo, "/proc/sys").expect("/proc/sys is a read-only mount");
    assert!(sys.split(',').any(|o| o == "ro"), "{sys}");
    let (out, _, _) = exec(&ch, &plain, "cat /linked/note", 10).await.unwrap();
    assert_eq!(out, "through the link\n");
    let mounts = info["runtimeSpec"]["mounts"].as_array().unwrap();
    let linked = mounts.iter().find(|m| m["destination"] == "/linked").expect("the /linked mount");
    assert_eq!(linked["source"], std::fs::canonicalize(&target).unwrap().display().to_string());
    assert_eq!(st.mounts[0].host_path, link.display().to_string(), "the status keeps the config's path");
    // Its own IPC namespace, not the host's.
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap().display().to_string();
    let (out, _, _) = exec(&ch, &plain, "readlink /proc/self/ns/ipc", 10).await.unwrap();
    assert!(out.starts_with("ipc:[") && out.trim() != host_ipc, "{out} vs the host's {host_ipc}");

    // A privileged container needs a privileged pod.
    let mut cfg = config("refused", &image, forever);
    cfg.linux = security(LinuxContainerSecurityContext { privileged: true, ..Default::default() });
    let e = create(&ch, &sandbox, &sandbox_config, cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A group without a user is refused.
    let mut cfg = config("group-only", &image, forever);
    cfg.linux =
        security(LinuxContainerSecurityContext { run_as_group: Some(Int64Value { value: 7 }), ..Default::default() });
    let e = create(&ch, &sandbox, &sandbox_config, cfg).await.unwrap_err();
    assert!(e.message().contains("specified without user"), "{e:?}");

    // A profile name without `localhost/` (nor runtime/default,
    // docker/default, unconfined) is refused, as containerd refuses it.
    let profile = pods.dir.path().join("no-sethostname.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut cfg = config("unprefixed", &image, forever);
    #[allow(deprecated)]
    let sec =
        LinuxContainerSecurityContext { seccomp_profile_path: profile.display().to_string(), ..Default::default() };
    cfg.linux = security(sec);
    let e = create(&ch, &sandbox, &sandbox_config, cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(&format!("invalid profile {:?}", profile.display().to_string())), "{e:?}");

    // Volumes for the propagation specs: rprivate on a private mount,
    // rshared and rslave on shared ones (containerd refuses them
    // otherwise).
    let volumes = [
        ("private", MountPropagation::PropagationPrivate, propagation.volume("private", "--make-rprivate")),
        ("shared", MountPropagation::PropagationBidirectional, propagation.volume("shared", "--make-rshared")),
        ("slave", MountPropagation::PropagationHostToContainer, propagation.volume("slave", "--make-rshared")),
    ];

    // A privileged pod in the host's pid and IPC namespaces, with a sysctl.
    let host_pid_ipc = k8s_cri::v1::NamespaceOption {
        pid: k8s_cri::v1::NamespaceMode::Node as i32,
        ipc: k8s_cri::v1::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let host_pid_config = PodSandboxConfig {
        metadata: metadata("privileged"),
        log_directory: pods.dir.path().join("logs/privileged").display().to_string(),
        linux: Some(k8s_cri::v1::LinuxPodSandboxConfig {
            sysctls: HashMap::from([("net.ipv4.ping_group_range".to_string(), "0 2147483647".to_string())]),
            security_context: Some(k8s_cri::v1::LinuxSandboxSecurityContext {
                privileged: true,
                namespace_options: Some(host_pid_ipc.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let privileged_pod = run(&ch, host_pid_config.clone()).await.expect("run the privileged pod");
    let mut cfg = config("privileged", &image, forever);
    cfg.linux = security(LinuxContainerSecurityContext {
        privileged: true,
        namespace_options: Some(host_pid_ipc.clone()),
        ..Default::default()
    });
    cfg.mounts = volumes
        .iter()
        .map(|(mode, p, volume)| Mount {
            container_path: format!("/{mode}"),
            host_path: volume.display().to_string(),
            propagation: *p as i32,
            ..Default::default()
        })
        .collect();
    let privileged = create(&ch, &privileged_pod, &host_pid_config, cfg).await.expect("create privileged");
    start(&ch, &privileged).await;
    let (st, info) = status(&ch, &privileged).await;
    let props: Vec<i32> = st.mounts.iter().map(|m| m.propagation).collect();
    assert_eq!(props, volumes.iter().map(|v| v.1 as i32).collect::<Vec<_>>());
    assert_eq!(info["runtimeSpec"]["linux"]["rootfsPropagation"], "rshared");
    let (out, _, _) = exec(&ch, &privileged, "grep CapEff /proc/self/status", 10).await.unwrap();
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_caps = ours.lines().find(|l| l.starts_with("CapEff:")).unwrap().split_whitespace().nth(1).unwrap();
    assert_eq!(out.split_whitespace().nth(1), Some(host_caps), "{out}");
    let (mountinfo, _, _) = exec(&ch, &privileged, "cat /proc/self/mountinfo", 10).await.unwrap();
    assert!(mountinfo_has(&mountinfo, "/proc/keys").is_none(), "privileged, yet /proc/keys is masked");
    // The host's pid namespace: the host's pid 1 is the container's.
    let (out, _, _) = exec(&ch, &privileged, "cat /proc/1/comm", 10).await.unwrap();
    assert_eq!(out, std::fs::read_to_string("/proc/1/comm").unwrap());
    // The host's IPC namespace.
    let (out, _, _) = exec(&ch, &privileged, "readlink /proc/self/ns/ipc", 10).await.unwrap();
    assert_eq!(out.trim(), host_ipc);
    // The pod's sysctl, in the pod's network namespace.
    let (out, _, _) = exec(&ch, &privileged, "cat /proc/sys/net/ipv4/ping_group_range", 10).await.unwrap();
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "2147483647"]);
    // The host's devices (containerd's WithHostDevices), with the host's
    // numbers and owner: one runc does not make by default.
    let (name, numbers) = host_device_beyond_runcs_defaults();
    let script = format!("/bin/busybox stat -c %u:%g:%t:%T /dev/{name}");
    let (out, err, code) = exec(&ch, &privileged, &script, 10).await.unwrap();
    assert_eq!((out.trim(), code), (numbers.as_str(), 0), "{err}");
    let (_, err, code) = exec(&ch, &plain, &script, 10).await.unwrap();
    assert_ne!(code, 0, "an unprivileged container has the host's /dev/{name}");
    assert!(err.contains("No such file"), "{err}");

    // Mount propagation (critest's `container_linux.go`): the host mounts
    // under each volume after the start, the container mounts /etc under
    // each; rshared sees both, rslave the host's only, rprivate neither.
    for (mode, _, volume) in &volumes {
        let src = volume.parent().unwrap().join("src");
        mount(&["--bind", &src.display().to_string(), &volume.join("propagated").display().to_string()]);
        let (out, err, code) = exec(&ch, &privileged, &format!("ls -A /{mode}/propagated"), 10).await.unwrap();
        assert_eq!(code, 0, "{err}");
        let want = if *mode == "private" { "" } else { "flag\n" };
        assert_eq!(out, want, "{mode}: the host's mount as seen inside");
        let script = format!("mkdir -p /{mode}/inner && mount --bind /etc /{mode}/inner");
        let (_, err, code) = exec(&ch, &privileged, &script, 10).await.unwrap();
        assert_eq!(code, 0, "{mode}: {err}");
        let seen = std::fs::read_dir(volume.join("inner")).unwrap().count();
        assert_eq!(seen > 0, *mode == "shared", "{mode}: the container's mount as seen on the host");
    }

    // A localhost seccomp profile refusing sethostname: the same container
    // without it (and CAP_SYS_ADMIN) may set the pod's hostname.
    let sys_admin = |seccomp: Option<SecurityProfile>| {
        security(LinuxContainerSecurityContext {
            capabilities: Some(Capability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() }),
            seccomp,
            ..Default::default()
        })
    };
    let mut cfg = config("confined", &image, forever);
    cfg.linux = sys_admin(Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: profile.display().to_string(),
    }));
    let confined = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create confined");
    start(&ch, &confined).await;
    let (_, err, code) = exec(&ch, &confined, "hostname confined-name", 10).await.unwrap();
    assert_ne!(code, 0, "sethostname passed the profile");
    assert!(err.contains("not permitted"), "{err}");
    let mut cfg = config("unconfined", &image, forever);
    cfg.linux = sys_admin(Some(SecurityProfile { profile_type: ProfileType::Unconfined as i32, ..Default::default() }));
    let unconfined = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create unconfined");
    start(&ch, &unconfined).await;
    let (out, err, code) = exec(&ch, &unconfined, "hostname unconfined-name && hostname", 10).await.unwrap();
    assert_eq!((code, out.trim()), (0, "unconfined-name"), "{err}");

    // A privileged container ignores the profile (containerd 1.6 sets no
    // seccomp for one, whatever it names).
    let mut cfg = config("privileged-profile", &image, forever);
    #[allow(deprecated)]
    let sec = LinuxContainerSecurityContext {
        privileged: true,
        seccomp_profile_path: format!("localhost/{}", profile.display()),
        ..Default::default()
    };
    cfg.linux = security(sec);
    let ignored = create(&ch, &privileged_pod, &host_pid_config, cfg).await.expect("create privileged-profile");
    start(&ch, &ignored).await;
    let (_, info) = status(&ch, &ignored).await;
    assert!(info["runtimeSpec"]["linux"].get("seccomp").is_none(), "{}", info["runtimeSpec"]["linux"]);
    let (out, err, code) = exec(&ch, &ignored, "hostname privileged-name && hostname", 10).await.unwrap();
    assert_eq!((code, out.trim()), (0, "privileged-name"), "{err}");
    drop(propagation);
}

/// `device_ownership_from_security_context`: a CRI device (a node the test
/// makes with /dev/null's numbers and an owner of its own, 4321:8765) is
/// owned inside the container by the container's run_as_user /
/// run_as_group with the key on, and as on the host with it off (what
/// containerd's `DeviceFromPath` copies), in both cases a working device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_take_the_run_as_ids_with_device_ownership_from_security_context() {
    for (n, on) in [(6u8, true), (7, false)] {
        let keys = if on { "device_ownership_from_security_context = true" } else { "" };
        let (pods, ch, image, sandbox, sandbox_config) = world_with(n, keys).await;
        let node = pods.dir.path().join("null-node");
        let made = std::process::Command::new("mknod").arg(&node).args(["c", "1", "3"]).status().unwrap();
        assert!(made.success(), "mknod");
        std::os::unix::fs::chown(&node, Some(4321), Some(8765)).unwrap();
        std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        let mut cfg = config("dev", &image, "while true; do sleep 1; done");
        cfg.devices = vec![Device {
            container_path: "/dev/crated-null".into(),
            host_path: node.display().to_string(),
            permissions: "rwm".into(),
        }];
        cfg.linux = security(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1234 }),
            run_as_group: Some(Int64Value { value: 5678 }),
            ..Default::default()
        });
        let id = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create");
        start(&ch, &id).await;
        let script =
            "/bin/busybox stat -c %u:%g:%t:%T /dev/crated-null && echo x > /dev/crated-null && /bin/busybox id -u";
        let (out, err, code) = exec(&ch, &id, script, 10).await.unwrap();
        let owner = if on { "1234:5678" } else { "4321:8765" };
        assert_eq!((out.as_str(), code), (format!("{owner}:1:3\n1234\n").as_str(), 0), "on: {on}, {err}");
        let (_, info) = status(&ch, &id).await;
        let device = &info["runtimeSpec"]["linux"]["devices"][0];
        assert_eq!(format!("{}:{}", device["uid"], device["gid"]), owner, "{device}");
        drop(pods);
    }
}

/// `disable_cgroup`: neither the sandbox's nor the container's spec has a
/// cgroups path or the CRI's resources (the sandbox's CPU shares, the
/// container's memory limit), so nothing is made under the pod's cgroup
/// parent; the device rules stay. The container runs, and its stats still
/// come from the cgroup runc made for it below the shim's, which the shim
/// finds from the task's pid, as containerd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_cgroup_gives_no_cgroups_path_or_resources() {
    // Declared first, dropped last: after the world removed the pods.
    let parent = CgroupParent(format!("crated-test-nocg-{}", std::process::id()));
    let pods = Pods::start_with(8, PAUSE, "disable_cgroup = true").await;
    pods.write_conflist();
    let ch = pods.channel().await;
    let image = app_image(&pods, &ch).await;
    let sandbox_config = PodSandboxConfig {
        metadata: metadata("nocg"),
        linux: Some(k8s_cri::v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", parent.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = run(&ch, sandbox_config.clone()).await.expect("run the pod");
    let r = ContainersClient::new(ch.clone())
        .get(with_ns(GetContainerRequest { id: sandbox.clone() }, NS))
        .await
        .unwrap()
        .into_inner();
    let spec: Value = serde_json::from_slice(&r.container.unwrap().spec.unwrap().value).unwrap();
    assert!(spec["linux"].get("cgroupsPath").is_none(), "{}", spec["linux"]);
    assert_eq!(spec["linux"]["resources"], serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]}));

    let mut cfg = config("app", &image, "while true; do sleep 1; done");
    cfg.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
        security_context: None,
    });
    let id = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create");
    start(&ch, &id).await;
    let (out, _, code) = exec(&ch, &id, "echo ok", 10).await.unwrap();
    assert_eq!((out.as_str(), code), ("ok\n", 0));
    let (_, info) = status(&ch, &id).await;
    let linux = &info["runtimeSpec"]["linux"];
    assert!(linux.get("cgroupsPath").is_none(), "{linux}");
    assert!(linux["resources"].get("memory").is_none(), "{linux}");
    assert_eq!(linux["resources"]["devices"][0], serde_json::json!({"allow": false, "access": "rwm"}));
    // Nothing under the parent: no hierarchy has it.
    let pid = info["pid"].as_u64().expect("the container's pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!cgroups.contains(&parent.0), "{cgroups}");
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies: Vec<_> = std::fs::read_dir(root).unwrap().flatten().map(|e| e.path()).collect();
    hierarchies.push(root.to_path_buf());
    for h in hierarchies {
        assert!(!h.join(&parent.0).exists(), "{:?} exists", h.join(&parent.0));
    }
    let stats = Pods::rt(&ch)
        .container_stats(ContainerStatsRequest { container_id: id.clone() })
        .await
        .expect("stats")
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.memory.as_ref().and_then(|m| m.working_set_bytes).unwrap().value > 0, "{stats:?}");
    drop(pods);
}

/// A layer with `data/seed` (1000:1001, 0640) in `data/` (1000:1001, 0750).
fn seeded_data_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "data/", tar::EntryType::Directory, 0o750, (1000, 1001), b"");
    append(&mut b, "data/seed", tar::EntryType::Regular, 0o640, (1000, 1001), b"seeded by the image\n");
    b.into_inner().unwrap()
}

/// The image's `Volumes` as containerd 1.6 makes them: each path gets a
/// directory of its own under the container's root, seeded with what the
/// image has there (content, owner, mode), and writes land in it rather
/// than in the writable layer; a path the image lacks is an empty volume;
/// a CRI mount at the same path wins; the directory goes with the
/// container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_are_seeded_and_yield_to_cri_mounts() {
    let (pods, ch, _, sandbox, sandbox_config) = world(9).await;
    let options = ImageOptions {
        cmd: Some(vec!["/bin/sh".into()]),
        volumes: vec!["/data".into(), "/empty".into()],
        ..Default::default()
    };
    let layers = vec![rootfs_layer().unwrap(), etc_layer(), seeded_data_layer()];
    let archive = oci_archive_of(&options, layers).unwrap();
    let image = pods.push("test/volumes:1", &archive).await;
    pull(&ch, &image).await;

    let forever = "while true; do sleep 1; done";
    let id = create(&ch, &sandbox, &sandbox_config, config("volumes", &image, forever)).await.expect("create");
    start(&ch, &id).await;
    let script = "cat /data/seed; stat -c %u:%g:%a /data /data/seed; ls -A /empty; echo written > /data/new";
    let (out, err, code) = exec(&ch, &id, script, 10).await.unwrap();
    assert_eq!((out.as_str(), code), ("seeded by the image\n1000:1001:750\n1000:1001:640\n", 0), "{err}");
    let (mountinfo, _, _) = exec(&ch, &id, "cat /proc/self/mountinfo", 10).await.unwrap();
    let mounted_at = |target: &str| mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(target));
    assert!(mounted_at("/data") && mounted_at("/empty"), "{mountinfo}");
    // The writes are in the volume's directory on the host, under the
    // container's root; the status lists only the request's mounts.
    let volumes = pods.cri_root().join("containers").join(&id).join("volumes");
    let written: Vec<String> = std::fs::read_dir(&volumes)
        .unwrap()
        .flatten()
        .filter_map(|v| std::fs::read_to_string(v.path().join("new")).ok())
        .collect();
    assert_eq!(written, ["written\n"]);
    let (st, info) = status(&ch, &id).await;
    assert!(st.mounts.is_empty(), "{:?}", st.mounts);
    let spec_mounts: Vec<&str> =
        info["runtimeSpec"]["mounts"].as_array().unwrap().iter().filter_map(|m| m["destination"].as_str()).collect();
    assert!(spec_mounts.contains(&"/data") && spec_mounts.contains(&"/empty"), "{spec_mounts:?}");

    // A CRI mount at a volume's path replaces the image's volume.
    let host = pods.dir.path().join("host-data");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("from-host"), "").unwrap();
    let mut cfg = config("mounted", &image, forever);
    cfg.mounts =
        vec![Mount { container_path: "/data/".into(), host_path: host.display().to_string(), ..Default::default() }];
    let mounted = create(&ch, &sandbox, &sandbox_config, cfg).await.expect("create mounted");
    start(&ch, &mounted).await;
    let (out, err, code) = exec(&ch, &mounted, "ls -A /data", 10).await.unwrap();
    assert_eq!((out.as_str(), code), ("from-host\n", 0), "{err}");
    let dirs = std::fs::read_dir(pods.cri_root().join("containers").join(&mounted).join("volumes")).unwrap().count();
    assert_eq!(dirs, 1, "only /empty gets a volume");

    // Removal takes the volumes with the container's root.
    let mut rt = Pods::rt(&ch);
    rt.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.unwrap();
    rt.remove_container(RemoveContainerRequest { container_id: id.clone() }).await.unwrap();
    assert!(!volumes.exists(), "the volumes outlived their container");
}
