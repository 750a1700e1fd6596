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
    let cli = match commands::Cli::try_parse() {
        Ok(cli) => cli,
        // urfave/cli's text and exit code for a missing required flag
        // (stock ctr also prints the command's help first, on stdout).
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            eprintln!("ctr: {}", required_flags_text(&missing_names(&e)));
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
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

/// The flags (or arguments) a clap error names as missing: `--exec-id
/// <EXEC_ID>` gives `exec-id`, `<CONTAINER>` gives `container`.
fn missing_names(e: &clap::Error) -> Vec<String> {
    use clap::error::{ContextKind, ContextValue};
    let values = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(ContextValue::String(v)) => vec![v.clone()],
        _ => Vec::new(),
    };
    values
        .iter()
        .map(|v| match v.strip_prefix("--") {
            Some(flag) => flag.split([' ', '=']).next().unwrap_or(flag).to_string(),
            None => v.trim_matches(|c| c == '<' || c == '>' || c == '.').to_lowercase(),
        })
        .collect()
}

/// urfave/cli's `requiredFlagsErr`: `Required flag "a" not set`,
/// `Required flags "a, b" not set`.
fn required_flags_text(names: &[String]) -> String {
    let plural = if names.len() > 1 { "s" } else { "" };
    format!("Required flag{plural} {} not set", golog::go_quote(&names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_required_flag_reads_as_urfave() {
        let e = commands::Cli::try_parse_from(["ctr", "tasks", "exec", "c1", "sh"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(required_flags_text(&missing_names(&e)), "Required flag \"exec-id\" not set");
        assert_eq!(required_flags_text(&["a".into(), "b".into()]), "Required flags \"a, b\" not set");
    }
}
