//! What the client-side image commands (`check`, `unpack`, `mount`,
//! `usage`, `tag`) share, done over gRPC as containerd's Go client does:
//! picking an image's manifest for a platform (`images.Manifest`), its
//! rootfs and chain ID, checking its content (`images.Check`), unpacking it
//! into a snapshotter (`Image.Unpack` with `rootfs.ApplyLayerWithOpts`),
//! and short-lived leases (`Client.WithLease`).

use std::collections::HashMap;
use std::io::Read;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, Info as ContentInfo, InfoRequest, UpdateRequest};
use containerd_client::services::v1::{CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest};
use containerd_client::types::{Descriptor, Platform};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::images::{children_of, is_index_type, is_manifest_type, json_str, read_blob, Desc};
use crate::client::Client;
use crate::errdefs;
use crate::gotime::{rfc3339_local, Timestamp};

/// containerd's default snapshotter on Linux.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// The label a lease expires by.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// The label on a layer blob naming its uncompressed digest.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// `Client.WithLease`'s default lifetime.
const LEASE_LIFETIME_NANOS: i64 = 24 * 3600 * 1_000_000_000;

/// An error containerd classifies as not found (`errdefs.IsNotFound`),
/// which some callers treat as an answer rather than a failure.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// `errdefs.FromGRPC`, keeping not-found recognisable.
pub fn grpc_error(status: &tonic::Status) -> anyhow::Error {
    let err = errdefs::from_grpc(status);
    if status.code() == tonic::Code::NotFound {
        anyhow::Error::new(NotFound(err.to_string()))
    } else {
        err
    }
}

pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<NotFound>().is_some())
}

pub fn is_already_exists(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::AlreadyExists
}

// ---------------------------------------------------------------------------
// Platforms.

/// `platforms.DefaultSpec()`, normalized.
pub fn default_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    super::images::normalize(&Platform {
        os: std::env::consts::OS.to_string(),
        architecture: arch.to_string(),
        variant: String::new(),
        os_version: String::new(),
    })
}

const KNOWN_OS: [&str; 16] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
];

/// `platforms.Parse`: `os[/arch[/variant]]` or a bare architecture, filled
/// in from the default platform and normalized.
pub fn parse_platform(spec: &str) -> anyhow::Result<Platform> {
    let invalid = || anyhow::anyhow!("{spec:?}: unknown operating system or architecture: invalid argument");
    let parts: Vec<&str> = spec.split('/').collect();
    if let Some(bad) =
        parts.iter().find(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(anyhow::anyhow!(
            "{bad:?} is an invalid component of {spec:?}: platform specifier component must match \"^[A-Za-z0-9_-]+$\": invalid argument"
        ));
    }
    let def = default_platform();
    let p = |os: &str, arch: &str, variant: &str| Platform {
        os: os.to_lowercase(),
        architecture: arch.to_string(),
        variant: variant.to_string(),
        os_version: String::new(),
    };
    let parsed = match parts.as_slice() {
        [one] if KNOWN_OS.contains(&one.to_lowercase().as_str()) => p(one, &def.architecture, &def.variant),
        [one] => p(&def.os, one, ""),
        [os, arch] => p(os, arch, ""),
        [os, arch, variant] => p(os, arch, variant),
        _ => return Err(invalid()),
    };
    Ok(super::images::normalize(&parsed))
}

/// `platforms.Only(p)` without the compatibility tail: the same normalized
/// OS, architecture and variant.
pub fn platform_matches(want: &Platform, p: &Platform) -> bool {
    let (w, n) = (super::images::normalize(want), super::images::normalize(p));
    w.os == n.os && w.architecture == n.architecture && w.variant == n.variant
}

// ---------------------------------------------------------------------------
// Manifests, configs and the rootfs.

/// A manifest chosen for a platform: its config and layers.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub config: Desc,
    pub layers: Vec<Desc>,
}

/// The `os`/`architecture`/`variant` a config blob names.
async fn config_platform(client: &Client, config: &Desc) -> anyhow::Result<Platform> {
    let blob = read_blob(client, &config.digest).await?;
    let v: Value = serde_json::from_slice(&blob)?;
    Ok(super::images::normalize(&Platform {
        os: json_str(&v, "os"),
        architecture: json_str(&v, "architecture"),
        variant: json_str(&v, "variant"),
        os_version: String::new(),
    }))
}

