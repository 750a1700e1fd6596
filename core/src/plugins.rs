//! The set of plugins of one daemon run: what was found, what was refused,
//! what was initialised (in dependency order) and what each one serves.
//!
//! Every plugin ends in one of three states, which introspection reports as
//! containerd does: running (`ok`), declined to load (`skip`), or failed
//! (`error`, with the reason). Only a failing plugin listed in
//! `required_plugins` stops the daemon.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RString},
};
use crated_plugin_api::{
    abi::{
        InitContext, InitError, InitErrorKind, InitFn, PluginInstance, PluginRef, Registration, ServiceHost_TO,
        ABI_VERSION,
    },
    duration::format_go_duration,
    types,
};

use crate::{
    config::{
        Config, IsolationLimits, PluginTimeouts, ProxyPlugin, DEFAULT_PLUGIN_INIT_TIMEOUT,
        DEFAULT_PLUGIN_SHUTDOWN_TIMEOUT,
    },
    graph::{self, Node},
    introspection::Records,
    isolation::{
        DependencySpec, HostSpec, HostStatusCell, IsolatedPlugin, IsolationError, EXPORT_HOST_PID, EXPORT_HOST_RESTARTS,
    },
    lane::Lane,
    loader::{self, LibraryLoadError, Scan},
    metrics::{PluginStats, SharedRoutes, SharedStats},
    proxy::Proxy,
    router::{DependencyHost, LiveRoutes, PluginTarget, Route, RouteTable, Target},
};

/// The type under which a library that failed to load is listed.
pub const LIBRARY_PLUGIN_TYPE: &str = crated_plugin_api::types::LIBRARY;
/// Export keys that say where a plugin came from.
pub const EXPORT_LIBRARY: &str = "io.crated.plugin.library";
pub const EXPORT_ABI: &str = "io.crated.plugin.abi";
pub const EXPORT_SDK: &str = "io.crated.plugin.sdk";

/// The outcome of a plugin's life so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    Running,
    /// Declined to load; the message ends with containerd's "skip plugin".
    Skipped(String),
    Failed(String),
}

/// One line of `ctr plugins ls`.
#[derive(Debug, Clone)]
pub struct PluginRecord {
    pub plugin_type: String,
    pub id: String,
    pub requires: Vec<String>,
    pub platforms: Vec<String>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub state: PluginState,
    /// For an isolated plugin, its host's live status, which overrides
    /// `state` and adds the host's exports.
    pub host: Option<HostStatusCell>,
}

impl PluginRecord {
    pub fn key(&self) -> String {
        format!("{}.{}", self.plugin_type, self.id)
    }

    /// Its state and exports now: an isolated plugin's change as its host
    /// comes and goes.
    pub fn current(&self) -> (PluginState, BTreeMap<String, String>) {
        let Some(host) = &self.host else { return (self.state.clone(), self.exports.clone()) };
        let status = host.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut exports = self.exports.clone();
        exports.insert(EXPORT_HOST_PID.into(), status.pid.to_string());
        exports.insert(EXPORT_HOST_RESTARTS.into(), status.restarts.to_string());
        (status.state, exports)
    }
}

/// The plugins of a running daemon. Built at start; grown when a library
/// is loaded into the running daemon ([`PluginSet::load_library`]).
pub struct PluginSet {
    /// Every plugin's `ctr plugins ls` line, shared with introspection.
    pub records: Records,
    /// The table the socket serves from, shared with the router.
    pub routes: Arc<LiveRoutes>,
    /// Initialised plugins, in init order, for shutdown in reverse.
    running: Vec<(String, Arc<Route>)>,
    /// What init has brought up so far, where later plugins find their
    /// dependencies.
    progress: Progress,
    timeouts: PluginTimeouts,
    /// Every library file loaded or refused so far, as it was then, and
    /// whether it loaded.
    libraries: HashMap<PathBuf, (Option<FileIdentity>, bool)>,
    /// The counters of every plugin that went through init (and of the
    /// core's services), for the metrics endpoint.
    pub stats: SharedStats,
    /// Running plugins that serve the internal metrics service
    /// (`crated.metrics.v1.Metrics`), asked at each scrape.
    pub metric_sources: SharedRoutes,
}

/// What tells a file rewritten or replaced in place from the one loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileIdentity { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: (m.mtime(), m.mtime_nsec()) })
    }
}

