//! ttrpc: containerd's request/response protocol for shims.
//!
//! Every message is a frame: a 10-byte header (payload length as a big-endian
//! u32, stream id as a big-endian u32, a type byte, a flags byte) and a
//! protobuf payload of at most 4 MiB. A client opens a stream per call with an
//! odd id (1, 3, 5, ...), sends one `Request` frame naming the service and
//! method, and the server answers on the same id with one `Response` frame
//! carrying a gRPC-style status and the reply. Calls are independent, so many
//! can be in flight on one connection; the server may answer out of order.
//! Metadata (the namespace above all, under `containerd-namespace-ttrpc`)
//! travels as key/value pairs in the request. Streaming calls (data frames)
//! are not used by the shim v2 task API and are not implemented.

mod client;
mod frame;
mod server;

pub use client::Client;
pub use frame::{MessageType, MAX_MESSAGE_SIZE};
pub use server::{decode, Handler, HandlerFuture, RequestContext, Server};

/// The metadata key carrying the containerd namespace of a ttrpc call.
pub const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";

/// A call's request (ttrpc's `Request` message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// The caller's deadline, relative, in nanoseconds; 0 for none.
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

/// One metadata entry; a key may repeat.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A call's response (ttrpc's `Response` message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `google.rpc.Status`, as ttrpc carries it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// The status codes of gRPC, which ttrpc reuses.
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
    /// The code for a wire value; unknown values are `Unknown`, as in gRPC.
    pub fn from_i32(v: i32) -> Code {
        use Code::*;
        match v {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }
}

/// A failed call: what the server answered, or what went wrong on the way.
/// Transport failures (the shim died, the socket closed) are `Unavailable`,
/// so a caller tells "the shim is gone" from "the shim said no" by the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
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
    pub fn invalid_argument(m: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, m)
    }
    pub fn failed_precondition(m: impl Into<String>) -> Status {
        Status::new(Code::FailedPrecondition, m)
    }
    pub fn already_exists(m: impl Into<String>) -> Status {
        Status::new(Code::AlreadyExists, m)
    }
    pub fn internal(m: impl Into<String>) -> Status {
        Status::new(Code::Internal, m)
    }
    pub fn unimplemented(m: impl Into<String>) -> Status {
        Status::new(Code::Unimplemented, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, m)
    }

    fn from_rpc(s: RpcStatus) -> Status {
        Status { code: Code::from_i32(s.code), message: s.message }
    }

    fn to_rpc(&self) -> RpcStatus {
        RpcStatus { code: self.code as i32, message: self.message.clone(), details: Vec::new() }
    }
}

/// Where a ttrpc socket is: `unix:///path`, `/path`, or an abstract socket
/// (`unix://@name` or `@name`, as older containerd shims used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    Path(std::path::PathBuf),
    Abstract(String),
}

impl SocketAddress {
    pub fn parse(address: &str) -> SocketAddress {
        let rest = address.strip_prefix("unix://").unwrap_or(address);
        match rest.strip_prefix('@') {
            Some(name) => SocketAddress::Abstract(name.to_string()),
            None => SocketAddress::Path(rest.into()),
        }
    }

    /// Connects, without blocking the runtime's thread.
    pub async fn connect(&self) -> std::io::Result<tokio::net::UnixStream> {
        match self {
            SocketAddress::Path(p) => tokio::net::UnixStream::connect(p).await,
            SocketAddress::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                // A connect to a unix socket does not wait on the network: it
                // succeeds or fails at once (or with EAGAIN on a full backlog,
                // reported as an error), so the blocking call is short.
                let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
                s.set_nonblocking(true)?;
                tokio::net::UnixStream::from_std(s)
            }
        }
    }
}

#[cfg(test)]
mod tests;
