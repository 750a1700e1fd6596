//! Checkpoint and restore as containerd 1.6's client does them for ctr:
//! `tasks checkpoint` (`task.Checkpoint`: the runtime's CRIU image plus the
//! container's image and rw layer, under a `containerd.io/checkpoint/...`
//! image), `containers checkpoint` (`container.Checkpoint`: an index of
//! the runtime options, and optionally the image, the rw layer and the
//! task's checkpoint) and `containers restore` (`client.Restore`: a new
//! container from such an index, and a task from it).
//!
//! The index is written as Go's `encoding/json` writes image-spec's
//! `Index` (field order, `omitempty`, sorted annotation keys, and `null`
//! for no manifests), so its digest is the one stock ctr gets.

use std::collections::{BTreeMap, HashMap};

use clap::Args;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::{
    CheckpointTaskRequest, Container, CreateContainerRequest, CreateImageRequest, DiffRequest, GetImageRequest,
    GetRequest, Image, PauseTaskRequest, ResumeTaskRequest,
};
use containerd_client::types::Descriptor;
use shim_protocol::runc;
use tonic::Code;

use super::content::write_content;
use super::image_ops::{self, Lease};
use super::images::read_blob;
use super::GlobalArgs;
use crate::client::Client;
use crate::errdefs;
use crate::gojson::J;

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_CHECKPOINT: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
const MEDIA_CHECKPOINT_CONFIG: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";
const MEDIA_CHECKPOINT_OPTIONS: &str = "application/vnd.containerd.container.checkpoint.options.v1+proto";
const MEDIA_CHECKPOINT_RUNTIME_OPTIONS: &str = "application/vnd.containerd.container.checkpoint.runtime.options+proto";

const IMAGE_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
const RUNTIME_NAME_ANNOTATION: &str = "io.containerd.checkpoint.runtime";
const SNAPSHOTTER_NAME_ANNOTATION: &str = "io.containerd.checkpoint.snapshotter";

/// The runtimes whose checkpoint options are runc's.
const RUNC_RUNTIMES: [&str; 2] = ["io.containerd.runc.v1", "io.containerd.runc.v2"];

#[derive(Debug, Args)]
pub struct TaskCheckpointArgs {
    /// Stop the container after the checkpoint
    #[arg(long)]
    pub exit: bool,
    /// Path to criu image files
    #[arg(long = "image-path", default_value = "")]
    pub image_path: String,
    /// Path to criu work files and logs
    #[arg(long = "work-path", default_value = "")]
    pub work_path: String,
    /// CONTAINER
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ContainerCheckpointArgs {
    /// Include the rw layer in the checkpoint
    #[arg(long)]
    pub rw: bool,
    /// Include the image in the checkpoint
    #[arg(long)]
    pub image: bool,
    /// Checkpoint container task
    #[arg(long)]
    pub task: bool,
    /// CONTAINER REF
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Restore the rw layer from the checkpoint
    #[arg(long)]
    pub rw: bool,
    /// Restore the runtime and memory data from the checkpoint
    #[arg(long)]
    pub live: bool,
    /// CONTAINER REF
    pub args: Vec<String>,
}

/// An image-spec descriptor as the index holds it.
#[derive(Debug, Clone, Default)]
struct IndexEntry {
    media_type: String,
    digest: String,
    size: i64,
    annotations: BTreeMap<String, String>,
    /// `(os, architecture)`.
    platform: Option<(String, String)>,
}

impl IndexEntry {
    fn from_proto(d: &Descriptor) -> IndexEntry {
        IndexEntry {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            annotations: d.annotations.clone().into_iter().collect(),
            platform: None,
        }
    }

    fn with_this_platform(mut self) -> IndexEntry {
        self.platform = Some(("linux".to_string(), go_arch().to_string()));
        self
    }

    fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone().into_iter().collect(),
        }
    }

    fn json(&self) -> J {
        let mut f = Vec::new();
        if !self.media_type.is_empty() {
            f.push(("mediaType".to_string(), J::str(&self.media_type)));
        }
        f.push(("digest".to_string(), J::str(&self.digest)));
        f.push(("size".to_string(), J::Num(self.size.to_string())));
        if !self.annotations.is_empty() {
            f.push(("annotations".to_string(), string_map(&self.annotations)));
        }
        if let Some((os, arch)) = &self.platform {
            let p = vec![("architecture".to_string(), J::str(arch)), ("os".to_string(), J::str(os))];
            f.push(("platform".to_string(), J::Obj(p)));
        }
        J::Obj(f)
    }

    fn from_json(v: &serde_json::Value) -> IndexEntry {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        IndexEntry {
            media_type: s("mediaType"),
            digest: s("digest"),
            size: v.get("size").and_then(|x| x.as_i64()).unwrap_or_default(),
            annotations: v
                .get("annotations")
                .and_then(|a| a.as_object())
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default(),
            platform: v.get("platform").map(|p| {
                let g = |k: &str| p.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
                (g("os"), g("architecture"))
            }),
        }
    }
}

/// image-spec's `Index`.
#[derive(Debug, Default)]
struct Index {
    manifests: Vec<IndexEntry>,
    annotations: BTreeMap<String, String>,
}

impl Index {
    /// Go's `json.Marshal` of the struct: a nil manifest list is `null`.
    fn json(&self) -> J {
        let manifests =
            if self.manifests.is_empty() { J::Null } else { J::Arr(self.manifests.iter().map(|m| m.json()).collect()) };
        let mut f = vec![("schemaVersion".to_string(), J::Num("2".into())), ("manifests".to_string(), manifests)];
        if !self.annotations.is_empty() {
            f.push(("annotations".to_string(), string_map(&self.annotations)));
        }
        J::Obj(f)
    }

    fn by_media_type(&self, mt: &str) -> Option<&IndexEntry> {
        self.manifests.iter().find(|m| m.media_type == mt)
    }

    /// `writeIndex`: the index blob, its manifests labelled as its GC
    /// references; `newline` for `json.Encoder` (the task's index).
    async fn write(&self, client: &Client, reference: &str, newline: bool) -> anyhow::Result<IndexEntry> {
        let labels: HashMap<String, String> = self
            .manifests
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("containerd.io/gc.ref.content.{i}"), m.digest.clone()))
            .collect();
        let mut data = self.json().compact();
        if newline {
            data.push('\n');
        }
        let digest = write_content(client, reference, data.as_bytes(), labels).await?;
        Ok(IndexEntry { media_type: MEDIA_INDEX.to_string(), digest, size: data.len() as i64, ..Default::default() })
    }

    /// `decodeIndex`.
    async fn read(client: &Client, digest: &str) -> anyhow::Result<Index> {
        let blob = read_blob(client, digest).await?;
        let v: serde_json::Value = serde_json::from_slice(&blob)?;
        let manifests = v
            .get("manifests")
            .and_then(|m| m.as_array())
            .map(|a| a.iter().map(IndexEntry::from_json).collect())
            .unwrap_or_default();
        let annotations = v
            .get("annotations")
            .and_then(|a| a.as_object())
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        Ok(Index { manifests, annotations })
    }
}

fn string_map(m: &BTreeMap<String, String>) -> J {
    J::Obj(m.iter().map(|(k, v)| (k.clone(), J::str(v))).collect())
}

/// Go's `runtime.GOARCH` for this build.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn grpc(s: tonic::Status) -> anyhow::Error {
    errdefs::from_grpc(&s)
}

async fn pause(client: &Client, id: &str) -> anyhow::Result<()> {
    let req = PauseTaskRequest { container_id: id.to_string() };
    client.call(client.tasks().pause(client.request(req))).await.map_err(grpc)?;
    Ok(())
}

async fn resume(client: &Client, id: &str) -> anyhow::Result<()> {
    let req = ResumeTaskRequest { container_id: id.to_string() };
    client.call(client.tasks().resume(client.request(req))).await.map_err(grpc)?;
    Ok(())
}

async fn get_image(client: &Client, name: &str) -> Result<Image, tonic::Status> {
    let req = GetImageRequest { name: name.to_string() };
    Ok(client.call(client.images().get(client.request(req))).await?.image.unwrap_or_default())
}

