//! `ctr images pull|push|import|export` through the daemon's Transfer
//! service, with containerd 1.6 ctr's flag names: the requests are built
//! as ctr 2.x builds them (`core/transfer/{image,registry,archive}`), the
//! archive bytes and the credentials go over `Streaming` streams, and the
//! progress events are shown live (see [`crate::progress`]).

use std::collections::HashMap;

use clap::Args;
use containerd_client::types::transfer::{
    ImageExportStream, ImageImportStream, ImageReference, ImageStore, OciRegistry, Progress, RegistryResolver,
    UnpackConfiguration,
};
use containerd_client::types::Platform;
use prost_types::Any;
use tokio::sync::mpsc;

use super::image_ops::{self, Lease};
use super::images::{RegistryFlags, SnapshotterFlag};
use super::{label_args, GlobalArgs};
use crate::client::Client;
use crate::errdefs;
use crate::progress::Display;
use crate::transfer::{self, to_any, AnyStream};

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub registry: RegistryFlags,
    #[command(flatten)]
    pub snapshotter: SnapshotterFlag,
    /// Labels to attach to the image
    #[arg(long)]
    pub label: Vec<String>,
    /// Pull content from a specific platform
    #[arg(long)]
    pub platform: Vec<String>,
    /// Pull content and metadata from all platforms
    #[arg(long)]
    pub all_platforms: bool,
    /// Pull metadata for all platforms
    #[arg(long)]
    pub all_metadata: bool,
    /// Print the resulting image's chain ID
    #[arg(long)]
    pub print_chainid: bool,
    /// Set the max concurrent downloads for each pull
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_downloads: i64,
    /// <ref>
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub registry: RegistryFlags,
    /// Digest of manifest
    #[arg(long, default_value = "")]
    pub manifest: String,
    /// Media type of manifest digest
    #[arg(long, default_value = "application/vnd.oci.image.manifest.v1+json")]
    pub manifest_type: String,
    /// Push content from a specific platform
    #[arg(long)]
    pub platform: Vec<String>,
    /// Set the max concurrent uploaded layers for each push
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_uploaded_layers: i64,
    /// Allow pushing blobs that are marked as non-distributable
    #[arg(long)]
    pub allow_non_distributable_blobs: bool,
    /// <remote> [<local>]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Base image name for added images, when provided only images with this name prefix are imported
    #[arg(long, default_value = "")]
    pub base_name: String,
    /// Whether to create digest images
    #[arg(long)]
    pub digests: bool,
    /// Skip applying --digests option to images named in the importing tar (use it in conjunction with --digests)
    #[arg(long)]
    pub skip_digest_for_named: bool,
    /// Image name to keep index as, by default index is discarded
    #[arg(long, default_value = "")]
    pub index_name: String,
    /// Imports content for all platforms, false by default
    #[arg(long)]
    pub all_platforms: bool,
    /// Imports content for specific platform
    #[arg(long, default_value = "")]
    pub platform: String,
    /// Skip unpacking the images, false by default
    #[arg(long)]
    pub no_unpack: bool,
    /// Compress uncompressed blobs when creating manifest (Docker format only)
    #[arg(long)]
    pub compress_blobs: bool,
    #[command(flatten)]
    pub snapshotter: SnapshotterFlag,
    /// Labels to attach to the imported images
    #[arg(long)]
    pub label: Vec<String>,
    /// <in>
    pub input: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Do not add Docker compatible manifest.json to archive
    #[arg(long)]
    pub skip_manifest_json: bool,
    /// Do not add non-distributable blobs such as Windows layers to archive
    #[arg(long)]
    pub skip_non_distributable: bool,
    /// Pull content from a specific platform
    #[arg(long)]
    pub platform: Vec<String>,
    /// Exports content from all platforms
    #[arg(long)]
    pub all_platforms: bool,
    /// <out> <image> ...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn proto_platform(p: &Platform) -> containerd_client::types::Platform {
    p.clone()
}

fn parse_platforms(specs: &[String]) -> anyhow::Result<Vec<Platform>> {
    specs.iter().map(|s| image_ops::parse_platform(s)).collect()
}

