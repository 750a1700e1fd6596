//! `ctr images`: list, remove and label image records (containerd 1.6's
//! `cmd/ctr/commands/images`). `ls` computes an image's size and platforms
//! by walking its manifests in the content store, as containerd's
//! `images.Image.Size` and `images.Platforms` do.

use std::collections::HashMap;
use std::io::{self, Write};

use clap::{Args, Subcommand};
use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest, UpdateImageRequest,
};
use containerd_client::services::v1::{InfoRequest, ReadContentRequest};
use containerd_client::types::{Descriptor, Platform};
use serde_json::Value;

use super::image_ops::{self, Lease};
use super::image_transfer;
use super::{format_labels, label_args, GlobalArgs};
use crate::client::Client;
use crate::errdefs;
use crate::golog;
use crate::gotime::GO_ZERO_TIME_SECS;
use crate::platforms;
use crate::tabwriter::TabWriter;

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List images known to containerd
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Remove one or more images by reference
    #[command(visible_aliases = ["del", "remove", "rm"])]
    Delete(DeleteArgs),
    /// Set and clear labels for an image
    Label(LabelArgs),
    /// Tag an image
    Tag(TagArgs),
    /// Check existing images to ensure all content is available locally
    Check(CheckArgs),
    /// Unpack an image's layers into a snapshotter
    Unpack(UnpackArgs),
    /// Mount an image to a target path
    Mount(MountArgs),
    /// Unmount the image from the target
    Unmount(UnmountArgs),
    /// Display usage of snapshots for a given image ref
    Usage(UsageArgs),
    /// Pull an image from a remote
    Pull(image_transfer::PullArgs),
    /// Push an image to a remote
    Push(image_transfer::PushArgs),
    /// Import images
    Import(image_transfer::ImportArgs),
    /// Export images
    Export(image_transfer::ExportArgs),
}

/// `commands.SnapshotterFlags`.
#[derive(Debug, Clone, Args)]
pub struct SnapshotterFlag {
    /// Snapshotter name. Empty value stands for the default value.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "")]
    pub snapshotter: String,
}

impl SnapshotterFlag {
    /// The snapshotter, `overlayfs` when empty.
    pub fn name(&self) -> String {
        if self.snapshotter.is_empty() {
            image_ops::DEFAULT_SNAPSHOTTER.to_string()
        } else {
            self.snapshotter.clone()
        }
    }
}

/// `commands.RegistryFlags` (which 1.6 also gives `mount` and `unmount`).
#[derive(Debug, Clone, Args)]
pub struct RegistryFlags {
    /// Skip SSL certificate validation
    #[arg(short = 'k', long)]
    pub skip_verify: bool,
    /// Allow connections using plain HTTP
    #[arg(long)]
    pub plain_http: bool,
    /// User[:password] Registry user and password
    #[arg(short = 'u', long, default_value = "")]
    pub user: String,
    /// Refresh token for authorization server
    #[arg(long, default_value = "")]
    pub refresh: String,
    /// Custom hosts configuration directory
    #[arg(long, default_value = "")]
    pub hosts_dir: String,
    /// Path to TLS root CA
    #[arg(long, default_value = "")]
    pub tlscacert: String,
    /// Path to TLS client certificate
    #[arg(long, default_value = "")]
    pub tlscert: String,
    /// Path to TLS client key
    #[arg(long, default_value = "")]
    pub tlskey: String,
    /// Dump all HTTP request/responses when interacting with container registry
    #[arg(long)]
    pub http_dump: bool,
    /// Enable HTTP tracing for registry interactions
    #[arg(long)]
    pub http_trace: bool,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Force target_ref to be created, regardless if it already exists
    #[arg(long)]
    pub force: bool,
    /// Run tag locally rather than through transfer API (always local here)
    #[arg(long)]
    pub local: bool,
    /// <source_ref> <target_ref> [<target_ref>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub refs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print only the ready image refs (fully downloaded and unpacked)
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub snapshotter: SnapshotterFlag,
    /// [<filter>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    #[command(flatten)]
    pub snapshotter: SnapshotterFlag,
    /// Unpack the image for the specified platform
    #[arg(long, default_value_t = default_platform_string())]
    pub platform: String,
    /// <ref>
    pub image: Option<String>,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub registry: RegistryFlags,
    #[command(flatten)]
    pub snapshotter: SnapshotterFlag,
    /// Labels to attach to the image
    #[arg(long)]
    pub label: Vec<String>,
    /// Enable write support on the mount
    #[arg(long)]
    pub rw: bool,
    /// Mount the image for the specified platform
    #[arg(long, default_value_t = default_platform_string())]
    pub platform: String,
    /// <ref> <target>
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    #[command(flatten)]
    pub registry: RegistryFlags,
    #[command(flatten)]
    pub snapshotter: SnapshotterFlag,
    /// Labels to attach to the image
    #[arg(long)]
    pub label: Vec<String>,
    /// Remove the snapshot after a successful unmount
    #[arg(long)]
    pub rm: bool,
    /// <target>
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub snapshotter: SnapshotterFlag,
    /// <ref>
    pub image: Option<String>,
}

