//! The registry client the transfer plugin pulls and pushes with: resolve a
//! reference to its root descriptor, fetch manifests and blobs by digest
//! (resuming from an offset), check and push blobs, push manifests and tags.
//!
//! HTTP, the distribution API and the token flow are oci-client's; this
//! module adds what containerd's docker remote does around them: reference
//! names normalized as containerd does (`busybox` is
//! `docker.io/library/busybox:latest`), the hosts of containerd's
//! `hosts.toml` tried in order, credentials asked for per host, and errors
//! in containerd's kinds.
//!
//! Auth: anonymous, basic (the registry answers `WWW-Authenticate: Basic`),
//! and bearer tokens (`WWW-Authenticate: Bearer realm=..,service=..`: the
//! token is requested with the credentials as basic auth, with the
//! repository's pull or pull,push scope).
//!
//! hosts.toml: supported are `[host."<url>"]` mirrors tried in the file's
//! order for resolve and fetch, then `server` (or the registry itself);
//! `capabilities` (pull, resolve, push; `referrers` is accepted and unused);
//! `skip_verify`; `ca` (one or several PEM files); plain http by the URL's
//! scheme; `_default` and `host_port_` directories.
//! Not supported, and refused with `not implemented` rather than ignored:
//! `client` certificates and `header` tables (oci-client's configuration
//! has neither a client identity nor default headers), registry paths other
//! than `/v2` and `override_path` (oci-client builds every URL from the host
//! alone). The same holds for [`RegistryOptions::headers`]. Ignored:
//! `dial_timeout`. Unlike containerd, a loopback registry without a scheme
//! is tried with plain http only, not https first.
//!
//! Digests: `fetch` does not promise to verify (the caller verifies as it
//! writes), but oci-client checks manifests, and whole blobs fetched from
//! offset 0, against their digest; a mismatch is `data loss` naming the
//! digest. A body shorter than the descriptor's size is always an error.

mod error;
pub mod hosts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use bytes::Bytes;
use containerd_client::types::Descriptor;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

pub use error::RegistryError;
use error::Target;
pub use hosts::{Capabilities, HostConfig};

/// How to reach the registry, beyond its name.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// The scheme of the registry's own host when no hosts.toml says
    /// otherwise: `Some("http")` is ctr's `--plain-http`.
    pub default_scheme: Option<String>,
    /// containerd's `config_path`: the directory of `<host>/hosts.toml` files.
    pub host_dir: Option<PathBuf>,
    /// Extra request headers. Not supported by oci-client: non-empty is an error.
    pub headers: HashMap<String, String>,
}

/// Where credentials come from: asked once per host and operation, with the
/// `WWW-Authenticate` challenges the host answered `GET /v2/` with.
pub trait Credentials: Send + Sync {
    /// `Ok(None)` for anonymous access; `Some((user, secret))` otherwise.
    fn credentials(
        &self,
        host: &str,
        www_authenticate: &[String],
    ) -> BoxFuture<'_, Result<Option<(String, String)>, RegistryError>>;
}

/// Fixed credentials, as ctr's `--user user:password` gives.
pub struct StaticCredentials {
    pub user: String,
    pub secret: String,
}

impl Credentials for StaticCredentials {
    fn credentials(&self, _: &str, _: &[String]) -> BoxFuture<'_, Result<Option<(String, String)>, RegistryError>> {
        Box::pin(futures::future::ready(Ok(Some((self.user.clone(), self.secret.clone())))))
    }
}

/// One host with the clients to contact it.
struct Host {
    config: HostConfig,
    client: oci_client::Client,
    /// For the `GET /v2/` probe whose challenges are handed to [`Credentials`].
    probe: reqwest::Client,
    /// The reference as this host serves it (a mirror is given the original
    /// registry as the `ns` query parameter, as containerd does).
    reference: Reference,
    /// Operations already authorized on this host (pull, push).
    authorized: tokio::sync::Mutex<[bool; 2]>,
}

impl Host {
    /// The reference on this host, pointing at a digest.
    fn by_digest(&self, digest: &str) -> Reference {
        self.with_mirror(Reference::with_digest(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            digest.to_string(),
        ))
    }