/// A failure that must stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("required plugin {key} failed to start: {reason}")]
    RequiredFailed { key: String, reason: String },
    #[error("required plugin {0} is not registered by any plugin library")]
    RequiredMissing(String),
}

struct Candidate {
    reg: Registration,
    library: PathBuf,
    sdk: String,
    abi: u32,
}

/// A `[proxy_plugins]` entry, started as a plugin of its type.
struct ProxyCandidate {
    plugin_type: &'static str,
    name: String,
    config: ProxyPlugin,
}

impl ProxyCandidate {
    fn key(&self) -> String {
        types::key(self.plugin_type, &self.name)
    }

    /// Its `ctr plugins ls` line: the configured platform (containerd 1.6
    /// lists none), capabilities and exports, plus the `address` export
    /// containerd adds.
    fn record(&self) -> PluginRecord {
        let mut exports = self.config.exports.clone();
        exports.insert("address".into(), self.config.address.clone());
        PluginRecord {
            plugin_type: self.plugin_type.into(),
            id: self.name.clone(),
            requires: vec![],
            platforms: [&self.config.platform].into_iter().filter(|p| !p.is_empty()).cloned().collect(),
            exports,
            capabilities: self.config.capabilities.clone(),
            state: PluginState::Failed("not initialised".into()),
            host: None,
        }
    }

    /// A proxy starts without touching its socket (connections are lazy),
    /// so it never fails nor delays the daemon's start.
    fn start(&self) -> Result<Started, PluginState> {
        let key = self.key();
        let service = types::proxy_service(self.plugin_type)
            .ok_or_else(|| PluginState::Failed(format!("crated cannot proxy plugins of type {}", self.plugin_type)))?;
        Ok(Started {
            services: vec![],
            internal: vec![service.to_string()],
            target: Target::Proxy(Arc::new(Proxy::new(&key, &self.config.address))),
            streaming: HashMap::new(),
            exports: vec![],
            direct: vec![],
            host: None,
        })
    }
}

