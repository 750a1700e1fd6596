//! Daemon configuration: containerd's `config.toml` (versions 2 and 3).
//!
//! This module reads the file that `crated` shares with containerd
//! (`/etc/containerd/config.toml` by default), resolves its `imports`
//! (drop-in files), reports unknown keys as warnings instead of failing, and
//! hands each plugin its own `[plugins."<type>.<id>"]` table merged over the
//! plugin's defaults. It also renders the default configuration for
//! `crated config default`.
//!
//! Entry points: [`load`], [`Config::default_v2`], [`Config::to_toml`],
//! [`Config::plugin_config`], [`Config::with_plugin_defaults`] and
//! [`deep_merge`]. Command-line overrides are applied by the caller directly
//! to the public fields of [`Config`].
//!
//! # Import and merge semantics
//!
//! These follow containerd 2.x (`LoadConfigWithPlugins` / `mergeConfig` in
//! `cmd/containerd/server/config/config.go`):
//!
//! * Files are loaded breadth first: the main file, then its imports in the
//!   order listed, then their imports, and so on. Each file is merged over the
//!   result of the previous ones, so a later file wins.
//! * An import path is relative to the directory of the file that names it.
//!   A path containing `*`, `?` or `[` is a glob pattern; its matches are
//!   taken in sorted order and a pattern with no match is not an error. A
//!   plain path that does not exist is an error ([`ConfigError::ImportNotFound`]).
//! * A file reached twice through different branches (a "diamond") is loaded
//!   once, at its first position. A file that imports itself, directly or
//!   through other files, is an error ([`ConfigError::ImportCycle`]);
//!   containerd silently skips such a file, crated refuses it.
//! * Every file must say `version = 2` or `version = 3`, and an imported file
//!   must not declare a higher version than the main file (as containerd).
//!   The merged config keeps the main file's version.
//! * Daemon fields (`root`, `state`, `oom_score`, `[grpc]`, `[debug]`, ...):
//!   a value overrides only if it is not the zero value of its type (empty
//!   string, `0`, `false`), like `mergo.WithOverride`. So `oom_score = 0` or
//!   `root = ""` in any file leaves the earlier value (or the default) alone.
//! * Lists (`disabled_plugins`, `required_plugins`, `imports`, ...) are
//!   appended, skipping entries already present (containerd's
//!   `sliceTransformer`). A later file cannot remove an entry.
//! * `plugins`: tables are merged per plugin key, deeply: nested tables merge
//!   key by key and any other value set in the later file replaces the earlier
//!   one, zero values and arrays included (see [`deep_merge`]).
//! * `proxy_plugins`, `timeouts` and `stream_processors`: merged per key, and
//!   the later file's entry replaces the earlier one as a whole.
//! * `isolated_plugins` (crated's own): a list appends like the other lists;
//!   tables merge field by field.
//!
//! # Unknown keys
//!
//! A key that this module does not know is not an error: [`load`] returns a
//! warning naming the file, the line and the dotted key path (like
//! containerd's "Ignoring unknown key in TOML"). Keys inside `plugins.*`
//! tables belong to the plugins and are never reported here.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Config versions this module accepts.
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
/// Default `root`: persistent data.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd";
/// Default `state`: transient data.
pub const DEFAULT_STATE: &str = "/run/containerd";
/// Default `[grpc] address`.
pub const DEFAULT_GRPC_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Default `[grpc] max_recv_message_size` and `max_send_message_size` (16 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// The daemon configuration: containerd's `config.toml`.
///
/// Every field has a default, so a partial file deserializes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Config file format version: 2 or 3.
    pub version: u32,
    /// Directory for persistent data.
    pub root: PathBuf,
    /// Directory for transient data.
    pub state: PathBuf,
    /// Directory for temporary files ("" = system default).
    pub temp: String,
    /// Directory that crated loads `.so` plugins from ("" = none).
    pub plugin_dir: String,
    /// Plugins (`<type>.<id>`) not to initialise.
    pub disabled_plugins: Vec<String>,
    /// Plugins (`<type>.<id>`) that must load, or the daemon exits.
    pub required_plugins: Vec<String>,
    /// Further config files (paths or glob patterns) merged over this one.
    pub imports: Vec<String>,
    /// OOM score adjustment for the daemon process.
    pub oom_score: i32,
    /// The gRPC server.
    pub grpc: GrpcConfig,
    /// The ttrpc server.
    pub ttrpc: TtrpcConfig,
    /// Logging and the debug (pprof) socket.
    pub debug: DebugConfig,
    /// The metrics endpoint.
    pub metrics: MetricsConfig,
    /// The daemon's own cgroup.
    pub cgroup: CgroupConfig,
    /// Per-plugin tables keyed by `<type>.<id>`,
    /// e.g. `[plugins."io.containerd.gc.v1.scheduler"]`.
    pub plugins: BTreeMap<String, toml::Table>,
    /// Plugins served by another process over gRPC, keyed by id.
    pub proxy_plugins: BTreeMap<String, ProxyPlugin>,
    /// Named timeouts as duration strings ("5s").
    pub timeouts: BTreeMap<String, String>,
    /// Stream processors for content (e.g. decryption), keyed by id.
    pub stream_processors: BTreeMap<String, StreamProcessor>,
    /// crated's own: plugins (`<type>.<id>`) whose library is run in a
    /// plugin host process of their own instead of in the daemon. Written
    /// as a list, or as a table whose entries set resource limits.
    #[serde(skip_serializing_if = "IsolatedPlugins::is_empty")]
    pub isolated_plugins: IsolatedPlugins,
}

