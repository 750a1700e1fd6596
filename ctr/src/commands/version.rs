//! `ctr version`: client and server versions, laid out like stock ctr.

use std::io::{self, Write};

use super::GlobalArgs;
use crate::errdefs;

/// This client's version, revision and toolchain (see build.rs).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("CTR_REVISION");
pub const RUST_VERSION: &str = env!("CTR_RUST_VERSION");

pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    // The client block is printed before connecting, as stock ctr does, so it
    // shows even when the daemon is unreachable.
    let mut out = io::stdout().lock();
    writeln!(out, "Client:")?;
    writeln!(out, "  Version:  {VERSION}")?;
    writeln!(out, "  Revision: {REVISION}")?;
    writeln!(out, "  Rust version: {RUST_VERSION}")?;
    writeln!(out)?;
    out.flush()?;

    let client = global.client().await?;
    // containerd's Client.Version returns the raw gRPC error, Client.Server
    // goes through errdefs.FromGRPC.
    let v = client.call(client.version().version(client.request(()))).await.map_err(|s| errdefs::raw(&s))?;
    writeln!(out, "Server:")?;
    writeln!(out, "  Version:  {}", v.version)?;
    writeln!(out, "  Revision: {}", v.revision)?;
    out.flush()?;

    let server =
        client.call(client.introspection().server(client.request(()))).await.map_err(|s| errdefs::from_grpc(&s))?;
    writeln!(out, "  UUID: {}", server.uuid)?;
    out.flush()?;

    if v.version != VERSION {
        eprintln!("WARNING: version mismatch");
    }
    if v.revision != REVISION {
        eprintln!("WARNING: revision mismatch");
    }
    Ok(())
}