/// The `[proxy_plugins]` entries crated can start, minus disabled ones.
fn proxy_candidates(config: &Config) -> Vec<ProxyCandidate> {
    let mut out = Vec::new();
    for (name, p) in &config.proxy_plugins {
        let Some(plugin_type) = types::proxy_type(&p.r#type) else {
            tracing::warn!(proxy_plugin = %name, r#type = %p.r#type, "unsupported proxy plugin type; ignored");
            continue;
        };
        let c = ProxyCandidate { plugin_type, name: name.clone(), config: p.clone() };
        if config.disabled_plugins.contains(&c.key()) {
            tracing::info!(plugin = %c.key(), "disabled by config");
            continue;
        }
        out.push(c);
    }
    out
}

/// A core service that appears in introspection like any plugin.
pub struct CoreService {
    pub plugin_type: &'static str,
    pub id: &'static str,
    pub services: Vec<String>,
    pub router: crated_plugin_api::ServiceRouter,
}

/// Where a plugin's data lives: `<base>/<type>.<id>`.
fn plugin_dir(base: &Path, key: &str) -> PathBuf {
    base.join(key)
}

/// Loads, orders and initialises every plugin.
pub async fn start(
    config: &Config,
    scan: Scan,
    core: Vec<CoreService>,
    records: Records,
) -> Result<PluginSet, StartError> {
    let timeouts = config.plugin_timeouts().unwrap_or_else(|e| {
        // daemon::run refuses such a config before it gets here.
        tracing::error!("{e}; using the default plugin timeouts");
        PluginTimeouts { init: DEFAULT_PLUGIN_INIT_TIMEOUT, shutdown: DEFAULT_PLUGIN_SHUTDOWN_TIMEOUT }
    });
    let mut set = PluginSet {
        records,
        routes: Arc::new(LiveRoutes::default()),
        running: Vec::new(),
        progress: Progress::default(),
        timeouts,
        libraries: HashMap::new(),
        stats: SharedStats::default(),
        metric_sources: SharedRoutes::default(),
    };
    set.add_core(core);
    set.start_batch(config, scan, proxy_candidates(config)).await;

    for key in &config.required_plugins {
        let state = set.records().iter().find(|r| r.key() == *key).map(|r| r.state.clone());
        let failure = match state {
            None => Some(StartError::RequiredMissing(key.clone())),
            Some(PluginState::Running) => None,
            Some(PluginState::Skipped(m) | PluginState::Failed(m)) => {
                Some(StartError::RequiredFailed { key: key.clone(), reason: m })
            }
        };
        if let Some(e) = failure {
            set.shutdown().await;
            return Err(e);
        }
    }
    Ok(set)
}

/// Why a library file cannot be loaded again while the daemon runs.
pub const RELOAD_REFUSED: &str = "this library is already loaded and its plugins keep running the code loaded \
     first: replacing or removing a plugin library needs a restart of the daemon (libraries are never unloaded); \
     replace a library with a new file (install or rename), never by writing into the loaded one";

impl PluginSet {
    fn records(&self) -> std::sync::RwLockReadGuard<'_, Vec<PluginRecord>> {
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }

    fn push_records(&self, new: impl IntoIterator<Item = PluginRecord>) {
        self.records.write().unwrap_or_else(|e| e.into_inner()).extend(new);
    }

    /// The core's own services, listed and routed like plugins.
    fn add_core(&mut self, core: Vec<CoreService>) {
        let mut records = Vec::new();
        for c in core {
            let route = Arc::new(Route {
                owner: format!("{}.{}", c.plugin_type, c.id),
                target: Target::Core(c.router),
                streaming: HashMap::new(),
                services: c.services.iter().cloned().collect(),
                stats: PluginStats::new(c.plugin_type, c.id),
            });
            self.stats.write().unwrap_or_else(|e| e.into_inner()).push(route.stats.clone());
            if let Err(e) = self.progress.routes.insert(&c.services, route.clone(), &HashSet::new()) {
                tracing::error!("{e}");
            }
            records.push(PluginRecord {
                plugin_type: c.plugin_type.into(),
                id: c.id.into(),
                requires: vec![],
                platforms: vec![],
                exports: BTreeMap::new(),
                capabilities: vec![],
                state: PluginState::Running,
                host: None,
            });
        }
        self.push_records(records);
        self.routes.replace(self.progress.routes.clone());
    }

    /// Loads one library into the running daemon, found in `plugin_dir`
    /// after start: its plugins are checked, ordered against the running
    /// ones (their dependencies must be up), initialised, listed and
    /// routed, without touching the plugins already running or their calls.
    /// Returns the keys of the plugins it listed.
    pub async fn load_library(&mut self, config: &Config, path: &Path) -> Vec<String> {
        if let Some((identity, loaded)) = self.libraries.get(path).copied() {
            if identity == FileIdentity::of(path) {
                // The very file already seen (an event for a copy that
                // finished while the daemon started).
                return vec![];
            }
            if !loaded {
                // A library that was refused and has been rewritten: try
                // the new file, in place of the old failure.
                let key = library_failure(path, String::new()).key();
                self.records.write().unwrap_or_else(|e| e.into_inner()).retain(|r| r.key() != key);
                self.libraries.remove(path);
                return Box::pin(self.load_library(config, path)).await;
            }
            tracing::warn!(library = %path.display(), "{RELOAD_REFUSED}");
            let record = library_failure(path, RELOAD_REFUSED.into());
            let key = record.key();
            let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
            match records.iter_mut().find(|r| r.key() == key) {
                Some(r) => *r = record,
                None => records.push(record),
            }
            return vec![key];
        }
        tracing::info!(library = %path.display(), "loading a plugin library into the running daemon");
        let owned = path.to_path_buf();
        let scan = match tokio::task::spawn_blocking(move || loader::load(&owned)).await {
            Ok(Ok(lib)) => Scan { libraries: vec![lib], errors: vec![] },
            Ok(Err(message)) => {
                Scan { libraries: vec![], errors: vec![LibraryLoadError { path: path.into(), message }] }
            }
            Err(e) => Scan {
                libraries: vec![],
                errors: vec![LibraryLoadError { path: path.into(), message: format!("loading panicked: {e}") }],
            },
        };
        self.start_batch(config, scan, Vec::new()).await
    }

    /// Orders and initialises a batch of plugins (all of them at start, one
    /// library's later), then publishes their records and routes. A
    /// requirement on a type that only plugins already running provide is
    /// met by them and plays no part in ordering the batch.
    async fn start_batch(&mut self, config: &Config, scan: Scan, proxies: Vec<ProxyCandidate>) -> Vec<String> {
        let mut records = Vec::new();
        for e in &scan.errors {
            tracing::error!(library = %e.path.display(), "{}", e.message);
            self.libraries.insert(e.path.clone(), (FileIdentity::of(&e.path), false));
            records.push(library_failure(&e.path, e.message.clone()));
        }
        let mut candidates = Vec::new();
        for lib in scan.libraries {
            self.libraries.insert(lib.path.clone(), (FileIdentity::of(&lib.path), true));
            for reg in lib.registrations {
                let key = format!("{}.{}", reg.plugin_type, reg.id);
                if config.disabled_plugins.contains(&key) {
                    tracing::info!(plugin = %key, "disabled by config");
                    continue;
                }
                candidates.push(Candidate {
                    reg,
                    library: lib.path.clone(),
                    sdk: lib.sdk_version.clone(),
                    abi: lib.abi_version,
                });
            }
        }

        // Proxies come after the libraries' plugins: index
        // `candidates.len() + j` in the graph is `proxies[j]`.
        let batch_types: HashSet<String> = candidates
            .iter()
            .map(|c| c.reg.plugin_type.to_string())
            .chain(proxies.iter().map(|p| p.plugin_type.to_string()))
            .collect();
        let known: HashSet<String> = self.records().iter().map(PluginRecord::key).collect();
        let running_types: HashSet<String> = self.progress.running_by_type.keys().cloned().collect();
        let nodes: Vec<Node> = candidates
            .iter()
            .map(|c| Node {
                plugin_type: c.reg.plugin_type.to_string(),
                id: c.reg.id.to_string(),
                requires: c
                    .reg
                    .requires
                    .iter()
                    .map(|r| r.to_string())
                    .filter(|r| r == "*" || batch_types.contains(r) || !running_types.contains(r))
                    .collect(),
                optional: c.reg.optional.iter().map(|r| r.to_string()).collect(),
            })
            .chain(proxies.iter().map(|p| Node {
                plugin_type: p.plugin_type.to_string(),
                id: p.name.clone(),
                requires: vec![],
                optional: vec![],
            }))
            .collect();
        let plan = graph::plan(&nodes);

        let mut slot: Vec<Option<PluginRecord>> =
            candidates.iter().map(record_of).chain(proxies.iter().map(ProxyCandidate::record)).map(Some).collect();
        for (i, reason) in &plan.refused {
            if let Some(r) = slot[*i].as_mut() {
                tracing::error!(plugin = %r.key(), "{reason}");
                r.state = PluginState::Failed(reason.clone());
            }
        }
        // A plugin already running under the same key keeps it.
        for r in slot.iter_mut().flatten() {
            if known.contains(&r.key()) {
                let reason = format!("duplicate plugin {}: a plugin with this type and id is already running", r.key());
                tracing::error!(plugin = %r.key(), "{reason}");
                r.state = PluginState::Failed(reason);
            }
        }

        for wave in waves(&nodes, &plan.order) {
            // Each plugin's dependencies are resolved now, in plan order;
            // then the wave's inits run at once (each on its own thread, see
            // `run_init`), and their results are routed in plan order again.
            let mut pending = Vec::new();
            for i in wave {
                let Some(record) = slot[i].take_if(|r| !known.contains(&r.key())) else { continue };
                let init = self.prepare_one(config, &candidates, &proxies, i, &record);
                pending.push((i, record, init));
            }
            let results = futures::future::join_all(pending.iter_mut().map(|(_, _, init)| init.run())).await;
            for ((i, mut record, init), started) in pending.into_iter().zip(results) {
                record.state = self.finish_one(&mut record, init.stats, init.began, started).await;
                slot[i] = Some(record);
            }
        }
        records.extend(slot.into_iter().flatten());
        let keys = records.iter().map(PluginRecord::key).collect();
        self.push_records(records);
        self.routes.replace(self.progress.routes.clone());
        keys
    }

    /// Resolves the batch's plugin `i`'s dependencies against what is
    /// running now; the returned init owns everything it needs.
    fn prepare_one(
        &mut self,
        config: &Config,
        candidates: &[Candidate],
        proxies: &[ProxyCandidate],
        i: usize,
        record: &PluginRecord,
    ) -> PendingInit {
        let stats = PluginStats::new(&record.plugin_type, &record.id);
        self.stats.write().unwrap_or_else(|e| e.into_inner()).push(stats.clone());
        let began = std::time::Instant::now();
        let work = match candidates.get(i) {
            Some(c) => prepare_init(config, c, record, &mut self.progress, self.timeouts),
            None => InitWork::Done(Some(proxies[i - candidates.len()].start())),
        };
        PendingInit { stats, began, work }
    }

    /// Routes a plugin that came through init; returns its state.
    async fn finish_one(
        &mut self,
        record: &mut PluginRecord,
        stats: Arc<PluginStats>,
        began: std::time::Instant,
        started: Result<Started, PluginState>,
    ) -> PluginState {
        let key = record.key();
        let timeouts = self.timeouts;
        stats.set_init(began.elapsed());
        let Started { services, internal, target, streaming, exports, direct, host } = match started {
            Ok(s) => s,
            Err(state) => {
                match &state {
                    PluginState::Skipped(m) => tracing::info!(plugin = %key, "{m}"),
                    PluginState::Failed(m) => tracing::error!(plugin = %key, "failed to start: {m}"),
                    PluginState::Running => {}
                }
                return state;
            }
        };
        let route = Arc::new(Route {
            owner: key.clone(),
            target,
            streaming,
            services: services.iter().chain(&internal).cloned().collect(),
            stats,
        });
        let progress = &mut self.progress;
        let mut wrapped: HashSet<String> = HashSet::new();
        for d in direct {
            wrapped.extend(progress.closure.get(&d).into_iter().flatten().cloned());
            wrapped.insert(d);
        }
        let inserted = progress.routes.insert(&services, route.clone(), &wrapped);
        progress.closure.insert(key.clone(), wrapped);
        if let Err(e) = inserted {
            tracing::error!(plugin = %key, "{e}");
            shutdown_route(&key, &route, timeouts.shutdown).await;
            return PluginState::Failed(e);
        }
        record.exports.extend(exports);
        record.host = host;
        tracing::info!(plugin = %key, services = ?services, "plugin started");
        progress.running_by_type.entry(record.plugin_type.clone()).or_default().push((
            key.clone(),
            PluginRef {
                plugin_type: record.plugin_type.as_str().into(),
                id: record.id.as_str().into(),
                services: services.iter().chain(&internal).map(|s| RString::from(s.as_str())).collect(),
                exports: record
                    .exports
                    .iter()
                    .map(|(k, v)| (RString::from(k.as_str()), RString::from(v.as_str())).into())
                    .collect(),
            },
        ));
        progress.running_routes.insert(key.clone(), route.clone());
        if route.services.contains(crated_plugin_api::metrics::SERVICE) {
            self.metric_sources.write().unwrap_or_else(|e| e.into_inner()).push(route.clone());
        }
        self.running.push((key, route));
        PluginState::Running
    }
}