/// `platforms.DefaultString()`.
pub fn default_platform_string() -> String {
    platforms::format(&image_ops::default_platform())
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print only the image refs
    #[arg(short, long)]
    pub quiet: bool,

    /// [<filter>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Synchronously remove image and all associated resources
    #[arg(long)]
    pub sync: bool,

    /// <ref> [<ref>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub refs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Replace all labels
    #[arg(short, long)]
    pub replace_all: bool,

    /// <name> [<key>=<value>, ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: ImagesCommand) -> anyhow::Result<()> {
    match command {
        ImagesCommand::List(args) => list(global, args).await,
        ImagesCommand::Delete(args) => delete(global, args).await,
        ImagesCommand::Label(args) => label(global, args).await,
        ImagesCommand::Tag(args) => tag(global, args).await,
        ImagesCommand::Check(args) => check(global, args).await,
        ImagesCommand::Unpack(args) => unpack(global, args).await,
        ImagesCommand::Mount(args) => mount(global, args).await,
        ImagesCommand::Unmount(args) => unmount(global, args).await,
        ImagesCommand::Usage(args) => usage(global, args).await,
        ImagesCommand::Pull(args) => image_transfer::pull(global, args).await,
        ImagesCommand::Push(args) => image_transfer::push(global, args).await,
        ImagesCommand::Import(args) => image_transfer::import(global, args).await,
        ImagesCommand::Export(args) => image_transfer::export(global, args).await,
    }
}

async fn list(global: &GlobalArgs, args: ListArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let resp = client
        .call(client.images().list(client.request(ListImagesRequest { filters: args.filters })))
        .await
        .map_err(|s| anyhow::anyhow!("failed to list images: {}", errdefs::from_grpc(&s)))?;
    if args.quiet {
        let mut out = io::BufWriter::new(io::stdout().lock());
        for i in &resp.images {
            writeln!(out, "{}", i.name)?;
        }
        out.flush()?;
        return Ok(());
    }
    let mut tw = TabWriter::new(io::stdout().lock(), 1, 8, 1, ' ');
    writeln!(tw, "REF\tTYPE\tDIGEST\tSIZE\tPLATFORMS\tLABELS\t")?;
    for image in &resp.images {
        let target = image.target.clone().unwrap_or_default();
        let (size, err) = image_size(&client, &target).await;
        if let Some(err) = err {
            golog::error(&format!("failed calculating size for image {}", image.name), &err);
        }
        let platform_column = match image_platforms(&client, &target).await {
            Err(err) => {
                golog::error(&format!("failed resolving platform for image {}", image.name), &err);
                "-".to_string()
            }
            Ok(ps) if ps.is_empty() => "-".to_string(),
            Ok(ps) => platforms::pretty(&ps),
        };
        let labels = if image.labels.is_empty() { "-".to_string() } else { format_labels(&image.labels) };
        writeln!(
            tw,
            "{}\t{}\t{}\t{}\t{}\t{}\t",
            image.name,
            target.media_type,
            target.digest,
            progress_bytes(size),
            platform_column,
            labels
        )?;
    }
    tw.flush()?;
    Ok(())
}

