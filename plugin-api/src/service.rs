//! The typed side of serving gRPC from a plugin: [`ServiceRouter`] maps
//! method paths to async handler functions over prost messages, and is what
//! a plugin's `init` returns. It implements the ABI's `Handler`, so plugin
//! authors never touch FFI types.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    sync::Arc,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use futures::{future::BoxFuture, stream::BoxStream, FutureExt, Stream, StreamExt};

use crate::{
    abi::{ByteStream, CallHead, CallKind, Handler, HandlerBox, Handler_TO, MethodDecl, RpcStatus},
    runtime::{catch_panic, in_context, on_runtime},
    stream::{byte_stream, frames, Streaming},
    Status,
};

/// The metadata key that carries the containerd namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The request-independent facts of one call.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// `/package.Service/Method`
    pub method: String,
    pub headers: Vec<(String, String)>,
}

impl Call {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }

    /// The `containerd-namespace` of the call, if the client sent one.
    pub fn namespace(&self) -> Option<&str> {
        self.header(NAMESPACE_HEADER)
    }

    /// The namespace, or `FailedPrecondition` as containerd answers when a
    /// namespaced call comes without one.
    pub fn require_namespace(&self) -> Result<&str, Status> {
        self.namespace()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Status::failed_precondition("namespace is required: no namespace specified"))
    }

    /// The call as the ABI carries it, in Rust types.
    pub fn from_head(head: CallHead) -> Call {
        Call {
            method: head.method.into_string(),
            headers: head.headers.into_iter().map(|t| (t.0.into_string(), t.1.into_string())).collect(),
        }
    }

    /// The call as the ABI carries it; `target` names the dependency that
    /// must answer (`type.id`), empty for "whoever serves the service".
    pub(crate) fn to_head(&self, target: &str) -> CallHead {
        CallHead {
            method: self.method.as_str().into(),
            target: target.into(),
            headers: self.headers.iter().map(|(k, v)| (k.as_str().into(), v.as_str().into()).into()).collect(),
        }
    }
}

