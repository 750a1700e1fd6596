//! The registry client against a real registry (Debian's docker-registry,
//! see `crated_tests::registry`), directly and through the fault proxy:
//! push and pull of a busybox image, resume, basic and bearer auth,
//! failures and their kinds, and hosts.toml mirrors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use containerd_client::types::Descriptor;
use crated_plugin_api::errdefs::{Error, ErrorKind};
use crated_plugin_transfer::registry::{Registry, RegistryError, RegistryOptions, StaticCredentials};
use crated_tests::images::{oci_archive, sha256_digest, tar_files, ImageOptions, Layers};
use crated_tests::registry::{FaultProxy, Registry as TestRegistry};
use futures::StreamExt;

/// An image's blobs and the descriptors that name them.
struct Image {
    manifest: Descriptor,
    manifest_bytes: Bytes,
    /// Config first, then the layers.
    blobs: Vec<(Descriptor, Bytes)>,
}

fn image(layers: Layers) -> Image {
    let archive = oci_archive(&ImageOptions { layers, ..Default::default() }).unwrap();
    let files: BTreeMap<String, Vec<u8>> = tar_files(&archive.tar).unwrap();
    let blob = |digest: &str| Bytes::from(files[&format!("blobs/sha256/{}", &digest[7..])].clone());
    let manifest_bytes = blob(&archive.manifests[0]);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let desc = |v: &serde_json::Value| Descriptor {
        media_type: v["mediaType"].as_str().unwrap().to_string(),
        digest: v["digest"].as_str().unwrap().to_string(),
        size: v["size"].as_i64().unwrap(),
        annotations: HashMap::new(),
    };
    let mut blobs = vec![(desc(&manifest["config"]), blob(manifest["config"]["digest"].as_str().unwrap()))];
    for layer in manifest["layers"].as_array().unwrap() {
        blobs.push((desc(layer), blob(layer["digest"].as_str().unwrap())));
    }
    Image {
        manifest: Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: archive.manifests[0].clone(),
            size: manifest_bytes.len() as i64,
            annotations: HashMap::new(),
        },
        manifest_bytes,
        blobs,
    }
}

fn plain_http() -> RegistryOptions {
    RegistryOptions { default_scheme: Some("http".into()), ..Default::default() }
}

async fn client(host: &str, creds: Option<(&str, &str)>) -> Registry {
    let creds = creds.map(|(u, p)| {
        Arc::new(StaticCredentials { user: u.into(), secret: p.into() })
            as Arc<dyn crated_plugin_transfer::registry::Credentials>
    });
    Registry::new(&format!("{host}/busybox:1"), plain_http(), creds).await.unwrap()
}

fn one(bytes: Bytes) -> futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    // Several chunks, so the upload really is a stream.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        bytes.chunks(4096).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(chunks).boxed()
}

async fn push(reg: &Registry, image: &Image) {
    for (desc, data) in &image.blobs {
        if !reg.exists(desc).await.unwrap() {
            reg.push_blob(desc, one(data.clone())).await.unwrap();
        }
        assert!(reg.exists(desc).await.unwrap(), "{} pushed", desc.digest);
    }
    reg.push_manifest(&image.manifest, image.manifest_bytes.clone(), Some("1")).await.unwrap();
}

/// Everything a fetch stream yields, and the error that ended it if any.
async fn drain(reg: &Registry, desc: &Descriptor, offset: u64) -> (Vec<u8>, Option<RegistryError>) {
    let mut stream = reg.fetch(desc, offset).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => out.extend_from_slice(&c),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[tokio::test]
async fn push_resolve_fetch_and_resume() {
    let registry = TestRegistry::start().unwrap();
    let reg = client(&registry.host(), None).await;
    assert_eq!(reg.name(), format!("{}/busybox:1", registry.host()));
    let img = image(Layers::WithWhiteouts);
    assert!(!reg.exists(&img.manifest).await.unwrap());
    push(&reg, &img).await;
    assert!(reg.exists(&img.manifest).await.unwrap());

    let root = reg.resolve().await.unwrap();
    assert_eq!(root.digest, img.manifest.digest);
    assert_eq!(root.media_type, img.manifest.media_type);
    assert_eq!(root.size, img.manifest.size);

    let (manifest, err) = drain(&reg, &root, 0).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sha256_digest(&manifest), img.manifest.digest);
    for (desc, data) in &img.blobs {
        let (got, err) = drain(&reg, desc, 0).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(sha256_digest(&got), desc.digest);
        // From an offset: the rest of the blob.
        let offset = data.len() as u64 / 2;
        let (rest, err) = drain(&reg, desc, offset).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(rest, data[offset as usize..]);
    }
    let (rest, _) = drain(&reg, &root, 10).await;
    assert_eq!(rest, img.manifest_bytes[10..]);

    // A descriptor that claims more than the registry has: an error naming the digest.
    let (desc, data) = &img.blobs[1];
    let longer = Descriptor { size: desc.size + 10, ..desc.clone() };
    let (got, err) = drain(&reg, &longer, 0).await;
    assert_eq!(got.len(), data.len());
    let err = err.expect("a short body is an error");
    assert!(err.to_string().contains(&desc.digest), "{err}");
}

