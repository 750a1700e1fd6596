//! Errors as they reach a gRPC client: a code and a message.
//!
//! A failure gets its kind from [`crate::Error`] (containerd's errdefs, in
//! `errdefs.rs`), whose conversion into a [`Status`] is the one place where
//! a kind becomes a gRPC code; plugins' own `thiserror` enums wrap that
//! error and convert through it.

use std::fmt;

/// gRPC status codes, with their wire numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code for a wire number; unknown numbers become `Unknown`.
    pub fn from_i32(n: i32) -> Code {
        Code::ALL.get(n as usize).copied().filter(|_| n >= 0).unwrap_or(Code::Unknown)
    }
}

/// A failed call: a gRPC code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status { code, message: message.into() }
    }
    pub fn not_found(m: impl Into<String>) -> Status {
        Status::new(Code::NotFound, m)
    }
    pub fn already_exists(m: impl Into<String>) -> Status {
        Status::new(Code::AlreadyExists, m)
    }
    pub fn failed_precondition(m: impl Into<String>) -> Status {
        Status::new(Code::FailedPrecondition, m)
    }
    pub fn invalid_argument(m: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, m)
    }
    pub fn unimplemented(m: impl Into<String>) -> Status {
        Status::new(Code::Unimplemented, m)
    }
    pub fn internal(m: impl Into<String>) -> Status {
        Status::new(Code::Internal, m)
    }
    /// The kind of failure the code stands for: how a caller learns what
    /// failed in another plugin (never from the message).
    pub fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::from_code(self.code)
    }
    /// Prefixes the message with context, keeping the code.
    pub fn context(mut self, ctx: impl fmt::Display) -> Status {
        self.message = format!("{ctx}: {}", self.message);
        self
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

impl From<prost::DecodeError> for Status {
    fn from(e: prost::DecodeError) -> Status {
        Status::invalid_argument(format!("malformed request: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_their_wire_numbers() {
        for c in Code::ALL {
            assert_eq!(Code::from_i32(c as i32), c);
        }
        assert_eq!(Code::from_i32(99), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
    }

    #[test]
    fn context_keeps_code() {
        let s = Status::not_found("blob").context("content");
        assert_eq!(s.code, Code::NotFound);
        assert_eq!(s.message, "content: blob");
        assert_eq!(s.kind(), crate::ErrorKind::NotFound);
    }
}
