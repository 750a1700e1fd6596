//! `io.containerd.snapshotter.v1.overlayfs`: each snapshot is an overlay
//! upper directory, `snapshots/<id>/fs` (+ `work` for active ones), stacked
//! on its parents' `fs` directories as lower layers. Mounts are containerd
//! 1.6's, option for option.

use std::{
    fs, io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crated_plugin_api::{
    snapshots::{Kind, Mount, SnapshotterPlugin},
    InitCtx, PluginError,
};
use rustix::{
    fs::{Dir, FileType, Mode, OFlags, CWD},
    mount::{MountFlags, UnmountFlags},
};

use crate::{
    fsutil,
    layout::{Dirs, Layout, Snapshots},
    storage::Snapshot,
};

/// The overlayfs snapshotter.
pub type Overlay = Snapshots<OverlayLayout>;

/// How overlay snapshots are laid out and mounted.
pub struct OverlayLayout {
    /// `index=off` on every overlay mount, where the kernel has the option
    /// (containerd checks `/sys/module/overlay/parameters/index`).
    pub index_off: bool,
    /// `userxattr` on every overlay mount (rootless, see [`needs_userxattr`]).
    pub userxattr: bool,
}

impl OverlayLayout {
    /// The options this kernel and root need, as containerd detects them.
    pub fn detect(root: &Path) -> OverlayLayout {
        OverlayLayout {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            userxattr: needs_userxattr(root),
        }
    }
}

fn upper(dir: &Path) -> PathBuf {
    dir.join("fs")
}

impl Layout for OverlayLayout {
    fn mounts_context(&self) -> &'static str {
        "failed to get active mount"
    }

    fn has_dir(&self, _: Kind, _: &[u64]) -> bool {
        true
    }

    fn populate(&self, dir: &Path, kind: Kind, parents: &[PathBuf]) -> io::Result<()> {
        let mkdir =
            |p: &Path, mode| fs::create_dir(p).and_then(|()| fs::set_permissions(p, fs::Permissions::from_mode(mode)));
        mkdir(&upper(dir), 0o755)?;
        if kind == Kind::Active {
            mkdir(&dir.join("work"), 0o711)?;
        }
        // The upper directory is the root of the merged tree: it takes the
        // owner of the closest parent's root (containerd does the same).
        if let Some(p) = parents.first() {
            let m = fs::metadata(upper(p))?;
            std::os::unix::fs::lchown(upper(dir), Some(m.uid()), Some(m.gid()))?;
        }
        Ok(())
    }

    fn usage_path(&self, dir: &Path) -> PathBuf {
        upper(dir)
    }

    fn mounts(&self, dirs: &Dirs, s: &Snapshot) -> Vec<Mount> {
        let path = |id: u64| upper(&dirs.of(id)).to_string_lossy().into_owned();
        let ro_rw = if s.kind == Kind::View { "ro" } else { "rw" };
        let bind = |source: String, flag: &str| Mount {
            r#type: "bind".into(),
            source,
            options: vec![flag.into(), "rbind".into()],
            ..Default::default()
        };
        // No parent: overlay would have no lower layer, so a bind mount.
        if s.parent_ids.is_empty() {
            return vec![bind(path(s.id), ro_rw)];
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if self.userxattr {
            options.push("userxattr".to_string());
        }
        if s.kind == Kind::Active {
            options.push(format!("workdir={}", dirs.of(s.id).join("work").display()));
            options.push(format!("upperdir={}", path(s.id)));
        } else if s.parent_ids.len() == 1 {
            // A view of one layer is that layer, read-only.
            return vec![bind(path(s.parent_ids[0]), "ro")];
        }
        let lower: Vec<String> = s.parent_ids.iter().map(|id| path(*id)).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount { r#type: "overlay".into(), source: "overlay".into(), options, ..Default::default() }]
    }
}

impl SnapshotterPlugin for Overlay {
    const ID: &'static str = "overlayfs";

    async fn new(ctx: InitCtx) -> Result<Self, PluginError> {
        let root = ctx.root.clone();
        tokio::task::spawn_blocking(move || {
            supported(&root).map_err(PluginError::skip)?;
            Overlay::open(&root, OverlayLayout::detect(&root)).map_err(PluginError::failed)
        })
        .await
        .map_err(PluginError::failed)?
    }
}

/// Whether the filesystem under `root` can hold overlay layers: it reports
/// file types in directory entries (d_type; overlayfs needs them), and a
/// small overlay with two lower layers mounts in a scratch directory under
/// `root`. The reason is returned when not.
pub fn supported(root: &Path) -> Result<(), String> {
    fs::create_dir_all(root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let scratch = root.join(fsutil::unique_name("overlay-check"));
    fs::create_dir(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let result = check_in(root, &scratch);
    if let Err(e) = fsutil::remove_tree(&scratch) {
        crated_plugin_api::tracing::warn!(path = %scratch.display(), error = %e, "failed to remove check directory");
    }
    result
}

fn check_in(root: &Path, scratch: &Path) -> Result<(), String> {
    fn io<'a>(what: &'a str, p: &'a Path) -> impl Fn(io::Error) -> String + 'a {
        move |e| format!("{what} {}: {e}", p.display())
    }
    // d_type: a directory entry of a regular file must say so.
    fs::write(scratch.join("f"), b"").map_err(io("create", scratch))?;
    let fd = rustix::fs::openat(CWD, scratch, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io("open", scratch)(e.into()))?;
    let dir = Dir::new(fd).map_err(|e| io("read", scratch)(e.into()))?;
    for entry in dir {
        let entry = entry.map_err(|e| io("read", scratch)(e.into()))?;
        if entry.file_name().to_bytes() == b"f" && entry.file_type() == FileType::Unknown {
            return Err(format!(
                "{} does not support d_type. If the backing filesystem is xfs, please reformat with ftype=1 to \
                 enable d_type support",
                root.display()
            ));
        }
    }
    // A real overlay mount, with two lower layers.
    for d in ["lower1", "lower2", "upper", "work", "merged"] {
        fs::create_dir(scratch.join(d)).map_err(io("create", scratch))?;
    }
    let data = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        scratch.join("lower2").display(),
        scratch.join("lower1").display(),
        scratch.join("upper").display(),
        scratch.join("work").display()
    );
    mount_overlay(&scratch.join("merged"), &data).map_err(|e| format!("failed to mount overlay: {e}"))
}

/// Mounts an overlay with `data` at `target` and unmounts it again.
///
/// Why `volatile` first: unmounting an overlay with an upper layer syncs the
/// whole backing filesystem, on the daemon's start-up path (0.16 s was seen
/// once, and it grows with the machine's dirty pages). A volatile overlay
/// skips that sync, and nothing written to this scratch mount needs to
/// reach the disk.
/// Kernels before 5.10 do not know the option; they get the plain mount.
fn mount_overlay(target: &Path, data: &str) -> io::Result<()> {
    let volatile = std::ffi::CString::new(format!("{data},volatile")).map_err(io::Error::other)?;
    let plain = std::ffi::CString::new(data).map_err(io::Error::other)?;
    rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), volatile.as_c_str())
        .or_else(|_| rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), plain.as_c_str()))?;
    rustix::mount::unmount(target, UnmountFlags::empty())
        .or_else(|_| rustix::mount::unmount(target, UnmountFlags::DETACH))?;
    Ok(())
}

