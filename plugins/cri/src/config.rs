//! The CRI plugin's config, `[plugins."io.containerd.grpc.v1.cri"]`, with
//! containerd 1.6's key names and defaults (`pkg/cri/config/config.go`,
//! `config_unix.go`). Keys are read with their TOML names and written
//! back as JSON with containerd's JSON names, as `Status` with `verbose`
//! reports the config under `"config"` (crictl info prints it).
//!
//! Only the keys this plugin or its next slices use are typed; any other
//! key of containerd's (or a misspelt one) is tolerated and logged once at
//! init, as the core does for the top-level config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The defaults as TOML, for the daemon to merge the user's table onto
/// and for `crated config default` to print (as `containerd config
/// default` prints the CRI table). The same values as [`Config::default`]
/// (a test holds them together).
pub const DEFAULTS: &str = r#"sandbox_image = "registry.k8s.io/pause:3.6"
disable_tcp_service = true
stream_server_address = "127.0.0.1"
stream_server_port = "0"
stream_idle_timeout = "4h0m0s"
enable_tls_streaming = false
stats_collect_period = 10
systemd_cgroup = false
max_container_log_line_size = 16384
disable_cgroup = false
disable_apparmor = false
restrict_oom_score_adj = false
max_concurrent_downloads = 3
disable_proc_mount = false
device_ownership_from_security_context = false
ignore_image_defined_volumes = false
enable_unprivileged_ports = false
enable_unprivileged_icmp = false
tolerate_missing_hugetlb_controller = true
disable_hugetlb_controller = true
drain_exec_sync_io_timeout = "0s"

[containerd]
snapshotter = "overlayfs"
default_runtime_name = "runc"
no_pivot = false
disable_snapshot_annotations = true
discard_unpacked_layers = false

[containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"
runtime_path = ""
pod_annotations = []
container_annotations = []
privileged_without_host_devices = false
base_runtime_spec = ""
cni_conf_dir = ""
cni_max_conf_num = 0

[containerd.runtimes.runc.options]
BinaryName = ""
CriuImagePath = ""
CriuPath = ""
CriuWorkPath = ""
IoGid = 0
IoUid = 0
NoNewKeyring = false
NoPivotRoot = false
Root = ""
ShimCgroup = ""
SystemdCgroup = false

[cni]
bin_dir = "/opt/cni/bin"
conf_dir = "/etc/cni/net.d"
max_conf_num = 1
conf_template = ""
ip_pref = ""

[registry]
config_path = ""
"#;

/// containerd's default pause image (1.6).
pub const DEFAULT_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.6";
/// The runtime containerd defines out of the box.
pub const DEFAULT_RUNTIME_NAME: &str = "runc";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    #[serde(rename(serialize = "containerd"))]
    pub containerd: ContainerdConfig,
    #[serde(rename(serialize = "cni"))]
    pub cni: CniConfig,
    #[serde(rename(serialize = "registry"))]
    pub registry: RegistryConfig,
    #[serde(rename(serialize = "disableTCPService"))]
    pub disable_tcp_service: bool,
    #[serde(rename(serialize = "streamServerAddress"))]
    pub stream_server_address: String,
    #[serde(rename(serialize = "streamServerPort"))]
    pub stream_server_port: String,
    #[serde(rename(serialize = "streamIdleTimeout"))]
    pub stream_idle_timeout: String,
    #[serde(rename(serialize = "enableTLSStreaming"))]
    pub enable_tls_streaming: bool,
    #[serde(rename(serialize = "sandboxImage"))]
    pub sandbox_image: String,
    #[serde(rename(serialize = "statsCollectPeriod"))]
    pub stats_collect_period: i64,
    /// Deprecated in 1.6 and refused unless the default runtime is shim
    /// v1's (see [`parse`]); runc's `SystemdCgroup` option is the key.
    #[serde(rename(serialize = "systemdCgroup"))]
    pub systemd_cgroup: bool,
    #[serde(rename(serialize = "maxContainerLogSize"))]
    pub max_container_log_line_size: i64,
    /// No cgroups path and no CRI resources in the specs (containerd's
    /// knob for a daemon without access to cgroups).
    #[serde(rename(serialize = "disableCgroup"))]
    pub disable_cgroup: bool,
    #[serde(rename(serialize = "disableApparmor"))]
    pub disable_apparmor: bool,
    #[serde(rename(serialize = "restrictOOMScoreAdj"))]
    pub restrict_oom_score_adj: bool,
    #[serde(rename(serialize = "maxConcurrentDownloads"))]
    pub max_concurrent_downloads: i64,
    #[serde(rename(serialize = "disableProcMount"))]
    pub disable_proc_mount: bool,
    /// The CRI devices of a container get its `run_as_user` /
    /// `run_as_group` (when not 0) instead of the host node's owner.
    #[serde(rename(serialize = "device_ownership_from_security_context"))]
    pub device_ownership_from_security_context: bool,
    #[serde(rename(serialize = "ignoreImageDefinedVolumes"))]
    pub ignore_image_defined_volumes: bool,
    #[serde(rename(serialize = "enableUnprivilegedPorts"))]
    pub enable_unprivileged_ports: bool,
    #[serde(rename(serialize = "enableUnprivilegedICMP"))]
    pub enable_unprivileged_icmp: bool,
    #[serde(rename(serialize = "tolerateMissingHugetlbController"))]
    pub tolerate_missing_hugetlb_controller: bool,
    #[serde(rename(serialize = "disableHugetlbController"))]
    pub disable_hugetlb_controller: bool,
    #[serde(rename(serialize = "drainExecSyncIOTimeout"))]
    pub drain_exec_sync_io_timeout: String,
}

