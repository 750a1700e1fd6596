//! The OCI runtime spec of a container, built as containerd 1.6's
//! `oci.GenerateSpec` and the `oci.With*` options ctr uses build it, on
//! the `oci-spec` crate's types.
//!
//! Two things the crate's types cannot carry are kept beside them:
//! capability lists (a `HashSet` there, an ordered list in Go, and the
//! order shows in the JSON) and the Go field order of the output, which
//! [`crate::gojson::spec_value`] restores when writing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxNamespaceType, LinuxResources, Mount,
    Spec,
};
use serde_json::{json, Value};

use crate::gojson::{self, J};
use shim_protocol::oci::current_capabilities;
use shim_protocol::oci::{DefaultMount, DEFAULT_CAPS, DEFAULT_MOUNTS, MASKED_PATHS, READONLY_PATHS};

/// What can go wrong building a spec; the texts are containerd's.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("open {path}: {}", crate::errdefs::os_text(.source))]
    Open { path: String, source: std::io::Error },
    #[error("no users found")]
    NoUsersFound,
    #[error("no groups found")]
    NoGroupsFound,
    #[error("invalid USER value {0}")]
    InvalidUser(String),
    #[error("error stating device path: stat {path}: {}", crate::errdefs::os_text(.source))]
    DevicePath { path: String, source: std::io::Error },
    #[error("encoding the spec: {0}")]
    Json(#[from] serde_json::Error),
}

/// Go's `PATH` default (`oci.defaultUnixEnv`).
pub const DEFAULT_UNIX_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process's capability lists in Go's order (`nil` and empty are
/// the same to `omitempty`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

/// A spec under construction: the `oci-spec` value and the capability
/// lists it cannot order.
#[derive(Debug, Clone)]
pub struct GoSpec {
    pub spec: Spec,
    /// `None`: the process has no capabilities object.
    pub caps: Option<Capabilities>,
}

/// `oci.GenerateSpec` for a Linux container: containerd's default spec
/// with the cgroup path `/<namespace>/<id>`.
pub fn default_spec(namespace: &str, id: &str) -> GoSpec {
    // Go's `filepath.Join("/", ns, id)`: empty parts vanish.
    let cgroups_path: String =
        [namespace, id].iter().filter(|p| !p.is_empty()).map(|p| format!("/{p}")).collect::<String>();
    let cgroups_path = if cgroups_path.is_empty() { "/".to_string() } else { cgroups_path };
    let run: DefaultMount = ("/run", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]);
    let mounts: Vec<Value> = DEFAULT_MOUNTS
        .iter()
        .chain([&run])
        .map(|(dest, typ, src, opts)| json!({"destination": dest, "type": typ, "source": src, "options": opts}))
        .collect();
    let doc = json!({
        "ociVersion": "1.0.2-dev",
        "root": {"path": "rootfs"},
        "process": {
            "cwd": "/",
            "noNewPrivileges": true,
            "user": {"uid": 0, "gid": 0},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "linux": {
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
        },
        "mounts": mounts,
    });
    // The literal above is the default spec; it always decodes.
    let spec: Spec = serde_json::from_value(doc).expect("the default spec decodes");
    let caps: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    GoSpec {
        spec,
        caps: Some(Capabilities {
            bounding: caps.clone(),
            effective: caps.clone(),
            permitted: caps,
            ..Default::default()
        }),
    }
}

/// containerd's `replaceOrAppendEnvValues`: overrides replace a variable
/// of the same name or are appended; a bare `NAME` removes it.
pub fn replace_or_append_env(defaults: &[String], overrides: &[String]) -> Vec<String> {
    let mut results: Vec<String> = defaults.to_vec();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, e) in defaults.iter().enumerate() {
        index.insert(e.split('=').next().unwrap_or_default().to_string(), i);
    }
    for value in overrides {
        if !value.contains('=') {
            if let Some(&i) = index.get(value) {
                results[i] = String::new();
            }
            continue;
        }
        let name = value.split('=').next().unwrap_or_default();
        match index.get(name) {
            Some(&i) => results[i] = value.clone(),
            None => results.push(value.clone()),
        }
    }
    results.retain(|e| !e.is_empty());
    results
}