/// Whether overlay mounts need `userxattr`, as containerd decides it: only
/// inside a user namespace (rootless), never on tmpfs (which refuses the
/// option), always from kernel 5.11 on, and before that where a test mount
/// with the option works (kernels with the backported patch).
pub fn needs_userxattr(root: &Path) -> bool {
    if !in_user_namespace() {
        return false;
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    if rustix::fs::statfs(root).is_ok_and(|s| s.f_type == TMPFS_MAGIC) {
        return false;
    }
    if kernel_at_least(5, 11) {
        return true;
    }
    let scratch = root.join(fsutil::unique_name("userxattr-check"));
    let works = (|| -> io::Result<()> {
        for d in ["lower1", "lower2", "upper", "work", "merged"] {
            fs::create_dir_all(scratch.join(d))?;
        }
        let data = format!(
            "ro,lowerdir={}:{},upperdir={},workdir={},userxattr",
            scratch.join("lower2").display(),
            scratch.join("lower1").display(),
            scratch.join("upper").display(),
            scratch.join("work").display()
        );
        mount_overlay(&scratch.join("merged"), &data)
    })()
    .is_ok();
    let _ = fsutil::remove_tree(&scratch);
    works
}

/// Whether this process runs in a user namespace other than the initial one
/// (whose uid_map is the whole range, `0 0 4294967295`).
fn in_user_namespace() -> bool {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"],
        Err(_) => false,
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Dirs {
        // Only paths are built; nothing is touched.
        crate::layout::test_dirs(Path::new("/r/snapshots"))
    }

    #[test]
    fn mounts_are_containerds() {
        let l = OverlayLayout { index_off: true, userxattr: false };
        let m = l.mounts(&dirs(), &Snapshot { id: 1, kind: Kind::Active, parent_ids: vec![] });
        assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("bind", "/r/snapshots/1/fs"));
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let m = l.mounts(&dirs(), &Snapshot { id: 2, kind: Kind::View, parent_ids: vec![] });
        assert_eq!(
            (m[0].source.as_str(), m[0].options.clone()),
            ("/r/snapshots/2/fs", vec!["ro".into(), "rbind".into()])
        );
        let m = l.mounts(&dirs(), &Snapshot { id: 3, kind: Kind::View, parent_ids: vec![1] });
        assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("bind", "/r/snapshots/1/fs"));
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = l.mounts(&dirs(), &Snapshot { id: 4, kind: Kind::Active, parent_ids: vec![3, 1] });
        assert_eq!((m[0].r#type.as_str(), m[0].source.as_str()), ("overlay", "overlay"));
        assert_eq!(
            m[0].options,
            [
                "index=off",
                "workdir=/r/snapshots/4/work",
                "upperdir=/r/snapshots/4/fs",
                "lowerdir=/r/snapshots/3/fs:/r/snapshots/1/fs"
            ]
        );
        let l = OverlayLayout { index_off: false, userxattr: true };
        let m = l.mounts(&dirs(), &Snapshot { id: 5, kind: Kind::View, parent_ids: vec![3, 1] });
        assert_eq!(m[0].options, ["userxattr", "lowerdir=/r/snapshots/3/fs:/r/snapshots/1/fs"]);
    }

    #[test]
    fn kernel_version_is_read() {
        assert!(kernel_at_least(2, 6));
        assert!(!kernel_at_least(999, 0));
    }
}