/// `[plugins."io.containerd.grpc.v1.cri".containerd]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ContainerdConfig {
    #[serde(rename(serialize = "snapshotter"))]
    pub snapshotter: String,
    #[serde(rename(serialize = "defaultRuntimeName"))]
    pub default_runtime_name: String,
    #[serde(rename(serialize = "runtimes"))]
    pub runtimes: BTreeMap<String, Runtime>,
    #[serde(rename(serialize = "noPivot"))]
    pub no_pivot: bool,
    #[serde(rename(serialize = "disableSnapshotAnnotations"))]
    pub disable_snapshot_annotations: bool,
    #[serde(rename(serialize = "discardUnpackedLayers"))]
    pub discard_unpacked_layers: bool,
}

/// `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<name>]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Runtime {
    #[serde(rename(serialize = "runtimeType"))]
    pub runtime_type: String,
    #[serde(rename(serialize = "runtimePath"))]
    pub runtime_path: String,
    #[serde(rename(serialize = "PodAnnotations"))]
    pub pod_annotations: Vec<String>,
    #[serde(rename(serialize = "ContainerAnnotations"))]
    pub container_annotations: Vec<String>,
    /// The runtime's own options (runc's `SystemdCgroup`, `BinaryName`...),
    /// handed to the shim as they are.
    #[serde(rename(serialize = "options"))]
    pub options: toml::Table,
    #[serde(rename(serialize = "privileged_without_host_devices"))]
    pub privileged_without_host_devices: bool,
    #[serde(rename(serialize = "baseRuntimeSpec"))]
    pub base_runtime_spec: String,
    #[serde(rename(serialize = "cniConfDir"))]
    pub cni_conf_dir: String,
    #[serde(rename(serialize = "cniMaxConfNum"))]
    pub cni_max_conf_num: i64,
}

/// `[plugins."io.containerd.grpc.v1.cri".cni]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CniConfig {
    #[serde(rename(serialize = "binDir"))]
    pub bin_dir: String,
    #[serde(rename(serialize = "confDir"))]
    pub conf_dir: String,
    #[serde(rename(serialize = "maxConfNum"))]
    pub max_conf_num: i64,
    #[serde(rename(serialize = "confTemplate"))]
    pub conf_template: String,
    #[serde(rename(serialize = "ipPref"))]
    pub ip_pref: String,
}

/// `[plugins."io.containerd.grpc.v1.cri".registry]`: only `config_path`
/// (hosts.toml directories) is served; containerd 1.6's deprecated
/// `mirrors`/`configs`/`auths` tables are tolerated but not used.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RegistryConfig {
    #[serde(rename(serialize = "configPath"))]
    pub config_path: String,
    #[serde(rename(serialize = "headers"))]
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            containerd: ContainerdConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            disable_tcp_service: true,
            stream_server_address: "127.0.0.1".into(),
            stream_server_port: "0".into(),
            stream_idle_timeout: "4h0m0s".into(),
            enable_tls_streaming: false,
            sandbox_image: DEFAULT_SANDBOX_IMAGE.into(),
            stats_collect_period: 10,
            systemd_cgroup: false,
            max_container_log_line_size: 16 * 1024,
            disable_cgroup: false,
            disable_apparmor: false,
            restrict_oom_score_adj: false,
            max_concurrent_downloads: 3,
            disable_proc_mount: false,
            device_ownership_from_security_context: false,
            ignore_image_defined_volumes: false,
            enable_unprivileged_ports: false,
            enable_unprivileged_icmp: false,
            tolerate_missing_hugetlb_controller: true,
            disable_hugetlb_controller: true,
            drain_exec_sync_io_timeout: "0s".into(),
        }
    }
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            snapshotter: "overlayfs".into(),
            default_runtime_name: DEFAULT_RUNTIME_NAME.into(),
            runtimes: BTreeMap::new(),
            no_pivot: false,
            disable_snapshot_annotations: true,
            discard_unpacked_layers: false,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            bin_dir: "/opt/cni/bin".into(),
            conf_dir: "/etc/cni/net.d".into(),
            max_conf_num: 1,
            conf_template: String::new(),
            ip_pref: String::new(),
        }
    }
}

