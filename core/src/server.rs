//! The listening socket: bound safely, served over HTTP/2, removed on exit.

use std::{os::unix::fs::PermissionsExt, path::Path};

use tokio::net::UnixListener;

use crate::router::GrpcRouter;

pub use crated_plugin_api::grpc::{clear_stale, SocketError};
use crated_plugin_api::grpc::{io_err, serve_connections};

/// Binds the socket with mode 0660 and the configured owner.
pub fn bind(path: &Path, uid: u32, gid: u32) -> Result<UnixListener, SocketError> {
    clear_stale(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err(path))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err(path))?;
    Ok(listener)
}

/// Serves connections until `shutdown` resolves.
pub async fn serve(listener: UnixListener, router: GrpcRouter, shutdown: impl std::future::Future<Output = ()>) {
    serve_connections(listener, router, shutdown).await
}
