//! The scheduler's task: follows the metadata plugin's mutation notices
//! (`crated.gc.v1.Collector/Watch`), asks the [`Policy`] when to collect,
//! and runs the collections (`Collect`), logging each one at debug level.
//!
//! The collector is reached through a [`Collector`] so that the task can
//! be driven in tests with paused time; in the daemon it is the metadata
//! plugin through the host ([`HostCollector`]).

use std::{future::Future, time::Duration};

use crated_plugin_api::{
    gc::{CollectRequest, CollectResponse, MutationNotice, WatchRequest, COLLECT, WATCH},
    tracing, Code, Host, Status,
};
use futures::{stream::BoxStream, StreamExt};
use tokio::time::{sleep_until, Instant};

use crate::{config::Config, policy::Policy};

/// The first wait before opening the notice stream again after it ended.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts to open it.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub type Notices = BoxStream<'static, Result<MutationNotice, Status>>;

/// The store's garbage collector, as the scheduler uses it.
pub trait Collector: Send + Sync + 'static {
    fn collect(&self) -> impl Future<Output = Result<CollectResponse, Status>> + Send;
    fn watch(&self) -> impl Future<Output = Result<Notices, Status>> + Send;
}

/// The metadata plugin's collector, called in process.
pub struct HostCollector(pub Host);

impl Collector for HostCollector {
    async fn collect(&self) -> Result<CollectResponse, Status> {
        self.0.unary(&Host::call(COLLECT, None), &CollectRequest {}).await
    }

    async fn watch(&self) -> Result<Notices, Status> {
        self.0.streaming(&Host::call(WATCH, None), futures::stream::iter([Ok(WatchRequest {})])).await
    }
}

/// A metadata plugin without the collector service: nothing to schedule.
fn unsupported(s: &Status) -> bool {
    matches!(s.code, Code::Unimplemented | Code::NotFound)
}

/// How the task ended (it only ends by itself when there is no collector;
/// otherwise it runs until the plugin shuts down and aborts it).
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    NoCollector,
}

fn no_collector(what: &str, s: &Status) -> Ended {
    tracing::warn!(
        "the metadata plugin serves no garbage collector ({what}: {}): garbage collection is not scheduled",
        s.message
    );
    Ended::NoCollector
}

/// The notice stream and, while it is down, when to open it again.
struct Watch {
    stream: Option<Notices>,
    retry_at: Instant,
    backoff: Duration,
}

impl Watch {
    /// The next item of the stream; pending forever while there is none.
    async fn next(&mut self) -> Option<Result<MutationNotice, Status>> {
        match self.stream.as_mut() {
            Some(s) => s.next().await,
            None => std::future::pending().await,
        }
    }