/// `images.Manifest`: walk from the target, keeping manifests that match
/// the platform (the first, by index order); an index contributes its
/// first matching entry. Not found (an error [`is_not_found`] sees) when
/// nothing matches.
pub async fn manifest(client: &Client, target: &Descriptor, platform: &Platform) -> anyhow::Result<Manifest> {
    let root = Desc::from(target);
    let mut was_index = false;
    let mut stack = vec![root.clone()];
    while let Some(desc) = stack.pop() {
        if is_manifest_type(&desc.media_type) {
            let kids = children_of(client, &desc, "manifest").await?;
            let config = kids.first().cloned().unwrap_or_default();
            if desc.digest != root.digest {
                let matched = match &desc.platform {
                    Some(p) => platform_matches(platform, p),
                    None => platform_matches(platform, &config_platform(client, &config).await?),
                };
                if !matched {
                    continue;
                }
            }
            return Ok(Manifest { config, layers: kids[1..].to_vec() });
        } else if is_index_type(&desc.media_type) {
            let mut kids: Vec<Desc> = children_of(client, &desc, "manifest")
                .await?
                .into_iter()
                .filter(|d| d.platform.as_ref().is_none_or(|p| platform_matches(platform, p)))
                .collect();
            kids.sort_by_key(|d| d.platform.is_none());
            kids.truncate(1);
            was_index = true;
            stack.extend(kids.into_iter().rev());
        } else {
            return Err(anyhow::Error::new(NotFound(format!(
                "unexpected media type {} for {}: not found",
                desc.media_type, desc.digest
            ))));
        }
    }
    let msg = if was_index {
        format!("no match for platform in manifest {}: not found", root.digest)
    } else {
        format!("manifest {}: not found", root.digest)
    };
    Err(anyhow::Error::new(NotFound(msg)))
}

/// `images.RootFS`: the diff IDs the config lists.
pub async fn rootfs(client: &Client, config: &Desc) -> anyhow::Result<Vec<String>> {
    let blob = read_blob(client, &config.digest).await?;
    let v: Value = serde_json::from_slice(&blob)?;
    Ok(v.get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default())
}

/// `identity.ChainID`: the first diff ID, then `sha256(parent + " " + diff)`.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut iter = diff_ids.iter();
    let Some(first) = iter.next() else {
        return String::new();
    };
    iter.fold(first.clone(), |parent, diff| {
        format!("sha256:{}", hex_lower(&Sha256::digest(format!("{parent} {diff}").as_bytes())))
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `images.IsLayerType`.
pub fn is_layer_type(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip"
}

/// `images.Check`: `(available, required, present, missing)`.
pub struct CheckResult {
    pub available: bool,
    pub required: Vec<Desc>,
    pub present: Vec<Desc>,
    pub missing: Vec<Desc>,
}

pub async fn check(client: &Client, target: &Descriptor, platform: &Platform) -> anyhow::Result<CheckResult> {
    let m = match manifest(client, target, platform).await {
        Ok(m) => m,
        Err(e) if is_not_found(&e) => {
            let t = Desc::from(target);
            return Ok(CheckResult {
                available: false,
                required: vec![t.clone()],
                present: Vec::new(),
                missing: vec![t],
            });
        }
        Err(e) => return Err(anyhow::anyhow!("failed to check image {}: {e:#}", target.digest)),
    };
    let mut required = vec![m.config];
    required.extend(m.layers);
    let (mut present, mut missing) = (Vec::new(), Vec::new());
    for d in &required {
        let req = InfoRequest { digest: d.digest.clone() };
        match client.call(client.content().info(client.request(req))).await {
            Ok(_) => present.push(d.clone()),
            Err(s) if s.code() == tonic::Code::NotFound => missing.push(d.clone()),
            Err(s) => anyhow::bail!("failed to check image {}: {}", d.digest, errdefs::from_grpc(&s)),
        }
    }
    Ok(CheckResult { available: true, required, present, missing })
}

/// `Image.IsUnpacked`: the top chain ID exists in the snapshotter.
pub async fn is_unpacked(
    client: &Client,
    target: &Descriptor,
    platform: &Platform,
    snapshotter: &str,
) -> anyhow::Result<bool> {
    let m = manifest(client, target, platform).await?;
    let diffs = rootfs(client, &m.config).await?;
    let req = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: chain_id(&diffs) };
    match client.call(client.snapshots().stat(client.request(req))).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(errdefs::from_grpc(&s)),
    }
}

