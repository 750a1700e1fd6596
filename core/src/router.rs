//! The one gRPC router: every service of every plugin on one socket.
//!
//! A request's path (`/pkg.Service/Method`) names its service; the route
//! table maps the service to the plugin that registered it. The frame is
//! handed over as bytes through a pass-through codec: the core never decodes
//! a payload. Whether a method streams is what the plugin declared at init,
//! since the first frame cannot tell.
//!
//! The same table serves in-process calls between plugins
//! ([`DependencyHost`]), so a plugin calls a dependency exactly as a socket
//! client would, minus the socket.
//!
//! Panics: a panic inside a plugin's future surfaces here as a panic of the
//! `FfiFuture` ("FFI future panicked"); it is caught where the core polls it
//! and becomes `Internal` for that call alone.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    panic::AssertUnwindSafe,
    sync::Arc,
};

use abi_stable::std_types::{RErr, RNone, ROk, RResult, RSome, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use bytes::{Buf, BufMut, Bytes};
use crated_plugin_api::{
    abi::{ByteStream, CallHead, CallKind, HandlerBox, PluginRef, RpcStatus, ServiceHost},
    stream, Call, ServiceRouter, Status,
};
use futures::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{ClientStreamingService, Grpc, ServerStreamingService, StreamingService, UnaryService},
};

/// Who answers a service.
pub enum Target {
    /// A plugin from a `.so`, through the ABI.
    Plugin(HandlerBox),
    /// A service of the core itself (introspection, version, health).
    Core(ServiceRouter),
}

/// The owner of one or more services.
pub struct Route {
    /// `type.id` of the owning plugin.
    pub owner: String,
    pub target: Target,
    /// Streaming methods by path; anything else is unary.
    pub streaming: HashMap<String, CallKind>,
    /// Every service the owner serves, on the socket or to dependents only.
    pub services: HashSet<String>,
}

/// Services by name.
#[derive(Default, Clone)]
pub struct RouteTable {
    services: HashMap<String, Arc<Route>>,
}

/// The service part of a method path.
pub fn service_of(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or_default()
}

impl RouteTable {
    /// Adds the route for `services`. A service already served is refused,
    /// unless its owner is one of `wrapped`: the new plugin's (transitive)
    /// dependencies. That is how a wrapper takes over the socket for a service
    /// while still reaching the wrapped plugin in process, as containerd's
    /// metadata store wraps the raw content store and exposes the
    /// namespaced Content service.
    pub fn insert(&mut self, services: &[String], route: Arc<Route>, wrapped: &HashSet<String>) -> Result<(), String> {
        if let Some((s, other)) = services
            .iter()
            .find_map(|s| self.services.get(s).map(|r| (s, r)))
            .filter(|(_, r)| !wrapped.contains(&r.owner))
        {
            return Err(format!("service {s} is already served by {}", other.owner));
        }
        for s in services {
            self.services.insert(s.clone(), route.clone());
        }
        Ok(())
    }

    pub fn lookup(&self, service: &str) -> Option<&Arc<Route>> {
        self.services.get(service)
    }

    /// The routes of the given owners, for a plugin's dependency host.
    pub fn restricted_to(&self, owners: &[String]) -> RouteTable {
        RouteTable {
            services: self
                .services
                .iter()
                .filter(|(_, r)| owners.contains(&r.owner))
                .map(|(s, r)| (s.clone(), r.clone()))
                .collect(),
        }
    }
}

fn panicked() -> Status {
    Status::internal("plugin panicked while handling the call")
}

fn to_tonic(s: Status) -> tonic::Status {
    tonic::Status::new(tonic::Code::from(s.code as i32), s.message)
}

fn from_tonic(s: &tonic::Status) -> RpcStatus {
    RpcStatus { code: s.code() as i32, message: s.message().into() }
}

/// Calls a unary method on a route.
pub async fn call_unary(route: &Route, head: CallHead, body: RVec<u8>) -> Result<RVec<u8>, Status> {
    match &route.target {
        Target::Plugin(h) => match AssertUnwindSafe(h.unary(head, body)).catch_unwind().await {
            Ok(ROk(v)) => Ok(v),
            Ok(RErr(s)) => Err(s.into()),
            Err(_) => Err(panicked()),
        },
        Target::Core(r) => r.call_unary(Call::from_head(head), body.into_vec()).await.map(RVec::from),
    }
}

/// Calls a streaming method on a route.
pub async fn call_streaming(route: &Route, head: CallHead, input: ByteStream) -> Result<ByteStream, Status> {
    match &route.target {
        Target::Plugin(h) => match AssertUnwindSafe(h.streaming(head, input)).catch_unwind().await {
            Ok(ROk(v)) => Ok(v),
            Ok(RErr(s)) => Err(s.into()),
            Err(_) => Err(panicked()),
        },
        Target::Core(_) => Err(Status::unimplemented(format!("{} does not stream", head.method))),
    }
}

