//! The one Snapshots conformance suite (`conformance/`), run unchanged
//! against every snapshotter crated can serve: the bundled overlayfs and
//! native snapshotters, through the metadata plugin's namespaced Snapshots
//! service on the daemon's socket. The same suite passes against stock
//! containerd (`conformance/tests/containerd.rs`), which is how we know it
//! asks for containerd's behaviour. Needs root (it mounts what the
//! snapshotters return, and unmounts it even when a case fails).

mod common;

use common::Setup;
use crated_snapshot_conformance::{assert_conforms, Target};

/// The real plugins a snapshotter needs behind the socket.
const STACK: &[&str] = &["content", "metadata", "events", "snapshots"];

fn target(socket: &std::path::Path, snapshotter: &str) -> Target {
    Target {
        address: socket.display().to_string(),
        snapshotter: snapshotter.to_string(),
        namespace: "conformance".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlayfs_conforms() {
    let d = Setup::new(&[]).with_real_plugins(STACK).start();
    assert_conforms(&target(&d.socket(), "overlayfs"), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_conforms() {
    let d = Setup::new(&[]).with_real_plugins(STACK).start();
    assert_conforms(&target(&d.socket(), "native"), &[]).await;
}