/// `rootfs.CreateDiff`: the rw snapshot `key` against a view of its parent,
/// as one gzip layer in the content store.
async fn create_diff(client: &Client, snapshotter: &str, key: &str) -> anyhow::Result<IndexEntry> {
    let sn = client.snapshots();
    let req = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
    let info = client.call(sn.clone().stat(client.request(req))).await.map_err(grpc)?.info.unwrap_or_default();
    let lower_key = format!("{}-parent-view-{}", info.parent, image_ops::unique_part());
    let req = ViewSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: lower_key.clone(),
        parent: info.parent.clone(),
        labels: HashMap::new(),
    };
    let lower = client.call(sn.clone().view(client.request(req))).await.map_err(grpc)?.mounts;
    let mut views = vec![lower_key];
    // Kind 2 is `KindActive` (1 view, 3 committed).
    let res = async {
        let upper = if info.kind == 2 {
            let req = MountsRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
            client.call(sn.clone().mounts(client.request(req))).await.map_err(grpc)?.mounts
        } else {
            let upper_key = format!("{key}-view-{}", image_ops::unique_part());
            views.push(upper_key.clone());
            let req = ViewSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: upper_key,
                parent: key.to_string(),
                labels: HashMap::new(),
            };
            client.call(sn.clone().view(client.request(req))).await.map_err(grpc)?.mounts
        };
        let req =
            DiffRequest { left: lower, right: upper, r#ref: format!("checkpoint-rw-{key}"), ..Default::default() };
        let diff = client.call(client.diff().diff(client.request(req))).await.map_err(grpc)?.diff;
        Ok::<_, anyhow::Error>(IndexEntry::from_proto(&diff.unwrap_or_default()))
    }
    .await;
    for view in views {
        let req = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: view };
        let _ = client.call(sn.clone().remove(client.request(req))).await;
    }
    res
}

/// `ctr tasks checkpoint`.
pub async fn task_checkpoint(global: &GlobalArgs, args: TaskCheckpointArgs) -> anyhow::Result<()> {
    let id = args.args.first().cloned().unwrap_or_default();
    if id.is_empty() {
        anyhow::bail!("container id must be provided");
    }
    let client = global.client().await?;
    let c = super::containers::load(&client, &id).await?;
    super::tasks::get_task(&client, &id).await?;
    let runtime = c.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let options = RUNC_RUNTIMES.contains(&runtime.as_str()).then(|| {
        let o = runc::CheckpointOptions {
            exit: args.exit,
            image_path: args.image_path.clone(),
            work_path: args.work_path.clone(),
            ..Default::default()
        };
        prost_types::Any {
            type_url: runc::CHECKPOINT_OPTIONS_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(&o),
        }
    });
    let lease = Lease::create(&client, None, HashMap::new()).await.map_err(grpc)?;
    let leased = client.with_lease(&lease.id)?;
    let res = checkpoint_task(&leased, &c, options, !args.image_path.is_empty()).await;
    let done = lease.done(&client).await;
    let name = res?;
    done?;
    if args.image_path.is_empty() {
        println!("{name}");
    }
    Ok(())
}

/// `task.Checkpoint`: the task paused (unless it is) for the runtime's
/// checkpoint, the container's image and rw layer, and the index as an
/// image; its name. With an image path, the runtime's files stay there
/// and no image is made.
async fn checkpoint_task(
    client: &Client,
    c: &Container,
    options: Option<prost_types::Any>,
    to_path: bool,
) -> anyhow::Result<String> {
    let name = format!("containerd.io/checkpoint/{}:{}", c.id, checkpoint_date());
    let req = GetRequest { container_id: c.id.clone(), exec_id: String::new() };
    let status = client.call(client.tasks().get(client.request(req))).await.map_err(grpc)?.process;
    // Status 4 is `PAUSED`.
    let paused = status.is_some_and(|p| p.status == 4);
    if !paused {
        pause(client, &c.id).await?;
    }
    let res = async {
        let mut index = Index::default();
        let req = CheckpointTaskRequest { container_id: c.id.clone(), parent_checkpoint: String::new(), options };
        let resp = client.call(client.tasks().checkpoint(client.request(req))).await.map_err(grpc)?;
        for d in &resp.descriptors {
            index.manifests.push(IndexEntry::from_proto(d).with_this_platform());
        }
        if to_path {
            return Ok(String::new());
        }
        if !c.image.is_empty() {
            let image = get_image(client, &c.image).await.map_err(grpc)?;
            index.manifests.push(IndexEntry::from_proto(&image.target.unwrap_or_default()));
            index.annotations.insert("image.name".to_string(), c.image.clone());
        }
        if !c.snapshot_key.is_empty() {
            index.manifests.push(create_diff(client, &c.snapshotter, &c.snapshot_key).await?.with_this_platform());
        }
        let target = index.write(client, &c.id, true).await?;
        let image = Image {
            name: name.clone(),
            target: Some(target.to_proto()),
            labels: [("containerd.io/checkpoint".to_string(), "true".to_string())].into(),
            ..Default::default()
        };
        let req = CreateImageRequest { image: Some(image), ..Default::default() };
        client.call(client.images().create(client.request(req))).await.map_err(grpc)?;
        Ok::<String, anyhow::Error>(name)
    }
    .await;
    if !paused {
        // `defer t.Resume(ctx)`: its error is dropped.
        let _ = resume(client, &c.id).await;
    }
    res
}