type UnaryFn = Arc<dyn Fn(Call, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, Status>> + Send + Sync>;
type BytesStream = BoxStream<'static, Result<Vec<u8>, Status>>;
type StreamFn = Arc<dyn Fn(Call, ByteStream) -> BoxFuture<'static, Result<BytesStream, Status>> + Send + Sync>;
type ShutdownFn = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The gRPC methods of one plugin, by path.
#[derive(Default, Clone)]
pub struct ServiceRouter {
    services: BTreeSet<String>,
    /// Services served to dependents only (see [`ServiceRouter::internal`]).
    internal: BTreeSet<String>,
    unary: HashMap<String, UnaryFn>,
    streaming: HashMap<String, (CallKind, StreamFn)>,
    shutdown: Option<ShutdownFn>,
}

fn service_of(path: &str) -> String {
    path.trim_start_matches('/').split('/').next().unwrap_or_default().to_string()
}

impl ServiceRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves a unary method.
    pub fn unary<Req, Resp, F, Fut>(mut self, path: &str, f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Call, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.services.insert(service_of(path));
        self.unary.insert(
            path.to_string(),
            Arc::new(move |call, body| {
                let f = f.clone();
                async move {
                    let req = Req::decode(body.as_slice())?;
                    Ok(f(call, req).await?.encode_to_vec())
                }
                .boxed()
            }),
        );
        self
    }

    /// Serves a server-streaming method: one request, a stream of responses.
    pub fn server_streaming<Req, Resp, F, Fut, S>(self, path: &str, f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Call, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, Status>> + Send + 'static,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add_stream(path, CallKind::ServerStreaming, move |call, input| {
            let f = f.clone();
            async move {
                let mut input = Streaming::<Req>::new(input);
                let req = input
                    .message()
                    .await?
                    .ok_or_else(|| Status::invalid_argument("server-streaming call without a request"))?;
                let out = f(call, req).await?;
                Ok(out.map(|r| r.map(|m| m.encode_to_vec())).boxed())
            }
            .boxed()
        })
    }

    /// Serves a client-streaming method: a stream of requests, one response.
    pub fn client_streaming<Req, Resp, F, Fut>(self, path: &str, f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Call, Streaming<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add_stream(path, CallKind::ClientStreaming, move |call, input| {
            let f = f.clone();
            async move {
                let resp = f(call, Streaming::new(input)).await?;
                Ok(futures::stream::once(async move { Ok(resp.encode_to_vec()) }).boxed())
            }
            .boxed()
        })
    }

    /// Serves a bidirectional-streaming method.
    pub fn bidi_streaming<Req, Resp, F, Fut, S>(self, path: &str, f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Call, Streaming<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, Status>> + Send + 'static,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add_stream(path, CallKind::BidiStreaming, move |call, input| {
            let f = f.clone();
            async move {
                let out = f(call, Streaming::new(input)).await?;
                Ok(out.map(|r| r.map(|m| m.encode_to_vec())).boxed())
            }
            .boxed()
        })
    }

    /// Serves a unary method of a typed service: `f(service, call, request)`,
    /// with the service (a cheap `Clone`, such as a struct of `Arc`s) cloned
    /// per call. Lets a plugin write its service as a struct with one async
    /// method per RPC (`.unary_with(path, &svc, MyService::create)`) instead
    /// of copying its state into a closure per method.
    pub fn unary_with<S, Req, Resp, F, Fut>(self, path: &str, service: &S, f: F) -> Self
    where
        S: Clone + Send + Sync + 'static,
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(S, Call, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let service = service.clone();
        self.unary(path, move |call, req| f(service.clone(), call, req))
    }

    /// [`ServiceRouter::server_streaming`] for a typed service (see
    /// [`ServiceRouter::unary_with`]).
    pub fn server_streaming_with<Sv, Req, Resp, F, Fut, St>(self, path: &str, service: &Sv, f: F) -> Self
    where
        Sv: Clone + Send + Sync + 'static,
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Sv, Call, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<St, Status>> + Send + 'static,
        St: Stream<Item = Result<Resp, Status>> + Send + 'static,
    {
        let service = service.clone();
        self.server_streaming(path, move |call, req| f(service.clone(), call, req))
    }

    /// [`ServiceRouter::client_streaming`] for a typed service.
    pub fn client_streaming_with<Sv, Req, Resp, F, Fut>(self, path: &str, service: &Sv, f: F) -> Self
    where
        Sv: Clone + Send + Sync + 'static,
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Sv, Call, Streaming<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let service = service.clone();
        self.client_streaming(path, move |call, input| f(service.clone(), call, input))
    }

    /// [`ServiceRouter::bidi_streaming`] for a typed service.
    pub fn bidi_streaming_with<Sv, Req, Resp, F, Fut, St>(self, path: &str, service: &Sv, f: F) -> Self
    where
        Sv: Clone + Send + Sync + 'static,
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Sv, Call, Streaming<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<St, Status>> + Send + 'static,
        St: Stream<Item = Result<Resp, Status>> + Send + 'static,
    {
        let service = service.clone();
        self.bidi_streaming(path, move |call, input| f(service.clone(), call, input))
    }

    fn add_stream(
        mut self,
        path: &str,
        kind: CallKind,
        f: impl Fn(Call, ByteStream) -> BoxFuture<'static, Result<BytesStream, Status>> + Send + Sync + 'static,
    ) -> Self {
        self.services.insert(service_of(path));
        self.streaming.insert(path.to_string(), (kind, Arc::new(f)));
        self
    }

    /// Runs `f` when the daemon shuts down.
    pub fn on_shutdown<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shutdown = Some(Arc::new(move || f().boxed()));
        self
    }

    /// Serves `service` to the plugins that depend on this one, in process,
    /// and never on the socket. Several plugins may serve the same internal
    /// service; a dependent names the one it calls ([`crate::Host::to`]).
    /// This is how every snapshotter serves the Snapshots API while only the
    /// metadata plugin's namespaced Snapshots is on the socket.
    pub fn internal(mut self, service: &str) -> Self {
        self.internal.insert(service.to_string());
        self
    }

    /// The gRPC service names this router serves on the socket.
    pub fn services(&self) -> Vec<String> {
        self.services.difference(&self.internal).cloned().collect()
    }

    /// The services this router serves to dependents only.
    pub fn internal_services(&self) -> Vec<String> {
        self.services.intersection(&self.internal).cloned().collect()
    }

    /// Every streaming method, for the core's router.
    pub fn streaming_methods(&self) -> Vec<MethodDecl> {
        let mut v: Vec<MethodDecl> =
            self.streaming.iter().map(|(p, (k, _))| MethodDecl { path: p.as_str().into(), kind: *k }).collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Calls a unary method directly (used by tests and in-library calls).
    pub async fn call_unary(&self, call: Call, body: Vec<u8>) -> Result<Vec<u8>, Status> {
        match self.unary.get(&call.method) {
            Some(f) => f(call, body).await,
            None => Err(unknown_method(&call.method)),
        }
    }

    pub(crate) fn into_handler(self) -> HandlerBox {
        Handler_TO::from_value(self, TD_Opaque)
    }
}

fn unknown_method(method: &str) -> Status {
    Status::unimplemented(format!("unknown method {method}"))
}

fn to_ffi<T: Send + 'static>(
    fut: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> FfiFuture<RResult<T, RpcStatus>> {
    fut.map(|r| match r {
        Ok(v) => ROk(v),
        Err(s) => RErr(RpcStatus::from(s)),
    })
    .into_ffi()
}

impl Handler for ServiceRouter {
    fn unary(&self, call: CallHead, body: RVec<u8>) -> FfiFuture<RResult<RVec<u8>, RpcStatus>> {
        let call = Call::from_head(call);
        let Some(f) = self.unary.get(&call.method).cloned() else {
            return to_ffi(futures::future::ready(Err(unknown_method(&call.method))));
        };
        to_ffi(in_context(async move { f(call, body.into_vec()).await.map(RVec::from) }))
    }

    fn streaming(&self, call: CallHead, input: ByteStream) -> FfiFuture<RResult<ByteStream, RpcStatus>> {
        let call = Call::from_head(call);
        let Some((_, f)) = self.streaming.get(&call.method).cloned() else {
            return to_ffi(futures::future::ready(Err(unknown_method(&call.method))));
        };
        to_ffi(on_runtime(async move {
            let out = f(call, input).await?;
            Ok(byte_stream(out))
        }))
    }

    fn shutdown(&self) -> FfiFuture<()> {
        let Some(f) = self.shutdown.clone() else {
            return futures::future::ready(()).into_ffi();
        };
        let fut = match catch_panic(|| {
            on_runtime(async move {
                f().await;
                Ok(())
            })
        }) {
            Ok(fut) => fut.map(|_| ()).boxed(),
            Err(_) => futures::future::ready(()).boxed(),
        };
        fut.into_ffi()
    }
}

/// Reads a [`ByteStream`] produced by the core or another plugin.
pub fn read_frames(stream: ByteStream) -> BoxStream<'static, Result<Vec<u8>, Status>> {
    frames(stream)
}