/// `[timeouts]` key: how long a plugin's init may take (crated's own key;
/// containerd has no such bound).
pub const TIMEOUT_PLUGIN_INIT: &str = "io.crated.timeout.plugin.init";
/// `[timeouts]` key: how long a plugin's shutdown may take.
pub const TIMEOUT_PLUGIN_SHUTDOWN: &str = "io.crated.timeout.plugin.shutdown";
/// Default of [`TIMEOUT_PLUGIN_INIT`]: generous, since a metadata store or
/// a snapshotter may open a large database at init, yet finite.
pub const DEFAULT_PLUGIN_INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Default of [`TIMEOUT_PLUGIN_SHUTDOWN`].
pub const DEFAULT_PLUGIN_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The bounds the core puts on a plugin's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginTimeouts {
    pub init: std::time::Duration,
    pub shutdown: std::time::Duration,
}

/// `isolated_plugins`: either `["<type>.<id>", ...]` or
/// `[isolated_plugins."<type>.<id>"]` tables with [`IsolationLimits`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "IsolatedPluginsRepr", into = "BTreeMap<String, IsolationLimits>")]
pub struct IsolatedPlugins(pub BTreeMap<String, IsolationLimits>);

impl IsolatedPlugins {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The limits of `key` if it is isolated.
    pub fn get(&self, key: &str) -> Option<&IsolationLimits> {
        self.0.get(key)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IsolatedPluginsRepr {
    List(Vec<String>),
    Table(BTreeMap<String, IsolationLimits>),
}

impl From<IsolatedPluginsRepr> for IsolatedPlugins {
    fn from(r: IsolatedPluginsRepr) -> Self {
        IsolatedPlugins(match r {
            IsolatedPluginsRepr::List(keys) => keys.into_iter().map(|k| (k, IsolationLimits::default())).collect(),
            IsolatedPluginsRepr::Table(t) => t,
        })
    }
}

impl From<IsolatedPlugins> for BTreeMap<String, IsolationLimits> {
    fn from(i: IsolatedPlugins) -> Self {
        i.0
    }
}

/// Resource limits of one plugin host, applied through a cgroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsolationLimits {
    /// Memory limit: bytes, or a number with `K`, `M` or `G` (powers of
    /// 1024), e.g. `"256M"`. Empty: none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub memory_limit: String,
    /// CPU limit in CPUs, e.g. `0.5`. Zero: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub cpus: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Why a value of the config is unusable (checked before anything starts).
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("[timeouts] {key:?}: {source}")]
    Timeout { key: &'static str, source: crated_plugin_api::duration::DurationError },
    #[error("[timeouts] {key:?}: a plugin timeout must be positive, not {value:?}")]
    NonPositiveTimeout { key: &'static str, value: String },
    #[error("isolated_plugins {key:?}: {message}")]
    Isolation { key: String, message: String },
}

impl IsolationLimits {
    /// The memory limit in bytes, if any.
    pub fn memory_bytes(&self) -> Result<Option<u64>, String> {
        let text = self.memory_limit.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let (number, scale) = match text.as_bytes()[text.len() - 1].to_ascii_uppercase() {
            b'K' => (&text[..text.len() - 1], 1u64 << 10),
            b'M' => (&text[..text.len() - 1], 1 << 20),
            b'G' => (&text[..text.len() - 1], 1 << 30),
            _ => (text, 1),
        };
        number
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| format!("memory_limit {text:?} is not a size such as \"256M\" or 268435456"))
    }

    /// Checks the limits' values.
    pub fn validate(&self) -> Result<(), String> {
        self.memory_bytes()?;
        if !(self.cpus >= 0.0 && self.cpus.is_finite()) {
            return Err(format!("cpus must be a positive number of CPUs, not {}", self.cpus));
        }
        Ok(())
    }
}

/// `[grpc]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcConfig {
    pub address: String,
    pub tcp_address: String,
    pub tcp_tls_ca: String,
    pub tcp_tls_cert: String,
    pub tcp_tls_key: String,
    pub tcp_tls_common_name: String,
    pub uid: u32,
    pub gid: u32,
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
}

/// `[ttrpc]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TtrpcConfig {
    pub address: String,
    pub uid: u32,
    pub gid: u32,
}

/// `[debug]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DebugConfig {
    pub address: String,
    pub uid: u32,
    pub gid: u32,
    pub level: String,
    /// "text" or "json" ("" = text).
    pub format: String,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    pub address: String,
    pub grpc_histogram: bool,
}

/// `[cgroup]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupConfig {
    pub path: String,
}

/// `[proxy_plugins.<id>]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyPlugin {
    /// Plugin type, e.g. "snapshot" or "content".
    #[serde(rename = "type")]
    pub r#type: String,
    /// Socket address of the serving process.
    pub address: String,
    pub platform: String,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
}

/// `[stream_processors.<id>]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamProcessor {
    pub accepts: Vec<String>,
    pub returns: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: DEFAULT_GRPC_ADDRESS.to_string(),
            tcp_address: String::new(),
            tcp_tls_ca: String::new(),
            tcp_tls_cert: String::new(),
            tcp_tls_key: String::new(),
            tcp_tls_common_name: String::new(),
            uid: 0,
            gid: 0,
            max_recv_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_send_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::default_v2()
    }
}

