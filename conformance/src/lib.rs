//! A conformance suite for snapshotters, spoken over containerd's
//! `containerd.services.snapshots.v1.Snapshots` gRPC API on a unix socket.
//!
//! The same cases run against crated's namespaced Snapshots service, stock
//! containerd, or a standalone proxy snapshotter. Each case is a named async
//! function ([`cases`]); it gets its own key prefix, so cases run
//! concurrently without colliding, and everything it created is removed
//! afterwards, even when it failed or panicked. The suite mounts what the
//! snapshotter returns (see [`crated_plugin_api::mount`]), so it must run as root.

mod case;
mod cases;
mod client;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;

pub use case::CaseError;

/// How many cases run at once.
const CONCURRENT_CASES: usize = 4;

/// The snapshotter under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// The unix socket (a path, or `unix://` and a path).
    pub address: String,
    /// The `snapshotter` field of every request (e.g. `overlayfs`).
    pub snapshotter: String,
    /// Sent as the `containerd-namespace` header; empty sends no header.
    pub namespace: String,
}

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct CaseOutcome {
    pub name: &'static str,
    /// `Err(reason)` when the case failed.
    pub result: Result<(), String>,
}

/// The outcome of a run, in the suite's case order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub cases: Vec<CaseOutcome>,
}

impl Report {
    pub fn passed(&self) -> impl Iterator<Item = &CaseOutcome> {
        self.cases.iter().filter(|c| c.result.is_ok())
    }

    pub fn failed(&self) -> impl Iterator<Item = &CaseOutcome> {
        self.cases.iter().filter(|c| c.result.is_err())
    }

    pub fn all_passed(&self) -> bool {
        self.failed().next().is_none()
    }
}

impl fmt::Display for Report {
    /// One line per case, then `N passed, M failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for case in &self.cases {
            match &case.result {
                Ok(()) => writeln!(f, "ok   {}", case.name)?,
                Err(reason) => writeln!(f, "FAIL {}: {}", case.name, reason)?,
            }
        }
        write!(f, "{} passed, {} failed", self.passed().count(), self.failed().count())
    }
}

/// The names of all cases, in order.
pub fn case_names() -> Vec<&'static str> {
    cases::ALL.iter().map(|c| c.name).collect()
}

/// Run every case whose name contains `filter` (all when `None`) against
/// `target`. Needs a tokio runtime; each case runs in its own task.
pub async fn run(target: &Target, filter: Option<&str>) -> Report {
    let selected: Vec<&cases::CaseDef> =
        cases::ALL.iter().filter(|c| filter.is_none_or(|f| c.name.contains(f))).collect();
    let snapshots = match client::connect(&target.address).await {
        Ok(channel) => client::Snapshots::new(channel, &target.snapshotter, &target.namespace),
        Err(e) => Err(format!("connect to {}: {}", target.address, error_chain(&e))),
    };
    let snapshots = match snapshots {
        Ok(s) => s,
        Err(reason) => {
            let cases = selected.iter().map(|c| CaseOutcome { name: c.name, result: Err(reason.clone()) }).collect();
            return Report { cases };
        }
    };
    let run_id = run_id();
    let mut outcomes: Vec<(usize, CaseOutcome)> = futures::stream::iter(selected.into_iter().enumerate())
        .map(|(i, def)| {
            let ctx = case::Case::new(snapshots.clone(), format!("{run_id}/{}/", def.name));
            async move { (i, case::run_case(def, ctx).await) }
        })
        .buffer_unordered(CONCURRENT_CASES)
        .collect()
        .await;
    outcomes.sort_by_key(|(i, _)| *i);
    Report { cases: outcomes.into_iter().map(|(_, o)| o).collect() }
}

/// Run the suite and panic, listing every failing case and its reason,
/// unless exactly the cases named in `known_deviations` fail. A known
/// deviation that passes panics too, so such a list cannot go stale.
/// Pass `&[]` for a snapshotter that must conform fully.
pub async fn assert_conforms(target: &Target, known_deviations: &[&str]) {
    let report = run(target, None).await;
    let unexpected: Vec<String> = report
        .failed()
        .filter(|c| !known_deviations.contains(&c.name))
        .map(|c| format!("{}: {}", c.name, c.result.as_ref().unwrap_err()))
        .collect();
    let stale: Vec<&str> = report.passed().map(|c| c.name).filter(|name| known_deviations.contains(name)).collect();
    let unknown: Vec<&&str> = known_deviations.iter().filter(|d| !report.cases.iter().any(|c| c.name == **d)).collect();
    assert!(
        unexpected.is_empty() && stale.is_empty() && unknown.is_empty(),
        "snapshotter {:?} at {} does not conform:\nfailing cases:\n  {}\nknown deviations that now pass: {:?}\n\
         known deviations that name no case: {:?}\nfull report:\n{}",
        target.snapshotter,
        target.address,
        unexpected.join("\n  "),
        stale,
        unknown,
        report
    );
}

/// Unique per run: process id, time and a counter.
fn run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("conformance-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