    fn by_tag(&self, tag: &str) -> Reference {
        self.with_mirror(Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            tag.to_string(),
        ))
    }

    fn with_mirror(&self, mut r: Reference) -> Reference {
        if self.reference.namespace().is_some() {
            r.set_mirror_registry(self.config.host.clone());
        }
        r
    }
}

/// A client for one repository of one registry.
pub struct Registry {
    name: String,
    hosts: Vec<Host>,
    creds: Option<Arc<dyn Credentials>>,
}

/// The media types of manifests, fetched from `/manifests/` rather than `/blobs/`.
const MANIFEST_TYPES: &[&str] =
    &[crate::oci::OCI_INDEX, crate::oci::OCI_MANIFEST, crate::oci::DOCKER_INDEX, crate::oci::DOCKER_MANIFEST];

fn is_manifest(media_type: &str) -> bool {
    crate::oci::is_index(media_type) || crate::oci::is_manifest(media_type)
}

/// reqwest is built without a default TLS provider; install ring's once per
/// copy of rustls (each cdylib has its own).
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Registry {
    /// A client for `reference` (a containerd image name: `busybox`,
    /// `127.0.0.1:5000/busybox:1`, `repo@sha256:...`).
    pub async fn new(
        reference: &str,
        opts: RegistryOptions,
        creds: Option<Arc<dyn Credentials>>,
    ) -> Result<Registry, RegistryError> {
        install_crypto_provider();
        if !opts.headers.is_empty() {
            let names: Vec<_> = opts.headers.keys().cloned().collect();
            return Err(RegistryError::Unsupported { what: format!("extra request headers ({})", names.join(", ")) });
        }
        let parsed: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
            RegistryError::InvalidReference { reference: reference.to_string(), reason: e.to_string() }
        })?;
        let name = parsed.whole();
        let configs = hosts::hosts_for(parsed.registry(), opts.host_dir.as_deref(), opts.default_scheme.as_deref())?;
        let mut hosts = Vec::with_capacity(configs.len());
        for config in configs {
            let mut ca = Vec::new();
            for file in &config.ca_files {
                let data = tokio::fs::read(file).await.map_err(|e| RegistryError::HostsFile {
                    file: file.clone(),
                    reason: format!("reading the ca of host {}: {e}", config.host),
                })?;
                ca.push(data);
            }
            let client_config = ClientConfig {
                protocol: if config.scheme == "http" { ClientProtocol::Http } else { ClientProtocol::Https },
                accept_invalid_certificates: config.skip_verify,
                extra_root_certificates: ca
                    .iter()
                    .map(|data| Certificate { encoding: CertificateEncoding::Pem, data: data.clone() })
                    .collect(),
                // Every platform's manifests are the caller's to choose.
                platform_resolver: None,
                ..Default::default()
            };
            let target = Target { what: &name, host: &config.host };
            let client = oci_client::Client::try_from(client_config).map_err(|e| target.error(e))?;
            let mut probe = reqwest::Client::builder().danger_accept_invalid_certs(config.skip_verify);
            for data in &ca {
                let cert = reqwest::Certificate::from_pem(data).map_err(|e| RegistryError::HostsFile {
                    file: config.ca_files.first().cloned().unwrap_or_default(),
                    reason: format!("ca of host {}: {e}", config.host),
                })?;
                probe = probe.tls_certs_merge([cert]);
            }
            let probe = probe.build().map_err(|e| target.request_error(&e))?;
            let mut host_reference = parsed.clone();
            if config.host != parsed.resolve_registry() {
                host_reference.set_mirror_registry(config.host.clone());
            }
            hosts.push(Host {
                config,
                client,
                probe,
                reference: host_reference,
                authorized: tokio::sync::Mutex::new([false; 2]),
            });
        }
        Ok(Registry { name, hosts, creds })
    }

    /// The normalized reference, as containerd names images.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hosts in the order they are tried.
    pub fn hosts(&self) -> impl Iterator<Item = &HostConfig> {
        self.hosts.iter().map(|h| &h.config)
    }

    /// Authorizes `op` on `host` once: asks [`Credentials`] (with the
    /// host's challenges) and lets oci-client fetch a token if the host
    /// wants one.
    async fn authorize(&self, host: &Host, op: RegistryOperation, what: &str) -> Result<(), RegistryError> {
        let slot = matches!(op, RegistryOperation::Push) as usize;
        let mut authorized = host.authorized.lock().await;
        if authorized[slot] {
            return Ok(());
        }
        let target = Target { what, host: &host.config.host };
        let auth = match &self.creds {
            None => RegistryAuth::Anonymous,
            Some(creds) => {
                let url = format!("{}://{}/v2/", host.config.scheme, host.config.host);
                let response = host.probe.get(&url).send().await.map_err(|e| target.request_error(&e))?;
                let challenges: Vec<String> = response
                    .headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect();
                match creds.credentials(&host.config.host, &challenges).await? {
                    Some((user, secret)) => RegistryAuth::Basic(user, secret),
                    None => RegistryAuth::Anonymous,
                }
            }
        };
        host.client.auth(&host.reference, &auth, op).await.map_err(|e| target.error(e))?;
        authorized[slot] = true;
        Ok(())
    }

    /// Runs `attempt` on each host with `capable`, in order, until one
    /// succeeds; the most telling error otherwise (a 404 from a mirror does
    /// not hide another host's failure).
    async fn on_hosts<'a, T, F>(
        &'a self,
        capable: impl Fn(&Capabilities) -> bool,
        what: &str,
        attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(&'a Host) -> BoxFuture<'a, Result<T, RegistryError>>,
    {
        let mut best: Option<RegistryError> = None;
        for host in self.hosts.iter().filter(|h| capable(&h.config.capabilities)) {
            match attempt(host).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let stop = !e.try_next_host();
                    if best.as_ref().is_none_or(|b| e.priority() > b.priority()) {
                        best = Some(e);
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| RegistryError::Unsupported {
            what: format!("{what}: no host of {} is configured for this operation", self.name),
        }))
    }

    /// The root descriptor of the reference: an index or a manifest, with
    /// its media type (the manifest's own `mediaType`, or what its fields
    /// say when it has none), digest and size.
    pub async fn resolve(&self) -> Result<Descriptor, RegistryError> {
        let name = self.name.as_str();
        self.on_hosts(
            |c| c.resolve,
            name,
            |host| {
                Box::pin(async move {
                    self.authorize(host, RegistryOperation::Pull, name).await?;
                    let target = Target { what: name, host: &host.config.host };
                    let (body, digest) = host
                        .client
                        .pull_manifest_raw(&host.reference, &RegistryAuth::Anonymous, MANIFEST_TYPES)
                        .await
                        .map_err(|e| target.error(e))?;
                    let media_type = manifest_media_type(&body).ok_or_else(|| RegistryError::Unexpected {
                        target: name.to_string(),
                        host: host.config.host.clone(),
                        detail: format!("{digest} is not a manifest or index"),
                    })?;
                    Ok(Descriptor { media_type, digest, size: body.len() as i64, annotations: HashMap::new() })
                })
            },
        )
        .await
    }

    /// The content of `desc` (a manifest or a blob) from byte `offset` on,
    /// from the first host that has it. The stream ends with an error
    /// naming the digest if the body stops short of `desc.size`.
    pub async fn fetch(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        let size = u64::try_from(desc.size).unwrap_or(0);
        if offset > size {
            return Err(RegistryError::Unexpected {
                target: desc.digest.clone(),
                host: self.name.clone(),
                detail: format!("offset {offset} is past the size {size}"),
            });
        }
        let digest = desc.digest.as_str();
        self.on_hosts(
            |c| c.pull,
            digest,
            |host| {
                Box::pin(async move {
                    self.authorize(host, RegistryOperation::Pull, digest).await?;
                    if is_manifest(&desc.media_type) {
                        self.fetch_manifest(host, desc, offset, size).await
                    } else {
                        self.fetch_blob(host, desc, offset, size).await
                    }
                })
            },
        )
        .await
    }

    async fn fetch_manifest(
        &self,
        host: &Host,
        desc: &Descriptor,
        offset: u64,
        size: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        let target = Target { what: &desc.digest, host: &host.config.host };
        let mut accept = vec![desc.media_type.as_str()];
        accept.extend(MANIFEST_TYPES.iter().filter(|t| **t != desc.media_type));
        let (body, _) = host
            .client
            .pull_manifest_raw(&host.by_digest(&desc.digest), &RegistryAuth::Anonymous, &accept)
            .await
            .map_err(|e| target.error(e))?;
        if body.len() as u64 != size {
            return Err(RegistryError::BadContent {
                digest: desc.digest.clone(),
                host: host.config.host.clone(),
                detail: format!("{} bytes where the descriptor says {size}", body.len()),
            });
        }
        Ok(futures::stream::once(futures::future::ready(Ok(body.slice(offset as usize..)))).boxed())
    }

    async fn fetch_blob(
        &self,
        host: &Host,
        desc: &Descriptor,
        offset: u64,
        size: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        let target = Target { what: &desc.digest, host: &host.config.host };
        let layer = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            ..Default::default()
        };
        let reference = host.by_digest(&desc.digest);
        // From 0, oci-client verifies the digest as the body streams; a
        // registry that ignores the Range header sends it all, and the bytes
        // before the offset are dropped here.
        let (stream, skip) = if offset == 0 {
            let s = host.client.pull_blob_stream(&reference, &layer).await.map_err(|e| target.error(e))?;
            (s.stream, 0)
        } else {
            match host
                .client
                .pull_blob_stream_partial(&reference, &layer, offset, None)
                .await
                .map_err(|e| target.error(e))?
            {
                BlobResponse::Full(s) => (s.stream, offset),
                BlobResponse::Partial(s) => (s.stream, 0),
            }
        };
        Ok(sized_stream(stream, desc.digest.clone(), host.config.host.clone(), offset, size, skip))
    }

    /// Whether the push host already has `desc` (a blob, or a manifest by digest).
    pub async fn exists(&self, desc: &Descriptor) -> Result<bool, RegistryError> {
        let host = self.push_host(&desc.digest)?;
        let target = Target { what: &desc.digest, host: &host.config.host };
        self.authorize(host, RegistryOperation::Push, &desc.digest).await?;
        if is_manifest(&desc.media_type) {
            match host.client.fetch_manifest_digest(&host.by_digest(&desc.digest), &RegistryAuth::Anonymous).await {
                Ok(_) => Ok(true),
                Err(e) => match target.error(e) {
                    RegistryError::NotFound { .. } => Ok(false),
                    other => Err(other),
                },
            }
        } else {
            host.client.blob_exists(&host.reference, &desc.digest).await.map_err(|e| target.error(e))
        }
    }

    /// Uploads a blob. Streamed: oci-client sends what `data` yields as a
    /// chunked upload (one PATCH per chunk of at most its chunk size), then
    /// commits it with the digest; nothing is buffered whole.
    pub async fn push_blob(
        &self,
        desc: &Descriptor,
        data: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> Result<(), RegistryError> {
        let host = self.push_host(&desc.digest)?;
        let target = Target { what: &desc.digest, host: &host.config.host };
        self.authorize(host, RegistryOperation::Push, &desc.digest).await?;
        let data = data.map_err(oci_client::errors::OciDistributionError::IoError);
        let size = u64::try_from(desc.size).ok();
        match host.client.push_blob_stream(&host.reference, data, &desc.digest, size).await {
            Ok(_) => Ok(()),
            // The source failing is not the registry's fault.
            Err(oci_client::errors::OciDistributionError::IoError(source)) => {
                Err(RegistryError::Source { digest: desc.digest.clone(), source })
            }
            Err(e) => Err(target.error(e)),
        }
    }

    /// Uploads a manifest or index, under `tag` if given, else by its digest.
    pub async fn push_manifest(&self, desc: &Descriptor, bytes: Bytes, tag: Option<&str>) -> Result<(), RegistryError> {
        let host = self.push_host(&desc.digest)?;
        let what = tag.map(|t| format!("{}:{t}", host.reference.repository())).unwrap_or(desc.digest.clone());
        let target = Target { what: &what, host: &host.config.host };
        self.authorize(host, RegistryOperation::Push, &what).await?;
        let reference = match tag {
            Some(t) => host.by_tag(t),
            None => host.by_digest(&desc.digest),
        };
        let content_type =
            reqwest::header::HeaderValue::from_str(&desc.media_type).map_err(|_| RegistryError::Unexpected {
                target: desc.digest.clone(),
                host: host.config.host.clone(),
                detail: format!("media type {:?} cannot be a header", desc.media_type),
            })?;
        host.client.push_manifest_raw(&reference, bytes, content_type).await.map_err(|e| target.error(e))?;
        Ok(())
    }

    /// Pushes go to the first host with the push capability, as containerd's pusher does.
    fn push_host(&self, what: &str) -> Result<&Host, RegistryError> {
        self.hosts.iter().find(|h| h.config.capabilities.push).ok_or_else(|| RegistryError::Unsupported {
            what: format!("pushing {what}: no host of {} has the push capability", self.name),
        })
    }
}

