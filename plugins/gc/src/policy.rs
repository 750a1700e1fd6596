//! When to collect: containerd's GC scheduling policy as a pure state
//! machine. It is fed mutation notices, timer expiries and collection
//! results with the time they happened, and answers with the next time a
//! collection is due; it never sleeps or calls anything, so that its
//! tests drive it with chosen instants.
//!
//! The policy, as containerd's `plugins/gc/scheduler.go` has it:
//! - The first collection runs `startup_delay` after start (none when it is
//!   zero); it collects what a crash left behind and seeds the pause
//!   average.
//! - After each collection the next one is due `interval` later, where
//!   `interval` is the average pause (at least 5 ms) divided by
//!   `pause_threshold`, minus that pause: collections then hold the store
//!   at most that fraction of the time. With `pause_threshold` 0 the
//!   interval stays one second.
//! - When that time comes, the collection is skipped (and the timer set
//!   one interval further) unless something happened: a deletion, or
//!   `mutation_threshold` mutations.
//! - A notice brings the next collection forward to `schedule_delay` from
//!   now when `deletion_threshold` (> 0) deletions accumulated; when no
//!   collection is pending at all (no startup collection, nothing since),
//!   also on any deletion (`deletion_threshold` 0) or on
//!   `mutation_threshold` mutations. It never pushes one back.
//! - Notices that arrive while a collection runs describe changes before
//!   its end, which it covers; they are dropped (containerd drops events
//!   older than the last collection).
//! - A failed collection is retried one interval and a second after it
//!   (the first one `schedule_delay` after it). Unlike containerd, the
//!   retry runs even when nothing new happened since: the first collection
//!   is the one that collects what a crash left, and must not be lost to
//!   a transient failure.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;

/// The spacing before the first collection has set an average pause.
pub const INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// The smallest average pause the spacing is computed from, so that very
/// fast collections do not run back to back.
pub const MINIMUM_PAUSE: Duration = Duration::from_millis(5);
/// Added to the spacing when retrying a failed collection.
pub const RETRY_EXTRA: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Policy {
    config: Config,
    /// When the next collection is due, if one is scheduled.
    next: Option<Instant>,
    /// When the previous collection (successful or not) ended.
    last: Option<Instant>,
    /// The time the running collection had been scheduled for; `Some`
    /// while one runs.
    running_since_due: Option<Instant>,
    interval: Duration,
    pause_sum: Duration,
    collections: u32,
    /// Counted since the previous successful collection.
    mutations: u64,
    deletions: u64,
    /// The previous collection failed: the next due time collects.
    retry: bool,
}

impl Policy {
    /// A policy started at `now`.
    pub fn new(config: Config, now: Instant) -> Policy {
        let next = (!config.startup_delay.is_zero()).then(|| now + config.startup_delay);
        Policy {
            config,
            next,
            last: None,
            running_since_due: None,
            interval: INITIAL_INTERVAL,
            pause_sum: Duration::ZERO,
            collections: 0,
            mutations: 0,
            deletions: 0,
            retry: false,
        }
    }

