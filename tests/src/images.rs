//! Test images: real OCI image layout tars (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) and `docker save`-style tars (`manifest.json`,
//! `repositories`), built from the host's `/usr/bin/busybox` (Debian's
//! `busybox-static`), for the tests that drive `ctr images import` and what
//! follows it.
//!
//! Everything is deterministic (fixed mtimes and owners, sorted entries, a
//! fixed gzip header, JSON with sorted keys) so that the same options give
//! the same bytes, hence the same digests, on every build.

use std::collections::BTreeMap;
use std::io::Write;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

/// The static busybox the root filesystem layer is made of.
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// The mtime of every entry and the `created` time of every config:
/// 2020-01-01T00:00:00Z.
pub const FIXED_MTIME: u64 = 1_577_836_800;
const FIXED_CREATED: &str = "2020-01-01T00:00:00Z";

/// The annotation an OCI layout's `index.json` names an image with.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The commands linked to busybox in the root filesystem layer.
pub const BUSYBOX_LINKS: [&str; 5] = ["cat", "echo", "ls", "sh", "true"];

/// What can go wrong building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("writing an archive: {0}")]
    Write(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("building an OCI document: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// How the layers of an OCI image are stored. (A docker archive always
/// holds uncompressed layers, as `docker save` writes them.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Uncompressed,
}

/// Which layers an image has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    /// One layer: the busybox root filesystem and a few files in `etc/` and
    /// `opt/data/`.
    Rootfs,
    /// The root filesystem, then a layer that deletes `etc/motd` with a
    /// whiteout (`etc/.wh.motd`), replaces `opt/data/` with an opaque
    /// directory (`opt/data/.wh..wh..opq` and a new file `c`), and changes
    /// `etc/hostname`.
    WithWhiteouts,
}

/// Which platforms an image is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platforms {
    /// One manifest, linux/amd64, named directly by `index.json`.
    Amd64,
    /// `index.json` names an image index with two manifests, linux/amd64
    /// and linux/arm64, sharing their layers and differing in their config.
    Amd64AndArm64,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The `org.opencontainers.image.ref.name` annotation (OCI), or the
    /// `RepoTags` entry `name:tag` (docker); `None` leaves the image unnamed.
    pub ref_name: Option<String>,
    pub compression: Compression,
    pub layers: Layers,
    pub platforms: Platforms,
    /// The config's `Cmd`; `None` is `/bin/sh`.
    pub cmd: Option<Vec<String>>,
    /// The config's `User`; `None` leaves it out.
    pub user: Option<String>,
    /// The config's `Volumes`.
    pub volumes: Vec<String>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            ref_name: Some("latest".to_string()),
            compression: Compression::Gzip,
            layers: Layers::Rootfs,
            platforms: Platforms::Amd64,
            cmd: None,
            user: None,
            volumes: Vec::new(),
        }
    }
}

