//! The binary contract between the crated core and a plugin library.
//!
//! Everything in this module crosses a `.so` boundary, so every type is
//! `#[repr(C)]` and derives `StableAbi`: abi_stable checks the layout of the
//! whole tree of types when the core loads a library, and refuses a library
//! whose layout differs instead of letting it crash later.
//!
//! The contract is deliberately narrow: gRPC payloads travel as protobuf
//! bytes addressed by method path (`/pkg.Service/Method`). The core never
//! decodes them; it only routes. Rust trait objects, tonic services and tokio
//! handles stay on their own side of the boundary.
//!
//! Change discipline: adding a field at the end of a prefix type
//! (`PluginLibrary`, the sabi traits) is compatible; anything else is an ABI
//! break and must bump [`ABI_VERSION`].

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, ROption, RResult, RStr, RString, RVec, Tuple2},
    StableAbi,
};
use async_ffi::FfiFuture;

/// The plugin-api ABI version this crate implements. The core refuses a
/// library that reports another one, with a message naming both.
///
/// History: 2 added [`CallHead::target`] (calls to one named dependency),
/// [`PluginInstance::internal`] (services for dependents only) and
/// [`Registration::optional`].
pub const ABI_VERSION: u32 = 2;

/// A gRPC status as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RpcStatus {
    /// The gRPC status code (`tonic::Code as i32`).
    pub code: i32,
    pub message: RString,
}

/// How a gRPC method moves its messages. Unary methods need no declaration;
/// every streaming method must be declared in its plugin's
/// [`PluginInstance`], because the core cannot tell a streaming call from its
/// first frame.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Unary,
    ClientStreaming,
    ServerStreaming,
    BidiStreaming,
}

/// A streaming method of a plugin: the full path and its kind.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct MethodDecl {
    /// `/package.Service/Method`
    pub path: RString,
    pub kind: CallKind,
}

/// What travels with every call besides its payload.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct CallHead {
    /// `/package.Service/Method`
    pub method: RString,
    /// For in-process calls: the `type.id` of the dependency that must
    /// answer, e.g. `io.containerd.snapshotter.v1.overlayfs`. Empty means
    /// whichever dependency serves the method's service. Several plugins of
    /// one type serve the same API, so only a name can tell them apart.
    /// Always empty on calls from the socket.
    pub target: RString,
    /// The request's gRPC metadata (ASCII values only), including
    /// `containerd-namespace`.
    pub headers: RVec<Tuple2<RString, RString>>,
}

/// One frame of a stream: a message, or the status that ends the stream.
pub type Frame = RResult<RVec<u8>, RpcStatus>;

/// A stream of protobuf messages crossing the boundary. `next_frame`
/// resolves to `RNone` at the end of the stream.
#[sabi_trait]
pub trait FrameSource: Send + Sync + 'static {
    #[sabi(last_prefix_field)]
    fn next_frame(&self) -> FfiFuture<ROption<Frame>>;
}

/// An owned, FFI-safe stream of frames.
pub type ByteStream = FrameSource_TO<RBox<()>>;

/// The object through which a plugin serves its calls.
#[sabi_trait]
pub trait Handler: Send + Sync + 'static {
    /// A unary call: one request message, one response message.
    fn unary(&self, call: CallHead, body: RVec<u8>) -> FfiFuture<RResult<RVec<u8>, RpcStatus>>;

    /// Any streaming call. For server streaming, `input` yields exactly one
    /// frame; for client streaming the returned stream yields exactly one.
    fn streaming(&self, call: CallHead, input: ByteStream) -> FfiFuture<RResult<ByteStream, RpcStatus>>;

    /// Called once at daemon shutdown, in reverse init order.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<()>;
}

/// An owned handler.
pub type HandlerBox = Handler_TO<RBox<()>>;

/// A plugin as another plugin sees it through the [`ServiceHost`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginRef {
    pub plugin_type: RString,
    pub id: RString,
    pub services: RVec<RString>,
    pub exports: RVec<Tuple2<RString, RString>>,
}

/// The core's side of in-process calls: lets a plugin call the services of
/// the plugins it declared in `requires`, with no socket in between.
#[sabi_trait]
pub trait ServiceHost: Send + Sync + 'static {
    fn unary(&self, call: CallHead, body: RVec<u8>) -> FfiFuture<RResult<RVec<u8>, RpcStatus>>;

    fn streaming(&self, call: CallHead, input: ByteStream) -> FfiFuture<RResult<ByteStream, RpcStatus>>;

    /// The initialised plugins this plugin may call (its dependencies).
    #[sabi(last_prefix_field)]
    fn dependencies(&self) -> RVec<PluginRef>;
}