/// The parts of an image config (`config` of an OCI image config) that
/// `oci.WithImageConfig` reads.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageConfig {
    /// From an image config blob's JSON.
    pub fn from_blob(v: &Value) -> ImageConfig {
        let c = v.get("config").cloned().unwrap_or(Value::Null);
        let list = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default()
        };
        let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        ImageConfig {
            env: list("Env"),
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
            working_dir: text("WorkingDir"),
            user: text("User"),
        }
    }
}

/// One `/etc/passwd` entry.
#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_db(root: &Path, file: &str) -> Result<Vec<Vec<String>>, SpecError> {
    let path = root.join(file.trim_start_matches('/'));
    let text = std::fs::read_to_string(&path)
        .map_err(|source| SpecError::Open { path: path.display().to_string(), source })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect())
}

/// libcontainer's `Atoi` of a passwd field: a bad number reads as 0.
fn id_field(fields: &[String], i: usize) -> u32 {
    fields.get(i).and_then(|f| f.parse::<i64>().ok()).map_or(0, |n| n as u32)
}

fn passwd(root: &Path) -> Result<Vec<PasswdEntry>, SpecError> {
    Ok(read_db(root, "/etc/passwd")?
        .into_iter()
        .map(|f| PasswdEntry { name: f[0].clone(), uid: id_field(&f, 2), gid: id_field(&f, 3) })
        .collect())
}

fn groups(root: &Path) -> Result<Vec<GroupEntry>, SpecError> {
    Ok(read_db(root, "/etc/group")?
        .into_iter()
        .map(|f| GroupEntry {
            name: f[0].clone(),
            gid: id_field(&f, 2),
            members: f
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
        })
        .collect())
}

fn user_from_path(root: &Path, filter: impl Fn(&PasswdEntry) -> bool) -> Result<PasswdEntry, SpecError> {
    passwd(root)?.into_iter().find(|u| filter(u)).ok_or(SpecError::NoUsersFound)
}