/// The `ctr plugins ls` line of a library that yielded no plugin.
fn library_failure(path: &Path, message: String) -> PluginRecord {
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    PluginRecord {
        plugin_type: LIBRARY_PLUGIN_TYPE.into(),
        id: name,
        requires: vec![],
        platforms: vec![],
        exports: BTreeMap::from([(EXPORT_LIBRARY.to_string(), path.display().to_string())]),
        capabilities: vec![],
        state: PluginState::Failed(message),
        host: None,
    }
}

fn record_of(c: &Candidate) -> PluginRecord {
    let mut exports: BTreeMap<String, String> =
        c.reg.exports.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect();
    exports.insert(EXPORT_LIBRARY.into(), c.library.display().to_string());
    exports.insert(EXPORT_ABI.into(), c.abi.to_string());
    exports.insert(EXPORT_SDK.into(), c.sdk.clone());
    debug_assert_eq!(c.abi, ABI_VERSION);
    PluginRecord {
        plugin_type: c.reg.plugin_type.to_string(),
        id: c.reg.id.to_string(),
        requires: c.reg.requires.iter().map(|r| r.to_string()).collect(),
        platforms: c.reg.platforms.iter().map(|r| r.to_string()).collect(),
        exports,
        capabilities: c.reg.capabilities.iter().map(|r| r.to_string()).collect(),
        state: PluginState::Failed("not initialised".into()),
        host: None,
    }
}

