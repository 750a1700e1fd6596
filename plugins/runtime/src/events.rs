//! The daemon's ttrpc socket, which shims publish their events to:
//! `containerd.services.events.ttrpc.v1.Events/Forward`, each envelope
//! handed on, in process, to the events plugin's
//! `containerd.services.events.v1.Events/Forward` (so `ctr events` sees
//! `/tasks/create`, `/tasks/start`, `/tasks/exit`... as the shim sent them).

use std::{path::Path, sync::Arc};

use crated_plugin_api::{tracing, Host};
use prost::Message;
use shim_protocol::{
    ttrpc::{decode, Handler, HandlerFuture, RequestContext, Server},
    types::{ForwardRequest, EVENTS_FORWARD, EVENTS_SERVICE},
    Status,
};

use crate::error::{Result, RuntimeError};

struct Forwarder {
    host: Host,
}

impl Handler for Forwarder {
    fn call(&self, _ctx: RequestContext, method: &str, payload: Vec<u8>) -> HandlerFuture {
        if method != EVENTS_FORWARD {
            let method = method.to_string();
            return Box::pin(async move { Err(Status::unimplemented(format!("{EVENTS_SERVICE}/{method}"))) });
        }
        let host = self.host.clone();
        Box::pin(async move {
            let req: ForwardRequest = decode(&payload)?;
            let envelope = req.envelope.ok_or_else(|| Status::invalid_argument("forward without an envelope"))?;
            // The two envelope types are the same message on the wire.
            let envelope = containerd_client::types::Envelope::decode(envelope.encode_to_vec().as_slice())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let ns = envelope.namespace.clone();
            let call = Host::call(crated_events_api::FORWARD, Some(&ns));
            let req = containerd_client::services::v1::ForwardRequest { envelope: Some(envelope) };
            host.unary::<_, ()>(&call, &req).await.map_err(|s| {
                tracing::warn!(namespace = %ns, "forwarding a shim event failed: {}", s.message);
                Status::new(shim_protocol::Code::from_i32(s.code as i32), s.message)
            })?;
            Ok(Vec::new())
        })
    }
}

/// Binds the ttrpc socket at `path` (a stale socket from a killed daemon is
/// replaced) and serves the events service on it until the task is aborted.
pub async fn serve(path: &Path, host: Host) -> Result<tokio::task::JoinHandle<()>> {
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(crated_plugin_api::Error::already_exists(format!(
            "ttrpc socket {} is served by another process",
            path.display()
        ))
        .into());
    }
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RuntimeError::io(format!("remove stale {}", path.display()), e)),
    }
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| RuntimeError::io(format!("create {}", dir.display()), e))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| RuntimeError::io(format!("bind {}", path.display()), e))?;
    let server = Server::new().register(EVENTS_SERVICE, Arc::new(Forwarder { host }));
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve(listener).await {
            tracing::error!("ttrpc server stopped: {e}");
        }
    }))
}