    /// The stream ended or failed: drop it and wait before reopening.
    fn lost(&mut self, now: Instant) {
        self.stream = None;
        self.retry_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs the scheduler until it is aborted, or until it learns that the
/// metadata plugin has no collector (then it logs that once and ends).
pub async fn run<C: Collector>(collector: C, config: Config) -> Ended {
    let mut policy = Policy::new(config, Instant::now());
    let mut watch = Watch { stream: None, retry_at: Instant::now(), backoff: MIN_BACKOFF };
    loop {
        if watch.stream.is_none() && watch.retry_at <= Instant::now() {
            match collector.watch().await {
                Ok(stream) => watch.stream = Some(stream),
                Err(s) if unsupported(&s) => return no_collector("Watch", &s),
                Err(s) => {
                    tracing::warn!("gc scheduler: cannot follow the metadata store's changes: {}", s.message);
                    watch.lost(Instant::now());
                }
            }
        }
        let wakeup = policy.next_wakeup();
        let reopen = watch.stream.is_none().then_some(watch.retry_at);
        tokio::select! {
            _ = sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => {
                if policy.due(Instant::now()) {
                    if let Err(ended) = collect(&collector, &mut policy, &mut watch).await {
                        return ended;
                    }
                }
            }
            item = watch.next() => match item {
                Some(Ok(notice)) => {
                    watch.backoff = MIN_BACKOFF;
                    policy.notice(Instant::now(), notice.mutations, notice.deletions);
                }
                Some(Err(s)) if unsupported(&s) => return no_collector("Watch", &s),
                ended => {
                    match ended {
                        Some(Err(s)) => tracing::warn!("gc scheduler: the change stream failed: {}", s.message),
                        _ => tracing::debug!("gc scheduler: the change stream ended; reopening it"),
                    }
                    // Changes while it is down go unseen: count one of
                    // each so that the next scheduled time collects.
                    policy.notice(Instant::now(), 1, 1);
                    watch.lost(Instant::now());
                }
            },
            _ = sleep_until(reopen.unwrap_or_else(Instant::now)), if reopen.is_some() => {}
        }
    }
}

/// Runs one collection, reading (and dropping) the notices of changes it
/// covers meanwhile so that the stream does not back up.
async fn collect<C: Collector>(collector: &C, policy: &mut Policy, watch: &mut Watch) -> Result<(), Ended> {
    let started = Instant::now();
    let collection = collector.collect();
    tokio::pin!(collection);
    let result = loop {
        tokio::select! {
            result = &mut collection => break result,
            item = watch.next() => match item {
                Some(Ok(_)) => {}
                _ => watch.lost(Instant::now()),
            },
        }
    };
    let now = Instant::now();
    match result {
        Ok(stats) => {
            let pause = Duration::from_nanos(stats.pause_ns);
            policy.collected(now, pause);
            let mut removed: Vec<_> = stats.removed.iter().filter(|(_, n)| **n > 0).collect();
            removed.sort();
            let removed: Vec<String> = removed.into_iter().map(|(kind, n)| format!("{kind}={n}")).collect();
            tracing::debug!(
                "garbage collected in {:?} (paused {:?}, waited {:?}), removed: {}, next in {:?}",
                Duration::from_nanos(stats.duration_ns),
                pause,
                now - started,
                if removed.is_empty() { "nothing".to_string() } else { removed.join(" ") },
                policy.interval()
            );
            Ok(())
        }
        Err(s) if unsupported(&s) => Err(no_collector("Collect", &s)),
        Err(s) => {
            tracing::error!("garbage collection failed: {}", s.message);
            policy.failed(now);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    //! The task against a scripted collector with paused time: what the
    //! policy's own tests cannot show (streams ending, no collector).

    use std::sync::{Arc, Mutex};

    use futures::channel::mpsc;

    use super::*;

    type NoticeSender = mpsc::UnboundedSender<Result<MutationNotice, Status>>;

    /// Records the time of each call; notices are fed through `senders`.
    #[derive(Clone, Default)]
    struct Scripted {
        collects: Arc<Mutex<Vec<Instant>>>,
        watches: Arc<Mutex<Vec<Instant>>>,
        senders: Arc<Mutex<Vec<NoticeSender>>>,
        /// Every call fails with this.
        fail_with: Option<Status>,
    }

    impl Scripted {
        fn send(&self, mutations: u64, deletions: u64) {
            let senders = self.senders.lock().unwrap();
            senders.last().unwrap().unbounded_send(Ok(MutationNotice { mutations, deletions })).unwrap();
        }
        fn end_stream(&self) {
            self.senders.lock().unwrap().last().unwrap().close_channel();
        }
        fn collects(&self) -> Vec<Instant> {
            self.collects.lock().unwrap().clone()
        }
        fn watches(&self) -> Vec<Instant> {
            self.watches.lock().unwrap().clone()
        }
    }

    impl Collector for Scripted {
        async fn collect(&self) -> Result<CollectResponse, Status> {
            self.collects.lock().unwrap().push(Instant::now());
            if let Some(s) = &self.fail_with {
                return Err(s.clone());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(CollectResponse { duration_ns: 2_000_000, pause_ns: 1_000_000, ..Default::default() })
        }

        async fn watch(&self) -> Result<Notices, Status> {
            self.watches.lock().unwrap().push(Instant::now());
            if let Some(s) = &self.fail_with {
                return Err(s.clone());
            }
            let (tx, rx) = mpsc::unbounded();
            self.senders.lock().unwrap().push(tx);
            Ok(rx.boxed())
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// Lets the spawned task run until it waits on time again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn collects_after_startup_and_after_deletions_at_the_spaced_time() {
        let c = Scripted::default();
        let t0 = Instant::now();
        let task = tokio::spawn(run(c.clone(), Config::default()));
        tokio::time::sleep(99 * MS).await;
        assert!(c.collects().is_empty(), "nothing before the startup delay");
        tokio::time::sleep(2 * MS).await;
        assert_eq!(c.collects(), [t0 + 100 * MS]);

        // An idle stretch: no more collections.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(c.collects().len(), 1, "idle: skipped");

        // A deletion: collected at the next spaced tick (every 245 ms
        // after the end of the first one), not at once.
        let sent = Instant::now();
        c.send(1, 1);
        settle().await;
        assert_eq!(c.collects().len(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let collects = c.collects();
        assert_eq!(collects.len(), 2);
        assert!(collects[1] > sent && collects[1] <= sent + 245 * MS, "{collects:?} {sent:?}");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_is_reopened_with_a_backoff_and_its_gap_collected() {
        let c = Scripted::default();
        let task = tokio::spawn(run(c.clone(), Config::default()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.watches().len(), 1);
        assert_eq!(c.collects().len(), 1);

        c.end_stream();
        settle().await;
        let ended = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let watches = c.watches();
        assert_eq!(watches.len(), 2, "reopened once");
        assert_eq!(watches[1], ended + MIN_BACKOFF, "after the first backoff");
        assert_eq!(c.collects().len(), 2, "changes during the gap may exist: collected");

        // Ending again right away backs off longer.
        c.end_stream();
        settle().await;
        let ended = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.watches()[2], ended + 2 * MIN_BACKOFF);

        // A notice resets the backoff.
        c.send(1, 0);
        settle().await;
        c.end_stream();
        settle().await;
        let ended = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.watches()[3], ended + MIN_BACKOFF);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_collector_the_task_ends_at_once_and_calls_nothing_more() {
        for code in [Code::Unimplemented, Code::NotFound] {
            let c = Scripted { fail_with: Some(Status::new(code, "no such service")), ..Default::default() };
            let ended = tokio::time::timeout(Duration::from_secs(60), run(c.clone(), Config::default())).await;
            assert_eq!(ended, Ok(Ended::NoCollector));
            assert_eq!(c.watches().len(), 1);
            assert!(c.collects().is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_collector_is_retried_not_spun() {
        let c = Scripted { fail_with: None, ..Default::default() };
        // Watch works, Collect fails: make a collector whose Collect fails.
        #[derive(Clone)]
        struct FailingCollect(Scripted);
        impl Collector for FailingCollect {
            async fn collect(&self) -> Result<CollectResponse, Status> {
                self.0.collects.lock().unwrap().push(Instant::now());
                Err(Status::internal("disk on fire"))
            }
            async fn watch(&self) -> Result<Notices, Status> {
                self.0.watch().await
            }
        }
        let config = Config { schedule_delay: 50 * MS, ..Config::default() };
        let task = tokio::spawn(run(FailingCollect(c.clone()), config));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let collects = c.collects();
        // 100 ms, 50 ms later, then each retry a second later than the one
        // before (as containerd): a handful, not thousands.
        assert!((3..=12).contains(&collects.len()), "{collects:?}");
        assert!(collects.windows(2).all(|w| w[1] - w[0] >= 50 * MS), "{collects:?}");
        task.abort();
    }
}
