//! `ctr namespaces`: create, list, label and remove namespaces.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use containerd_client::services::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest, Namespace,
    UpdateNamespaceRequest,
};
use tonic::Code;

use super::{format_labels, object_with_label_args, GlobalArgs};
use crate::errdefs;
use crate::golog;
use crate::tabwriter::TabWriter;

#[derive(Debug, Subcommand)]
pub enum NamespacesCommand {
    /// Create a new namespace
    #[command(visible_alias = "c")]
    Create(LabelArgs),
    /// List namespaces
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Remove one or more namespaces
    #[command(visible_alias = "rm")]
    Remove(RemoveArgs),
    /// Set and clear labels for a namespace
    Label(LabelArgs),
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// <name> [<key>=<value>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print only the namespace name
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Delete the namespace's cgroup
    #[arg(short, long)]
    pub cgroup: bool,

    /// <name> [<name>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub names: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: NamespacesCommand) -> anyhow::Result<()> {
    match command {
        NamespacesCommand::Create(args) => create(global, args).await,
        NamespacesCommand::List(args) => list(global, args).await,
        NamespacesCommand::Remove(args) => remove(global, args).await,
        NamespacesCommand::Label(args) => label(global, args).await,
    }
}

async fn create(global: &GlobalArgs, args: LabelArgs) -> anyhow::Result<()> {
    let (name, labels) = object_with_label_args(&args.args);
    if name.is_empty() {
        anyhow::bail!("please specify a namespace");
    }
    let client = global.client().await?;
    let req = client
        .request(CreateNamespaceRequest { namespace: Some(Namespace { name, labels: labels.into_iter().collect() }) });
    client.call(client.namespaces().create(req)).await.map_err(|s| errdefs::from_grpc(&s))?;
    Ok(())
}

async fn label(global: &GlobalArgs, args: LabelArgs) -> anyhow::Result<()> {
    let (name, labels) = object_with_label_args(&args.args);
    if name.is_empty() {
        anyhow::bail!("please specify a namespace");
    }
    let client = global.client().await?;
    // One update per label, as containerd's `SetLabel` does; an empty value
    // clears the label.
    for (k, v) in labels {
        let mut req = UpdateNamespaceRequest {
            namespace: Some(Namespace { name: name.clone(), labels: [(k.clone(), v)].into() }),
            ..Default::default()
        };
        let mut mask = req.update_mask.take().unwrap_or_default();
        mask.paths = vec![format!("labels.{k}")];
        req.update_mask = Some(mask);
        client.call(client.namespaces().update(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    }
    Ok(())
}

async fn list(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let resp = client
        .call(client.namespaces().list(client.request(ListNamespacesRequest::default())))
        .await
        .map_err(|s| errdefs::from_grpc(&s))?;
    let names: Vec<String> = resp.namespaces.into_iter().map(|n| n.name).collect();

    let stdout = io::stdout().lock();
    if args.quiet {
        let mut out = io::BufWriter::new(stdout);
        for n in &names {
            writeln!(out, "{n}")?;
        }
        out.flush()?;
        return Ok(());
    }

    let mut tw = TabWriter::new(stdout, 1, 8, 1, ' ');
    writeln!(tw, "NAME\tLABELS\t")?;
    for name in names {
        // Labels are fetched one namespace at a time, as stock ctr does.
        let resp = client
            .call(client.namespaces().get(client.request(GetNamespaceRequest { name: name.clone() })))
            .await
            .map_err(|s| errdefs::from_grpc(&s))?;
        let labels = resp.namespace.map(|n| n.labels).unwrap_or_default();
        writeln!(tw, "{name}\t{}\t", format_labels(&labels))?;
    }
    tw.flush()?;
    Ok(())
}

async fn remove(global: &GlobalArgs, args: RemoveArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let mut exit_err: Option<anyhow::Error> = None;
    let mut out = io::stdout().lock();
    for target in &args.names {
        let res = async {
            if args.cgroup {
                delete_cgroup(target)?;
            }
            client
                .call(client.namespaces().delete(client.request(DeleteNamespaceRequest { name: target.clone() })))
                .await
                .map_err(|s| (s.code() == Code::NotFound, errdefs::from_grpc(&s)))
                .map(|_| ())
        }
        .await;
        match res {
            // A namespace that does not exist counts as removed.
            Ok(()) | Err((true, _)) => {}
            Err((false, e)) => {
                let msg = format!("unable to delete {target}");
                golog::error(&msg, &e);
                if exit_err.is_none() {
                    exit_err = Some(anyhow::anyhow!("{msg}: {e}"));
                }
                continue;
            }
        }
        writeln!(out, "{target}")?;
        out.flush()?;
    }
    match exit_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `--cgroup`: remove the namespace's cgroup (cgroup v2: `/sys/fs/cgroup/<ns>`;
/// v1: that directory under every hierarchy). A missing cgroup is fine.
fn delete_cgroup(name: &str) -> Result<(), (bool, anyhow::Error)> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut dirs = Vec::new();
    if root.join("cgroup.controllers").exists() {
        dirs.push(root.join(name));
    } else if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            dirs.push(e.path().join(name));
        }
    }
    for d in dirs {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(20) => {} // ENOTDIR: not a hierarchy
            Err(e) => return Err((false, anyhow::anyhow!("rmdir {}: {}", d.display(), crate::errdefs::os_text(&e)))),
        }
    }
    Ok(())
}