async fn delete(global: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let mut exit_err: Option<anyhow::Error> = None;
    let last = args.refs.len().saturating_sub(1);
    for (i, target) in args.refs.iter().enumerate() {
        let req = DeleteImageRequest { name: target.clone(), sync: args.sync && i == last, ..Default::default() };
        match client.call(client.images().delete(client.request(req))).await {
            Ok(_) => {
                let mut out = io::stdout().lock();
                writeln!(out, "{target}")?;
                out.flush()?;
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                golog::warn_plain(&format!("{target}: image not found"));
            }
            Err(s) => {
                let err = errdefs::from_grpc(&s);
                golog::error(&format!("unable to delete {target}"), &err);
                if exit_err.is_none() {
                    exit_err = Some(anyhow::anyhow!("unable to delete {target}: {err}"));
                }
            }
        }
    }
    match exit_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn label(global: &GlobalArgs, args: LabelArgs) -> anyhow::Result<()> {
    let (name, labels) = match args.args.split_first() {
        Some((first, rest)) => (first.clone(), label_args(rest)),
        None => (String::new(), Default::default()),
    };
    let client = global.client().await?;
    if name.is_empty() {
        anyhow::bail!("please specify an image");
    }
    let paths: Vec<String> =
        labels.keys().map(|k| if args.replace_all { "labels".to_string() } else { format!("labels.{k}") }).collect();
    let zero = prost_types::Timestamp { seconds: GO_ZERO_TIME_SECS, nanos: 0 };
    let image = Image {
        name,
        labels: labels.into_iter().collect(),
        target: Some(Descriptor::default()),
        created_at: Some(zero),
        updated_at: Some(zero),
    };
    let req = UpdateImageRequest {
        image: Some(image),
        update_mask: (!paths.is_empty()).then_some(prost_types::FieldMask { paths }),
        ..Default::default()
    };
    let updated = client.call(client.images().update(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    let labels: HashMap<String, String> = updated.image.map(|i| i.labels).unwrap_or_default();
    let mut out = io::stdout().lock();
    writeln!(out, "{}", format_labels(&labels))?;
    out.flush()?;
    Ok(())
}

/// Write a line to stdout now (Go's `fmt.Println`).
fn println_flush(line: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Get an image record (the images service's `Get`, errors converted).
pub(crate) async fn get_image(client: &Client, name: &str) -> anyhow::Result<Image> {
    let req = GetImageRequest { name: name.to_string() };
    let resp = client.call(client.images().get(client.request(req))).await.map_err(|s| image_ops::grpc_error(&s))?;
    resp.image.ok_or_else(|| anyhow::anyhow!("image {name:?}: not found"))
}

async fn tag(global: &GlobalArgs, args: TagArgs) -> anyhow::Result<()> {
    let Some((source, targets)) = args.refs.split_first() else {
        anyhow::bail!("please provide an image reference to tag from");
    };
    if source.is_empty() {
        anyhow::bail!("please provide an image reference to tag from");
    }
    if targets.is_empty() {
        anyhow::bail!("please provide an image reference to tag to");
    }
    let client = global.client().await?;
    let lease = Lease::create(&client, None, HashMap::new()).await.map_err(|s| errdefs::from_grpc(&s))?;
    let leased = client.with_lease(&lease.id)?;
    let res = tag_all(&leased, source, targets, args.force).await;
    // Go defers the lease's removal and ignores its error.
    let _ = lease.done(&client).await;
    res
}

async fn tag_all(client: &Client, source: &str, targets: &[String], force: bool) -> anyhow::Result<()> {
    let mut image = get_image(client, source).await?;
    for target in targets {
        image.name = target.clone();
        let create = |image: Image| async {
            client
                .call(
                    client
                        .images()
                        .create(client.request(CreateImageRequest { image: Some(image), ..Default::default() })),
                )
                .await
        };
        match create(image.clone()).await {
            Ok(_) => {}
            Err(s) if image_ops::is_already_exists(&s) && force => {
                let req = DeleteImageRequest { name: target.clone(), ..Default::default() };
                client.call(client.images().delete(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
                create(image.clone()).await.map_err(|s| errdefs::from_grpc(&s))?;
            }
            Err(s) => return Err(errdefs::from_grpc(&s)),
        }
        println_flush(target)?;
    }
    Ok(())
}

async fn check(global: &GlobalArgs, args: CheckArgs) -> anyhow::Result<()> {
    let client = global.client().await?;
    let resp = client
        .call(client.images().list(client.request(ListImagesRequest { filters: args.filters })))
        .await
        .map_err(|s| anyhow::anyhow!("failed listing images: {}", errdefs::from_grpc(&s)))?;
    if resp.images.is_empty() {
        return Ok(());
    }
    let snapshotter = args.snapshotter.name();
    let platform = image_ops::default_platform();
    let mut exit_err: Option<anyhow::Error> = None;
    let mut tw = TabWriter::new(io::stdout().lock(), 1, 8, 1, ' ');
    if !args.quiet {
        writeln!(tw, "REF\tTYPE\tDIGEST\tSTATUS\tSIZE\tUNPACKED\t")?;
    }
    for image in &resp.images {
        let target = image.target.clone().unwrap_or_default();
        let mut complete = true;
        let (status, size) = match image_ops::check(&client, &target, &platform).await {
            Err(err) => {
                golog::error(&format!("unable to check {}", image.name), &format!("{err:#}"));
                if exit_err.is_none() {
                    exit_err = Some(anyhow::anyhow!("unable to check {}: {err:#}", image.name));
                }
                complete = false;
                ("error".to_string(), "-".to_string())
            }
            Ok(c) => {
                let required: i64 = c.required.iter().map(|d| d.size).sum();
                let present: i64 = c.present.iter().map(|d| d.size).sum();
                let mut status = "complete".to_string();
                if !c.missing.is_empty() {
                    status = "incomplete".to_string();
                    complete = false;
                }
                if c.available {
                    (
                        format!("{status} ({}/{})", c.present.len(), c.required.len()),
                        format!("{}/{}", progress_bytes(present), progress_bytes(required)),
                    )
                } else {
                    complete = false;
                    (format!("unavailable ({}/?)", c.present.len()), format!("{}/?", progress_bytes(present)))
                }
            }
        };
        let unpacked = match image_ops::is_unpacked(&client, &target, &platform, &snapshotter).await {
            Ok(u) => u,
            Err(err) => {
                golog::error(&format!("unable to check unpack for {}", image.name), &format!("{err:#}"));
                if exit_err.is_none() {
                    exit_err = Some(anyhow::anyhow!("unable to check unpack for {}: {err:#}", image.name));
                }
                false
            }
        };
        if !args.quiet {
            writeln!(
                tw,
                "{}\t{}\t{}\t{}\t{}\t{}",
                image.name, target.media_type, target.digest, status, size, unpacked
            )?;
        } else if complete && unpacked {
            // Go prints these straight to stdout, not through the table.
            println_flush(&image.name)?;
        }
    }
    if !args.quiet {
        tw.flush()?;
    }
    match exit_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn unpack(global: &GlobalArgs, args: UnpackArgs) -> anyhow::Result<()> {
    let Some(name) = args.image.filter(|n| !n.is_empty()) else {
        anyhow::bail!("please provide an image reference to unpack");
    };
    let platform = image_ops::parse_platform(&args.platform)
        .map_err(|e| anyhow::anyhow!("unable to parse platform {}: {e:#}", args.platform))?;
    let client = global.client().await?;
    let image = get_image(&client, &name).await?;
    let target = image.target.unwrap_or_default();
    {
        let mut out = io::stdout().lock();
        write!(out, "unpacking {name} ({})...", target.digest)?;
        out.flush()?;
    }
    match image_ops::unpack(&client, &name, &target, &platform, &args.snapshotter.name()).await {
        Ok(()) => println_flush("done"),
        Err(e) => {
            println_flush("")?;
            Err(e)
        }
    }
}

async fn mount(global: &GlobalArgs, args: MountArgs) -> anyhow::Result<()> {
    let reference = args.args.first().cloned().unwrap_or_default();
    let target = args.args.get(1).cloned().unwrap_or_default();
    if reference.is_empty() {
        anyhow::bail!("please provide an image reference to mount");
    }
    if target.is_empty() {
        anyhow::bail!("please provide a target path to mount to");
    }
    let client = global.client().await?;
    // containerd 1.6 ctr ignores `--snapshotter` here: it takes the
    // snapshotter from a third argument, else the default.
    let snapshotter = match args.args.get(2) {
        Some(sn) if !sn.is_empty() => sn.clone(),
        _ => image_ops::DEFAULT_SNAPSHOTTER.to_string(),
    };
    // The lease is named after the target and holds the mount's snapshot
    // until `unmount --rm` (or a day) ends it.
    let labels = [(format!("containerd.io/gc.ref.snapshot.{snapshotter}"), target.clone())].into_iter().collect();
    let (client, lease) = match Lease::create(&client, Some(&target), labels).await {
        Ok(lease) => (client.with_lease(&lease.id)?, Some(lease)),
        Err(s) if image_ops::is_already_exists(&s) => (client, None),
        Err(s) => return Err(errdefs::from_grpc(&s)),
    };
    let res = mount_leased(&client, &args, &reference, &target, &snapshotter).await;
    if res.is_err() {
        if let Some(lease) = lease {
            let _ = lease.done(&client).await;
        }
    }
    res
}

async fn mount_leased(
    client: &Client,
    args: &MountArgs,
    reference: &str,
    target: &str,
    snapshotter: &str,
) -> anyhow::Result<()> {
    use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, ViewSnapshotRequest};
    let platform = image_ops::parse_platform(&args.platform)
        .map_err(|e| anyhow::anyhow!("unable to parse platform {}: {e:#}", args.platform))?;
    let image = get_image(client, reference).await?;
    let image_target = image.target.unwrap_or_default();
    image_ops::unpack(client, reference, &image_target, &platform, snapshotter)
        .await
        .map_err(|e| anyhow::anyhow!("error unpacking image: {e:#}"))?;
    let m = image_ops::manifest(client, &image_target, &platform).await?;
    let chain_id = image_ops::chain_id(&image_ops::rootfs(client, &m.config).await?);
    println_flush(&chain_id)?;
    let sn = client.snapshots();
    let res = if args.rw {
        let req = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: target.to_string(),
            parent: chain_id.clone(),
            labels: HashMap::new(),
        };
        client.call(sn.clone().prepare(client.request(req))).await.map(|r| r.mounts)
    } else {
        let req = ViewSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: target.to_string(),
            parent: chain_id.clone(),
            labels: HashMap::new(),
        };
        client.call(sn.clone().view(client.request(req))).await.map(|r| r.mounts)
    };
    let mounts = match res {
        Ok(m) => m,
        Err(s) if image_ops::is_already_exists(&s) => {
            let req = MountsRequest { snapshotter: snapshotter.to_string(), key: target.to_string() };
            client.call(sn.clone().mounts(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?.mounts
        }
        Err(s) => return Err(errdefs::from_grpc(&s)),
    };
    if let Err(e) = crate::mount::all(&mounts, std::path::Path::new(target)) {
        let req = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: target.to_string() };
        if let Err(s) = client.call(sn.clone().remove(client.request(req))).await {
            if s.code() != tonic::Code::NotFound {
                eprintln!("Error cleaning up snapshot after mount error: {}", errdefs::from_grpc(&s));
            }
        }
        return Err(e);
    }
    println_flush(target)
}

async fn unmount(global: &GlobalArgs, args: UnmountArgs) -> anyhow::Result<()> {
    let target = args.args.first().cloned().unwrap_or_default();
    if target.is_empty() {
        anyhow::bail!("please provide a target path to unmount from");
    }
    let client = global.client().await?;
    crate::mount::unmount_all(std::path::Path::new(&target))?;
    if args.rm {
        use containerd_client::services::v1::DeleteRequest as DeleteLeaseRequest;
        let req = DeleteLeaseRequest { id: target.clone(), sync: false };
        if let Err(s) = client.call(client.leases().delete(client.request(req))).await {
            if s.code() != tonic::Code::NotFound {
                anyhow::bail!("error deleting lease: {}", errdefs::from_grpc(&s));
            }
        }
        let req = RemoveSnapshotRequest { snapshotter: args.snapshotter.name(), key: target.clone() };
        if let Err(s) = client.call(client.snapshots().remove(client.request(req))).await {
            if s.code() != tonic::Code::NotFound {
                anyhow::bail!("error removing snapshot: {}", errdefs::from_grpc(&s));
            }
        }
    }
    println_flush(&target)
}

async fn usage(global: &GlobalArgs, args: UsageArgs) -> anyhow::Result<()> {
    use containerd_client::services::v1::snapshots::{StatSnapshotRequest, UsageRequest};
    let Some(name) = args.image.filter(|n| !n.is_empty()) else {
        anyhow::bail!("please provide an image reference to mount");
    };
    let client = global.client().await?;
    let snapshotter = args.snapshotter.name();
    let image = get_image(&client, &name)
        .await
        .map_err(|e| anyhow::anyhow!("failed to ensure if image {name} exists: {e:#}"))?;
    let target = image.target.unwrap_or_default();
    let platform = image_ops::default_platform();
    match image_ops::is_unpacked(&client, &target, &platform, &snapshotter).await {
        Err(e) => {
            anyhow::bail!("failed to ensure if image {name} has been unpacked in snapshotter {snapshotter}: {e:#}")
        }
        Ok(false) => anyhow::bail!("image {name} isn't unpacked in snapshotter {snapshotter}"),
        Ok(true) => {}
    }
    let m = image_ops::manifest(&client, &target, &platform).await?;
    let diffs = image_ops::rootfs(&client, &m.config).await?;
    let mut tw = TabWriter::new(io::stdout().lock(), 1, 8, 1, ' ');
    writeln!(tw, "KEY\tSIZE\tINODES\t")?;
    let mut key = image_ops::chain_id(&diffs);
    while !key.is_empty() {
        let req = UsageRequest { snapshotter: snapshotter.clone(), key: key.clone() };
        let u = client
            .call(client.snapshots().usage(client.request(req)))
            .await
            .map_err(|s| anyhow::anyhow!("failed to get usage for snapshot {key}: {}", errdefs::from_grpc(&s)))?;
        writeln!(tw, "{key}\t{}\t{}\t", progress_bytes(u.size), u.inodes)?;
        let req = StatSnapshotRequest { snapshotter: snapshotter.clone(), key: key.clone() };
        let info = client.call(client.snapshots().stat(client.request(req))).await.map_err(|s| {
            anyhow::anyhow!("failed to ensure if snapshot {key} has parent or not: {}", errdefs::from_grpc(&s))
        })?;
        key = info.info.map(|i| i.parent).unwrap_or_default();
    }
    tw.flush()?;
    Ok(())
}

/// containerd 1.6's `progress.Bytes`: binary units, `%02.1f %s`.
pub fn progress_bytes(size: i64) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let mut size = size as f64;
    let mut i = 0;
    while size >= 1024.0 && i < UNITS.len() - 1 {
        size /= 1024.0;
        i += 1;
    }
    format!("{size:.1} {}", UNITS[i])
}

// ---------------------------------------------------------------------------
// Walking an image in the content store.

/// An OCI descriptor read from a manifest or index.
#[derive(Debug, Clone, Default)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub platform: Option<Platform>,
}

impl From<&Descriptor> for Desc {
    fn from(d: &Descriptor) -> Self {
        Desc { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, platform: None }
    }
}

pub fn is_manifest_type(mt: &str) -> bool {
    is_manifest(mt)
}

pub fn is_index_type(mt: &str) -> bool {
    is_index(mt)
}

fn is_manifest(mt: &str) -> bool {
    mt == MEDIA_DOCKER_MANIFEST || mt == MEDIA_OCI_MANIFEST
}

fn is_index(mt: &str) -> bool {
    mt == MEDIA_DOCKER_LIST || mt == MEDIA_OCI_INDEX
}

fn is_config(mt: &str) -> bool {
    mt == MEDIA_DOCKER_CONFIG || mt == MEDIA_OCI_CONFIG
}

/// `content.ReadBlob`: Info (for the size), then the whole blob.
pub async fn read_blob(client: &Client, digest: &str) -> anyhow::Result<Vec<u8>> {
    let info = client
        .call(client.content().info(client.request(InfoRequest { digest: digest.to_string() })))
        .await
        .map_err(|s| image_ops::grpc_error(&s))?
        .info
        .unwrap_or_default();
    let size = info.size;
    let mut data = Vec::with_capacity(size.max(0) as usize);
    if size <= 0 {
        return Ok(data);
    }
    let mut stream = client
        .call(client.content().read(client.request(ReadContentRequest { digest: digest.to_string(), offset: 0, size })))
        .await
        .map_err(|s| image_ops::grpc_error(&s))?;
    while (data.len() as i64) < size {
        match client.recv(&mut stream).await.map_err(|s| errdefs::from_grpc(&s))? {
            Some(msg) => data.extend_from_slice(&msg.data),
            None => break,
        }
    }
    if (data.len() as i64) < size {
        anyhow::bail!("unexpected EOF");
    }
    data.truncate(size as usize);
    Ok(data)
}

pub fn json_str(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn parse_desc(v: &Value) -> Desc {
    let platform = v.get("platform").filter(|p| p.is_object()).map(|p| Platform {
        os: json_str(p, "os"),
        architecture: json_str(p, "architecture"),
        variant: json_str(p, "variant"),
        os_version: json_str(p, "os.version"),
    });
    Desc {
        media_type: json_str(v, "mediaType"),
        digest: json_str(v, "digest"),
        size: v.get("size").and_then(Value::as_i64).unwrap_or(0),
        platform,
    }
}

/// `images.Children`: a manifest's config and layers, an index's manifests.
async fn children(client: &Client, desc: &Desc) -> anyhow::Result<Vec<Desc>> {
    children_of(client, desc, "children").await
}

/// [`children`], with the caller's name (`children`, `manifest`) leading
/// a media type mismatch error, as each Go caller words it.
pub async fn children_of(client: &Client, desc: &Desc, caller: &str) -> anyhow::Result<Vec<Desc>> {
    let manifest = is_manifest(&desc.media_type);
    if !manifest && !is_index(&desc.media_type) {
        return Ok(Vec::new());
    }
    let blob = read_blob(client, &desc.digest).await?;
    let v: Value = serde_json::from_slice(&blob)?;
    if let Some(mt) = v.get("mediaType").and_then(Value::as_str) {
        if !mt.is_empty() && mt != desc.media_type {
            anyhow::bail!(
                "{caller}: invalid desc {}: mediaType in manifest should be '{}' not '{}'",
                desc.digest,
                mt,
                desc.media_type
            );
        }
    }
    let list = |key: &str| -> Vec<Desc> {
        v.get(key).and_then(Value::as_array).map(|a| a.iter().map(parse_desc).collect()).unwrap_or_default()
    };
    if manifest {
        let mut out = vec![v.get("config").map(parse_desc).unwrap_or_default()];
        out.extend(list("layers"));
        Ok(out)
    } else {
        Ok(list("manifests"))
    }
}

/// `platforms.Normalize`.
pub fn normalize(p: &Platform) -> Platform {
    let mut arch = p.architecture.to_lowercase();
    let mut variant = p.variant.to_lowercase();
    match arch.as_str() {
        "i386" => {
            arch = "386".into();
            variant.clear();
        }
        "x86_64" | "x86-64" | "amd64" => {
            arch = "amd64".into();
            if variant == "v1" {
                variant.clear();
            }
        }
        "aarch64" | "arm64" => {
            arch = "arm64".into();
            if variant == "8" || variant == "v8" {
                variant.clear();
            }
        }
        "armhf" => {
            arch = "arm".into();
            variant = "v7".into();
        }
        "armel" => {
            arch = "arm".into();
            variant = "v6".into();
        }
        "arm" => match variant.as_str() {
            "" | "7" => variant = "v7".into(),
            "5" | "6" | "8" => variant = format!("v{variant}"),
            _ => {}
        },
        _ => {}
    }
    Platform { os: p.os.to_lowercase(), architecture: arch, variant, os_version: p.os_version.clone() }
}

/// `platforms.DefaultSpec()`, normalized.
fn default_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    normalize(&Platform {
        os: std::env::consts::OS.to_string(),
        architecture: arch.to_string(),
        variant: String::new(),
        os_version: String::new(),
    })
}

/// `platforms.Default().Match`.
fn matches_default(p: &Platform) -> bool {
    let d = default_platform();
    let n = normalize(p);
    n.os == d.os && n.architecture == d.architecture && n.variant == d.variant
}

/// `images.Image.Size` for the default platform: the sizes of every
/// descriptor walked (the error, if any, stops the walk; the size so far is
/// still returned, as in Go).
async fn image_size(client: &Client, target: &Descriptor) -> (i64, Option<anyhow::Error>) {
    let mut size = 0i64;
    let mut stack: Vec<Desc> = vec![target.into()];
    while let Some(desc) = stack.pop() {
        if desc.size < 0 {
            return (
                size,
                Some(anyhow::anyhow!("invalid size {} in {} ({})", desc.size, desc.digest, desc.media_type)),
            );
        }
        size += desc.size;
        let mut kids = match children(client, &desc).await {
            Ok(k) => k,
            Err(e) => return (size, Some(e)),
        };
        // FilterPlatforms.
        kids.retain(|k| k.platform.as_ref().is_none_or(matches_default));
        // LimitManifests(1).
        if is_index(&desc.media_type) {
            kids.sort_by_key(|k| k.platform.is_none());
            if kids.is_empty() {
                return (size, Some(anyhow::anyhow!("no match for platform in manifest: not found")));
            }
            kids.truncate(1);
        }
        // Depth first, in order.
        stack.extend(kids.into_iter().rev());
    }
    (size, None)
}

/// `images.Platforms`: the platforms of the index entries and of the
/// configs reached.
async fn image_platforms(client: &Client, target: &Descriptor) -> anyhow::Result<Vec<Platform>> {
    let mut out = Vec::new();
    let mut stack: Vec<Desc> = vec![target.into()];
    while let Some(desc) = stack.pop() {
        if let Some(p) = &desc.platform {
            if p.os != "unknown" && p.architecture != "unknown" {
                out.push(p.clone());
            }
            continue;
        }
        if is_config(&desc.media_type) {
            let blob = read_blob(client, &desc.digest).await?;
            let v: Value = serde_json::from_slice(&blob)?;
            out.push(normalize(&Platform {
                os: json_str(&v, "os"),
                architecture: json_str(&v, "architecture"),
                variant: String::new(),
                os_version: String::new(),
            }));
        }
        let kids = children(client, &desc).await?;
        stack.extend(kids.into_iter().rev());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plat(os: &str, arch: &str, variant: &str) -> Platform {
        Platform { os: os.into(), architecture: arch.into(), variant: variant.into(), os_version: String::new() }
    }

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(normalize(&plat("Linux", "x86_64", "")), plat("linux", "amd64", ""));
        assert_eq!(normalize(&plat("linux", "aarch64", "v8")), plat("linux", "arm64", ""));
        assert_eq!(normalize(&plat("linux", "arm", "")), plat("linux", "arm", "v7"));
        assert_eq!(normalize(&plat("linux", "armel", "")), plat("linux", "arm", "v6"));
    }

    #[test]
    fn sizes_like_progress_bytes() {
        assert_eq!(progress_bytes(10), "10.0 B");
        assert_eq!(progress_bytes(0), "0.0 B");
        assert_eq!(progress_bytes(1_235_049), "1.2 MiB");
        assert_eq!(progress_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn descriptors_from_json() {
        let v: Value = serde_json::from_str(
            r#"{"mediaType":"m","digest":"d","size":3,"platform":{"os":"linux","architecture":"arm","variant":"v7"}}"#,
        )
        .unwrap();
        let d = parse_desc(&v);
        assert_eq!((d.media_type.as_str(), d.digest.as_str(), d.size), ("m", "d", 3));
        assert_eq!(d.platform, Some(plat("linux", "arm", "v7")));
    }
}
