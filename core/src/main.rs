//! `crated`: the daemon's command line, shaped like containerd's.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crated_core::{config, daemon, loader};

const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";

#[derive(Parser)]
#[command(name = "crated", version, about = "A containerd-compatible container runtime daemon built from .so plugins")]
struct Cli {
    /// Path to the configuration file
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Address for the gRPC socket
    #[arg(short = 'a', long = "address", global = true)]
    address: Option<String>,
    /// Root directory for persistent data
    #[arg(long)]
    root: Option<PathBuf>,
    /// State directory for runtime data
    #[arg(long)]
    state: Option<PathBuf>,
    /// Log level (trace, debug, info, warn, error, fatal, panic)
    #[arg(short = 'l', long = "log-level")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Information about the daemon's configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Serve one isolated plugin (started by the daemon, not by hand)
    #[command(hide = true)]
    PluginHost,
    /// Binary to publish events to the daemon (what shims run, the event on stdin)
    Publish {
        /// Namespace to publish to
        #[arg(long, default_value = "")]
        namespace: String,
        /// Topic of the event
        #[arg(long, default_value = "")]
        topic: String,
    },
    /// Provides a base for OCI runtime hooks to allow arguments to be injected
    #[command(name = "oci-hook")]
    OciHook {
        /// The hook's command and arguments (templates: {{id}}, {{rootfs}}, {{annotation "k"}}...)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// containerd's default socket, for `publish` without `--address`.
const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

/// `crated publish` and `crated oci-hook`: short-lived commands that never
/// read the config, and report errors as containerd does (`containerd: ...`,
/// exit 1). `None` for the daemon's own commands.
fn tool_command(cli: &Cli) -> Option<std::process::ExitCode> {
    let result: anyhow::Result<()> = match &cli.command {
        Some(Command::Publish { namespace, topic }) => {
            let p = crated_core::publish::Publish {
                address: cli.address.clone().unwrap_or_else(|| DEFAULT_ADDRESS.to_string()),
                namespace: namespace.clone(),
                topic: topic.clone(),
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| Ok(rt.block_on(crated_core::publish::run(&p, std::io::stdin().lock()))?))
        }
        Some(Command::OciHook { args }) => match crated_core::oci_hook::run(args, std::io::stdin().lock()) {
            Ok(never) => match never {},
            Err(e) => Err(e.into()),
        },
        _ => return None,
    };
    Some(match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crated: {e:#}");
            std::process::ExitCode::FAILURE
        }
    })
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the default configuration, with every loadable plugin's defaults
    Default,
    /// Print the effective configuration after merging imports
    Dump,
}

fn load_config(cli: &Cli) -> anyhow::Result<config::Config> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    if !explicit && !path.exists() {
        return Ok(config::Config::default_v2());
    }
    let loaded = config::load(&path)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded.config)
}

/// Every plugin's default config table, keyed `type.id`, from the libraries
/// in `plugin_dir` (no plugin is initialised).
fn plugin_defaults(cfg: &config::Config) -> Vec<(String, toml::Table)> {
    let Some(dir) = daemon::plugin_dir(cfg) else { return vec![] };
    let scan = loader::scan(dir);
    scan.libraries
        .iter()
        .flat_map(|l| l.registrations.iter())
        .map(|r| {
            let table = r.config_defaults.parse::<toml::Table>().unwrap_or_default();
            (format!("{}.{}", r.plugin_type, r.id), table)
        })
        .collect()
}

fn level_filter(level: &str) -> &str {
    match level {
        "" => "info",
        "fatal" | "panic" => "error",
        "warning" => "warn",
        l => l,
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    crated_core::malloc::cap_arenas();
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::PluginHost)) {
        plugin_host()?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(code) = tool_command(&cli) {
        return Ok(code);
    }
    let default_only =
        matches!(cli.command, Some(Command::Config { action: ConfigAction::Default })) && cli.config.is_none();
    let mut cfg = if default_only { config::Config::default_v2() } else { load_config(&cli)? };
    if let Some(a) = &cli.address {
        cfg.grpc.address = a.clone();
    }
    if let Some(r) = &cli.root {
        cfg.root = r.clone();
    }
    if let Some(s) = &cli.state {
        cfg.state = s.clone();
    }
    if let Some(l) = &cli.log_level {
        cfg.debug.level = l.clone();
    }
    match cli.command {
        Some(Command::Config { action: ConfigAction::Default }) => {
            // Like containerd, ignore the installed config file; only an
            // explicit -c says where plugins are, to include their defaults.
            let mut base = config::Config::default_v2();
            if cli.config.is_some() {
                base.plugin_dir = cfg.plugin_dir.clone();
            }
            let defaults = plugin_defaults(&base);
            print!("{}", base.with_plugin_defaults(defaults).to_toml());
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(Command::Config { action: ConfigAction::Dump }) => {
            let defaults = plugin_defaults(&cfg);
            print!("{}", cfg.with_plugin_defaults(defaults).to_toml());
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(Command::PluginHost | Command::Publish { .. } | Command::OciHook { .. }) | None => {}
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(level_filter(&cfg.debug.level))
                .with_context(|| format!("invalid log level {:?}", cfg.debug.level))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(daemon::run(cfg))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `crated plugin-host`: logs to stderr (the daemon's) at the level the
/// spec gives, which is only known once it is read: `RUST_LOG`-style
/// filtering is set from `CRATED_PLUGIN_HOST_LOG` if present, else info.
fn plugin_host() -> anyhow::Result<()> {
    let level = std::env::var("CRATED_PLUGIN_HOST_LOG").unwrap_or_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(level_filter(&level)).unwrap_or_default())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    crated_core::plugin_host::run()?;
    Ok(())
}
