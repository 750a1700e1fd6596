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

use crate::{
    http::{query_param, respond, text, HttpHandler, HttpResponse},
    threads,
};

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
        "goroutine" => goroutine().await,
        "profile" => match seconds(&req, 30) {
            Ok(d) => cpu_profile(d).await,
            Err(reason) => text(StatusCode::BAD_REQUEST, reason),
        },
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

fn threadcreate() -> HttpResponse {
    let threads = threads::list();
    let mut body = format!("threadcreate profile: total {}\n", threads.len());
    for (tid, name) in &threads {
        body.push_str(&format!("# thread {tid} {name}\n"));
    }
    text(StatusCode::OK, body)
}

/// The `seconds` query parameter, or why it is refused.
fn seconds(req: &Request<Incoming>, default: u64) -> Result<Duration, String> {
    match query_param(req, "seconds") {
        None | Some("") => Ok(Duration::from_secs(default)),
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("bad seconds {s:?}: want a number of seconds in (0, 3600]\n")),
    }
}

async fn goroutine() -> HttpResponse {
    match tokio::task::spawn_blocking(|| threads::dump().map(|stacks| threads::render(&stacks))).await {
        Ok(Ok(dump)) => text(StatusCode::OK, dump),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("crated: {e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("crated: thread dump failed: {e}\n")),
    }
}

/// Go samples at 100 Hz; so do we (SIGPROF on a process-wide timer, so
/// every thread that burns CPU is sampled, whichever library it runs).
const PROFILE_HZ: i32 = 100;

/// A CPU profile for `duration`, as gzip'd pprof protobuf. One at a time,
/// as in Go (the process has one profiling timer).
async fn cpu_profile(duration: Duration) -> HttpResponse {
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(PROFILE_HZ)
        // Frames inside these are unwound badly or not at all; skip samples
        // whose interrupted frame is there, as the pprof crate advises.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(g) => g,
        Err(e) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("Could not enable CPU profiling: {e}\n"));
        }
    };
    tokio::time::sleep(duration).await;
    // Symbolising and encoding read debug info: seconds of CPU for a large
    // profile, so off the async workers.
    let encoded = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use pprof::protos::Message as _;
        use std::io::Write as _;
        let profile = guard.report().build().and_then(|r| r.pprof()).map_err(|e| e.to_string())?;
        drop(guard);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&profile.encode_to_vec()).map_err(|e| e.to_string())?;
        gz.finish().map_err(|e| e.to_string())
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            let mut r = respond(StatusCode::OK, "application/octet-stream", body);
            r.headers_mut().insert(
                http::header::CONTENT_DISPOSITION,
                http::HeaderValue::from_static("attachment; filename=\"profile\""),
            );
            r
        }
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("crated: building the profile: {e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("crated: building the profile: {e}\n")),
    }
}