/// A plugin that came through init.
struct Started {
    /// Served on the socket.
    services: Vec<String>,
    /// Served to dependents only.
    internal: Vec<String>,
    target: Target,
    streaming: HashMap<String, crated_plugin_api::abi::CallKind>,
    exports: Vec<(String, String)>,
    /// Keys of its direct dependencies.
    direct: Vec<String>,
    /// The live status of its host, for an isolated plugin.
    host: Option<HostStatusCell>,
}

/// What init has brought up so far: where the next plugins' dependencies
/// come from.
#[derive(Default)]
struct Progress {
    /// Type -> keys of running plugins of that type.
    running_by_type: HashMap<String, Vec<(String, PluginRef)>>,
    /// Key -> route of every running plugin, for calls that name their callee.
    running_routes: HashMap<String, Arc<Route>>,
    /// How many isolated plugins were started (numbers their sockets).
    isolated: usize,
    /// Key -> every plugin it depends on, directly or not.
    closure: HashMap<String, HashSet<String>>,
    /// The route table being built; published whole after each batch.
    routes: RouteTable,
}

/// Splits `order` (a plan's init order) into waves: each plugin goes in the
/// first wave after every batch member it requires (by type, optional or
/// not; `*` means every member that does not itself require `*`).
///
/// Why waves: most inits wait on the disk (a database created and synced,
/// an overlay test mount), and those of plugins that do not depend on each
/// other (the snapshotters, content, events, streaming) can wait at once.
/// Starting them together took about a fifth off the daemon's cold start
/// (BENCHMARKS.md). A wave's results are still applied in plan order, so
/// `ctr plugins ls` and the routes come out as in a sequential start.
fn waves(nodes: &[Node], order: &[usize]) -> Vec<Vec<usize>> {
    let mut wave_of: HashMap<usize, usize> = HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        let n = &nodes[i];
        let wants_all = n.requires.iter().any(|r| r == "*");
        // Dependencies come earlier in a topological order.
        let w = order[..pos]
            .iter()
            .filter(|&&j| {
                let d = &nodes[j];
                if wants_all {
                    !d.requires.iter().any(|r| r == "*")
                } else {
                    n.requires.contains(&d.plugin_type) || n.optional.contains(&d.plugin_type)
                }
            })
            .map(|j| wave_of[j] + 1)
            .max()
            .unwrap_or(0);
        wave_of.insert(i, w);
        if waves.len() <= w {
            waves.resize_with(w + 1, Vec::new);
        }
        waves[w].push(i);
    }
    waves
}

