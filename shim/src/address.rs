//! What the start action needs besides the socket address
//! (`shim_protocol::address`): the group a container belongs to, and the
//! bundle files it writes (`address`), atomically as Go's `WriteAddress`
//! does.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use shim_protocol::address::{socket_address, SOCKET_DIR};

/// The annotations that put containers into one shim, in order of
/// precedence.
pub const GROUP_LABELS: [&str; 2] = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"];

/// The filesystem path of a `unix://` address (`None` for an abstract one).
pub fn socket_path(address: &str) -> Option<PathBuf> {
    address.strip_prefix("unix://").map(PathBuf::from)
}

/// The group a bundle's container belongs to: the first grouping
/// annotation of its `config.json`, or its own id.
pub fn group_of(config_json: &[u8], id: &str) -> Result<String, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: std::collections::HashMap<String, String>,
    }
    let spec: Spec = serde_json::from_slice(config_json)?;
    Ok(GROUP_LABELS.iter().find_map(|l| spec.annotations.get(*l).cloned()).unwrap_or_else(|| id.to_string()))
}

/// Writes `contents` to `dir/name` through a `.name` temporary file and a
/// rename, so a reader sees the old file or the whole new one.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_from_annotations() {
        let spec = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod","io.containerd.runc.v2.group":"g"}}"#;
        assert_eq!(group_of(spec, "c").unwrap(), "g");
        assert_eq!(group_of(br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod"}}"#, "c").unwrap(), "pod");
        assert_eq!(group_of(b"{}", "c").unwrap(), "c");
    }
}
