//! The runc shim's option messages (`containerd.runc.v1`): the runtime
//! options a container carries (`ctr run --runc-binary`, CRI's runtime
//! config), checkpoint options, and the details `Pids` gives for an exec
//! process.

use prost::Message;

/// The type URL of [`Options`] in a container's `runtime.options`.
pub const OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";
/// The type URL of [`CheckpointOptions`].
pub const CHECKPOINT_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.CheckpointOptions";
/// The type URL of [`ProcessDetails`].
pub const PROCESS_DETAILS_TYPE_URL: &str = "containerd.runc.v1.ProcessDetails";

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
    /// The runc binary to run (`runc` on PATH when empty).
    #[prost(string, tag = "6")]
    pub binary_name: String,
    /// runc's state root (`--root`).
    #[prost(string, tag = "7")]
    pub root: String,
    /// The criu binary runc should use (`runc --criu`); empty for criu on PATH.
    #[prost(string, tag = "8")]
    pub criu_path: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
    #[prost(string, tag = "10")]
    pub criu_image_path: String,
    #[prost(string, tag = "11")]
    pub criu_work_path: String,
}

/// runc's `Options` from a TOML table, accepting containerd's Go field
/// names (`BinaryName`) and their snake_case forms (`binary_name`).
#[cfg(feature = "config")]
pub fn runc_options(table: &toml::Table) -> Result<Options, String> {
    let mut o = Options::default();
    for (key, value) in table {
        let norm: String = key.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect();
        let text = || value.as_str().map(str::to_string).ok_or_else(|| format!("{key} must be a string"));
        let flag = || value.as_bool().ok_or_else(|| format!("{key} must be a boolean"));
        let id =
            || value.as_integer().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| format!("{key} must be a uid/gid"));
        match norm.as_str() {
            "nopivotroot" => o.no_pivot_root = flag()?,
            "nonewkeyring" => o.no_new_keyring = flag()?,
            "shimcgroup" => o.shim_cgroup = text()?,
            "iouid" => o.io_uid = id()?,
            "iogid" => o.io_gid = id()?,
            "binaryname" => o.binary_name = text()?,
            "root" => o.root = text()?,
            "systemdcgroup" => o.systemd_cgroup = flag()?,
            "criupath" => o.criu_path = text()?,
            "criuimagepath" => o.criu_image_path = text()?,
            "criuworkpath" => o.criu_work_path = text()?,
            _ => return Err(format!("unknown runc option {key:?}")),
        }
    }
    Ok(o)
}

/// `containerd.runc.v1.CheckpointOptions`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointOptions {
    #[prost(bool, tag = "1")]
    pub exit: bool,
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    #[prost(string, tag = "8")]
    pub image_path: String,
    #[prost(string, tag = "9")]
    pub work_path: String,
}

/// `containerd.runc.v1.ProcessDetails`.
#[derive(Clone, PartialEq, Message)]
pub struct ProcessDetails {
    #[prost(string, tag = "1")]
    pub exec_id: String,
}
