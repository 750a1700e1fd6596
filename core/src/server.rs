//! The listening socket: bound safely, served over HTTP/2, removed on exit.

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;

use crate::router::GrpcRouter;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{}: another daemon is serving this socket; stop it or choose another address", .0.display())]
    InUse(PathBuf),
    #[error("{}: exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io { path: path.to_path_buf(), source }
}

/// Refuses a socket that a live daemon answers on, and removes a stale one
/// (a socket file nobody listens on, left by a daemon that died).
pub fn clear_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_path_buf())),
        Err(_) => {
            tracing::warn!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io_err(path))
        }
    }
}

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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let svc = router.clone();
                    tokio::spawn(async move {
                        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc);
                        if let Err(e) = conn.await {
                            tracing::debug!("connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
}