/// The media type of a manifest: its `mediaType` field, else what its
/// fields make it (`manifests`: an OCI index; `config`: an OCI manifest).
fn manifest_media_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    match probe {
        Probe { media_type: Some(m), .. } => Some(m),
        Probe { manifests: Some(_), .. } => Some(MANIFEST_TYPES[0].to_string()),
        Probe { config: Some(_), .. } => Some(MANIFEST_TYPES[1].to_string()),
        _ => None,
    }
}

/// Wraps a body stream: drops the first `skip` bytes, and ends with an error
/// naming the digest unless exactly `size - offset` bytes came.
fn sized_stream(
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    digest: String,
    host: String,
    offset: u64,
    size: u64,
    skip: u64,
) -> BoxStream<'static, Result<Bytes, RegistryError>> {
    struct State {
        inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
        digest: String,
        host: String,
        skip: u64,
        received: u64,
        expected: u64,
        offset: u64,
        done: bool,
    }
    let state = State { inner: stream, digest, host, skip, received: 0, expected: size - offset, offset, done: false };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.inner.next().await {
                Some(Ok(mut chunk)) => {
                    if s.skip > 0 {
                        let drop = s.skip.min(chunk.len() as u64);
                        s.skip -= drop;
                        chunk = chunk.slice(drop as usize..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    s.received += chunk.len() as u64;
                    if s.received > s.expected {
                        s.done = true;
                        let e = RegistryError::BadContent {
                            digest: s.digest.clone(),
                            host: s.host.clone(),
                            detail: format!("more than the descriptor's {} bytes", s.expected + s.offset),
                        };
                        return Some((Err(e), s));
                    }
                    return Some((Ok(chunk), s));
                }
                Some(Err(e)) => {
                    s.done = true;
                    let short = s.received < s.expected;
                    let digest_error = e.get_ref().is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
                    let err = if digest_error && !short {
                        RegistryError::BadContent {
                            digest: s.digest.clone(),
                            host: s.host.clone(),
                            detail: e.to_string(),
                        }
                    } else {
                        RegistryError::Truncated {
                            digest: s.digest.clone(),
                            host: s.host.clone(),
                            received: s.offset + s.received,
                            expected: s.offset + s.expected,
                            detail: (!digest_error).then(|| error_chain(&e)),
                        }
                    };
                    return Some((Err(err), s));
                }
                None => {
                    s.done = true;
                    if s.received < s.expected {
                        let e = RegistryError::Truncated {
                            digest: s.digest.clone(),
                            host: s.host.clone(),
                            received: s.offset + s.received,
                            expected: s.offset + s.expected,
                            detail: None,
                        };
                        return Some((Err(e), s));
                    }
                    return None;
                }
            }
        }
    })
    .boxed()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}
