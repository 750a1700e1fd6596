//! The contract between the metadata store's garbage collector and the
//! scheduler that decides when it runs (`io.containerd.gc.v1.scheduler`),
//! as containerd splits them: the collector knows what is reachable, the
//! scheduler knows when a collection is worth its pause.
//!
//! Both sides are plugins, so the contract is an internal gRPC service the
//! metadata plugin serves to its dependents only:
//! - [`COLLECT`]: run one collection now (serialised with any other,
//!   including those a `sync` delete runs itself), and say what it did;
//! - [`WATCH`]: a stream of [`MutationNotice`]s, one per committed change
//!   to the store (coalesced when the watcher is slow), which is what
//!   containerd's scheduler counts against `mutation_threshold` and
//!   `deletion_threshold`.

/// The internal service the metadata plugin serves.
pub const SERVICE: &str = "crated.gc.v1.Collector";
/// Unary: [`CollectRequest`] -> [`CollectResponse`].
pub const COLLECT: &str = "/crated.gc.v1.Collector/Collect";
/// Server streaming: [`WatchRequest`] -> stream of [`MutationNotice`].
pub const WATCH: &str = "/crated.gc.v1.Collector/Watch";

#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectRequest {}

/// What one collection did and how long it held the store.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CollectResponse {
    /// The whole collection, mark and sweep, in nanoseconds.
    #[prost(uint64, tag = "1")]
    pub duration_ns: u64,
    /// How long writers were blocked (the stop-the-world part).
    #[prost(uint64, tag = "2")]
    pub pause_ns: u64,
    /// Records and objects removed, by kind (`content`, `snapshots`,
    /// `leases`, `ingests`, ...).
    #[prost(map = "string, uint64", tag = "3")]
    pub removed: ::std::collections::HashMap<String, u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {}

/// Changes committed since the previous notice.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MutationNotice {
    /// Write transactions that changed something.
    #[prost(uint64, tag = "1")]
    pub mutations: u64,
    /// Of those, how many removed something a collection could free
    /// (an image, a lease, a container, a content or snapshot record).
    #[prost(uint64, tag = "2")]
    pub deletions: u64,
}
