//! The metrics endpoint (`[metrics] address`): Prometheus text on
//! `GET /v1/metrics`, as containerd 1.6 serves it (`ServeMetrics`).
//!
//! A scrape is, in order:
//! - the gRPC server metrics of the socket ([`crate::grpc_metrics`]);
//! - per plugin (`crated_plugin_*`, labels `type` and `id`): calls, calls
//!   that failed, panics caught, and how long its init took;
//! - the process metrics Go's client exposes (`process_*`), read from
//!   `/proc/self` at scrape time;
//! - whatever the plugins serving the internal `crated.metrics.v1.Metrics`
//!   return (the runtime plugin's per-container metrics), each called on
//!   its lane with a timeout; one that fails is a comment line, never a
//!   failed scrape (`crated_plugin_api::metrics`).
//!
//! The text format is 0.0.4 (`text/plain; version=0.0.4`), which Go's
//! client serves by default and which allows those comment lines.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use abi_stable::std_types::RVec;
use crated_plugin_api::{
    abi::CallHead,
    metrics::{CollectRequest, CollectResponse, COLLECT, COLLECT_TIMEOUT_SECS},
};
use futures::FutureExt;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use prost::Message;

use crate::{
    grpc_metrics::GrpcMetrics,
    http::{respond, text, HttpHandler, HttpResponse},
    router::{call_unary, Route},
};

/// What one plugin has done, counted where its calls are routed
/// ([`crate::router::call_unary`], [`crate::router::call_streaming`]) and
/// where it is initialised. Held by its route; kept for every plugin that
/// went through init, running or not.
#[derive(Debug)]
pub struct PluginStats {
    pub plugin_type: String,
    pub id: String,
    calls: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    /// Nanoseconds; `u64::MAX` until recorded.
    init_nanos: AtomicU64,
}

impl PluginStats {
    pub fn new(plugin_type: &str, id: &str) -> Arc<PluginStats> {
        Arc::new(PluginStats {
            plugin_type: plugin_type.into(),
            id: id.into(),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            init_nanos: AtomicU64::new(u64::MAX),
        })
    }

