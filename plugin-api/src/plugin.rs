//! What a plugin author implements ([`Plugin`]) and the generic glue that
//! turns it into an ABI [`Registration`]. A library exports its plugins with
//! [`export_plugins!`](crate::export_plugins).

use std::{future::Future, path::PathBuf};

use abi_stable::std_types::{RErr, ROk, RResult, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use futures::FutureExt as _;
use serde::de::DeserializeOwned;

use crate::{
    abi::{InitContext, InitError, InitErrorKind, PluginInstance, Registration},
    host::Host,
    runtime::{catch_panic, spawn_joined, TaskEnd},
    service::ServiceRouter,
};

/// The static description of a plugin, known before it is initialised.
#[derive(Debug, Clone, Default)]
pub struct PluginInfo {
    /// `io.containerd.<kind>.v1` style.
    pub plugin_type: String,
    pub id: String,
    /// Plugin types that must be initialised first; `*` for all others.
    pub requires: Vec<String>,
    /// Types among `requires` that may have no running plugin (ordering only).
    pub optional: Vec<String>,
    /// Empty means the platform the library was built for.
    pub platforms: Vec<String>,
    pub exports: Vec<(String, String)>,
    pub capabilities: Vec<String>,
    /// Default config, as a TOML table in text form.
    pub config_defaults: String,
}

impl PluginInfo {
    pub fn new(plugin_type: &str, id: &str) -> PluginInfo {
        PluginInfo { plugin_type: plugin_type.into(), id: id.into(), ..Default::default() }
    }
    pub fn requires(mut self, types: &[&str]) -> Self {
        self.requires = types.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Types to initialise first when they exist, without failing when
    /// none of them runs (e.g. the metadata plugin and snapshotters).
    pub fn requires_optional(mut self, types: &[&str]) -> Self {
        for t in types {
            self.requires.push(t.to_string());
            self.optional.push(t.to_string());
        }
        self
    }
    pub fn export(mut self, key: &str, value: &str) -> Self {
        self.exports.push((key.into(), value.into()));
        self
    }
    pub fn capability(mut self, c: &str) -> Self {
        self.capabilities.push(c.into());
        self
    }
    pub fn config_defaults(mut self, toml_text: &str) -> Self {
        self.config_defaults = toml_text.into();
        self
    }
}

/// Why init did not produce a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// Declined to load (shows as `skip` in `ctr plugins ls`).
    Skip(String),
    /// Tried and failed (shows as `error`).
    Failed(String),
}

impl PluginError {
    pub fn failed(m: impl std::fmt::Display) -> Self {
        PluginError::Failed(m.to_string())
    }
    pub fn skip(m: impl std::fmt::Display) -> Self {
        PluginError::Skip(m.to_string())
    }
}

impl From<PluginError> for InitError {
    fn from(e: PluginError) -> InitError {
        match e {
            PluginError::Skip(m) => InitError { kind: InitErrorKind::Skip, message: m.into() },
            PluginError::Failed(m) => InitError { kind: InitErrorKind::Failed, message: m.into() },
        }
    }
}

/// What a plugin gets at init, in Rust types.
pub struct InitCtx {
    pub plugin_type: String,
    pub id: String,
    /// Defaults with the user's table merged on top.
    pub config: toml::Table,
    /// Persistent data directory for this plugin (created by the core).
    pub root: PathBuf,
    /// Runtime state directory for this plugin (created by the core).
    pub state: PathBuf,
    pub grpc_address: String,
    pub ttrpc_address: String,
    pub log_level: String,
    /// Calls into the plugins this one requires.
    pub host: Host,
}

impl InitCtx {
    /// The plugin's config as a typed struct.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        self.config
            .clone()
            .try_into()
            .map_err(|e| PluginError::failed(format!("invalid config for {}.{}: {e}", self.plugin_type, self.id)))
    }

    fn from_abi(c: InitContext) -> Result<InitCtx, PluginError> {
        crate::logging::install(c.log, &c.log_level);
        let config = if c.config_toml.trim().is_empty() {
            toml::Table::new()
        } else {
            c.config_toml
                .parse::<toml::Table>()
                .map_err(|e| PluginError::failed(format!("config is not a TOML table: {e}")))?
        };
        Ok(InitCtx {
            plugin_type: c.plugin_type.into_string(),
            id: c.id.into_string(),
            config,
            root: c.root.into_string().into(),
            state: c.state.into_string().into(),
            grpc_address: c.grpc_address.into_string(),
            ttrpc_address: c.ttrpc_address.into_string(),
            log_level: c.log_level.into_string(),
            host: Host::new(c.host),
        })
    }
}

