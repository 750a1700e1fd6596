//! The command line: global flags as in containerd 1.6's ctr, and one module
//! per command group. To add a group: a module here with an `Args`/
//! `Subcommand` type and an `async fn run(&GlobalArgs, ...)`, a variant in
//! [`Command`], and a line in [`run`].

pub mod plugins;
pub mod version;

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
    arg_required_else_help = true
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
    #[arg(
        short = 'a',
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub address: String,

    /// Total timeout for ctr commands
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub timeout: GoDuration,

    /// Timeout for connecting to containerd
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub connect_timeout: GoDuration,

    /// Namespace to use with commands
    #[arg(
        short = 'n',
        long,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
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
    /// Provides information about containerd plugins
    #[command(
        visible_alias = "plugin",
        subcommand_required = true,
        arg_required_else_help = true
    )]
    Plugins {
        #[command(subcommand)]
        command: plugins::PluginsCommand,
    },
    /// Print the client and server versions
    Version,
}

/// Run the parsed command line on a fresh single-threaded runtime.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Plugins { command } => plugins::run(&cli.global, command).await,
            Command::Version => version::run(&cli.global).await,
        }
    })
}
