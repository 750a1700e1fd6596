//! `ctr oci`: OCI tools (containerd 1.6's `cmd/ctr/commands/oci`).

use std::io::Write;

use clap::Subcommand;

use super::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// See the output of the default OCI spec
    Spec,
}

pub async fn run(global: &GlobalArgs, command: OciCommand) -> anyhow::Result<()> {
    match command {
        OciCommand::Spec => {
            // `oci.GenerateSpec` for an empty container: no daemon involved.
            let spec = crate::spec::default_spec(&global.namespace, "")
                .to_json()
                .map_err(|e| anyhow::anyhow!("failed to generate spec: {e}"))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", spec.indent())?;
            out.flush()?;
            Ok(())
        }
    }
}