/// containerd's default runc runtime (`io.containerd.runc.v2` with runc's
/// default options), present unless the user's table defines `runc`.
fn default_runc() -> Runtime {
    let mut options = toml::Table::new();
    for key in ["NoPivotRoot", "NoNewKeyring", "SystemdCgroup"] {
        options.insert(key.into(), toml::Value::Boolean(false));
    }
    for key in ["ShimCgroup", "BinaryName", "Root", "CriuPath", "CriuImagePath", "CriuWorkPath"] {
        options.insert(key.into(), toml::Value::String(String::new()));
    }
    for key in ["IoUid", "IoGid"] {
        options.insert(key.into(), toml::Value::Integer(0));
    }
    Runtime { runtime_type: "io.containerd.runc.v2".into(), options, ..Default::default() }
}

impl Runtime {
    /// Whether runc runs this runtime's containers with its systemd cgroup
    /// driver: the `SystemdCgroup` option of a runc runtime (the shim
    /// passes it to runc as `--systemd-cgroup`).
    pub fn systemd_cgroup(&self) -> bool {
        self.runtime_type.starts_with("io.containerd.runc.")
            && self.options.get("SystemdCgroup").and_then(toml::Value::as_bool).unwrap_or(false)
    }
}

/// The only runtime type containerd 1.6 accepts the CRI-level
/// `systemd_cgroup` for (the shim v1 runtime; shim v2 runtimes take the
/// runtime option `SystemdCgroup` instead).
pub const RUNTIME_LINUX_V1: &str = "io.containerd.runtime.v1.linux";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("`default_runtime_name` is {0:?}, but no runtime of that name is configured")]
    NoDefaultRuntime(String),
    /// containerd 1.6's words (`ValidatePluginConfig`).
    #[error("`systemd_cgroup` only works for runtime {RUNTIME_LINUX_V1}")]
    SystemdCgroupNeedsV1,
}

/// What parsing found besides the config: keys it does not know.
#[derive(Debug, Default)]
pub struct Parsed {
    pub config: Config,
    pub unknown: Vec<String>,
}

