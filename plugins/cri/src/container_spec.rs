//! The OCI runtime spec of a CRI container, as containerd 1.6's
//! `containerSpec` (`pkg/cri/server/container_create_linux.go`,
//! `pkg/cri/opts/spec_linux.go`): the image's process merged with the
//! ContainerConfig, the sandbox's namespaces and cgroup parent, the
//! sandbox's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, the
//! CRI's mounts and devices, and the security context. A mount's source
//! is its host path with symlinks resolved; `rshared` (`rslave`) needs
//! that path on a shared (shared or slave) mount, as containerd's.
//!
//! Security: users and groups are resolved from the rootfs's `/etc/passwd`
//! and `/etc/group` ([`Rootfs`]); capabilities start from containerd's
//! defaults; masked and read-only paths are containerd's defaults unless
//! the config names its own, none when privileged. Seccomp:
//! `runtime/default` is [`default_seccomp`] (a deny-list of our own, see
//! there), `localhost/<path>` a profile file in the runtime spec's JSON.
//! AppArmor and SELinux are not applied: the kernels crated runs on here
//! have neither enabled, and containerd skips both in that case too.

use std::path::{Path, PathBuf};

use crated_plugin_api::Status;

use crate::calls;
use k8s_cri::v1::{
    ContainerConfig, LinuxContainerResources, MountPropagation, NamespaceMode, PodSandboxConfig, SecurityProfile,
};
use serde_json::{json, Value};
use shim_protocol::oci::{current_capabilities, DEFAULT_CAPS, DEFAULT_MOUNTS};
pub use shim_protocol::oci::{MASKED_PATHS, READONLY_PATHS};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The system calls [`default_seccomp`] refuses with EPERM: those that
/// reach outside the container (modules, reboot, clocks, swap, keyrings,
/// kexec, accounting), change namespaces or mounts, or inspect other
/// processes (ptrace, process_vm_*), the same families Docker's and
/// containerd's default profiles keep from a container without the
/// matching capability. Everything else is allowed.
pub const SECCOMP_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "fsopen",
    "fsmount",
    "fsconfig",
    "open_tree",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// The `runtime/default` seccomp profile: allow by default, EPERM for
/// [`SECCOMP_DENIED`]. A deny-list rather than containerd's allow-list of
/// several hundred calls: shorter to audit, and what it blocks is named.
pub fn default_seccomp() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{"names": SECCOMP_DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })
}

/// containerd's default mounts of a spec; sysfs is writable when privileged.
pub fn default_mounts(privileged: bool) -> Vec<Value> {
    DEFAULT_MOUNTS
        .iter()
        .map(|(dest, typ, src, opts)| {
            let opts: Vec<&str> =
                opts.iter().copied().filter(|o| !(privileged && *dest == "/sys" && *o == "ro")).collect();
            mount(dest, typ, src, &opts)
        })
        .collect()
}

pub fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Value {
    json!({"destination": dest, "type": typ, "source": src, "options": opts})
}

/// The files of a container's root filesystem before it runs, read through
/// its snapshot's mounts without mounting them: an overlay's upper, then
/// lower directories, or a bind mount's source.
pub struct Rootfs {
    layers: Vec<PathBuf>,
}

impl Rootfs {
    pub fn from_mounts(mounts: &[containerd_client::types::Mount]) -> Rootfs {
        let mut layers = Vec::new();
        for m in mounts {
            if m.r#type == "bind" || m.r#type.is_empty() {
                layers.push(PathBuf::from(&m.source));
                continue;
            }
            let opt = |k: &str| m.options.iter().find_map(|o| o.strip_prefix(k).map(str::to_string));
            if let Some(upper) = opt("upperdir=") {
                layers.push(upper.into());
            }
            if let Some(lower) = opt("lowerdir=") {
                layers.extend(lower.split(':').map(PathBuf::from));
            }
        }
        Rootfs { layers }
    }

    /// A file's content from the topmost layer that has it (a whiteout, a
    /// character device, hides it).
    pub fn read(&self, path: &str) -> Option<String> {
        use std::os::unix::fs::FileTypeExt;
        let rel = path.trim_start_matches('/');
        for layer in &self.layers {
            let p = layer.join(rel);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_char_device() => return None,
                Ok(_) => return std::fs::read_to_string(&p).ok(),
                Err(_) => continue,
            }
        }
        None
    }
}

/// The process's user as runc takes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub username: String,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = (String, u32, u32)> + '_ {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = (String, u32, Vec<String>)> + '_ {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect());
        Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, members.unwrap_or_default()))
    })
}

