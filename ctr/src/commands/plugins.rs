//! `ctr plugins list`: the daemon's plugins, from the Introspection service.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use containerd_client::services::v1::{Plugin, PluginsRequest};

use super::GlobalArgs;
use crate::errdefs;
use crate::platforms;
use crate::tabwriter::TabWriter;

/// containerd's `plugin.ErrSkipPlugin` text; an init error containing it
/// means the plugin chose not to load.
const SKIP_PLUGIN: &str = "skip plugin";

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Lists containerd plugins
    #[command(visible_alias = "ls")]
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print only the plugin ids
    #[arg(short, long)]
    pub quiet: bool,

    /// Print detailed information about each plugin
    #[arg(short, long)]
    pub detailed: bool,

    /// Filters (containerd filter syntax, e.g. `type==io.containerd.snapshotter.v1`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: PluginsCommand) -> anyhow::Result<()> {
    match command {
        PluginsCommand::List(args) => list(global, args).await,
    }
}

async fn list(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let req = client.request(PluginsRequest { filters: args.filters });
    let resp = client.call(client.introspection().plugins(req)).await.map_err(|s| errdefs::from_grpc(&s))?;

    let stdout = io::stdout().lock();
    if args.quiet {
        let mut out = io::BufWriter::new(stdout);
        for p in &resp.plugins {
            writeln!(out, "{}", p.id)?;
        }
        out.flush()?;
        return Ok(());
    }
    let mut w = TabWriter::new(stdout, 4, 8, 4, ' ');
    if args.detailed {
        write_detailed(&mut w, &resp.plugins)?;
    } else {
        write_table(&mut w, &resp.plugins)?;
    }
    w.flush()?;
    Ok(())
}

fn status(p: &Plugin) -> &'static str {
    match &p.init_err {
        None => "ok",
        Some(e) if e.message.contains(SKIP_PLUGIN) => "skip",
        Some(_) => "error",
    }
}

/// The default listing: `TYPE ID PLATFORMS STATUS`, every row tab-terminated.
fn write_table(w: &mut impl Write, plugins: &[Plugin]) -> io::Result<()> {
    writeln!(w, "TYPE\tID\tPLATFORMS\tSTATUS\t")?;
    for p in plugins {
        let platforms = if p.platforms.is_empty() { "-".to_string() } else { platforms::pretty(&p.platforms) };
        writeln!(w, "{}\t{}\t{}\t{}\t", p.r#type, p.id, platforms, status(p))?;
    }
    Ok(())
}

/// `-d`: one block per plugin, separated by an all-tab line. The blank after
/// each label and around export keys is where stock ctr's `fmt.Println`
/// separates its operands.
fn write_detailed(w: &mut impl Write, plugins: &[Plugin]) -> io::Result<()> {
    for (i, p) in plugins.iter().enumerate() {
        if i > 0 {
            writeln!(w, "\t\t\t")?;
        }
        writeln!(w, "Type:\t {}", p.r#type)?;
        writeln!(w, "ID:\t {}", p.id)?;
        if !p.requires.is_empty() {
            writeln!(w, "Requires:\t")?;
            for r in &p.requires {
                writeln!(w, "\t {r}")?;
            }
        }
        if !p.platforms.is_empty() {
            writeln!(w, "Platforms:\t {}", platforms::pretty(&p.platforms))?;
        }
        if !p.exports.is_empty() {
            writeln!(w, "Exports:\t")?;
            // Stock ctr prints the map in Go's random order; sorted is stable.
            let mut exports: Vec<_> = p.exports.iter().collect();
            exports.sort();
            for (k, v) in exports {
                writeln!(w, "\t {k} \t {v}")?;
            }
        }
        if !p.capabilities.is_empty() {
            writeln!(w, "Capabilities:\t {}", p.capabilities.join(","))?;
        }
        if let Some(e) = &p.init_err {
            writeln!(w, "Error:\t")?;
            writeln!(w, "\t Code:\t {}", errdefs::code_name(e.code as u32))?;
            writeln!(w, "\t Message:\t {}", e.message)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::google::rpc::Status;
    use containerd_client::types::Platform;

    fn render(f: fn(&mut TabWriter<Vec<u8>>, &[Plugin]) -> io::Result<()>, ps: &[Plugin]) -> String {
        let mut w = TabWriter::new(Vec::new(), 4, 8, 4, ' ');
        f(&mut w, ps).unwrap();
        w.flush().unwrap();
        String::from_utf8(w.into_inner()).unwrap()
    }

    fn plugins() -> Vec<Plugin> {
        vec![
            Plugin {
                r#type: "io.containerd.content.v1".into(),
                id: "content".into(),
                exports: [("root".to_string(), "/var/lib/c".to_string())].into(),
                ..Default::default()
            },
            Plugin {
                r#type: "io.containerd.snapshotter.v1".into(),
                id: "btrfs".into(),
                requires: vec!["io.containerd.content.v1".into()],
                platforms: vec![Platform { os: "linux".into(), architecture: "amd64".into(), ..Default::default() }],
                init_err: Some(Status { code: 2, message: "no btrfs: skip plugin".into(), details: vec![] }),
                ..Default::default()
            },
            Plugin {
                r#type: "io.containerd.grpc.v1".into(),
                id: "x".into(),
                capabilities: vec!["a".into(), "b".into()],
                init_err: Some(Status { code: 9, message: "broken".into(), details: vec![] }),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn table() {
        let got = render(write_table, &plugins());
        // Widest cell + padding 4: 28 + 4, 7 + 4, 11 + 4, 6 + 4.
        let row = |a: &str, b: &str, c: &str, d: &str| format!("{a:<32}{b:<11}{c:<15}{d:<10}\n");
        let want = row("TYPE", "ID", "PLATFORMS", "STATUS")
            + &row("io.containerd.content.v1", "content", "-", "ok")
            + &row("io.containerd.snapshotter.v1", "btrfs", "linux/amd64", "skip")
            + &row("io.containerd.grpc.v1", "x", "-", "error");
        assert_eq!(got, want);
    }

    #[test]
    fn detailed() {
        let got = render(write_detailed, &plugins());
        // Column 0 spans all lines, sized by "Capabilities:" (13) + 4 = 17.
        // Column 1 has three blocks: the export lines (" root " + 4 = 10) and the
        // two error blocks (" Message:" + 4 = 13); column 2 exists only on the
        // separator lines inside those blocks (minwidth 4).
        let c0 = |label: &str, rest: &str| format!("{label:<17}{rest}");
        let c1 = |w: usize, a: &str, rest: &str| format!("{:17}{a:<w$}{rest}", "");
        let want = [
            c0("Type:", " io.containerd.content.v1"),
            c0("ID:", " content"),
            c0("Exports:", ""),
            c1(10, " root ", " /var/lib/c"),
            " ".repeat(17 + 10 + 4),
            c0("Type:", " io.containerd.snapshotter.v1"),
            c0("ID:", " btrfs"),
            c0("Requires:", ""),
            c0("", " io.containerd.content.v1"),
            c0("Platforms:", " linux/amd64"),
            c0("Error:", ""),
            c1(13, " Code:", " Unknown"),
            c1(13, " Message:", " no btrfs: skip plugin"),
            " ".repeat(17 + 13 + 4),
            c0("Type:", " io.containerd.grpc.v1"),
            c0("ID:", " x"),
            c0("Capabilities:", " a,b"),
            c0("Error:", ""),
            c1(13, " Code:", " FailedPrecondition"),
            c1(13, " Message:", " broken"),
        ]
        .map(|l| l + "\n")
        .concat();
        assert_eq!(got, want);
    }
}