/// A plugin: a static description and an async init that returns the
/// router of its gRPC services (possibly empty).
pub trait Plugin: 'static {
    fn info() -> PluginInfo;
    fn init(ctx: InitCtx) -> impl Future<Output = Result<ServiceRouter, PluginError>> + Send + 'static;
}

/// The platform this library was built for, in containerd's `os/arch` form.
pub fn build_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("{}/{}", std::env::consts::OS, arch)
}

fn strings(v: Vec<String>) -> RVec<RString> {
    v.into_iter().map(RString::from).collect()
}

/// The ABI registration of `P`.
pub fn registration<P: Plugin>() -> Registration {
    let info = P::info();
    let platforms = if info.platforms.is_empty() { vec![build_platform()] } else { info.platforms };
    Registration {
        plugin_type: info.plugin_type.into(),
        id: info.id.into(),
        requires: strings(info.requires),
        optional: strings(info.optional),
        platforms: strings(platforms),
        exports: info.exports.into_iter().map(|(k, v)| (RString::from(k), RString::from(v)).into()).collect(),
        capabilities: strings(info.capabilities),
        config_defaults: info.config_defaults.into(),
        init: init_entry::<P>,
    }
}

extern "C" fn init_entry<P: Plugin>(ctx: InitContext) -> FfiFuture<RResult<PluginInstance, InitError>> {
    let started = catch_panic(move || {
        let ctx = InitCtx::from_abi(ctx)?;
        let joined = spawn_joined(P::init(ctx));
        Ok::<_, PluginError>(async move {
            match joined.await {
                Ok(r) => r,
                Err(TaskEnd::Panicked(m)) => Err(PluginError::failed(format!("init panicked: {m}"))),
                Err(TaskEnd::Cancelled) => Err(PluginError::failed("init was cancelled")),
            }
        })
    });
    let fut = match started {
        Ok(Ok(fut)) => fut.boxed(),
        Ok(Err(e)) => futures::future::ready(Err(e)).boxed(),
        Err(panic) => futures::future::ready(Err(PluginError::failed(format!("init panicked: {panic}")))).boxed(),
    };
    fut.map(|r| match r {
        Ok(router) => ROk(PluginInstance {
            services: strings(router.services()),
            internal: strings(router.internal_services()),
            exports: RVec::new(),
            streaming: router.streaming_methods().into(),
            handler: router.into_handler(),
        }),
        Err(e) => RErr(e.into()),
    })
    .into_ffi()
}

/// Exports the root module of a plugin library: `export_plugins!(A, B);`
/// where each argument implements [`Plugin`]. One library may hold any
/// number of plugins.
#[macro_export]
macro_rules! export_plugins {
    ($($plugin:ty),+ $(,)?) => {
        #[doc(hidden)]
        pub fn __crated_plugin_root() -> $crate::abi::PluginLibraryRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait as _;
            $crate::abi::PluginLibrary {
                abi_version: $crate::abi::ABI_VERSION,
                sdk_version: $crate::abi_stable::std_types::RStr::from_str($crate::SDK_VERSION),
                registrations: __crated_registrations,
            }
            .leak_into_prefix()
        }

        extern "C" fn __crated_registrations() -> $crate::abi_stable::std_types::RResult<
            $crate::abi_stable::std_types::RVec<$crate::abi::Registration>,
            $crate::abi_stable::std_types::RString,
        > {
            match $crate::runtime::catch_panic(|| {
                let regs: ::std::vec::Vec<$crate::abi::Registration> =
                    ::std::vec![$($crate::plugin::registration::<$plugin>()),+];
                regs
            }) {
                Ok(regs) => $crate::abi_stable::std_types::ROk(regs.into()),
                Err(m) => $crate::abi_stable::std_types::RErr(m.into()),
            }
        }

        // The symbol abi_stable's loader looks for (`abi_stable::library::
        // ROOT_MODULE_LOADER_NAME`), spelt out so that plugin crates need
        // not depend on abi_stable themselves; plugin-api's tests check it.
        #[no_mangle]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            pub extern "C" fn __crated_erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__crated_plugin_root)
            }
            // SAFETY: the constructor returns the root module of the type
            // named here, which is what `from_constructor` requires, and the
            // layout is checked by the loader (`CheckTypeLayout::Yes`).
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginLibraryRef>(
                    __crated_erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
