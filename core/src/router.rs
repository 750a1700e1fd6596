//! The one gRPC router: every service of every plugin on one socket.
//! (The pass-through codec and the call dispatcher it shares with the SDK's
//! proxy server live in `crated_plugin_api::grpc`.)
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
//! A plugin library's code is only ever run on its lane ([`crate::lane`]):
//! the call itself, and every frame of a stream it returns. The core's
//! workers await the result, so a plugin that blocks stalls only its lane.
//!
//! Panics: a panic inside a plugin's future surfaces here as a panic of the
//! `FfiFuture` ("FFI future panicked"); it is caught on the lane and
//! becomes `Internal` for that call alone.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::Arc,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, ROption, RResult, RSome, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use crated_plugin_api::{
    abi::{
        ByteStream, CallHead, CallKind, Frame, FrameSource, FrameSource_TO, HandlerBox, PluginRef, RpcStatus,
        ServiceHost,
    },
    grpc::{self, Backend, Limits},
    Call, ServiceRouter, Status,
};
use futures::{future::BoxFuture, FutureExt};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::{
    grpc_metrics::{self, GrpcMetrics},
    isolation::IsolatedPlugin,
    lane::{Lane, LaneError},
    metrics::PluginStats,
    proxy::Proxy,
};

/// A plugin from a `.so`: its handler, and the lane its code runs on.
pub struct PluginTarget {
    pub handler: Arc<HandlerBox>,
    pub lane: Arc<Lane>,
}

/// Who answers a service.
pub enum Target {
    /// A plugin from a `.so`, through the ABI.
    Plugin(PluginTarget),
    /// A service of the core itself (introspection, version, health).
    Core(ServiceRouter),
    /// A `[proxy_plugins]` entry: frames forwarded to its socket.
    Proxy(Arc<Proxy>),
    /// A plugin of `isolated_plugins`, served by its own host process.
    Isolated(Arc<IsolatedPlugin>),
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
    /// The owner's counters for the metrics endpoint (cheap atomics,
    /// counted whether or not the endpoint is on).
    pub stats: Arc<PluginStats>,
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

fn lane_failed(route: &Route, e: LaneError) -> Status {
    match e {
        LaneError::Panicked => {
            route.stats.panic();
            panicked()
        }
        LaneError::Gone => Status::unavailable(format!("the lane of plugin {} is gone", route.owner)),
    }
}

/// Counts a call's outcome in its route's stats.
fn counted<T>(route: &Route, r: Result<T, Status>) -> Result<T, Status> {
    if r.is_err() {
        route.stats.error();
    }
    r
}

/// Calls a unary method on a route.
pub async fn call_unary(route: &Route, head: CallHead, body: RVec<u8>) -> Result<RVec<u8>, Status> {
    route.stats.call();
    counted(route, unary_on(route, head, body).await)
}

async fn unary_on(route: &Route, head: CallHead, body: RVec<u8>) -> Result<RVec<u8>, Status> {
    match &route.target {
        Target::Plugin(p) => {
            let handler = p.handler.clone();
            match p.lane.run(async move { handler.unary(head, body).await }).await {
                Ok(ROk(v)) => Ok(v),
                Ok(RErr(s)) => Err(s.into()),
                Err(e) => Err(lane_failed(route, e)),
            }
        }
        Target::Core(r) => r.call_unary(Call::from_head(head), body.into_vec()).await.map(RVec::from),
        Target::Proxy(p) => p.unary(head, body).await,
        Target::Isolated(p) => p.unary(head, body).await,
    }
}

/// Calls a streaming method on a route.
pub async fn call_streaming(route: &Route, head: CallHead, input: ByteStream) -> Result<ByteStream, Status> {
    route.stats.call();
    counted(route, streaming_on(route, head, input).await)
}

async fn streaming_on(route: &Route, head: CallHead, input: ByteStream) -> Result<ByteStream, Status> {
    match &route.target {
        Target::Plugin(p) => {
            let handler = p.handler.clone();
            match p.lane.run(async move { handler.streaming(head, input).await }).await {
                Ok(ROk(out)) => Ok(frames_on_lane(out, p.lane.clone(), route.stats.clone())),
                Ok(RErr(s)) => Err(s.into()),
                Err(e) => Err(lane_failed(route, e)),
            }
        }
        Target::Core(_) => Err(Status::unimplemented(format!("{} does not stream", head.method))),
        Target::Proxy(p) => p.streaming(head, input).await,
        Target::Isolated(p) => p.streaming(head, input).await,
    }
}

/// A plugin's output stream whose frames are pulled on the plugin's lane.
struct LaneFrames {
    inner: Arc<ByteStream>,
    lane: Arc<Lane>,
    stats: Arc<PluginStats>,
}

impl FrameSource for LaneFrames {
    fn next_frame(&self) -> FfiFuture<ROption<Frame>> {
        let inner = self.inner.clone();
        let stats = self.stats.clone();
        self.lane
            .run(async move { inner.next_frame().await })
            .map(move |r| match r {
                Ok(frame) => frame,
                Err(LaneError::Panicked) => {
                    stats.panic();
                    RSome(RErr(panicked().into()))
                }
                Err(LaneError::Gone) => RSome(RErr(Status::unavailable("the plugin's lane is gone").into())),
            })
            .into_ffi()
    }
}

fn frames_on_lane(out: ByteStream, lane: Arc<Lane>, stats: Arc<PluginStats>) -> ByteStream {
    FrameSource_TO::from_value(LaneFrames { inner: Arc::new(out), lane, stats }, TD_Opaque)
}

impl Backend for Route {
    fn unary(&self, head: CallHead, body: RVec<u8>) -> BoxFuture<'_, Result<RVec<u8>, Status>> {
        call_unary(self, head, body).boxed()
    }
    fn streaming(&self, head: CallHead, input: ByteStream) -> BoxFuture<'_, Result<ByteStream, Status>> {
        call_streaming(self, head, input).boxed()
    }
}