/// A built archive and the digests inside it, for tests to check against.
#[derive(Clone, Debug)]
pub struct Archive {
    /// The tar itself.
    pub tar: Vec<u8>,
    /// The digest of what `index.json` names: the manifest, or the nested
    /// index for [`Platforms::Amd64AndArm64`]. (For a docker archive: the
    /// config's digest, which is what docker calls the image id.)
    pub target: String,
    /// The manifests, amd64 first.
    pub manifests: Vec<String>,
    /// The configs, in the order of `manifests`.
    pub configs: Vec<String>,
    /// The layer blobs, bottom first, as stored (compressed or not).
    pub layers: Vec<String>,
    /// The digests of the uncompressed layers (the configs' `diff_ids`).
    pub diff_ids: Vec<String>,
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Chain IDs of diff IDs (the snapshot names of an unpacked image),
/// computed here independently of the plugins under test.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(p) => sha256_digest(format!("{p} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// JSON with object keys sorted at every level: oci-spec keeps annotations
/// and labels in `HashMap`s, whose order changes between runs.
fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> = map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// One entry of a layer tar.
enum Entry {
    Dir(String, u32),
    File(String, u32, Vec<u8>),
    Symlink(String, &'static str),
}

/// A tar of the entries, sorted by path, owned by root, with [`FIXED_MTIME`].
fn tar_of(mut entries: Vec<Entry>) -> Result<Vec<u8>, ImageError> {
    let path_of = |e: &Entry| match e {
        Entry::Dir(p, _) | Entry::File(p, _, _) | Entry::Symlink(p, _) => p.clone(),
    };
    entries.sort_by_key(path_of);
    let mut builder = tar::Builder::new(Vec::new());
    for entry in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(FIXED_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File(path, mode, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// The root filesystem layer (uncompressed): `bin/busybox` and its links,
/// `etc/hostname`, `etc/motd`, `opt/data/{a,b}`, `tmp/`.
pub fn rootfs_layer() -> Result<Vec<u8>, ImageError> {
    let busybox = std::fs::read(BUSYBOX).map_err(|source| ImageError::Read { path: BUSYBOX.into(), source })?;
    let mut entries = vec![
        Entry::Dir("bin".into(), 0o755),
        Entry::Dir("etc".into(), 0o755),
        Entry::Dir("opt".into(), 0o755),
        Entry::Dir("opt/data".into(), 0o755),
        Entry::Dir("tmp".into(), 0o1777),
        Entry::File("bin/busybox".into(), 0o755, busybox),
        Entry::File("etc/hostname".into(), 0o644, b"layer1\n".to_vec()),
        Entry::File("etc/motd".into(), 0o644, b"deleted by layer 2\n".to_vec()),
        Entry::File("opt/data/a".into(), 0o644, b"a from layer 1\n".to_vec()),
        Entry::File("opt/data/b".into(), 0o644, b"b from layer 1\n".to_vec()),
    ];
    entries.extend(BUSYBOX_LINKS.iter().map(|l| Entry::Symlink(format!("bin/{l}"), "busybox")));
    tar_of(entries)
}

/// The second layer of [`Layers::WithWhiteouts`] (uncompressed).
pub fn whiteout_layer() -> Result<Vec<u8>, ImageError> {
    tar_of(vec![
        Entry::Dir("etc".into(), 0o755),
        Entry::Dir("opt".into(), 0o755),
        Entry::Dir("opt/data".into(), 0o755),
        Entry::File("etc/.wh.motd".into(), 0o644, Vec::new()),
        Entry::File("etc/hostname".into(), 0o644, b"layer2\n".to_vec()),
        Entry::File("opt/data/.wh..wh..opq".into(), 0o644, Vec::new()),
        Entry::File("opt/data/c".into(), 0o644, b"c from layer 2\n".to_vec()),
    ])
}

/// Gzip with a fixed header (no name, mtime 0).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut encoder = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// The uncompressed layers of an image, bottom first.
fn layer_tars(layers: Layers) -> Result<Vec<Vec<u8>>, ImageError> {
    let mut tars = vec![rootfs_layer()?];
    if layers == Layers::WithWhiteouts {
        tars.push(whiteout_layer()?);
    }
    Ok(tars)
}

/// An image config for one architecture over the given diff ids.
fn config_json(arch: Arch, diff_ids: &[String], options: &ImageOptions) -> Result<Vec<u8>, ImageError> {
    let history = diff_ids
        .iter()
        .enumerate()
        .map(|(i, _)| {
            HistoryBuilder::default().created(FIXED_CREATED).created_by(format!("crated-tests layer {}", i + 1)).build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut process = ConfigBuilder::default()
        .env(vec!["PATH=/bin".to_string()])
        .cmd(options.cmd.clone().unwrap_or_else(|| vec!["/bin/sh".to_string()]))
        .working_dir("/");
    if let Some(user) = &options.user {
        process = process.user(user.clone());
    }
    if !options.volumes.is_empty() {
        process = process.volumes(options.volumes.clone());
    }
    let config = ImageConfigurationBuilder::default()
        .created(FIXED_CREATED)
        .architecture(arch)
        .os(Os::Linux)
        .config(process.build()?)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(diff_ids.to_vec()).build()?)
        .history(history)
        .build()?;
    canonical_json(&config)
}

fn descriptor(media_type: MediaType, bytes: &[u8]) -> Result<Descriptor, ImageError> {
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .size(bytes.len() as u64)
        .digest(
            oci_spec::image::Digest::try_from(sha256_digest(bytes).as_str())
                .expect("a sha256 digest we just computed parses"),
        )
        .build()?)
}

/// Blobs of a layout by digest: a `BTreeMap` so the tar lists them sorted.
type Blobs = BTreeMap<String, Vec<u8>>;

fn add_blob(blobs: &mut Blobs, bytes: Vec<u8>) -> String {
    let digest = sha256_digest(&bytes);
    blobs.insert(digest.clone(), bytes);
    digest
}

/// A tar of the named files, sorted, with directories for `blobs/`.
fn outer_tar(files: BTreeMap<String, Vec<u8>>, dirs: &[&str]) -> Result<Vec<u8>, ImageError> {
    let mut entries: Vec<Entry> = dirs.iter().map(|d| Entry::Dir(d.to_string(), 0o755)).collect();
    entries.extend(files.into_iter().map(|(path, data)| Entry::File(path, 0o644, data)));
    tar_of(entries)
}

/// An OCI image layout tar as `ctr images import` takes it.
pub fn oci_archive(options: &ImageOptions) -> Result<Archive, ImageError> {
    oci_archive_of(options, layer_tars(options.layers)?)
}

/// An OCI image layout tar of the given uncompressed layer tars (bottom
/// first) instead of the test layers `options.layers` names.
pub fn oci_archive_of(options: &ImageOptions, tars: Vec<Vec<u8>>) -> Result<Archive, ImageError> {
    let mut blobs = Blobs::new();
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_digest(t)).collect();
    let (layer_media_type, stored): (MediaType, Vec<Vec<u8>>) = match options.compression {
        Compression::Gzip => (MediaType::ImageLayerGzip, tars.iter().map(|t| gzip(t)).collect::<Result<_, _>>()?),
        Compression::Uncompressed => (MediaType::ImageLayer, tars),
    };
    let layer_descriptors =
        stored.iter().map(|l| descriptor(layer_media_type.clone(), l)).collect::<Result<Vec<_>, _>>()?;
    let layers: Vec<String> = stored.into_iter().map(|l| add_blob(&mut blobs, l)).collect();

    let arches: &[(Arch, &str)] = match options.platforms {
        Platforms::Amd64 => &[(Arch::Amd64, "amd64")],
        Platforms::Amd64AndArm64 => &[(Arch::Amd64, "amd64"), (Arch::ARM64, "arm64")],
    };
    let mut manifests = Vec::new();
    let mut configs = Vec::new();
    let mut manifest_descriptors = Vec::new();
    for (arch, _) in arches {
        let config = config_json(arch.clone(), &diff_ids, options)?;
        let config_descriptor = descriptor(MediaType::ImageConfig, &config)?;
        configs.push(add_blob(&mut blobs, config));
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor)
            .layers(layer_descriptors.clone())
            .build()?;
        let manifest = canonical_json(&manifest)?;
        let mut manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest)?;
        manifest_descriptor
            .set_platform(Some(PlatformBuilder::default().architecture(arch.clone()).os(Os::Linux).build()?));
        manifest_descriptors.push(manifest_descriptor);
        manifests.push(add_blob(&mut blobs, manifest));
    }

    let mut top = match options.platforms {
        Platforms::Amd64 => manifest_descriptors.remove(0),
        Platforms::Amd64AndArm64 => {
            let nested = ImageIndexBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageIndex)
                .manifests(manifest_descriptors)
                .build()?;
            let nested = canonical_json(&nested)?;
            let d = descriptor(MediaType::ImageIndex, &nested)?;
            add_blob(&mut blobs, nested);
            d
        }
    };
    top.set_platform(None);
    if let Some(name) = &options.ref_name {
        top.set_annotations(Some([(REF_NAME_ANNOTATION.to_string(), name.clone())].into_iter().collect()));
    }
    let target = top.digest().to_string();
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![top])
        .build()?;

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    files.insert("index.json".into(), canonical_json(&index)?);
    for (digest, bytes) in blobs {
        files.insert(format!("blobs/sha256/{}", hex_of(&digest)), bytes);
    }
    Ok(Archive { tar: outer_tar(files, &["blobs", "blobs/sha256"])?, target, manifests, configs, layers, diff_ids })
}

