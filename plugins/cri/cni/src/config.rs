//! Network configuration as containerd's CRI loads it (go-cni over libcni):
//! `*.conf`, `*.conflist` and `*.json` of the conf dir sorted by name, at
//! most `max_conf_num` of them, a `.conf` wrapped into a one-plugin list,
//! and the loopback network always first.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use crate::LoadError;

/// A network: a list of plugins run in order on ADD and in reverse on DEL.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<PluginConfig>,
    /// The list as JSON (a `.conf` after wrapping): what the cache keeps.
    pub bytes: Vec<u8>,
    /// The file it came from; `None` for the built-in loopback network.
    pub source: Option<PathBuf>,
}

/// One plugin of a list: its `type`, the capabilities it declares (whose
/// runtime arguments it gets in `runtimeConfig`) and its whole object, which
/// is what it receives on stdin (plus `name`, `cniVersion`, `prevResult`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub plugin_type: String,
    pub capabilities: BTreeMap<String, bool>,
    pub raw: Map<String, Value>,
}

/// containerd's loopback network (go-cni's `WithLoNetwork`), on `lo`.
pub const LOOPBACK_CONFLIST: &str = r#"{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}"#;

/// The extensions libcni's `ConfFiles` is asked for by go-cni.
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

fn plugin_from(raw: Map<String, Value>) -> Result<PluginConfig, String> {
    let plugin_type = match raw.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::String(_)) | None => return Err("missing 'type'".into()),
        Some(other) => return Err(format!("'type' is not a string: {other}")),
    };
    let capabilities = match raw.get("capabilities") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("capabilities: {e}"))?,
    };
    Ok(PluginConfig { plugin_type, capabilities, raw })
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("'{key}' is not a string: {other}")),
    }
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// Parses a `.conflist` (libcni's `ConfListFromBytes`).
pub fn conf_list_from_bytes(bytes: &[u8], source: Option<PathBuf>) -> Result<NetworkConfigList, String> {
    let obj = object(bytes)?;
    let name = string_field(&obj, "name")?;
    if name.is_empty() {
        return Err("no name".into());
    }
    let cni_version = string_field(&obj, "cniVersion")?;
    let disable_check = matches!(obj.get("disableCheck"), Some(Value::Bool(true)));
    let plugins = match obj.get("plugins") {
        Some(Value::Array(a)) => a,
        None => return Err("no 'plugins' key".into()),
        Some(_) => return Err("'plugins' is not a list".into()),
    };
    if plugins.is_empty() {
        return Err("no plugins in list".into());
    }
    let plugins = plugins
        .iter()
        .enumerate()
        .map(|(i, p)| match p {
            Value::Object(m) => plugin_from(m.clone()).map_err(|e| format!("plugin {i}: {e}")),
            _ => Err(format!("plugin {i}: not a JSON object")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetworkConfigList { name, cni_version, disable_check, plugins, bytes: bytes.to_vec(), source })
}

/// Parses a single-plugin `.conf` and wraps it into a list (libcni's
/// `ConfFromBytes` + `ConfListFromConf`).
pub fn conf_from_bytes(bytes: &[u8], source: Option<PathBuf>) -> Result<NetworkConfigList, String> {
    let obj = object(bytes)?;
    let name = string_field(&obj, "name")?;
    let cni_version = string_field(&obj, "cniVersion")?;
    // go-cni: "network type not found", which also catches a conflist
    // saved as .conf.
    let plugin = plugin_from(obj).map_err(|e| format!("network type not found: {e}"))?;
    let list = serde_json::json!({ "name": name, "cniVersion": cni_version, "plugins": [plugin.raw] });
    let bytes = serde_json::to_vec(&list).expect("a JSON value serialises");
    Ok(NetworkConfigList { name, cni_version, disable_check: false, plugins: vec![plugin], bytes, source })
}

/// The built-in loopback network.
pub fn loopback() -> NetworkConfigList {
    conf_list_from_bytes(LOOPBACK_CONFLIST.as_bytes(), None).expect("the loopback config is valid")
}

/// The config files of `dir`, sorted by name; none for a missing dir.
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LoadError::Read { dir: dir.to_path_buf(), source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Read { dir: dir.to_path_buf(), source })?;
        let path = entry.path();
        // Symlinks to files count, as os.ReadDir + IsDir() sees them.
        if path.is_dir() {
            continue;
        }
        if path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads the networks of `dir`, at most `max` of them (0: no limit), in
/// file name order. The loopback network is not included.
pub fn load_dir(dir: &Path, max: usize) -> Result<Vec<NetworkConfigList>, LoadError> {
    let files = conf_files(dir)?;
    if files.is_empty() {
        return Err(LoadError::NoConfig(dir.to_path_buf()));
    }
    let mut networks = Vec::new();
    for file in files {
        let bytes =
            std::fs::read(&file).map_err(|e| LoadError::Invalid { path: file.clone(), reason: e.to_string() })?;
        let list = if file.extension().is_some_and(|e| e == "conflist") {
            conf_list_from_bytes(&bytes, Some(file.clone()))
        } else {
            conf_from_bytes(&bytes, Some(file.clone()))
        }
        .map_err(|reason| LoadError::Invalid { path: file.clone(), reason })?;
        networks.push(list);
        if networks.len() == max {
            break;
        }
    }
    Ok(networks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const BRIDGE_CONF: &str = r#"{"cniVersion":"1.0.0","name":"single","type":"bridge","bridge":"cni9"}"#;

    fn list(name: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge"}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#
        )
    }

    #[test]
    fn loads_sorted_by_name_up_to_max() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-b.conflist", &list("b"));
        write(dir.path(), "10-a.conf", BRIDGE_CONF);
        write(dir.path(), "30-c.json", &BRIDGE_CONF.replace("single", "c"));
        write(dir.path(), "05-ignored.txt", "not config");
        std::fs::create_dir(dir.path().join("00-dir.conf")).unwrap();

        let all = load_dir(dir.path(), 0).unwrap();
        let names: Vec<_> = all.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["single", "b", "c"]);
        assert_eq!(all[0].source.as_deref(), Some(dir.path().join("10-a.conf").as_path()));

        let one = load_dir(dir.path(), 1).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "single");
        assert_eq!(load_dir(dir.path(), 2).unwrap().len(), 2);
    }

    #[test]
    fn a_conf_is_wrapped_into_a_one_plugin_list() {
        let l = conf_from_bytes(BRIDGE_CONF.as_bytes(), None).unwrap();
        assert_eq!(l.name, "single");
        assert_eq!(l.cni_version, "1.0.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert_eq!(l.plugins[0].raw["bridge"], "cni9");
        let wrapped: Value = serde_json::from_slice(&l.bytes).unwrap();
        assert_eq!(wrapped["plugins"][0]["bridge"], "cni9");
        assert_eq!(wrapped["name"], "single");
    }

    #[test]
    fn a_conflist_keeps_plugins_in_order_with_capabilities() {
        let l = conf_list_from_bytes(list("n").as_bytes(), None).unwrap();
        let types: Vec<_> = l.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(l.plugins[1].capabilities.get("portMappings"), Some(&true));
        assert!(l.plugins[0].capabilities.is_empty());
    }

    #[test]
    fn loopback_is_containerds() {
        let lo = loopback();
        assert_eq!(lo.name, "cni-loopback");
        assert_eq!(lo.cni_version, "0.3.1");
        assert_eq!(lo.plugins[0].plugin_type, "loopback");
    }

    #[test]
    fn an_empty_or_missing_dir_is_not_initialized() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "README", "no config here");
        let e = load_dir(dir.path(), 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("no network config found in {}: cni plugin not initialized", dir.path().display())
        );
        let missing = dir.path().join("nope");
        assert!(matches!(load_dir(&missing, 1), Err(LoadError::NoConfig(p)) if p == missing));
    }

    #[test]
    fn invalid_files_are_named_with_the_reason() {
        let cases = [
            ("10-bad.conflist", "{not json", "invalid JSON"),
            ("10-bad.conf", r#"{"cniVersion":"1.0.0","name":"x"}"#, "network type not found"),
            // A conflist saved as .conf: no type at the top.
            ("10-bad.json", &list("x"), "network type not found"),
            ("10-bad.conflist", r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#, "no plugins in list"),
            ("10-bad.conflist", r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#, "no name"),
            ("10-bad.conflist", r#"{"name":"x","plugins":[{"bridge":"x"}]}"#, "plugin 0: missing 'type'"),
            ("10-bad.conflist", r#"[1,2]"#, "not a JSON object"),
        ];
        for (file, text, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), file, text);
            let e = load_dir(dir.path(), 1).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, LoadError::Invalid { .. }), "{msg}");
            assert!(msg.contains(file) && msg.contains(want), "{file}: {msg}");
            assert!(msg.ends_with("invalid cni config"), "{msg}");
        }
    }
}
