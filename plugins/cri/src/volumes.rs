//! Volumes an image declares (`Volumes` in its config), made for a
//! container as containerd 1.6's CRI plugin makes them.
//!
//! Each declared path that no CRI mount already covers gets a directory of
//! its own under the container's root (`volumes/<id>`), bind mounted at that
//! path like any CRI mount; before the container is created, whatever the
//! image has at that path is copied into it (owners, modes, times, xattrs,
//! links), so that a database image's `/var/lib/db` starts with the files
//! its layers put there, and writes go to the volume instead of the
//! container's writable layer. The directory goes with the container's
//! root when the container is removed. `ignore_image_defined_volumes`
//! turns it off.
//!
//! Why the snapshot is mounted for the copy: the image's content at a path
//! is the merged view of its layers (whiteouts, opaque directories, later
//! layers replacing earlier files), which only the overlay mount computes.
//! It is mounted read-only, as containerd does, so that unmounting never
//! syncs the filesystem, and the path is resolved inside the mount the way
//! continuity's `RootPath` does: a symlink in the image cannot make the copy
//! read the host's files.

use std::path::{Path, PathBuf};

use containerd_client::types::Mount as SnapshotMount;
use crated_plugin_api::mount::MountedDir;
use crated_plugin_api::Status;
use k8s_cri::v1::Mount;
use serde_json::Value;

use crate::container_spec::clean_path;

/// The mounts of the image's volumes for a container whose root directory
/// is `container_root` (`<root>/containers/<id>`): one per path of the
/// config's `Volumes` that `cri_mounts` does not mount already, absolute
/// (a relative path is taken from `/`), its host directory yet to be made.
pub fn image_volumes(image_config: &Value, cri_mounts: &[Mount], container_root: &Path) -> Vec<Mount> {
    let Some(declared) = image_config.pointer("/config/Volumes").and_then(Value::as_object) else {
        return Vec::new();
    };
    let covered: Vec<String> = cri_mounts.iter().map(|m| clean_path(&m.container_path)).collect();
    let mut paths: Vec<String> =
        declared.keys().filter(|p| !covered.contains(&clean_path(p))).map(|p| clean_path(&format!("/{p}"))).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Mount {
            container_path: p,
            host_path: container_root.join("volumes").join(crate::calls::generate_id()).display().to_string(),
            selinux_relabel: true,
            ..Default::default()
        })
        .collect()
}

/// Copies what the image has at each volume's path into the volume's host
/// directory (empty, made by the spec), from the container's snapshot
/// `mounts` mounted read-only under `scratch`. A path the image does not
/// have is left empty, as containerd leaves it. Blocking.
pub fn copy_image_contents(mounts: &[SnapshotMount], volumes: &[Mount], scratch: &Path) -> Result<(), Status> {
    if volumes.is_empty() {
        return Ok(());
    }
    let mut mounts = mounts.to_vec();
    for m in &mut mounts {
        m.options.retain(|o| o != "volatile");
    }
    if let [only] = mounts.as_mut_slice() {
        if only.r#type == "overlay" {
            only.options.push("ro".into());
        }
    }
    let rootfs = MountedDir::mount_all(scratch, &mounts)
        .map_err(|e| Status::internal(format!("failed to mount the rootfs to copy image volumes: {e}")))?;
    for v in volumes {
        let src = root_path(rootfs.path(), &v.container_path).map_err(|e| {
            Status::internal(format!("failed to resolve volume {:?} in the rootfs: {e}", v.container_path))
        })?;
        match std::fs::symlink_metadata(&src) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Status::internal(format!(
                    "failed to stat volume {:?} in the rootfs: {e}",
                    v.container_path
                )))
            }
        }
        let host = Path::new(&v.host_path);
        let empty = std::fs::read_dir(host)
            .map_err(|e| Status::internal(format!("failed to read volume directory {host:?}: {e}")))?
            .next()
            .is_none();
        if !empty {
            return Err(Status::internal(format!("volume at {host:?} is not initially empty")));
        }
        crated_plugin_snapshots::fsutil::copy_tree(&src, host)
            .map_err(|e| Status::internal(format!("taking runtime copy of volume {:?}: {e}", v.container_path)))?;
    }
    Ok(())
}

/// `path` inside `root`, its symlinks followed as if `root` were `/`: an
/// absolute link restarts at `root`, `..` stops at `root` (continuity's
/// `RootPath`). The last component is resolved too.
fn root_path(root: &Path, path: &str) -> std::io::Result<PathBuf> {
    // Each component still to walk, innermost last; a symlink's target is
    // pushed in front of what followed it.
    let mut todo: Vec<String> = path.split('/').rev().filter(|c| !c.is_empty()).map(str::to_string).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)).join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(std::io::Error::other(format!("too many levels of symbolic links in {path:?}")));
                }
                let target = std::fs::read_link(&candidate)?;
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    resolved.clear();
                }
                todo.extend(target.split('/').rev().filter(|c| !c.is_empty()).map(str::to_string));
            }
            _ => resolved.push(c),
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn declared_paths_not_under_cri_mounts_get_a_directory_each() {
        let config = json!({"config": {"Volumes": {"/var/lib/db": {}, "data/": {}, "/logs": {}}}});
        let cri = [Mount { container_path: "/logs/".into(), host_path: "/srv/logs".into(), ..Default::default() }];
        let v = image_volumes(&config, &cri, Path::new("/c/abc"));
        let paths: Vec<&str> = v.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(paths, ["/data", "/var/lib/db"]);
        for m in &v {
            assert!(m.host_path.starts_with("/c/abc/volumes/"), "{m:?}");
            assert!(m.selinux_relabel && !m.readonly, "{m:?}");
        }
        assert_ne!(v[0].host_path, v[1].host_path);
        assert!(image_volumes(&json!({"config": {}}), &[], Path::new("/c")).is_empty());
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("real/escape")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(root_path(root, "/abs/dir").unwrap(), root.join("real/dir"));
        assert_eq!(root_path(root, "/real/escape/passwd").unwrap(), root.join("etc/passwd"));
        assert_eq!(root_path(root, "/../../x").unwrap(), root.join("x"));
        assert!(root_path(root, "/loop").is_err());
    }
}
