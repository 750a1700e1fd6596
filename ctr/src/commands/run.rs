//! `ctr run` and `ctr containers create` (containerd 1.6's
//! `cmd/ctr/commands/run`): a container record from an image (its rw
//! snapshot, its spec built by [`crate::spec`], its runtime and runtime
//! options), and for `run` a task with ctr's stdio on FIFOs, waited for.

use std::collections::{BTreeMap, HashMap};

use clap::Args;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{Container, CreateContainerRequest, GetImageRequest, GetNamespaceRequest};
use containerd_client::types::Mount;

use super::image_ops::{self, Lease};
use super::tasks::{self, TaskOpts};
use super::{label_args, GlobalArgs};
use crate::client::Client;
use crate::errdefs;
use crate::spec::{GoSpec, ImageConfig};
use shim_protocol::runc;

/// containerd's `defaults.DefaultRuntime`.
pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";
/// containerd's `defaults.DefaultSnapshotter`.
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// The namespace label naming its default snapshotter.
const NS_SNAPSHOTTER_LABEL: &str = "containerd.io/defaults/snapshotter";
/// The container label holding the image's stop signal.
pub const STOP_SIGNAL_LABEL: &str = "io.containerd.image.config.stop-signal";
/// The type URL of a spec in a container record.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// `commands.SnapshotterFlags`, `SnapshotterLabels` and `ContainerFlags`.
#[derive(Debug, Clone, Args)]
pub struct ContainerFlags {
    /// Snapshotter name. Empty value stands for the default value.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "")]
    pub snapshotter: String,
    /// Labels added to the new snapshot for this container.
    #[arg(long = "snapshotter-label")]
    pub snapshotter_label: Vec<String>,
    /// Path to the runtime-specific spec config file
    #[arg(short = 'c', long)]
    pub config: Option<String>,
    /// Specify the working directory of the process
    #[arg(long, default_value = "")]
    pub cwd: String,
    /// Specify additional container environment variables (e.g. FOO=bar)
    #[arg(long)]
    pub env: Vec<String>,
    /// Specify additional container environment variables in a file(e.g. FOO=bar, one per line)
    #[arg(long = "env-file", default_value = "")]
    pub env_file: String,
    /// Specify additional labels (e.g. foo=bar)
    #[arg(long)]
    pub label: Vec<String>,
    /// Specify additional OCI annotations (e.g. foo=bar)
    #[arg(long)]
    pub annotation: Vec<String>,
    /// Specify additional container mount (e.g. type=bind,src=/tmp,dst=/host,options=rbind:ro)
    #[arg(long)]
    pub mount: Vec<String>,
    /// Enable host networking for the container
    #[arg(long = "net-host")]
    pub net_host: bool,
    /// Run privileged container
    #[arg(long)]
    pub privileged: bool,
    /// Set the containers filesystem as readonly
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Runtime name
    #[arg(long, default_value = DEFAULT_RUNTIME)]
    pub runtime: String,
    /// Optional runtime config path
    #[arg(long = "runtime-config-path", default_value = "")]
    pub runtime_config_path: String,
    /// Allocate a TTY for the container
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Specify existing Linux namespaces to join at container runtime (format '<nstype>:<path>')
    #[arg(long = "with-ns")]
    pub with_ns: Vec<String>,
    /// File path to write the task's pid
    #[arg(long = "pid-file")]
    pub pid_file: Option<String>,
    /// Turn off OCI spec's NoNewPrivileges feature flag
    #[arg(long = "allow-new-privs")]
    pub allow_new_privs: bool,
    /// Memory limit (in bytes) for the container
    #[arg(long = "memory-limit", default_value_t = 0)]
    pub memory_limit: u64,
    /// Add Linux capabilities (Set capabilities with 'CAP_' prefix)
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (Set capabilities with 'CAP_' prefix)
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Use custom rootfs that is not managed by containerd snapshotter
    #[arg(long)]
    pub rootfs: bool,
    /// Disable use of pivot-root (linux only)
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Limit CPU CFS quota
    #[arg(long = "cpu-quota", default_value_t = -1, allow_hyphen_values = true)]
    pub cpu_quota: i64,
    /// Limit CPU CFS period
    #[arg(long = "cpu-period", default_value_t = 0)]
    pub cpu_period: u64,
    /// Set the propagation of the container rootfs
    #[arg(long = "rootfs-propagation", default_value = "")]
    pub rootfs_propagation: String,
}

