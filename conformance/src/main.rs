//! `snapshot-conformance`: run the Snapshots conformance suite against a
//! snapshotter on a unix socket, one line per case; exits non-zero when any
//! case fails. Runs as root, because the suite mounts what the snapshotter
//! returns.

use anyhow::bail;
use clap::Parser;
use crated_snapshot_conformance::{run, Target};

#[derive(Parser)]
#[command(name = "snapshot-conformance", about = "Check a snapshotter against containerd's Snapshots API semantics")]
struct Args {
    /// The unix socket serving containerd.services.snapshots.v1.Snapshots.
    #[arg(long, required_unless_present = "list")]
    address: Option<String>,
    /// The `snapshotter` field of every request (e.g. overlayfs, native).
    #[arg(long, required_unless_present = "list")]
    snapshotter: Option<String>,
    /// Sent as the containerd-namespace header; an empty value sends none.
    #[arg(long, default_value = "conformance")]
    namespace: String,
    /// Run only the cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list {
        for name in crated_snapshot_conformance::case_names() {
            println!("{name}");
        }
        return Ok(());
    }
    if !rustix::process::geteuid().is_root() {
        bail!("snapshot-conformance must run as root: it mounts the snapshots it prepares");
    }
    let target = Target {
        address: args.address.unwrap_or_default(),
        snapshotter: args.snapshotter.unwrap_or_default(),
        namespace: args.namespace,
    };
    let report = run(&target, args.filter.as_deref()).await;
    if report.cases.is_empty() {
        bail!("no case matches the filter {:?}", args.filter.unwrap_or_default());
    }
    println!("{report}");
    if !report.all_passed() {
        std::process::exit(1);
    }
    Ok(())
}
