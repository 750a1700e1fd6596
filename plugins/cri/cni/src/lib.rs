//! crated's CNI library: what containerd's CRI gets from go-cni and libcni.
//! [`Cni`] loads the networks of a conf dir (with loopback first), attaches
//! a pod's network namespace to every one of them by running real CNI
//! plugins (spec 1.0.0) on ADD, detaches it on DEL, and says whether the
//! network is ready; [`netns`] makes the namespaces to attach.
//!
//! Plugin failures are [`CniError::Plugin`] (the plugin's own error object,
//! code and all) or [`CniError::PluginNotFound`], both naming the plugin
//! and network; this crate never parses a message to tell them apart.

pub mod cache;
pub mod config;
pub mod exec;
pub mod netns;
pub mod types;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use serde_json::{Map, Value};

pub use config::{NetworkConfigList, PluginConfig};
use exec::{Command, RuntimeConf};
pub use netns::{NetNs, NetNsGuard, NetnsError};
pub use types::{
    Bandwidth, CniResult, Dns, DnsCapability, IpNet, IpRange, PluginError, PluginInfo, PortMapping, Route,
};

/// go-cni's defaults, which containerd's CRI config defaults to as well.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
pub const DEFAULT_MAX_CONF_NUM: usize = 1;
/// Networks of the conf dir get `eth0`, `eth1`, ... in file order.
pub const DEFAULT_IFNAME_PREFIX: &str = "eth";
/// The capability containerd passes a pod's annotations under.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Why the conf dir gave no networks (go-cni's load errors).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no network config found in {}: cni plugin not initialized", .0.display())]
    NoConfig(PathBuf),
    #[error("failed to read config file: {}: {source}", dir.display())]
    Read { dir: PathBuf, source: std::io::Error },
    #[error("failed to load CNI config file {}: {reason}: invalid cni config", path.display())]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cni config load failed: {0}")]
    Load(#[from] LoadError),
    /// go-cni's `ErrCNINotInitialized`: what the CRI's network condition
    /// reports until a load has found a network.
    #[error("cni plugin not initialized")]
    NotInitialized,
    #[error(
        "plugin type={plugin:?} name={network:?} failed ({op}): failed to find plugin {plugin:?} in path {paths:?}"
    )]
    PluginNotFound { plugin: String, network: String, op: &'static str, paths: Vec<PathBuf> },
    /// The plugin ran and failed: its error object (or one libcni would
    /// make of its output).
    #[error("plugin type={plugin:?} name={network:?} failed ({op}): {error}")]
    Plugin { plugin: String, network: String, op: &'static str, error: Box<PluginError> },
    /// The plugin could not be run at all.
    #[error("plugin type={plugin:?} name={network:?} failed ({op}): {reason}")]
    PluginExec { plugin: String, network: String, op: &'static str, reason: String },
    #[error("plugin type={plugin:?} name={network:?} returned an invalid result: {reason}")]
    InvalidResult { plugin: String, network: String, reason: String },
    #[error("failed to use the CNI result cache {}: {source}", path.display())]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("configuration version {0:?} does not support the CHECK command")]
    CheckUnsupported(String),
}

/// Where plugins, configs and cached results live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    pub bin_dirs: Vec<PathBuf>,
    pub conf_dir: PathBuf,
    /// How many config files become networks; 0 means all.
    pub max_conf_num: usize,
    /// libcni's /var/lib/cni: results go to `<cache_dir>/results`.
    pub cache_dir: PathBuf,
}

/// One loaded network and the interface it attaches as.
#[derive(Debug, Clone)]
pub struct Network {
    pub config: NetworkConfigList,
    pub ifname: String,
}

/// The pod a namespace is attached for, and its capability arguments.
#[derive(Debug, Clone, Default)]
pub struct PodNetworkArgs {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// Only mappings with a host port reach plugins (as containerd filters).
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    pub dns: Option<DnsCapability>,
    pub ip_ranges: Vec<Vec<IpRange>>,
    pub annotations: BTreeMap<String, String>,
    /// More `CNI_ARGS` pairs, after containerd's.
    pub extra_args: Vec<(String, String)>,
    /// More capability arguments by name.
    pub extra_capabilities: Map<String, Value>,
}

/// An address the plugins gave an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIp {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// An interface of the result, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub mac: String,
    /// The netns path for interfaces in the pod; empty for host ones.
    pub sandbox: String,
    pub ips: Vec<PodIp>,
}

