//! `ctr shim`: talk to a task's shim directly, on its ttrpc socket, past
//! the daemon (containerd 1.6's `cmd/ctr/commands/shim`).
//!
//! The socket is found as 1.6 finds it: the shim v2 address containerd
//! derives from its own gRPC address, the namespace and the container id
//! (`/run/containerd/s/<sha256>`), then the old abstract
//! `@/containerd-shim/<ns>/<id>/shim.sock`. Replies are printed as stock
//! prints them: `state` as the Go struct's JSON, `delete` as one sentence.
//!
//! One deliberate difference: stock 1.6's `shim exec` cannot work (it
//! panics building the spec's type URL, and would send the exec id as the
//! container id); ours execs the `--spec` process in the `--id` task under
//! the given exec id. Its argument checks and their messages are stock's.

use std::time::Duration;

use clap::{Args, Subcommand};
use shim_protocol::address::go_path_join;
use shim_protocol::task::{
    DeleteRequest, ExecProcessRequest, ResizePtyRequest, StartRequest, StateRequest, StateResponse, TaskClient,
};
use shim_protocol::ttrpc::{Client as TtrpcClient, SocketAddress};

use super::GlobalArgs;
use crate::cio::TaskIo;
use crate::gojson::J;

/// The type URL of an OCI process spec as containerd's typeurl registers it.
const PROCESS_SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

#[derive(Debug, Args)]
pub struct ShimArgs {
    /// Container id
    #[arg(long, default_value = "")]
    pub id: String,

    #[command(subcommand)]
    pub command: ShimCommand,
}

#[derive(Debug, Subcommand)]
pub enum ShimCommand {
    /// Delete a container with a task
    Delete { args: Vec<String> },
    /// Exec a new process in the task's container
    Exec(ExecArgs),
    /// Start a container with a task
    Start { args: Vec<String> },
    /// Get the state of all the processes of the task
    State { args: Vec<String> },
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Specify the path to the stdin fifo
    #[arg(long, default_value = "")]
    pub stdin: String,
    /// Specify the path to the stdout fifo
    #[arg(long, default_value = "")]
    pub stdout: String,
    /// Specify the path to the stderr fifo
    #[arg(long, default_value = "")]
    pub stderr: String,
    /// Enable tty support
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Stay attached to the container and open the fifos
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Add environment vars (accepted and unused, as in stock ctr)
    #[arg(short = 'e', long)]
    pub env: Vec<String>,
    /// Current working directory (accepted and unused, as in stock ctr)
    #[arg(long, default_value = "")]
    pub cwd: String,
    /// Runtime spec
    #[arg(long, default_value = "")]
    pub spec: String,
    /// EXEC_ID
    pub args: Vec<String>,
}

pub async fn run(global: &GlobalArgs, args: ShimArgs) -> anyhow::Result<()> {
    let first = |v: &[String]| v.first().cloned().unwrap_or_default();
    match args.command {
        ShimCommand::Start { args: a } => {
            let service = task_service(global, &args.id).await?;
            service.start(&StartRequest { id: first(&a), exec_id: String::new() }).await.map_err(rpc_error)?;
            Ok(())
        }
        ShimCommand::Delete { args: a } => {
            let service = task_service(global, &args.id).await?;
            let r =
                service.delete(&DeleteRequest { id: first(&a), exec_id: String::new() }).await.map_err(rpc_error)?;
            println!("container deleted and returned exit status {}", r.exit_status);
            Ok(())
        }
        ShimCommand::State { .. } => {
            let service = task_service(global, &args.id).await?;
            let r = service
                .state(&StateRequest { id: args.id.clone(), exec_id: String::new() })
                .await
                .map_err(rpc_error)?;
            println!("{}", state_json(&r).indent());
            Ok(())
        }
        ShimCommand::Exec(e) => exec(global, &args.id, e).await,
    }
}