/// A loaded configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The main file merged with all its imports.
    pub config: Config,
    /// One line per ignored unknown key: file, line and dotted key path.
    pub warnings: Vec<String>,
    /// The files read, in merge order (the main file first).
    pub files: Vec<PathBuf>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Malformed TOML, or a value of the wrong type.
    #[error(
        "invalid config file {}{}: {message}{}",
        path.display(),
        location(*line, *column),
        key.as_ref().map(|k| format!(" (key `{k}`)")).unwrap_or_default()
    )]
    Parse {
        path: PathBuf,
        /// 1-based line, if known.
        line: Option<usize>,
        /// 1-based column (in characters), if known.
        column: Option<usize>,
        /// Dotted path of the offending key, if known.
        key: Option<String>,
        /// The TOML parser's description.
        message: String,
    },
    /// `version` missing (containerd's version 1) or not 2 or 3.
    #[error(
        "{}: {}; crated supports config version 2 and 3 (add `version = 2` or `version = 3` at the top)",
        path.display(),
        match found {
            None => "no `version` key, which means a version 1 config".to_string(),
            Some(v) => format!("unsupported config version {v}"),
        }
    )]
    UnsupportedVersion {
        path: PathBuf,
        /// The value written, as TOML; `None` when the key is missing.
        found: Option<String>,
    },
    /// An imported file declares a higher version than the main file.
    #[error(
        "{}: imported config version {version} is higher than the main config version {main_version}",
        path.display()
    )]
    ImportVersion { path: PathBuf, version: u32, main_version: u32 },
    /// `disabled_plugins` / `required_plugins` entry that is not a plugin URI.
    #[error("{}: invalid {field} entry {value:?}: expected a plugin URI like io.containerd.<type>.<id>", path.display())]
    InvalidPluginUri { path: PathBuf, field: &'static str, value: String },
    /// A non-glob import does not exist.
    #[error("{}: imported config file {} not found", from.display(), path.display())]
    ImportNotFound { path: PathBuf, from: PathBuf },
    /// A glob import pattern is malformed.
    #[error("{}: invalid import pattern {pattern:?}: {message}", from.display())]
    ImportPattern { pattern: String, from: PathBuf, message: String },
    /// Files import each other in a loop; the chain starts and ends with the same file.
    #[error(
        "config import cycle: {}",
        chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> ")
    )]
    ImportCycle { chain: Vec<PathBuf> },
    /// The merged tables did not form a valid config (should not happen).
    #[error("{}: cannot merge config imports: {message}", path.display())]
    Merge { path: PathBuf, message: String },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

impl Config {
    /// The built-in defaults, version 2: what `crated config default` prints.
    pub fn default_v2() -> Config {
        Config {
            version: 2,
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            temp: String::new(),
            plugin_dir: String::new(),
            disabled_plugins: Vec::new(),
            required_plugins: Vec::new(),
            imports: Vec::new(),
            oom_score: 0,
            grpc: GrpcConfig::default(),
            ttrpc: TtrpcConfig::default(),
            debug: DebugConfig::default(),
            metrics: MetricsConfig::default(),
            cgroup: CgroupConfig::default(),
            plugins: BTreeMap::new(),
            proxy_plugins: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            stream_processors: BTreeMap::new(),
            isolated_plugins: IsolatedPlugins::default(),
        }
    }

    /// The plugin life-cycle bounds from `[timeouts]`, or why they are
    /// unusable.
    pub fn plugin_timeouts(&self) -> Result<PluginTimeouts, ValueError> {
        let read = |key: &'static str, default: std::time::Duration| -> Result<std::time::Duration, ValueError> {
            let Some(text) = self.timeouts.get(key) else { return Ok(default) };
            let nanos = crated_plugin_api::duration::parse_go_duration(text)
                .map_err(|source| ValueError::Timeout { key, source })?;
            if nanos <= 0 {
                return Err(ValueError::NonPositiveTimeout { key, value: text.clone() });
            }
            Ok(std::time::Duration::from_nanos(nanos as u64))
        };
        Ok(PluginTimeouts {
            init: read(TIMEOUT_PLUGIN_INIT, DEFAULT_PLUGIN_INIT_TIMEOUT)?,
            shutdown: read(TIMEOUT_PLUGIN_SHUTDOWN, DEFAULT_PLUGIN_SHUTDOWN_TIMEOUT)?,
        })
    }

    /// Checks `isolated_plugins`: plugin URIs with usable limits.
    pub fn check_isolation(&self) -> Result<(), ValueError> {
        for (key, limits) in &self.isolated_plugins.0 {
            let bad = |message: String| ValueError::Isolation { key: key.clone(), message };
            if key.rsplit_once('.').is_none_or(|(t, id)| t.is_empty() || id.is_empty()) {
                return Err(bad("expected a plugin URI like io.example.hello.v1.hello".into()));
            }
            limits.validate().map_err(bad)?;
        }
        Ok(())
    }

    /// Renders the config as TOML, or fails if a value has no TOML form
    /// (an integer above `i64::MAX`, a non-UTF-8 path).
    pub fn try_to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// Renders the config as TOML. [`load`]ing the output gives back an equal
    /// config. If a value cannot be represented (see [`Config::try_to_toml`])
    /// the result is a TOML comment saying why.
    pub fn to_toml(&self) -> String {
        self.try_to_toml().unwrap_or_else(|e| format!("# cannot render config as TOML: {e}\n"))
    }

    /// Puts each plugin's default table under `plugins`, with the user's
    /// values for that plugin deep-merged on top (the user wins).
    pub fn with_plugin_defaults(mut self, defaults: impl IntoIterator<Item = (String, toml::Table)>) -> Config {
        for (key, mut table) in defaults {
            if let Some(user) = self.plugins.remove(&key) {
                deep_merge(&mut table, user);
            }
            self.plugins.insert(key, table);
        }
        self
    }

    /// The configuration of plugin `type_id` (`<type>.<id>`): `defaults` with
    /// the user's `[plugins."<type>.<id>"]` table deep-merged on top.
    pub fn plugin_config(&self, type_id: &str, defaults: &toml::Table) -> toml::Table {
        let mut table = defaults.clone();
        if let Some(user) = self.plugins.get(type_id) {
            deep_merge(&mut table, user.clone());
        }
        table
    }
}

