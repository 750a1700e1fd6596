//! Typed in-process calls from a plugin to the services of the plugins it
//! depends on. The call goes through the core's router as bytes, with no
//! socket and no HTTP/2 in between, so a dependency is called exactly as a
//! gRPC client would call it.

use abi_stable::std_types::{RErr, ROk};
use futures::{stream::BoxStream, Stream, StreamExt};

use crate::{
    abi::HostBox,
    service::{Call, NAMESPACE_HEADER},
    stream::{encode_stream, frames},
    Status,
};

/// A dependency as seen from a plugin.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub plugin_type: String,
    pub id: String,
    pub services: Vec<String>,
    pub exports: Vec<(String, String)>,
}

impl Dependency {
    /// Its plugin URI, `type.id`, as [`Host::to`] takes it.
    pub fn key(&self) -> String {
        crate::types::key(&self.plugin_type, &self.id)
    }
}

/// The handle a plugin uses to call its dependencies.
#[derive(Clone)]
pub struct Host {
    inner: std::sync::Arc<HostBox>,
    /// The dependency every call goes to (`type.id`); empty: by service.
    target: std::sync::Arc<str>,
}

impl Host {
    pub(crate) fn new(inner: HostBox) -> Host {
        Host { inner: std::sync::Arc::new(inner), target: "".into() }
    }

    /// The same host, with every call going to the dependency `key`
    /// (`type.id`, e.g. `io.containerd.snapshotter.v1.native`). Needed
    /// where several dependencies serve the same service; a call to a
    /// plugin that is not a dependency is `NotFound`.
    pub fn to(&self, key: &str) -> Host {
        Host { inner: self.inner.clone(), target: key.into() }
    }

    /// The running dependencies of one plugin type (see [`crate::types`]).
    pub fn dependencies_of_type(&self, plugin_type: &str) -> Vec<Dependency> {
        self.dependencies().into_iter().filter(|d| d.plugin_type == plugin_type).collect()
    }

    /// The initialised plugins this plugin may call.
    pub fn dependencies(&self) -> Vec<Dependency> {
        self.inner
            .dependencies()
            .into_iter()
            .map(|p| Dependency {
                plugin_type: p.plugin_type.into_string(),
                id: p.id.into_string(),
                services: p.services.into_iter().map(|s| s.into_string()).collect(),
                exports: p.exports.into_iter().map(|t| (t.0.into_string(), t.1.into_string())).collect(),
            })
            .collect()
    }

    /// A call context for `method` in `namespace` (if any).
    pub fn call(method: &str, namespace: Option<&str>) -> Call {
        Call {
            method: method.to_string(),
            headers: namespace.map(|n| vec![(NAMESPACE_HEADER.to_string(), n.to_string())]).unwrap_or_default(),
        }
    }

    /// Calls a unary method of a dependency.
    pub async fn unary<Req, Resp>(&self, call: &Call, req: &Req) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        match self.inner.unary(call.to_head(&self.target), req.encode_to_vec().into()).await {
            ROk(bytes) => Ok(Resp::decode(bytes.as_slice())?),
            RErr(s) => Err(s.into()),
        }
    }

    /// Calls a streaming method of a dependency with a stream of requests
    /// (one request for server streaming).
    pub async fn streaming<Req, Resp, S>(
        &self,
        call: &Call,
        input: S,
    ) -> Result<BoxStream<'static, Result<Resp, Status>>, Status>
    where
        Req: prost::Message + 'static,
        Resp: prost::Message + Default + 'static,
        S: Stream<Item = Result<Req, Status>> + Send + 'static,
    {
        match self.inner.streaming(call.to_head(&self.target), encode_stream(input)).await {
            ROk(out) => Ok(frames(out).map(|r| r.and_then(|b| Ok(Resp::decode(b.as_slice())?))).boxed()),
            RErr(s) => Err(s.into()),
        }
    }
}