/// Reads a plugin's output stream, turning a panic into `Internal`.
fn outgoing(bs: ByteStream) -> BoxStream<'static, Result<RVec<u8>, tonic::Status>> {
    futures::stream::unfold(Some(bs), |state| async move {
        let bs = state?;
        match AssertUnwindSafe(bs.next_frame()).catch_unwind().await {
            Ok(RSome(ROk(b))) => Some((Ok(b), Some(bs))),
            Ok(RSome(RErr(s))) => Some((Err(to_tonic(s.into())), None)),
            Ok(RNone) => None,
            Err(_) => Some((Err(to_tonic(panicked())), None)),
        }
    })
    .boxed()
}

/// Feeds a client's request stream to a plugin, from the core's runtime.
fn incoming(mut input: tonic::Streaming<Bytes>) -> ByteStream {
    let (tx, bs) = stream::channel();
    tokio::spawn(async move {
        loop {
            let frame = match input.message().await {
                Ok(Some(b)) => ROk(RVec::from(&b[..])),
                Ok(None) => break,
                Err(s) => RErr(from_tonic(&s)),
            };
            let last = frame.is_err();
            if tx.send(frame).await.is_err() || last {
                break;
            }
        }
    });
    bs
}

fn one_frame(body: Bytes) -> ByteStream {
    let (tx, bs) = stream::channel();
    // The channel has room for one frame, so this never waits.
    let _ = tx.try_send(ROk(RVec::from(&body[..])));
    bs
}

/// The gRPC metadata of a request, as the ABI carries it.
fn metadata(
    headers: &http::HeaderMap,
) -> RVec<abi_stable::std_types::Tuple2<abi_stable::std_types::RString, abi_stable::std_types::RString>> {
    headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "content-type" | "te" | "user-agent" | "grpc-accept-encoding"))
        .filter_map(|(k, v)| Some((k.as_str().into(), v.to_str().ok()?.into()).into()))
        .collect()
}

/// The codec that moves frames without decoding them.
#[derive(Default, Clone, Copy)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = RVec<u8>;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;
    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }
    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = RVec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: RVec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One call on its way to a plugin; implements each of tonic's call kinds.
struct Dispatch {
    route: Arc<Route>,
    head: CallHead,
}

type TonicFuture<T> = BoxFuture<'static, Result<tonic::Response<T>, tonic::Status>>;
type OutStream = BoxStream<'static, Result<RVec<u8>, tonic::Status>>;

impl UnaryService<Bytes> for Dispatch {
    type Response = RVec<u8>;
    type Future = TonicFuture<RVec<u8>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let (route, head) = (self.route.clone(), std::mem::take(&mut self.head));
        async move {
            let body = RVec::from(&req.get_ref()[..]);
            call_unary(&route, head, body).await.map(tonic::Response::new).map_err(to_tonic)
        }
        .boxed()
    }
}

impl ServerStreamingService<Bytes> for Dispatch {
    type Response = RVec<u8>;
    type ResponseStream = OutStream;
    type Future = TonicFuture<OutStream>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let (route, head) = (self.route.clone(), std::mem::take(&mut self.head));
        async move {
            let out = call_streaming(&route, head, one_frame(req.into_inner())).await.map_err(to_tonic)?;
            Ok(tonic::Response::new(outgoing(out)))
        }
        .boxed()
    }
}

impl ClientStreamingService<Bytes> for Dispatch {
    type Response = RVec<u8>;
    type Future = TonicFuture<RVec<u8>>;
    fn call(&mut self, req: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let (route, head) = (self.route.clone(), std::mem::take(&mut self.head));
        async move {
            let out = call_streaming(&route, head, incoming(req.into_inner())).await.map_err(to_tonic)?;
            match outgoing(out).next().await {
                Some(Ok(b)) => Ok(tonic::Response::new(b)),
                Some(Err(s)) => Err(s),
                None => Err(tonic::Status::internal("plugin ended a client-streaming call without a response")),
            }
        }
        .boxed()
    }
}

impl StreamingService<Bytes> for Dispatch {
    type Response = RVec<u8>;
    type ResponseStream = OutStream;
    type Future = TonicFuture<OutStream>;
    fn call(&mut self, req: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let (route, head) = (self.route.clone(), std::mem::take(&mut self.head));
        async move {
            let out = call_streaming(&route, head, incoming(req.into_inner())).await.map_err(to_tonic)?;
            Ok(tonic::Response::new(outgoing(out)))
        }
        .boxed()
    }
}

/// The HTTP/2 service behind the socket.
#[derive(Clone)]
pub struct GrpcRouter {
    table: Arc<RouteTable>,
    max_recv: usize,
    max_send: usize,
}

