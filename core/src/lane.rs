//! Lanes: where the core polls a plugin library's futures, so that a
//! plugin which blocks or spins stalls only itself.
//!
//! Why: a plugin's handler is someone else's code. The SDK polls a unary
//! handler in place (`in_context`), on whichever thread polls the call's
//! `FfiFuture`; before lanes that was a worker of the core's runtime, which
//! also accepts connections, runs HTTP/2 handshakes and serves every other
//! plugin. One `std::thread::sleep` in a handler, on a 2-core machine,
//! froze the whole daemon (issue 12). Nothing the core can check ahead of
//! time tells a well-behaved `poll` from one that never returns, so every
//! entry into a plugin's code (a call, its output frames, shutdown) runs
//! on that plugin's lane: one thread of the core's own, driving a
//! current-thread runtime. The core's workers only await a `JoinHandle`.
//!
//! One lane per plugin, started on the plugin's first call: the bundled
//! plugins share one library, and one thread for all of them would
//! serialise every unary call of the daemon. (Plugins of one library still
//! share that library's tokio runtime, so a handler that blocks the
//! runtime's workers, rather than the lane, slows its siblings: the core
//! cannot help that, and it stays inside the library's author's code.)
//!
//! The price is one hop per call between the core's worker and the lane
//! (a spawn and a wake-up, a few µs; `tests/benches/roundtrip.rs` measures
//! it against the old in-place polling, and BENCHMARKS.md records it).
//!
//! Init does not run on the lane: each init runs on a thread of its own,
//! under a timeout (`plugins.rs`), so that an init which never returns
//! costs a thread, never a lane.

use std::{future::Future, panic::AssertUnwindSafe};

use futures::FutureExt;
use tokio::runtime::Handle;

use crated_plugin_api::runtime::AbortOnDrop;

/// The thread on which one plugin's futures are polled.
pub struct Lane {
    name: String,
    /// The lane's runtime, once its thread is started.
    handle: std::sync::OnceLock<Option<Handle>>,
}

/// How a piece of work on a lane ended without a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneError {
    /// The plugin's code panicked.
    Panicked,
    /// The lane could not run it (its thread is gone).
    Gone,
}

impl Lane {
    /// A lane for the plugin `name` (its id); its thread starts on first use.
    pub fn new(name: &str) -> Lane {
        Lane { name: name.to_string(), handle: std::sync::OnceLock::new() }
    }

    fn handle(&self) -> Option<&Handle> {
        self.handle
            .get_or_init(|| match start_thread(&self.name) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(lane = %self.name, "cannot start the plugin's lane thread: {e}");
                    None
                }
            })
            .as_ref()
    }

    /// Runs `fut` on the lane and returns its value, wherever the returned
    /// future is polled from. A panic while polling `fut` is caught on the
    /// lane. Dropping the returned future (a cancelled call) aborts the work.
    pub fn run<T, F>(&self, fut: F) -> impl Future<Output = Result<T, LaneError>> + Send + 'static
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let mut task = self.handle().map(|h| AbortOnDrop(h.spawn(AssertUnwindSafe(fut).catch_unwind())));
        async move {
            let Some(task) = task.as_mut() else { return Err(LaneError::Gone) };
            match (&mut task.0).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(_)) => Err(LaneError::Panicked),
                Err(e) if e.is_panic() => Err(LaneError::Panicked),
                Err(_) => Err(LaneError::Gone),
            }
        }
    }
}

/// Starts a lane's thread, driving a current-thread runtime.
fn start_thread(name: &str) -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let handle = runtime.handle().clone();
    // Linux keeps 15 bytes of a thread's name.
    let thread_name: String = format!("lane-{name}").chars().take(15).collect();
    std::thread::Builder::new().name(thread_name).spawn(move || {
        // Runs the spawned tasks for as long as the process lives: plugins
        // are never unloaded, so their lanes never end.
        runtime.block_on(std::future::pending::<()>());
    })?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_blocked_lane_does_not_block_the_caller_nor_another_lane() {
        let (a, b) = (Lane::new("a"), Lane::new("b"));
        let (release, released) = std::sync::mpsc::channel::<()>();
        // Blocks lane a's thread until released, as a misbehaving handler would.
        let blocked = a.run(async move {
            let _ = released.recv();
            1
        });
        let blocked = tokio::spawn(blocked);
        // The core's only worker is free, and lane b answers.
        assert_eq!(b.run(async { 2 }).await, Ok(2));
        assert!(!blocked.is_finished());
        release.send(()).unwrap();
        assert_eq!(blocked.await.unwrap(), Ok(1));
    }

    #[tokio::test]
    async fn panics_are_caught_and_cancelled_work_is_aborted() {
        let lane = Lane::new("p");
        assert_eq!(lane.run(async { panic!("boom") }).await, Err::<(), _>(LaneError::Panicked));
        // The lane survives its work's panic.
        assert_eq!(lane.run(async { 3 }).await, Ok(3));

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let work = lane.run(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        drop(work);
        // The task was aborted, so its end of the channel is dropped.
        tokio::time::timeout(Duration::from_secs(10), rx).await.unwrap().unwrap_err();
    }
}
