//! gRPC server metrics of the socket, with go-grpc-prometheus' names,
//! help texts, labels and buckets, so dashboards made for containerd
//! (which serves them from its `grpc_prometheus` interceptors) work:
//! `grpc_server_started_total`, `grpc_server_handled_total` (with
//! `grpc_code` spelt as Go spells codes), `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total` and, with `[metrics] grpc_histogram`,
//! `grpc_server_handling_seconds`.
//!
//! Counting happens in the router ([`crate::router::GrpcRouter`]), around
//! the call, without looking into it: messages are counted from the gRPC
//! length prefixes of the request and response bodies as they stream by,
//! and the code is read from `grpc-status` in the response headers (a
//! trailers-only answer) or trailers. A response dropped before its status
//! (the client went away) counts as `Canceled`.
//!
//! Cost per call: one read-locked hash lookup by path to the method's
//! pre-resolved counters (created on a method's first call), atomic
//! increments, and one boxed response body. Nothing exists, and the router
//! does none of this, unless `[metrics] address` is set.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use bytes::{Buf, Bytes};
use crated_plugin_api::abi::CallKind;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Go's `prometheus.DefBuckets`, which go-grpc-prometheus uses by default.
const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Past this many distinct method paths, new ones are not counted: a
/// client making up method names must not grow the daemon's memory.
const MAX_METHODS: usize = 4096;

/// gRPC codes as Go's `codes.Code.String()` spells them, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const UNKNOWN: usize = 2;
const CANCELED: usize = 1;

// Fields in the order Go's client writes labels: sorted by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_method: String,
    grpc_service: String,
    grpc_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_code: &'static str,
    grpc_method: String,
    grpc_service: String,
    grpc_type: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn new_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The server metrics of one daemon.
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
    handling: Option<HistogramFamily>,
    methods: RwLock<HashMap<Box<str>, Arc<MethodMetrics>>>,
}

/// One method's counters, resolved once.
pub struct MethodMetrics {
    labels: MethodLabels,
    started: Counter,
    received: Counter,
    sent: Counter,
    handled_family: Family<HandledLabels, Counter>,
    handled: [OnceLock<Counter>; 17],
    handling: Option<Histogram>,
}

fn grpc_type(kind: CallKind) -> &'static str {
    match kind {
        CallKind::Unary => "unary",
        CallKind::ClientStreaming => "client_stream",
        CallKind::ServerStreaming => "server_stream",
        CallKind::BidiStreaming => "bidi_stream",
    }
}

impl GrpcMetrics {
    /// The families, registered in `registry`; the histogram only when
    /// `histogram` (containerd's `grpc_histogram`).
    pub fn new(registry: &mut Registry, histogram: bool) -> Arc<GrpcMetrics> {
        let m = GrpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            handling: histogram.then(|| HistogramFamily::new_with_constructor(new_histogram)),
            methods: RwLock::new(HashMap::new()),
        };
        // The registry appends "." to help texts and "_total" to counters.
        registry.register("grpc_server_started", "Total number of RPCs started on the server", m.started.clone());
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            m.handled.clone(),
        );
        registry.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            m.received.clone(),
        );
        registry.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            m.sent.clone(),
        );
        if let Some(h) = &m.handling {
            registry.register(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
                h.clone(),
            );
        }
        Arc::new(m)
    }

    /// The counters of `path`, made on its first call.
    pub fn method(&self, path: &str, kind: CallKind) -> Option<Arc<MethodMetrics>> {
        if let Some(m) = self.methods.read().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Some(m.clone());
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = methods.get(path) {
            return Some(m.clone());
        }
        if methods.len() >= MAX_METHODS {
            return None;
        }
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
        let labels = MethodLabels {
            grpc_method: method.to_string(),
            grpc_service: service.to_string(),
            grpc_type: grpc_type(kind),
        };
        let m = Arc::new(MethodMetrics {
            started: self.started.get_or_create(&labels).clone(),
            received: self.received.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
            handling: self.handling.as_ref().map(|h| h.get_or_create(&labels).clone()),
            handled_family: self.handled.clone(),
            handled: Default::default(),
            labels,
        });
        methods.insert(path.into(), m.clone());
        Some(m)
    }
}