/// A shared handle to the core's service host.
pub type HostBox = ServiceHost_TO<RArc<()>>;

/// Everything a plugin receives at init.
#[repr(C)]
#[derive(StableAbi)]
pub struct InitContext {
    pub plugin_type: RString,
    pub id: RString,
    /// The plugin's config: its declared defaults with the user's
    /// `[plugins."<type>.<id>"]` table merged on top, as TOML text.
    pub config_toml: RString,
    /// `<root>/<type>.<id>`: where the plugin keeps persistent data.
    pub root: RString,
    /// `<state>/<type>.<id>`: where the plugin keeps runtime state.
    pub state: RString,
    pub grpc_address: RString,
    pub ttrpc_address: RString,
    pub log_level: RString,
    pub host: HostBox,
    /// The daemon's logger: `(level, target, message)`, level 1 = error up
    /// to 5 = trace. The SDK routes the library's `tracing` events here.
    pub log: extern "C" fn(u8, RStr<'_>, RStr<'_>),
}

/// Why a plugin did not start.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitErrorKind {
    /// The plugin declined to load (containerd's `ErrSkipPlugin`), e.g. a
    /// snapshotter on an unsupported filesystem. Not a failure.
    Skip,
    /// The plugin tried and failed.
    Failed,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct InitError {
    pub kind: InitErrorKind,
    pub message: RString,
}

/// A running plugin: the gRPC services it serves and the object serving them.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginInstance {
    /// Fully qualified service names, e.g. `containerd.services.content.v1.Content`,
    /// served on the socket (and to dependents).
    pub services: RVec<RString>,
    /// Services served to dependents only, in process, never on the socket.
    /// Any number of plugins may serve the same internal service (every
    /// snapshotter serves Snapshots); a dependent picks one by
    /// [`CallHead::target`].
    pub internal: RVec<RString>,
    /// Exports known only after init (e.g. a root directory); merged over the
    /// registration's static exports.
    pub exports: RVec<Tuple2<RString, RString>>,
    /// Every streaming method the plugin serves; a method not listed is unary.
    pub streaming: RVec<MethodDecl>,
    pub handler: HandlerBox,
}

/// The init entry point of one registration.
pub type InitFn = extern "C" fn(InitContext) -> FfiFuture<RResult<PluginInstance, InitError>>;

/// One plugin as a library declares it, before it is initialised.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct Registration {
    /// `io.containerd.<kind>.v1` style.
    pub plugin_type: RString,
    pub id: RString,
    /// Plugin types this one needs initialised first; `*` means all others.
    pub requires: RVec<RString>,
    /// The types among `requires` that may have no running plugin at all
    /// (ordering only): the metadata plugin starts without any snapshotter.
    pub optional: RVec<RString>,
    /// `os/arch[/variant]`, e.g. `linux/amd64`.
    pub platforms: RVec<RString>,
    pub exports: RVec<Tuple2<RString, RString>>,
    pub capabilities: RVec<RString>,
    /// The plugin's default config as TOML text (a table, possibly empty).
    pub config_defaults: RString,
    pub init: extern "C" fn(InitContext) -> FfiFuture<RResult<PluginInstance, InitError>>,
}

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct PluginLibrary {
    /// [`ABI_VERSION`] as the library was built.
    pub abi_version: u32,
    /// The crated-plugin-api crate version the library was built with.
    pub sdk_version: RStr<'static>,
    /// The plugins of this library. An `RErr` carries a message, e.g. when
    /// the library's own set-up panicked.
    #[sabi(last_prefix_field)]
    pub registrations: extern "C" fn() -> RResult<RVec<Registration>, RString>,
}

impl RootModule for PluginLibraryRef {
    declare_root_module_statics! {PluginLibraryRef}
    const BASE_NAME: &'static str = "crated_plugin";
    const NAME: &'static str = "crated_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

impl From<RpcStatus> for crate::Status {
    fn from(s: RpcStatus) -> Self {
        crate::Status::new(crate::Code::from_i32(s.code), s.message.into_string())
    }
}

impl From<crate::Status> for RpcStatus {
    fn from(s: crate::Status) -> Self {
        RpcStatus { code: s.code as i32, message: s.message.into() }
    }
}
