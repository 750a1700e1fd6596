//! The runtime plugin's config: named runtimes in the style of containerd's
//! CRI config (`[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<name>]`),
//! under this plugin's own table:
//!
//! ```toml
//! [plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2"]
//! runtime_type = "io.containerd.runc.v2"            # the shim, by containerd's naming
//! runtime_path = "/usr/bin/containerd-shim-runc-v2" # or pin the binary
//! [plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2".options]
//! BinaryName = "/usr/bin/runc"                      # runc's Options (Go or snake_case names)
//! Root = "/run/my-runc"
//! SystemdCgroup = false
//! ```
//!
//! A container whose runtime name is a key of `runtimes` uses that entry;
//! any other name is itself the runtime type (or an absolute shim path).
//! The configured options fill the fields the container's own runc options
//! leave empty, so `ctr run` (which always sends empty runc options) still
//! gets the configured runc root and binary.

use std::collections::BTreeMap;

use serde::Deserialize;
pub use shim_protocol::runc::runc_options;
use shim_protocol::runc::Options;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub runtimes: BTreeMap<String, RuntimeConfig>,
    /// containerd's keys of this plugin, accepted and not used.
    pub platforms: Vec<String>,
    pub sched_core: bool,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// containerd's runtime name (`io.containerd.runc.v2`); empty: the key.
    pub runtime_type: String,
    /// The shim binary; empty: resolved from the runtime type.
    pub runtime_path: String,
    pub options: toml::Table,
}

/// A runtime as a task is started with: the shim to resolve and the runc
/// options the config gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runtime {
    /// A runtime type or an absolute path.
    pub shim: String,
    pub options: Option<Options>,
}

impl Config {
    /// Checks every runtime's options once, at init.
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in &self.runtimes {
            runc_options(&r.options).map_err(|e| format!("runtimes.{name:?}.options: {e}"))?;
        }
        Ok(())
    }

    /// The runtime a container's runtime name stands for.
    pub fn runtime(&self, name: &str) -> Runtime {
        match self.runtimes.get(name) {
            Some(r) => {
                let shim = if !r.runtime_path.is_empty() {
                    r.runtime_path.clone()
                } else if !r.runtime_type.is_empty() {
                    r.runtime_type.clone()
                } else {
                    name.to_string()
                };
                let options = if r.options.is_empty() { None } else { runc_options(&r.options).ok() };
                Runtime { shim, options }
            }
            None => Runtime { shim: name.to_string(), options: None },
        }
    }
}

/// The container's runc options with the configured ones filling what it
/// leaves empty (strings empty, flags false, ids zero).
pub fn merge(mut given: Options, configured: &Options) -> Options {
    let fill = |s: &mut String, c: &String| {
        if s.is_empty() {
            *s = c.clone();
        }
    };
    fill(&mut given.shim_cgroup, &configured.shim_cgroup);
    fill(&mut given.binary_name, &configured.binary_name);
    fill(&mut given.root, &configured.root);
    fill(&mut given.criu_image_path, &configured.criu_image_path);
    fill(&mut given.criu_work_path, &configured.criu_work_path);
    given.no_pivot_root |= configured.no_pivot_root;
    given.no_new_keyring |= configured.no_new_keyring;
    given.systemd_cgroup |= configured.systemd_cgroup;
    if given.io_uid == 0 {
        given.io_uid = configured.io_uid;
    }
    if given.io_gid == 0 {
        given.io_gid = configured.io_gid;
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_snake_case_option_names_both_work() {
        let t: toml::Table = toml::from_str("BinaryName = \"/r\"\nsystemd_cgroup = true\nIoUid = 7").unwrap();
        let o = runc_options(&t).unwrap();
        assert_eq!((o.binary_name.as_str(), o.systemd_cgroup, o.io_uid), ("/r", true, 7));
        let bad: toml::Table = toml::from_str("Nope = 1").unwrap();
        assert!(runc_options(&bad).unwrap_err().contains("Nope"));
    }

    #[test]
    fn a_named_runtime_maps_to_its_type_path_and_options() {
        let c: Config = toml::from_str(
            "[runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n[runtimes.runc.options]\nRoot = \"/x\"\n\
             [runtimes.pinned]\nruntime_path = \"/bin/shim\"",
        )
        .unwrap();
        c.validate().unwrap();
        let r = c.runtime("runc");
        assert_eq!(r.shim, "io.containerd.runc.v2");
        assert_eq!(r.options.unwrap().root, "/x");
        assert_eq!(c.runtime("pinned").shim, "/bin/shim");
        assert_eq!(
            c.runtime("io.containerd.other.v1"),
            Runtime { shim: "io.containerd.other.v1".into(), options: None }
        );
    }

    #[test]
    fn configured_options_fill_only_what_the_container_leaves_empty() {
        let given = Options { binary_name: "/mine".into(), ..Default::default() };
        let configured = Options { binary_name: "/cfg".into(), root: "/root".into(), ..Default::default() };
        let m = merge(given, &configured);
        assert_eq!((m.binary_name.as_str(), m.root.as_str()), ("/mine", "/root"));
    }
}
