//! Images and containers in the metadata plugin
//! (`io.containerd.metadata.v1.redb`), with the real content and events
//! plugins: containerd's Images and Containers services over gRPC, their
//! events, namespace deletion, and the stock ctr compared with a stock
//! containerd doing the same steps.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use common::{server_streaming, stderr, stdout, unary, Daemon, Setup, StockContainerd};
use containerd_client::events::{ContainerCreate, ContainerDelete, ContainerUpdate};
use containerd_client::services::v1::{
    container::Runtime, events_client::EventsClient, Container, CreateContainerRequest, CreateContainerResponse,
    CreateImageRequest, CreateImageResponse, CreateNamespaceRequest, CreateNamespaceResponse, CreateRequest,
    CreateResponse, DeleteContainerRequest, DeleteImageRequest, DeleteNamespaceRequest, GetContainerRequest,
    GetContainerResponse, GetImageRequest, GetImageResponse, Image, ImageCreate, ImageDelete, ImageUpdate,
    ListContainerMessage, ListContainersRequest, ListContainersResponse, ListImagesRequest, ListImagesResponse,
    Namespace, SubscribeRequest, UpdateContainerRequest, UpdateContainerResponse, UpdateImageRequest,
    UpdateImageResponse,
};
use containerd_client::types::Descriptor;
use tonic::{transport::Channel, Code};

