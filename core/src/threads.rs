//! The stack of every thread of the process, for `/debug/pprof/goroutine`:
//! the nearest thing a Rust process has to Go's goroutine dump.
//!
//! Linux gives no way to read another thread's stack from inside the
//! process, so each thread is asked to walk its own: the dumper sends it a
//! real-time signal with `tgkill`, and the handler unwinds from where the
//! thread was interrupted into a fixed set of atomics (no allocation, no
//! lock: it runs in signal context). The dumper then resolves the addresses
//! to symbols on its own thread. Threads are asked one at a time, under one
//! lock, so one slot is enough.
//!
//! A thread that does not answer within a bound (it blocks the signal, or
//! is stuck in the kernel uninterruptibly) is listed without a stack. A late
//! handler cannot write into the next thread's dump: the handler first
//! claims the request (`TARGET`, compare-and-swap from its own tid), and the
//! dumper withdraws an unanswered request with the same compare-and-swap.
//!
//! The signal interrupts blocking system calls; the handler is installed
//! with `SA_RESTART`, and the calls that return `EINTR` regardless (epoll,
//! futex waits with timeouts) are retried by std and tokio, as they are for
//! the SIGPROF of the CPU profiler.
//!
//! tokio's task dumps would need a `tokio_unstable` build; not offered.

use std::{
    ffi::c_void,
    fmt::Write as _,
    sync::{
        atomic::{AtomicI32, AtomicUsize, Ordering},
        Mutex, Once,
    },
    time::{Duration, Instant},
};

const MAX_FRAMES: usize = 128;
const ANSWER_WITHIN: Duration = Duration::from_millis(200);

/// The thread asked to dump, or the negated tid once its handler claimed
/// the request, or 0 for none.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// Frames written by the handler; `DEPTH` is published last.
static FRAMES: [AtomicUsize; MAX_FRAMES] = [const { AtomicUsize::new(0) }; MAX_FRAMES];
static DEPTH: AtomicUsize = AtomicUsize::new(usize::MAX);
static ONE_DUMP_AT_A_TIME: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

/// The signal: one of the real-time signals glibc leaves to programs, near
/// the top of the range where libraries rarely look.
fn dump_signal() -> i32 {
    libc::SIGRTMAX() - 3
}

extern "C" fn on_dump_signal(_: i32) {
    // SAFETY: __errno_location returns this thread's errno slot, always
    // valid to read; errno is saved and restored around everything the
    // handler does so the interrupted code never sees it change.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: gettid has no preconditions and is async-signal-safe.
    let tid = unsafe { libc::gettid() };
    if TARGET.compare_exchange(tid, -tid, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        let mut depth = 0;
        // SAFETY: trace_unsynchronized must not race another
        // unsynchronized trace in this thread: the dump lock admits one
        // handler at a time, and a handler does not interrupt itself (its
        // signal is blocked while it runs). In signal context it walks the
        // stack with libgcc's unwinder, which since GCC 12 on glibc 2.35+
        // finds unwind tables with the lock-free `_dl_find_object`, so an
        // interrupted thread that holds the loader's lock cannot deadlock it
        // (the pprof crate's SIGPROF handler relies on the same).
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                FRAMES[depth].store(frame.ip() as usize, Ordering::Relaxed);
                depth += 1;
                depth < MAX_FRAMES
            });
        }
        DEPTH.store(depth, Ordering::Release);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn install() -> Result<(), String> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler is an `extern "C" fn(i32)` as sa_handler
        // expects without SA_SIGINFO, and it only touches atomics and errno.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_dump_signal as extern "C" fn(i32) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(dump_signal(), &action, std::ptr::null_mut()) != 0 {
                result = Err(format!("installing the dump signal handler: {}", std::io::Error::last_os_error()));
            }
        }
    });
    result
}

/// One thread's dump.
pub struct ThreadStack {
    pub tid: i32,
    pub name: String,
    pub state: String,
    /// Return addresses, innermost first; `None` if the thread did not answer.
    pub frames: Option<Vec<usize>>,
}

/// The threads of this process: (tid, name), by tid.
pub fn list() -> Vec<(i32, String)> {
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

fn state_of(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("State:").map(|v| v.trim().to_string())))
        .unwrap_or_else(|| "gone".into())
}

/// Asks every thread for its stack. Blocking (it waits for each answer):
/// call it from a blocking thread.
pub fn dump() -> Result<Vec<ThreadStack>, String> {
    install()?;
    let _one = ONE_DUMP_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut out = Vec::new();
    for (tid, name) in list() {
        let state = state_of(tid);
        DEPTH.store(usize::MAX, Ordering::Release);
        TARGET.store(tid, Ordering::Release);
        // SAFETY: tgkill with our own pid and a tid listed in our own
        // /proc/self/task; a thread that exited since gives ESRCH.
        let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, dump_signal()) } == 0;
        let deadline = Instant::now() + ANSWER_WITHIN;
        let frames = loop {
            let depth = DEPTH.load(Ordering::Acquire);
            if depth != usize::MAX {
                break Some(FRAMES[..depth].iter().map(|f| f.load(Ordering::Relaxed)).collect::<Vec<_>>());
            }
            if !sent || Instant::now() >= deadline {
                // Withdraw the request; if the handler claimed it meanwhile,
                // it is unwinding now: wait for it to publish.
                if TARGET.compare_exchange(tid, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    break None;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        TARGET.store(0, Ordering::Release);
        out.push(ThreadStack { tid, name, state, frames });
    }
    Ok(out)
}

/// The dump as text, one block per thread, shaped like Go's goroutine dump
/// (`debug=2`): a header line, then one function per line with its source
/// position indented below it. The signal handler's own frames are dropped.
pub fn render(stacks: &[ThreadStack]) -> String {
    let mut out = format!(
        "crated: the stack of each of the {} threads of pid {} (Rust has no goroutines; \
         tokio task dumps are not built in)\n\n",
        stacks.len(),
        std::process::id()
    );
    for t in stacks {
        let _ = writeln!(out, "thread {} [{}] \"{}\":", t.tid, t.state, t.name);
        let Some(frames) = &t.frames else {
            out.push_str("\t(no stack: the thread did not answer the dump signal)\n\n");
            continue;
        };
        let mut lines = Vec::new();
        for (i, ip) in frames.iter().enumerate() {
            // A return address points after the call; resolve the call.
            let addr = if i == 0 { *ip } else { ip.saturating_sub(1) };
            let mut named = false;
            backtrace::resolve(addr as *mut c_void, |sym| {
                named = true;
                let name = sym.name().map(|n| format!("{n:#}")).unwrap_or_else(|| format!("{addr:#x}"));
                let place = match (sym.filename(), sym.lineno()) {
                    (Some(f), Some(l)) => format!("{}:{l}", f.display()),
                    (Some(f), None) => f.display().to_string(),
                    _ => format!("{addr:#x}"),
                };
                lines.push((name, place));
            });
            if !named {
                lines.push((format!("{addr:#x}"), "?".into()));
            }
        }
        // Drop the handler and the kernel's signal trampoline.
        if let Some(last) = lines.iter().rposition(|(n, _)| n.contains("__restore_rt") || n.contains("on_dump_signal"))
        {
            lines.drain(..=last);
        }
        for (name, place) in lines {
            let _ = writeln!(out, "{name}\n\t{place}");
        }
        out.push('\n');
    }
    out
}