    /// When to call [`Policy::due`] next; `None`: wait for a notice.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.running_since_due.is_some() {
            None
        } else {
            self.next
        }
    }

    /// Whether a collection is running (between `due` returning true and
    /// `collected` or `failed`).
    pub fn is_collecting(&self) -> bool {
        self.running_since_due.is_some()
    }

    /// The current spacing between collections.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// `mutations` write transactions, `deletions` of them removing
    /// something, were committed (as one coalesced notice).
    pub fn notice(&mut self, now: Instant, mutations: u64, deletions: u64) {
        if self.is_collecting() {
            return;
        }
        self.mutations = self.mutations.saturating_add(mutations);
        self.deletions = self.deletions.saturating_add(deletions);
        let c = &self.config;
        let mutation_threshold_reached = c.mutation_threshold > 0 && self.mutations >= c.mutation_threshold;
        let bring_forward = (c.deletion_threshold > 0 && self.deletions >= c.deletion_threshold as u64)
            || (self.next.is_none()
                && ((c.deletion_threshold == 0 && self.deletions > 0) || mutation_threshold_reached));
        if bring_forward {
            let at = now + c.schedule_delay;
            if self.next.is_none_or(|next| next > at) {
                self.next = Some(at);
            }
        }
    }

    /// Called at or after [`Policy::next_wakeup`]: true if a collection
    /// starts now (then report its end with `collected` or `failed`);
    /// false if it was skipped (nothing to collect) or is not due yet.
    pub fn due(&mut self, now: Instant) -> bool {
        let Some(next) = self.next.filter(|next| *next <= now && !self.is_collecting()) else {
            return false;
        };
        let c = &self.config;
        let idle = self.last.is_some()
            && !self.retry
            && self.deletions == 0
            && (c.mutation_threshold == 0 || self.mutations < c.mutation_threshold);
        if idle {
            self.next = Some(now + self.interval);
            return false;
        }
        self.running_since_due = Some(next);
        true
    }

    /// The running collection ended at `now` after pausing the store for
    /// `pause`.
    pub fn collected(&mut self, now: Instant, pause: Duration) {
        self.running_since_due = None;
        self.retry = false;
        self.pause_sum = self.pause_sum.saturating_add(pause);
        self.collections = self.collections.saturating_add(1);
        self.mutations = 0;
        self.deletions = 0;
        let threshold = self.config.pause_threshold;
        if threshold > 0.0 {
            let average = (self.pause_sum / self.collections).max(MINIMUM_PAUSE).as_secs_f64();
            self.interval = Duration::from_secs_f64(average / threshold - average);
        }
        self.last = Some(now);
        self.next = Some(now + self.interval);
    }

    /// The running collection failed at `now`; what it was meant to
    /// collect is still counted.
    pub fn failed(&mut self, now: Instant) {
        let due = self.running_since_due.take().unwrap_or(now);
        let retry = match self.last {
            Some(last) => due.saturating_duration_since(last) + RETRY_EXTRA,
            None => self.config.schedule_delay,
        };
        self.last = Some(now);
        self.next = Some(now + retry);
        self.retry = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(edit: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        edit(&mut c);
        c
    }

    /// Runs the collection that is due at `at`, pausing `pause`, and
    /// returns its end.
    fn collect_at(p: &mut Policy, at: Instant, pause: Duration) -> Instant {
        assert_eq!(p.next_wakeup(), Some(at));
        assert!(p.due(at), "a collection is due at {at:?}");
        assert!(p.is_collecting());
        assert_eq!(p.next_wakeup(), None, "no wakeup while collecting");
        let end = at + pause;
        p.collected(end, pause);
        end
    }

    #[test]
    fn the_first_collection_runs_after_the_startup_delay_even_with_nothing_to_do() {
        let t0 = Instant::now();
        let mut p = Policy::new(Config::default(), t0);
        assert_eq!(p.next_wakeup(), Some(t0 + 100 * MS));
        assert!(!p.due(t0 + 99 * MS), "not due before the startup delay");
        collect_at(&mut p, t0 + 100 * MS, MS);
    }

    #[test]
    fn no_startup_delay_means_no_first_collection_until_a_deletion() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.startup_delay = Duration::ZERO), t0);
        assert_eq!(p.next_wakeup(), None);
        p.notice(t0 + MS, 5, 0);
        assert_eq!(p.next_wakeup(), None, "mutations below the threshold schedule nothing");
        p.notice(t0 + 2 * MS, 1, 1);
        // schedule_delay 0: due at once.
        collect_at(&mut p, t0 + 2 * MS, MS);
    }

    #[test]
    fn after_a_collection_the_next_is_spaced_by_the_pause_threshold_and_skipped_when_idle() {
        let t0 = Instant::now();
        let mut p = Policy::new(Config::default(), t0);
        // A 10 ms pause at 2%: 10/0.02 - 10 = 490 ms of spacing.
        let end = collect_at(&mut p, t0 + 100 * MS, 10 * MS);
        assert_eq!(p.interval(), 490 * MS);
        let tick = end + 490 * MS;
        assert_eq!(p.next_wakeup(), Some(tick));
        // Nothing happened: skipped, and the timer moves one interval on.
        assert!(!p.due(tick));
        assert_eq!(p.next_wakeup(), Some(tick + 490 * MS));
    }

    #[test]
    fn a_deletion_is_collected_at_the_next_spaced_time_never_sooner() {
        let t0 = Instant::now();
        let mut p = Policy::new(Config::default(), t0);
        let end = collect_at(&mut p, t0 + 100 * MS, MS);
        // Pauses under 5 ms count as 5 ms: 5/0.02 - 5 = 245 ms.
        assert_eq!(p.interval(), 245 * MS);
        p.notice(end + MS, 1, 1);
        assert_eq!(p.next_wakeup(), Some(end + 245 * MS), "the deletion does not bring it forward");
        assert!(!p.due(end + 244 * MS));
        collect_at(&mut p, end + 245 * MS, MS);
    }

    #[test]
    fn the_pause_average_covers_every_collection() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.pause_threshold = 0.5), t0);
        let end = collect_at(&mut p, t0 + 100 * MS, 10 * MS);
        assert_eq!(p.interval(), 10 * MS, "10/0.5 - 10");
        p.notice(end, 1, 1);
        collect_at(&mut p, end + 10 * MS, 30 * MS);
        assert_eq!(p.interval(), 20 * MS, "average 20: 20/0.5 - 20");
    }

    #[test]
    fn without_a_pause_threshold_the_spacing_stays_one_second() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.pause_threshold = 0.0), t0);
        let end = collect_at(&mut p, t0 + 100 * MS, 50 * MS);
        assert_eq!(p.next_wakeup(), Some(end + INITIAL_INTERVAL));
    }

    #[test]
    fn mutations_make_the_next_spaced_time_collect_once_they_reach_the_threshold() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.mutation_threshold = 10), t0);
        let end = collect_at(&mut p, t0 + 100 * MS, MS);
        let tick = end + 245 * MS;
        p.notice(end + MS, 9, 0);
        assert!(!p.due(tick), "9 mutations of 10: skipped");
        let tick = tick + 245 * MS;
        p.notice(tick - MS, 1, 0);
        assert_eq!(p.next_wakeup(), Some(tick), "reaching the threshold does not bring it forward");
        collect_at(&mut p, tick, MS);
    }

    #[test]
    fn a_zero_mutation_threshold_ignores_mutations() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.mutation_threshold = 0), t0);
        let end = collect_at(&mut p, t0 + 100 * MS, MS);
        p.notice(end + MS, 1_000_000, 0);
        assert!(!p.due(end + 245 * MS));
    }

    #[test]
    fn the_deletion_threshold_brings_a_collection_forward_to_the_schedule_delay() {
        let t0 = Instant::now();
        let mut p = Policy::new(
            config(|c| {
                c.deletion_threshold = 3;
                c.schedule_delay = 20 * MS;
                c.pause_threshold = 0.001;
            }),
            t0,
        );
        let end = collect_at(&mut p, t0 + 100 * MS, MS);
        // 5/0.001 - 5 ms: about five seconds of spacing.
        assert_eq!(p.next_wakeup(), Some(end + 4995 * MS));
        p.notice(end + MS, 2, 2);
        assert_eq!(p.next_wakeup(), Some(end + 4995 * MS), "2 deletions of 3");
        // One notice may carry several deletions (coalesced).
        p.notice(end + 2 * MS, 1, 1);
        collect_at(&mut p, end + 22 * MS, MS);
    }

    #[test]
    fn a_later_threshold_never_pushes_a_scheduled_collection_back() {
        let t0 = Instant::now();
        let mut p = Policy::new(
            config(|c| {
                c.deletion_threshold = 1;
                c.schedule_delay = 50 * MS;
            }),
            t0,
        );
        p.notice(t0 + 10 * MS, 1, 1);
        assert_eq!(p.next_wakeup(), Some(t0 + 60 * MS));
        p.notice(t0 + 20 * MS, 1, 1);
        assert_eq!(p.next_wakeup(), Some(t0 + 60 * MS), "still the first one's time");
        p.notice(t0 + 90 * MS, 1, 1);
        assert_eq!(p.next_wakeup(), Some(t0 + 60 * MS), "nor does a third");
    }

    #[test]
    fn a_negative_deletion_threshold_never_schedules_but_deletions_are_still_collected() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.deletion_threshold = -1), t0);
        let end = collect_at(&mut p, t0 + 100 * MS, MS);
        p.notice(end + MS, 1, 1);
        assert_eq!(p.next_wakeup(), Some(end + 245 * MS), "not brought forward");
        collect_at(&mut p, end + 245 * MS, MS);

        let mut p = Policy::new(
            config(|c| {
                c.deletion_threshold = -1;
                c.startup_delay = Duration::ZERO;
            }),
            t0,
        );
        p.notice(t0, 1, 1);
        assert_eq!(p.next_wakeup(), None, "nothing scheduled, nothing brings one");
    }

    #[test]
    fn notices_during_a_collection_are_covered_by_it() {
        let t0 = Instant::now();
        let mut p = Policy::new(Config::default(), t0);
        assert!(p.due(t0 + 100 * MS));
        p.notice(t0 + 101 * MS, 500, 500);
        p.collected(t0 + 102 * MS, MS);
        assert!(!p.due(t0 + 102 * MS + 245 * MS), "nothing left to collect");
    }

    #[test]
    fn coalesced_notices_add_up() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.deletion_threshold = 10), t0);
        let end = collect_at(&mut p, t0 + 100 * MS, MS);
        for i in 1..=4 {
            p.notice(end + i * MS, 3, 2);
        }
        assert_eq!(p.next_wakeup(), Some(end + 245 * MS), "8 deletions of 10");
        p.notice(end + 5 * MS, 3, 2);
        collect_at(&mut p, end + 5 * MS, MS);
    }

    #[test]
    fn a_failed_collection_is_retried_and_keeps_its_counts() {
        let t0 = Instant::now();
        let mut p = Policy::new(config(|c| c.schedule_delay = 7 * MS), t0);
        // The first one fails: retried schedule_delay later.
        assert!(p.due(t0 + 100 * MS));
        p.failed(t0 + 101 * MS);
        assert_eq!(p.next_wakeup(), Some(t0 + 108 * MS));
        // That one fails too: the previous spacing (7 ms) plus a second.
        assert!(p.due(t0 + 108 * MS), "a retry runs though nothing new happened");
        p.failed(t0 + 110 * MS);
        assert_eq!(p.next_wakeup(), Some(t0 + 110 * MS + 7 * MS + RETRY_EXTRA));
        // Once one succeeds, an idle time is skipped again.
        let end = collect_at(&mut p, t0 + 1117 * MS, MS);
        assert!(!p.due(end + 245 * MS));
    }

    #[test]
    fn a_timer_before_its_time_does_nothing() {
        let t0 = Instant::now();
        let mut p = Policy::new(Config::default(), t0);
        assert!(!p.due(t0));
        assert_eq!(p.next_wakeup(), Some(t0 + 100 * MS));
    }
}
