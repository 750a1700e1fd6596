//! Where a shim listens, derived as containerd 1.6's `shim.SocketAddress`
//! does: `unix:///run/containerd/s/<hex sha256 of filepath.Join(daemon
//! address, namespace, id-or-group)>`. The socket directory is fixed (the
//! daemon's default state directory), whatever state directory the daemon
//! uses; the daemon's address in the hash keeps daemons apart. Also the
//! bundle files the start action writes (`address`), atomically as Go's
//! `WriteAddress` does.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The directory of shim sockets.
pub const SOCKET_DIR: &str = "/run/containerd/s";

/// The annotations that put containers into one shim, in order of
/// precedence.
pub const GROUP_LABELS: [&str; 2] = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"];

/// The socket address of the shim serving `group` for a daemon at
/// `daemon_address` in `namespace`.
pub fn socket_address(daemon_address: &str, namespace: &str, group: &str) -> String {
    let joined = clean_join(&[daemon_address, namespace, group]);
    let digest = Sha256::digest(joined.as_bytes());
    format!("unix://{SOCKET_DIR}/{}", hex::encode(digest))
}

/// The filesystem path of a `unix://` address (`None` for an abstract one).
pub fn socket_path(address: &str) -> Option<PathBuf> {
    address.strip_prefix("unix://").map(PathBuf::from)
}

/// Go's `filepath.Join`: the non-empty parts joined with `/`, then cleaned
/// (repeated slashes, `.` and `..` resolved lexically).
pub fn clean_join(parts: &[&str]) -> String {
    let joined = parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/");
    clean(&joined)
}

/// Go's `path.Clean`.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
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
    fn address_is_sha256_of_the_cleaned_join() {
        // sha256("/run/containerd/containerd.sock/default/c1")
        let expected = hex::encode(Sha256::digest(b"/run/containerd/containerd.sock/default/c1"));
        assert_eq!(
            socket_address("/run/containerd/containerd.sock", "default", "c1"),
            format!("unix:///run/containerd/s/{expected}")
        );
        assert_eq!(socket_address("/a//b/", "ns", "id"), socket_address("/a/b", "ns", "id"));
        assert_ne!(socket_address("/a", "ns", "x"), socket_address("/a", "ns", "y"));
    }

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("a//b/./c/..", "a/b"),
            ("/../x", "/x"),
            ("../../x", "../../x"),
            ("/a/b/../../..", "/"),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
        assert_eq!(clean_join(&["/run/c.sock", "", "id"]), "/run/c.sock/id");
    }

    #[test]
    fn group_from_annotations() {
        let spec = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod","io.containerd.runc.v2.group":"g"}}"#;
        assert_eq!(group_of(spec, "c").unwrap(), "g");
        assert_eq!(group_of(br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod"}}"#, "c").unwrap(), "pod");
        assert_eq!(group_of(b"{}", "c").unwrap(), "c");
    }
}