/// A `docker save`-style tar: `manifest.json`, `repositories`,
/// `<config hex>.json` and `<layer hex>/layer.tar` (uncompressed; the
/// directory is named by the layer's diff id). `platforms` and
/// `compression` are ignored: docker archives are single-platform and
/// uncompressed. `ref_name` must be `name:tag` if given.
pub fn docker_archive(options: &ImageOptions) -> Result<Archive, ImageError> {
    let tars = layer_tars(options.layers)?;
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_digest(t)).collect();
    let config = config_json(Arch::Amd64, &diff_ids, options)?;
    let config_digest = sha256_digest(&config);

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut layer_paths = Vec::new();
    for (tar, diff_id) in tars.into_iter().zip(&diff_ids) {
        let dir = hex_of(diff_id).to_string();
        layer_paths.push(format!("{dir}/layer.tar"));
        files.insert(format!("{dir}/VERSION"), b"1.0".to_vec());
        files.insert(format!("{dir}/layer.tar"), tar);
        dirs.push(dir);
    }
    let config_path = format!("{}.json", hex_of(&config_digest));
    files.insert(config_path.clone(), config);

    let repo_tags: Vec<String> = options.ref_name.iter().cloned().collect();
    let manifest = serde_json::json!([{ "Config": config_path, "RepoTags": repo_tags, "Layers": layer_paths }]);
    files.insert("manifest.json".into(), canonical_json(&manifest)?);
    if let Some((name, tag)) = options.ref_name.as_deref().and_then(|r| r.rsplit_once(':')) {
        let top = hex_of(diff_ids.last().expect("an image has a layer")).to_string();
        let repositories = serde_json::json!({ name: { tag: top } });
        files.insert("repositories".into(), canonical_json(&repositories)?);
    }
    let dir_refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    Ok(Archive {
        tar: outer_tar(files, &dir_refs)?,
        target: config_digest.clone(),
        manifests: Vec::new(),
        configs: vec![config_digest],
        layers: diff_ids.clone(),
        diff_ids,
    })
}

