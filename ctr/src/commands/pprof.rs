//! `ctr pprof`: the daemon's profiles from its debug socket (`[debug]
//! address`), as containerd 1.6's ctr fetches them: one HTTP GET per
//! subcommand, the body copied to stdout. `flamegraph` is ours: a CPU
//! profile turned into an SVG flame graph in one command.
//!
//! The daemon says plainly when a Go-only profile (heap, block, trace) has
//! no Rust meaning; that sentence is printed with the HTTP status instead of
//! the status alone.

use std::{collections::HashMap, io::Write as _};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;

use crate::{commands::GlobalArgs, duration::GoDuration};

const DEFAULT_DEBUG_SOCKET: &str = "/run/containerd/debug.sock";

#[derive(Debug, Args)]
pub struct PprofArgs {
    /// socket path for containerd's debug server
    #[arg(short = 'd', long = "debug-socket", default_value = DEFAULT_DEBUG_SOCKET, global = true)]
    debug_socket: String,
    #[command(subcommand)]
    command: PprofCommand,
}

#[derive(Debug, Subcommand)]
enum PprofCommand {
    /// goroutine blocking profile
    Block,
    /// dump goroutine stack dump (crated: the stack of every thread)
    Goroutines,
    /// dump heap profile
    Heap,
    /// CPU profile
    Profile {
        /// duration for collection (seconds)
        #[arg(short = 's', long, default_value = "30s")]
        seconds: GoDuration,
    },
    /// goroutine thread creating profile
    Threadcreate,
    /// collect execution trace
    Trace {
        /// trace time (seconds)
        #[arg(short = 's', long, default_value = "5s")]
        seconds: GoDuration,
    },
    /// CPU profile as an SVG flame graph (crated's)
    Flamegraph {
        /// duration for collection (seconds)
        #[arg(short = 's', long, default_value = "30s")]
        seconds: GoDuration,
    },
}

/// Go prints a float64 of seconds with `%v`: `30`, `2.5`.
fn seconds_query(d: GoDuration) -> String {
    format!("{}", d.0 as f64 / 1e9)
}

pub async fn run(_global: &GlobalArgs, args: PprofArgs) -> anyhow::Result<()> {
    let path = match &args.command {
        PprofCommand::Block => "/debug/pprof/block".to_string(),
        PprofCommand::Goroutines => "/debug/pprof/goroutine?debug=2".to_string(),
        PprofCommand::Heap => "/debug/pprof/heap".to_string(),
        PprofCommand::Profile { seconds } | PprofCommand::Flamegraph { seconds } => {
            format!("/debug/pprof/profile?seconds={}", seconds_query(*seconds))
        }
        PprofCommand::Threadcreate => "/debug/pprof/threadcreate".to_string(),
        PprofCommand::Trace { seconds } => format!("/debug/pprof/trace?seconds={}", seconds_query(*seconds)),
    };
    let body = get(&args.debug_socket, &path).await?;
    let out = match args.command {
        PprofCommand::Flamegraph { .. } => flamegraph(&body)?,
        _ => body,
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(())
}

/// One GET over the unix socket; a non-200 answer is an error carrying the
/// status and the daemon's explanation.
async fn get(socket: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let stream = tokio::net::UnixStream::connect(socket).await.with_context(|| format!("dial unix {socket}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req =
        http::Request::get(path).header(http::header::HOST, ".").body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    if status != http::StatusCode::OK {
        let reason = String::from_utf8_lossy(&body);
        let reason = reason.trim();
        let status = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
        if reason.is_empty() {
            bail!("http get failed with status: {status}");
        }
        bail!("http get failed with status: {status}: {reason}");
    }
    Ok(body)
}

/// A pprof CPU profile (gzip'd or not) as an SVG flame graph: each sample's
/// stack folded root-first, weighted by its sample count.
pub fn flamegraph(profile: &[u8]) -> anyhow::Result<Vec<u8>> {
    let profile = decode_profile(profile)?;
    let lines = folded_stacks(&profile);
    if lines.is_empty() {
        bail!("the profile has no samples: nothing ran on the CPU while it was taken");
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = "crated CPU profile".into();
    options.count_name = "samples".into();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .context("rendering the flame graph")?;
    Ok(svg)
}

/// Decodes pprof's protobuf, gunzipping it first if it is gzip'd (as Go
/// and crated serve it).
pub fn decode_profile(data: &[u8]) -> anyhow::Result<pprof::protos::Profile> {
    use pprof::protos::Message as _;
    let raw;
    let data = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).context("gunzip the profile")?;
        raw = out;
        &raw[..]
    } else {
        data
    };
    pprof::protos::Profile::decode(data).context("decode the pprof profile")
}

/// `root;caller;callee count` lines, one per distinct stack.
pub fn folded_stacks(p: &pprof::protos::Profile) -> Vec<String> {
    let string = |i: i64| p.string_table.get(i as usize).map(String::as_str).unwrap_or("?");
    let functions: HashMap<u64, &str> = p.function.iter().map(|f| (f.id, string(f.name))).collect();
    let locations: HashMap<u64, Vec<&str>> = p
        .location
        .iter()
        .map(|l| {
            // A location's lines are innermost first (inlined frames).
            let names = l.line.iter().map(|line| functions.get(&line.function_id).copied().unwrap_or("?")).collect();
            (l.id, names)
        })
        .collect();
    let mut folded: HashMap<String, i64> = HashMap::new();
    for s in &p.sample {
        let count = s.value.first().copied().unwrap_or(0);
        if count <= 0 {
            continue;
        }
        // Samples list locations leaf first; a flame graph wants the root first.
        let mut frames: Vec<&str> = Vec::new();
        for id in s.location_id.iter().rev() {
            if let Some(names) = locations.get(id) {
                frames.extend(names.iter().rev());
            }
        }
        if frames.is_empty() {
            continue;
        }
        let stack = frames.iter().map(|f| f.replace(';', ":")).collect::<Vec<_>>().join(";");
        *folded.entry(stack).or_default() += count;
    }
    let mut lines: Vec<String> = folded.into_iter().map(|(stack, n)| format!("{stack} {n}")).collect();
    lines.sort();
    lines
}
