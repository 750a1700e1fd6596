//! The CRI plugin's first slice through a real `runtime.v1` client
//! (k8s-cri's tonic clients on the daemon's socket), against the bundle
//! and a real registry (`crated_tests::registry`): Version, Status,
//! UpdateRuntimeConfig, then PullImage over plain HTTP configured by a
//! `hosts.toml` under `registry.config_path`, ListImages (three images,
//! their repo tags), ImageStatus (by tag, id, short id, unknown; the uid
//! or user name of a config's `User`), ImageFsInfo, the records and labels
//! containerd's CRI leaves in `k8s.io`, RemoveImage, a missing tag, a
//! method not built yet; and a pull through an htpasswd registry with the
//! request's AuthConfig. The test image is built from busybox-static,
//! imported into another namespace and pushed to the registry through the
//! transfer service. Needs root (overlay mounts).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{Daemon, Setup};
use containerd_client::services::v1::{images_client::ImagesClient, ListImagesRequest};
use crated_tests::images::{chain_ids, oci_archive, tar_files, Archive, ImageOptions};
use crated_tests::registry::Registry;
use crated_tests::transfer_client::{plain_http_hosts_toml, push_image, with_ns};
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, AuthConfig,
    CheckpointContainerRequest, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest as CriListImages,
    NetworkConfig, PullImageRequest, RemoveImageRequest, RuntimeConfig, StatusRequest, UpdateRuntimeConfigRequest,
    VersionRequest,
};
use tonic::{transport::Channel, Code};

const NS: &str = "k8s.io";

/// A daemon with the CRI plugin and what it needs; `config_path` is the
/// CRI's `registry.config_path`.
fn daemon(config_path: &Path) -> (Daemon, PathBuf) {
    let setup = Setup::new(&[])
        .with_real_plugins(&["content", "metadata", "events", "snapshots", "diff", "transfer", "cri"])
        .extra(&format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = {:?}\n",
            config_path.display().to_string()
        ));
    let root = setup.root();
    (setup.start(), root)
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.into(), ..Default::default() })
}

async fn pull(ch: &Channel, image: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
    let req = PullImageRequest { image: spec(image), auth, sandbox_config: None };
    ImageServiceClient::new(ch.clone()).pull_image(req).await.map(|r| r.into_inner().image_ref)
}

async fn status(ch: &Channel, image: &str, verbose: bool) -> k8s_cri::v1::ImageStatusResponse {
    let req = ImageStatusRequest { image: spec(image), verbose };
    ImageServiceClient::new(ch.clone()).image_status(req).await.expect("image status").into_inner()
}

async fn list(ch: &Channel) -> Vec<k8s_cri::v1::Image> {
    ImageServiceClient::new(ch.clone()).list_images(CriListImages::default()).await.expect("list").into_inner().images
}

async fn remove(ch: &Channel, image: &str) {
    ImageServiceClient::new(ch.clone()).remove_image(RemoveImageRequest { image: spec(image) }).await.expect("remove");
}

/// The image records of `k8s.io`: name to (target digest, labels).
async fn records(ch: &Channel) -> HashMap<String, (String, HashMap<String, String>)> {
    let r = ImagesClient::new(ch.clone()).list(with_ns(ListImagesRequest::default(), NS)).await.unwrap();
    r.into_inner().images.into_iter().map(|i| (i.name, (i.target.unwrap().digest, i.labels))).collect()
}

