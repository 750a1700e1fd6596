//! The plugin library's own tokio runtime, and the two ways plugin work
//! crosses back to the core: [`in_context`] and [`on_runtime`].
//!
//! Why: a cdylib links its own copy of tokio, with its own thread-locals.
//! A future that touches tokio's reactor or timers (sockets, files, sleep)
//! panics with "there is no reactor running" when the core polls it on the
//! core's runtime. So every piece of plugin work is spawned onto this
//! library's runtime, and what the core polls is only the `JoinHandle`, which
//! needs no reactor. Dropping the returned future aborts the task, so a call
//! the client cancelled stops doing work.
//!
//! The cheaper way, used for unary calls, is [`in_context`]: the future is
//! polled by whichever thread polls the call (in crated, the plugin's lane,
//! a thread of the core's), but each poll runs inside this library's
//! runtime context (`Runtime::enter`, which sets *this* copy of tokio's
//! thread-locals). Timers and sockets then register with this library's
//! reactor, which its own worker threads drive, and wake the polling task
//! through the waker they were given. No task hop onto this library's
//! runtime: measured in `tests/benches/roundtrip.rs`.

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

/// How a spawned task ended without a value.
pub enum TaskEnd {
    /// It panicked, with this message.
    Panicked(String),
    /// It was aborted.
    Cancelled,
}

/// Spawns `fut` on this library's runtime; the returned future (which the
/// core may poll from any thread) yields its value, or how it ended without
/// one. Dropping the returned future aborts the task.
pub fn spawn_joined<T, F>(fut: F) -> impl Future<Output = Result<T, TaskEnd>> + Send + 'static
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let mut task = AbortOnDrop(runtime().spawn(fut));
    async move {
        match (&mut task.0).await {
            Ok(value) => Ok(value),
            Err(e) if e.is_panic() => Err(TaskEnd::Panicked(panic_message(&*e.into_panic()))),
            Err(_) => Err(TaskEnd::Cancelled),
        }
    }
}

/// Runs `fut` on this library's runtime and returns a future the core can
/// poll from any thread. A panic in `fut` becomes `Internal`.
pub fn on_runtime<T, F>(fut: F) -> impl Future<Output = Result<T, Status>> + Send + 'static
where
    T: Send + 'static,
    F: Future<Output = Result<T, Status>> + Send + 'static,
{
    let joined = spawn_joined(fut);
    async move {
        match joined.await {
            Ok(result) => result,
            Err(TaskEnd::Panicked(m)) => Err(Status::internal(format!("plugin panicked: {m}"))),
            Err(TaskEnd::Cancelled) => Err(Status::new(crate::Code::Cancelled, "plugin task was cancelled")),
        }
    }
}

/// Polls `fut` inside this library's runtime context, wherever it is polled
/// from. A panic in `fut` becomes `Internal`.
pub fn in_context<T, F>(fut: F) -> InContext<F>
where
    F: Future<Output = Result<T, Status>>,
{
    InContext { inner: Some(Box::pin(fut)) }
}

/// See [`in_context`].
pub struct InContext<F> {
    inner: Option<std::pin::Pin<Box<F>>>,
}

impl<T, F: Future<Output = Result<T, Status>>> Future for InContext<F> {
    type Output = Result<T, Status>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(Err(Status::internal("polled after completion")));
        };
        let _entered = runtime().enter();
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(r)) => {
                self.inner = None;
                std::task::Poll::Ready(r)
            }
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(p) => {
                // Never poll a future that panicked again.
                self.inner = None;
                std::task::Poll::Ready(Err(Status::internal(format!("plugin panicked: {}", panic_message(&*p)))))
            }
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