/// containerd's user resolution: `run_as_user` (gid from passwd when the
/// uid is listed), else `run_as_username` (must be in passwd), else the
/// image's `User` (`uid`, `name`, with `:gid`/`:group`); `run_as_group`
/// overrides the gid; the groups of `/etc/group` naming the user, then
/// the supplemental groups, are the additional gids.
pub fn resolve_user(
    rootfs: &Rootfs,
    image_user: &str,
    run_as_user: Option<i64>,
    run_as_username: &str,
    run_as_group: Option<i64>,
    supplemental: &[i64],
) -> Result<User, Status> {
    // The CRI's valid combinations: a group only with a user (the
    // image's user does not count), as containerd checks it.
    if let (Some(gid), None, "") = (run_as_group, run_as_user, run_as_username) {
        return Err(Status::invalid_argument(format!("user group \"{gid}\" is specified without user")));
    }
    let passwd = rootfs.read("/etc/passwd").unwrap_or_default();
    let groups = rootfs.read("/etc/group").unwrap_or_default();
    let by_uid = |uid: u32| passwd_entries(&passwd).find(|(_, u, _)| *u == uid);
    let by_name = |name: &str| passwd_entries(&passwd).find(|(n, _, _)| n == name);
    let mut user = User::default();
    let mut group_spec = String::new();
    if let Some(uid) = run_as_user {
        user.uid = u32::try_from(uid).map_err(|_| Status::invalid_argument(format!("invalid run_as_user {uid}")))?;
        if let Some((name, _, gid)) = by_uid(user.uid) {
            user.gid = gid;
            user.username = name;
        }
    } else if !run_as_username.is_empty() {
        let (name, uid, gid) = by_name(run_as_username).ok_or_else(|| {
            Status::invalid_argument(format!("no users found for {run_as_username:?} in the image's /etc/passwd"))
        })?;
        (user.uid, user.gid, user.username) = (uid, gid, name);
    } else if !image_user.is_empty() {
        let (u, g) = image_user.split_once(':').unwrap_or((image_user, ""));
        group_spec = g.to_string();
        if let Ok(uid) = u.parse::<u32>() {
            user.uid = uid;
            if let Some((name, _, gid)) = by_uid(uid) {
                user.gid = gid;
                user.username = name;
            }
        } else {
            let (name, uid, gid) = by_name(u).ok_or_else(|| {
                Status::invalid_argument(format!("no users found for image user {u:?} in /etc/passwd"))
            })?;
            (user.uid, user.gid, user.username) = (uid, gid, name);
        }
    } else if let Some((name, _, gid)) = by_uid(0) {
        user.gid = gid;
        user.username = name;
    }
    if !group_spec.is_empty() {
        user.gid = match group_spec.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(&groups)
                .find(|(n, _, _)| *n == group_spec)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| Status::invalid_argument(format!("no groups found for {group_spec:?}")))?,
        };
    }
    if let Some(gid) = run_as_group {
        user.gid = u32::try_from(gid).map_err(|_| Status::invalid_argument(format!("invalid run_as_group {gid}")))?;
    }
    if !user.username.is_empty() {
        for (_, gid, members) in group_entries(&groups) {
            if members.contains(&user.username) && gid != user.gid && !user.additional_gids.contains(&gid) {
                user.additional_gids.push(gid);
            }
        }
    }
    for g in supplemental {
        let g = u32::try_from(*g).map_err(|_| Status::invalid_argument(format!("invalid supplemental group {g}")))?;
        if !user.additional_gids.contains(&g) {
            user.additional_gids.push(g);
        }
    }
    Ok(user)
}

/// `add` and `drop` applied to the defaults (names with or without `CAP_`,
/// any case; `ALL` in either).
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        if c == "ALL" || c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let add: Vec<String> = add.iter().map(norm).collect();
    let drop: Vec<String> = drop.iter().map(norm).collect();
    let mut caps: Vec<String> = if add.iter().any(|c| c == "ALL") {
        current_capabilities()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drop.contains(c));
    }
    for c in add.into_iter().filter(|c| c != "ALL") {
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    caps
}