/// `run`'s `platformRunFlags` (Linux).
#[derive(Debug, Clone, Args)]
pub struct PlatformFlags {
    /// Specify runc-compatible binary
    #[arg(long = "runc-binary", default_value = "")]
    pub runc_binary: String,
    /// Specify runc-compatible root
    #[arg(long = "runc-root", default_value = "")]
    pub runc_root: String,
    /// Start runc with systemd cgroup manager
    #[arg(long = "runc-systemd-cgroup")]
    pub runc_systemd_cgroup: bool,
    /// Set the CFS cpu quota
    #[arg(long, default_value_t = 0.0)]
    pub cpus: f64,
    /// Set the cpu shares
    #[arg(long = "cpu-shares", default_value_t = 1024)]
    pub cpu_shares: i64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the container after running, cannot be used with --detach
    #[arg(long)]
    pub rm: bool,
    /// Send all IO to /dev/null
    #[arg(long = "null-io")]
    pub null_io: bool,
    /// Log uri
    #[arg(long = "log-uri", default_value = "")]
    pub log_uri: String,
    /// Detach from the task after it has started execution, cannot be used with --rm
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Directory used for storing IO FIFOs
    #[arg(long = "fifo-dir", default_value = "")]
    pub fifo_dir: String,
    /// Cgroup path (To disable use of cgroup, set to "" explicitly)
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Run image for specific platform
    #[arg(long, default_value = "")]
    pub platform: String,
    #[command(flatten)]
    pub platform_flags: PlatformFlags,
    #[command(flatten)]
    pub container: ContainerFlags,
    /// Username or user id, group optional (format: <name|uid>[:<group|gid>]); not in stock ctr 1.6
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Forward the signals ctr receives to the task (stock ctr 1.6 always does); --sig-proxy=false keeps them
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    pub sig_proxy: bool,
    /// Image|RootFS ID [COMMAND] [ARG...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub container: ContainerFlags,
    /// Image|RootFS CONTAINER [COMMAND] [ARG...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Everything `NewContainer` reads, from `run` or `containers create`.
pub struct NewContainer<'a> {
    pub flags: &'a ContainerFlags,
    /// `None` for `containers create`, which has no platform flags (so no
    /// cpu shares and no runc binary, as in stock ctr).
    pub platform_flags: Option<&'a PlatformFlags>,
    pub cgroup: Option<&'a str>,
    pub platform: &'a str,
    pub args: &'a [String],
    /// `run --user` (an extension: stock ctr 1.6's `run` has no such flag).
    pub user: Option<&'a str>,
}

/// The snapshotter to use: the flag, the namespace's default label, or
/// overlayfs (`setSnapshotterIfEmpty`).
async fn resolve_snapshotter(client: &Client, namespace: &str, flag: &str) -> String {
    if !flag.is_empty() {
        return flag.to_string();
    }
    let req = GetNamespaceRequest { name: namespace.to_string() };
    match client.call(client.namespaces().get(client.request(req))).await {
        Ok(resp) => resp
            .namespace
            .and_then(|n| n.labels.get(NS_SNAPSHOTTER_LABEL).cloned())
            .unwrap_or_else(|| DEFAULT_SNAPSHOTTER.to_string()),
        Err(_) => DEFAULT_SNAPSHOTTER.to_string(),
    }
}

/// The snapshot's mounts, mounted read-only on a temporary directory for
/// as long as this lives (containerd's `mount.WithTempMount` with
/// `tryReadonlyMounts`).
pub struct TempMount {
    pub dir: std::path::PathBuf,
    mounted: bool,
}

impl TempMount {
    pub fn new(mut mounts: Vec<Mount>) -> anyhow::Result<TempMount> {
        if mounts.len() == 1 && mounts[0].r#type == "overlay" {
            mounts[0].options.push("ro".to_string());
        }
        let dir = std::env::temp_dir().join(format!("containerd-mount{}", image_ops::unique_part()));
        std::fs::create_dir_all(&dir)?;
        let mut guard = TempMount { dir, mounted: false };
        crate::mount::all(&mounts, &guard.dir)?;
        guard.mounted = true;
        Ok(guard)
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = crate::mount::unmount_all(&self.dir);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn annotation_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => anyhow::bail!("invalid key=value format annotation: {a}"),
        })
        .collect()
}

