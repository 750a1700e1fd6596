//! `io.containerd.snapshotter.v1.native`: each snapshot is a full copy of
//! its parent's tree, `snapshots/<id>` (containerd's layout: no `fs`
//! subdirectory). Works on any filesystem; costs a copy per layer.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crated_plugin_api::{
    snapshots::{Kind, Mount, SnapshotterPlugin},
    InitCtx, PluginError,
};

use crate::{
    fsutil,
    layout::{Dirs, Layout, Snapshots},
    storage::Snapshot,
};

/// The native snapshotter.
pub type Native = Snapshots<NativeLayout>;

/// How native snapshots are laid out and mounted.
pub struct NativeLayout;

impl Layout for NativeLayout {
    fn mounts_context(&self) -> &'static str {
        "failed to get snapshot mount"
    }

    /// A view of a committed parent is that parent's directory, read-only;
    /// only active snapshots and views of nothing get a directory.
    fn has_dir(&self, kind: Kind, parent_ids: &[u64]) -> bool {
        kind == Kind::Active || parent_ids.is_empty()
    }

    fn populate(&self, dir: &Path, _: Kind, parents: &[PathBuf]) -> io::Result<()> {
        match parents.first() {
            Some(parent) => fsutil::copy_tree(parent, dir),
            None => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)),
        }
    }

    fn usage_path(&self, dir: &Path) -> PathBuf {
        dir.to_path_buf()
    }

    fn mounts(&self, dirs: &Dirs, s: &Snapshot) -> Vec<Mount> {
        let source = match s.parent_ids.first() {
            Some(parent) if s.kind != Kind::Active => dirs.of(*parent),
            _ => dirs.of(s.id),
        };
        let flag = if s.kind == Kind::View { "ro" } else { "rw" };
        // containerd 1.6's native snapshotter puts `rbind` first (its
        // overlay snapshotter puts it last).
        vec![Mount {
            r#type: "bind".into(),
            source: source.to_string_lossy().into_owned(),
            options: vec!["rbind".into(), flag.into()],
            ..Default::default()
        }]
    }
}

impl SnapshotterPlugin for Native {
    const ID: &'static str = "native";

    async fn new(ctx: InitCtx) -> Result<Self, PluginError> {
        let root = ctx.root.clone();
        tokio::task::spawn_blocking(move || Native::open(&root, NativeLayout).map_err(PluginError::failed))
            .await
            .map_err(PluginError::failed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_containerds() {
        let dirs = crate::layout::test_dirs(Path::new("/r/snapshots"));
        let m = |id, kind, parent_ids: Vec<u64>| NativeLayout.mounts(&dirs, &Snapshot { id, kind, parent_ids });
        let active = m(2, Kind::Active, vec![1]);
        assert_eq!((active[0].r#type.as_str(), active[0].source.as_str()), ("bind", "/r/snapshots/2"));
        assert_eq!(active[0].options, ["rbind", "rw"]);
        let view = m(3, Kind::View, vec![2, 1]);
        assert_eq!(
            (view[0].source.as_str(), view[0].options.clone()),
            ("/r/snapshots/2", vec!["rbind".into(), "ro".into()])
        );
        let empty_view = m(4, Kind::View, vec![]);
        assert_eq!(empty_view[0].source, "/r/snapshots/4");
        assert!(!NativeLayout.has_dir(Kind::View, &[1]));
        assert!(NativeLayout.has_dir(Kind::View, &[]));
        assert!(NativeLayout.has_dir(Kind::Active, &[1]));
    }
}