/// A seccomp profile from the CRI's security profile, or else from the
/// deprecated `seccomp_profile_path` name: `None` unconfined. As
/// containerd 1.6 (`generateSeccompSecurityProfile`, then
/// `generateSeccompSpecOpts`): a name that is not `runtime/default`,
/// `docker/default`, `unconfined` or `localhost/<path>` is refused even for
/// a privileged container; past that, a privileged container has no
/// profile, whatever it names (its file is not read).
pub fn seccomp(profile: Option<&SecurityProfile>, legacy: &str, privileged: bool) -> Result<Option<Value>, Status> {
    use k8s_cri::v1::security_profile::ProfileType;
    let invalid = |m: String| Status::invalid_argument(format!("failed to generate seccomp spec opts: {m}"));
    let named;
    let profile = match profile {
        Some(p) => Some(p),
        None => {
            named = match legacy {
                "" => None,
                "runtime/default" | "docker/default" => {
                    Some(SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, ..Default::default() })
                }
                "unconfined" => {
                    Some(SecurityProfile { profile_type: ProfileType::Unconfined as i32, ..Default::default() })
                }
                other => match other.strip_prefix("localhost/") {
                    Some(path) => Some(SecurityProfile {
                        profile_type: ProfileType::Localhost as i32,
                        localhost_ref: path.to_string(),
                    }),
                    None => return Err(invalid(format!("invalid profile {other:?}"))),
                },
            };
            named.as_ref()
        }
    };
    let Some(p) = profile.filter(|_| !privileged) else { return Ok(None) };
    let kind = ProfileType::try_from(p.profile_type);
    if kind != Ok(ProfileType::Localhost) && !p.localhost_ref.is_empty() {
        return Err(invalid("seccomp config invalid LocalhostRef must only be set if ProfileType is Localhost".into()));
    }
    match kind {
        Ok(ProfileType::Unconfined) => Ok(None),
        Ok(ProfileType::RuntimeDefault) => Ok(Some(default_seccomp())),
        Ok(ProfileType::Localhost) => {
            // containerd trims the prefix here too, in case the new field
            // still carries it.
            let path = p.localhost_ref.strip_prefix("localhost/").unwrap_or(&p.localhost_ref);
            let text = std::fs::read_to_string(path)
                .map_err(|e| Status::invalid_argument(format!("failed to load seccomp profile {path:?}: {e}")))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Status::invalid_argument(format!("failed to parse seccomp profile {path:?}: {e}")))?;
            Ok(Some(v))
        }
        _ => Err(invalid("seccomp unknown ProfileType".into())),
    }
}

/// The spec's `linux.resources` from the CRI's (absent fields left out).
pub fn linux_resources(r: &LinuxContainerResources) -> Value {
    let mut cpu = serde_json::Map::new();
    if r.cpu_period != 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let mut memory = serde_json::Map::new();
    if r.memory_limit_in_bytes != 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes != 0 {
        memory.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    let mut out = json!({});
    if !cpu.is_empty() {
        out["cpu"] = Value::Object(cpu);
    }
    if !memory.is_empty() {
        out["memory"] = Value::Object(memory);
    }
    if !r.hugepage_limits.is_empty() {
        out["hugepageLimits"] = json!(r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect::<Vec<_>>());
    }
    if !r.unified.is_empty() {
        out["unified"] = json!(r.unified);
    }
    out
}

/// How the CRI config places a sandbox or container in cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cgroups {
    /// `disable_cgroup`: no cgroups path and none of the CRI's resources
    /// (containerd's `WithDisabledCgroups`, and no `WithResources` nor
    /// the sandbox's default CPU shares). runc still makes a cgroup, named
    /// after the id, below its own (the shim's), and the shim's stats read
    /// that one, found from the task's pid.
    pub disabled: bool,
    /// The runtime's `SystemdCgroup` option: runc's systemd driver.
    pub systemd: bool,
}

impl Cgroups {
    pub fn new(config: &crate::config::Config, runtime: &crate::config::Runtime) -> Cgroups {
        Cgroups { disabled: config.disable_cgroup, systemd: runtime.systemd_cgroup() }
    }

    /// The spec's `cgroupsPath` for the sandbox or container `id` of a pod
    /// whose cgroup parent is `parent`, `None` for none. Under a parent,
    /// containerd's `getCgroupsPath`: a parent whose last element is a
    /// systemd slice (`….slice`, what the kubelet's systemd driver passes)
    /// gives runc's systemd form `<that slice>:cri-containerd:<id>`, any
    /// other `<parent>/<id>` (cleaned, as Go's `filepath.Join`).
    ///
    /// Without a parent containerd sets none, and runc picks: a cgroup
    /// `<id>` below the shim's own, or `system.slice:runc:<id>` with its
    /// systemd driver. crated sets none for the systemd driver too (it
    /// refuses any other form), but keeps `/<id>` for cgroupfs: every
    /// container then has its own cgroup at a known place, which its
    /// OOM-kill count is read from when it exits.
    pub fn path(&self, parent: &str, id: &str) -> Option<String> {
        if self.disabled {
            return None;
        }
        let base = parent.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        if base.ends_with(".slice") {
            return Some(format!("{base}:cri-containerd:{id}"));
        }
        if parent.is_empty() {
            return (!self.systemd).then(|| format!("/{id}"));
        }
        Some(clean_path(&format!("{parent}/{id}")))
    }
}

/// A path cleaned lexically as Go's `filepath.Clean`: no empty or `.`
/// elements, `..` taking the element before it (none above the root).
pub(crate) fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            ".." if rooted => {}
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// What the spec is built from besides the container's config.
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub sandbox_pid: u32,
    /// The pid whose pid namespace a `TARGET` container joins (the target
    /// container's task, checked by the caller); the sandbox's otherwise.
    pub target_pid: u32,
    pub sandbox: &'a PodSandboxConfig,
    /// The sandbox's directory: `hosts`, `hostname`, `resolv.conf`.
    pub sandbox_dir: &'a Path,
    /// The pod's `/dev/shm` (see [`crate::sandbox::Sandboxes::shm`]).
    pub sandbox_shm: &'a Path,
    pub config: &'a ContainerConfig,
    /// The image's config (`config` of the OCI image config).
    pub image_config: &'a Value,
    pub image_name: &'a str,
    pub user: &'a User,
    /// The runtime's patterns of pod and container annotations passed
    /// through into the spec (`pod_annotations`, `container_annotations`).
    pub pod_annotations: &'a [String],
    pub container_annotations: &'a [String],
    pub cgroups: Cgroups,
    /// `device_ownership_from_security_context`.
    pub device_ownership: bool,
    /// The runtime's `privileged_without_host_devices`.
    pub privileged_without_host_devices: bool,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn propagation(p: i32) -> &'static str {
    match MountPropagation::try_from(p) {
        Ok(MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    }
}