/// The progress stream of a transfer and the task showing its events.
struct ProgressView {
    id: String,
    shown: tokio::task::JoinHandle<()>,
    received: tokio::task::JoinHandle<()>,
}

impl ProgressView {
    async fn open(client: &Client) -> anyhow::Result<ProgressView> {
        let id = transfer::generate_id("progress");
        let stream = transfer::open_stream(client, &id).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
        let received = tokio::spawn(async move {
            // A broken progress stream does not fail the transfer.
            let _ = transfer::receive_progress(stream, tx).await;
        });
        let shown = tokio::spawn(async move {
            let mut display = Display::for_stdout();
            while let Some(p) = rx.recv().await {
                if display.event(&p).is_err() {
                    break;
                }
            }
            let _ = display.finish();
        });
        Ok(ProgressView { id, shown, received })
    }

    /// Wait for the daemon to close the stream and the last event shown.
    async fn finish(self) {
        let _ = self.received.await;
        let _ = self.shown.await;
    }
}

/// Split `user[:password]`; prompt on the terminal for a missing password.
fn credentials(user: &str) -> anyhow::Result<Option<(String, String)>> {
    if user.is_empty() {
        return Ok(None);
    }
    if let Some((u, p)) = user.split_once(':') {
        return Ok(Some((u.to_string(), p.to_string())));
    }
    let secret = read_password("Password: ")?;
    Ok(Some((user.to_string(), secret)))
}

/// Read a line from the terminal with echo off (ctr's `PasswordPrompt`).
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead as _, Write as _};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    let mut line = String::new();
    let res = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, OptionalActions::Now, t);
    }
    eprintln!();
    res?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `OCIRegistry{reference, resolver}`, opening the credentials stream when
/// a user was given.
async fn registry(
    client: &Client,
    reference: &str,
    flags: &RegistryFlags,
) -> anyhow::Result<(Any, Option<tokio::task::JoinHandle<()>>)> {
    let mut resolver = RegistryResolver {
        host_dir: flags.hosts_dir.clone(),
        default_scheme: if flags.plain_http { "http".to_string() } else { String::new() },
        ..Default::default()
    };
    resolver.http_debug = match (flags.http_dump, flags.http_trace) {
        (true, true) => 3,
        (true, false) => 1,
        (false, true) => 2,
        (false, false) => 0,
    };
    let mut serving = None;
    if let Some((username, secret)) = credentials(&flags.user)? {
        let id = transfer::generate_id("creds");
        let stream: AnyStream = transfer::open_stream(client, &id).await?;
        resolver.auth_stream = id;
        serving = Some(tokio::spawn(async move {
            let _ = transfer::serve_credentials(stream, username, secret).await;
        }));
    } else if !flags.refresh.is_empty() {
        anyhow::bail!("--refresh is not supported by this ctr");
    }
    let reg = OciRegistry { reference: reference.to_string(), resolver: Some(resolver) };
    Ok((to_any(&reg), serving))
}

/// Run a transfer under a lease (as `Client.Transfer` does), showing
/// progress when `progress` is set.
async fn run_transfer(client: &Client, source: Any, destination: Any, progress: bool) -> anyhow::Result<()> {
    let view = if progress { Some(ProgressView::open(client).await?) } else { None };
    let lease = Lease::create(client, None, HashMap::new()).await.map_err(|s| errdefs::from_grpc(&s))?;
    let leased = client.with_lease(&lease.id)?;
    let res = transfer::transfer(&leased, source, destination, view.as_ref().map(|v| v.id.clone())).await;
    let _ = lease.done(client).await;
    if let Some(view) = view {
        if res.is_ok() {
            view.finish().await;
        }
    }
    res.map_err(|s| errdefs::from_grpc(&s))
}

