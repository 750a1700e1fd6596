//! The failures of a transfer, each with an errdefs kind, so that the
//! client gets the code containerd would give and a message naming the
//! blob, layer or reference concerned.

use crated_plugin_api::{Error, ErrorKind, Status};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{}", .0.message)]
    Status(#[from] Status),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("stream {0}: not found")]
    StreamNotFound(String),
    #[error("stream {0}: {1}")]
    Stream(String, String),
    #[error("blob {path}: digest {actual} does not match {expected}")]
    BlobDigest { path: String, expected: String, actual: String },
    #[error("{what}: {message}")]
    Archive { what: String, message: String },
    #[error("{0}: not found")]
    NotFound(String),
    #[error("layer {layer}: applied diff {actual} does not match the config's diff id {expected}")]
    DiffId { layer: String, expected: String, actual: String },
    /// A registry's failure, with its kind (not found, unauthenticated, unavailable..).
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Failed(String),
}

impl TransferError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransferError::Status(s) => s.kind(),
            TransferError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            TransferError::StreamNotFound(_) | TransferError::NotFound(_) => ErrorKind::NotFound,
            TransferError::Stream(..) => ErrorKind::Unavailable,
            TransferError::BlobDigest { .. } | TransferError::DiffId { .. } => ErrorKind::FailedPrecondition,
            TransferError::Archive { .. } => ErrorKind::InvalidArgument,
            TransferError::Registry(e) => e.kind(),
            TransferError::NotImplemented(_) => ErrorKind::NotImplemented,
            TransferError::Failed(_) => ErrorKind::Unknown,
        }
    }

    pub fn archive(what: impl Into<String>, message: impl std::fmt::Display) -> TransferError {
        TransferError::Archive { what: what.into(), message: message.to_string() }
    }

    /// This error with what was being done in front of its message.
    pub fn context(self, ctx: impl std::fmt::Display) -> TransferError {
        match self {
            TransferError::Status(s) => TransferError::Status(s.context(ctx)),
            other => {
                let kind = other.kind();
                TransferError::Status(Error::new(kind, format!("{ctx}: {other}")).into())
            }
        }
    }
}

impl From<TransferError> for Status {
    fn from(e: TransferError) -> Status {
        match e {
            TransferError::Status(s) => s,
            other => Error::new(other.kind(), other.to_string()).into(),
        }
    }
}

pub type Result<T, E = TransferError> = std::result::Result<T, E>;