/// One plugin's init, prepared while its dependencies' state was read and
/// run later with the rest of its wave.
struct PendingInit {
    stats: Arc<PluginStats>,
    began: std::time::Instant,
    work: InitWork,
}

enum InitWork {
    /// A plugin from a library, initialised on a thread of its own.
    Library { init: InitFn, ctx: Box<InitContext>, timeout: Duration, direct: Vec<String> },
    /// An isolated plugin, started in its own host process.
    Isolated {
        n: usize,
        state: PathBuf,
        spec: Box<HostSpec>,
        host: DependencyHost,
        limits: IsolationLimits,
        direct: Vec<String>,
    },
    /// Known without running anything (a proxy, or a failed preparation);
    /// taken by the one `run`.
    Done(Option<Result<Started, PluginState>>),
}

impl PendingInit {
    async fn run(&mut self) -> Result<Started, PluginState> {
        match std::mem::replace(&mut self.work, InitWork::Done(None)) {
            InitWork::Library { init, ctx, timeout, direct } => {
                let id = ctx.id.to_string();
                library_init(init, *ctx, timeout, direct, &id).await
            }
            InitWork::Isolated { n, state, spec, host, limits, direct } => {
                let (plugin, ready) =
                    IsolatedPlugin::start(n, &state, *spec, host, &limits).await.map_err(IsolationError::into_state)?;
                Ok(Started {
                    services: ready.services,
                    internal: ready.internal,
                    streaming: ready.streaming.into_iter().map(|(p, k)| (p, k.into())).collect(),
                    exports: ready.exports,
                    direct,
                    host: Some(plugin.status()),
                    target: Target::Isolated(plugin),
                })
            }
            InitWork::Done(r) => r.unwrap_or_else(|| Err(PluginState::Failed("init ran twice".into()))),
        }
    }
}

/// Prepares the init of one plugin whose dependencies have all been
/// through init: resolves them, merges its config, makes its directories.
fn prepare_init(
    config: &Config,
    c: &Candidate,
    record: &PluginRecord,
    progress: &mut Progress,
    timeouts: PluginTimeouts,
) -> InitWork {
    match prepare_init_inner(config, c, record, progress, timeouts) {
        Ok(work) => work,
        Err(state) => InitWork::Done(Some(Err(state))),
    }
}