impl GrpcRouter {
    pub fn new(table: Arc<RouteTable>, max_recv: usize, max_send: usize) -> Self {
        GrpcRouter { table, max_recv, max_send }
    }

    async fn dispatch(self, req: Request<Incoming>) -> Response<tonic::body::Body> {
        let path = req.uri().path().to_string();
        let service = service_of(&path);
        let Some(route) = self.table.lookup(service).cloned() else {
            return tonic::Status::unimplemented(format!("unknown service {service}")).into_http();
        };
        let kind = route.streaming.get(&path).copied().unwrap_or(CallKind::Unary);
        let head = CallHead { method: path.as_str().into(), target: "".into(), headers: metadata(req.headers()) };
        let svc = Dispatch { route, head };
        let mut grpc =
            Grpc::new(PassThrough).max_decoding_message_size(self.max_recv).max_encoding_message_size(self.max_send);
        match kind {
            CallKind::Unary => grpc.unary(svc, req).await,
            CallKind::ServerStreaming => grpc.server_streaming(svc, req).await,
            CallKind::ClientStreaming => grpc.client_streaming(svc, req).await,
            CallKind::BidiStreaming => grpc.streaming(svc, req).await,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for GrpcRouter {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.clone().dispatch(req).map(Ok).boxed()
    }
}

/// The in-process side: what a plugin's [`crated_plugin_api::Host`] calls.
/// It only reaches the plugins the caller depends on.
///
/// A call that names its callee (`CallHead::target`, `type.id`) goes to that
/// dependency, whatever it serves, on the socket or internally. A call that
/// does not goes where the socket would send it among the dependencies (so
/// a wrapper such as the metadata plugin wins over the store it wraps), or
/// else to the one dependency serving the service internally; when several
/// do (two snapshotters), the caller must name one.
pub struct DependencyHost {
    /// The socket's route table restricted to the caller's dependencies.
    pub public: RouteTable,
    /// Every dependency by `type.id`.
    pub named: HashMap<String, Arc<Route>>,
    pub dependencies: Vec<PluginRef>,
}

fn rpc(code: crated_plugin_api::Code, message: String) -> RpcStatus {
    RpcStatus { code: code as i32, message: message.into() }
}

impl DependencyHost {
    /// The route that answers `call`, or why there is none.
    fn resolve(&self, call: &CallHead) -> Result<Arc<Route>, RpcStatus> {
        use crated_plugin_api::Code;
        let service = service_of(&call.method);
        if !call.target.is_empty() {
            let Some(route) = self.named.get(call.target.as_str()) else {
                let mut deps: Vec<&str> = self.named.keys().map(String::as_str).collect();
                deps.sort_unstable();
                return Err(rpc(
                    Code::NotFound,
                    format!(
                        "{} is not a running dependency of this plugin (dependencies: {})",
                        call.target,
                        deps.join(", ")
                    ),
                ));
            };
            if !route.services.contains(service) {
                return Err(rpc(Code::Unimplemented, format!("{} does not serve {service}", call.target)));
            }
            return Ok(route.clone());
        }
        if let Some(route) = self.public.lookup(service) {
            return Ok(route.clone());
        }
        let mut serving: Vec<(&String, &Arc<Route>)> =
            self.named.iter().filter(|(_, r)| r.services.contains(service)).collect();
        match serving.len() {
            0 => Err(rpc(Code::Unimplemented, format!("{service} is not served by a dependency of this plugin"))),
            1 => Ok(serving[0].1.clone()),
            _ => {
                serving.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let names: Vec<&str> = serving.iter().map(|(k, _)| k.as_str()).collect();
                Err(rpc(
                    Code::FailedPrecondition,
                    format!(
                        "{service} is served by several dependencies ({}): the call must name one",
                        names.join(", ")
                    ),
                ))
            }
        }
    }
}

fn to_rresult<T>(r: Result<T, Status>) -> RResult<T, RpcStatus> {
    match r {
        Ok(v) => ROk(v),
        Err(s) => RErr(s.into()),
    }
}

impl ServiceHost for DependencyHost {
    fn unary(&self, call: CallHead, body: RVec<u8>) -> FfiFuture<RResult<RVec<u8>, RpcStatus>> {
        match self.resolve(&call) {
            Ok(route) => async move { to_rresult(call_unary(&route, call, body).await) }.into_ffi(),
            Err(s) => futures::future::ready(RErr(s)).into_ffi(),
        }
    }

    fn streaming(&self, call: CallHead, input: ByteStream) -> FfiFuture<RResult<ByteStream, RpcStatus>> {
        match self.resolve(&call) {
            Ok(route) => async move { to_rresult(call_streaming(&route, call, input).await) }.into_ffi(),
            Err(s) => futures::future::ready(RErr(s)).into_ffi(),
        }
    }

    fn dependencies(&self) -> RVec<PluginRef> {
        self.dependencies.clone().into()
    }
}
