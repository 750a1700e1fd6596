//! `ctr images`: list, remove and label image records (containerd 1.6's
//! `cmd/ctr/commands/images`). `ls` computes an image's size and platforms
//! by walking its manifests in the content store, as containerd's
//! `images.Image.Size` and `images.Platforms` do.

use std::collections::HashMap;
use std::io::{self, Write};

use clap::{Args, Subcommand};
use containerd_client::services::v1::{DeleteImageRequest, Image, ListImagesRequest, UpdateImageRequest};
use containerd_client::services::v1::{InfoRequest, ReadContentRequest};
use containerd_client::types::{Descriptor, Platform};
use serde_json::Value;

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
async fn read_blob(client: &Client, digest: &str) -> anyhow::Result<Vec<u8>> {
    let info = client
        .call(client.content().info(client.request(InfoRequest { digest: digest.to_string() })))
        .await
        .map_err(|s| errdefs::from_grpc(&s))?
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
        .map_err(|s| errdefs::from_grpc(&s))?;
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

fn json_str(v: &Value, key: &str) -> String {
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
    let manifest = is_manifest(&desc.media_type);
    if !manifest && !is_index(&desc.media_type) {
        return Ok(Vec::new());
    }
    let blob = read_blob(client, &desc.digest).await?;
    let v: Value = serde_json::from_slice(&blob)?;
    if let Some(mt) = v.get("mediaType").and_then(Value::as_str) {
        if !mt.is_empty() && mt != desc.media_type {
            anyhow::bail!(
                "children: invalid desc {}: mediaType in manifest should be '{}' not '{}'",
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