/// `getRuntimeOptions`.
fn runtime_options(
    flags: &ContainerFlags,
    pf: Option<&PlatformFlags>,
    cgroup: Option<&str>,
) -> anyhow::Result<Option<prost_types::Any>> {
    let runc_binary = pf.map_or("", |p| p.runc_binary.as_str());
    let systemd = pf.is_some_and(|p| p.runc_systemd_cgroup);
    if (!runc_binary.is_empty() || systemd) && flags.runtime != DEFAULT_RUNTIME {
        anyhow::bail!(
            "specifying runc-binary and runc-systemd-cgroup is only supported for \"io.containerd.runc.v2\" runtime"
        );
    }
    if flags.runtime == DEFAULT_RUNTIME {
        let mut o = runc::Options { binary_name: runc_binary.to_string(), ..Default::default() };
        if systemd {
            if cgroup.unwrap_or("").is_empty() {
                anyhow::bail!(
                    "option --runc-systemd-cgroup requires --cgroup to be set, e.g. \"machine.slice:foo:deadbeef\""
                );
            }
            o.systemd_cgroup = true;
        }
        if let Some(p) = pf {
            o.root = p.runc_root.clone();
        }
        return Ok(Some(prost_types::Any {
            type_url: runc::OPTIONS_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&o),
        }));
    }
    Ok(None)
}

/// The spec options that do not depend on an image, in `NewContainer`'s
/// order after the image config.
fn apply_flags(spec: &mut GoSpec, nc: &NewContainer<'_>) -> anyhow::Result<()> {
    let f = nc.flags;
    if f.read_only {
        spec.with_rootfs_readonly();
    }
    let args = nc.args.get(2..).unwrap_or_default();
    if !args.is_empty() {
        spec.with_process_args(args);
    }
    if !f.cwd.is_empty() {
        spec.with_process_cwd(&f.cwd);
    }
    if f.tty {
        spec.with_tty();
    }
    if f.privileged {
        spec.with_privileged()?;
    }
    if f.net_host {
        let host = rustix::system::uname();
        let hostname = host.nodename().to_string_lossy().into_owned();
        spec.with_host_network(&hostname);
    }
    if !f.annotation.is_empty() {
        spec.with_annotations(&annotation_args(&f.annotation)?);
    }
    for caps in [&f.cap_add, &f.cap_drop] {
        if caps.iter().any(|c| !c.starts_with("CAP_")) {
            anyhow::bail!("capabilities must be specified with 'CAP_' prefix");
        }
    }
    if !f.cap_add.is_empty() {
        spec.with_added_capabilities(&f.cap_add);
    }
    if !f.cap_drop.is_empty() {
        spec.with_dropped_capabilities(&f.cap_drop);
    }
    let cpus = nc.platform_flags.map_or(0.0, |p| p.cpus);
    if cpus > 0.0 {
        spec.with_cpu_cfs((cpus * 100000.0) as i64, 100000);
    }
    let shares = nc.platform_flags.map_or(0, |p| p.cpu_shares);
    if shares > 0 {
        spec.with_cpu_shares(shares as u64);
    }
    if f.cpu_quota != -1 || f.cpu_period != 0 {
        if cpus > 0.0 {
            anyhow::bail!("cpus and quota/period should be used separately");
        }
        spec.with_cpu_cfs(f.cpu_quota, f.cpu_period);
    }
    for ns in &f.with_ns {
        let parts: Vec<&str> = ns.split(':').collect();
        if parts.len() != 2 {
            anyhow::bail!("joining a Linux namespace using --with-ns requires the format 'nstype:path'");
        }
        if !["pid", "network", "uts", "mount", "user", "ipc", "cgroup"].contains(&parts[0]) {
            anyhow::bail!("the Linux namespace type specified in --with-ns is not valid: {}", parts[0]);
        }
        spec.with_linux_namespace(parts[0], parts[1])?;
    }
    if f.allow_new_privs {
        spec.with_new_privileges();
    }
    if let Some(cg) = nc.cgroup {
        spec.with_cgroup(cg);
    }
    if f.memory_limit != 0 {
        spec.with_memory_limit(f.memory_limit);
    }
    if !f.rootfs_propagation.is_empty() {
        spec.with_rootfs_propagation(&f.rootfs_propagation);
    }
    Ok(())
}