fn is_not_exist(e: &SpecError) -> bool {
    matches!(e, SpecError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Go's `strconv.Atoi` for a user string part.
fn atoi(s: &str) -> Option<u32> {
    s.parse::<i64>().ok().map(|n| n as u32)
}

impl GoSpec {
    fn process(&mut self) -> &mut oci_spec::runtime::Process {
        if self.spec.process().is_none() {
            let p: oci_spec::runtime::Process =
                serde_json::from_value(json!({"user": {}, "cwd": ""})).expect("an empty process decodes");
            self.spec.set_process(Some(p));
        }
        self.spec.process_mut().as_mut().expect("set above")
    }

    fn linux(&mut self) -> &mut oci_spec::runtime::Linux {
        if self.spec.linux().is_none() {
            let l: oci_spec::runtime::Linux = serde_json::from_value(json!({})).expect("an empty linux decodes");
            self.spec.set_linux(Some(l));
        }
        self.spec.linux_mut().as_mut().expect("set above")
    }

    fn resources(&mut self) -> &mut LinuxResources {
        let linux = self.linux();
        if linux.resources().is_none() {
            let r: LinuxResources = serde_json::from_value(json!({})).expect("empty resources decode");
            linux.set_resources(Some(r));
        }
        linux.resources_mut().as_mut().expect("set above")
    }

    fn cpu(&mut self) -> &mut LinuxCpu {
        let r = self.resources();
        if r.cpu().is_none() {
            let c: LinuxCpu = serde_json::from_value(json!({})).expect("an empty cpu decodes");
            r.set_cpu(Some(c));
        }
        r.cpu_mut().as_mut().expect("set above")
    }

    /// `oci.WithDefaultUnixDevices`: the cgroup rules for null, random,
    /// full, tty, zero, urandom, console, pts and ptmx.
    pub fn with_default_unix_devices(&mut self) {
        let rules = [
            (1, Some(3)),
            (1, Some(8)),
            (1, Some(7)),
            (5, Some(0)),
            (1, Some(5)),
            (1, Some(9)),
            (5, Some(1)),
            (136, None),
            (5, Some(2)),
        ];
        let r = self.resources();
        let mut devices = r.devices().clone().unwrap_or_default();
        for (major, minor) in rules {
            devices.push(device_rule(true, Some(LinuxDeviceType::C), Some(major), minor, "rwm"));
        }
        r.set_devices(Some(devices));
    }

    /// `oci.WithEnv`.
    pub fn with_env(&mut self, vars: &[String]) {
        if vars.is_empty() {
            return;
        }
        let p = self.process();
        let env = replace_or_append_env(p.env().as_deref().unwrap_or_default(), vars);
        p.set_env(Some(env));
    }

    /// `oci.WithEnvFile`: one variable a line.
    pub fn with_env_file(&mut self, path: &str) -> Result<(), SpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpecError::Open { path: path.to_string(), source })?;
        let vars: Vec<String> = text.lines().map(str::to_string).collect();
        self.with_env(&vars);
        Ok(())
    }

    /// `oci.WithMounts`: appended.
    pub fn with_mounts(&mut self, mounts: Vec<Mount>) {
        let mut all = self.spec.mounts().clone().unwrap_or_default();
        all.extend(mounts);
        self.spec.set_mounts(Some(all));
    }

    /// `oci.WithProcessArgs`.
    pub fn with_process_args(&mut self, args: &[String]) {
        let p = self.process();
        p.set_args(Some(args.to_vec()));
        p.set_command_line(None);
    }

    /// `oci.WithProcessCwd`.
    pub fn with_process_cwd(&mut self, cwd: &str) {
        self.process().set_cwd(PathBuf::from(cwd));
    }

    /// `oci.WithTTY`: a terminal and `TERM=xterm`.
    pub fn with_tty(&mut self) {
        let linux = self.spec.linux().is_some();
        let p = self.process();
        p.set_terminal(Some(true));
        if linux {
            let mut env = p.env().clone().unwrap_or_default();
            env.push("TERM=xterm".to_string());
            p.set_env(Some(env));
        }
    }

    /// `oci.WithRootFSPath`.
    pub fn with_rootfs_path(&mut self, path: &str) {
        let mut root = self.spec.root().clone().unwrap_or_default();
        root.set_path(PathBuf::from(path));
        self.spec.set_root(Some(root));
    }

    /// `oci.WithRootFSReadonly`.
    pub fn with_rootfs_readonly(&mut self) {
        let mut root = self.spec.root().clone().unwrap_or_default();
        root.set_readonly(Some(true));
        self.spec.set_root(Some(root));
    }

    /// `oci.WithHostNamespace`: leave the host's namespace of this type.
    pub fn with_host_namespace(&mut self, typ: LinuxNamespaceType) {
        let linux = self.linux();
        if let Some(ns) = linux.namespaces().clone() {
            let mut ns = ns;
            if let Some(i) = ns.iter().position(|n| n.typ() == typ) {
                ns.remove(i);
            }
            linux.set_namespaces(Some(ns));
        }
    }

    /// What `--net-host` adds: the host network, its hosts and resolv.conf
    /// bound read-only, and `HOSTNAME`.
    pub fn with_host_network(&mut self, hostname: &str) {
        self.with_host_namespace(LinuxNamespaceType::Network);
        let bind = |p: &str| -> Mount {
            serde_json::from_value(json!({"destination": p, "type": "bind", "source": p, "options": ["rbind", "ro"]}))
                .expect("a bind mount decodes")
        };
        self.with_mounts(vec![bind("/etc/hosts"), bind("/etc/resolv.conf")]);
        self.with_env(&[format!("HOSTNAME={hostname}")]);
    }

    /// `oci.WithAnnotations`: merged.
    pub fn with_annotations(&mut self, annotations: &std::collections::BTreeMap<String, String>) {
        let mut all = self.spec.annotations().clone().unwrap_or_default();
        all.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.spec.set_annotations(Some(all));
    }

    /// `oci.WithMemoryLimit`.
    pub fn with_memory_limit(&mut self, limit: u64) {
        let r = self.resources();
        let mut m = (*r.memory()).unwrap_or_else(|| serde_json::from_value(json!({})).expect("empty memory"));
        m.set_limit(Some(limit as i64));
        r.set_memory(Some::<LinuxMemory>(m));
    }

    /// `oci.WithCPUShares`.
    pub fn with_cpu_shares(&mut self, shares: u64) {
        self.cpu().set_shares(Some(shares));
    }

    /// `oci.WithCPUCFS`.
    pub fn with_cpu_cfs(&mut self, quota: i64, period: u64) {
        let c = self.cpu();
        c.set_quota(Some(quota));
        c.set_period(Some(period));
    }

    /// `oci.WithCgroup`.
    pub fn with_cgroup(&mut self, path: &str) {
        self.linux().set_cgroups_path((!path.is_empty()).then(|| PathBuf::from(path)));
    }

    /// `oci.WithNewPrivileges`.
    pub fn with_new_privileges(&mut self) {
        self.process().set_no_new_privileges(None);
    }

    /// `oci.WithAddedCapabilities`.
    pub fn with_added_capabilities(&mut self, caps: &[String]) {
        let c = self.caps.get_or_insert_with(Capabilities::default);
        for cap in caps {
            for list in [&mut c.bounding, &mut c.effective, &mut c.permitted] {
                if !list.contains(cap) {
                    list.push(cap.clone());
                }
            }
        }
    }

    /// `oci.WithDroppedCapabilities`.
    pub fn with_dropped_capabilities(&mut self, caps: &[String]) {
        let c = self.caps.get_or_insert_with(Capabilities::default);
        for list in [&mut c.bounding, &mut c.effective, &mut c.permitted] {
            list.retain(|x| !caps.contains(x));
        }
    }

    /// `oci.WithPrivileged`, `oci.WithAllDevicesAllowed` and
    /// `oci.WithHostDevices`, as `--privileged` applies them: this
    /// process's effective capabilities, no masked or read-only paths,
    /// a writable /sys, every device allowed and the host's devices.
    pub fn with_privileged(&mut self) -> Result<(), SpecError> {
        let caps = current_capabilities();
        self.caps = Some(Capabilities {
            bounding: caps.clone(),
            effective: caps.clone(),
            permitted: caps,
            ..self.caps.clone().unwrap_or_default()
        });
        let linux = self.linux();
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        linux.set_seccomp(None);
        if let Some(mounts) = self.spec.mounts_mut() {
            for m in mounts.iter_mut() {
                if matches!(m.typ().as_deref(), Some("sysfs") | Some("cgroup")) {
                    if let Some(opts) = m.options().clone() {
                        let opts = opts.into_iter().map(|o| if o == "ro" { "rw".to_string() } else { o }).collect();
                        m.set_options(Some(opts));
                    }
                }
            }
        }
        let p = self.process();
        p.set_selinux_label(None);
        p.set_apparmor_profile(None);
        self.resources().set_devices(Some(vec![device_rule(true, None, None, None, "rwm")]));
        let devices = host_devices(Path::new("/dev"))?;
        let linux = self.linux();
        let mut all = linux.devices().clone().unwrap_or_default();
        all.extend(devices);
        linux.set_devices(Some(all));
        Ok(())
    }

    /// `oci.WithImageConfig`: environment, arguments, working directory
    /// and user from the image; `root` is the container's root
    /// filesystem (mounted), read for `/etc/passwd` and `/etc/group`.
    pub fn with_image_config(&mut self, config: &ImageConfig, root: &Path) -> Result<(), SpecError> {
        let p = self.process();
        let defaults = if config.env.is_empty() { vec![DEFAULT_UNIX_ENV.to_string()] } else { config.env.clone() };
        let env = replace_or_append_env(&defaults, p.env().as_deref().unwrap_or_default());
        p.set_env(Some(env));
        let mut args = config.entrypoint.clone();
        args.extend(config.cmd.iter().cloned());
        // Go's `append(nil, nil...)` is nil: no args at all.
        p.set_args((!args.is_empty()).then_some(args));
        let cwd = if config.working_dir.is_empty() { "/" } else { config.working_dir.as_str() };
        p.set_cwd(PathBuf::from(cwd));
        if !config.user.is_empty() {
            self.with_user(&config.user, root)?;
            let uid = self.process().user().uid();
            return self.with_additional_gids(&uid.to_string(), root);
        }
        self.with_additional_gids("root", root)
    }

    fn set_uid_gid(&mut self, uid: u32, gid: u32) {
        let u = self.process().user_mut();
        u.set_uid(uid);
        u.set_gid(gid);
    }

    /// `ensureAdditionalGids`: the primary group is in the list.
    fn ensure_additional_gids(&mut self) {
        let u = self.process().user_mut();
        let gid = u.gid();
        let mut gids = u.additional_gids().clone().unwrap_or_default();
        if !gids.contains(&gid) {
            gids.insert(0, gid);
        }
        u.set_additional_gids(Some(gids));
    }

    /// `oci.WithUser`: `user`, `uid`, `user:group`, `uid:gid`,
    /// `uid:group` or `user:gid`, names looked up under `root`.
    pub fn with_user(&mut self, userstr: &str, root: &Path) -> Result<(), SpecError> {
        self.process().user_mut().set_additional_gids(None);
        let res = self.with_user_inner(userstr, root);
        self.ensure_additional_gids();
        res
    }

    fn with_user_inner(&mut self, userstr: &str, root: &Path) -> Result<(), SpecError> {
        let parts: Vec<&str> = userstr.split(':').collect();
        match parts.as_slice() {
            [one] => match atoi(one) {
                Some(uid) => {
                    // `WithUserID`: the passwd entry's gid, else 0.
                    match user_from_path(root, |u| u.uid == uid) {
                        Ok(u) => self.set_uid_gid(u.uid, u.gid),
                        Err(e) if is_not_exist(&e) || matches!(e, SpecError::NoUsersFound) => self.set_uid_gid(uid, 0),
                        Err(e) => return Err(e),
                    }
                    Ok(())
                }
                None => {
                    let u = user_from_path(root, |u| u.name == *one)?;
                    self.set_uid_gid(u.uid, u.gid);
                    Ok(())
                }
            },
            [user, group] => {
                let (mut uid, mut gid) = (0, 0);
                let username = match atoi(user) {
                    Some(n) => {
                        uid = n;
                        None
                    }
                    None => Some(*user),
                };
                let groupname = match atoi(group) {
                    Some(n) => {
                        gid = n;
                        None
                    }
                    None => Some(*group),
                };
                if let Some(name) = username {
                    uid = user_from_path(root, |u| u.name == name)?.uid;
                }
                if let Some(name) = groupname {
                    gid = groups(root)?.into_iter().find(|g| g.name == name).ok_or(SpecError::NoGroupsFound)?.gid;
                }
                self.set_uid_gid(uid, gid);
                Ok(())
            }
            _ => Err(SpecError::InvalidUser(userstr.to_string())),
        }
    }

    /// `oci.WithAdditionalGIDs`: the groups of `/etc/group` that list the
    /// user (by name, or by uid through `/etc/passwd`).
    pub fn with_additional_gids(&mut self, userstr: &str, root: &Path) -> Result<(), SpecError> {
        self.process().user_mut().set_additional_gids(None);
        let res = self.additional_gids_inner(userstr, root);
        self.ensure_additional_gids();
        res
    }

    fn additional_gids_inner(&mut self, userstr: &str, root: &Path) -> Result<(), SpecError> {
        let username = match atoi(userstr) {
            Some(uid) => match user_from_path(root, |u| u.uid == uid) {
                Ok(u) => u.name,
                Err(e) if is_not_exist(&e) || matches!(e, SpecError::NoUsersFound) => return Ok(()),
                Err(e) => return Err(e),
            },
            None => userstr.to_string(),
        };
        let gids: Vec<u32> = match groups(root) {
            Ok(gs) => {
                gs.into_iter().filter(|g| g.name != username && g.members.contains(&username)).map(|g| g.gid).collect()
            }
            Err(e) if is_not_exist(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.process().user_mut().set_additional_gids(Some(gids));
        Ok(())
    }

    /// The spec as Go's `encoding/json` writes `specs.Spec`.
    pub fn to_json(&self) -> Result<J, SpecError> {
        let mut v = serde_json::to_value(&self.spec)?;
        if let (Some(caps), Some(p)) = (&self.caps, v.get_mut("process").and_then(Value::as_object_mut)) {
            p.insert(
                "capabilities".into(),
                json!({
                    "bounding": caps.bounding, "effective": caps.effective, "inheritable": caps.inheritable,
                    "permitted": caps.permitted, "ambient": caps.ambient,
                }),
            );
        }
        Ok(gojson::spec_value(&v))
    }

    /// The spec as the container record stores it (`json.Marshal`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SpecError> {
        Ok(self.to_json()?.compact().into_bytes())
    }

    /// A spec read back from a container record (`containers.Container.Spec`).
    pub fn from_bytes(raw: &[u8]) -> Result<GoSpec, SpecError> {
        let mut v: Value = serde_json::from_slice(raw)?;
        let caps =
            v.get_mut("process").and_then(Value::as_object_mut).and_then(|p| p.remove("capabilities")).map(|c| {
                let list = |k: &str| -> Vec<String> {
                    c.get(k)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default()
                };
                Capabilities {
                    bounding: list("bounding"),
                    effective: list("effective"),
                    inheritable: list("inheritable"),
                    permitted: list("permitted"),
                    ambient: list("ambient"),
                }
            });
        Ok(GoSpec { spec: serde_json::from_value(v)?, caps })
    }

    /// The process part as JSON (Go's field order), for an exec request.
    pub fn process_json(&self) -> Result<J, SpecError> {
        match self.to_json()? {
            J::Obj(fields) => Ok(fields.into_iter().find(|(k, _)| k == "process").map_or(J::Null, |(_, v)| v)),
            _ => Ok(J::Null),
        }
    }

    /// `--mount` entries.
    pub fn parse_mount_flag(m: &str) -> Result<Mount, String> {
        let mut v = serde_json::Map::new();
        v.insert("destination".into(), json!(""));
        for field in split_csv(m)? {
            let Some((key, val)) = field.split_once('=') else {
                return Err("invalid mount specification: expected key=val".to_string());
            };
            match key {
                "type" => v.insert("type".into(), json!(val)),
                "source" | "src" => v.insert("source".into(), json!(val)),
                "destination" | "dst" => v.insert("destination".into(), json!(val)),
                "options" => v.insert("options".into(), json!(val.split(':').collect::<Vec<_>>())),
                other => return Err(format!("mount option {} not supported", crate::golog::go_quote(other))),
            };
        }
        serde_json::from_value(Value::Object(v)).map_err(|e| e.to_string())
    }
}

/// Go's `encoding/csv` reading one record: fields split on `,`, a field
/// may be double-quoted with `""` for a quote.
fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                }
            }
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
            }
            c => {
                cur.push(c);
                at_start = false;
            }
        }
    }
    out.push(cur);
    Ok(out)
}

fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d: LinuxDeviceCgroup = serde_json::from_value(json!({"allow": allow})).expect("a device rule decodes");
    d.set_typ(typ);
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_string()));
    d
}

/// `oci.HostDevices`: the device nodes under `dir`, by name, skipping the
/// directories and nodes containerd skips.
pub fn host_devices(dir: &Path) -> Result<Vec<LinuxDevice>, SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| SpecError::DevicePath { path: dir.display().to_string(), source })?
        .filter_map(|e| e.ok())
        .collect();
    names.sort_by_key(|e| e.file_name());
    let mut out = Vec::new();
    for e in names {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if matches!(name.as_str(), "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev") {
                continue;
            }
            out.extend(host_devices(&e.path())?);
            continue;
        }
        if name == "console" {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(e.path()) else { continue };
        let typ = if md.file_type().is_block_device() {
            LinuxDeviceType::B
        } else if md.file_type().is_char_device() {
            LinuxDeviceType::C
        } else {
            continue;
        };
        let rdev = md.rdev();
        let v = json!({
            "path": e.path().display().to_string(),
            "type": typ,
            "major": rustix::fs::major(rdev),
            "minor": rustix::fs::minor(rdev),
            "fileMode": md.mode() & 0o7777,
            "uid": md.uid(),
            "gid": md.gid(),
        });
        out.push(serde_json::from_value(v)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn env_replace_append_and_unset() {
        let got = replace_or_append_env(&strings(&["PATH=/bin", "A=1", "B=2"]), &strings(&["A=3", "C=4", "B"]));
        assert_eq!(got, strings(&["PATH=/bin", "A=3", "C=4"]));
    }

    #[test]
    fn default_spec_shape() {
        let s = default_spec("default", "").to_json().unwrap().indent();
        assert!(s.contains("\"cgroupsPath\": \"/default\""), "{s}");
        assert!(s.contains("\"resources\": {\n            \"devices\": [\n                {\n                    \"allow\": false,\n                    \"access\": \"rwm\""), "{s}");
    }

    #[test]
    fn user_lookup_in_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nbob:x:1000:100::/home/bob:/bin/sh\n")
            .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nusers:x:100:\nwheel:x:10:bob\n").unwrap();
        let mut s = default_spec("default", "c");
        s.with_user("bob", dir.path()).unwrap();
        s.with_additional_gids("1000", dir.path()).unwrap();
        let u = s.spec.process().as_ref().unwrap().user().clone();
        assert_eq!((u.uid(), u.gid()), (1000, 100));
        assert_eq!(u.additional_gids().clone().unwrap(), vec![100, 10]);
        s.with_user("1000:wheel", dir.path()).unwrap();
        let u = s.spec.process().as_ref().unwrap().user().clone();
        assert_eq!((u.uid(), u.gid()), (1000, 10));
        s.with_user("42", dir.path()).unwrap();
        let u = s.spec.process().as_ref().unwrap().user().clone();
        assert_eq!((u.uid(), u.gid()), (42, 0));
        assert!(matches!(s.with_user("nobody", dir.path()), Err(SpecError::NoUsersFound)));
    }

    #[test]
    fn mount_flag_like_ctr() {
        let m = GoSpec::parse_mount_flag("type=bind,src=/tmp,dst=/host,options=rbind:ro").unwrap();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v, json!({"destination": "/host", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]}));
        assert_eq!(GoSpec::parse_mount_flag("foo").unwrap_err(), "invalid mount specification: expected key=val");
        assert_eq!(GoSpec::parse_mount_flag("x=1").unwrap_err(), "mount option \"x\" not supported");
    }
}
