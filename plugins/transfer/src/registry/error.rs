//! The registry client's failures, and how each becomes one of containerd's
//! error kinds.
//!
//! The kinds follow containerd's docker remote: a 404 on resolve or fetch is
//! `not found`, a 401 (or a token the registry refused) is `unauthenticated`,
//! a 403 `permission denied`, a 5xx, 429 or a lost connection `unavailable`,
//! content that does not match its digest `data loss`. Every message names
//! what was asked for (the reference or the digest) and the host that
//! answered, and the HTTP status when there was one.

use std::path::PathBuf;

use crated_plugin_api::errdefs::{Error, ErrorKind};

/// A failure of the registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse as an image reference.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// A hosts.toml that cannot be read or understood.
    #[error("{}: {reason}", file.display())]
    HostsFile { file: PathBuf, reason: String },
    /// A hosts.toml or option asks for something this client cannot do.
    #[error("{what} is not supported by the registry client")]
    Unsupported { what: String },
    /// The registry has no such manifest, tag or blob.
    #[error("{target}: not found (HTTP {status} from {host})")]
    NotFound { target: String, host: String, status: u16 },
    /// The registry wants credentials that were not given or not accepted.
    #[error("{target}: authentication with {host} failed: {detail}")]
    Unauthenticated { target: String, host: String, detail: String },
    /// The credentials were accepted but do not grant the access asked for.
    #[error("{target}: access denied by {host} (HTTP {status}): {detail}")]
    PermissionDenied { target: String, host: String, status: u16, detail: String },
    /// The registry could not be reached, failed (5xx) or asked us to back off (429).
    #[error("{target}: registry {host} unavailable: {detail}")]
    Unavailable { target: String, host: String, detail: String },
    /// A blob body that ended before its descriptor's size.
    #[error("{digest}: connection to {host} lost after {received} of {expected} bytes{}", detail_suffix(.detail))]
    Truncated { digest: String, host: String, received: u64, expected: u64, detail: Option<String> },
    /// Content that does not match its digest or size.
    #[error("{digest}: registry {host} sent bad content: {detail}")]
    BadContent { digest: String, host: String, detail: String },
    /// The registry answered with something the client did not expect.
    #[error("{target}: unexpected answer from {host}: {detail}")]
    Unexpected { target: String, host: String, detail: String },
    /// The blob to push could not be read.
    #[error("{digest}: reading the content to push: {source}")]
    Source { digest: String, source: std::io::Error },
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl RegistryError {
    /// The kind of failure, as containerd's errdefs name it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::InvalidReference { .. } | RegistryError::HostsFile { .. } => ErrorKind::InvalidArgument,
            RegistryError::Unsupported { .. } => ErrorKind::NotImplemented,
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            RegistryError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            RegistryError::Unavailable { .. } | RegistryError::Truncated { .. } => ErrorKind::Unavailable,
            RegistryError::BadContent { .. } => ErrorKind::DataLoss,
            RegistryError::Unexpected { .. } | RegistryError::Source { .. } => ErrorKind::Unknown,
        }
    }

    /// Whether another host (a later mirror) may still answer: everything but
    /// a refusal of credentials or a request this client cannot make.
    pub(crate) fn try_next_host(&self) -> bool {
        !matches!(
            self,
            RegistryError::InvalidReference { .. }
                | RegistryError::HostsFile { .. }
                | RegistryError::Unsupported { .. }
                | RegistryError::Source { .. }
        )
    }

    /// How much this error says, for choosing which of several hosts'
    /// errors to report: like containerd, a 404 from one mirror is less
    /// telling than another host's real failure.
    pub(crate) fn priority(&self) -> u8 {
        match self {
            RegistryError::NotFound { .. } => 1,
            RegistryError::Unavailable { .. } => 2,
            _ => 3,
        }
    }
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Error {
        Error::new(e.kind(), e.to_string())
    }
}

/// What a request was about, to name it in errors.
pub(crate) struct Target<'a> {
    /// The reference or digest asked for.
    pub what: &'a str,
    /// The host contacted.
    pub host: &'a str,
}

impl Target<'_> {
    /// Classifies an error of oci-client.
    pub(crate) fn error(&self, e: oci_client::errors::OciDistributionError) -> RegistryError {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
        let (target, host) = (self.what.to_string(), self.host.to_string());
        match e {
            E::UnauthorizedError { url } => {
                RegistryError::Unauthenticated { target, host, detail: format!("HTTP 401 from {url}") }
            }
            E::AuthenticationFailure(reason) => {
                RegistryError::Unauthenticated { target, host, detail: format!("token request refused: {reason}") }
            }
            E::RegistryTokenDecodeError(reason) => {
                RegistryError::Unauthenticated { target, host, detail: format!("token response: {reason}") }
            }
            E::ServerError { code, url, message } => self.status_error(code, format!("{url}: {}", message.trim())),
            E::RegistryError { envelope, url } => {
                // The registry's error codes stand for fixed statuses in the
                // distribution spec; oci-client keeps the codes, not the status.
                let code = envelope.errors.first().map(|e| &e.code);
                let status = match code {
                    Some(C::BlobUnknown | C::ManifestUnknown | C::NameUnknown | C::NotFound) => 404,
                    Some(C::Unauthorized) => 401,
                    Some(C::Denied) => 403,
                    Some(C::Toomanyrequests) => 429,
                    _ => 400,
                };
                self.status_error(status, format!("{url}: {envelope}"))
            }
            E::DigestError(d) => RegistryError::BadContent { digest: target, host, detail: d.to_string() },
            E::RequestError(r) => self.request_error(&r),
            E::IoError(io) => RegistryError::Unavailable { target, host, detail: io.to_string() },
            other => RegistryError::Unexpected { target, host, detail: other.to_string() },
        }
    }

    /// Classifies an HTTP status that is not a success.
    pub(crate) fn status_error(&self, status: u16, detail: String) -> RegistryError {
        let (target, host) = (self.what.to_string(), self.host.to_string());
        match status {
            404 => RegistryError::NotFound { target, host, status },
            401 => RegistryError::Unauthenticated { target, host, detail: format!("HTTP 401: {detail}") },
            403 => RegistryError::PermissionDenied { target, host, status, detail },
            429 | 500..=599 => RegistryError::Unavailable { target, host, detail: format!("HTTP {status}: {detail}") },
            _ => RegistryError::Unexpected { target, host, detail: format!("HTTP {status}: {detail}") },
        }
    }

    /// Classifies a failure of the HTTP client itself.
    pub(crate) fn request_error(&self, r: &reqwest::Error) -> RegistryError {
        let (target, host) = (self.what.to_string(), self.host.to_string());
        if let Some(status) = r.status() {
            return self.status_error(status.as_u16(), r.to_string());
        }
        // Anything below HTTP (refused, reset, timed out, cut short) is a
        // registry that is not there right now.
        let mut detail = r.to_string();
        let mut source = std::error::Error::source(r);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        RegistryError::Unavailable { target, host, detail }
    }
}