fn prepare_init_inner(
    config: &Config,
    c: &Candidate,
    record: &PluginRecord,
    progress: &mut Progress,
    timeouts: PluginTimeouts,
) -> Result<InitWork, PluginState> {
    let Progress { running_by_type, running_routes, isolated, routes, .. } = progress;
    let key = record.key();
    let mut deps: Vec<(String, PluginRef)> = Vec::new();
    for req in &record.requires {
        if req == "*" {
            deps.extend(running_by_type.values().flatten().cloned());
            continue;
        }
        match running_by_type.get(req) {
            Some(v) if !v.is_empty() => deps.extend(v.iter().cloned()),
            _ if c.reg.optional.iter().any(|o| o == req) => {}
            _ => return Err(PluginState::Failed(format!("dependency not available: no plugin of type {req} started"))),
        }
    }

    let defaults: toml::Table = if c.reg.config_defaults.trim().is_empty() {
        toml::Table::new()
    } else {
        c.reg
            .config_defaults
            .parse()
            .map_err(|e| PluginState::Failed(format!("the plugin's default config is not valid TOML: {e}")))?
    };
    let plugin_config = config.plugin_config(&key, &defaults);
    let root = plugin_dir(&config.root, &key);
    let state = plugin_dir(&config.state, &key);
    for dir in [&root, &state] {
        std::fs::create_dir_all(dir)
            .map_err(|e| PluginState::Failed(format!("cannot create {}: {e}", dir.display())))?;
    }

    let owners: Vec<String> = deps.iter().map(|(k, _)| k.clone()).collect();
    let host = DependencyHost {
        public: routes.restricted_to(&owners),
        named: owners.iter().filter_map(|k| Some((k.clone(), running_routes.get(k)?.clone()))).collect(),
        dependencies: deps.into_iter().map(|(_, p)| p).collect(),
    };
    if let Some(limits) = config.isolated_plugins.get(&key) {
        let spec = HostSpec {
            library: c.library.clone(),
            plugin_type: record.plugin_type.clone(),
            id: record.id.clone(),
            config_toml: toml::to_string(&plugin_config).unwrap_or_default(),
            root: root.display().to_string(),
            state: state.display().to_string(),
            grpc_address: config.grpc.address.clone(),
            ttrpc_address: config.ttrpc.address.clone(),
            log_level: config.debug.level.clone(),
            dependencies: host.dependencies.iter().map(DependencySpec::from).collect(),
            dependency_socket: PathBuf::new(),
            listen: PathBuf::new(),
            init_timeout: timeouts.init,
            shutdown_timeout: timeouts.shutdown,
            max_recv_message_size: config.grpc.max_recv_message_size,
            max_send_message_size: config.grpc.max_send_message_size,
        };
        *isolated += 1;
        return Ok(InitWork::Isolated {
            n: *isolated,
            state: config.state.clone(),
            spec: Box::new(spec),
            host,
            limits: limits.clone(),
            direct: owners,
        });
    }
    let ctx = InitContext {
        plugin_type: record.plugin_type.as_str().into(),
        id: record.id.as_str().into(),
        config_toml: toml::to_string(&plugin_config).unwrap_or_default().into(),
        root: root.display().to_string().into(),
        state: state.display().to_string().into(),
        grpc_address: config.grpc.address.as_str().into(),
        ttrpc_address: config.ttrpc.address.as_str().into(),
        log_level: config.debug.level.as_str().into(),
        host: ServiceHost_TO::from_ptr(abi_stable::std_types::RArc::new(host), TD_Opaque),
        log: plugin_log,
    };
    Ok(InitWork::Library { init: c.reg.init, ctx: Box::new(ctx), timeout: timeouts.init, direct: owners })
}

/// Runs a library plugin's init and turns its answer into a [`Started`].
async fn library_init(
    init: InitFn,
    ctx: InitContext,
    timeout: Duration,
    direct: Vec<String>,
    id: &str,
) -> Result<Started, PluginState> {
    match run_init(init, ctx, timeout).await.map_err(PluginState::Failed)? {
        ROk(inst) => Ok(Started {
            services: inst.services.iter().map(|s| s.to_string()).collect(),
            internal: inst.internal.iter().map(|s| s.to_string()).collect(),
            target: Target::Plugin(PluginTarget { handler: Arc::new(inst.handler), lane: Arc::new(Lane::new(id)) }),
            streaming: inst.streaming.iter().map(|m| (m.path.to_string(), m.kind)).collect(),
            exports: inst.exports.iter().map(|t| (t.0.to_string(), t.1.to_string())).collect(),
            direct,
            host: None,
        }),
        RErr(e) => Err(match e.kind {
            InitErrorKind::Skip => PluginState::Skipped(format!("{}: skip plugin", e.message)),
            InitErrorKind::Failed => PluginState::Failed(e.message.into_string()),
        }),
    }
}