/// The files of a tar by path (directories left out), for tests that look
/// inside an archive, e.g. one `ctr images export` wrote.
pub fn tar_files(tar: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ImageError> {
    use std::io::Read;
    let mut archive = tar::Archive::new(tar);
    let mut files = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.insert(path, data);
    }
    Ok(files)
}

/// The archive with the blob `digest` changed in place (same size, one
/// byte flipped in its middle), so that importing it must fail the digest
/// check.
pub fn with_corrupted_blob(archive: &Archive, digest: &str) -> Result<Vec<u8>, ImageError> {
    let mut files = tar_files(&archive.tar)?;
    if let Some(blob) = files.get_mut(&format!("blobs/sha256/{}", hex_of(digest))) {
        let middle = blob.len() / 2;
        blob[middle] ^= 0xff;
    }
    outer_tar(files, &[])
}

/// A tar of raw entries, for hostile archives: (name, type, link target,
/// data), names and link targets written as given (`..` and absolute ones
/// too, which the tar crate's own setters refuse).
pub fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_options() -> Vec<ImageOptions> {
        let mut out = Vec::new();
        for compression in [Compression::Gzip, Compression::Uncompressed] {
            for layers in [Layers::Rootfs, Layers::WithWhiteouts] {
                for platforms in [Platforms::Amd64, Platforms::Amd64AndArm64] {
                    out.push(ImageOptions {
                        ref_name: Some("latest".into()),
                        compression,
                        layers,
                        platforms,
                        cmd: None,
                        user: None,
                        volumes: Vec::new(),
                    });
                }
            }
        }
        out
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    /// Every descriptor reachable from `index.json` names a blob of the
    /// layout with that size; returns the digests reached.
    fn walk(files: &BTreeMap<String, Vec<u8>>, descriptor: &serde_json::Value, reached: &mut Vec<String>) {
        let digest = descriptor["digest"].as_str().unwrap();
        let blob = files.get(&format!("blobs/sha256/{}", hex_of(digest))).unwrap_or_else(|| panic!("{digest} missing"));
        assert_eq!(descriptor["size"].as_u64().unwrap(), blob.len() as u64, "{digest}");
        reached.push(digest.to_string());
        let media_type = descriptor["mediaType"].as_str().unwrap();
        if media_type == "application/vnd.oci.image.index.v1+json" {
            for m in json(blob)["manifests"].as_array().unwrap() {
                walk(files, m, reached);
            }
        } else if media_type == "application/vnd.oci.image.manifest.v1+json" {
            let manifest = json(blob);
            walk(files, &manifest["config"], reached);
            let diff_ids =
                json(&files[&format!("blobs/sha256/{}", hex_of(manifest["config"]["digest"].as_str().unwrap()))])
                    ["rootfs"]["diff_ids"]
                    .clone();
            for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
                walk(files, layer, reached);
                let stored = &files[&format!("blobs/sha256/{}", hex_of(layer["digest"].as_str().unwrap()))];
                let tar = if layer["mediaType"].as_str().unwrap().ends_with("+gzip") {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(stored.as_slice()), &mut out).unwrap();
                    out
                } else {
                    stored.clone()
                };
                assert_eq!(diff_ids[i].as_str().unwrap(), sha256_digest(&tar), "diff id of layer {i}");
            }
        }
    }

    #[test]
    fn oci_archives_are_stable_and_valid_layouts() {
        for options in all_options() {
            let a = oci_archive(&options).unwrap();
            let b = oci_archive(&options).unwrap();
            assert!(a.tar == b.tar, "two builds of {options:?} differ");
            let files = tar_files(&a.tar).unwrap();
            assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
            // Every blob's name is its digest.
            let blobs: Vec<&String> = files.keys().filter(|p| p.starts_with("blobs/")).collect();
            for path in &blobs {
                assert_eq!(sha256_digest(&files[*path]), format!("sha256:{}", &path["blobs/sha256/".len()..]));
            }
            let index = json(&files["index.json"]);
            let top = &index["manifests"].as_array().unwrap()[0];
            assert_eq!(top["annotations"][REF_NAME_ANNOTATION], "latest");
            assert_eq!(top["digest"], a.target.as_str());
            let mut reached = Vec::new();
            walk(&files, top, &mut reached);
            // No stray blobs: everything stored is reachable.
            reached.sort();
            reached.dedup();
            assert_eq!(reached.len(), blobs.len(), "{options:?}");
            let expected_manifests = if options.platforms == Platforms::Amd64 { 1 } else { 2 };
            assert_eq!(a.manifests.len(), expected_manifests);
            assert_eq!(a.layers.len(), if options.layers == Layers::Rootfs { 1 } else { 2 });
        }
    }

    #[test]
    fn the_two_platforms_differ_only_in_their_config() {
        let a = oci_archive(&ImageOptions { platforms: Platforms::Amd64AndArm64, ..Default::default() }).unwrap();
        let files = tar_files(&a.tar).unwrap();
        let blob = |d: &str| json(&files[&format!("blobs/sha256/{}", hex_of(d))]);
        let nested = blob(&a.target);
        let platforms: Vec<String> = nested["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap())
            })
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
        let (amd, arm) = (blob(&a.manifests[0]), blob(&a.manifests[1]));
        assert_eq!(amd["layers"], arm["layers"]);
        assert_ne!(amd["config"], arm["config"]);
        assert_eq!(blob(&a.configs[1])["architecture"], "arm64");
    }

    #[test]
    fn layers_hold_busybox_and_whiteouts() {
        let rootfs = tar_files(&rootfs_layer().unwrap()).unwrap();
        assert_eq!(rootfs["bin/busybox"], std::fs::read(BUSYBOX).unwrap());
        let layer = rootfs_layer().unwrap();
        let mut archive = tar::Archive::new(layer.as_slice());
        let sh = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().to_str() == Some("bin/sh"))
            .expect("bin/sh");
        assert_eq!(sh.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(sh.link_name().unwrap().unwrap().to_str(), Some("busybox"));
        assert_eq!(sh.header().mtime().unwrap(), FIXED_MTIME);

        let upper = tar_files(&whiteout_layer().unwrap()).unwrap();
        assert!(upper.contains_key("etc/.wh.motd") && upper.contains_key("opt/data/.wh..wh..opq"));
        // Entries are sorted.
        let names: Vec<&String> = upper.keys().collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn a_corrupted_blob_no_longer_matches_its_name() {
        let a = oci_archive(&ImageOptions::default()).unwrap();
        let files = tar_files(&with_corrupted_blob(&a, &a.layers[0]).unwrap()).unwrap();
        let blob = &files[&format!("blobs/sha256/{}", hex_of(&a.layers[0]))];
        assert_ne!(sha256_digest(blob), a.layers[0]);
        assert_eq!(files.len(), tar_files(&a.tar).unwrap().len());
    }

    #[test]
    fn docker_archives_are_stable_and_consistent() {
        let options = ImageOptions {
            ref_name: Some("example.com/busybox:1.0".into()),
            layers: Layers::WithWhiteouts,
            ..Default::default()
        };
        let a = docker_archive(&options).unwrap();
        assert!(a.tar == docker_archive(&options).unwrap().tar, "two builds differ");
        let files = tar_files(&a.tar).unwrap();
        let manifest = json(&files["manifest.json"]);
        let entry = &manifest[0];
        assert_eq!(entry["RepoTags"][0], "example.com/busybox:1.0");
        let config = &files[entry["Config"].as_str().unwrap()];
        assert_eq!(sha256_digest(config), a.target);
        let diff_ids = json(config)["rootfs"]["diff_ids"].clone();
        for (i, layer) in entry["Layers"].as_array().unwrap().iter().enumerate() {
            assert_eq!(sha256_digest(&files[layer.as_str().unwrap()]), diff_ids[i].as_str().unwrap());
        }
        let repositories = json(&files["repositories"]);
        assert_eq!(repositories["example.com/busybox"]["1.0"], hex_of(&a.diff_ids[1]));
    }
}
