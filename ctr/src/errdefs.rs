//! Rendering gRPC errors the way containerd's Go client does, so that
//! `ctr: <message>` reads the same as stock ctr.

use tonic::{Code, Status};

/// Go's `codes.Code.String()` (the code is a `uint32` in Go).
pub fn code_name(code: u32) -> String {
    let name = match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        other => return format!("Code({other})"),
    };
    name.to_string()
}

/// The error text of a raw grpc-go status error:
/// `rpc error: code = Unimplemented desc = ...`. Used where containerd's
/// client returns the status unconverted (e.g. `Client.Version`).
pub fn raw(status: &Status) -> anyhow::Error {
    anyhow::anyhow!("rpc error: code = {} desc = {}", code_name(status.code() as u32), status.message())
}

/// containerd's `errdefs.FromGRPC`: map the code to an error class and keep
/// the description, minus a redundant `: <class>` suffix. Used by the
/// service wrappers (introspection, images, containers, ...).
pub fn from_grpc(status: &Status) -> anyhow::Error {
    let class = match status.code() {
        Code::InvalidArgument => "invalid argument",
        Code::AlreadyExists => "already exists",
        Code::NotFound => "not found",
        Code::Unavailable => "unavailable",
        Code::FailedPrecondition => "failed precondition",
        Code::Unimplemented => "not implemented",
        Code::Cancelled => "context canceled",
        Code::DeadlineExceeded => "context deadline exceeded",
        _ => "unknown",
    };
    let desc = status.message();
    if desc == class {
        return anyhow::anyhow!("{class}");
    }
    let msg = desc.strip_suffix(&format!(": {class}")).unwrap_or(desc);
    if msg.is_empty() {
        anyhow::anyhow!("{class}")
    } else {
        anyhow::anyhow!("{msg}: {class}")
    }
}

/// Go's text for an OS error (`no such file or directory`, `connection
/// refused`): Rust's text without its ` (os error N)` suffix, and lower
/// case at the start as Go's strerror texts are.
pub fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.rfind(" (os error ").map_or(s.as_str(), |i| &s[..i]);
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_grpc_matches_containerd() {
        let e = from_grpc(&Status::unimplemented("unknown service foo.Bar"));
        assert_eq!(e.to_string(), "unknown service foo.Bar: not implemented");
        let e = from_grpc(&Status::not_found("image \"x\": not found"));
        assert_eq!(e.to_string(), "image \"x\": not found");
        let e = from_grpc(&Status::deadline_exceeded("context deadline exceeded"));
        assert_eq!(e.to_string(), "context deadline exceeded");
        let e = from_grpc(&Status::internal("boom"));
        assert_eq!(e.to_string(), "boom: unknown");
    }

    #[test]
    fn raw_matches_grpc_go() {
        let e = raw(&Status::unimplemented("unknown service x"));
        assert_eq!(e.to_string(), "rpc error: code = Unimplemented desc = unknown service x");
        assert_eq!(code_name(1), "Canceled");
        assert_eq!(code_name(42), "Code(42)");
    }
}
