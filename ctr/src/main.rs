//! `ctr`: crated's command-line client, compatible with containerd 1.6's ctr.

mod cio;
mod client;
mod commands;
mod digest;
mod duration;
mod errdefs;
mod eventjson;
mod gojson;
mod golog;
mod gotime;
mod metrics;
mod mount;
mod platforms;
mod progress;
mod spec;
mod tabwriter;
mod transfer;
mod units;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`ctr plugins ls | head`): stop quietly.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        // A task's exit code, passed through without a message.
        Err(e) if e.downcast_ref::<commands::ExitStatus>().is_some() => {
            let code = e.downcast_ref::<commands::ExitStatus>().map_or(1, |s| s.0);
            ExitCode::from(code as u8)
        }
        Err(e) => {
            eprintln!("ctr: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<std::io::Error>()).any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
