//! Where the backing filesystem cannot hold an overlay, the overlayfs
//! snapshotter declines to load (`skip`, with the reason) and everything
//! else runs: native keeps serving snapshots. The root is made unsuitable
//! for real, by putting the daemon's root on an overlay mount (the kernel
//! refuses an overlay as another overlay's upper layer).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, stdout, Setup};

/// An overlay mounted at `target` for the test; unmounted (lazily if busy)
/// when dropped, also when the test fails.
struct OverlayMount(PathBuf);

impl OverlayMount {
    fn new(scratch: &Path, target: &Path) -> OverlayMount {
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir_all(scratch.join(d)).unwrap();
        }
        std::fs::create_dir_all(target).unwrap();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            scratch.join("lower").display(),
            scratch.join("upper").display(),
            scratch.join("work").display()
        );
        let out = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &data]).arg(target).output().unwrap();
        assert!(out.status.success(), "mount overlay at {}: {}", target.display(), stderr(&out));
        OverlayMount(target.to_path_buf())
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn overlayfs_skips_on_a_root_that_cannot_hold_an_overlay_and_native_serves() {
    let setup = Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "snapshots"]);
    // Declared before the daemon, so dropped after it: unmounted once the
    // daemon has let go of its files.
    let _mount = OverlayMount::new(&setup.path().join("scratch"), &setup.root());
    let d = setup.start();

    for (who, out) in [("our ctr", d.ctr(&["plugins", "ls"])), ("stock ctr", d.stock_ctr(&["plugins", "ls"]))] {
        assert!(out.status.success(), "{who}: {}", stderr(&out));
        let text = stdout(&out);
        let status = |id: &str| {
            text.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|c| c.first() == Some(&"io.containerd.snapshotter.v1") && c.get(1) == Some(&id))
                .and_then(|c| c.last().map(|s| s.to_string()))
        };
        assert_eq!(status("overlayfs").as_deref(), Some("skip"), "{who}:\n{text}");
        assert_eq!(status("native").as_deref(), Some("ok"), "{who}:\n{text}");
    }
    let detail = stdout(&d.ctr(&["plugins", "ls", "-d", "id==overlayfs"]));
    assert!(detail.contains("failed to mount overlay"), "the reason is shown:\n{detail}");

    // The snapshotter that did load works, and the skipped one is named as
    // not loaded.
    let ok = d.stock_ctr(&["snapshots", "--snapshotter", "native", "prepare", "a"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ls = d.stock_ctr(&["snapshots", "--snapshotter", "native", "ls"]);
    assert!(stdout(&ls).lines().any(|l| l.starts_with("a ")), "{}", stdout(&ls));
    let refused = d.stock_ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("snapshotter not loaded: overlayfs"), "{}", stderr(&refused));
}
