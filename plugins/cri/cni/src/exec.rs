//! Running one CNI plugin as the spec says: the binary `<dir>/<type>` from
//! the first bin dir that has it, `CNI_*` in the environment (on top of
//! ours: portmap needs `PATH` for iptables), the config on stdin, a result
//! or the error object on stdout. Failures become libcni's `types.Error`
//! shapes, so every plugin failure is a [`PluginError`].

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::{config::PluginConfig, types::PluginError, CniError};

/// The spec's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn env(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }

    /// How libcni names the operation in its errors.
    pub fn verb(self) -> &'static str {
        match self {
            Command::Add => "add",
            Command::Del => "delete",
            Command::Check => "check",
            Command::Version => "version",
        }
    }
}

/// The per-attachment part of an invocation (libcni's RuntimeConf).
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub capability_args: Map<String, Value>,
}

/// Finds `<dir>/<plugin_type>` in the first dir that has it.
pub fn find_plugin(plugin_type: &str, bin_dirs: &[PathBuf]) -> Option<PathBuf> {
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return None;
    }
    bin_dirs.iter().map(|d| d.join(plugin_type)).find(|p| p.is_file())
}

/// The stdin of one plugin of a list (libcni's `buildOneConfig`): its own
/// object with the list's `name` and `cniVersion`, the previous plugin's
/// result, and `runtimeConfig` for the capabilities it declares.
pub fn build_one_config(
    name: &str,
    cni_version: &str,
    plugin: &PluginConfig,
    prev_result: Option<&Value>,
    rt: &RuntimeConf,
) -> Vec<u8> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::String(name.into()));
    conf.insert("cniVersion".into(), Value::String(cni_version.into()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let runtime_config: Map<String, Value> = plugin
        .capabilities
        .iter()
        .filter(|(_, on)| **on)
        .filter_map(|(cap, _)| rt.capability_args.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    serde_json::to_vec(&Value::Object(conf)).expect("a JSON value serialises")
}

/// `CNI_ARGS`: `K=V` pairs joined by `;`.
pub fn cni_args(args: &[(String, String)]) -> String {
    args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}

/// What went wrong running a plugin, before the caller names the network.
#[derive(Debug)]
pub enum ExecFailure {
    /// It could not be started or its pipes failed.
    Spawn(std::io::Error),
    /// It exited non-zero; the error object it printed or one made from
    /// its output, as libcni's `pluginErr` does.
    Failed(PluginError),
}

/// Runs the plugin at `path` and returns its stdout on success.
pub async fn exec_plugin(
    path: &Path,
    command: Command,
    stdin: &[u8],
    rt: &RuntimeConf,
    bin_dirs: &[PathBuf],
) -> Result<Vec<u8>, ExecFailure> {
    let cni_path = std::env::join_paths(bin_dirs).map_err(|e| ExecFailure::Spawn(std::io::Error::other(e)))?;
    let mut cmd = tokio::process::Command::new(path);
    cmd.env("CNI_COMMAND", command.env()).env("CNI_PATH", cni_path);
    if command != Command::Version {
        cmd.env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", cni_args(&rt.args));
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(ExecFailure::Spawn)?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // Write concurrently with reading the output: a plugin may answer
    // before reading all of a large config.
    let write = async move {
        // A plugin that exits without reading stdin closes the pipe: its
        // exit status says what happened, not our EPIPE.
        let _ = pipe.write_all(stdin).await;
        drop(pipe);
    };
    let (_, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(ExecFailure::Spawn)?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = if stdout.trim().is_empty() {
        if stderr.trim().is_empty() {
            PluginError {
                msg: format!("netplugin failed with no error message: {}", output.status),
                ..Default::default()
            }
        } else {
            PluginError { msg: format!("netplugin failed: {:?}", stderr.trim()), ..Default::default() }
        }
    } else {
        serde_json::from_str::<PluginError>(&stdout).unwrap_or_else(|_| PluginError {
            msg: format!("netplugin failed but error parsing its diagnostic message {:?}", stdout.trim()),
            ..Default::default()
        })
    };
    Err(ExecFailure::Failed(error))
}

/// Turns an [`ExecFailure`] into the error naming the plugin and network.
pub fn plugin_error(failure: ExecFailure, plugin: &str, network: &str, command: Command) -> CniError {
    let (plugin, network, op) = (plugin.to_string(), network.to_string(), command.verb());
    match failure {
        ExecFailure::Spawn(e) => CniError::PluginExec { plugin, network, op, reason: e.to_string() },
        ExecFailure::Failed(error) => CniError::Plugin { plugin, network, op, error: Box::new(error) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::conf_list_from_bytes;

    #[test]
    fn injects_name_version_prev_result_and_declared_capabilities() {
        let list = conf_list_from_bytes(
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge","name":"ignored"},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            None,
        )
        .unwrap();
        let mut rt = RuntimeConf::default();
        rt.capability_args.insert("portMappings".into(), serde_json::json!([{"hostPort":1}]));
        rt.capability_args.insert("bandwidth".into(), serde_json::json!({"ingressRate":1}));
        rt.capability_args.insert("dns".into(), serde_json::json!({}));

        let first: Value =
            serde_json::from_slice(&build_one_config("net", "1.0.0", &list.plugins[0], None, &rt)).unwrap();
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert!(first.get("runtimeConfig").is_none(), "bridge declares no capability");

        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let second: Value =
            serde_json::from_slice(&build_one_config("net", "1.0.0", &list.plugins[1], Some(&prev), &rt)).unwrap();
        assert_eq!(second["prevResult"], prev);
        // Only declared and enabled capabilities reach the plugin.
        assert_eq!(second["runtimeConfig"], serde_json::json!({"portMappings":[{"hostPort":1}]}));
    }

    #[test]
    fn finds_plugins_in_every_bin_dir_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("bridge"), "").unwrap();
        std::fs::write(a.path().join("loopback"), "").unwrap();
        std::fs::write(b.path().join("loopback"), "").unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin("bridge", &dirs), Some(b.path().join("bridge")));
        assert_eq!(find_plugin("loopback", &dirs), Some(a.path().join("loopback")));
        assert_eq!(find_plugin("nope", &dirs), None);
        assert_eq!(find_plugin("../bridge", &dirs), None);
    }

    #[test]
    fn cni_args_join_with_semicolons() {
        let args = vec![("IgnoreUnknown".into(), "1".into()), ("K8S_POD_NAME".into(), "p".into())];
        assert_eq!(cni_args(&args), "IgnoreUnknown=1;K8S_POD_NAME=p");
    }
}
