//! Both snapshotters called through the `Snapshotter` trait, with their
//! mounts mounted for real (bind and overlay, by the mount syscall), on a
//! temporary root. Needs root (as containerd's own snapshotter tests do).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crated_plugin_api::{
    snapshots::{Kind, Mount, Snapshotter, Usage},
    Code, Status,
};
use crated_plugin_snapshots::{overlay, Native, NativeLayout, Overlay, OverlayLayout, SnapshotError};
use rustix::mount::{MountFlags, UnmountFlags};

/// The mounts of a snapshot, mounted at a fresh directory; unmounted on
/// drop, also when the test panics.
struct Mounted {
    target: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn new(mounts: &[Mount]) -> Mounted {
        assert_eq!(mounts.len(), 1, "one mount expected: {mounts:?}");
        let m = &mounts[0];
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m");
        fs::create_dir(&target).unwrap();
        match m.r#type.as_str() {
            "bind" => {
                assert!(m.options.iter().any(|o| o == "rbind"), "{:?}", m.options);
                rustix::mount::mount_bind_recursive(m.source.as_str(), &target).unwrap();
                let guard = Mounted { target, _dir: dir };
                if m.options.iter().any(|o| o == "ro") {
                    rustix::mount::mount_remount(&guard.target, MountFlags::BIND | MountFlags::RDONLY, "").unwrap();
                }
                guard
            }
            "overlay" => {
                let data = std::ffi::CString::new(m.options.join(",")).unwrap();
                rustix::mount::mount(m.source.as_str(), &target, "overlay", MountFlags::empty(), data.as_c_str())
                    .unwrap();
                Mounted { target, _dir: dir }
            }
            other => panic!("unexpected mount type {other}"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.target, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(&self.target, UnmountFlags::DETACH);
        }
    }
}

fn code(e: SnapshotError) -> Code {
    Status::from(e).code
}

fn no_labels() -> HashMap<String, String> {
    HashMap::new()
}

/// What containerd's usage counts for `paths` (each once): allocated blocks.
fn expected_usage(paths: &[PathBuf]) -> Usage {
    let size = paths.iter().map(|p| fs::symlink_metadata(p).unwrap().blocks() as i64 * 512).sum();
    Usage { size, inodes: paths.len() as i64 }
}