/// What ADD gave, merged over networks as go-cni's `createResult` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetworkResult {
    pub interfaces: BTreeMap<String, InterfaceConfig>,
    pub dns: Vec<Dns>,
    pub routes: Vec<Route>,
    /// Each network's own result, in network order.
    pub raw: Vec<(String, CniResult)>,
}

impl PodNetworkResult {
    /// The addresses of `eth0`, IPv4 first (the CRI's pod IP is the first).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .interfaces
            .get(&format!("{DEFAULT_IFNAME_PREFIX}0"))
            .map(|i| i.ips.iter().map(|ip| ip.address.addr).collect())
            .unwrap_or_default();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }
}

/// The CNI networks of a node. Cheap to share behind an `Arc`; [`reload`]
/// swaps the network set whole, so calls in flight keep the set they
/// started with.
///
/// [`reload`]: Cni::reload
#[derive(Debug)]
pub struct Cni {
    config: CniConfig,
    networks: RwLock<Arc<Vec<Network>>>,
    load_error: RwLock<Option<String>>,
}

fn version_at_least(version: &str, want: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    v >= want
}

// libcni's ValidateContainerID and ValidateInterfaceName.
fn validate(id: &str, ifname: &str) -> Result<(), CniError> {
    let id_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !id_ok {
        return Err(CniError::InvalidArgument(format!("invalid characters in containerID {id:?}")));
    }
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(CniError::InvalidArgument(format!("invalid interface name {ifname:?}")));
    }
    Ok(())
}

impl Cni {
    /// A `Cni` with no networks yet: [`status`](Cni::status) is not ready
    /// until a [`reload`](Cni::reload) finds one.
    pub fn new(config: CniConfig) -> Cni {
        Cni { config, networks: RwLock::new(Arc::new(Vec::new())), load_error: RwLock::new(None) }
    }

    /// Loads the networks of `conf_dir` (see [`reload`](Cni::reload)).
    pub async fn load(
        bin_dirs: Vec<PathBuf>,
        conf_dir: impl Into<PathBuf>,
        max_conf_num: usize,
        cache_dir: impl Into<PathBuf>,
    ) -> Result<Cni, CniError> {
        let cni =
            Cni::new(CniConfig { bin_dirs, conf_dir: conf_dir.into(), max_conf_num, cache_dir: cache_dir.into() });
        cni.reload().await?;
        Ok(cni)
    }

    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// Reads the conf dir again; on success the networks are loopback on
    /// `lo` then the dir's on `eth0`, `eth1`, ...; on failure there are
    /// none and [`load_error`](Cni::load_error) says why.
    pub async fn reload(&self) -> Result<(), CniError> {
        let dir = self.config.conf_dir.clone();
        let max = self.config.max_conf_num;
        let loaded = tokio::task::spawn_blocking(move || config::load_dir(&dir, max)).await.unwrap_or_else(|e| {
            Err(LoadError::Read { dir: self.config.conf_dir.clone(), source: std::io::Error::other(e) })
        });
        let (networks, result) = match loaded {
            Ok(lists) => {
                let mut networks = vec![Network { config: config::loopback(), ifname: "lo".into() }];
                networks.extend(
                    lists
                        .into_iter()
                        .enumerate()
                        .map(|(i, config)| Network { config, ifname: format!("{DEFAULT_IFNAME_PREFIX}{i}") }),
                );
                (networks, Ok(()))
            }
            Err(e) => (Vec::new(), Err(CniError::Load(e))),
        };
        *self.load_error.write().unwrap_or_else(|e| e.into_inner()) = result.as_ref().err().map(|e| e.to_string());
        *self.networks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(networks);
        result
    }

