//! `PullImage`, as containerd 1.6's CRI (`pkg/cri/server/image_pull.go`)
//! but driven through the transfer plugin in process: one
//! `Transfer(OCIRegistry -> ImageStore)` call pulls the host platform's
//! image into content, unpacks it into the CRI's snapshotter and names it
//! with the normalised reference and containerd's CRI labels. Credentials
//! from the request's `AuthConfig` are answered on a named stream of the
//! streaming plugin, exactly as a transfer client answers them, so the
//! transfer plugin needs no CRI-specific entry point. Registry hosts
//! (plain HTTP, mirrors, CAs) come from `registry.config_path`'s
//! `hosts.toml` files. Afterwards the extra names containerd records are
//! created: the image id (`sha256:<config digest>`) and the repo digest
//! (`name@<manifest digest>`).

use std::collections::HashMap;

use base64::Engine as _;
use containerd_client::{
    services::v1::{StreamInit, TransferOptions, TransferRequest},
    types::{
        transfer::UnpackConfiguration,
        transfer::{AuthRequest, AuthResponse, AuthType, ImageStore as StoreEnd, OciRegistry, RegistryResolver},
        Platform,
    },
};
use crated_plugin_api::{Host, Status};
use futures::StreamExt;
use k8s_cri::v1::AuthConfig;
use prost::Name;
use prost_types::Any;
use tokio::sync::mpsc;

use crate::{
    config::Config,
    images::{ImageStore, IMAGE_LABEL_KEY, IMAGE_LABEL_VALUE, PINNED_LABEL_KEY, PINNED_LABEL_VALUE},
    reference::Reference,
};

const TRANSFER: &str = "/containerd.services.transfer.v1.Transfer/Transfer";
const STREAM: &str = "/containerd.services.streaming.v1.Streaming/Stream";

fn pack<M: Name>(m: &M) -> Any {
    Any { type_url: M::full_name(), value: m.encode_to_vec() }
}

fn is<M: Name>(any: &Any) -> bool {
    any.type_url.rsplit('/').next() == Some(M::full_name().as_str())
}

/// The user and secret `auth` gives for `host` (containerd's `ParseAuth`):
/// none when it names another server; user/password, an identity token
/// (empty user), or `auth` as base64 `user:password`.
pub fn parse_auth(auth: Option<&AuthConfig>, host: &str) -> Result<Option<(String, String)>, Status> {
    let Some(auth) = auth else { return Ok(None) };
    if !auth.server_address.is_empty() {
        // A URL (`https://host/...`) or a bare host.
        let server = auth.server_address.split_once("://").map_or(auth.server_address.as_str(), |(_, r)| r);
        let server = server.split('/').next().unwrap_or_default();
        if server != host {
            return Ok(None);
        }
    }
    if !auth.username.is_empty() {
        return Ok(Some((auth.username.clone(), auth.password.clone())));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Some((String::new(), auth.identity_token.clone())));
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim_end_matches('\0'))
            .map_err(|e| Status::invalid_argument(format!("invalid auth: {e}")))?;
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        let (user, password) =
            decoded.split_once(':').ok_or_else(|| Status::invalid_argument("invalid decoded auth".to_string()))?;
        return Ok(Some((user.to_string(), password.trim_matches('\0').to_string())));
    }
    Ok(None)
}

/// The labels of a pulled image (`getLabels`).
pub fn labels(config: &Config, reference: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([(IMAGE_LABEL_KEY.to_string(), IMAGE_LABEL_VALUE.to_string())]);
    let sandbox = Reference::parse(&config.sandbox_image).map(|r| r.to_string()).unwrap_or_default();
    if sandbox == reference {
        labels.insert(PINNED_LABEL_KEY.into(), PINNED_LABEL_VALUE.into());
    }
    labels
}

/// Opens a named stream on the streaming plugin and answers the transfer's
/// credential requests from `auth` until the stream ends. Returns once the
/// stream is registered (the transfer may name it from then on).
async fn serve_credentials(host: &Host, id: &str, auth: AuthConfig) -> Result<tokio::task::JoinHandle<()>, Status> {
    let (tx, rx) = mpsc::channel::<Result<Any, Status>>(4);
    tx.send(Ok(pack(&StreamInit { id: id.to_string() }))).await.map_err(|_| Status::internal("stream closed"))?;
    let input = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut output = host.streaming::<Any, Any, _>(&Host::call(STREAM, None), input).await?;
    match output.next().await {
        Some(Ok(ack)) if ack.type_url.ends_with("google.protobuf.Empty") => {}
        Some(Err(s)) => return Err(s.context("opening the credentials stream")),
        _ => return Err(Status::internal("the credentials stream was not acknowledged")),
    }
    Ok(tokio::spawn(async move {
        while let Some(Ok(msg)) = output.next().await {
            if !is::<AuthRequest>(&msg) {
                continue;
            }
            let Ok(req) = <AuthRequest as prost::Message>::decode(msg.value.as_slice()) else { continue };
            let response = match parse_auth(Some(&auth), &req.host) {
                Ok(Some((username, secret))) => {
                    AuthResponse { auth_type: AuthType::Credentials as i32, username, secret, expire_at: None }
                }
                _ => AuthResponse { auth_type: AuthType::None as i32, ..Default::default() },
            };
            if tx.send(Ok(pack(&response))).await.is_err() {
                break;
            }
        }
    }))
}