/// Runs a plugin's init on a thread of its own, for at most `timeout`.
///
/// Why a thread, and not the library's lane: an init that never returns
/// (a blocking call, a deadlock) would take the lane with it, and with the
/// lane every other plugin of the library. On a thread of its own it costs
/// one leaked thread; the plugin is marked failed and its dependents are
/// not started, while the daemon starts. `Err` says why init gave no answer.
pub(crate) async fn run_init(
    init: InitFn,
    ctx: InitContext,
    timeout: Duration,
) -> Result<RResult<PluginInstance, InitError>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("plugin-init".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(init(ctx))));
            let _ = tx.send(outcome);
        })
        .map_err(|e| format!("cannot start a thread for init: {e}"))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(result))) => Ok(result),
        Ok(Ok(Err(_))) => Err("plugin panicked during init".into()),
        Ok(Err(_)) => Err("plugin init ended without a result".into()),
        Err(_) => Err(format!("init did not finish within {}", format_go_duration(timeout))),
    }
}

pub(crate) async fn shutdown_route(key: &str, route: &Route, timeout: Duration) {
    if let Target::Isolated(p) = &route.target {
        p.stop().await;
        tracing::debug!(plugin = %key, "stopped its host");
    }
    if let Target::Plugin(p) = &route.target {
        let handler = p.handler.clone();
        let fut = p.lane.run(async move { handler.shutdown().await });
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => tracing::debug!(plugin = %key, "stopped"),
            Ok(Err(_)) => tracing::warn!(plugin = %key, "panicked while stopping"),
            Err(_) => tracing::warn!(plugin = %key, "did not stop within {}", format_go_duration(timeout)),
        }
    }
}

impl PluginSet {
    /// Stops the running plugins in reverse init order, each within the
    /// shutdown timeout.
    pub async fn shutdown(&self) {
        for (key, route) in self.running.iter().rev() {
            shutdown_route(key, route, self.timeouts.shutdown).await;
        }
    }
}

/// The daemon's side of plugin logging: a plugin's `tracing` event, with
/// its level and target, re-emitted into the daemon's log.
pub(crate) extern "C" fn plugin_log(
    level: u8,
    target: abi_stable::std_types::RStr<'_>,
    message: abi_stable::std_types::RStr<'_>,
) {
    let (target, message) = (target.as_str(), message.as_str());
    // Never let a logging failure unwind into the plugin.
    let _ = std::panic::catch_unwind(|| match level {
        1 => tracing::error!(target: "plugin", source = target, "{message}"),
        2 => tracing::warn!(target: "plugin", source = target, "{message}"),
        3 => tracing::info!(target: "plugin", source = target, "{message}"),
        4 => tracing::debug!(target: "plugin", source = target, "{message}"),
        _ => tracing::trace!(target: "plugin", source = target, "{message}"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(t: &str, id: &str, req: &[&str], optional: &[&str]) -> Node {
        Node {
            plugin_type: t.into(),
            id: id.into(),
            requires: req.iter().chain(optional).map(|s| s.to_string()).collect(),
            optional: optional.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn independent_plugins_share_a_wave_and_dependents_wait_for_theirs() {
        let nodes = [
            node("t.meta", "m", &["t.content", "t.snap"], &["t.lease"]),
            node("t.snap", "native", &[], &[]),
            node("t.content", "c", &[], &[]),
            node("t.snap", "overlay", &[], &[]),
            node("t.gc", "g", &["t.meta"], &[]),
            node("t.intro", "all", &["*"], &[]),
            node("t.events", "e", &[], &[]),
            node("t.cri", "cri", &["t.events"], &["t.gc", "t.absent"]),
        ];
        let plan = graph::plan(&nodes);
        assert!(plan.refused.is_empty(), "{:?}", plan.refused);
        let mut got = waves(&nodes, &plan.order);
        for w in &mut got {
            w.sort();
        }
        // snapshotters, content and events at once; the metadata plugin
        // after both snapshotters; gc after it; the optional gc orders the
        // CRI plugin after gc; the catch-all last, alone.
        assert_eq!(got, vec![vec![1, 2, 3, 6], vec![0], vec![4], vec![7], vec![5]]);
        // Every plugin is in exactly one wave, and the waves keep the plan's
        // order among themselves.
        let flat: Vec<usize> = waves(&nodes, &plan.order).concat();
        let mut sorted = flat.clone();
        sorted.sort();
        assert_eq!(sorted, (0..nodes.len()).collect::<Vec<_>>());
    }
}
