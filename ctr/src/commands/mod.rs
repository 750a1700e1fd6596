//! The command line: global flags as in containerd 1.6's ctr, and one module
//! per command group. To add a group: a module here with an `Args`/
//! `Subcommand` type and an `async fn run(&GlobalArgs, ...)`, a variant in
//! [`Command`], and a line in [`run`].

pub mod checkpoint;
pub mod containers;
pub mod content;
pub mod events;
pub mod image_ops;
pub mod image_transfer;
pub mod images;
pub mod install;
pub mod leases;
pub mod namespaces;
pub mod oci;
pub mod plugins;
pub mod pprof;
pub mod run;
pub mod shim;
pub mod snapshots;
pub mod tasks;
pub mod version;

use std::collections::{BTreeMap, HashMap};

use clap::{ArgAction, Parser, Subcommand};

use crate::client::{Client, ConnectOptions};
use crate::duration::GoDuration;

#[derive(Debug, Parser)]
#[command(
    name = "ctr",
    about = "crated CLI, compatible with containerd's ctr",
    version = concat!("crated ", env!("CARGO_PKG_VERSION")),
    disable_version_flag = true,
    subcommand_required = true,
    arg_required_else_help = true,
    // urfave/cli lets a flag repeat, the last one winning (`ctr -n a -n b`).
    args_override_self = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Global flags; like stock ctr they go before the command.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Enable debug output in logs
    #[arg(long)]
    pub debug: bool,

    /// Address for containerd's GRPC server
    #[arg(short = 'a', long, env = "CONTAINERD_ADDRESS", default_value = "/run/containerd/containerd.sock")]
    pub address: String,

    /// Total timeout for ctr commands
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub timeout: GoDuration,

    /// Timeout for connecting to containerd
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub connect_timeout: GoDuration,

    /// Namespace to use with commands
    #[arg(short = 'n', long, env = "CONTAINERD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Print the version
    #[arg(short = 'v', long, action = ArgAction::Version)]
    version: Option<bool>,
}

impl GlobalArgs {
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            address: self.address.clone(),
            namespace: self.namespace.clone(),
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
        }
    }

    /// Connect to the daemon with the global options (ctr's `commands.NewClient`).
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(&self.connect_options()).await
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage containers
    #[command(
        visible_aliases = ["c", "container"],
        subcommand_required = true,
        arg_required_else_help = true
    )]
    Containers {
        #[command(subcommand)]
        command: containers::ContainersCommand,
    },
    /// Manage content
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Content {
        #[command(subcommand)]
        command: content::ContentCommand,
    },
    /// Display containerd events
    #[command(visible_alias = "event")]
    Events(events::EventsArgs),
    /// Manage images
    #[command(visible_aliases = ["image", "i"], subcommand_required = true, arg_required_else_help = true)]
    Images {
        #[command(subcommand)]
        command: images::ImagesCommand,
    },
    /// Install a new package
    Install(install::InstallArgs),
    /// Manage leases
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Leases {
        #[command(subcommand)]
        command: leases::LeasesCommand,
    },
    /// Manage namespaces
    #[command(
        visible_aliases = ["namespace", "ns"],
        subcommand_required = true,
        arg_required_else_help = true
    )]
    Namespaces {
        #[command(subcommand)]
        command: namespaces::NamespacesCommand,
    },
    /// OCI tools
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Oci {
        #[command(subcommand)]
        command: oci::OciCommand,
    },
    /// Provides information about containerd plugins
    #[command(visible_alias = "plugin", subcommand_required = true, arg_required_else_help = true)]
    Plugins {
        #[command(subcommand)]
        command: plugins::PluginsCommand,
    },
    /// Run a container
    Run(Box<run::RunArgs>),
    /// Provide golang pprof outputs for containerd (crated: profiles of the daemon)
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Pprof(pprof::PprofArgs),
    /// Interact with a shim directly
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Shim(shim::ShimArgs),
    /// Manage tasks
    #[command(visible_aliases = ["t", "task"], subcommand_required = true, arg_required_else_help = true)]
    Tasks {
        #[command(subcommand)]
        command: tasks::TasksCommand,
    },
    /// Manage snapshots
    #[command(visible_alias = "snapshot", subcommand_required = true, arg_required_else_help = true)]
    Snapshots(snapshots::SnapshotsArgs),
    /// Print the client and server versions
    Version,
}