#[tokio::test]
async fn missing_tag_is_not_found_naming_the_reference() {
    let registry = TestRegistry::start().unwrap();
    let reg = Registry::new(&format!("{}/nothing:here", registry.host()), plain_http(), None).await.unwrap();
    let err = reg.resolve().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&format!("{}/nothing:here", registry.host())), "{err}");
    let status: Error = err.into();
    assert_eq!(status.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn basic_auth_good_and_bad_password() {
    let registry = TestRegistry::start_with_user("alice", "s3cret").unwrap();
    let img = image(Layers::Rootfs);
    push(&client(&registry.host(), Some(("alice", "s3cret"))).await, &img).await;
    let root = client(&registry.host(), Some(("alice", "s3cret"))).await.resolve().await.unwrap();
    assert_eq!(root.digest, img.manifest.digest);

    for creds in [Some(("alice", "wrong")), None] {
        let err = client(&registry.host(), creds).await.resolve().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
        assert!(err.to_string().contains(&registry.host()), "{err}");
    }
}

#[tokio::test]
async fn bearer_token_through_the_proxy() {
    let registry = TestRegistry::start().unwrap();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    {
        let mut f = proxy.faults();
        f.bearer_token = Some("tok-123".into());
        f.token_user = Some(("bob".into(), "pw".into()));
    }
    let img = image(Layers::Rootfs);
    let reg = client(&proxy.host(), Some(("bob", "pw"))).await;
    push(&reg, &img).await;
    assert_eq!(reg.resolve().await.unwrap().digest, img.manifest.digest);
    let (layer, _) = &img.blobs[1];
    let (got, err) = drain(&reg, layer, 0).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sha256_digest(&got), layer.digest);
    assert!(proxy.requests().iter().any(|r| r == "GET /token"), "{:?}", proxy.requests());

    let err = client(&proxy.host(), Some(("bob", "nope"))).await.resolve().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains(&proxy.host()), "{err}");
}

#[tokio::test]
async fn server_errors_are_unavailable_naming_the_reference() {
    let registry = TestRegistry::start().unwrap();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.faults().fail_next = 1000;
    let reg = client(&proxy.host(), None).await;
    let err = reg.resolve().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains(reg.name()), "{err}");
    assert!(err.to_string().contains("500"), "{err}");

    // Nothing listening at all: unavailable as well.
    drop(proxy);
    let err = Registry::new("127.0.0.1:1/busybox:1", plain_http(), None).await.unwrap().resolve().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn a_cut_blob_names_its_digest_and_resumes_from_the_received_offset() {
    let registry = TestRegistry::start().unwrap();
    let img = image(Layers::Rootfs);
    push(&client(&registry.host(), None).await, &img).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let (layer, data) = &img.blobs[1];
    assert!(data.len() > 5000);
    {
        let mut f = proxy.faults();
        f.cut_blob_after = Some(3000);
        f.cut_times = 1;
    }
    let reg = client(&proxy.host(), None).await;
    let (first, err) = drain(&reg, layer, 0).await;
    let err = err.expect("the cut is an error");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains(&layer.digest), "{err}");
    assert!(first.len() <= 3000, "{}", first.len());
    let (rest, err) = drain(&reg, layer, first.len() as u64).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!([first, rest].concat(), data[..]);
}

#[tokio::test]
async fn hosts_toml_mirrors_in_order_with_fallback() {
    let registry = TestRegistry::start().unwrap();
    let img = image(Layers::Rootfs);
    push(&client(&registry.host(), None).await, &img).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let host_dir = dir.path().join(registry.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    let opts = || RegistryOptions { host_dir: Some(dir.path().to_path_buf()), ..Default::default() };
    let reference = format!("{}/busybox:1", registry.host());

    // The mirror (the proxy) is used before the registry itself.
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.host(),
            proxy.host()
        ),
    )
    .unwrap();
    let reg = Registry::new(&reference, opts(), None).await.unwrap();
    assert_eq!(reg.resolve().await.unwrap().digest, img.manifest.digest);
    let (layer, _) = &img.blobs[1];
    let (got, _) = drain(&reg, layer, 0).await;
    assert_eq!(sha256_digest(&got), layer.digest);
    let seen = proxy.requests();
    assert!(seen.iter().any(|r| r.contains("/manifests/1")), "{seen:?}");
    assert!(seen.iter().any(|r| r.contains(&layer.digest)), "{seen:?}");

    // A mirror that is down: the next host answers.
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "[host.\"http://{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            proxy.host()
        ),
    )
    .unwrap();
    let before = proxy.requests().len();
    let reg = Registry::new(&reference, RegistryOptions { default_scheme: Some("http".into()), ..opts() }, None)
        .await
        .unwrap();
    assert_eq!(reg.resolve().await.unwrap().digest, img.manifest.digest);
    assert!(proxy.requests().len() > before);

    // A malformed file: invalid argument naming it.
    std::fs::write(host_dir.join("hosts.toml"), "[host.\"http://x\"\ncapabilities = 3").unwrap();
    let err = Registry::new(&reference, opts(), None).await.err().expect("a malformed hosts.toml is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains(&host_dir.join("hosts.toml").display().to_string()), "{err}");
}
