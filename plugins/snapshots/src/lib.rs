//! The bundled snapshotters, `io.containerd.snapshotter.v1.overlayfs` and
//! `io.containerd.snapshotter.v1.native`, in one crate (exported with the
//! other bundled plugins by `plugins/bundle`). Both are written against the
//! plugin-api `Snapshotter` trait, exactly as a third party would.
//!
//! - [`storage`]: the metadata of snapshots (redb, `metadata.db`) and the
//!   crate's error type.
//! - [`layout`]: the operations both share, and their crash safety.
//! - [`overlay`], [`native`]: the two layouts.
//! - [`fsutil`]: usage, tree copy, careful removal.

pub mod fsutil;
pub mod layout;
pub mod native;
pub mod overlay;
pub mod storage;

pub use native::{Native, NativeLayout};
pub use overlay::{Overlay, OverlayLayout};
pub use storage::SnapshotError;