impl MethodMetrics {
    fn handled(&self, code: usize, start: Instant) {
        let code = if code < CODE_NAMES.len() { code } else { UNKNOWN };
        self.handled[code]
            .get_or_init(|| {
                let l = &self.labels;
                self.handled_family
                    .get_or_create(&HandledLabels {
                        grpc_code: CODE_NAMES[code],
                        grpc_method: l.grpc_method.clone(),
                        grpc_service: l.grpc_service.clone(),
                        grpc_type: l.grpc_type,
                    })
                    .clone()
            })
            .inc();
        if let Some(h) = &self.handling {
            h.observe(start.elapsed().as_secs_f64());
        }
    }
}

/// Counts the messages of one call's request body.
pub fn count_request<B>(method: &Arc<MethodMetrics>, body: B) -> Counted<B> {
    method.started.inc();
    Counted { inner: body, frames: Framing::default(), counter: method.received.clone(), call: None }
}

/// Records the code of a finished response, or wraps its body to count
/// its messages and find its status in the trailers.
pub fn observe_response(
    method: Arc<MethodMetrics>,
    start: Instant,
    resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if let Some(code) = status_of(resp.headers()) {
        method.handled(code, start);
        return resp;
    }
    let counter = method.sent.clone();
    resp.map(|b| {
        tonic::body::Body::new(Counted { inner: b, frames: Framing::default(), counter, call: Some((method, start)) })
    })
}

fn status_of(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?;
    Some(v.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(UNKNOWN))
}

/// Finds message boundaries in a gRPC body: each message is a 1-byte flag,
/// a 4-byte big-endian length, then that many bytes.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    header_len: usize,
    remaining: u64,
}

impl Framing {
    /// Feeds bytes; returns how many messages they completed.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut done = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= take as u64;
                data = &data[take..];
                if self.remaining == 0 {
                    done += 1;
                }
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                if len == 0 {
                    done += 1;
                } else {
                    self.remaining = len.into();
                }
            }
        }
        done
    }
}

/// A body whose gRPC messages are counted as they pass; a response body
/// also records the call's code when its trailers pass, or when dropped
/// before them.
pub struct Counted<B> {
    inner: B,
    frames: Framing,
    counter: Counter,
    call: Option<(Arc<MethodMetrics>, Instant)>,
}

impl<B> Counted<B> {
    fn finish(&mut self, code: usize) {
        if let Some((m, start)) = self.call.take() {
            m.handled(code, start);
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.frames.feed(data.chunk());
                    if n > 0 {
                        this.counter.inc_by(n);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_of(trailers).unwrap_or(UNKNOWN);
                    this.finish(code);
                }
            }
            Poll::Ready(None) => this.finish(UNKNOWN),
            Poll::Ready(Some(Err(_))) => this.finish(CANCELED),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish(CANCELED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_counts_messages_split_anywhere() {
        let mut wire = Vec::new();
        for payload in [&b"abc"[..], b"", b"0123456789"] {
            wire.push(0);
            wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            wire.extend_from_slice(payload);
        }
        for split in 0..wire.len() {
            let mut f = Framing::default();
            let n = f.feed(&wire[..split]) + f.feed(&wire[split..]);
            assert_eq!(n, 3, "split at {split}");
        }
        let mut f = Framing::default();
        assert_eq!(wire.iter().map(|b| f.feed(std::slice::from_ref(b))).sum::<u64>(), 3);
    }

    #[test]
    fn names_labels_and_codes_as_go() {
        let mut registry = Registry::default();
        let m = GrpcMetrics::new(&mut registry, true);
        let v = m.method("/containerd.services.version.v1.Version/Version", CallKind::Unary).unwrap();
        v.started.inc();
        v.handled(0, Instant::now());
        v.handled(5, Instant::now());
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("# HELP grpc_server_started_total Total number of RPCs started on the server.\n# TYPE grpc_server_started_total counter\n"), "{out}");
        assert!(out.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Version\",grpc_service=\"containerd.services.version.v1.Version\",grpc_type=\"unary\"} 1\n"), "{out}");
        assert!(out.contains("grpc_code=\"NotFound\""));
        assert!(out.contains("grpc_server_handling_seconds_bucket{grpc_method=\"Version\",grpc_service=\"containerd.services.version.v1.Version\",grpc_type=\"unary\",le=\"0.005\"}"), "{out}");
    }
}
