//! The runc shim's option messages (containerd's
//! `runtime/v2/runc/options/oci.proto`, package `containerd.runc.v1`),
//! hand-written: ctr sends them as `Any` (runtime options on a container
//! record and task create options) and decodes `ProcessDetails`
//! from `tasks ps`.

use prost::Message;

/// `containerd.runc.v1.Options`.
#[derive(Clone, PartialEq, Message)]
pub struct Options {
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(string, tag = "8")]
    pub criu_path: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
    #[prost(string, tag = "10")]
    pub criu_image_path: String,
    #[prost(string, tag = "11")]
    pub criu_work_path: String,
}

/// `containerd.runc.v1.ProcessDetails`.
#[derive(Clone, PartialEq, Message)]
pub struct ProcessDetails {
    #[prost(string, tag = "1")]
    pub exec_id: String,
}

pub const OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";
pub const PROCESS_DETAILS_TYPE_URL: &str = "containerd.runc.v1.ProcessDetails";

/// An `Any` of a message under a type URL.
pub fn any<M: Message>(type_url: &str, m: &M) -> prost_types::Any {
    prost_types::Any { type_url: type_url.to_string(), value: m.encode_to_vec() }
}