/// Merges `over` into `base`: where both hold a table under the same key the
/// two are merged recursively; any other value in `over` (arrays included)
/// replaces the one in `base`.
pub fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => deep_merge(dst, src),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Loads the config file at `path` and everything it imports.
///
/// See the module documentation for the import and merge rules.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let mut merged = toml::Table::new();
    let mut warnings = Vec::new();
    let mut files = Vec::new();
    let mut main_version = None;

    // Breadth-first, like containerd. `seen` holds canonical paths; `edges`
    // records who imports whom, to find cycles once everything is read.
    let mut pending: VecDeque<PathBuf> = VecDeque::from([path.to_path_buf()]);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut edges: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    let mut shown: HashMap<PathBuf, PathBuf> = HashMap::new();

    while let Some(file) = pending.pop_front() {
        let canonical = fs::canonicalize(&file).map_err(|source| ConfigError::Io { path: file.clone(), source })?;
        if !seen.insert(canonical.clone()) {
            continue;
        }
        shown.insert(canonical.clone(), file.clone());

        let parsed = parse_file(&file)?;
        match main_version {
            None => main_version = Some(parsed.version),
            Some(main) if parsed.version > main => {
                return Err(ConfigError::ImportVersion { path: file, version: parsed.version, main_version: main });
            }
            Some(_) => {}
        }
        warnings.extend(parsed.warnings);

        let imports = resolve_imports(&file, &parsed.imports)?;
        let mut targets = Vec::with_capacity(imports.len());
        for import in &imports {
            targets.push(fs::canonicalize(import).map_err(|source| ConfigError::Io { path: import.clone(), source })?);
        }
        edges.insert(canonical, targets);
        pending.extend(imports);

        merge_file(&mut merged, parsed.table);
        files.push(file);
    }

    if let Some(cycle) = find_cycle(&edges) {
        let chain = cycle.into_iter().map(|p| shown.get(&p).cloned().unwrap_or(p)).collect();
        return Err(ConfigError::ImportCycle { chain });
    }

    let mut config: Config = toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| {
        ConfigError::Merge { path: path.to_path_buf(), message: e.message().to_string() }
    })?;
    config.version = main_version.unwrap_or(2);
    Ok(Loaded { config, warnings, files })
}

/// One file, checked and parsed.
struct ParsedFile {
    version: u32,
    /// The raw table, for merging.
    table: toml::Table,
    imports: Vec<String>,
    warnings: Vec<String>,
}

fn parse_file(path: &Path) -> Result<ParsedFile, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;

    // Syntax first (the raw table is also what gets merged).
    let table: toml::Table = toml::from_str(&text).map_err(|e| parse_error(path, &text, &e))?;

    // Then the version, before type errors that a v1 file would likely have.
    let version = match table.get("version") {
        None => {
            return Err(ConfigError::UnsupportedVersion { path: path.to_path_buf(), found: None });
        }
        Some(toml::Value::Integer(v)) if *v == 2 || *v == 3 => *v as u32,
        Some(other) => {
            return Err(ConfigError::UnsupportedVersion { path: path.to_path_buf(), found: Some(other.to_string()) });
        }
    };

    // Then types, collecting unknown keys.
    let mut ignored: Vec<Vec<String>> = Vec::new();
    let typed: Config = toml::de::Deserializer::parse(&text)
        .and_then(|de| {
            serde_ignored::deserialize(de, |p| {
                let mut segments = Vec::new();
                path_segments(&p, &mut segments);
                ignored.push(segments);
            })
        })
        .map_err(|e| parse_error(path, &text, &e))?;

    for (field, list) in [("disabled_plugins", &typed.disabled_plugins), ("required_plugins", &typed.required_plugins)]
    {
        if let Some(bad) = list.iter().find(|p| !p.contains('.')) {
            return Err(ConfigError::InvalidPluginUri { path: path.to_path_buf(), field, value: bad.clone() });
        }
    }

    let warnings = if ignored.is_empty() {
        Vec::new()
    } else {
        let doc = toml::de::DeTable::parse(&text).ok();
        let mut located: Vec<(Option<usize>, String)> = ignored
            .iter()
            .map(|segments| {
                let line = doc
                    .as_ref()
                    .and_then(|d| key_offset(d.get_ref(), segments))
                    .map(|offset| line_col(&text, offset).0);
                let at = match line {
                    Some(l) => format!("{}:{l}", path.display()),
                    None => path.display().to_string(),
                };
                let warning = format!("{at}: ignoring unknown config key `{}`", dotted(segments));
                (line, warning)
            })
            .collect();
        // In file order (the deserializer visits keys in its own order).
        located.sort_by_key(|(line, _)| line.unwrap_or(usize::MAX));
        located.into_iter().map(|(_, w)| w).collect()
    };

    Ok(ParsedFile { version, table, imports: typed.imports, warnings })
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            let key = toml::de::DeTable::parse(text)
                .ok()
                .and_then(|doc| key_at(doc.get_ref(), span.start))
                .map(|segments| dotted(&segments));
            (Some(l), Some(c), key)
        }
        None => (None, None, None),
    };
    ConfigError::Parse { path: path.to_path_buf(), line, column, key, message: e.message().trim_end().to_string() }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn path_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            path_segments(parent, out);
            out.push(index.to_string());
        }
        P::Map { parent, key } => {
            path_segments(parent, out);
            out.push(key.clone());
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => path_segments(parent, out),
    }
}

