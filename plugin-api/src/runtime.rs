//! The plugin library's own tokio runtime, and the one way plugin work
//! crosses back to the core: [`on_runtime`].
//!
//! Why: a cdylib links its own copy of tokio, with its own thread-locals.
//! A future that touches tokio's reactor or timers (sockets, files, sleep)
//! panics with "there is no reactor running" when the core polls it on the
//! core's runtime. So every piece of plugin work is spawned onto this
//! library's runtime, and what the core polls is only the `JoinHandle`, which
//! needs no reactor. Dropping the returned future aborts the task, so a call
//! the client cancelled stops doing work.

use std::{
    any::Any,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::OnceLock,
};

use tokio::{runtime::Runtime, task::JoinHandle};

use crate::Status;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// This library's runtime, started on first use.
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("crated-plugin")
            .enable_all()
            .build()
            // Without a runtime the plugin can do nothing at all; the panic
            // is caught at the FFI entry point and reported as an init error.
            .expect("cannot start the plugin's tokio runtime")
    })
}

/// Aborts the task when dropped.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fut` on this library's runtime and returns a future the core can
/// poll from any thread. A panic in `fut` becomes `Internal`.
pub fn on_runtime<T, F>(fut: F) -> impl Future<Output = Result<T, Status>> + Send + 'static
where
    T: Send + 'static,
    F: Future<Output = Result<T, Status>> + Send + 'static,
{
    let mut task = AbortOnDrop(runtime().spawn(fut));
    async move {
        match (&mut task.0).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                Err(Status::internal(format!("plugin panicked: {}", panic_message(&*e.into_panic()))))
            }
            Err(_) => Err(Status::new(crate::Code::Cancelled, "plugin task was cancelled")),
        }
    }
}

/// Runs a synchronous FFI entry point body, turning a panic into an error
/// message instead of an abort of the whole daemon.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
