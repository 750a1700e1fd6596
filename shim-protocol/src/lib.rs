//! containerd's shim v2 protocol, written over prost.
//!
//! A shim and its daemon talk ttrpc: containerd's small request/response
//! protocol on a unix socket, protobuf messages in 10-byte-headed frames. The
//! `ttrpc` crate and `containerd-shim-protos` implement it over rust-protobuf,
//! a second protobuf runtime beside the prost that every crated library
//! already carries; the framing is small enough to own instead (design notes,
//! "Facts for the runtime"). This crate is shared by the one place in the
//! daemon that speaks to shims (the runtime plugin) and by the project's own
//! shim binary, and by nothing else: it depends on prost and a tokio without
//! a scheduler of its own choosing, so a shim can run it on a current-thread
//! runtime.
//!
//! - [`ttrpc`]: frames, the [`ttrpc::Client`] (many calls in flight on one
//!   connection) and the [`ttrpc::Server`] (handlers by service name).
//! - [`task`]: the `containerd.task.v2.Task` messages and a typed client.
//! - [`types`]: the shared types (mounts, process status, event envelopes)
//!   and the `/tasks/*` events a shim publishes.
//! - [`runc`]: the runc shim's option messages (`containerd.runc.v1`).
//! - [`address`]: where a shim listens (containerd 1.6's socket address).
//! - [`cgroups`]: the cgroup metrics a shim's `Stats` answers.
//! - [`mount`]: applying containerd's mounts (a task's rootfs).

pub mod address;
pub mod cgroups;
pub mod mount;
pub mod oci;
pub mod runc;
pub mod task;
pub mod ttrpc;
pub mod types;

pub use ttrpc::{Client, Code, Status};