const IMAGES: &str = "/containerd.services.images.v1.Images";
const CONTAINERS: &str = "/containerd.services.containers.v1.Containers";
const NS: &str = "/containerd.services.namespaces.v1.Namespaces";
const LEASES: &str = "/containerd.services.leases.v1.Leases";

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const D2: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const SPEC_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A `google.protobuf.Any` (the tests do not depend on prost-types, so it
/// is made through containerd-client's own `to_any` and then filled in).
macro_rules! any {
    ($url:expr, $value:expr) => {{
        let mut a = containerd_client::to_any(&Namespace::default());
        a.type_url = $url.into();
        a.value = $value.to_vec();
        a
    }};
}

fn daemon() -> Daemon {
    Setup::new(&[]).with_real_plugins(&["content", "metadata", "events"]).start()
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn image(name: &str, digest: &str, media_type: &str, size: i64, l: &[(&str, &str)]) -> Image {
    Image {
        name: name.into(),
        labels: labels(l),
        target: Some(Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size,
            annotations: HashMap::new(),
        }),
        created_at: None,
        updated_at: None,
    }
}

/// A minimal OCI runtime spec as containerd's clients send it: JSON in an
/// `Any` of the runtime-spec type URL (what `typeurl` registers).
fn container(id: &str, image: &str, runtime: &str, l: &[(&str, &str)]) -> Container {
    let spec =
        any!(SPEC_URL, br#"{"ociVersion":"1.0.2-dev","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}"#);
    Container {
        id: id.into(),
        labels: labels(l),
        image: image.into(),
        runtime: Some(Runtime { name: runtime.into(), options: None }),
        spec: Some(spec),
        ..Default::default()
    }
}

async fn create_image(ch: &Channel, ns: &str, img: Image) -> Result<Image, tonic::Status> {
    let r: CreateImageResponse = unary(
        ch,
        &format!("{IMAGES}/Create"),
        Some(ns),
        CreateImageRequest { image: Some(img), source_date_epoch: None },
    )
    .await?;
    Ok(r.image.expect("an image"))
}

async fn get_image(ch: &Channel, ns: &str, name: &str) -> Result<Image, tonic::Status> {
    let r: GetImageResponse =
        unary(ch, &format!("{IMAGES}/Get"), Some(ns), GetImageRequest { name: name.into() }).await?;
    Ok(r.image.expect("an image"))
}

async fn list_images(ch: &Channel, ns: &str, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
    let req = ListImagesRequest { filters: filters.iter().map(|s| s.to_string()).collect() };
    let r: ListImagesResponse = unary(ch, &format!("{IMAGES}/List"), Some(ns), req).await?;
    Ok(r.images.into_iter().map(|i| i.name).collect())
}

async fn update_image(ch: &Channel, ns: &str, img: Image, paths: &[&str]) -> Result<Image, tonic::Status> {
    let mut req = UpdateImageRequest { image: Some(img), update_mask: None, source_date_epoch: None };
    if !paths.is_empty() {
        req.update_mask.get_or_insert_with(Default::default).paths = paths.iter().map(|s| s.to_string()).collect();
    }
    let r: UpdateImageResponse = unary(ch, &format!("{IMAGES}/Update"), Some(ns), req).await?;
    Ok(r.image.expect("an image"))
}

async fn delete_image(ch: &Channel, ns: &str, name: &str) -> Result<(), tonic::Status> {
    unary(ch, &format!("{IMAGES}/Delete"), Some(ns), DeleteImageRequest { name: name.into(), sync: true, target: None })
        .await
}

async fn create_container(ch: &Channel, ns: &str, c: Container) -> Result<Container, tonic::Status> {
    let r: CreateContainerResponse =
        unary(ch, &format!("{CONTAINERS}/Create"), Some(ns), CreateContainerRequest { container: Some(c) }).await?;
    Ok(r.container.expect("a container"))
}

async fn get_container(ch: &Channel, ns: &str, id: &str) -> Result<Container, tonic::Status> {
    let r: GetContainerResponse =
        unary(ch, &format!("{CONTAINERS}/Get"), Some(ns), GetContainerRequest { id: id.into() }).await?;
    Ok(r.container.expect("a container"))
}

async fn list_containers(ch: &Channel, ns: &str, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
    let req = ListContainersRequest { filters: filters.iter().map(|s| s.to_string()).collect() };
    let r: ListContainersResponse = unary(ch, &format!("{CONTAINERS}/List"), Some(ns), req).await?;
    Ok(r.containers.into_iter().map(|c| c.id).collect())
}

async fn update_container(ch: &Channel, ns: &str, c: Container, paths: &[&str]) -> Result<Container, tonic::Status> {
    let mut req = UpdateContainerRequest { container: Some(c), update_mask: None };
    if !paths.is_empty() {
        req.update_mask.get_or_insert_with(Default::default).paths = paths.iter().map(|s| s.to_string()).collect();
    }
    let r: UpdateContainerResponse = unary(ch, &format!("{CONTAINERS}/Update"), Some(ns), req).await?;
    Ok(r.container.expect("a container"))
}

async fn delete_container(ch: &Channel, ns: &str, id: &str) -> Result<(), tonic::Status> {
    unary(ch, &format!("{CONTAINERS}/Delete"), Some(ns), DeleteContainerRequest { id: id.into() }).await
}

#[tokio::test]
async fn images_crud_filters_masks_and_errors() {
    let d = daemon();
    let ch = d.channel().await;

    let a = create_image(&ch, "ns1", image("docker.io/library/a:1", D1, MANIFEST, 100, &[("k", "v")])).await.unwrap();
    assert_eq!(a.labels, labels(&[("k", "v")]));
    let created = a.created_at.expect("created_at");
    assert_eq!(a.updated_at, Some(created));
    assert!(created.seconds > 1_600_000_000, "{created:?}");
    create_image(&ch, "ns1", image("b", D2, INDEX, 200, &[])).await.unwrap();

    // AlreadyExists, and the validation containerd does.
    let e = create_image(&ch, "ns1", image("b", D1, MANIFEST, 1, &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    for (bad, want) in [
        (image("", D1, MANIFEST, 1, &[]), "Image.Name required"),
        (image("x", "sha256:nope", MANIFEST, 1, &[]), "Target.Digest"),
        (image("x", D1, "", 1, &[]), "Target.MediaType must be set"),
        (image("x", D1, MANIFEST, 0, &[]), "Target.Size must be greater than zero"),
    ] {
        let e = create_image(&ch, "ns1", bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{} lacks {want}", e.message());
    }
    let no_target = Image { target: None, ..image("x", D1, MANIFEST, 1, &[]) };
    assert_eq!(create_image(&ch, "ns1", no_target).await.unwrap_err().code(), Code::InvalidArgument);

    // Get, NotFound, and namespaces isolate.
    assert_eq!(get_image(&ch, "ns1", "docker.io/library/a:1").await.unwrap(), a);
    assert_eq!(get_image(&ch, "ns1", "nope").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get_image(&ch, "ns2", "b").await.unwrap_err().code(), Code::NotFound);
    assert!(list_images(&ch, "ns2", &[]).await.unwrap().is_empty());
    create_image(&ch, "ns2", image("b", D1, MANIFEST, 5, &[])).await.unwrap();
    assert_eq!(get_image(&ch, "ns2", "b").await.unwrap().target.unwrap().digest, D1);
    assert_eq!(get_image(&ch, "ns1", "b").await.unwrap().target.unwrap().digest, D2);

    // The namespace header is required.
    let e = unary::<_, GetImageResponse>(&ch, &format!("{IMAGES}/Get"), None, GetImageRequest { name: "b".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // List filters: containerd's image adaptor.
    assert_eq!(list_images(&ch, "ns1", &[]).await.unwrap(), ["b", "docker.io/library/a:1"]);
    assert_eq!(list_images(&ch, "ns1", &["name==b"]).await.unwrap(), ["b"]);
    assert_eq!(list_images(&ch, "ns1", &[&format!("target.digest=={D1}")]).await.unwrap(), ["docker.io/library/a:1"]);
    assert_eq!(list_images(&ch, "ns1", &[&format!("target.mediatype=={INDEX}")]).await.unwrap(), ["b"]);
    assert_eq!(list_images(&ch, "ns1", &["labels.k==v"]).await.unwrap(), ["docker.io/library/a:1"]);
    assert_eq!(list_images(&ch, "ns1", &["name==b", "labels.k"]).await.unwrap(), ["b", "docker.io/library/a:1"]);
    assert!(list_images(&ch, "ns1", &["name==b,labels.k==v"]).await.unwrap().is_empty());
    let e = list_images(&ch, "ns1", &["name=="]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Update by field mask.
    let u = update_image(
        &ch,
        "ns1",
        image("docker.io/library/a:1", "", "", 0, &[("new", "1")]),
        &["labels.new", "labels.k"],
    )
    .await
    .unwrap();
    assert_eq!(u.labels, labels(&[("new", "1")]));
    assert_eq!(u.target.as_ref().unwrap().digest, D1, "target kept without its path");
    assert_eq!(u.created_at, Some(created));
    let updated = u.updated_at.unwrap();
    assert!((updated.seconds, updated.nanos) >= (created.seconds, created.nanos));
    let u = update_image(&ch, "ns1", image("docker.io/library/a:1", D2, INDEX, 7, &[]), &["target"]).await.unwrap();
    assert_eq!(u.target.as_ref().unwrap().media_type, INDEX);
    assert_eq!(u.labels, labels(&[("new", "1")]), "labels kept without their path");
    assert_eq!(get_image(&ch, "ns1", "docker.io/library/a:1").await.unwrap(), u);
    let e =
        update_image(&ch, "ns1", image("docker.io/library/a:1", "bad", INDEX, 7, &[]), &["target"]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = update_image(&ch, "ns1", image("docker.io/library/a:1", D1, INDEX, 7, &[]), &["name"]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("cannot update \"name\" field"), "{}", e.message());
    let e = update_image(&ch, "ns1", image("ghost", D1, INDEX, 7, &[]), &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // No mask: the whole image is replaced.
    let u =
        update_image(&ch, "ns1", image("docker.io/library/a:1", D1, MANIFEST, 9, &[("z", "z")]), &[]).await.unwrap();
    assert_eq!((u.labels, u.target.unwrap().size), (labels(&[("z", "z")]), 9));

    // Delete (with containerd 2.x's target, only an image of that digest).
    let wrong = DeleteImageRequest { name: "b".into(), sync: false, target: image("b", D1, INDEX, 1, &[]).target };
    let e = unary::<_, ()>(&ch, &format!("{IMAGES}/Delete"), Some("ns1"), wrong).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    delete_image(&ch, "ns1", "b").await.unwrap();
    assert_eq!(delete_image(&ch, "ns1", "b").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(list_images(&ch, "ns1", &[]).await.unwrap(), ["docker.io/library/a:1"]);
    assert_eq!(get_image(&ch, "ns2", "b").await.unwrap().name, "b", "the other namespace keeps its image");
}

#[tokio::test]
async fn containers_crud_filters_masks_and_errors() {
    let d = daemon();
    let ch = d.channel().await;

    let mut c1 = container("c1", "docker.io/library/a:1", "io.containerd.runc.v2", &[("k", "v")]);
    c1.snapshotter = "overlayfs".into();
    c1.snapshot_key = "c1".into();
    c1.runtime.as_mut().unwrap().options = Some(any!("containerd.runc.v1.Options", [1u8, 2, 3]));
    c1.extensions.insert("my.ext".into(), any!("example.Ext", [9u8]));
    let made = create_container(&ch, "ns1", c1.clone()).await.unwrap();
    assert_eq!(made.id, "c1");
    assert_eq!(made.spec, c1.spec);
    assert_eq!(made.runtime, c1.runtime);
    assert_eq!(made.extensions, c1.extensions);
    assert_eq!((made.snapshotter.as_str(), made.snapshot_key.as_str()), ("overlayfs", "c1"));
    assert!(made.created_at.is_some() && made.created_at == made.updated_at);
    assert_eq!(get_container(&ch, "ns1", "c1").await.unwrap(), made);
    create_container(&ch, "ns1", container("c2", "", "io.containerd.runtime.v1.linux", &[])).await.unwrap();

    assert_eq!(create_container(&ch, "ns1", c1.clone()).await.unwrap_err().code(), Code::AlreadyExists);
    let no_spec = Container { spec: None, ..container("c3", "i", "r", &[]) };
    let no_runtime = Container { runtime: None, ..container("c3", "i", "r", &[]) };
    let key_without_snapshotter = Container { snapshot_key: "k".into(), ..container("c3", "i", "r", &[]) };
    for (bad, want) in [
        (container("bad/id", "i", "r", &[]), "container.ID"),
        (container("", "i", "r", &[]), "container.ID"),
        (no_spec, "container.Spec must be set"),
        (no_runtime, "container.Runtime.Name must be set"),
        (key_without_snapshotter, "container.Snapshotter must be set"),
    ] {
        let e = create_container(&ch, "ns1", bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{} lacks {want}", e.message());
    }

    assert_eq!(get_container(&ch, "ns1", "c3").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get_container(&ch, "ns2", "c1").await.unwrap_err().code(), Code::NotFound);
    let e = unary::<_, GetContainerResponse>(
        &ch,
        &format!("{CONTAINERS}/Get"),
        None,
        GetContainerRequest { id: "c1".into() },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Filters: containerd's container adaptor.
    assert_eq!(list_containers(&ch, "ns1", &[]).await.unwrap(), ["c1", "c2"]);
    assert_eq!(list_containers(&ch, "ns1", &["id==c2"]).await.unwrap(), ["c2"]);
    assert_eq!(list_containers(&ch, "ns1", &["image==docker.io/library/a:1"]).await.unwrap(), ["c1"]);
    assert_eq!(list_containers(&ch, "ns1", &["runtime.name==io.containerd.runtime.v1.linux"]).await.unwrap(), ["c2"]);
    assert_eq!(list_containers(&ch, "ns1", &["labels.k==v"]).await.unwrap(), ["c1"]);
    assert!(list_containers(&ch, "ns2", &[]).await.unwrap().is_empty());

    // ListStream: one container per message.
    let msgs: Vec<Result<ListContainerMessage, tonic::Status>> = server_streaming(
        &ch,
        &format!("{CONTAINERS}/ListStream"),
        Some("ns1"),
        ListContainersRequest { filters: vec![] },
    )
    .await
    .unwrap();
    let ids: Vec<String> = msgs.into_iter().map(|m| m.unwrap().container.unwrap().id).collect();
    assert_eq!(ids, ["c1", "c2"]);
    let msgs: Vec<Result<ListContainerMessage, tonic::Status>> = server_streaming(
        &ch,
        &format!("{CONTAINERS}/ListStream"),
        Some("ns1"),
        ListContainersRequest { filters: vec!["id==c2".into()] },
    )
    .await
    .unwrap();
    assert_eq!(msgs.len(), 1);

    // Update by field mask.
    let req = container("c1", "docker.io/library/b:2", "another-runtime", &[("n", "1")]);
    let u = update_container(&ch, "ns1", req.clone(), &["labels.n", "labels.k", "image"]).await.unwrap();
    assert_eq!(u.labels, labels(&[("n", "1")]));
    assert_eq!(u.image, "docker.io/library/b:2");
    assert_eq!(u.runtime, c1.runtime, "the runtime is immutable");
    assert_eq!(u.extensions, c1.extensions);
    assert_eq!(u.created_at, made.created_at);
    for p in ["runtime", "snapshotter", "id"] {
        let e = update_container(&ch, "ns1", req.clone(), &[p]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{p}: {e:?}");
    }
    // Without a mask the immutable fields must not change.
    let e = update_container(&ch, "ns1", req.clone(), &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("immutable"), "{}", e.message());
    let u = update_container(&ch, "ns1", req, &["extensions.my.ext", "snapshotkey"]).await.unwrap();
    assert!(u.extensions.is_empty(), "{:?}", u.extensions);
    assert_eq!(u.snapshot_key, "");
    assert_eq!(get_container(&ch, "ns1", "c1").await.unwrap(), u);
    let e = update_container(&ch, "ns1", container("ghost", "", "r", &[]), &["image"]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = update_container(&ch, "ns1", container("", "", "r", &[]), &["image"]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    delete_container(&ch, "ns1", "c1").await.unwrap();
    assert_eq!(delete_container(&ch, "ns1", "c1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(list_containers(&ch, "ns1", &[]).await.unwrap(), ["c2"]);
}

#[tokio::test]
async fn a_namespace_with_images_or_containers_cannot_be_deleted() {
    let d = daemon();
    let ch = d.channel().await;
    let req = CreateNamespaceRequest { namespace: Some(Namespace { name: "busy".into(), labels: HashMap::new() }) };
    let _: CreateNamespaceResponse = unary(&ch, &format!("{NS}/Create"), None, req).await.unwrap();
    create_image(&ch, "busy", image("img", D1, MANIFEST, 1, &[])).await.unwrap();
    create_container(&ch, "busy", container("c", "img", "rt", &[])).await.unwrap();
    async fn delete(ch: &Channel) -> Result<(), tonic::Status> {
        unary(ch, &format!("{NS}/Delete"), None, DeleteNamespaceRequest { name: "busy".into() }).await
    }
    let e = delete(&ch).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("must be empty, but it still has containers, images"), "{}", e.message());
    delete_container(&ch, "busy", "c").await.unwrap();
    let e = delete(&ch).await.unwrap_err();
    assert!(e.message().ends_with("still has images"), "{}", e.message());
    delete_image(&ch, "busy", "img").await.unwrap();
    delete(&ch).await.unwrap();

    // Creating an image creates its namespace implicitly, as content does.
    create_image(&ch, "implicit", image("img", D1, MANIFEST, 1, &[])).await.unwrap();
    let ls = d.stock_ctr(&["namespaces", "ls", "-q"]);
    assert!(stdout(&ls).lines().any(|l| l == "implicit"), "{}", stdout(&ls));
}

#[tokio::test]
async fn events_reach_a_subscriber() {
    let d = daemon();
    let ch = d.channel().await;
    let mut events = EventsClient::new(ch.clone())
        .subscribe(SubscribeRequest { filters: vec!["topic~=^/(images|containers)/".into()] })
        .await
        .unwrap()
        .into_inner();

    create_image(&ch, "evns", image("img", D1, MANIFEST, 1, &[("a", "1")])).await.unwrap();
    update_image(&ch, "evns", image("img", "", "", 0, &[("b", "2")]), &["labels.b"]).await.unwrap();
    delete_image(&ch, "evns", "img").await.unwrap();
    create_container(&ch, "evns", container("c", "img", "io.containerd.runc.v2", &[])).await.unwrap();
    update_container(&ch, "evns", container("c", "img2", "x", &[("l", "1")]), &["image", "labels.l"]).await.unwrap();
    delete_container(&ch, "evns", "c").await.unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 6 && Instant::now() < deadline {
        let Ok(Ok(Some(env))) = tokio::time::timeout(Duration::from_secs(5), events.message()).await else { break };
        assert_eq!(env.namespace, "evns");
        seen.push((env.topic, env.event.unwrap()));
    }
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "/images/create",
            "/images/update",
            "/images/delete",
            "/containers/create",
            "/containers/update",
            "/containers/delete"
        ]
    );
    let urls: Vec<&str> = seen.iter().map(|(_, a)| a.type_url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "containerd.services.images.v1.ImageCreate",
            "containerd.services.images.v1.ImageUpdate",
            "containerd.services.images.v1.ImageDelete",
            "containerd.events.ContainerCreate",
            "containerd.events.ContainerUpdate",
            "containerd.events.ContainerDelete",
        ]
    );
    use prost::Message as _;
    let v = |i: usize| seen[i].1.value.as_slice();
    let c = ImageCreate::decode(v(0)).unwrap();
    assert_eq!((c.name.as_str(), c.labels.clone()), ("img", labels(&[("a", "1")])));
    assert_eq!(ImageUpdate::decode(v(1)).unwrap().labels, labels(&[("a", "1"), ("b", "2")]));
    assert_eq!(ImageDelete::decode(v(2)).unwrap().name, "img");
    let c = ContainerCreate::decode(v(3)).unwrap();
    assert_eq!(
        (c.id.as_str(), c.image.as_str(), c.runtime.unwrap().name.as_str()),
        ("c", "img", "io.containerd.runc.v2")
    );
    let u = ContainerUpdate::decode(v(4)).unwrap();
    assert_eq!((u.id.as_str(), u.image.as_str(), u.labels), ("c", "img2", labels(&[("l", "1")])));
    assert_eq!(ContainerDelete::decode(v(5)).unwrap().id, "c");
}

// ---- the stock ctr, against crated and against a stock containerd ----

/// Writes `data` as a blob of `ns` under `lease` (so that a stock
/// containerd's garbage collector keeps it); returns the digest.
async fn write_blob(ch: &Channel, ns: &str, lease: &str, reference: &str, data: &[u8]) -> String {
    common::write_blob(ch, ns, reference, data, Some(lease), &[]).await.unwrap()
}

/// A tiny but real OCI image (config + manifest with one layer that is
/// only described, as `images ls` never reads layers) and its record.
/// Returns (manifest digest, manifest + config + layer size).
async fn seed_image(socket: &Path, ns: &str, name: &str) -> (String, i64) {
    let ch = common::channel(socket).await;
    let _: CreateResponse =
        unary(&ch, &format!("{LEASES}/Create"), Some(ns), CreateRequest { id: "keep".into(), labels: HashMap::new() })
            .await
            .unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"]},"config":{"Cmd":["/bin/true"]}}"#;
    let config_digest = write_blob(&ch, ns, "keep", "config", config).await;
    let layer_size = 1234_i64;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":{layer_size}}}]}}"#,
        config.len()
    );
    let manifest_digest = write_blob(&ch, ns, "keep", "manifest", manifest.as_bytes()).await;
    create_image(&ch, ns, image(name, &manifest_digest, MANIFEST, manifest.len() as i64, &[])).await.unwrap();
    (manifest_digest, manifest.len() as i64 + config.len() as i64 + layer_size)
}

fn ctr(socket: &Path, args: &[&str]) -> String {
    let o = common::run_client(&common::stock_ctr_bin(), socket, args);
    assert!(o.status.success(), "ctr {args:?}: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// The steps of the images test, on one daemon; returns what ctr printed.
async fn stock_ctr_image_steps(socket: &Path) -> Vec<String> {
    let name = "example.com/tiny:1";
    let (digest, size) = seed_image(socket, "s", name).await;
    let mut outs = Vec::new();
    let ls = ctr(socket, &["-n", "s", "images", "ls"]);
    let line = ls.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{ls}"));
    assert!(line.contains(&digest) && line.contains(MANIFEST) && line.contains("linux/amd64"), "{ls}");
    // SIZE is manifest + config + layer (containerd's image.Size walk),
    // printed as ctr's progress.Bytes does.
    let shown = format!(" {:.1} KiB ", size as f64 / 1024.0);
    assert!(line.contains(&shown), "{shown:?} not in {ls}");
    outs.push(ls.clone());
    outs.push(ctr(socket, &["-n", "s", "images", "ls", "-q"]));
    outs.push(ctr(socket, &["-n", "s", "images", "label", name, "team=blue"]));
    let ls = ctr(socket, &["-n", "s", "images", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with(name) && l.contains("team=blue")), "{ls}");
    outs.push(ls);
    outs.push(ctr(socket, &["-n", "s", "images", "ls", "labels.team==blue"]));
    outs.push(ctr(socket, &["-n", "s", "images", "rm", name]));
    let ls = ctr(socket, &["-n", "s", "images", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "{ls}");
    outs.push(ls);
    outs
}

#[tokio::test]
async fn stock_ctr_images_match_a_stock_containerd() {
    let d = daemon();
    let ours = stock_ctr_image_steps(&d.socket()).await;
    let stock = StockContainerd::start();
    let theirs = stock_ctr_image_steps(&stock.socket()).await;
    assert_eq!(ours, theirs, "ctr printed differently against crated and against containerd");
}

/// The steps of the containers test on one daemon; returns what ctr printed
/// (the times of `containers info` removed).
async fn stock_ctr_container_steps(socket: &Path) -> Vec<String> {
    let ch = common::channel(socket).await;
    create_container(&ch, "s", container("web", "example.com/tiny:1", "io.containerd.runc.v2", &[("app", "web")]))
        .await
        .unwrap();
    create_container(&ch, "s", container("db", "", "io.containerd.runc.v2", &[])).await.unwrap();
    let mut outs = Vec::new();
    let ls = ctr(socket, &["-n", "s", "containers", "ls"]);
    assert!(ls.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["web", "example.com/tiny:1", "io.containerd.runc.v2"]), "{ls}");
    assert!(
        ls.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["db", "-", "io.containerd.runc.v2"]),
        "{ls}"
    );
    outs.push(ls);
    outs.push(ctr(socket, &["-n", "s", "containers", "ls", "labels.app==web"]));
    let info = ctr(socket, &["-n", "s", "containers", "info", "web"]);
    let mut v: serde_json::Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    assert_eq!(v["ID"], "web");
    assert_eq!(v["Image"], "example.com/tiny:1");
    assert_eq!(v["Runtime"]["Name"], "io.containerd.runc.v2");
    assert_eq!(v["Labels"]["app"], "web");
    assert_eq!(v["Spec"]["process"]["args"][0], "true", "{info}");
    assert!(v["CreatedAt"].as_str().is_some_and(|t| t.starts_with("20")), "{info}");
    v["CreatedAt"] = serde_json::Value::Null;
    v["UpdatedAt"] = serde_json::Value::Null;
    outs.push(v.to_string());
    outs.push(ctr(socket, &["-n", "s", "containers", "rm", "web"]));
    let ls = ctr(socket, &["-n", "s", "containers", "ls", "-q"]);
    assert_eq!(ls.trim(), "db");
    outs.push(ls);
    let o = common::run_client(&common::stock_ctr_bin(), socket, &["-n", "s", "containers", "rm", "web"]);
    assert!(!o.status.success());
    outs.push(stderr(&o).lines().last().unwrap_or_default().split("msg=").last().unwrap_or_default().to_string());
    outs
}

#[tokio::test]
async fn stock_ctr_containers_match_a_stock_containerd() {
    let d = daemon();
    let ours = stock_ctr_container_steps(&d.socket()).await;
    let stock = StockContainerd::start();
    let theirs = stock_ctr_container_steps(&stock.socket()).await;
    assert_eq!(ours, theirs, "ctr printed differently against crated and against containerd");
}
