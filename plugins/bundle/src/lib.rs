//! `libcrated_plugins.so`: every plugin this repository ships, exported
//! from one library.
//!
//! Why one library: a cdylib links its own copy of std, tokio, prost,
//! tonic's codecs, abi_stable and tracing, and starts its own tokio runtime.
//! With one library per plugin crate, eight libraries meant eight copies of
//! that code resident in the daemon (1.2 to 4 MB of PSS each, 21 MB of the
//! daemon's 31 MB at idle), eight runtimes (sixteen worker threads) and
//! eight ABI layout checks at start. Bundling costs no plugin boundary:
//! each plugin keeps its own registration, config table, root and state,
//! its own lane, and reaches the others only through the host, by the same
//! calls as before. Any of them can still be disabled, isolated
//! (`isolated_plugins`) or replaced by a third-party plugin of its type.
//! Measured in BENCHMARKS.md.
//!
//! The plugin crates are plain libraries (`rlib`) with their registration
//! types; this file is the only place they are exported.

use crated_plugin_api::snapshots::AsPlugin;

crated_plugin_api::export_plugins!(
    crated_plugin_content::ContentPlugin,
    crated_plugin_metadata::Metadata,
    crated_plugin_events::Events,
    AsPlugin<crated_plugin_snapshots::Overlay>,
    AsPlugin<crated_plugin_snapshots::Native>,
    crated_plugin_diff::WalkingDiff,
    crated_plugin_gc::Scheduler,
    crated_plugin_transfer::StreamManager,
    crated_plugin_transfer::LocalTransfer,
    crated_plugin_runtime::RuntimeTask,
    crated_plugin_runtime::Tasks,
    crated_plugin_runtime::TasksInternal,
    crated_plugin_cri::Cri,
);