pub async fn pull(global: &GlobalArgs, args: PullArgs) -> anyhow::Result<()> {
    let Some(reference) = args.reference.clone().filter(|r| !r.is_empty()) else {
        anyhow::bail!("please provide an image reference to pull");
    };
    for (set, name) in [
        (args.registry.skip_verify, "skip-verify"),
        (!args.registry.tlscacert.is_empty(), "tlscacert"),
        (!args.registry.tlscert.is_empty(), "tlscert"),
        (!args.registry.tlskey.is_empty(), "tlskey"),
    ] {
        // The daemon resolves with its hosts configuration; these belong in
        // `--hosts-dir` (hosts.toml `skip_verify`, `ca`, `client`).
        if set && args.registry.hosts_dir.is_empty() {
            eprintln!("ctr: --{name} is applied by the daemon's hosts configuration; use --hosts-dir");
        }
    }
    let client = global.client().await?;
    let mut platforms = parse_platforms(&args.platform)?;
    if !platforms.is_empty() && args.all_platforms {
        anyhow::bail!("cannot specify both --platform and --all-platforms");
    }
    if platforms.is_empty() && !args.all_platforms {
        platforms.push(image_ops::default_platform());
    }
    let store = ImageStore {
        name: reference.clone(),
        labels: label_args(&args.label).into_iter().collect(),
        platforms: platforms.iter().map(proto_platform).collect(),
        all_metadata: true,
        unpacks: platforms
            .iter()
            .map(|p| UnpackConfiguration {
                platform: Some(p.clone()),
                snapshotter: args.snapshotter.snapshotter.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let (source, creds) = registry(&client, &reference, &args.registry).await?;
    let res = run_transfer(&client, source, to_any(&store), true).await;
    if let Some(c) = creds {
        c.abort();
    }
    res?;
    if args.print_chainid {
        let image = client
            .call(
                client
                    .images()
                    .get(client.request(containerd_client::services::v1::GetImageRequest { name: reference.clone() })),
            )
            .await
            .map_err(|s| errdefs::from_grpc(&s))?
            .image
            .unwrap_or_default();
        let target = image.target.unwrap_or_default();
        let m = image_ops::manifest(&client, &target, &platforms[0]).await?;
        println!("image chain ID: {}", image_ops::chain_id(&image_ops::rootfs(&client, &m.config).await?));
    }
    Ok(())
}

pub async fn push(global: &GlobalArgs, args: PushArgs) -> anyhow::Result<()> {
    let remote = args.args.first().cloned().unwrap_or_default();
    if remote.is_empty() {
        anyhow::bail!("please provide a remote image reference to push");
    }
    let local = args.args.get(1).cloned().unwrap_or_else(|| remote.clone());
    if !args.manifest.is_empty() {
        anyhow::bail!("--manifest is not supported through the transfer service");
    }
    let client = global.client().await?;
    let platforms = parse_platforms(&args.platform)?;
    let store =
        ImageStore { name: local, platforms: platforms.iter().map(proto_platform).collect(), ..Default::default() };
    let (destination, creds) = registry(&client, &remote, &args.registry).await?;
    let res = run_transfer(&client, to_any(&store), destination, true).await;
    if let Some(c) = creds {
        c.abort();
    }
    res
}

/// The destination of an import: how ctr 2.x turns `--base-name`,
/// `--digests`, `--index-name`, the platform flags and `--no-unpack` into
/// an `ImageStore`. `today` is the date of the default `import-<date>`
/// prefix.
pub fn import_store(args: &ImportArgs, today: &str) -> anyhow::Result<ImageStore> {
    let (prefix, overwrite) = if args.base_name.is_empty() {
        // The generated prefix gives way to names in the archive.
        (format!("import-{today}"), true)
    } else {
        (args.base_name.clone(), false)
    };
    let reference = ImageReference {
        name: prefix,
        is_prefix: true,
        allow_overwrite: overwrite,
        add_digest: args.digests,
        skip_named_digest: args.digests && args.skip_digest_for_named,
    };
    let unpack_platform = if args.platform.is_empty() {
        image_ops::default_platform()
    } else {
        image_ops::parse_platform(&args.platform)?
    };
    let mut store = ImageStore {
        name: args.index_name.clone(),
        labels: label_args(&args.label).into_iter().collect(),
        extra_references: vec![reference],
        ..Default::default()
    };
    if !args.all_platforms {
        store.platforms = vec![unpack_platform.clone()];
    }
    if !args.no_unpack {
        store.unpacks = vec![UnpackConfiguration {
            platform: Some(unpack_platform),
            snapshotter: args.snapshotter.snapshotter.clone(),
        }];
    }
    Ok(store)
}

/// Today's date as `YYYY-MM-DD`, in local time (Go's `time.Now()`).
fn today() -> String {
    let s = crate::gotime::rfc3339_local(crate::gotime::Timestamp::now());
    s[..10].to_string()
}

pub async fn import(global: &GlobalArgs, args: ImportArgs) -> anyhow::Result<()> {
    let Some(input) = args.input.clone().filter(|i| !i.is_empty()) else {
        anyhow::bail!("please provide an input file");
    };
    let client = global.client().await?;
    let store = import_store(&args, &today())?;
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if input == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&input)
                .await
                .map_err(|e| anyhow::anyhow!("open {input}: {}", crate::errdefs::os_text(&e)))?,
        )
    };
    let id = transfer::generate_id("import");
    let mut stream = transfer::open_stream(&client, &id).await?;
    let source = ImageImportStream { stream: id, media_type: String::new(), force_compress: args.compress_blobs };
    let sending = tokio::spawn(async move { transfer::send_stream(&mut stream, reader).await });
    let res = run_transfer(&client, to_any(&source), to_any(&store), true).await;
    let sent = sending.await;
    res?;
    match sent {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

pub async fn export(global: &GlobalArgs, args: ExportArgs) -> anyhow::Result<()> {
    let Some((out, images)) = args.args.split_first() else {
        anyhow::bail!("please provide both an output filename and an image reference to export");
    };
    if out.is_empty() || images.is_empty() {
        anyhow::bail!("please provide both an output filename and an image reference to export");
    }
    let platforms = parse_platforms(&args.platform)?;
    let client = global.client().await?;
    let writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if out == "-" {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(out)
                .await
                .map_err(|e| anyhow::anyhow!("open {out}: {}", crate::errdefs::os_text(&e)))?,
        )
    };
    let id = transfer::generate_id("export");
    let mut stream = transfer::open_stream(&client, &id).await?;
    let destination = ImageExportStream {
        stream: id,
        media_type: String::new(),
        platforms: platforms.clone(),
        all_platforms: args.all_platforms,
        skip_compatibility_manifest: args.skip_manifest_json,
        skip_non_distributable: args.skip_non_distributable,
    };
    let receiving = tokio::spawn(async move { transfer::receive_stream(&mut stream, writer).await });
    // ctr 2.x exports every named image through one store: the first as the
    // name, the rest as extra references.
    let store = ImageStore {
        name: images[0].clone(),
        extra_references: images[1..]
            .iter()
            .map(|n| ImageReference { name: n.clone(), ..Default::default() })
            .collect(),
        platforms,
        ..Default::default()
    };
    // The archive may be stdout: no progress display then.
    let res = run_transfer(&client, to_any(&store), to_any(&destination), out != "-").await;
    let received = receiving.await;
    res?;
    match received {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        import: ImportArgs,
    }

    fn store(args: &str) -> ImageStore {
        let cmd = Cmd::parse_from(std::iter::once("import").chain(args.split_whitespace()));
        import_store(&cmd.import, "2026-01-02").unwrap()
    }

    #[test]
    fn import_names_like_ctr2() {
        let s = store("a.tar");
        assert_eq!(s.name, "");
        let r = &s.extra_references[0];
        assert_eq!(
            (r.name.as_str(), r.is_prefix, r.allow_overwrite, r.add_digest),
            ("import-2026-01-02", true, true, false)
        );
        assert_eq!(s.platforms, vec![image_ops::default_platform()]);
        assert_eq!(s.unpacks.len(), 1);

        let s = store("--base-name example.com/bb --digests --index-name idx --no-unpack --all-platforms a.tar");
        assert_eq!(s.name, "idx");
        let r = &s.extra_references[0];
        assert_eq!(
            (r.name.as_str(), r.allow_overwrite, r.add_digest, r.skip_named_digest),
            ("example.com/bb", false, true, false)
        );
        assert!(s.platforms.is_empty());
        assert!(s.unpacks.is_empty());

        let s = store("--platform linux/arm64 --snapshotter native --label a=b a.tar");
        assert_eq!(s.platforms[0].architecture, "arm64");
        assert_eq!(s.unpacks[0].snapshotter, "native");
        assert_eq!(s.labels["a"], "b");
    }
}
