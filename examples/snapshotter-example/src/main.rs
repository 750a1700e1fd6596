//! The example snapshotter as a standalone proxy plugin:
//!
//!     snapshotter-example --root /var/lib/snapshotter-example --address /run/snapshotter-example.sock
//!
//! then, in crated's or containerd's config.toml:
//!
//!     [proxy_plugins.example]
//!     type = "snapshot"
//!     address = "/run/snapshotter-example.sock"
//!
//! It serves the Snapshots API until SIGTERM or SIGINT.

use std::{path::PathBuf, process::ExitCode};

use crated_plugin_api::{proxy, snapshots};
use snapshotter_example::ExampleSnapshotter;

const USAGE: &str = "usage: snapshotter-example --root DIR --address SOCKET";

fn main() -> ExitCode {
    let (mut root, mut address) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next().map(PathBuf::from),
            "--address" => address = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(root), Some(address)) = (root, address) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let snapshotter = match ExampleSnapshotter::open(&root) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapshotter-example: {e}");
            return ExitCode::FAILURE;
        }
    };
    match proxy::run(snapshots::router(snapshotter), &address) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapshotter-example: {e}");
            ExitCode::FAILURE
        }
    }
}