    pub fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_init(&self, took: Duration) {
        self.init_nanos.store(took.as_nanos().min(u64::MAX as u128 - 1) as u64, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    id: String,
    r#type: String,
}

/// Every plugin's counters; grows when a library is loaded while running.
pub type SharedStats = Arc<std::sync::RwLock<Vec<Arc<PluginStats>>>>;
/// The running plugins that serve `crated.metrics.v1.Metrics`; grows likewise.
pub type SharedRoutes = Arc<std::sync::RwLock<Vec<Arc<Route>>>>;

/// The `crated_plugin_*` families, read at scrape time.
#[derive(Debug)]
struct PluginCollector(SharedStats);

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Get = fn(&PluginStats) -> u64;
        let counters: [(&str, &str, Get); 3] = [
            ("crated_plugin_calls", "Calls routed to the plugin, from the socket or other plugins.", |s| {
                s.calls.load(Ordering::Relaxed)
            }),
            ("crated_plugin_errors", "Calls to the plugin that ended with an error status.", |s| {
                s.errors.load(Ordering::Relaxed)
            }),
            (
                "crated_plugin_panics",
                "Panics of the plugin caught while handling a call (answered as Internal).",
                |s| s.panics.load(Ordering::Relaxed),
            ),
        ];
        let all = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &all {
                let labels = PluginLabels { id: s.id.clone(), r#type: s.plugin_type.clone() };
                ConstCounter::new(get(s)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "crated_plugin_init_duration_seconds",
            "How long the plugin's init took.",
            None,
            MetricType::Gauge,
        )?;
        for s in &all {
            let nanos = s.init_nanos.load(Ordering::Relaxed);
            if nanos == u64::MAX {
                continue;
            }
            let labels = PluginLabels { id: s.id.clone(), r#type: s.plugin_type.clone() };
            ConstGauge::new(nanos as f64 / 1e9).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Go's process collector, from `/proc/self`.
#[derive(Debug)]
struct ProcessCollector;

/// The kernel's USER_HZ, the unit of `/proc/<pid>/stat` times.
const TICKS_PER_SECOND: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read_process() else { return Ok(()) };
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(metric)?;
        let gauges: [(&str, &str, Option<f64>); 6] = [
            ("process_open_fds", "Number of open file descriptors.", p.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", p.max_fds),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", Some(p.virtual_bytes)),
            ("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", p.max_virtual),
            ("process_resident_memory_bytes", "Resident memory size in bytes.", p.resident_bytes),
            ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", p.start_time),
        ];
        for (name, help, value) in gauges {
            let Some(v) = value else { continue };
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(metric)?;
        }
        Ok(())
    }
}

struct Process {
    cpu_seconds: f64,
    virtual_bytes: f64,
    resident_bytes: Option<f64>,
    start_time: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    max_virtual: Option<f64>,
}

fn read_process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'; the first of them is field 3 (state).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok());
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let resident = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let limit = |name: &str| -> Option<f64> {
        let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
        match rest.split_whitespace().next()? {
            // Go reports an unlimited limit as the largest uint64, as a float.
            "unlimited" => Some(u64::MAX as f64),
            v => v.parse().ok(),
        }
    };
    Some(Process {
        cpu_seconds,
        virtual_bytes: field(23)?,
        resident_bytes: resident,
        start_time: boot.zip(field(22)).map(|(b, t)| b + t / TICKS_PER_SECOND),
        open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64),
        max_fds: limit("Max open files"),
        max_virtual: limit("Max address space"),
    })
}

/// Everything a scrape reads.
pub struct Metrics {
    registry: Registry,
    /// Running plugins that serve the internal metrics service.
    collectors: SharedRoutes,
}

impl Metrics {
    /// `grpc` is registered by [`GrpcMetrics::new`] into `registry`.
    pub fn new(mut registry: Registry, plugins: SharedStats, collectors: SharedRoutes) -> Metrics {
        registry.register_collector(Box::new(PluginCollector(plugins)));
        registry.register_collector(Box::new(ProcessCollector));
        Metrics { registry, collectors }
    }

    /// One scrape's text.
    pub async fn scrape(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!("metrics: encoding failed: {e}");
        }
        let collectors = self.collectors.read().unwrap_or_else(|e| e.into_inner()).clone();
        let calls = collectors.iter().map(|route| async move {
            let head = CallHead { method: COLLECT.into(), target: "".into(), headers: RVec::new() };
            let body = RVec::from(CollectRequest {}.encode_to_vec());
            let timeout = Duration::from_secs(COLLECT_TIMEOUT_SECS);
            let result = match tokio::time::timeout(timeout, call_unary(route, head, body)).await {
                Ok(Ok(bytes)) => CollectResponse::decode(&bytes[..])
                    .map(|r| r.text)
                    .map_err(|e| format!("its answer does not decode: {e}")),
                Ok(Err(status)) => Err(status.message),
                Err(_) => Err(format!("no answer within {COLLECT_TIMEOUT_SECS}s")),
            };
            (route.owner.as_str(), result)
        });
        for (owner, result) in futures::future::join_all(calls).await {
            match result {
                Ok(text) => {
                    out.push_str(&text);
                    if !text.is_empty() && !text.ends_with('\n') {
                        out.push('\n');
                    }
                }
                Err(why) => {
                    tracing::warn!(plugin = owner, "metrics: skipped: {why}");
                    let why = why.replace('\n', " ");
                    out.push_str(&format!("# crated: metrics of plugin {owner} skipped: {why}\n"));
                }
            }
        }
        out
    }
}

/// The handler of the metrics endpoint.
pub fn handler(metrics: Arc<Metrics>) -> HttpHandler {
    Arc::new(move |req: Request<Incoming>| {
        let metrics = metrics.clone();
        async move { handle(&metrics, req).await }.boxed()
    })
}

async fn handle(metrics: &Metrics, req: Request<Incoming>) -> HttpResponse {
    if req.uri().path() != "/v1/metrics" {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    respond(StatusCode::OK, prometheus_text::CONTENT_TYPE, metrics.scrape().await)
}

/// A fresh registry and the gRPC families in it, when metrics are on.
pub fn grpc_registry(histogram: bool) -> (Registry, Arc<GrpcMetrics>) {
    let mut registry = Registry::default();
    let grpc = GrpcMetrics::new(&mut registry, histogram);
    (registry, grpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_and_plugin_metrics_encode_as_go() {
        let stats = PluginStats::new("io.containerd.content.v1", "content");
        stats.call();
        stats.set_init(Duration::from_millis(1500));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(PluginCollector(Arc::new(std::sync::RwLock::new(vec![stats])))));
        registry.register_collector(Box::new(ProcessCollector));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("crated_plugin_calls_total{id=\"content\",type=\"io.containerd.content.v1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("crated_plugin_init_duration_seconds{id=\"content\",type=\"io.containerd.content.v1\"} 1.5\n")
        );
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
        for name in ["process_resident_memory_bytes ", "process_open_fds ", "process_start_time_seconds "] {
            assert!(out.contains(name), "{name} missing from {out}");
        }
    }
}
