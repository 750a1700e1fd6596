//! Removing the cgroups a test's containers leave: runc removes a
//! container's own cgroup (`/<namespace>/<id>`, or `<parent>/<id>`) but
//! not the level above it, as under containerd, so a test that names that
//! level after itself removes it when it ends.

use std::path::{Path, PathBuf};

/// Removes `/sys/fs/cgroup[/<hierarchy>]/<name>` and the (empty) cgroups
/// directly below it, in every hierarchy (cgroup v1's controllers, or the
/// v2 root). A cgroup still holding a process stays.
pub fn remove(name: &str) {
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        return;
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut levels: Vec<PathBuf> = vec![root.join(name)];
    if let Ok(dirs) = std::fs::read_dir(root) {
        levels.extend(dirs.flatten().map(|e| e.path().join(name)));
    }
    for level in levels.iter().filter(|p| p.is_dir()) {
        if let Ok(children) = std::fs::read_dir(level) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(level);
    }
}