/// Refuses a `rshared` (`rslave`) mount whose source is on a mount that
/// is not shared (nor a slave): the propagation asked for could not
/// happen (containerd's `ensureShared`, `ensureSharedOrSlave`). The mount
/// is the one of `/proc/self/mountinfo` with the longest mount point
/// holding `path`, the last listed (the top one) among equals.
fn ensure_propagates(path: &Path, tags: &[&str], kind: &str) -> Result<(), Status> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Status::internal(format!("failed to read mountinfo: {e}")))?;
    let mut best: Option<(&str, Vec<&str>)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4).copied() else { continue };
        if !path.starts_with(point) || best.as_ref().is_some_and(|(b, _)| b.len() > point.len()) {
            continue;
        }
        let optional = fields.iter().skip(6).take_while(|f| **f != "-").copied().collect();
        best = Some((point, optional));
    }
    let (point, optional) =
        best.ok_or_else(|| Status::internal(format!("no mount holds {:?}", path.display().to_string())))?;
    if optional.iter().any(|o| tags.iter().any(|t| o.starts_with(t))) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "path {:?} is mounted on {point:?} but it is not a {kind} mount",
        path.display().to_string()
    )))
}

/// A device node for `linux.devices`: where it goes in the container, its
/// type, numbers, mode and owner (the host node's, containerd's
/// `DeviceFromPath`).
#[derive(Debug, Clone, PartialEq)]
struct DeviceNode {
    path: String,
    kind: &'static str,
    major: i64,
    minor: i64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The node at `path` (not followed if a symlink), `None` if it is not a
/// device node (a FIFO counts, as for containerd).
fn device_node(path: &Path, to: String) -> std::io::Result<Option<DeviceNode>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else {
        return Ok(None);
    };
    let rdev = m.rdev();
    let (major, minor) = (rustix::fs::major(rdev) as i64, rustix::fs::minor(rdev) as i64);
    Ok(Some(DeviceNode { path: to, kind, major, minor, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() }))
}