/// The route table the socket serves from. It changes only when a plugin
/// library is loaded into the running daemon: the new table replaces the
/// old one whole, so a request sees one table or the other, and a call in
/// flight keeps the route it started with.
#[derive(Default)]
pub struct LiveRoutes(std::sync::RwLock<Arc<RouteTable>>);

impl LiveRoutes {
    pub fn new(table: RouteTable) -> Self {
        LiveRoutes(std::sync::RwLock::new(Arc::new(table)))
    }

    /// The table now (a reference count, no copy).
    pub fn current(&self) -> Arc<RouteTable> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, table: RouteTable) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

/// The HTTP/2 service behind the socket.
#[derive(Clone)]
pub struct GrpcRouter {
    routes: Arc<LiveRoutes>,
    limits: Limits,
    /// The socket's gRPC server metrics, when the metrics endpoint is on.
    metrics: Option<Arc<GrpcMetrics>>,
}

impl GrpcRouter {
    pub fn new(routes: Arc<LiveRoutes>, max_recv: usize, max_send: usize) -> Self {
        GrpcRouter { routes, limits: Limits { max_recv, max_send }, metrics: None }
    }

    /// Counts every call in `metrics` ([`crate::grpc_metrics`]).
    pub fn with_metrics(mut self, metrics: Option<Arc<GrpcMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    async fn dispatch(self, req: Request<Incoming>) -> Response<tonic::body::Body> {
        let path = req.uri().path();
        let service = service_of(path);
        let Some(route) = self.routes.current().lookup(service).cloned() else {
            return tonic::Status::unimplemented(format!("unknown service {service}")).into_http();
        };
        let kind = route.streaming.get(path).copied().unwrap_or(CallKind::Unary);
        let Some(method) = self.metrics.as_ref().and_then(|m| m.method(path, kind)) else {
            return grpc::dispatch(route, kind, req, self.limits).await;
        };
        let start = std::time::Instant::now();
        let req = req.map(|body| grpc_metrics::count_request(&method, body));
        let resp = grpc::dispatch(route, kind, req, self.limits).await;
        grpc_metrics::observe_response(method, start, resp)
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
    pub(crate) fn resolve(&self, call: &CallHead) -> Result<Arc<Route>, RpcStatus> {
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

pub(crate) fn to_rresult<T>(r: Result<T, Status>) -> RResult<T, RpcStatus> {
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
