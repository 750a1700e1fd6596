//! systemd's readiness protocol (`sd_notify(3)`): when the daemon runs as a
//! `Type=notify` unit, systemd sets `NOTIFY_SOCKET` and waits for `READY=1`
//! before it counts the unit as started; `STOPPING=1` says a stop is under
//! way. One datagram per state on a unix socket, as containerd sends them
//! (go-systemd's `SdNotify`): no crate needed.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The service is up: its socket accepts connections.
pub const READY: &str = "READY=1";
/// The service is shutting down.
pub const STOPPING: &str = "STOPPING=1";

/// The variable systemd names its notification socket in.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is not a unix socket address (a path or an @abstract name)")]
    Address(String),
    #[error("sending {state:?} to NOTIFY_SOCKET {address:?}: {source}")]
    Send { state: String, address: String, source: std::io::Error },
}

/// The unix address `NOTIFY_SOCKET` names: a path, or `@name` for the
/// abstract namespace (the leading `@` stands for the NUL byte).
pub fn parse_address(value: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::Address(value.to_string());
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad());
    }
    if !value.starts_with('/') {
        // systemd also knows `vsock:`; a relative path is not an address it sets.
        return Err(bad());
    }
    SocketAddr::from_pathname(value).map_err(|_| bad())
}

/// Sends `state` to systemd if `NOTIFY_SOCKET` is set. `Ok(false)` when it
/// is not (not run by systemd as a notify unit), `Ok(true)` once sent.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(value) = std::env::var_os(NOTIFY_SOCKET) else { return Ok(false) };
    let value = value.to_string_lossy().into_owned();
    if value.is_empty() {
        return Ok(false);
    }
    let addr = parse_address(&value)?;
    let send_err = |source| NotifyError::Send { state: state.to_string(), address: value.clone(), source };
    let socket = UnixDatagram::unbound().map_err(send_err)?;
    socket.send_to_addr(state.as_bytes(), &addr).map_err(send_err)?;
    Ok(true)
}

/// [`notify`], logging the outcome instead of failing: a daemon that cannot
/// reach systemd still serves (systemd then times the start out itself).
pub fn notify_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "sd notification sent"),
        Ok(false) => {}
        Err(e) => tracing::warn!("sd notification failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        use std::os::linux::net::SocketAddrExt;
        let a = parse_address("@crated/notify").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"crated/notify"[..]));
        let p = parse_address("/run/systemd/notify").unwrap();
        assert_eq!(p.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        assert!(matches!(parse_address("vsock:2:1234"), Err(NotifyError::Address(_))));
        assert!(matches!(parse_address("relative"), Err(NotifyError::Address(_))));
    }

    #[test]
    fn sends_one_datagram_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to_addr(READY.as_bytes(), &parse_address(path.to_str().unwrap()).unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
