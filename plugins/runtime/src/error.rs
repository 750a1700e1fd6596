//! The failures of the runtime plugins, each with an errdefs kind, so that
//! a client gets the code and the text containerd 1.6 gives. A shim's own
//! answer keeps the code the shim sent (`Unavailable` when the shim is
//! gone), and its message, without a doubled kind suffix.

use crated_plugin_api::{Code, Error, ErrorKind, Status};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A failure of a known kind (not found, already exists, ...), including
    /// what a shim or another plugin answered.
    #[error(transparent)]
    Kind(#[from] Error),
    /// A file system or process operation failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl RuntimeError {
    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io { what: what.to_string(), source }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::Kind(e) => e.kind(),
            RuntimeError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Unknown,
            },
        }
    }

    /// This error with what was being done in front of its message, keeping
    /// its kind (Go's `fmt.Errorf("...: %w", err)`).
    pub fn context(self, what: impl std::fmt::Display) -> RuntimeError {
        match self {
            RuntimeError::Kind(e) => RuntimeError::Kind(e.context(what)),
            RuntimeError::Io { .. } => {
                let kind = self.kind();
                RuntimeError::Kind(Error::new(kind, format!("{what}: {self}")))
            }
        }
    }
}

/// What a shim answered, as an error of the same kind.
pub fn from_shim(s: shim_protocol::Status) -> Error {
    Error::from_status(Status::new(Code::from_i32(s.code as i32), s.message))
}

impl From<shim_protocol::Status> for RuntimeError {
    fn from(s: shim_protocol::Status) -> RuntimeError {
        RuntimeError::Kind(from_shim(s))
    }
}

impl From<Status> for RuntimeError {
    fn from(s: Status) -> RuntimeError {
        RuntimeError::Kind(Error::from_status(s))
    }
}

/// The one place a runtime failure becomes a gRPC status.
impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Status {
        match e {
            RuntimeError::Kind(e) => e.into(),
            other => Error::new(other.kind(), other.to_string()).into(),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