fn host_platform() -> Platform {
    let p = crated_plugin_api::build_platform();
    let mut parts = p.split('/');
    Platform {
        os: parts.next().unwrap_or("linux").into(),
        architecture: parts.next().unwrap_or("amd64").into(),
        variant: parts.next().unwrap_or_default().into(),
        ..Default::default()
    }
}

/// Pulls `image` into namespace `ns`; returns the image id.
pub async fn pull(
    host: &Host,
    config: &Config,
    ns: &str,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, Status> {
    let named = Reference::parse(image)
        .map_err(|e| Status::invalid_argument(format!("failed to parse image reference {image:?}: {e}")))?;
    let reference = named.to_string();
    let labels = labels(config, &reference);

    let auth_stream = match auth.filter(|a| *a != AuthConfig::default()) {
        Some(a) => {
            let id = format!("cri-auth-{}", uuid::Uuid::new_v4());
            Some((id.clone(), serve_credentials(host, &id, a).await?))
        }
        None => None,
    };
    let resolver = RegistryResolver {
        auth_stream: auth_stream.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
        headers: config.registry.headers.iter().map(|(k, v)| (k.clone(), v.join(", "))).collect(),
        host_dir: config.registry.config_path.clone(),
        ..Default::default()
    };
    let platform = host_platform();
    let destination = StoreEnd {
        name: reference.clone(),
        labels: labels.clone(),
        platforms: vec![platform.clone()],
        unpacks: vec![UnpackConfiguration {
            platform: Some(platform),
            snapshotter: config.containerd.snapshotter.clone(),
        }],
        ..Default::default()
    };
    let req = TransferRequest {
        source: Some(pack(&OciRegistry { reference: reference.clone(), resolver: Some(resolver) })),
        destination: Some(pack(&destination)),
        options: Some(TransferOptions::default()),
    };
    let result = host.unary::<_, ()>(&Host::call(TRANSFER, Some(ns)), &req).await;
    if let Some((_, task)) = auth_stream {
        task.abort();
    }
    result.map_err(|s| s.context(format!("failed to pull and unpack image {reference:?}")))?;

    let store = ImageStore::new(host.clone(), ns);
    let record = store
        .record(&reference)
        .await?
        .ok_or_else(|| Status::internal(format!("image {reference:?} missing after its pull")))?;
    let target = record.target.unwrap_or_default();
    let id = store.image_id(&target).await.map_err(|s| s.context("get image config descriptor"))?;
    let repo_digest = named.with_digest(&target.digest);
    let repo_tag = named.tag.is_some().then(|| reference.clone());
    for name in [Some(id.clone()), repo_tag, Some(repo_digest)].into_iter().flatten() {
        store
            .put(&name, &target, &labels)
            .await
            .map_err(|s| s.context(format!("failed to create image reference {name:?}")))?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_as_parse_auth() {
        let host = "127.0.0.1:5000";
        assert_eq!(parse_auth(None, host).unwrap(), None);
        let up = AuthConfig { username: "u".into(), password: "p".into(), ..Default::default() };
        assert_eq!(parse_auth(Some(&up), host).unwrap(), Some(("u".into(), "p".into())));
        let other = AuthConfig { server_address: "https://other.example/v2/".into(), ..up.clone() };
        assert_eq!(parse_auth(Some(&other), host).unwrap(), None);
        let same = AuthConfig { server_address: format!("http://{host}"), ..up };
        assert_eq!(parse_auth(Some(&same), host).unwrap(), Some(("u".into(), "p".into())));
        let b64 =
            AuthConfig { auth: base64::engine::general_purpose::STANDARD.encode("me:s3:cret"), ..Default::default() };
        assert_eq!(parse_auth(Some(&b64), host).unwrap(), Some(("me".into(), "s3:cret".into())));
        let token = AuthConfig { identity_token: "tok".into(), ..Default::default() };
        assert_eq!(parse_auth(Some(&token), host).unwrap(), Some((String::new(), "tok".into())));
        let bad =
            AuthConfig { auth: base64::engine::general_purpose::STANDARD.encode("nocolon"), ..Default::default() };
        assert!(parse_auth(Some(&bad), host).is_err());
    }

    #[test]
    fn the_sandbox_image_is_pinned() {
        let config = Config::default();
        let l = labels(&config, "registry.k8s.io/pause:3.6");
        assert_eq!(l.get(PINNED_LABEL_KEY).map(String::as_str), Some("pinned"));
        assert_eq!(l.get(IMAGE_LABEL_KEY).map(String::as_str), Some("managed"));
        assert!(!labels(&config, "docker.io/library/busybox:latest").contains_key(PINNED_LABEL_KEY));
    }
}