/// `a.b."c.d"`: bare keys as they are, others quoted as TOML strings.
fn dotted(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| {
            let bare = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if bare {
                s.clone()
            } else {
                toml::Value::String(s.clone()).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Byte offset of the key (or array element) at `segments` in the document.
fn key_offset(doc: &toml::de::DeTable<'_>, segments: &[String]) -> Option<usize> {
    let (first, rest) = segments.split_first()?;
    let (key, value) = doc.iter().find(|(k, _)| k.get_ref().as_ref() == first.as_str())?;
    if rest.is_empty() {
        return Some(key.span().start);
    }
    value_offset(value, rest)
}

fn value_offset(value: &toml::Spanned<toml::de::DeValue<'_>>, segments: &[String]) -> Option<usize> {
    match value.get_ref() {
        toml::de::DeValue::Table(t) => key_offset(t, segments),
        toml::de::DeValue::Array(items) => {
            let (first, rest) = segments.split_first()?;
            let item = items.get(first.parse::<usize>().ok()?)?;
            if rest.is_empty() {
                Some(item.span().start)
            } else {
                value_offset(item, rest)
            }
        }
        _ => None,
    }
}

/// Key path of the innermost value whose span contains byte `pos`.
fn key_at(doc: &toml::de::DeTable<'_>, pos: usize) -> Option<Vec<String>> {
    fn table(t: &toml::de::DeTable<'_>, pos: usize, path: &mut Vec<String>, best: &mut Option<(usize, Vec<String>)>) {
        for (k, v) in t.iter() {
            path.push(k.get_ref().to_string());
            value(v, pos, path, best);
            path.pop();
        }
    }
    fn value(
        v: &toml::Spanned<toml::de::DeValue<'_>>,
        pos: usize,
        path: &mut Vec<String>,
        best: &mut Option<(usize, Vec<String>)>,
    ) {
        let span = v.span();
        if span.start <= pos && pos < span.end.max(span.start + 1) {
            let len = span.end.saturating_sub(span.start);
            if best.as_ref().is_none_or(|(l, _)| len <= *l) {
                *best = Some((len, path.clone()));
            }
        }
        match v.get_ref() {
            toml::de::DeValue::Table(t) => table(t, pos, path, best),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    value(item, pos, path, best);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut best = None;
    table(doc, pos, &mut Vec::new(), &mut best);
    best.map(|(_, p)| p)
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Import entries of `from` as file paths, in order.
fn resolve_imports(from: &Path, imports: &[String]) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = match from.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut out = Vec::new();
    for import in imports {
        if is_glob(import) {
            let pattern = if Path::new(import).is_absolute() {
                import.clone()
            } else {
                // The directory is literal text, not part of the pattern.
                let dir = dir.to_str().ok_or_else(|| ConfigError::ImportPattern {
                    pattern: import.clone(),
                    from: from.to_path_buf(),
                    message: "the config file's directory is not valid UTF-8".to_string(),
                })?;
                format!("{}/{}", glob::Pattern::escape(dir), import)
            };
            let matches = glob::glob(&pattern).map_err(|e| ConfigError::ImportPattern {
                pattern: import.clone(),
                from: from.to_path_buf(),
                message: e.to_string(),
            })?;
            let mut found = Vec::new();
            for entry in matches {
                let p = entry.map_err(|e| ConfigError::Io {
                    path: e.path().to_path_buf(),
                    source: io::Error::new(e.error().kind(), e.error().to_string()),
                })?;
                if p.is_file() {
                    found.push(p);
                }
            }
            found.sort();
            out.extend(found);
        } else {
            let p = dir.join(import);
            if !p.exists() {
                return Err(ConfigError::ImportNotFound { path: p, from: from.to_path_buf() });
            }
            out.push(p);
        }
    }
    Ok(out)
}

/// A cycle in the import graph, as a chain that starts and ends with the same file.
fn find_cycle(edges: &HashMap<PathBuf, Vec<PathBuf>>) -> Option<Vec<PathBuf>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    fn visit<'a>(
        node: &'a PathBuf,
        edges: &'a HashMap<PathBuf, Vec<PathBuf>>,
        marks: &mut HashMap<&'a PathBuf, Mark>,
        stack: &mut Vec<&'a PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Active) => {
                let start = stack.iter().position(|n| *n == node).unwrap_or(0);
                let mut chain: Vec<PathBuf> = stack[start..].iter().map(|p| (*p).clone()).collect();
                chain.push(node.clone());
                return Some(chain);
            }
            None => {}
        }
        marks.insert(node, Mark::Active);
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    let mut nodes: Vec<&PathBuf> = edges.keys().collect();
    nodes.sort();
    for node in nodes {
        if let Some(c) = visit(node, edges, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

/// Merges one file's raw table over the accumulated one (module docs).
fn merge_file(to: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (key.as_str(), value) {
            ("version", _) => {}
            ("plugins", toml::Value::Table(src)) => match to.get_mut("plugins") {
                Some(toml::Value::Table(dst)) => deep_merge(dst, src),
                _ => {
                    to.insert(key, toml::Value::Table(src));
                }
            },
            ("proxy_plugins" | "timeouts" | "stream_processors", toml::Value::Table(src)) => match to.get_mut(&key) {
                Some(toml::Value::Table(dst)) => dst.extend(src),
                _ => {
                    to.insert(key, toml::Value::Table(src));
                }
            },
            (_, value) => merge_field(to, key, value),
        }
    }
}

/// mergo.WithOverride plus containerd's slice transformer: non-zero scalars
/// override, lists append without duplicates, tables merge field by field.
fn merge_field(to: &mut toml::Table, key: String, value: toml::Value) {
    use toml::Value as V;
    match (to.get_mut(&key), value) {
        (Some(V::Table(dst)), V::Table(src)) => {
            for (k, v) in src {
                merge_field(dst, k, v);
            }
        }
        (Some(V::Array(dst)), V::Array(src)) => {
            for item in src {
                if !dst.contains(&item) {
                    dst.push(item);
                }
            }
        }
        (_, V::String(s)) if s.is_empty() => {}
        (_, V::Integer(0)) | (_, V::Boolean(false)) => {}
        (_, V::Float(0.0)) => {}
        (_, V::Array(a)) if a.is_empty() => {}
        (_, value) => {
            to.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, text).unwrap();
        p
    }

    fn load_str(text: &str) -> (tempfile::TempDir, Result<Loaded, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "config.toml", text);
        let r = load(&p);
        (dir, r)
    }

    #[test]
    fn isolated_plugins_as_a_list_or_with_limits_and_plugin_timeouts() {
        let (_d, r) = load_str("version = 2\nisolated_plugins = [\"io.example.a.v1.a\"]\n");
        let c = r.unwrap().config;
        assert_eq!(c.isolated_plugins.get("io.example.a.v1.a"), Some(&IsolationLimits::default()));
        c.check_isolation().unwrap();

        let text = "version = 2\n[isolated_plugins.\"io.example.b.v1.b\"]\nmemory_limit = \"64M\"\ncpus = 0.5\n\
                    [timeouts]\n\"io.crated.timeout.plugin.init\" = \"2s\"\n";
        let (_d, r) = load_str(text);
        let l = r.unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let limits = l.config.isolated_plugins.get("io.example.b.v1.b").unwrap();
        assert_eq!(limits.memory_bytes(), Ok(Some(64 << 20)));
        assert_eq!(limits.cpus, 0.5);
        let t = l.config.plugin_timeouts().unwrap();
        assert_eq!((t.init, t.shutdown), (std::time::Duration::from_secs(2), DEFAULT_PLUGIN_SHUTDOWN_TIMEOUT));
        // What is written comes back.
        let again: Config = toml::from_str(&l.config.to_toml()).unwrap();
        assert_eq!(again.isolated_plugins, l.config.isolated_plugins);
        // Nothing is written when nothing is isolated (containerd's own output).
        assert!(!Config::default_v2().to_toml().contains("isolated_plugins"));

        // Bad values are refused with the key named.
        let (_d, r) = load_str("version = 2\n[isolated_plugins.\"io.example.b.v1.b\"]\nmemory_limit = \"lots\"\n");
        let e = r.unwrap().config.check_isolation().unwrap_err().to_string();
        assert!(e.contains("io.example.b.v1.b") && e.contains("memory_limit"), "{e}");
        let (_d, r) = load_str("version = 2\nisolated_plugins = [\"nodots\"]\n");
        assert!(r.unwrap().config.check_isolation().is_err());
        for bad in ["soon", "0s", "-1s"] {
            let mut c = Config::default_v2();
            c.timeouts.insert(TIMEOUT_PLUGIN_SHUTDOWN.into(), bad.into());
            let e = c.plugin_timeouts().unwrap_err().to_string();
            assert!(e.contains(TIMEOUT_PLUGIN_SHUTDOWN), "{e}");
        }
    }

    #[test]
    fn minimal_v2_file() {
        let (_d, r) = load_str("version = 2\nroot = \"/srv/ctd\"\n[grpc]\nuid = 7\n");
        let l = r.unwrap();
        assert_eq!(l.config.version, 2);
        assert_eq!(l.config.root, PathBuf::from("/srv/ctd"));
        assert_eq!(l.config.grpc.uid, 7);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.files.len(), 1);
    }

    #[test]
    fn v3_file() {
        let text = r#"
version = 3
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs"]
required_plugins = ["io.containerd.grpc.v1.cri"]
plugin_dir = "/usr/lib/crated/plugins"
oom_score = -999

[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.02
  deletion_threshold = 0

[proxy_plugins.stargz]
  type = "snapshot"
  address = "/run/stargz.sock"
  [proxy_plugins.stargz.exports]
    root = "/var/lib/stargz"

[timeouts]
  "io.containerd.timeout.shim.cleanup" = "5s"
"#;
        let (_d, r) = load_str(text);
        let l = r.unwrap();
        let c = &l.config;
        assert_eq!(c.version, 3);
        assert_eq!(c.disabled_plugins, ["io.containerd.snapshotter.v1.btrfs"]);
        assert_eq!(c.required_plugins, ["io.containerd.grpc.v1.cri"]);
        assert_eq!(c.plugin_dir, "/usr/lib/crated/plugins");
        assert_eq!(c.oom_score, -999);
        let gc = &c.plugins["io.containerd.gc.v1.scheduler"];
        assert_eq!(gc["pause_threshold"].as_float(), Some(0.02));
        let stargz = &c.proxy_plugins["stargz"];
        assert_eq!(stargz.r#type, "snapshot");
        assert_eq!(stargz.address, "/run/stargz.sock");
        assert_eq!(stargz.exports["root"], "/var/lib/stargz");
        assert_eq!(c.timeouts["io.containerd.timeout.shim.cleanup"], "5s");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn defaults_filled() {
        let (_d, r) = load_str("version = 2\n");
        let c = r.unwrap().config;
        assert_eq!(c, Config::default_v2());
        assert_eq!(c.root, PathBuf::from("/var/lib/containerd"));
        assert_eq!(c.state, PathBuf::from("/run/containerd"));
        assert_eq!(c.grpc.address, "/run/containerd/containerd.sock");
        assert_eq!(c.grpc.max_recv_message_size, 16777216);
        assert_eq!(c.grpc.max_send_message_size, 16777216);
        assert_eq!(c.temp, "");
        assert_eq!(c.plugin_dir, "");

        // A partial section keeps the other defaults of that section.
        let (_d, r) = load_str("version = 2\n[grpc]\ngid = 5\n");
        let c = r.unwrap().config;
        assert_eq!(c.grpc.gid, 5);
        assert_eq!(c.grpc.address, DEFAULT_GRPC_ADDRESS);
        assert_eq!(c.grpc.max_recv_message_size, DEFAULT_MAX_MESSAGE_SIZE);
    }

    #[test]
    fn unknown_keys_warn_with_file_line_and_path() {
        let text = "version = 2\nzzz_bogus = 1\n[grpc]\naddress = \"/x.sock\"\ntypo_addr = \"y\"\n[proxy_plugins.p]\naddress = \"/p\"\nwhat = 1\n";
        let (dir, r) = load_str(text);
        let l = r.unwrap();
        let file = dir.path().join("config.toml").display().to_string();
        assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
        assert!(l.warnings[0].contains(&format!("{file}:2")), "{}", l.warnings[0]);
        assert!(l.warnings[0].contains("`zzz_bogus`"));
        assert!(l.warnings[1].contains(&format!("{file}:5")), "{}", l.warnings[1]);
        assert!(l.warnings[1].contains("`grpc.typo_addr`"));
        assert!(l.warnings[2].contains(&format!("{file}:8")), "{}", l.warnings[2]);
        assert!(l.warnings[2].contains("`proxy_plugins.p.what`"));
        // Known keys are still read.
        assert_eq!(l.config.grpc.address, "/x.sock");
    }

    #[test]
    fn unknown_keys_inside_plugin_tables_do_not_warn() {
        let text = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  anything_at_all = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
[proxy_plugins.p.exports]
  free_form = "ok"
"#;
        let (_d, r) = load_str(text);
        let l = r.unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let cri = &l.config.plugins["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["anything_at_all"].as_bool(), Some(true));
        assert_eq!(cri["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let (dir, r) = load_str("version = 2\n\n[grpc]\naddress = \"unterminated\n");
        let e = r.unwrap_err();
        match &e {
            ConfigError::Parse { path, line, .. } => {
                assert_eq!(path, &dir.path().join("config.toml"));
                assert_eq!(*line, Some(4));
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("config.toml"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let (_d, r) = load_str("version = 2\n[grpc]\naddress = \"/a\"\nuid = \"x\"\n");
        let e = r.unwrap_err();
        match &e {
            ConfigError::Parse { line, column, key, .. } => {
                assert_eq!(*line, Some(4));
                assert_eq!(*column, Some(7));
                assert_eq!(key.as_deref(), Some("grpc.uid"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("`grpc.uid`"), "{msg}");
        assert!(msg.contains("line 4, column 7"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
    }

    #[test]
    fn missing_version_is_an_error() {
        let (_d, r) = load_str("root = \"/x\"\n");
        let e = r.unwrap_err();
        assert!(matches!(e, ConfigError::UnsupportedVersion { found: None, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("config.toml") && msg.contains("version 2 and 3"), "{msg}");
    }

    #[test]
    fn version_4_is_an_error() {
        let (_d, r) = load_str("version = 4\n");
        let e = r.unwrap_err();
        assert!(matches!(&e, ConfigError::UnsupportedVersion { found: Some(v), .. } if v == "4"), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("unsupported config version 4"), "{msg}");
        assert!(msg.contains("version 2 and 3"), "{msg}");
        let (_d, r) = load_str("version = 1\n");
        assert!(matches!(r, Err(ConfigError::UnsupportedVersion { .. })));
    }

    #[test]
    fn io_error_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing.toml");
        let e = load(&p).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e.to_string().contains("missing.toml"));
    }

    #[test]
    fn imports_relative_glob_and_override() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "etc/config.toml",
            r#"
version = 3
root = "/main/root"
state = "/main/state"
oom_score = 5
disabled_plugins = ["a.one"]
imports = ["conf.d/*.toml", "extra.toml"]

[grpc]
  address = "/main.sock"
  uid = 10

[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.02
  schedule_delay = "0s"
  [plugins."io.containerd.gc.v1.scheduler".nested]
    a = 1
    b = 2

[proxy_plugins.p]
  type = "snapshot"
  address = "/p.sock"
  capabilities = ["x"]

[timeouts]
  t1 = "1s"
  t2 = "2s"
"#,
        );
        write(
            dir.path(),
            "etc/conf.d/10-first.toml",
            r#"
version = 2
root = "/first/root"
oom_score = 0
disabled_plugins = ["a.two", "a.one"]
[grpc]
  uid = 0
  gid = 20
[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.5
  [plugins."io.containerd.gc.v1.scheduler".nested]
    b = 3
[proxy_plugins.p]
  address = "/q.sock"
[timeouts]
  t2 = "20s"
"#,
        );
        write(
            dir.path(),
            "etc/conf.d/20-second.toml",
            "version = 2\nroot = \"/second/root\"\n[plugins.\"io.containerd.gc.v1.scheduler\"]\nschedule_delay = \"1s\"\n",
        );
        write(dir.path(), "etc/conf.d/ignored.txt", "not toml [");
        write(dir.path(), "etc/extra.toml", "version = 2\nstate = \"/extra/state\"\nimports = [\"sub/leaf.toml\"]\n");
        // Relative to extra.toml's own directory.
        write(dir.path(), "etc/sub/leaf.toml", "version = 2\ntemp = \"/leaf/tmp\"\n");

        let l = load(&main).unwrap();
        let c = &l.config;
        let names: Vec<String> =
            l.files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["config.toml", "10-first.toml", "20-second.toml", "extra.toml", "leaf.toml"]);
        assert_eq!(c.version, 3, "main file's version is kept");
        // Later non-zero scalars win, zero values do not override.
        assert_eq!(c.root, PathBuf::from("/second/root"));
        assert_eq!(c.state, PathBuf::from("/extra/state"));
        assert_eq!(c.temp, "/leaf/tmp");
        assert_eq!(c.oom_score, 5);
        assert_eq!(c.grpc.address, "/main.sock");
        assert_eq!(c.grpc.uid, 10);
        assert_eq!(c.grpc.gid, 20);
        // Lists append without duplicates.
        assert_eq!(c.disabled_plugins, ["a.one", "a.two"]);
        // Plugin tables merge deeply, later wins.
        let gc = &c.plugins["io.containerd.gc.v1.scheduler"];
        assert_eq!(gc["pause_threshold"].as_float(), Some(0.5));
        assert_eq!(gc["schedule_delay"].as_str(), Some("1s"));
        assert_eq!(gc["nested"]["a"].as_integer(), Some(1));
        assert_eq!(gc["nested"]["b"].as_integer(), Some(3));
        // Proxy plugins are replaced whole, timeouts per key.
        let p = &c.proxy_plugins["p"];
        assert_eq!(p.address, "/q.sock");
        assert_eq!(p.r#type, "");
        assert!(p.capabilities.is_empty());
        assert_eq!(c.timeouts["t1"], "1s");
        assert_eq!(c.timeouts["t2"], "20s");
    }

    #[test]
    fn import_not_found_and_glob_without_match() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "version = 2\nimports = [\"nope.toml\"]\n");
        let e = load(&main).unwrap_err();
        assert!(matches!(e, ConfigError::ImportNotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("nope.toml"));

        let main = write(dir.path(), "config.toml", "version = 2\nimports = [\"none.d/*.toml\"]\n");
        let l = load(&main).unwrap();
        assert_eq!(l.files.len(), 1);
    }

    #[test]
    fn import_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "version = 2\nimports = [\"a.toml\"]\n");
        write(dir.path(), "a.toml", "version = 2\nimports = [\"b.toml\"]\n");
        write(dir.path(), "b.toml", "version = 2\nimports = [\"./a.toml\"]\n");
        let e = load(&main).unwrap_err();
        match &e {
            ConfigError::ImportCycle { chain } => {
                assert_eq!(chain.first(), chain.last());
                assert!(chain.len() >= 3, "{chain:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("a.toml"));

        // A file importing itself.
        let main = write(dir.path(), "config.toml", "version = 2\nimports = [\"config.toml\"]\n");
        assert!(matches!(load(&main), Err(ConfigError::ImportCycle { .. })));

        // A diamond is not a cycle: the shared file is read once.
        let main = write(dir.path(), "config.toml", "version = 2\nimports = [\"l.toml\", \"r.toml\"]\n");
        write(dir.path(), "l.toml", "version = 2\nimports = [\"shared.toml\"]\n");
        write(dir.path(), "r.toml", "version = 2\nimports = [\"shared.toml\"]\n");
        write(dir.path(), "shared.toml", "version = 2\n");
        assert_eq!(load(&main).unwrap().files.len(), 4);
    }

    #[test]
    fn import_errors_name_the_imported_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "version = 2\nimports = [\"bad.toml\"]\n");
        write(dir.path(), "bad.toml", "version = 2\n[grpc]\ngid = true\n");
        let e = load(&main).unwrap_err();
        match &e {
            ConfigError::Parse { path, line, key, .. } => {
                assert!(path.ends_with("bad.toml"));
                assert_eq!(*line, Some(3));
                assert_eq!(key.as_deref(), Some("grpc.gid"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Import without version, and an import above the main version.
        write(dir.path(), "bad.toml", "root = \"/x\"\n");
        assert!(matches!(load(&main), Err(ConfigError::UnsupportedVersion { .. })));
        write(dir.path(), "bad.toml", "version = 3\n");
        assert!(matches!(load(&main), Err(ConfigError::ImportVersion { .. })));
    }

    #[test]
    fn invalid_plugin_uri_is_an_error() {
        let (_d, r) = load_str("version = 2\ndisabled_plugins = [\"cri\"]\n");
        assert!(matches!(r, Err(ConfigError::InvalidPluginUri { .. })));
    }

    #[test]
    fn plugin_config_merges_user_over_defaults() {
        let (_d, r) = load_str(
            "version = 2\n[plugins.\"io.containerd.gc.v1.scheduler\"]\npause_threshold = 0.5\n[plugins.\"io.containerd.gc.v1.scheduler\".inner]\nx = 9\n",
        );
        let c = r.unwrap().config;
        let defaults: toml::Table =
            toml::from_str("pause_threshold = 0.02\ndeletion_threshold = 0\n[inner]\nx = 1\ny = 2\n").unwrap();
        let t = c.plugin_config("io.containerd.gc.v1.scheduler", &defaults);
        assert_eq!(t["pause_threshold"].as_float(), Some(0.5));
        assert_eq!(t["deletion_threshold"].as_integer(), Some(0));
        assert_eq!(t["inner"]["x"].as_integer(), Some(9));
        assert_eq!(t["inner"]["y"].as_integer(), Some(2));
        // A plugin the user did not configure gets its defaults.
        assert_eq!(c.plugin_config("x.y", &defaults), defaults);

        let c = c.with_plugin_defaults([
            ("io.containerd.gc.v1.scheduler".to_string(), defaults.clone()),
            ("io.containerd.other.v1.z".to_string(), defaults.clone()),
        ]);
        assert_eq!(c.plugins["io.containerd.gc.v1.scheduler"], t);
        assert_eq!(c.plugins["io.containerd.other.v1.z"], defaults);
    }

    #[test]
    fn deep_merge_replaces_arrays_and_scalars() {
        let mut base: toml::Table = toml::from_str("a = [1, 2]\nb = true\n[t]\nc = 1\n").unwrap();
        let over: toml::Table = toml::from_str("a = [3]\nb = false\n[t]\nd = 2\n").unwrap();
        deep_merge(&mut base, over);
        let want: toml::Table = toml::from_str("a = [3]\nb = false\n[t]\nc = 1\nd = 2\n").unwrap();
        assert_eq!(base, want);
    }

    #[test]
    fn to_toml_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let default = Config::default_v2();
        let text = default.to_toml();
        assert!(text.contains("version = 2"), "{text}");
        let p = write(dir.path(), "default.toml", &text);
        let l = load(&p).unwrap();
        assert_eq!(l.config, default);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);

        let mut c = Config::default_v2();
        c.version = 3;
        c.root = "/r".into();
        c.oom_score = -500;
        c.disabled_plugins = vec!["io.containerd.x.v1.y".into()];
        c.imports = vec![];
        c.grpc.tcp_address = "127.0.0.1:1234".into();
        c.debug.level = "debug".into();
        c.metrics.grpc_histogram = true;
        c.plugins.insert(
            "io.containerd.gc.v1.scheduler".into(),
            toml::from_str("pause_threshold = 0.02\n[deep]\nlist = [\"a\"]\n").unwrap(),
        );
        c.proxy_plugins.insert(
            "p".into(),
            ProxyPlugin {
                r#type: "snapshot".into(),
                address: "/p.sock".into(),
                platform: "linux/amd64".into(),
                exports: [("root".to_string(), "/x".to_string())].into(),
                capabilities: vec!["cap".into()],
            },
        );
        c.timeouts.insert("io.containerd.timeout.shim.load".into(), "5s".into());
        let text = c.to_toml();
        let p = write(dir.path(), "custom.toml", &text);
        let l = load(&p).unwrap();
        assert_eq!(l.config, c, "{text}");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }
}
