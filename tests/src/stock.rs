//! The reference the tests compare with: a stock containerd 1.6 (Debian's
//! `containerd`) configured on a temporary directory. One layout for every
//! test that starts one: root, state and sockets under the directory, the
//! gRPC socket at `c.sock`, and no CRI plugin (crated has none yet, and it
//! would only slow the start).

use std::path::Path;

/// Where Debian installs the stock daemon.
pub const CONTAINERD: &str = "/usr/bin/containerd";

/// The gRPC socket of a daemon configured by [`containerd_config`].
pub fn containerd_socket(dir: &Path) -> std::path::PathBuf {
    dir.join("c.sock")
}

/// A containerd config (version 2) with everything under `dir`, followed by
/// `extra` (more top-level tables, e.g. `[proxy_plugins.x]`).
pub fn containerd_config(dir: &Path, extra: &str) -> String {
    let p = |s: &str| dir.join(s).display().to_string();
    format!(
        "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\naddress = {:?}\n[ttrpc]\naddress = {:?}\n[debug]\naddress = {:?}\n[metrics]\naddress = \"\"\n{extra}\n",
        p("root"),
        p("state"),
        p("c.sock"),
        p("c.sock.ttrpc"),
        p("debug.sock")
    )
}
