//! Where a shim listens, derived as containerd 1.6's `shim.SocketAddress`
//! does: `unix:///run/containerd/s/<hex sha256 of filepath.Join(daemon
//! address, namespace, id-or-group)>`. The socket directory is fixed (the
//! daemon's default state directory) whatever state directory the daemon
//! uses; the daemon's address in the hash keeps daemons apart. The shim
//! binds it; `ctr shim` finds a task's shim by it.

use sha2::{Digest, Sha256};

/// The directory of shim sockets.
pub const SOCKET_DIR: &str = "/run/containerd/s";

/// The socket address of the shim serving `group` (a container id, or
/// the group several containers share) for the daemon at
/// `daemon_address` in `namespace`.
pub fn socket_address(daemon_address: &str, namespace: &str, group: &str) -> String {
    let digest = Sha256::digest(go_path_join(&[daemon_address, namespace, group]).as_bytes());
    format!("unix://{SOCKET_DIR}/{}", hex::encode(digest))
}

/// Go's `filepath.Join`: the non-empty parts joined with `/`, then cleaned
/// as [`go_path_clean`] does; empty when every part is.
pub fn go_path_join(parts: &[&str]) -> String {
    let joined = parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/");
    if joined.is_empty() {
        return String::new();
    }
    go_path_clean(&joined)
}

/// Go's `path.Clean`: repeated slashes, `.` and `..` resolved lexically;
/// `.` for an empty result.
pub fn go_path_clean(path: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_is_sha256_of_the_cleaned_join() {
        let expected = hex::encode(Sha256::digest(b"/run/containerd/containerd.sock/default/c1"));
        assert_eq!(
            socket_address("/run/containerd//containerd.sock", "default", "c1"),
            format!("unix:///run/containerd/s/{expected}")
        );
        assert_eq!(socket_address("/a//b/", "ns", "id"), socket_address("/a/b", "ns", "id"));
        assert_ne!(socket_address("/a", "ns", "x"), socket_address("/a", "ns", "y"));
    }

    #[test]
    fn clean_and_join_match_go() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("a//b/./c/..", "a/b"),
            ("/../x", "/x"),
            ("../../x", "../../x"),
            ("a/../../b", "../b"),
            ("/a/b/../../..", "/"),
        ] {
            assert_eq!(go_path_clean(input), want, "{input}");
        }
        assert_eq!(go_path_join(&["/run/c.sock", "", "id"]), "/run/c.sock/id");
        assert_eq!(go_path_join(&["", ""]), "");
    }
}
