//! The shared kinds of failure (containerd's errdefs) and the one error type
//! that carries them.
//!
//! A store says *what kind* of thing went wrong ([`ErrorKind`]) and *what* it
//! was doing ([`Error::context`]); callers branch on [`Error::kind`], never on
//! the message. Turning a kind into a gRPC code happens in one place only:
//! `From<Error> for Status` below. Errors that come back from another plugin
//! as a [`Status`] get their kind back with [`Error::from_status`].
//!
//! The text follows containerd's errdefs, which wrap a kind's sentinel error
//! with context: an [`Error`] prints as `"<message>: <kind>"` (for example
//! `"snapshot x: not found"`), and that whole text is the message of the
//! gRPC status, so Go clients print the same as against containerd.

use std::fmt;

use crate::status::{Code, Status};

/// A kind of failure, as containerd's errdefs define them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No known kind; the message is printed without a suffix.
    Unknown,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    /// Not supported or not implemented.
    NotImplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    Canceled,
    DeadlineExceeded,
}

impl ErrorKind {
    /// The text containerd's sentinel error of this kind prints, which ends
    /// the message of every error of the kind (`None` for `Unknown`, whose
    /// errors are printed as they are).
    pub fn suffix(self) -> Option<&'static str> {
        Some(match self {
            ErrorKind::Unknown => return None,
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::ResourceExhausted => "resource exhausted",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::Aborted => "aborted",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::NotImplemented => "not implemented",
            ErrorKind::Internal => "internal",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DataLoss => "data loss",
            ErrorKind::Unauthenticated => "unauthenticated",
            // Go's context errors, which errdefs treat as kinds.
            ErrorKind::Canceled => "context canceled",
            ErrorKind::DeadlineExceeded => "context deadline exceeded",
        })
    }

    /// The gRPC code of the kind: the one mapping from kinds to codes.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::Unknown => Code::Unknown,
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::NotImplemented => Code::Unimplemented,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Canceled => Code::Cancelled,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        }
    }

    /// The kind of an error that arrived with a gRPC code (the inverse of
    /// [`ErrorKind::code`]; `Ok` has no kind and becomes `Unknown`).
    pub fn from_code(code: Code) -> ErrorKind {
        match code {
            Code::Ok | Code::Unknown => ErrorKind::Unknown,
            Code::InvalidArgument => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::Aborted => ErrorKind::Aborted,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::Unimplemented => ErrorKind::NotImplemented,
            Code::Internal => ErrorKind::Internal,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::DataLoss => ErrorKind::DataLoss,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::Cancelled => ErrorKind::Canceled,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        }
    }
}

/// A failure of some kind, with a message saying what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
    pub fn unknown(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unknown, m)
    }
    pub fn invalid_argument(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, m)
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, m)
    }
    pub fn already_exists(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::AlreadyExists, m)
    }
    pub fn failed_precondition(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::FailedPrecondition, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, m)
    }
    pub fn not_implemented(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotImplemented, m)
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, m)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the kind's suffix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done, keeping the kind
    /// (as wrapping an errdefs error does in Go).
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The error a status that came back from another plugin stands for:
    /// its kind from the code, and its message without the kind's suffix, so
    /// that printing it again does not repeat the suffix (containerd's
    /// `FromGRPC` does the same).
    pub fn from_status(s: Status) -> Error {
        let kind = ErrorKind::from_code(s.code);
        let mut message = s.message;
        if let Some(suffix) = kind.suffix() {
            if message == suffix {
                message.clear();
            } else if let Some(rest) = message.strip_suffix(suffix).and_then(|r| r.strip_suffix(": ")) {
                message.truncate(rest.len());
            }
        }
        Error { kind, message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.suffix() {
            Some(suffix) if self.message.is_empty() => f.write_str(suffix),
            Some(suffix) => write!(f, "{}: {suffix}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

/// The one place where a kind of failure becomes a gRPC code; the message
/// is the whole text, kind suffix included, as containerd sends it.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.kind.code(), e.to_string())
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::from_status(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 16] = [
        ErrorKind::Unknown,
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::PermissionDenied,
        ErrorKind::ResourceExhausted,
        ErrorKind::FailedPrecondition,
        ErrorKind::Aborted,
        ErrorKind::OutOfRange,
        ErrorKind::NotImplemented,
        ErrorKind::Internal,
        ErrorKind::Unavailable,
        ErrorKind::DataLoss,
        ErrorKind::Unauthenticated,
        ErrorKind::Canceled,
        ErrorKind::DeadlineExceeded,
    ];

    #[test]
    fn kinds_and_codes_map_both_ways() {
        for k in ALL {
            assert_eq!(ErrorKind::from_code(k.code()), k, "{k:?}");
        }
        assert_eq!(ErrorKind::NotImplemented.code(), Code::Unimplemented);
        assert_eq!(ErrorKind::Canceled.code(), Code::Cancelled);
        assert_eq!(ErrorKind::from_code(Code::Ok), ErrorKind::Unknown);
    }

    #[test]
    fn display_appends_the_kind_like_errdefs() {
        assert_eq!(Error::not_found("snapshot x").to_string(), "snapshot x: not found");
        assert_eq!(Error::already_exists("ref r").to_string(), "ref r: already exists");
        assert_eq!(Error::failed_precondition("busy").to_string(), "busy: failed precondition");
        assert_eq!(Error::not_implemented("walk").to_string(), "walk: not implemented");
        assert_eq!(Error::new(ErrorKind::Canceled, "pull").to_string(), "pull: context canceled");
        assert_eq!(Error::unknown("disk on fire").to_string(), "disk on fire");
        assert_eq!(Error::not_found("").to_string(), "not found");
    }

    #[test]
    fn context_prefixes_and_keeps_the_kind() {
        let e = Error::not_found("snapshot x").context("failed to stat").context("overlay");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.message(), "overlay: failed to stat: snapshot x");
        assert_eq!(e.to_string(), "overlay: failed to stat: snapshot x: not found");
    }

    #[test]
    fn status_carries_code_and_whole_text() {
        let s = Status::from(Error::invalid_argument("bad label").context("info.Labels"));
        assert_eq!(s, Status::new(Code::InvalidArgument, "info.Labels: bad label: invalid argument"));
        let s = Status::from(Error::unknown("io"));
        assert_eq!(s, Status::new(Code::Unknown, "io"));
    }

    #[test]
    fn from_status_recovers_kind_and_message() {
        for k in ALL {
            let e = Error::new(k, "blob sha256:ab");
            let back = Error::from_status(Status::from(e.clone()));
            assert_eq!(back, e, "{k:?}");
            assert_eq!(back.to_string(), e.to_string());
        }
        // A message without the suffix is kept whole.
        let e = Error::from_status(Status::not_found("no such thing"));
        assert_eq!((e.kind(), e.message()), (ErrorKind::NotFound, "no such thing"));
        // Only the suffix of the status's own kind is stripped.
        let e = Error::from_status(Status::failed_precondition("x: not found"));
        assert_eq!(e.message(), "x: not found");
        assert_eq!(e.to_string(), "x: not found: failed precondition");
        let e = Error::from_status(Status::not_found("x not found"));
        assert_eq!(e.message(), "x not found");
        let e: Error = Status::not_found("not found").into();
        assert_eq!((e.message(), e.to_string().as_str()), ("", "not found"));
    }
}