/// Run the parsed command line on a fresh single-threaded runtime.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let res = rt.block_on(async move {
        match cli.command {
            Command::Containers { command } => containers::run(&cli.global, command).await,
            Command::Content { command } => content::run(&cli.global, command).await,
            Command::Events(args) => events::run(&cli.global, args).await,
            Command::Images { command } => images::run(&cli.global, command).await,
            Command::Install(args) => install::run(&cli.global, args).await,
            Command::Leases { command } => leases::run(&cli.global, command).await,
            Command::Namespaces { command } => namespaces::run(&cli.global, command).await,
            Command::Oci { command } => oci::run(&cli.global, command).await,
            Command::Plugins { command } => plugins::run(&cli.global, command).await,
            Command::Snapshots(args) => snapshots::run(&cli.global, args).await,
            Command::Run(args) => run::run(&cli.global, *args).await,
            Command::Pprof(args) => pprof::run(&cli.global, args).await,
            Command::Shim(args) => shim::run(&cli.global, args).await,
            Command::Tasks { command } => tasks::run(&cli.global, command).await,
            Command::Version => version::run(&cli.global).await,
        }
    });
    // A copy from ctr's stdin may still be blocked reading it: do not wait.
    rt.shutdown_background();
    res
}

/// A task's non-zero exit code, which ctr exits with and prints nothing
/// for (urfave/cli's `NewExitError("", code)`).
#[derive(Debug)]
pub struct ExitStatus(pub i32);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// ctr's `commands.LabelArgs`: `key=value` pairs, a bare `key` meaning
/// `key=true`; a later duplicate wins. Sorted by key (Go iterates its map in
/// random order).
pub fn label_args(args: &[String]) -> BTreeMap<String, String> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (a.clone(), "true".to_string()),
        })
        .collect()
}

/// ctr's `commands.ObjectWithLabelArgs`: the first argument, and the labels
/// given by the rest.
pub fn object_with_label_args(args: &[String]) -> (String, BTreeMap<String, String>) {
    match args.split_first() {
        Some((first, rest)) => (first.clone(), label_args(rest)),
        None => (String::new(), BTreeMap::new()),
    }
}

/// Labels as `k=v` joined with `,`, sorted (stock ctr sorts them for
/// `namespaces ls` and `leases ls`; where it prints Go's random map order,
/// sorted is the stable choice).
pub fn format_labels(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// A protobuf timestamp's `(seconds, nanos)` as a
/// [`crate::gotime::Timestamp`]. A missing one is Go's zero `time.Time`,
/// which is what containerd 1.6's non-nullable `stdtime` fields hold then.
pub fn proto_time(ts: Option<(i64, i32)>) -> crate::gotime::Timestamp {
    match ts {
        Some((s, n)) => crate::gotime::Timestamp::from_proto(s, n),
        None => crate::gotime::Timestamp { secs: crate::gotime::GO_ZERO_TIME_SECS, nanos: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_args_like_ctr() {
        let (obj, labels) = object_with_label_args(&strings(&["foo", "a=b", "c", "d=", "e=x=y", "a=z"]));
        assert_eq!(obj, "foo");
        let want: BTreeMap<String, String> = [("a", "z"), ("c", "true"), ("d", ""), ("e", "x=y")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels, want);
        assert_eq!(object_with_label_args(&[]), (String::new(), BTreeMap::new()));
    }

    #[test]
    fn labels_are_sorted_and_joined() {
        let m: HashMap<String, String> =
            [("x", "y"), ("c", "true"), ("a.b", "1")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(format_labels(&m), "a.b=1,c=true,x=y");
        assert_eq!(format_labels(&HashMap::new()), "");
    }
}
