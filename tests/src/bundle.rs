//! The bundled plugins' library (`plugins/bundle`, `libcrated_plugins.so`)
//! as the tests use it: a test names the plugin crates it wants
//! (`plugins/<name>`), gets the one library, and every other bundled plugin
//! is disabled by config.

/// The file name of the bundled plugins' library.
pub const LIBRARY: &str = "libcrated_plugins.so";

/// Each plugin crate of `plugins/` and the plugins (`type.id`) it registers.
pub const CRATES: &[(&str, &[&str])] = &[
    ("content", &["io.containerd.content.v1.content"]),
    ("metadata", &["io.containerd.metadata.v1.redb"]),
    ("events", &["io.containerd.event.v1.exchange"]),
    ("snapshots", &["io.containerd.snapshotter.v1.overlayfs", "io.containerd.snapshotter.v1.native"]),
    ("diff", &["io.containerd.differ.v1.walking"]),
    ("gc", &["io.containerd.gc.v1.scheduler"]),
    ("transfer", &["io.containerd.streaming.v1.manager", "io.containerd.transfer.v1.local"]),
    (
        "runtime",
        &["io.containerd.runtime.v2.task", "io.containerd.grpc.v1.tasks", "io.containerd.service.v1.tasks-service"],
    ),
    ("cri", &["io.containerd.grpc.v1.cri"]),
];

/// Every plugin crate's name.
pub fn crates() -> Vec<String> {
    CRATES.iter().map(|(name, _)| name.to_string()).collect()
}

/// The bundled plugins to disable so that only those of `wanted` crates
/// run. Panics on a name that is not a plugin crate.
pub fn disabled_except<S: AsRef<str>>(wanted: &[S]) -> Vec<String> {
    for w in wanted {
        assert!(CRATES.iter().any(|(name, _)| *name == w.as_ref()), "no plugin crate is named {:?}", w.as_ref());
    }
    CRATES
        .iter()
        .filter(|(name, _)| !wanted.iter().any(|w| w.as_ref() == *name))
        .flat_map(|(_, keys)| keys.iter().map(|k| k.to_string()))
        .collect()
}