/// Every entry name under `<root>/snapshots`, sorted.
fn snapshot_dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(root.join("snapshots")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// Writes the first layer: a file, a hard link to it, a directory with a
/// file, a symlink. Returns the paths relative to the snapshot root.
fn write_base(m: &Mounted) {
    fs::write(m.path("f1"), vec![7u8; 10_000]).unwrap();
    fs::hard_link(m.path("f1"), m.path("f1-link")).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/x"), b"x").unwrap();
    std::os::unix::fs::symlink("f1", m.path("sym")).unwrap();
}

fn overlay(root: &Path) -> Overlay {
    overlay::supported(root).expect("the test root must support overlayfs");
    Overlay::open(root, OverlayLayout::detect(root)).unwrap()
}

#[tokio::test]
async fn overlay_layers_mount_commit_whiteout_view_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("io.containerd.snapshotter.v1.overlayfs");
    let s = overlay(&root);
    // The support check left nothing behind.
    let mut top: Vec<String> =
        fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    top.sort();
    assert_eq!(top, ["metadata.db", "snapshots"]);

    let mounts = s.prepare("a", "", no_labels()).await.unwrap();
    assert_eq!(mounts[0].r#type, "bind");
    assert_eq!(mounts[0].options, ["rw", "rbind"]);
    assert_eq!(s.mounts("a").await.unwrap(), mounts);
    {
        let m = Mounted::new(&mounts);
        write_base(&m);
    }
    let upper = root.join("snapshots/1/fs");
    let base_files: Vec<PathBuf> = ["", "f1", "d", "d/x", "sym"].iter().map(|p| upper.join(p)).collect();
    let expected = expected_usage(&base_files);
    assert_eq!(expected.inodes, 5);
    assert!(expected.size >= 10_000);
    assert_eq!(s.usage("a").await.unwrap(), expected);
    s.commit("base", "a", no_labels()).await.unwrap();
    assert_eq!(s.stat("base").await.unwrap().kind, Kind::Committed as i32);
    assert_eq!(s.usage("base").await.unwrap(), expected, "committed usage is the one stored at commit");

    // A child sees the parent's files; deleting one leaves a whiteout.
    let mounts = s.prepare("b", "base", no_labels()).await.unwrap();
    assert_eq!(mounts[0].r#type, "overlay");
    assert_eq!(mounts[0].options.last().unwrap(), &format!("lowerdir={}", upper.display()));
    {
        let m = Mounted::new(&mounts);
        assert_eq!(fs::read(m.path("f1")).unwrap(), vec![7u8; 10_000]);
        assert_eq!(fs::read_link(m.path("sym")).unwrap(), Path::new("f1"));
        fs::remove_file(m.path("d/x")).unwrap();
        fs::write(m.path("g"), b"new in b").unwrap();
    }
    let upper_b = root.join("snapshots/2/fs");
    let whiteout = fs::symlink_metadata(upper_b.join("d/x")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0, "d/x is an overlay whiteout");
    assert!(!upper_b.join("f1").exists(), "untouched files stay in the lower layer");
    s.commit("layer2", "b", no_labels()).await.unwrap();

    // A view of two layers: overlay with lower layers only, read-only.
    let mounts = s.view("v", "layer2", no_labels()).await.unwrap();
    assert_eq!(mounts[0].r#type, "overlay");
    assert!(!mounts[0].options.iter().any(|o| o.starts_with("upperdir=") || o.starts_with("workdir=")));
    assert_eq!(mounts[0].options.last().unwrap(), &format!("lowerdir={}:{}", upper_b.display(), upper.display()));
    {
        let m = Mounted::new(&mounts);
        assert_eq!(fs::read(m.path("g")).unwrap(), b"new in b");
        assert!(m.path("f1").exists());
        assert!(!m.path("d/x").exists(), "the whiteout hides d/x");
        assert!(fs::write(m.path("new"), b"").is_err(), "a view is read-only");
    }
    assert_eq!(s.usage("v").await.unwrap(), Usage::default());
    // A view of one layer is a read-only bind of it.
    let mounts = s.view("v1", "base", no_labels()).await.unwrap();
    assert_eq!((mounts[0].r#type.as_str(), mounts[0].source.as_str()), ("bind", upper.to_str().unwrap()));
    assert_eq!(mounts[0].options, ["ro", "rbind"]);
    {
        let m = Mounted::new(&mounts);
        assert!(m.path("d/x").exists());
        assert!(fs::write(m.path("new"), b"").is_err());
    }

    // Removal rules, then everything goes and leaves no directory.
    assert_eq!(code(s.remove("base").await.unwrap_err()), Code::FailedPrecondition);
    assert!(upper.join("f1").exists(), "a refused removal changes nothing");
    for k in ["v", "v1", "layer2", "base"] {
        s.remove(k).await.unwrap();
    }
    assert!(s.list().await.unwrap().is_empty());
    assert!(snapshot_dirs(&root).is_empty(), "left: {:?}", snapshot_dirs(&root));
}

#[tokio::test]
async fn overlay_failed_prepare_leaves_nothing_and_left_overs_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("overlay");
    let s = overlay(&root);
    s.prepare("a", "", no_labels()).await.unwrap();
    s.commit("base", "a", no_labels()).await.unwrap();
    // Errors: the parent is not committed, the key is taken.
    s.prepare("act", "", no_labels()).await.unwrap();
    assert_eq!(code(s.prepare("x", "act", no_labels()).await.unwrap_err()), Code::InvalidArgument);
    assert_eq!(code(s.prepare("x", "nope", no_labels()).await.unwrap_err()), Code::NotFound);
    assert_eq!(code(s.prepare("act", "", no_labels()).await.unwrap_err()), Code::AlreadyExists);
    assert_eq!(code(s.commit("base", "act", no_labels()).await.unwrap_err()), Code::AlreadyExists);
    assert_eq!(snapshot_dirs(&root), ["1", "2"]);

    // A prepare that fails halfway (the parent's layer is gone from disk)
    // removes its directory and records nothing.
    fs::rename(root.join("snapshots/1/fs"), dir.path().join("stolen")).unwrap();
    let e = s.prepare("child", "base", no_labels()).await.unwrap_err();
    assert_eq!(code(e), Code::Unknown);
    assert_eq!(code(s.stat("child").await.unwrap_err()), Code::NotFound);
    assert_eq!(snapshot_dirs(&root), ["1", "2"]);
    fs::rename(dir.path().join("stolen"), root.join("snapshots/1/fs")).unwrap();

    // Left-overs of a crash: a temporary directory, a directory with an id
    // no record has, and the directory of the id the next create takes
    // (killed between its rename and its commit).
    for orphan in ["new-crashed/fs", "77/fs", "3/fs"] {
        let p = root.join("snapshots").join(orphan);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("old-file"), b"old").unwrap();
    }
    // The next create takes id 3 and gets a fresh directory.
    s.prepare("c", "base", no_labels()).await.unwrap();
    assert_eq!(fs::read_dir(root.join("snapshots/3/fs")).unwrap().count(), 0);
    s.cleanup().await.unwrap();
    assert_eq!(snapshot_dirs(&root), ["1", "2", "3"]);
    // Cleanup kept every recorded snapshot's data.
    assert_eq!(s.list().await.unwrap().len(), 3);
    assert!(root.join("snapshots/3/work").is_dir());
}

/// Unmounts every mount under a directory on drop (they may have moved
/// with a rename of their parent).
struct UnmountUnder(PathBuf);

impl Drop for UnmountUnder {
    fn drop(&mut self) {
        for m in crated_plugin_snapshots::fsutil::mounts_under(&self.0).unwrap_or_default().iter().rev() {
            let _ = rustix::mount::unmount(m, UnmountFlags::DETACH);
        }
    }
}

#[tokio::test]
async fn cleanup_never_removes_through_a_mount() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("native");
    let s = Native::open(&root, NativeLayout).unwrap();
    // An unrecorded directory with a host directory mounted inside it.
    let precious = dir.path().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("keep"), b"keep").unwrap();
    let orphan = root.join("snapshots/42/mnt");
    fs::create_dir_all(&orphan).unwrap();
    let guard = UnmountUnder(root.clone());
    rustix::mount::mount_bind(&precious, &orphan).unwrap();
    s.cleanup().await.unwrap();
    assert!(precious.join("keep").exists(), "cleanup deleted through a mount");
    assert_eq!(snapshot_dirs(&root).len(), 1, "the orphan stays while mounted");
    drop(guard);
    // Unmounted, the next cleanup removes it.
    s.cleanup().await.unwrap();
    assert!(snapshot_dirs(&root).is_empty());
    assert!(precious.join("keep").exists());
}

#[tokio::test]
async fn native_copies_the_parent_tree_and_binds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("io.containerd.snapshotter.v1.native");
    let s = Native::open(&root, NativeLayout).unwrap();

    let mounts = s.prepare("a", "", no_labels()).await.unwrap();
    assert_eq!(mounts[0].r#type, "bind");
    assert_eq!(mounts[0].source, root.join("snapshots/1").to_str().unwrap());
    assert_eq!(mounts[0].options, ["rbind", "rw"]);
    {
        let m = Mounted::new(&mounts);
        write_base(&m);
        let f = m.path("f1");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
        std::os::unix::fs::lchown(&f, Some(1234), Some(5678)).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
        std::os::unix::fs::lchown(m.path("sym"), Some(42), Some(43)).unwrap();
        rustix::fs::lsetxattr(&f, "user.crated", b"value", rustix::fs::XattrFlags::empty()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.path("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.path("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let old = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 1_000_000, tv_nsec: 5 },
            last_modification: rustix::fs::Timespec { tv_sec: 2_000_000, tv_nsec: 7 },
        };
        rustix::fs::utimensat(rustix::fs::CWD, m.path("d/x"), &old, rustix::fs::AtFlags::empty()).unwrap();
        rustix::fs::utimensat(rustix::fs::CWD, m.path("d"), &old, rustix::fs::AtFlags::empty()).unwrap();
    }
    let a_dir = root.join("snapshots/1");
    let expected = expected_usage(
        &["", "f1", "d", "d/x", "sym", "null", "fifo"].iter().map(|p| a_dir.join(p)).collect::<Vec<_>>(),
    );
    assert_eq!(s.usage("a").await.unwrap(), expected);
    s.commit("base", "a", no_labels()).await.unwrap();
    assert_eq!(s.usage("base").await.unwrap(), expected);

    let mounts = s.prepare("b", "base", no_labels()).await.unwrap();
    assert_eq!(mounts[0].source, root.join("snapshots/2").to_str().unwrap());
    let b_dir = root.join("snapshots/2");
    let (src, dst) = (fs::symlink_metadata(a_dir.join("f1")).unwrap(), fs::symlink_metadata(b_dir.join("f1")).unwrap());
    assert_eq!((dst.mode(), dst.uid(), dst.gid()), (src.mode(), 1234, 5678));
    assert_eq!(dst.mode() & 0o7777, 0o4751);
    assert_ne!(dst.ino(), src.ino(), "a copy, not a link to the parent");
    assert_eq!(fs::symlink_metadata(b_dir.join("f1-link")).unwrap().ino(), dst.ino(), "hard links stay linked");
    let mut value = [0u8; 16];
    let n = rustix::fs::lgetxattr(b_dir.join("f1"), "user.crated", &mut value[..]).unwrap();
    assert_eq!(&value[..n], b"value");
    let sym = fs::symlink_metadata(b_dir.join("sym")).unwrap();
    assert!(sym.file_type().is_symlink());
    assert_eq!((sym.uid(), sym.gid()), (42, 43));
    assert_eq!(fs::read_link(b_dir.join("sym")).unwrap(), Path::new("f1"));
    let null = fs::symlink_metadata(b_dir.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(fs::symlink_metadata(b_dir.join("fifo")).unwrap().file_type().is_fifo());
    // Times (a directory's atime changes whenever it is listed: only mtime).
    let x = fs::symlink_metadata(b_dir.join("d/x")).unwrap();
    assert_eq!((x.mtime(), x.mtime_nsec(), x.atime(), x.atime_nsec()), (2_000_000, 7, 1_000_000, 5));
    let d = fs::symlink_metadata(b_dir.join("d")).unwrap();
    assert_eq!((d.mtime(), d.mtime_nsec()), (2_000_000, 7));
    let root_meta = (fs::metadata(&a_dir).unwrap(), fs::metadata(&b_dir).unwrap());
    assert_eq!(root_meta.0.mode(), root_meta.1.mode());
    {
        let m = Mounted::new(&mounts);
        fs::remove_file(m.path("d/x")).unwrap();
    }
    assert!(a_dir.join("d/x").exists(), "the parent is untouched by its child");
    s.commit("layer2", "b", no_labels()).await.unwrap();

    // A view of a parent binds the parent read-only and makes no directory.
    let mounts = s.view("v", "layer2", no_labels()).await.unwrap();
    assert_eq!(mounts[0].source, b_dir.to_str().unwrap());
    assert_eq!(mounts[0].options, ["rbind", "ro"]);
    {
        let m = Mounted::new(&mounts);
        assert!(!m.path("d/x").exists());
        assert!(m.path("f1").exists());
        assert!(fs::write(m.path("new"), b"").is_err(), "a view is read-only");
    }
    assert_eq!(snapshot_dirs(&root), ["1", "2"]);
    assert_eq!(code(s.commit("c", "v", no_labels()).await.unwrap_err()), Code::FailedPrecondition);
    assert_eq!(code(s.mounts("layer2").await.unwrap_err()), Code::FailedPrecondition);

    // Cleanup removes an orphan and keeps recorded snapshots.
    fs::create_dir_all(root.join("snapshots/9/etc")).unwrap();
    s.cleanup().await.unwrap();
    assert_eq!(snapshot_dirs(&root), ["1", "2"]);

    assert_eq!(code(s.remove("base").await.unwrap_err()), Code::FailedPrecondition);
    for k in ["v", "layer2", "base"] {
        s.remove(k).await.unwrap();
    }
    assert!(snapshot_dirs(&root).is_empty());
}