/// Parses the plugin's table (the core has merged the user's keys onto
/// nothing: the defaults live here) and checks it as containerd's
/// `ValidatePluginConfig` does for what this plugin serves.
pub fn parse(table: &toml::Table) -> Result<Parsed, ConfigError> {
    let text = toml::to_string(table).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut unknown = Vec::new();
    let de = toml::Deserializer::parse(&text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut config: Config = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    // containerd's runc entry is a default of the map: a user's table adds
    // runtimes beside it, and only a `runc` entry of their own replaces it.
    config.containerd.runtimes.entry(DEFAULT_RUNTIME_NAME.into()).or_insert_with(default_runc);
    if !config.containerd.runtimes.contains_key(&config.containerd.default_runtime_name) {
        return Err(ConfigError::NoDefaultRuntime(config.containerd.default_runtime_name));
    }
    // The deprecated CRI-level `systemd_cgroup` only ever reached shim v1's
    // runc options; containerd refuses it beside any other default runtime
    // rather than ignore it.
    if config.systemd_cgroup
        && config.containerd.runtimes[&config.containerd.default_runtime_name].runtime_type != RUNTIME_LINUX_V1
    {
        return Err(ConfigError::SystemdCgroupNeedsV1);
    }
    Ok(Parsed { config, unknown })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_are_containerds() {
        let p = parse(&toml::Table::new()).unwrap();
        let c = p.config;
        assert_eq!(c.sandbox_image, "registry.k8s.io/pause:3.6");
        assert_eq!(c.containerd.snapshotter, "overlayfs");
        assert_eq!(c.containerd.default_runtime_name, "runc");
        assert_eq!(c.containerd.runtimes["runc"].runtime_type, "io.containerd.runc.v2");
        assert_eq!(c.containerd.runtimes["runc"].options["SystemdCgroup"], toml::Value::Boolean(false));
        assert_eq!(c.cni.bin_dir, "/opt/cni/bin");
        assert_eq!(c.cni.conf_dir, "/etc/cni/net.d");
        assert_eq!(c.cni.max_conf_num, 1);
        assert_eq!(c.max_container_log_line_size, 16384);
        assert_eq!((c.stream_server_address.as_str(), c.stream_server_port.as_str()), ("127.0.0.1", "0"));
        assert!(!c.enable_unprivileged_ports && !c.enable_unprivileged_icmp && !c.disable_cgroup);
        assert!(!c.restrict_oom_score_adj && !c.device_ownership_from_security_context && !c.systemd_cgroup);
        assert_eq!(c.registry.config_path, "");
        assert!(p.unknown.is_empty());
    }

    #[test]
    fn user_keys_override_and_unknown_keys_are_tolerated() {
        let p = parse(&table(
            r#"
            sandbox_image = "example.com/pause:1"
            enable_unprivileged_ports = true
            max_container_log_line_size = -1
            no_such_key = 1
            [containerd]
            snapshotter = "native"
            default_runtime_name = "crun"
            [containerd.runtimes.crun]
            runtime_type = "io.containerd.runc.v2"
            pod_annotations = ["io.kubernetes.cri.*"]
            [containerd.runtimes.crun.options]
            BinaryName = "/usr/bin/crun"
            SystemdCgroup = true
            [cni]
            bin_dir = "/usr/lib/cni"
            [registry]
            config_path = "/etc/containerd/certs.d"
            [registry.mirrors."docker.io"]
            endpoint = ["https://mirror.example"]
            "#,
        ))
        .unwrap();
        let c = p.config;
        assert_eq!(c.sandbox_image, "example.com/pause:1");
        assert!(c.enable_unprivileged_ports);
        assert_eq!(c.max_container_log_line_size, -1);
        assert_eq!(c.containerd.snapshotter, "native");
        let crun = &c.containerd.runtimes["crun"];
        assert_eq!(crun.pod_annotations, vec!["io.kubernetes.cri.*"]);
        assert_eq!(crun.options["BinaryName"], toml::Value::String("/usr/bin/crun".into()));
        assert!(c.containerd.runtimes.contains_key("runc"), "containerd's runc stays beside the user's");
        assert_eq!(c.cni.bin_dir, "/usr/lib/cni");
        assert_eq!(c.cni.conf_dir, "/etc/cni/net.d");
        assert_eq!(c.registry.config_path, "/etc/containerd/certs.d");
        assert_eq!(p.unknown, vec!["no_such_key".to_string(), "registry.mirrors".to_string()]);
    }

    #[test]
    fn the_printed_defaults_are_the_defaults() {
        let p = parse(&table(DEFAULTS)).unwrap();
        assert!(p.unknown.is_empty(), "{:?}", p.unknown);
        assert_eq!(p.config, parse(&toml::Table::new()).unwrap().config);
    }

    #[test]
    fn a_missing_default_runtime_is_refused() {
        let e = parse(&table("[containerd]\ndefault_runtime_name = \"kata\"\n")).unwrap_err();
        assert!(e.to_string().contains("\"kata\""), "{e}");
    }

    #[test]
    fn systemd_cgroup_is_refused_beside_a_shim_v2_runtime() {
        let e = parse(&table("systemd_cgroup = true\n")).unwrap_err();
        assert_eq!(e.to_string(), "`systemd_cgroup` only works for runtime io.containerd.runtime.v1.linux");
        let v1 = "systemd_cgroup = true\n[containerd]\ndefault_runtime_name = \"v1\"\n\
                  [containerd.runtimes.v1]\nruntime_type = \"io.containerd.runtime.v1.linux\"\n";
        assert!(parse(&table(v1)).unwrap().config.systemd_cgroup);
    }

    #[test]
    fn the_systemd_cgroup_option_is_runcs() {
        let p = parse(&table(
            "[containerd.runtimes.sd]\nruntime_type = \"io.containerd.runc.v2\"\n\
             [containerd.runtimes.sd.options]\nSystemdCgroup = true\n\
             [containerd.runtimes.other]\nruntime_type = \"io.example.v1\"\n\
             [containerd.runtimes.other.options]\nSystemdCgroup = true\n",
        ))
        .unwrap();
        let r = &p.config.containerd.runtimes;
        assert!(r["sd"].systemd_cgroup());
        assert!(!r["runc"].systemd_cgroup(), "the default runc runtime uses cgroupfs");
        assert!(!r["other"].systemd_cgroup(), "only runc reads the option");
    }

    #[test]
    fn json_uses_containerds_names() {
        let json = serde_json::to_value(parse(&toml::Table::new()).unwrap().config).unwrap();
        assert_eq!(json["sandboxImage"], "registry.k8s.io/pause:3.6");
        assert_eq!(json["containerd"]["defaultRuntimeName"], "runc");
        assert_eq!(json["containerd"]["runtimes"]["runc"]["runtimeType"], "io.containerd.runc.v2");
        assert_eq!(json["cni"]["binDir"], "/opt/cni/bin");
        assert_eq!(json["maxContainerLogSize"], 16384);
        assert_eq!(json["enableUnprivilegedICMP"], false);
    }
}