/// The devices at `host` as containerd's `getDevices` finds them: the node
/// itself (symlinks resolved), or every node below a directory, skipping
/// the directories a container gets of its own (`pts`, `shm`, `fd`,
/// `mqueue`, and LXC's and udev's), `console`, FIFOs and whatever is not
/// a device. In the container they go to `to` (and below it), else to
/// their host paths.
fn host_devices(host: &Path, to: Option<&str>) -> Result<Vec<DeviceNode>, Status> {
    let failed = |e: std::io::Error| Status::invalid_argument(format!("failed to stat device {host:?}: {e}"));
    let resolved = std::fs::canonicalize(host).map_err(failed)?;
    if !std::fs::metadata(&resolved).map_err(failed)?.is_dir() {
        let to = to.map(str::to_string).unwrap_or_else(|| resolved.display().to_string());
        return device_node(&resolved, to)
            .map_err(failed)?
            .map(|d| vec![d])
            .ok_or_else(|| Status::invalid_argument(format!("{host:?} is not a device node")));
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&resolved).map_err(failed)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = resolved.join(&name);
        let inside = to.map(|t| format!("{}/{name}", t.trim_end_matches('/')));
        if entry.file_type().map_err(failed)?.is_dir() {
            if !["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"].contains(&name.as_str()) {
                out.extend(host_devices(&path, inside.as_deref())?);
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        let to = inside.unwrap_or_else(|| path.display().to_string());
        match device_node(&path, to) {
            Ok(Some(d)) if d.kind != "p" => out.push(d),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(out)
}

/// The container's spec (JSON, checked against oci-spec's types).
pub fn container_spec(input: &SpecInput) -> Result<Vec<u8>, Status> {
    let config = input.config;
    let img = input.image_config.get("config").cloned().unwrap_or(Value::Null);
    let (mut command, mut args) = (config.command.clone(), config.args.clone());
    if command.is_empty() {
        if args.is_empty() {
            args = strings(img.get("Cmd"));
        }
        command = strings(img.get("Entrypoint"));
    }
    command.extend(args);
    if command.is_empty() {
        return Err(Status::invalid_argument("no command specified"));
    }
    let linux = config.linux.clone().unwrap_or_default();
    let sec = linux.security_context.clone().unwrap_or_default();
    let privileged = sec.privileged;
    let sandbox_linux = input.sandbox.linux.clone().unwrap_or_default();
    let sandbox_sec = sandbox_linux.security_context.clone().unwrap_or_default();
    if privileged && !sandbox_sec.privileged {
        return Err(Status::invalid_argument("no privileged container allowed in sandbox"));
    }
    let ns = sec.namespace_options.clone().unwrap_or_default();
    let sandbox_ns = sandbox_sec.namespace_options.clone().unwrap_or_default();
    let host_net = sandbox_ns.network == NamespaceMode::Node as i32;

    // Environment: PATH, HOSTNAME, the image's, the config's; later wins.
    let hostname = std::fs::read_to_string(input.sandbox_dir.join("hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| input.sandbox.hostname.clone());
    let mut env: Vec<String> = vec![DEFAULT_PATH.into(), format!("HOSTNAME={hostname}")];
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or_default().to_string();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    strings(img.get("Env")).into_iter().for_each(&mut set);
    config.envs.iter().for_each(|e| set(format!("{}={}", e.key, e.value)));
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        img.get("WorkingDir").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("/").to_string()
    };

    let pid_path = |p: u32, ns: &str| format!("/proc/{p}/ns/{ns}");
    let mut namespaces = vec![json!({"type": "mount"})];
    if !host_net {
        namespaces.push(json!({"type": "network", "path": pid_path(input.sandbox_pid, "net")}));
        namespaces.push(json!({"type": "uts", "path": pid_path(input.sandbox_pid, "uts")}));
    }
    if sandbox_ns.ipc != NamespaceMode::Node as i32 {
        namespaces.push(json!({"type": "ipc", "path": pid_path(input.sandbox_pid, "ipc")}));
    }
    match NamespaceMode::try_from(ns.pid) {
        Ok(NamespaceMode::Pod) => namespaces.push(json!({"type": "pid", "path": pid_path(input.sandbox_pid, "pid")})),
        Ok(NamespaceMode::Node) => {}
        Ok(NamespaceMode::Target) => namespaces.push(json!({"type": "pid", "path": pid_path(input.target_pid, "pid")})),
        _ => namespaces.push(json!({"type": "pid"})),
    }

    // CRI mounts replace defaults at the same destination.
    let readonly_root = sec.readonly_rootfs;
    let mut mounts = default_mounts(privileged);
    let mut extra = Vec::new();
    let cri_dests: Vec<&str> = config.mounts.iter().map(|m| m.container_path.as_str()).collect();
    let file_opts: &[&str] = if readonly_root { &["rbind", "rprivate", "ro"] } else { &["rbind", "rprivate", "rw"] };
    for (dest, file) in [("/etc/hosts", "hosts"), ("/etc/hostname", "hostname"), ("/etc/resolv.conf", "resolv.conf")] {
        let src = input.sandbox_dir.join(file);
        if !cri_dests.contains(&dest) && src.exists() {
            extra.push(mount(dest, "bind", &src.display().to_string(), file_opts));
        }
    }
    // The pod's /dev/shm, or the host's for a pod in the host's IPC
    // namespace (containerd's `containerMounts`).
    if !cri_dests.contains(&"/dev/shm") {
        if sandbox_ns.ipc == NamespaceMode::Node as i32 {
            extra.push(mount("/dev/shm", "bind", "/dev/shm", &["rbind", "rprivate", "rw"]));
        } else if input.sandbox_shm.exists() {
            let src = input.sandbox_shm.display().to_string();
            extra.push(mount("/dev/shm", "bind", &src, &["rbind", "rprivate", "rw"]));
        }
    }
    let mut rootfs_propagation = None;
    for m in &config.mounts {
        if m.container_path.is_empty() || m.host_path.is_empty() {
            return Err(Status::invalid_argument("a mount needs a container path and a host path"));
        }
        let src = Path::new(&m.host_path);
        if !src.exists() {
            std::fs::create_dir_all(src)
                .map_err(|e| Status::internal(format!("failed to mkdir {:?}: {e}", m.host_path)))?;
        }
        // The mount's source is where a symlink leads, as containerd's.
        let src = std::fs::canonicalize(src)
            .map_err(|e| Status::internal(format!("failed to resolve symlink {:?}: {e}", m.host_path)))?;
        let prop = propagation(m.propagation);
        match prop {
            "rshared" => {
                ensure_propagates(&src, &["shared:"], "shared")?;
                rootfs_propagation = Some("rshared");
            }
            "rslave" => {
                ensure_propagates(&src, &["shared:", "master:"], "shared or slave")?;
                if rootfs_propagation.is_none() {
                    rootfs_propagation = Some("rslave");
                }
            }
            _ => {}
        }
        let rw = if m.readonly { "ro" } else { "rw" };
        extra.push(mount(&m.container_path, "bind", &src.display().to_string(), &["rbind", prop, rw]));
    }
    let extra_dests: Vec<String> = extra.iter().filter_map(|m| m["destination"].as_str().map(str::to_string)).collect();
    mounts.retain(|m| !extra_dests.iter().any(|d| Some(d.as_str()) == m["destination"].as_str()));
    mounts.extend(extra);
    if !privileged {
        // containerd's cgroup mount, read-only.
        mounts.push(mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]));
    }

    // A device node is owned as on the host or, with
    // `device_ownership_from_security_context`, by the container's
    // run_as_user / run_as_group where they are set and not 0 (containerd's
    // `WithDevices`; not the user resolved from a name or the image). A
    // privileged container gets every host device as the host has it, all
    // devices allowed (containerd's `WithHostDevices`,
    // `WithAllDevicesAllowed`), unless the runtime says
    // `privileged_without_host_devices`.
    let owner = |id: Option<i64>, host: u32| match id.and_then(|v| u32::try_from(v).ok()) {
        Some(v) if input.device_ownership && v != 0 => v,
        _ => host,
    };
    let node = |d: &DeviceNode, uid: u32, gid: u32| json!({"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor, "fileMode": d.mode, "uid": uid, "gid": gid});
    let mut devices = Vec::new();
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    for d in &config.devices {
        for dev in host_devices(Path::new(&d.host_path), Some(&d.container_path))? {
            let uid = owner(sec.run_as_user.as_ref().map(|u| u.value), dev.uid);
            let gid = owner(sec.run_as_group.as_ref().map(|g| g.value), dev.gid);
            devices.push(node(&dev, uid, gid));
            let access = if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() };
            device_rules.push(
                json!({"allow": true, "type": dev.kind, "major": dev.major, "minor": dev.minor, "access": access}),
            );
        }
    }
    if privileged && !input.privileged_without_host_devices {
        devices.extend(host_devices(Path::new("/dev"), None)?.iter().map(|d| node(d, d.uid, d.gid)));
        device_rules = vec![json!({"allow": true, "access": "rwm"})];
    }

    let resources = linux.resources.clone().unwrap_or_default();
    // The device rules stay with `disable_cgroup`, as containerd's do.
    let mut res = if input.cgroups.disabled { json!({}) } else { linux_resources(&resources) };
    res["devices"] = json!(device_rules);

    let caps = if privileged {
        current_capabilities()
    } else {
        let c = sec.capabilities.clone().unwrap_or_default();
        capabilities(&c.add_capabilities, &c.drop_capabilities)
    };
    #[allow(deprecated)]
    let seccomp = seccomp(sec.seccomp.as_ref(), &sec.seccomp_profile_path, privileged)?;
    let (masked, readonly): (Vec<String>, Vec<String>) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            if sec.masked_paths.is_empty() {
                MASKED_PATHS.iter().map(|s| s.to_string()).collect()
            } else {
                sec.masked_paths.clone()
            },
            if sec.readonly_paths.is_empty() {
                READONLY_PATHS.iter().map(|s| s.to_string()).collect()
            } else {
                sec.readonly_paths.clone()
            },
        )
    };
    let meta = input.sandbox.metadata.clone().unwrap_or_default();
    // containerd passes through only what the runtime's patterns name.
    let mut annotations = calls::passthrough_annotations(&input.sandbox.annotations, input.pod_annotations);
    annotations.extend(calls::passthrough_annotations(&config.annotations, input.container_annotations));
    annotations.insert("io.kubernetes.cri.container-type".into(), "container".into());
    annotations.insert(
        "io.kubernetes.cri.container-name".into(),
        config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), input.sandbox_id.into());
    annotations.insert("io.kubernetes.cri.sandbox-name".into(), meta.name);
    annotations.insert("io.kubernetes.cri.sandbox-namespace".into(), meta.namespace);
    annotations.insert("io.kubernetes.cri.sandbox-uid".into(), meta.uid);
    annotations.insert("io.kubernetes.cri.image-name".into(), input.image_name.into());

    let mut linux_doc = json!({
        "namespaces": namespaces,
        "resources": res,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "devices": devices,
    });
    if let Some(s) = seccomp {
        linux_doc["seccomp"] = s;
    }
    if let Some(p) = rootfs_propagation {
        linux_doc["rootfsPropagation"] = json!(p);
    }
    if let Some(path) = input.cgroups.path(&sandbox_linux.cgroup_parent, input.id) {
        linux_doc["cgroupsPath"] = json!(path);
    }
    let mut process = json!({
        "terminal": config.tty,
        "user": {"uid": input.user.uid, "gid": input.user.gid, "additionalGids": input.user.additional_gids},
        "args": command,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": sec.no_new_privs,
    });
    if resources.oom_score_adj != 0 {
        process["oomScoreAdj"] = json!(resources.oom_score_adj);
    }
    let doc = json!({
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs", "readonly": readonly_root},
        "process": process,
        "mounts": mounts,
        "linux": linux_doc,
        "annotations": annotations,
    });
    let spec: oci_spec::runtime::Spec =
        serde_json::from_value(doc).map_err(|e| Status::internal(format!("invalid container spec: {e}")))?;
    serde_json::to_vec(&spec).map_err(|e| Status::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Rootfs) {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let path = dir.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        let r = Rootfs { layers: vec![dir.path().to_path_buf()] };
        (dir, r)
    }

    #[test]
    fn users_resolve_from_passwd_and_group() {
        let (_d, r) = rootfs_with(&[
            ("/etc/passwd", "root:x:0:0::/root:/bin/sh\nalice:x:1000:1001::/home/alice:/bin/sh\n"),
            ("/etc/group", "root:x:0:\nalice:x:1001:\nwheel:x:10:alice,bob\naudio:x:29:alice\n"),
        ]);
        let u = resolve_user(&r, "", None, "alice", None, &[5000]).unwrap();
        assert_eq!(u, User { uid: 1000, gid: 1001, additional_gids: vec![10, 29, 5000], username: "alice".into() });
        let u = resolve_user(&r, "", Some(1000), "", Some(7), &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = resolve_user(&r, "alice:wheel", None, "", None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        let u = resolve_user(&r, "", Some(4242), "", None, &[]).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids.len()), (4242, 0, 0));
        assert!(resolve_user(&r, "", None, "nobody", None, &[]).is_err());
        // A group needs a user of the CRI's own, even when the image has one.
        let e = resolve_user(&r, "alice", None, "", Some(7), &[]).unwrap_err();
        assert_eq!(e.message, "user group \"7\" is specified without user");
    }

    #[test]
    fn capabilities_add_and_drop_all() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(capabilities(&s(&["net_admin"]), &s(&["ALL"])), s(&["CAP_NET_ADMIN"]));
        let c = capabilities(&[], &s(&["CAP_CHOWN", "kill"]));
        assert!(!c.contains(&"CAP_CHOWN".to_string()) && !c.contains(&"CAP_KILL".to_string()));
        assert_eq!(capabilities(&s(&["ALL"]), &[]), current_capabilities());
    }

    #[test]
    fn seccomp_names_as_containerd() {
        use k8s_cri::v1::security_profile::ProfileType;
        let bad = seccomp(None, "/some/profile.json", true).unwrap_err();
        assert!(bad.message.contains("invalid profile \"/some/profile.json\""), "{bad:?}");
        assert_eq!(seccomp(None, "localhost/no/such/file", true).unwrap(), None, "privileged: nothing read");
        assert!(seccomp(None, "localhost/no/such/file", false).is_err());
        assert_eq!(seccomp(None, "unconfined", false).unwrap(), None);
        assert_eq!(seccomp(None, "docker/default", false).unwrap(), Some(default_seccomp()));
        let odd = SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, localhost_ref: "x".into() };
        assert!(seccomp(Some(&odd), "", false).unwrap_err().message.contains("LocalhostRef"));
    }

    #[test]
    fn the_default_seccomp_profile_is_valid_oci() {
        let s: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(default_seccomp()).unwrap();
        assert_eq!(s.syscalls().as_ref().unwrap()[0].names().len(), SECCOMP_DENIED.len());
    }

    #[test]
    fn cgroups_paths_follow_containerds_rules() {
        let cgroupfs = Cgroups::default();
        let systemd = Cgroups { systemd: true, ..Default::default() };
        let disabled = Cgroups { disabled: true, systemd: true };
        let path = |c: Cgroups, parent: &str| c.path(parent, "abc");
        for c in [cgroupfs, systemd] {
            assert_eq!(path(c, "/kubepods/burstable/pod1").as_deref(), Some("/kubepods/burstable/pod1/abc"));
            assert_eq!(path(c, "/kubepods//pod1/./x/../").as_deref(), Some("/kubepods/pod1/abc"));
            assert_eq!(path(c, "kubepods").as_deref(), Some("kubepods/abc"));
            assert_eq!(path(c, "/").as_deref(), Some("/abc"));
            // A slice parent: the last slice, runc's systemd form.
            let slices = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice";
            assert_eq!(path(c, slices).as_deref(), Some("kubepods-burstable-pod1.slice:cri-containerd:abc"));
            assert_eq!(path(c, "/system.slice/").as_deref(), Some("system.slice:cri-containerd:abc"));
            assert_eq!(path(c, "/slices/not.slicer").as_deref(), Some("/slices/not.slicer/abc"));
        }
        // No parent: crated's own cgroup for cgroupfs, runc's default
        // for its systemd driver.
        assert_eq!(path(cgroupfs, "").as_deref(), Some("/abc"));
        assert_eq!(path(systemd, ""), None);
        for parent in ["", "/kubepods/pod1", "/kubepods.slice"] {
            assert_eq!(path(disabled, parent), None, "{parent}");
        }
    }

    fn spec_of(config: &ContainerConfig, parent: &str, cgroups: Cgroups, device_ownership: bool) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = PodSandboxConfig {
            linux: Some(k8s_cri::v1::LinuxPodSandboxConfig { cgroup_parent: parent.into(), ..Default::default() }),
            ..Default::default()
        };
        let image = json!({"config": {"Cmd": ["/bin/sh"]}});
        let spec = container_spec(&SpecInput {
            id: "abc",
            sandbox_id: "pod",
            sandbox_pid: 1,
            target_pid: 1,
            sandbox: &sandbox,
            sandbox_dir: dir.path(),
            sandbox_shm: &dir.path().join("shm"),
            config,
            image_config: &image,
            image_name: "img",
            user: &User::default(),
            pod_annotations: &[],
            container_annotations: &[],
            cgroups,
            device_ownership,
            privileged_without_host_devices: false,
        })
        .unwrap();
        serde_json::from_slice(&spec).unwrap()
    }

    #[test]
    fn disable_cgroup_drops_the_path_and_the_resources_but_not_the_device_rules() {
        let config = ContainerConfig {
            linux: Some(k8s_cri::v1::LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_shares: 512,
                    memory_limit_in_bytes: 1 << 26,
                    oom_score_adj: 5,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let on = spec_of(&config, "/pods/p1", Cgroups::default(), false);
        assert_eq!(on["linux"]["cgroupsPath"], "/pods/p1/abc");
        assert_eq!(on["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(on["linux"]["resources"]["memory"]["limit"], 1 << 26);
        let off = spec_of(&config, "/pods/p1", Cgroups { disabled: true, systemd: false }, false);
        assert!(off["linux"].get("cgroupsPath").is_none(), "{}", off["linux"]);
        let res = &off["linux"]["resources"];
        assert!(res.get("cpu").is_none() && res.get("memory").is_none(), "{res}");
        assert_eq!(res["devices"], json!([{"allow": false, "access": "rwm"}]));
        assert_eq!(off["process"]["oomScoreAdj"], 5, "the OOM score is not a cgroup's");
    }

    #[test]
    fn devices_are_owned_as_on_the_host_or_by_the_run_as_ids() {
        use std::os::unix::fs::MetadataExt;
        let host = std::fs::metadata("/dev/null").unwrap();
        let with_ids = |user: Option<i64>, group: Option<i64>| ContainerConfig {
            devices: vec![k8s_cri::v1::Device {
                container_path: "/dev/mine".into(),
                host_path: "/dev/null".into(),
                permissions: "rw".into(),
            }],
            linux: Some(k8s_cri::v1::LinuxContainerConfig {
                security_context: Some(k8s_cri::v1::LinuxContainerSecurityContext {
                    run_as_user: user.map(|value| k8s_cri::v1::Int64Value { value }),
                    run_as_group: group.map(|value| k8s_cri::v1::Int64Value { value }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let owner = |config: &ContainerConfig, ownership: bool| {
            let spec = spec_of(config, "", Cgroups::default(), ownership);
            let d = &spec["linux"]["devices"][0];
            assert_eq!(
                (d["path"].as_str(), d["major"].as_i64(), d["minor"].as_i64()),
                (Some("/dev/mine"), Some(1), Some(3))
            );
            (d["uid"].as_u64().unwrap(), d["gid"].as_u64().unwrap())
        };
        let host_owner = (u64::from(host.uid()), u64::from(host.gid()));
        assert_eq!(owner(&with_ids(Some(1234), Some(5678)), false), host_owner);
        assert_eq!(owner(&with_ids(Some(1234), Some(5678)), true), (1234, 5678));
        // Only ids that are set and not 0 override the host's.
        assert_eq!(owner(&with_ids(Some(1234), None), true), (1234, host_owner.1));
        assert_eq!(owner(&with_ids(Some(0), Some(0)), true), host_owner);
        assert_eq!(owner(&with_ids(None, None), true), host_owner);
    }

    #[test]
    fn host_devices_are_found_as_containerd_finds_them() {
        let all = host_devices(Path::new("/dev"), None).unwrap();
        let null = all.iter().find(|d| d.path == "/dev/null").expect("/dev/null");
        assert_eq!((null.kind, null.major, null.minor), ("c", 1, 3));
        assert!(!all.iter().any(|d| d.path == "/dev/console" || d.path.starts_with("/dev/pts/")), "{all:?}");
        // A directory goes below the container path; a node to it.
        let under = host_devices(Path::new("/dev"), Some("/host/")).unwrap();
        assert!(under.iter().any(|d| d.path == "/host/null"), "{under:?}");
        assert_eq!(under.len(), all.len());
        let one = host_devices(Path::new("/dev/null"), Some("/dev/mine")).unwrap();
        assert_eq!(one, vec![DeviceNode { path: "/dev/mine".into(), ..null.clone() }]);
        let e = host_devices(Path::new("/etc/hostname"), Some("/x")).unwrap_err();
        assert!(e.message.contains("is not a device node"), "{e:?}");
    }
}