/// `run.NewContainer` + `client.NewContainer`: the container record, its
/// snapshot prepared from the image's chain ID.
pub async fn new_container(client: &Client, namespace: &str, nc: &NewContainer<'_>) -> anyhow::Result<Container> {
    let f = nc.flags;
    let (id, reference) = if f.config.is_some() {
        (nc.args.first().cloned().unwrap_or_default(), String::new())
    } else {
        (nc.args.get(1).cloned().unwrap_or_default(), nc.args.first().cloned().unwrap_or_default())
    };
    // `client.NewContainer` runs under a temporary lease.
    let lease = Lease::create(client, None, HashMap::new()).await.map_err(|s| errdefs::from_grpc(&s))?;
    let leased = client.with_lease(&lease.id)?;
    let res = build_container(&leased, namespace, nc, &id, &reference).await;
    let done = lease.done(client).await;
    let c = res?;
    done?;
    Ok(c)
}

async fn build_container(
    client: &Client,
    namespace: &str,
    nc: &NewContainer<'_>,
    id: &str,
    reference: &str,
) -> anyhow::Result<Container> {
    let f = nc.flags;
    let cmd_labels = label_args(&f.label);
    let mut c = Container { id: id.to_string(), ..Default::default() };
    let mut spec;
    if let Some(path) = &f.config {
        c.labels = cmd_labels.clone().into_iter().collect();
        let raw = std::fs::read(path).map_err(|e| anyhow::anyhow!("open {path}: {}", errdefs::os_text(&e)))?;
        spec = GoSpec::from_bytes(&raw)?;
    } else {
        spec = crate::spec::default_spec(namespace, id);
        spec.with_default_unix_devices();
        if !f.env_file.is_empty() {
            spec.with_env_file(&f.env_file)?;
        }
        spec.with_env(&f.env);
        let mut mounts = Vec::new();
        for m in &f.mount {
            mounts.push(GoSpec::parse_mount_flag(m).map_err(anyhow::Error::msg)?);
        }
        spec.with_mounts(mounts);
        if f.rootfs {
            let abs = std::path::absolute(reference)?;
            spec.with_rootfs_path(&abs.display().to_string());
            c.labels = cmd_labels.clone().into_iter().collect();
            if let Some(user) = nc.user {
                spec.with_user(user, &abs)?;
                spec.with_additional_gids(user, &abs)?;
            }
        } else {
            let image = client
                .call(client.images().get(client.request(GetImageRequest { name: reference.to_string() })))
                .await
                .map_err(|s| errdefs::from_grpc(&s))?
                .image
                .unwrap_or_default();
            let target = image.target.clone().unwrap_or_default();
            let platform = if nc.platform.is_empty() {
                image_ops::default_platform()
            } else {
                image_ops::parse_platform(nc.platform)?
            };
            let snapshotter = resolve_snapshotter(client, namespace, &f.snapshotter).await;
            if !image_ops::is_unpacked(client, &target, &platform, &snapshotter).await? {
                image_ops::unpack(client, &image.name, &target, &platform, &snapshotter).await?;
            }
            let manifest = image_ops::manifest(client, &target, &platform).await?;
            let blob = super::images::read_blob(client, &manifest.config.digest).await?;
            let config_json: serde_json::Value = serde_json::from_slice(&blob)?;
            let diff_ids = image_ops::rootfs(client, &manifest.config).await?;
            // WithImageConfigLabels, then the image's and the command line's.
            let mut labels: BTreeMap<String, String> = config_json
                .get("config")
                .and_then(|c| c.get("Labels"))
                .and_then(|l| l.as_object())
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            labels.extend(image.labels.clone());
            labels.extend(cmd_labels.clone());
            // WithNewSnapshot: the rw snapshot on the image's top layer.
            let req = PrepareSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: id.to_string(),
                parent: image_ops::chain_id(&diff_ids),
                labels: label_args(&f.snapshotter_label).into_iter().collect(),
            };
            client.call(client.snapshots().prepare(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
            c.snapshotter = snapshotter.clone();
            c.snapshot_key = id.to_string();
            c.image = image.name.clone();
            let stop = config_json
                .get("config")
                .and_then(|c| c.get("StopSignal"))
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("SIGTERM");
            labels.insert(STOP_SIGNAL_LABEL.to_string(), stop.to_string());
            c.labels = labels.into_iter().collect();
            // WithImageConfig reads /etc/passwd and /etc/group of the rootfs.
            let req = MountsRequest { snapshotter, key: id.to_string() };
            let mounts = client
                .call(client.snapshots().mounts(client.request(req)))
                .await
                .map_err(|s| errdefs::from_grpc(&s))?
                .mounts;
            let tmp = TempMount::new(mounts)?;
            spec.with_image_config(&ImageConfig::from_blob(&config_json), &tmp.dir)?;
            if let Some(user) = nc.user {
                spec.with_user(user, &tmp.dir)?;
                spec.with_additional_gids(user, &tmp.dir)?;
            }
        }
        apply_flags(&mut spec, nc)?;
    }
    let options = runtime_options(f, nc.platform_flags, nc.cgroup)?;
    c.runtime = Some(Runtime { name: f.runtime.clone(), options });
    spec.with_annotations(&cmd_labels);
    c.spec = Some(prost_types::Any { type_url: SPEC_TYPE_URL.to_string(), value: spec.to_bytes()? });
    let req = CreateContainerRequest { container: Some(c) };
    let resp =
        client.call(client.containers().create(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    Ok(resp.container.unwrap_or_default())
}

fn check_args(args: &[String], config: bool, invalid_suffix: bool) -> anyhow::Result<()> {
    let sfx = if invalid_suffix { ": invalid argument" } else { "" };
    let id = if config {
        if args.len() > 1 {
            anyhow::bail!("with spec config file, only container id should be provided{sfx}");
        }
        args.first()
    } else {
        if args.first().is_none_or(String::is_empty) {
            anyhow::bail!("image ref must be provided{sfx}");
        }
        args.get(1)
    };
    if id.is_none_or(String::is_empty) {
        anyhow::bail!("container id must be provided{sfx}");
    }
    Ok(())
}

/// `ctr containers create`.
pub async fn create(global: &GlobalArgs, args: CreateArgs) -> anyhow::Result<()> {
    check_args(&args.args, args.container.config.is_some(), true)?;
    let client = global.client().await?;
    let nc = NewContainer {
        flags: &args.container,
        platform_flags: None,
        cgroup: None,
        platform: "",
        args: &args.args,
        user: None,
    };
    new_container(&client, &global.namespace, &nc).await?;
    Ok(())
}

/// `ctr run`.
pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<()> {
    check_args(&args.args, args.container.config.is_some(), false)?;
    if args.rm && args.detach {
        anyhow::bail!("flags --detach and --rm cannot be specified together");
    }
    let client = global.client().await?;
    let nc = NewContainer {
        flags: &args.container,
        platform_flags: Some(&args.platform_flags),
        cgroup: args.cgroup.as_deref(),
        platform: &args.platform,
        args: &args.args,
        user: args.user.as_deref(),
    };
    let container = new_container(&client, &global.namespace, &nc).await?;
    let res = run_task(&client, &container, &args).await;
    if args.rm && !args.detach {
        // `container.Delete(ctx, WithSnapshotCleanup)`; its error is dropped.
        let _ = super::containers::delete_one(&client, &container.id, true).await;
    }
    res
}

async fn run_task(client: &Client, container: &Container, args: &RunArgs) -> anyhow::Result<()> {
    let opts = TaskOpts {
        tty: args.container.tty,
        null_io: args.null_io,
        log_uri: args.log_uri.clone(),
        fifo_dir: args.fifo_dir.clone(),
        no_pivot: args.container.no_pivot,
        detach: args.detach,
        pid_file: args.container.pid_file.clone(),
        checkpoint: None,
        checkpoint_options: None,
        sig_proxy: args.sig_proxy,
    };
    tasks::run_new_task(client, container, &opts).await
}

impl GoSpec {
    /// `oci.WithLinuxNamespace`: replace the namespace of that type, or add it.
    pub fn with_linux_namespace(&mut self, typ: &str, path: &str) -> anyhow::Result<()> {
        let ns: oci_spec::runtime::LinuxNamespace =
            serde_json::from_value(serde_json::json!({"type": typ, "path": path}))?;
        let linux = self
            .spec
            .linux_mut()
            .get_or_insert_with(|| serde_json::from_value(serde_json::json!({})).expect("empty linux"));
        let mut all = linux.namespaces().clone().unwrap_or_default();
        match all.iter().position(|n| n.typ() == ns.typ()) {
            Some(i) => all[i] = ns,
            None => all.push(ns),
        }
        linux.set_namespaces(Some(all));
        Ok(())
    }

    /// What `--rootfs-propagation` sets.
    pub fn with_rootfs_propagation(&mut self, p: &str) {
        let linux = self
            .spec
            .linux_mut()
            .get_or_insert_with(|| serde_json::from_value(serde_json::json!({})).expect("empty linux"));
        linux.set_rootfs_propagation(Some(p.to_string()));
    }
}