// ---------------------------------------------------------------------------
// Leases.

/// Go's `uniquePart()` / `leases.WithRandomID`: `<nanoseconds>-<4 chars of
/// URL-safe base64 of 3 random bytes>`.
pub fn unique_part() -> String {
    let nanos = Timestamp::now().nanos;
    let mut b = [0u8; 3];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        // A failed read only makes the key less unique, as in Go.
        let _ = f.read_exact(&mut b);
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
    let enc: String = (0..4).map(|i| ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char).collect();
    format!("{nanos}-{enc}")
}

/// A lease held for the rest of a command (`Client.WithLease`); call
/// [`Lease::done`] to delete it.
pub struct Lease {
    pub id: String,
}

impl Lease {
    /// Create a lease: `id` (random when `None`), expiring in 24 hours,
    /// with extra labels.
    pub async fn create(
        client: &Client,
        id: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<Lease, tonic::Status> {
        let mut labels = labels;
        labels.insert(EXPIRE_LABEL.to_string(), rfc3339_local(Timestamp::now().add_nanos(LEASE_LIFETIME_NANOS)));
        let id = id.map_or_else(unique_part, str::to_string);
        let resp = client.call(client.leases().create(client.request(CreateLeaseRequest { id, labels }))).await?;
        Ok(Lease { id: resp.lease.map(|l| l.id).unwrap_or_default() })
    }

    pub async fn done(self, client: &Client) -> anyhow::Result<()> {
        let req = DeleteLeaseRequest { id: self.id, sync: false };
        client.call(client.leases().delete(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Unpacking.

/// `Image.Unpack`: apply each layer not yet in the snapshotter onto its
/// parent (Prepare under an `extract-<unique> <chainID>` key, Diff.Apply,
/// check the diff ID, Commit as the chain ID), label applied layers with
/// their uncompressed digest and the config with the top snapshot (which
/// keeps the snapshots from the collector). Runs under a temporary lease
/// unless the client already has one.
pub async fn unpack(
    client: &Client,
    image_name: &str,
    target: &Descriptor,
    platform: &Platform,
    snapshotter: &str,
) -> anyhow::Result<()> {
    let (client, lease) = if client.has_lease() {
        (client.clone(), None)
    } else {
        let lease = Lease::create(client, None, HashMap::new()).await.map_err(|s| errdefs::from_grpc(&s))?;
        (client.with_lease(&lease.id)?, Some(lease))
    };
    let res = unpack_layers(&client, image_name, target, platform, snapshotter).await;
    if let Some(lease) = lease {
        let done = lease.done(&client).await;
        res?;
        done?;
        return Ok(());
    }
    res
}

async fn unpack_layers(
    client: &Client,
    image_name: &str,
    target: &Descriptor,
    platform: &Platform,
    snapshotter: &str,
) -> anyhow::Result<()> {
    let m = manifest(client, target, platform).await?;
    let diffs = rootfs(client, &m.config).await.map_err(|e| anyhow::anyhow!("failed to resolve rootfs: {e:#}"))?;
    let layers: Vec<&Desc> = m.layers.iter().filter(|l| is_layer_type(&l.media_type)).collect();
    if diffs.len() != layers.len() {
        anyhow::bail!("mismatched image rootfs and manifest layers");
    }
    let mut chain: Vec<String> = Vec::new();
    for (layer, diff) in layers.iter().zip(&diffs) {
        chain.push(diff.clone());
        let applied = apply_layer(client, layer, &chain, snapshotter)
            .await
            .map_err(|e| anyhow::anyhow!("apply layer error for {image_name:?}: {e:#}"))?;
        if applied {
            let info = ContentInfo {
                digest: layer.digest.clone(),
                labels: [(UNCOMPRESSED_LABEL.to_string(), diff.clone())].into_iter().collect(),
                ..Default::default()
            };
            let req = UpdateRequest {
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{UNCOMPRESSED_LABEL}")] }),
            };
            client.call(client.content().update(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
        }
    }
    let gc_label = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
    let info = ContentInfo {
        digest: m.config.digest.clone(),
        labels: [(gc_label.clone(), chain_id(&chain))].into_iter().collect(),
        ..Default::default()
    };
    let req = UpdateRequest {
        info: Some(info),
        update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{gc_label}")] }),
    };
    client.call(client.content().update(client.request(req))).await.map_err(|s| errdefs::from_grpc(&s))?;
    Ok(())
}

/// `rootfs.ApplyLayerWithOpts` for one layer whose parent chain exists:
/// whether it was applied now (false: it already was).
async fn apply_layer(client: &Client, layer: &Desc, chain: &[String], snapshotter: &str) -> anyhow::Result<bool> {
    let chain_id = chain_id(chain);
    let parent = chain_id_of_parent(chain);
    let stat = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: chain_id.clone() };
    match client.call(client.snapshots().stat(client.request(stat))).await {
        Ok(_) => return Ok(false),
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => anyhow::bail!("failed to stat snapshot {chain_id}: {}", errdefs::from_grpc(&s)),
    }
    let (key, mounts) = loop {
        let key = format!("extract-{} {chain_id}", unique_part());
        let req = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: parent.clone(),
            labels: HashMap::new(),
        };
        match client.call(client.snapshots().prepare(client.request(req))).await {
            Ok(resp) => break (key, resp.mounts),
            // Another key; the unique part collided.
            Err(s) if is_already_exists(&s) => continue,
            Err(s) => {
                anyhow::bail!("failed to prepare extraction snapshot {key:?}: {}", errdefs::from_grpc(&s))
            }
        }
    };
    let diff_id = chain.last().cloned().unwrap_or_default();
    let res: Result<(), CommitError> = async {
        let req = ApplyRequest {
            diff: Some(Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            }),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let applied = client.call(client.diff().apply(client.request(req))).await.map_err(|s| {
            CommitError::Other(anyhow::anyhow!("failed to extract layer {diff_id}: {}", errdefs::from_grpc(&s)))
        })?;
        let got = applied.applied.map(|d| d.digest).unwrap_or_default();
        if got != diff_id {
            return Err(CommitError::Other(anyhow::anyhow!("wrong diff id calculated on extraction {got:?}")));
        }
        let req = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: chain_id.clone(),
            key: key.clone(),
            labels: HashMap::new(),
        };
        client.call(client.snapshots().commit(client.request(req))).await.map_err(CommitError::Commit)?;
        Ok(())
    }
    .await;
    match res {
        Ok(()) => Ok(true),
        Err(e) => {
            let remove = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.clone() };
            // Best effort, as in Go: the failure that matters is the first.
            let _ = client.call(client.snapshots().remove(client.request(remove))).await;
            match e {
                // Someone else committed it first: already unpacked.
                CommitError::Commit(s) if is_already_exists(&s) => Ok(false),
                CommitError::Commit(s) => {
                    Err(anyhow::anyhow!("failed to commit snapshot {key}: {}", errdefs::from_grpc(&s)))
                }
                CommitError::Other(e) => Err(e),
            }
        }
    }
}

fn chain_id_of_parent(chain: &[String]) -> String {
    chain_id(&chain[..chain.len().saturating_sub(1)])
}

/// What can fail between Prepare and Commit.
enum CommitError {
    Commit(tonic::Status),
    Other(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_like_identity() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        let want = format!("sha256:{}", hex_lower(&Sha256::digest(b"sha256:aaaa sha256:bbbb")));
        assert_eq!(chain_id(&[a, b]), want);
        assert_eq!(chain_id(&[]), "");
    }

    #[test]
    fn parses_platforms() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_str()), ("linux", "arm64", ""));
        let p = parse_platform("linux/arm").unwrap();
        assert_eq!(p.variant, "v7");
        assert!(parse_platform("linux//x").is_err());
        assert!(platform_matches(&parse_platform("linux/amd64").unwrap(), &parse_platform("linux/x86_64").unwrap()));
    }

    #[test]
    fn unique_parts_have_go_shape() {
        let u = unique_part();
        let (nanos, rand) = u.split_once('-').unwrap();
        assert!(nanos.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(rand.len(), 4);
    }
}