/// `time.Now().Format("01-02-2006-15:04:05")` in the local zone.
fn checkpoint_date() -> String {
    let t = crate::gotime::rfc3339_local(crate::gotime::Timestamp::now());
    // "2006-01-02T15:04:05..." -> "01-02-2006-15:04:05"
    format!("{}-{}-{}", &t[5..10], &t[0..4], &t[11..19])
}

/// `ctr containers checkpoint`.
pub async fn container_checkpoint(global: &GlobalArgs, args: ContainerCheckpointArgs) -> anyhow::Result<()> {
    let id = args.args.first().cloned().unwrap_or_default();
    if id.is_empty() {
        anyhow::bail!("container id must be provided");
    }
    let reference = args.args.get(1).cloned().unwrap_or_default();
    if reference.is_empty() {
        anyhow::bail!("ref must be provided");
    }
    let client = global.client().await?;
    let c = super::containers::load(&client, &id).await?;
    let has_task = match super::tasks::get_task(&client, &id).await {
        Ok(_) => true,
        Err(e) if e.to_string().ends_with("not found") => false,
        Err(e) => return Err(e),
    };
    if has_task {
        pause(&client, &id).await?;
    }
    let res = checkpoint_container(&client, &c, &reference, &args).await;
    if has_task {
        if let Err(e) = resume(&client, &id).await {
            println!("error resuming task: {e}");
        }
    }
    res
}

