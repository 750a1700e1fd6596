//! `ctr containers`: list, inspect, delete and label container records
//! (containerd 1.6's `cmd/ctr/commands/containers`).

use std::io::{self, Write};

use clap::{Args, Subcommand};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    Container, DeleteContainerRequest, DeleteTaskRequest, GetContainerRequest, GetRequest, ListContainersRequest,
    UpdateContainerRequest,
};
use tonic::Code;

use super::{format_labels, object_with_label_args, proto_time, GlobalArgs};
use crate::client::Client;
use crate::errdefs;
use crate::gojson::{self, J};
use crate::golog;
use crate::gotime::{go_string_utc, rfc3339_nano_utc, GO_ZERO_TIME_SECS};

/// The type URL containerd's `typeurl` registers the OCI runtime spec under.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

#[derive(Debug, Subcommand)]
pub enum ContainersCommand {
    /// Checkpoint a container
    Checkpoint(super::checkpoint::ContainerCheckpointArgs),
    /// Create container
    Create(Box<super::run::CreateArgs>),
    /// Delete one or more existing containers
    #[command(visible_aliases = ["del", "remove", "rm"])]
    Delete(DeleteArgs),
    /// Get info about a container
    Info(InfoArgs),
    /// List containers
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Set and clear labels for a container
    Label(LabelArgs),
    /// Restore a container from checkpoint
    Restore(super::checkpoint::RestoreArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print only the container id
    #[arg(short, long)]
    pub quiet: bool,

    /// [<filter>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Do not clean up snapshot with container
    #[arg(long)]
    pub keep_snapshot: bool,

    /// CONTAINER [CONTAINER, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Only display the spec
    #[arg(long)]
    pub spec: bool,

    /// CONTAINER
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// CONTAINER [<key>=<value>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: ContainersCommand) -> anyhow::Result<()> {
    match command {
        ContainersCommand::Checkpoint(args) => super::checkpoint::container_checkpoint(global, args).await,
        ContainersCommand::Restore(args) => super::checkpoint::restore(global, args).await,
        ContainersCommand::Create(args) => super::run::create(global, *args).await,
        ContainersCommand::Delete(args) => delete(global, args).await,
        ContainersCommand::Info(args) => info(global, args).await,
        ContainersCommand::List(args) => list(global, args).await,
        ContainersCommand::Label(args) => label(global, args).await,
    }
}

/// `remoteContainers.List`: the stream, or `List` when the server has no
/// `ListStream`.
async fn list_containers(client: &Client, filters: Vec<String>) -> Result<Vec<Container>, anyhow::Error> {
    let req = ListContainersRequest { filters: filters.clone() };
    let mut stream = match client.call(client.containers().list_stream(client.request(req))).await {
        Ok(s) => s,
        Err(s) if s.code() == Code::Unimplemented => return list_unary(client, filters).await,
        Err(s) => return Err(errdefs::from_grpc(&s)),
    };
    let mut out = Vec::new();
    loop {
        match client.recv(&mut stream).await {
            Ok(Some(msg)) => out.extend(msg.container),
            Ok(None) => return Ok(out),
            Err(s) if s.code() == Code::Unimplemented => return list_unary(client, filters).await,
            Err(s) => return Err(errdefs::from_grpc(&s)),
        }
    }
}

async fn list_unary(client: &Client, filters: Vec<String>) -> Result<Vec<Container>, anyhow::Error> {
    let req = ListContainersRequest { filters };
    Ok(client.call(client.containers().list(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?.containers)
}

async fn list(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let containers = list_containers(&client, args.filters).await?;
    if args.quiet {
        let mut out = io::BufWriter::new(io::stdout().lock());
        for c in &containers {
            writeln!(out, "{}", c.id)?;
        }
        out.flush()?;
        return Ok(());
    }
    let mut tw = crate::tabwriter::TabWriter::new(io::stdout().lock(), 4, 8, 4, ' ');
    writeln!(tw, "CONTAINER\tIMAGE\tRUNTIME\t")?;
    for c in &containers {
        let image = if c.image.is_empty() { "-" } else { c.image.as_str() };
        let runtime = c.runtime.as_ref().map_or("", |r| r.name.as_str());
        writeln!(tw, "{}\t{}\t{}\t", c.id, image, runtime)?;
    }
    tw.flush()?;
    Ok(())
}

/// `client.LoadContainer`.
pub async fn load(client: &Client, id: &str) -> anyhow::Result<Container> {
    let resp = client
        .call(client.containers().get(client.request(GetContainerRequest { id: id.to_string() })))
        .await
        .map_err(|s| errdefs::from_grpc(&s))?;
    Ok(resp.container.unwrap_or_default())
}

fn any_json(a: &prost_types::Any) -> J {
    let mut obj = Vec::new();
    if !a.type_url.is_empty() {
        obj.push(("type_url".to_string(), J::str(&a.type_url)));
    }
    if !a.value.is_empty() {
        obj.push(("value".to_string(), J::Str(crate::eventjson::base64(&a.value))));
    }
    J::Obj(obj)
}

fn time_json(ts: &Option<prost_types::Timestamp>) -> J {
    J::Str(rfc3339_nano_utc(proto_time(ts.as_ref().map(|t| (t.seconds, t.nanos)))))
}

/// `containers.Container` as Go's `encoding/json` writes it; `spec` is the
/// decoded spec, written last (ctr's wrapper struct), or `None` to write
/// the raw `Any` in its own place.
fn container_json(c: &Container, spec: Option<J>) -> J {
    let labels = if c.labels.is_empty() {
        J::Null
    } else {
        let mut l: Vec<(String, J)> = c.labels.iter().map(|(k, v)| (k.clone(), J::str(v))).collect();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        J::Obj(l)
    };
    let runtime = c.runtime.clone().unwrap_or_default();
    let extensions = if c.extensions.is_empty() {
        J::Null
    } else {
        let mut e: Vec<(String, J)> = c.extensions.iter().map(|(k, v)| (k.clone(), any_json(v))).collect();
        e.sort_by(|a, b| a.0.cmp(&b.0));
        J::Obj(e)
    };
    let mut obj = vec![
        ("ID".to_string(), J::str(&c.id)),
        ("Labels".to_string(), labels),
        ("Image".to_string(), J::str(&c.image)),
        (
            "Runtime".to_string(),
            J::Obj(vec![
                ("Name".to_string(), J::str(&runtime.name)),
                ("Options".to_string(), runtime.options.as_ref().map_or(J::Null, any_json)),
            ]),
        ),
    ];
    if spec.is_none() {
        obj.push(("Spec".to_string(), c.spec.as_ref().map_or(J::Null, any_json)));
    }
    obj.push(("SnapshotKey".to_string(), J::str(&c.snapshot_key)));
    obj.push(("Snapshotter".to_string(), J::str(&c.snapshotter)));
    obj.push(("CreatedAt".to_string(), time_json(&c.created_at)));
    obj.push(("UpdatedAt".to_string(), time_json(&c.updated_at)));
    obj.push(("Extensions".to_string(), extensions));
    if let Some(spec) = spec {
        obj.push(("Spec".to_string(), spec));
    }
    J::Obj(obj)
}

/// `typeurl.UnmarshalAny` for a spec.
fn unmarshal_spec(a: &prost_types::Any) -> anyhow::Result<J> {
    if a.type_url != SPEC_TYPE_URL {
        anyhow::bail!("type with url {}: not found", a.type_url);
    }
    Ok(gojson::spec(&a.value)?)
}

async fn info(global: &GlobalArgs, args: InfoArgs) -> anyhow::Result<()> {
    let id = args.args.first().cloned().unwrap_or_default();
    if id.is_empty() {
        anyhow::bail!("container id must be provided: invalid argument");
    }
    let client = global.client().await?;
    let c = load(&client, &id).await?;
    let j = if args.spec {
        unmarshal_spec(&c.spec.clone().unwrap_or_default())?
    } else {
        match &c.spec {
            Some(s) if !s.value.is_empty() => container_json(&c, Some(unmarshal_spec(s)?)),
            _ => container_json(&c, None),
        }
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", j.indent())?;
    out.flush()?;
    Ok(())
}

/// Go's `%v` of a `containerd.Status`.
fn status_text(status: i32, exit_status: u32, exited_at: &Option<prost_types::Timestamp>) -> String {
    let name = match status {
        1 => "created",
        2 => "running",
        3 => "stopped",
        4 => "paused",
        5 => "pausing",
        _ => "unknown",
    };
    let t = proto_time(exited_at.as_ref().map(|t| (t.seconds, t.nanos)));
    format!("{{{name} {exit_status} {}}}", go_string_utc(t))
}

/// ctr's `deleteContainer`.
pub async fn delete_one(client: &Client, id: &str, cleanup_snapshot: bool) -> anyhow::Result<()> {
    let c = load(client, id).await?;
    let task_req = || GetRequest { container_id: id.to_string(), ..Default::default() };
    if client.call(client.tasks().get(client.request(task_req()))).await.is_ok() {
        // The task's status is read again, as `task.Status` does.
        let resp =
            client.call(client.tasks().get(client.request(task_req()))).await.map_err(|s| errdefs::from_grpc(&s))?;
        let p = resp.process.unwrap_or_default();
        if p.status != 1 && p.status != 3 {
            anyhow::bail!(
                "cannot delete a non stopped container: {}",
                status_text(p.status, p.exit_status, &p.exited_at)
            );
        }
        let req = DeleteTaskRequest { container_id: id.to_string() };
        client.call(client.tasks().delete(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    }
    // `container.Delete`: refuse while a task exists, then clean up.
    if client.call(client.tasks().get(client.request(task_req()))).await.is_ok() {
        anyhow::bail!("cannot delete running task {id}: failed precondition");
    }
    let c = load(client, &c.id).await?;
    if cleanup_snapshot && !c.snapshot_key.is_empty() {
        if c.snapshotter.is_empty() {
            anyhow::bail!("container.Snapshotter must be set to cleanup rootfs snapshot: invalid argument");
        }
        let req = RemoveSnapshotRequest { snapshotter: c.snapshotter.clone(), key: c.snapshot_key.clone() };
        match client.call(client.snapshots().remove(client.request(req))).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(errdefs::from_grpc(&s)),
        }
    }
    let req = DeleteContainerRequest { id: id.to_string() };
    client.call(client.containers().delete(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    Ok(())
}

async fn delete(global: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    if args.ids.is_empty() {
        anyhow::bail!("must specify at least one container to delete: invalid argument");
    }
    let mut exit_err: Option<anyhow::Error> = None;
    for id in &args.ids {
        if let Err(e) = delete_one(&client, id, !args.keep_snapshot).await {
            golog::error(&format!("failed to delete container {}", crate::golog::go_quote(id)), &e);
            if exit_err.is_none() {
                exit_err = Some(e);
            }
        }
    }
    match exit_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn label(global: &GlobalArgs, args: LabelArgs) -> anyhow::Result<()> {
    let (id, labels) = object_with_label_args(&args.args);
    if id.is_empty() {
        anyhow::bail!("container id must be provided: invalid argument");
    }
    let client = global.client().await?;
    let c = load(&client, &id).await?;
    let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
    let zero = prost_types::Timestamp { seconds: GO_ZERO_TIME_SECS, nanos: 0 };
    let update = Container {
        id: c.id,
        labels: labels.into_iter().collect(),
        runtime: Some(Runtime::default()),
        created_at: Some(zero),
        updated_at: Some(zero),
        ..Default::default()
    };
    let req = UpdateContainerRequest {
        container: Some(update),
        update_mask: (!paths.is_empty()).then_some(prost_types::FieldMask { paths }),
    };
    let resp =
        client.call(client.containers().update(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    let labels = resp.container.map(|c| c.labels).unwrap_or_default();
    let mut out = io::stdout().lock();
    writeln!(out, "{}", format_labels(&labels))?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_like_go() {
        assert_eq!(status_text(2, 0, &None), "{running 0 0001-01-01 00:00:00 +0000 UTC}");
    }

    #[test]
    fn info_json_shape() {
        let c = Container {
            id: "c1".into(),
            runtime: Some(Runtime { name: "rt".into(), options: None }),
            ..Default::default()
        };
        let s = container_json(&c, Some(J::Obj(vec![("ociVersion".into(), J::str("1"))]))).indent();
        assert!(s.starts_with("{\n    \"ID\": \"c1\",\n    \"Labels\": null,\n    \"Image\": \"\",\n    \"Runtime\": {\n        \"Name\": \"rt\",\n        \"Options\": null\n    },\n    \"SnapshotKey\""), "{s}");
        assert!(s.ends_with("\"Extensions\": null,\n    \"Spec\": {\n        \"ociVersion\": \"1\"\n    }\n}"), "{s}");
    }
}