/// index-less image size as containerd computes it: manifest + config + layers.
fn image_size(archive: &Archive) -> u64 {
    let files = tar_files(&archive.tar).unwrap();
    let size = |d: &str| files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].len() as u64;
    size(&archive.manifests[0]) + size(&archive.configs[0]) + archive.layers.iter().map(|l| size(l)).sum::<u64>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_identity_status_and_unbuilt_methods() {
    let certs = tempfile::tempdir().unwrap();
    let (d, _) = daemon(certs.path());
    let ch = d.channel().await;
    let mut rt = RuntimeServiceClient::new(ch.clone());

    let v = rt.version(VersionRequest { version: "v1".into() }).await.expect("version").into_inner();
    assert_eq!(
        (v.version.as_str(), v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("0.1.0", "crated", "v1")
    );
    assert!(v.runtime_version.starts_with('v'), "{v:?}");

    let s = rt.status(StatusRequest { verbose: true }).await.expect("status").into_inner();
    let conditions = s.status.unwrap().conditions;
    let runtime = conditions.iter().find(|c| c.r#type == "RuntimeReady").expect("RuntimeReady");
    assert!(runtime.status);
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").expect("NetworkReady");
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(network.message.contains("cni plugin not initialized"), "{network:?}");
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).expect("config JSON");
    assert_eq!(config["sandboxImage"], "registry.k8s.io/pause:3.6");
    assert_eq!(config["containerd"]["snapshotter"], "overlayfs");
    assert_eq!(config["containerd"]["defaultRuntimeName"], "runc");
    assert_eq!(config["registry"]["configPath"], certs.path().display().to_string());
    assert_eq!(config["cni"]["binDir"], "/opt/cni/bin");
    let quiet = rt.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    assert!(quiet.info.is_empty());

    let cidr = UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig { network_config: Some(NetworkConfig { pod_cidr: "10.88.0.0/16".into() }) }),
    };
    rt.update_runtime_config(cidr).await.expect("update runtime config");

    let err = rt.checkpoint_container(CheckpointContainerRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("CheckpointContainer"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_fsinfo_remove_over_plain_http() {
    let registry = Registry::start().expect("registry fixture");
    let certs = tempfile::tempdir().unwrap();
    plain_http_hosts_toml(certs.path(), &registry.host());
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let (d, root) = daemon(certs.path());
    let ch = d.channel().await;
    let repo = format!("{}/test/busybox", registry.host());
    let tag = format!("{repo}:1");
    push_image(&ch, &archive, &tag, None).await;

    let id = pull(&ch, &tag, None).await.expect("pull");
    let config = &archive.configs[0];
    assert_eq!(&id, config, "the image ref is the config digest");
    let digest_ref = format!("{repo}@{}", archive.manifests[0]);

    // The records containerd's CRI leaves: the tag, the repo digest and the
    // id, all on the manifest and labelled as managed.
    let recs = records(&ch).await;
    for name in [&tag, &digest_ref, config] {
        let (target, labels) = recs.get(name).unwrap_or_else(|| panic!("no record {name}: {recs:?}"));
        assert_eq!(target, &archive.manifests[0], "{name}");
        assert_eq!(labels.get("io.cri-containerd.image").map(String::as_str), Some("managed"), "{name}");
    }
    assert_eq!(recs.len(), 3, "{recs:?}");

    let images = list(&ch).await;
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert_eq!(&image.id, config);
    assert_eq!(image.repo_tags, vec![tag.clone()]);
    assert_eq!(image.repo_digests, vec![digest_ref.clone()]);
    assert_eq!(image.size, image_size(&archive));
    // The test image's config has no User.
    assert_eq!((image.uid.as_ref(), image.username.as_str()), (None, ""));
    assert!(!image.pinned);

    // Status by tag, by id, by short id and by the familiar digest name.
    for name in [tag.as_str(), config.as_str(), &config[..19], digest_ref.as_str()] {
        let s = status(&ch, name, false).await;
        assert_eq!(s.image.as_ref().map(|i| i.id.as_str()), Some(config.as_str()), "status of {name}");
        assert!(s.info.is_empty());
    }
    let verbose = status(&ch, &tag, true).await;
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).expect("verbose info JSON");
    let chain = chain_ids(&archive.diff_ids).last().unwrap().clone();
    assert_eq!(info["chainID"], chain);
    assert_eq!(info["imageSpec"]["rootfs"]["diff_ids"][0], archive.diff_ids[0]);

    // Unknown images: an empty answer, not NotFound.
    let unknown = status(&ch, "docker.io/library/never-pulled:1", true).await;
    assert!(unknown.image.is_none() && unknown.info.is_empty(), "{unknown:?}");

    // The image filesystem is the snapshotter's, holding the unpacked layer.
    let fs = ImageServiceClient::new(ch.clone()).image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();
    let usage = &fs.image_filesystems[0];
    let mountpoint = root.join("io.containerd.snapshotter.v1.overlayfs");
    assert_eq!(usage.fs_id.as_ref().unwrap().mountpoint, mountpoint.display().to_string());
    assert!(mountpoint.is_dir());
    // busybox-static alone is over a megabyte, with a few inodes besides.
    assert!(usage.used_bytes.as_ref().unwrap().value > 1 << 20, "{usage:?}");
    assert!(usage.inodes_used.as_ref().unwrap().value > 3, "{usage:?}");

    // A tag the registry lacks.
    let err = pull(&ch, &format!("{repo}:missing"), None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Pulling again changes nothing.
    assert_eq!(pull(&ch, &tag, None).await.expect("second pull"), id);
    assert_eq!(records(&ch).await.len(), 3);

    // Two more images whose configs name a `User`: a uid and a name.
    // Listed with the first, each with its own repo tag; the user shows
    // in the list and in the status (critest's listImage and ImageStatus
    // uid/username specs).
    let mut users = Vec::new();
    for (name, user) in [("uid", "1002"), ("username", "www-data")] {
        let options = ImageOptions { user: Some(user.into()), ..Default::default() };
        let archive = oci_archive(&options).unwrap();
        let reference = format!("{}/test/{name}:1", registry.host());
        push_image(&ch, &archive, &reference, None).await;
        let id = pull(&ch, &reference, None).await.expect("pull an image with a user");
        assert_eq!(&id, &archive.configs[0]);
        users.push((reference, id, user));
    }
    let mut images = list(&ch).await;
    images.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags));
    let tags: Vec<Vec<String>> = images.iter().map(|i| i.repo_tags.clone()).collect();
    let mut want = vec![vec![tag.clone()], vec![users[0].0.clone()], vec![users[1].0.clone()]];
    want.sort();
    assert_eq!(tags, want, "{images:?}");
    for (reference, id, user) in &users {
        let listed = images.iter().find(|i| &i.id == id).unwrap_or_else(|| panic!("{id} not listed: {images:?}"));
        let by_status = status(&ch, reference, false).await.image.expect("status of an image with a user");
        for image in [listed, &by_status] {
            match *user {
                "1002" => assert_eq!((image.uid.as_ref().map(|u| u.value), image.username.as_str()), (Some(1002), "")),
                _ => assert_eq!((image.uid.as_ref(), image.username.as_str()), (None, "www-data")),
            }
        }
    }
    for (reference, _, _) in &users {
        remove(&ch, reference).await;
    }
    assert_eq!(list(&ch).await.len(), 1);

    // Removal by tag removes every name of the image.
    remove(&ch, &tag).await;
    assert!(list(&ch).await.is_empty());
    assert!(records(&ch).await.is_empty());
    assert!(status(&ch, config, false).await.image.is_none());
    // Removing what is gone is no error.
    remove(&ch, &tag).await;
    let fs = ImageServiceClient::new(ch.clone()).image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value, 0, "snapshots collected on removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_auth_config_from_an_htpasswd_registry() {
    let registry = Registry::start_with_user("tester", "s3cret").expect("registry fixture");
    let certs = tempfile::tempdir().unwrap();
    plain_http_hosts_toml(certs.path(), &registry.host());
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let (d, _) = daemon(certs.path());
    let ch = d.channel().await;
    let tag = format!("{}/test/private:1", registry.host());
    push_image(&ch, &archive, &tag, Some(("tester", "s3cret"))).await;

    let err = pull(&ch, &tag, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = AuthConfig { username: "tester".into(), password: "wrong".into(), ..Default::default() };
    let err = pull(&ch, &tag, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Credentials for another server are not sent.
    let elsewhere = AuthConfig {
        username: "tester".into(),
        password: "s3cret".into(),
        server_address: "https://registry.example".into(),
        ..Default::default()
    };
    assert_eq!(pull(&ch, &tag, Some(elsewhere)).await.unwrap_err().code(), Code::Unauthenticated);

    let right = AuthConfig { username: "tester".into(), password: "s3cret".into(), ..Default::default() };
    assert_eq!(pull(&ch, &tag, Some(right)).await.expect("pull with credentials"), archive.configs[0]);
    remove(&ch, &archive.configs[0]).await;
    assert!(list(&ch).await.is_empty());

    // The `auth` form: base64 of user:password.
    let encoded = AuthConfig { auth: "dGVzdGVyOnMzY3JldA==".into(), ..Default::default() };
    assert_eq!(pull(&ch, &tag, Some(encoded)).await.expect("pull with auth"), archive.configs[0]);
    assert_eq!(list(&ch).await[0].repo_tags, vec![tag]);
}

#[test]
fn config_default_prints_containerds_cri_table() {
    let setup = Setup::new(&[]).with_real_plugins(&["cri"]);
    let config = setup.write_config();
    let o = setup.run_crated(&["-c", config.to_str().unwrap(), "config", "default"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let t: toml::Table = common::stdout(&o).parse().expect("TOML");
    let cri = &t["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(cri["sandbox_image"].as_str(), Some("registry.k8s.io/pause:3.6"));
    assert_eq!(cri["containerd"]["default_runtime_name"].as_str(), Some("runc"));
    assert_eq!(cri["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));
    assert_eq!(cri["max_container_log_line_size"].as_integer(), Some(16384));
}