/// `container.Checkpoint` with `WithCheckpointRuntime` and the flags' options.
async fn checkpoint_container(
    client: &Client,
    c: &Container,
    reference: &str,
    args: &ContainerCheckpointArgs,
) -> anyhow::Result<()> {
    if c.image.is_empty() {
        anyhow::bail!("container not created from an image: not found");
    }
    get_image(client, &c.image)
        .await
        .map_err(|s| anyhow::anyhow!("failed to get image {} for container: {}", c.image, grpc(s)))?;
    let lease = Lease::create(client, None, HashMap::new()).await.map_err(grpc)?;
    let leased = client.with_lease(&lease.id)?;
    let res = async {
        let client = &leased;
        let runtime = c.runtime.clone().unwrap_or_default();
        let mut index = Index::default();
        index.annotations.insert(IMAGE_NAME_ANNOTATION.to_string(), c.image.clone());
        index.annotations.insert(RUNTIME_NAME_ANNOTATION.to_string(), runtime.name.clone());
        index.annotations.insert(SNAPSHOTTER_NAME_ANNOTATION.to_string(), c.snapshotter.clone());
        // An option that fails with "already exists" is skipped, as in Go.
        let skip_exists = |r: anyhow::Result<()>| match r {
            Err(e) if e.to_string().ends_with("already exists") => Ok(()),
            other => other,
        };
        // WithCheckpointRuntime: the options `Any` itself, as protobuf.
        if let Some(options) = &runtime.options {
            let data = prost::Message::encode_to_vec(options);
            let r = async {
                let digest = write_content(client, &format!("{}-runtime-options", c.id), &data, HashMap::new()).await?;
                index.manifests.push(
                    IndexEntry {
                        media_type: MEDIA_CHECKPOINT_RUNTIME_OPTIONS.to_string(),
                        digest,
                        size: data.len() as i64,
                        ..Default::default()
                    }
                    .with_this_platform(),
                );
                Ok::<(), anyhow::Error>(())
            }
            .await;
            skip_exists(r)?;
        }
        if args.image {
            let image = get_image(client, &c.image).await.map_err(grpc)?;
            index.manifests.push(IndexEntry::from_proto(&image.target.unwrap_or_default()));
        }
        if args.rw {
            let r = async {
                index.manifests.push(create_diff(client, &c.snapshotter, &c.snapshot_key).await?.with_this_platform());
                Ok::<(), anyhow::Error>(())
            }
            .await;
            skip_exists(r)?;
        }
        if args.task {
            let r = async {
                let copts = runc::CheckpointOptions { file_locks: true, ..Default::default() };
                let options = prost_types::Any {
                    type_url: runc::CHECKPOINT_OPTIONS_TYPE_URL.to_string(),
                    value: prost::Message::encode_to_vec(&copts),
                };
                let req = CheckpointTaskRequest {
                    container_id: c.id.clone(),
                    parent_checkpoint: String::new(),
                    options: Some(options.clone()),
                };
                let resp = client.call(client.tasks().checkpoint(client.request(req))).await.map_err(grpc)?;
                for d in &resp.descriptors {
                    index.manifests.push(IndexEntry::from_proto(d).with_this_platform());
                }
                let data = prost::Message::encode_to_vec(&options);
                let digest =
                    write_content(client, &format!("{}-checkpoint-options", c.id), &data, HashMap::new()).await?;
                index.manifests.push(
                    IndexEntry {
                        media_type: MEDIA_CHECKPOINT_OPTIONS.to_string(),
                        digest,
                        size: data.len() as i64,
                        ..Default::default()
                    }
                    .with_this_platform(),
                );
                Ok::<(), anyhow::Error>(())
            }
            .await;
            skip_exists(r)?;
        }
        let target = index.write(client, &format!("{}index", c.id), false).await?;
        let image = Image { name: reference.to_string(), target: Some(target.to_proto()), ..Default::default() };
        let req = CreateImageRequest { image: Some(image), ..Default::default() };
        client.call(client.images().create(client.request(req))).await.map_err(grpc)?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    let done = lease.done(client).await;
    res?;
    done
}

/// `ctr containers restore`.
pub async fn restore(global: &GlobalArgs, args: RestoreArgs) -> anyhow::Result<()> {
    let id = args.args.first().cloned().unwrap_or_default();
    if id.is_empty() {
        anyhow::bail!("container id must be provided");
    }
    let reference = args.args.get(1).cloned().unwrap_or_default();
    if reference.is_empty() {
        anyhow::bail!("ref must be provided");
    }
    let client = global.client().await?;
    let checkpoint = match get_image(&client, &reference).await {
        Ok(i) => i,
        // Stock ctr would fetch the reference from a registry here; a
        // checkpoint comes from `containers checkpoint` on this daemon.
        Err(s) if s.code() == Code::NotFound => {
            anyhow::bail!("{}: fetching a checkpoint from a registry is not supported", grpc(s))
        }
        Err(s) => return Err(grpc(s)),
    };
    let target = checkpoint.target.clone().unwrap_or_default();
    let index = Index::read(&client, &target.digest).await?;
    let lease = Lease::create(&client, None, HashMap::new()).await.map_err(grpc)?;
    let leased = client.with_lease(&lease.id)?;
    let res = restore_container(&leased, &id, &index, args.rw).await;
    let done = lease.done(&client).await;
    let c = res?;
    done?;
    let mut opts = super::tasks::TaskOpts {
        tty: false,
        null_io: false,
        log_uri: String::new(),
        fifo_dir: String::new(),
        no_pivot: false,
        detach: true,
        pid_file: None,
        checkpoint: None,
        checkpoint_options: None,
        sig_proxy: true,
    };
    if args.live {
        // WithTaskCheckpoint: the CRIU image and the options it was taken with.
        for m in &index.manifests {
            if m.media_type == MEDIA_CHECKPOINT {
                opts.checkpoint = Some(m.to_proto());
            } else if m.media_type == MEDIA_CHECKPOINT_OPTIONS {
                let blob = read_blob(&client, &m.digest).await?;
                opts.checkpoint_options = Some(<prost_types::Any as prost::Message>::decode(blob.as_slice())?);
            }
        }
        if opts.checkpoint.is_none() {
            anyhow::bail!("checkpoint not found in index {}", target.digest);
        }
    }
    super::tasks::create_and_start(&client, &c, &opts).await
}

/// `client.NewContainer` with `WithRestoreImage`, `WithRestoreSpec`,
/// `WithRestoreRuntime` and (`--rw`) `WithRestoreRW`, in that order.
async fn restore_container(client: &Client, id: &str, index: &Index, rw: bool) -> anyhow::Result<Container> {
    let mut c = Container { id: id.to_string(), ..Default::default() };
    // WithRestoreImage.
    let name = index.annotations.get(IMAGE_NAME_ANNOTATION).filter(|n| !n.is_empty());
    let Some(name) = name else { anyhow::bail!("image name not found in index") };
    let Some(snapshotter) = index.annotations.get(SNAPSHOTTER_NAME_ANNOTATION) else {
        anyhow::bail!("snapshotter not found in index")
    };
    let image = get_image(client, name).await.map_err(grpc)?;
    let platform = image_ops::default_platform();
    let manifest = image_ops::manifest(client, &image.target.clone().unwrap_or_default(), &platform).await?;
    let diff_ids = image_ops::rootfs(client, &manifest.config).await?;
    let req = PrepareSnapshotRequest {
        snapshotter: snapshotter.clone(),
        key: id.to_string(),
        parent: image_ops::chain_id(&diff_ids),
        labels: HashMap::new(),
    };
    client.call(client.snapshots().prepare(client.request(req))).await.map_err(grpc)?;
    c.image = image.name.clone();
    c.snapshot_key = id.to_string();
    c.snapshotter = snapshotter.clone();
    // WithRestoreSpec.
    let Some(config) = index.by_media_type(MEDIA_CHECKPOINT_CONFIG) else { anyhow::bail!("media type not found") };
    let blob = read_blob(client, &config.digest)
        .await
        .map_err(|e| anyhow::anyhow!("unable to read checkpoint config: {e}"))?;
    c.spec = Some(<prost_types::Any as prost::Message>::decode(blob.as_slice())?);
    // WithRestoreRuntime.
    let Some(runtime) = index.annotations.get(RUNTIME_NAME_ANNOTATION) else {
        anyhow::bail!("runtime not found in index")
    };
    let mut options = prost_types::Any::default();
    if let Some(m) = index.by_media_type(MEDIA_CHECKPOINT_RUNTIME_OPTIONS) {
        let blob = read_blob(client, &m.digest)
            .await
            .map_err(|e| anyhow::anyhow!("unable to read checkpoint runtime: {e}"))?;
        options = prost::Message::decode(blob.as_slice())?;
    }
    c.runtime = Some(Runtime { name: runtime.clone(), options: Some(options) });
    // WithRestoreRW.
    if rw {
        let Some(layer) = index.by_media_type(MEDIA_LAYER_GZIP) else { anyhow::bail!("media type not found") };
        let req = MountsRequest { snapshotter: c.snapshotter.clone(), key: id.to_string() };
        let mounts = client.call(client.snapshots().mounts(client.request(req))).await.map_err(grpc)?.mounts;
        let req = containerd_client::services::v1::ApplyRequest {
            diff: Some(layer.to_proto()),
            mounts,
            ..Default::default()
        };
        client.call(client.diff().apply(client.request(req))).await.map_err(grpc)?;
    }
    let req = CreateContainerRequest { container: Some(c) };
    let resp = client.call(client.containers().create(client.request(req))).await.map_err(grpc)?;
    Ok(resp.container.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_json_as_go_writes_it() {
        let mut index = Index::default();
        assert_eq!(index.json().compact(), r#"{"schemaVersion":2,"manifests":null}"#);
        index.annotations.insert("b".into(), "2".into());
        index.annotations.insert("a".into(), "<1>".into());
        index.manifests.push(
            IndexEntry { media_type: "m".into(), digest: "sha256:00".into(), size: 3, ..Default::default() }
                .with_this_platform(),
        );
        let arch = go_arch();
        assert_eq!(
            index.json().compact(),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"m","digest":"sha256:00","size":3,"platform":{{"architecture":"{arch}","os":"linux"}}}}],"annotations":{{"a":"\u003c1\u003e","b":"2"}}}}"#
            )
        );
    }

    #[test]
    fn checkpoint_date_shape() {
        let d = checkpoint_date();
        assert_eq!(d.len(), 19, "{d}");
        assert_eq!(&d[2..3], "-");
        assert_eq!(&d[10..11], "-");
    }
}
