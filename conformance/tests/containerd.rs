//! Validates the suite against the reference: a stock containerd 1.6
//! (/usr/bin/containerd) on a temporary root, state and socket, with its
//! `overlayfs` and `native` snapshotters. Every case must pass, except the
//! ones listed below where containerd itself is wrong; the suite keeps
//! asserting the correct behaviour there, and a listed case that starts to
//! pass fails this test so the list cannot go stale.
//!
//! The daemon is stopped by its pid (the child we started) in a `Drop` guard,
//! so a failing assertion does not leave it running. Needs root (mounts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crated_snapshot_conformance::{assert_conforms, Target};

use crated_tests::stock::CONTAINERD;

/// Where containerd 1.6.20 deviates from the correct behaviour, by case.
///
/// containerd's namespaced Snapshots service wraps every snapshotter in its
/// metadata store, which does not implement Cleanup, so Cleanup answers
/// Unimplemented whatever the snapshotter can do; crated must clean up.
const CLEANUP_UNIMPLEMENTED: &str = "cleanup_succeeds";
/// The native snapshotter fails Commit of a view key with Unknown ("lstat
/// .../snapshots/N: no such file or directory") instead of refusing it with
/// FailedPrecondition as overlayfs does: it looks for an active directory
/// that a view of a committed parent never had.
const NATIVE_COMMIT_OF_VIEW: &str = "commit_of_non_active_refused";

const OVERLAYFS_DEVIATIONS: &[&str] = &[CLEANUP_UNIMPLEMENTED];
const NATIVE_DEVIATIONS: &[&str] = &[CLEANUP_UNIMPLEMENTED, NATIVE_COMMIT_OF_VIEW];

/// A stock containerd on a temporary root/state; stopped (by pid) and its
/// directory removed on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        assert!(Path::new(CONTAINERD).exists(), "this test needs containerd 1.6 installed as {CONTAINERD}");
        let dir = tempfile::Builder::new().prefix("conformance-containerd-").tempdir().unwrap().keep();
        let config = crated_tests::stock::containerd_config(&dir, "");
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(CONTAINERD)
            .arg("-c")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let daemon = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.socket().exists() {
            assert!(Instant::now() < deadline, "containerd did not start; log:\n{}", daemon.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn socket(&self) -> PathBuf {
        crated_tests::stock::containerd_socket(&self.dir)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn target(&self, snapshotter: &str) -> Target {
        Target {
            address: self.socket().display().to_string(),
            snapshotter: snapshotter.to_string(),
            namespace: "conformance".to_string(),
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg(&pid).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // containerd unmounts nothing of ours; its root holds only plain
        // directories once it has stopped.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_overlayfs_conforms() {
    let containerd = Containerd::start();
    assert_conforms(&containerd.target("overlayfs"), OVERLAYFS_DEVIATIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_native_conforms() {
    let containerd = Containerd::start();
    assert_conforms(&containerd.target("native"), NATIVE_DEVIATIONS).await;
}