    /// The networks in attach order (loopback first).
    pub fn networks(&self) -> Arc<Vec<Network>> {
        self.networks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What go-cni's `GetConfig` reports, as containerd's verbose Status
    /// puts it under `cniconfig`: the dirs, the interface prefix, and each
    /// network with its plugins (libcni's `NetConf` fields of each, and
    /// the JSON each came from).
    pub fn config_report(&self) -> Value {
        let net_conf = |raw: &Map<String, Value>| {
            let mut conf = Map::new();
            for key in ["cniVersion", "name", "type"] {
                if let Some(Value::String(v)) = raw.get(key).filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
                    conf.insert(key.into(), Value::String(v.clone()));
                }
            }
            if let Some(Value::Object(c)) =
                raw.get("capabilities").filter(|c| c.as_object().is_some_and(|c| !c.is_empty()))
            {
                conf.insert("capabilities".into(), Value::Object(c.clone()));
            }
            let mut ipam = Map::new();
            if let Some(Value::String(t)) =
                raw.get("ipam").and_then(|i| i.get("type")).filter(|t| t.as_str() != Some(""))
            {
                ipam.insert("type".into(), Value::String(t.clone()));
            }
            conf.insert("ipam".into(), Value::Object(ipam));
            let mut dns = Map::new();
            if let Some(Value::Object(d)) = raw.get("dns") {
                for key in ["nameservers", "domain", "search", "options"] {
                    if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
                        dns.insert(key.into(), v.clone());
                    }
                }
            }
            conf.insert("dns".into(), Value::Object(dns));
            if let Some(Value::Object(prev)) = raw.get("prevResult") {
                conf.insert("prevResult".into(), Value::Object(prev.clone()));
            }
            Value::Object(conf)
        };
        let networks: Vec<Value> = self
            .networks()
            .iter()
            .map(|n| {
                let plugins: Vec<Value> = n
                    .config
                    .plugins
                    .iter()
                    .map(|p| {
                        let source = serde_json::to_string(&p.raw).unwrap_or_default();
                        serde_json::json!({"Network": net_conf(&p.raw), "Source": source})
                    })
                    .collect();
                serde_json::json!({
                    "Config": {
                        "Name": n.config.name,
                        "CNIVersion": n.config.cni_version,
                        "Plugins": plugins,
                        "Source": String::from_utf8_lossy(&n.config.bytes),
                    },
                    "IFName": n.ifname,
                })
            })
            .collect();
        serde_json::json!({
            "PluginDirs": self.config.bin_dirs,
            "PluginConfDir": self.config.conf_dir,
            "PluginMaxConfNum": self.config.max_conf_num,
            "Prefix": DEFAULT_IFNAME_PREFIX,
            "Networks": if networks.is_empty() { Value::Null } else { Value::Array(networks) },
        })
    }

    /// The last load's failure, for the CRI's status details.
    pub fn load_error(&self) -> Option<String> {
        self.load_error.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ready when loopback and at least one network are loaded (containerd
    /// asks go-cni for two networks).
    pub fn status(&self) -> Result<(), CniError> {
        if self.networks().len() < 2 {
            return Err(CniError::NotInitialized);
        }
        Ok(())
    }

    fn runtime_conf(&self, id: &str, netns: &str, ifname: &str, args: &PodNetworkArgs) -> RuntimeConf {
        let mut cni_args = vec![
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), args.namespace.clone()),
            ("K8S_POD_NAME".to_string(), args.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".to_string(), id.to_string()),
            ("K8S_POD_UID".to_string(), args.uid.clone()),
        ];
        cni_args.extend(args.extra_args.iter().cloned());
        let mut caps = Map::new();
        fn to_value<T: serde::Serialize>(v: &T) -> Value {
            serde_json::to_value(v).expect("capability arguments serialise")
        }
        let port_mappings: Vec<&PortMapping> = args.port_mappings.iter().filter(|m| m.host_port > 0).collect();
        if !port_mappings.is_empty() {
            caps.insert("portMappings".into(), to_value(&port_mappings));
        }
        if let Some(bw) = &args.bandwidth {
            caps.insert("bandwidth".into(), to_value(bw));
        }
        if let Some(dns) = &args.dns {
            caps.insert("dns".into(), to_value(dns));
        }
        if !args.ip_ranges.is_empty() {
            caps.insert("ipRanges".into(), to_value(&args.ip_ranges));
        }
        if !args.annotations.is_empty() {
            caps.insert(POD_ANNOTATIONS_CAPABILITY.into(), to_value(&args.annotations));
        }
        caps.extend(args.extra_capabilities.clone());
        RuntimeConf {
            container_id: id.to_string(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            args: cni_args,
            capability_args: caps,
        }
    }

    fn find(&self, plugin: &str, network: &str, command: Command) -> Result<PathBuf, CniError> {
        exec::find_plugin(plugin, &self.config.bin_dirs).ok_or_else(|| CniError::PluginNotFound {
            plugin: plugin.to_string(),
            network: network.to_string(),
            op: command.verb(),
            paths: self.config.bin_dirs.clone(),
        })
    }

    async fn add_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<CniResult, CniError> {
        let mut prev: Option<(Value, &str)> = None;
        for plugin in &list.plugins {
            let path = self.find(&plugin.plugin_type, &list.name, Command::Add)?;
            let stdin = exec::build_one_config(&list.name, &list.cni_version, plugin, prev.as_ref().map(|p| &p.0), rt);
            let out = exec::exec_plugin(&path, Command::Add, &stdin, rt, &self.config.bin_dirs)
                .await
                .map_err(|f| exec::plugin_error(f, &plugin.plugin_type, &list.name, Command::Add))?;
            let value: Value = serde_json::from_slice(&out).map_err(|e| CniError::InvalidResult {
                plugin: plugin.plugin_type.clone(),
                network: list.name.clone(),
                reason: format!("{e}: {:?}", String::from_utf8_lossy(&out)),
            })?;
            prev = Some((value, &plugin.plugin_type));
        }
        let (value, plugin) = prev.expect("a list has at least one plugin");
        let result: CniResult = serde_json::from_value(value.clone()).map_err(|e| CniError::InvalidResult {
            plugin: plugin.to_string(),
            network: list.name.clone(),
            reason: e.to_string(),
        })?;
        cache::add(&self.config.cache_dir, &list.name, &list.bytes, rt, &value).await?;
        Ok(result)
    }

    async fn del_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        // Cached results on DEL came with spec 0.4.0.
        let cached = if version_at_least(&list.cni_version, (0, 4, 0)) {
            cache::get(&self.config.cache_dir, &list.name, rt).await?
        } else {
            None
        };
        for plugin in list.plugins.iter().rev() {
            let path = self.find(&plugin.plugin_type, &list.name, Command::Del)?;
            let stdin = exec::build_one_config(&list.name, &list.cni_version, plugin, cached.as_ref(), rt);
            exec::exec_plugin(&path, Command::Del, &stdin, rt, &self.config.bin_dirs)
                .await
                .map_err(|f| exec::plugin_error(f, &plugin.plugin_type, &list.name, Command::Del))?;
        }
        cache::del(&self.config.cache_dir, &list.name, rt).await;
        Ok(())
    }

    /// ADD: attaches the namespace at `netns_path` to every network, all at
    /// once as go-cni's `Setup` does. On an error the caller should still
    /// call [`teardown`](Cni::teardown), as containerd does.
    pub async fn setup(
        &self,
        id: &str,
        netns_path: &Path,
        args: &PodNetworkArgs,
    ) -> Result<PodNetworkResult, CniError> {
        self.status()?;
        let networks = self.networks();
        let netns = netns_path.to_string_lossy();
        let netns = &netns;
        let attaches = networks.iter().map(|n| async move {
            validate(id, &n.ifname)?;
            let rt = self.runtime_conf(id, netns, &n.ifname, args);
            self.add_network_list(&n.config, &rt).await
        });
        let results = futures::future::join_all(attaches).await;
        let mut out = PodNetworkResult::default();
        for (network, result) in networks.iter().zip(results) {
            let result = result?;
            // go-cni: an address names an interface of its own result.
            if let Some(ip) = result.ips.iter().find(|ip| ip.interface.is_some_and(|i| i >= result.interfaces.len())) {
                return Err(CniError::InvalidResult {
                    plugin: network.config.plugins.last().map(|p| p.plugin_type.clone()).unwrap_or_default(),
                    network: network.config.name.clone(),
                    reason: format!("ip {} names an interface out of {}", ip.address, result.interfaces.len()),
                });
            }
            for intf in &result.interfaces {
                let entry = out.interfaces.entry(intf.name.clone()).or_default();
                entry.mac = intf.mac.clone();
                entry.sandbox = intf.sandbox.clone();
            }
            for ip in &result.ips {
                let name = ip
                    .interface
                    .and_then(|i| result.interfaces.get(i))
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| format!("{DEFAULT_IFNAME_PREFIX}0"));
                out.interfaces.entry(name).or_default().ips.push(PodIp { address: ip.address, gateway: ip.gateway });
            }
            out.dns.push(result.dns.clone());
            out.routes.extend(result.routes.iter().cloned());
            out.raw.push((network.config.name.clone(), result));
        }
        Ok(out)
    }

    /// DEL: detaches the namespace from every network, each network's
    /// plugins in reverse, with the cached ADD result as `prevResult`. A
    /// namespace that is already gone is passed as an empty `CNI_NETNS`,
    /// which the spec lets plugins clean up without; "not found" failures
    /// are tolerated as go-cni does. Every network is tried; the first
    /// error is returned.
    pub async fn teardown(&self, id: &str, netns_path: &Path, args: &PodNetworkArgs) -> Result<(), CniError> {
        self.status()?;
        let netns = if netns_path.as_os_str().is_empty() || !netns_path.exists() {
            String::new()
        } else {
            netns_path.to_string_lossy().into_owned()
        };
        let mut first_error = None;
        for n in self.networks().iter() {
            validate(id, &n.ifname)?;
            let rt = self.runtime_conf(id, &netns, &n.ifname, args);
            if let Err(e) = self.del_network_list(&n.config, &rt).await {
                let tolerated = match &e {
                    CniError::Plugin { error, .. } => {
                        error.msg.contains("not found")
                            || (netns.is_empty() && error.to_string().contains("no such file or directory"))
                    }
                    _ => false,
                };
                if tolerated {
                    tracing::debug!("tolerated on teardown: {e}");
                } else if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// CHECK: asks every network's plugins whether the attachment is as ADD
    /// left it (spec 0.4.0 and later; loopback's 0.3.1 list is skipped).
    pub async fn check(&self, id: &str, netns_path: &Path, args: &PodNetworkArgs) -> Result<(), CniError> {
        self.status()?;
        let netns = netns_path.to_string_lossy();
        for n in self.networks().iter() {
            let list = &n.config;
            if !version_at_least(&list.cni_version, (0, 4, 0)) {
                if n.ifname == "lo" {
                    continue;
                }
                return Err(CniError::CheckUnsupported(list.cni_version.clone()));
            }
            if list.disable_check {
                continue;
            }
            validate(id, &n.ifname)?;
            let rt = self.runtime_conf(id, &netns, &n.ifname, args);
            let cached = cache::get(&self.config.cache_dir, &list.name, &rt).await?;
            for plugin in &list.plugins {
                let path = self.find(&plugin.plugin_type, &list.name, Command::Check)?;
                let stdin = exec::build_one_config(&list.name, &list.cni_version, plugin, cached.as_ref(), &rt);
                exec::exec_plugin(&path, Command::Check, &stdin, &rt, &self.config.bin_dirs)
                    .await
                    .map_err(|f| exec::plugin_error(f, &plugin.plugin_type, &list.name, Command::Check))?;
            }
        }
        Ok(())
    }

    /// VERSION: the spec versions a plugin binary supports.
    pub async fn plugin_version(&self, plugin_type: &str) -> Result<PluginInfo, CniError> {
        let path = self.find(plugin_type, "", Command::Version)?;
        let stdin = br#"{"cniVersion":"1.0.0"}"#;
        let out = exec::exec_plugin(&path, Command::Version, stdin, &RuntimeConf::default(), &self.config.bin_dirs)
            .await
            .map_err(|f| exec::plugin_error(f, plugin_type, "", Command::Version))?;
        serde_json::from_slice(&out).map_err(|e| CniError::InvalidResult {
            plugin: plugin_type.to_string(),
            network: String::new(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_report_is_go_cnis() {
        let dir = tempfile::tempdir().unwrap();
        let list = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
            {"type":"bridge","bridge":"b0","ipam":{"type":"host-local","ranges":[]}},
            {"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        std::fs::write(dir.path().join("10-pods.conflist"), list).unwrap();
        let cni = Cni::new(CniConfig {
            bin_dirs: vec!["/opt/cni/bin".into()],
            conf_dir: dir.path().into(),
            max_conf_num: 1,
            cache_dir: PathBuf::new(),
        });
        assert_eq!(cni.config_report()["Networks"], Value::Null, "nothing loaded yet");
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(cni.reload()).unwrap();
        let r = cni.config_report();
        assert_eq!(r["PluginDirs"], serde_json::json!(["/opt/cni/bin"]));
        assert_eq!((r["PluginMaxConfNum"].as_u64(), r["Prefix"].as_str()), (Some(1), Some("eth")));
        let nets = r["Networks"].as_array().unwrap();
        assert_eq!((nets[0]["IFName"].as_str(), nets[1]["IFName"].as_str()), (Some("lo"), Some("eth0")));
        assert_eq!(nets[0]["Config"]["Name"], "cni-loopback");
        let pods = &nets[1]["Config"];
        assert_eq!((pods["Name"].as_str(), pods["CNIVersion"].as_str()), (Some("pods"), Some("1.0.0")));
        assert_eq!(pods["Source"].as_str(), Some(list));
        let bridge = &pods["Plugins"][0];
        assert_eq!(bridge["Network"], serde_json::json!({"type":"bridge","ipam":{"type":"host-local"},"dns":{}}));
        let source: Value = serde_json::from_str(bridge["Source"].as_str().unwrap()).unwrap();
        assert_eq!(source["bridge"], "b0");
        let portmap = &pods["Plugins"][1]["Network"];
        assert_eq!(portmap["capabilities"], serde_json::json!({"portMappings": true}));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
        assert!(version_at_least("0.10.0", (0, 4, 0)));
    }

    #[test]
    fn validates_ids_and_interface_names() {
        assert!(validate("abc-1.2_3", "eth0").is_ok());
        assert!(validate("", "eth0").is_err());
        assert!(validate("-a", "eth0").is_err());
        assert!(validate("a/b", "eth0").is_err());
        assert!(validate("a", "a-very-long-ifname").is_err());
        assert!(validate("a", "et:0").is_err());
    }

    #[test]
    fn runtime_conf_carries_containerds_args_and_capabilities() {
        let cni = Cni::new(CniConfig {
            bin_dirs: vec![],
            conf_dir: PathBuf::new(),
            max_conf_num: 1,
            cache_dir: PathBuf::new(),
        });
        let args = PodNetworkArgs {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
            port_mappings: vec![
                PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() },
                // No host port: not a mapping plugins should see.
                PortMapping { host_port: 0, container_port: 81, protocol: "tcp".into(), host_ip: String::new() },
            ],
            annotations: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        };
        let rt = cni.runtime_conf("sandbox1", "/run/netns/x", "eth0", &args);
        assert_eq!(
            exec::cni_args(&rt.args),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=u"
        );
        assert_eq!(
            rt.capability_args["portMappings"],
            serde_json::json!([{"hostPort":8080,"containerPort":80,"protocol":"tcp"}])
        );
        assert_eq!(rt.capability_args[POD_ANNOTATIONS_CAPABILITY], serde_json::json!({"a":"b"}));
        assert!(!rt.capability_args.contains_key("bandwidth"));
    }

    #[tokio::test]
    async fn status_follows_loading() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::new(CniConfig {
            bin_dirs: vec![],
            conf_dir: dir.path().to_path_buf(),
            max_conf_num: 1,
            cache_dir: dir.path().join("cache"),
        });
        assert!(matches!(cni.status(), Err(CniError::NotInitialized)));
        let e = cni.reload().await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cni config load failed: no network config found in {}: cni plugin not initialized",
                dir.path().display()
            )
        );
        assert_eq!(cni.load_error(), Some(e.to_string()));
        assert_eq!(cni.status().unwrap_err().to_string(), "cni plugin not initialized");

        std::fs::write(dir.path().join("10-a.conf"), r#"{"cniVersion":"1.0.0","name":"a","type":"bridge"}"#).unwrap();
        std::fs::write(dir.path().join("20-b.conf"), r#"{"cniVersion":"1.0.0","name":"b","type":"bridge"}"#).unwrap();
        cni.reload().await.unwrap();
        cni.status().unwrap();
        assert_eq!(cni.load_error(), None);
        let nets: Vec<_> = cni.networks().iter().map(|n| (n.config.name.clone(), n.ifname.clone())).collect();
        assert_eq!(nets, [("cni-loopback".to_string(), "lo".to_string()), ("a".into(), "eth0".into())]);

        let all = Cni::load(vec![], dir.path(), 0, dir.path().join("cache")).await.unwrap();
        let ifnames: Vec<_> = all.networks().iter().map(|n| n.ifname.clone()).collect();
        assert_eq!(ifnames, ["lo", "eth0", "eth1"]);
    }
}