async fn exec(global: &GlobalArgs, id: &str, args: ExecArgs) -> anyhow::Result<()> {
    let service = task_service(global, id).await?;
    let exec_id = args.args.first().cloned().unwrap_or_default();
    if exec_id.is_empty() {
        anyhow::bail!("exec id must be provided");
    }
    let mut tio = TaskIo::existing_fifos(&args.stdin, &args.stdout, &args.stderr, args.tty)?;
    let spec = std::fs::read(&args.spec)
        .map_err(|e| anyhow::anyhow!("open {}: {}", args.spec, crate::errdefs::os_text(&e)))?;
    let req = ExecProcessRequest {
        id: id.to_string(),
        exec_id: exec_id.clone(),
        terminal: args.tty,
        stdin: args.stdin.clone(),
        stdout: args.stdout.clone(),
        stderr: args.stderr.clone(),
        spec: Some(prost_types::Any { type_url: PROCESS_SPEC_TYPE_URL.to_string(), value: spec }),
    };
    service.exec(&req).await.map_err(rpc_error)?;
    let r = service.start(&StartRequest { id: id.to_string(), exec_id: exec_id.clone() }).await.map_err(rpc_error)?;
    tio.start_stdin();
    println!("exec running with pid {}", r.pid);
    if !args.attach {
        // The shim holds the FIFOs; nothing here waits for the process.
        std::mem::forget(tio);
        return Ok(());
    }
    crate::golog::info_plain("attaching");
    let console = if args.tty {
        let con = super::tasks::RawConsole::new()?;
        let (width, height) = con.size().unwrap_or((0, 0));
        service
            .resize_pty(&ResizePtyRequest { id: id.to_string(), exec_id, width, height })
            .await
            .map_err(rpc_error)?;
        Some(con)
    } else {
        None
    };
    tio.wait().await;
    drop(console);
    Ok(())
}

/// `getTaskService`: the first socket that accepts a connection.
async fn task_service(global: &GlobalArgs, id: &str) -> anyhow::Result<TaskClient> {
    if id.is_empty() {
        anyhow::bail!("container id must be specified");
    }
    let ns = &global.namespace;
    let legacy = format!("@{}", go_path_join(&["/containerd-shim", ns, id, "shim.sock"]));
    for address in [socket_address(&global.address, ns, id), legacy] {
        if let Ok(stream) = SocketAddress::parse(&address).connect().await {
            // No deadline: stock's calls have none.
            let timeout: Option<Duration> = None;
            return Ok(TaskClient::new(TtrpcClient::new(stream), ns, timeout));
        }
    }
    anyhow::bail!("fail to connect to container {id}'s shim")
}

/// containerd 1.6's `shim.SocketAddress` for container `id` in namespace
/// `ns` under the daemon at `address`. An empty namespace has no address
/// (1.6 requires one), so the connect fails.
pub fn socket_address(address: &str, ns: &str, id: &str) -> String {
    if ns.is_empty() {
        return String::new();
    }
    shim_protocol::address::socket_address(address, ns, id)
}

/// A ttrpc status as stock ctr prints it: unconverted, grpc-go's text.
fn rpc_error(s: shim_protocol::Status) -> anyhow::Error {
    anyhow::anyhow!("rpc error: code = {} desc = {}", crate::errdefs::code_name(s.code as u32), s.message)
}

/// `PrintAsJSON` of 1.6's `task.StateResponse`: proto field order, zero
/// values left out (`omitempty`) except `exited_at`, a Go `time.Time`, and
/// the status as its number.
fn state_json(r: &StateResponse) -> J {
    let mut fields: Vec<(String, J)> = Vec::new();
    let mut text = |name: &str, v: &str| {
        if !v.is_empty() {
            fields.push((name.to_string(), J::str(v)));
        }
    };
    text("id", &r.id);
    text("bundle", &r.bundle);
    let num = |v: i64| J::Num(v.to_string());
    if r.pid != 0 {
        fields.push(("pid".into(), num(r.pid.into())));
    }
    if r.status != 0 {
        fields.push(("status".into(), num(r.status.into())));
    }
    for (name, v) in [("stdin", &r.stdin), ("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if !v.is_empty() {
            fields.push((name.into(), J::str(v)));
        }
    }
    if r.terminal {
        fields.push(("terminal".into(), J::Bool(true)));
    }
    if r.exit_status != 0 {
        fields.push(("exit_status".into(), num(r.exit_status.into())));
    }
    let exited = super::proto_time(r.exited_at.as_ref().map(|t| (t.seconds, t.nanos)));
    fields.push(("exited_at".into(), J::Str(crate::gotime::rfc3339_nano_utc(exited))));
    if !r.exec_id.is_empty() {
        fields.push(("exec_id".into(), J::str(&r.exec_id)));
    }
    J::Obj(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_socket_without_a_namespace() {
        assert_eq!(socket_address("/a/b.sock", "", "x1"), "");
        assert!(socket_address("/a/b.sock", "default", "x1").starts_with("unix:///run/containerd/s/"));
    }

    #[test]
    fn state_json_as_stock() {
        let r = StateResponse { id: "x1".into(), pid: 7, status: 2, ..Default::default() };
        assert_eq!(
            state_json(&r).indent(),
            "{\n    \"id\": \"x1\",\n    \"pid\": 7,\n    \"status\": 2,\n    \"exited_at\": \"0001-01-01T00:00:00Z\"\n}"
        );
    }
}
