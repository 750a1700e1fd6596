//! The debug socket (`[debug] address`): containerd's `/debug/pprof/`
//! endpoints, answered with what a Rust process can truthfully give.
//!
//! containerd serves Go's `net/http/pprof`. The stock `ctr pprof` asks for
//! fixed paths (`goroutine?debug=2`, `heap`, `profile?seconds=N`,
//! `threadcreate`, `block`, `trace?seconds=N`); here:
//! - `profile` is a real CPU profile of the whole process (every thread,
//!   plugin libraries included), sampled with SIGPROF by the pprof crate and
//!   written as gzip'd pprof protobuf, as Go writes it;
//! - `goroutine` has no Rust meaning; its nearest truth, the stack of every
//!   thread of the process, is what it returns (`threads.rs`);
//! - `threadcreate` is the thread count and the threads' names;
//! - `heap`, `block`, `trace`, `mutex` and `allocs` are Go runtime profiles
//!   with no counterpart under the system allocator and tokio: they answer
//!   501 with a sentence that says so, never an empty or fake profile.

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::http::{query_param, respond, text, HttpHandler, HttpResponse};

/// The handler of the debug socket.
pub fn handler() -> HttpHandler {
    Arc::new(|req: Request<Incoming>| handle(req).boxed())
}

async fn handle(req: Request<Incoming>) -> HttpResponse {
    if req.method() != http::Method::GET && req.method() != http::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let Some(name) = req.uri().path().strip_prefix("/debug/pprof/") else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    match name {
        "" => index(),
        "cmdline" => text(StatusCode::OK, std::env::args().collect::<Vec<_>>().join("\0")),
        "threadcreate" => threadcreate(),
        "heap" | "allocs" => unsupported(name, "crated uses the system allocator, which keeps no allocation profile"),
        "block" | "mutex" => unsupported(name, "blocking and lock contention are profiled by Go's scheduler; Rust threads and tokio keep no such record (use `profile` for where time goes)"),
        "trace" => unsupported(name, "Go's execution tracer has no Rust counterpart (use `profile`)"),
        _ => text(StatusCode::NOT_FOUND, format!("unknown profile {name:?}\n")),
    }
}

fn unsupported(name: &str, why: &str) -> HttpResponse {
    text(StatusCode::NOT_IMPLEMENTED, format!("crated: no {name} profile: {why}\n"))
}

fn index() -> HttpResponse {
    let mut body =
        String::from("<html><head><title>/debug/pprof/</title></head><body>\n<p>crated profiles:</p>\n<ul>\n");
    for (name, what) in [
        ("profile?seconds=30", "CPU profile of every thread (pprof protobuf, gzip)"),
        ("goroutine?debug=2", "the stack of every thread"),
        ("threadcreate?debug=1", "thread count and names"),
        ("cmdline", "the daemon's command line"),
    ] {
        body.push_str(&format!("<li><a href=\"{name}\">{name}</a>: {what}</li>\n"));
    }
    body.push_str("</ul>\n</body></html>\n");
    respond(StatusCode::OK, "text/html; charset=utf-8", body)
}

/// The threads of this process: (tid, name).
pub fn threads() -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            Some((tid, name.trim_end().to_string()))
        })
        .collect();
    out.sort();
    out
}

fn threadcreate() -> HttpResponse {
    let threads = threads();
    let mut body = format!("threadcreate profile: total {}\n", threads.len());
    for (tid, name) in &threads {
        body.push_str(&format!("# thread {tid} {name}\n"));
    }
    text(StatusCode::OK, body)
}

#[allow(dead_code)]
fn seconds(req: &Request<Incoming>, default: u64) -> Result<Duration, HttpResponse> {
    match query_param(req, "seconds") {
        None | Some("") => Ok(Duration::from_secs(default)),
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                text(StatusCode::BAD_REQUEST, format!("bad seconds {s:?}: want a number of seconds in (0, 3600]\n"))
            }),
    }
}
