//! Test plugins that misbehave, in one library, for the tests of "a
//! misbehaving plugin costs only itself" (tests/misbehaving_plugins.rs):
//! handlers that block or spin on their thread until released, an init that
//! never returns (and a plugin that depends on it), a shutdown hook that
//! never returns, and a plugin that crashes its process with SIGSEGV on
//! request (only ever called where it is isolated in a plugin host).
//!
//! Every plugin serves a `Pid` method answering with the pid of the process
//! that runs it, so a test can tell an isolated plugin (in a plugin host)
//! from one running inside the daemon. Each test enables only the plugins it
//! needs (`disabled_plugins`).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crated_plugin_api::{
    export_plugins, Call, Code, Host, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter, Status,
};
use crated_tests::{
    echo_method,
    misbehave::{
        AFTER_HANG_SERVICE, CRASHER_SERVICE, ENTERED_FILE, HANG_INIT_ENTERED, HANG_INIT_TYPE, MISBEHAVE_TYPE,
        RELEASE_CAP, RELEASE_FILE, SLEEPER_SERVICE, SPINNER_SERVICE, STUCK_SERVICE, STUCK_SHUTDOWN_ENTERED,
    },
    EchoRequest, EchoResponse,
};

/// The daemon's state directory (the parent of this plugin's own).
fn daemon_state(ctx: &InitCtx) -> PathBuf {
    ctx.state.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Appends a line to `file` (the marker a test waits for).
fn record(file: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{line}");
    }
}

/// Adds `/<service>/Pid`: the pid of the process this plugin runs in.
fn with_pid(router: ServiceRouter, service: &str) -> ServiceRouter {
    router.unary(&format!("/{service}/Pid"), |_call: Call, _req: EchoRequest| async move {
        Ok(EchoResponse { text: std::process::id().to_string(), namespace: String::new() })
    })
}

/// What a blocking or spinning call does after it has waited: the request
/// names a directory; the call has entered once it appended to
/// `<dir>/entered`, and it returns once `<dir>/release` exists (or fails
/// after [`RELEASE_CAP`], so a broken test cannot leave it running);
/// `None` while it has to wait on.
fn released(dir: &Path, started: Instant) -> Option<Result<EchoResponse, Status>> {
    if dir.join(RELEASE_FILE).exists() {
        Some(Ok(EchoResponse { text: "released".into(), namespace: String::new() }))
    } else if started.elapsed() > RELEASE_CAP {
        Some(Err(Status::new(Code::DeadlineExceeded, format!("not released within {RELEASE_CAP:?}"))))
    } else {
        None
    }
}

/// Records entering, then sleeps on this thread until released.
fn sleep_until_released(dir: &Path) -> Result<EchoResponse, Status> {
    record(&dir.join(ENTERED_FILE), &format!("sleeper {}", std::process::id()));
    let started = Instant::now();
    loop {
        match released(dir, started) {
            None => std::thread::sleep(Duration::from_millis(20)),
            Some(done) => return done,
        }
    }
}

fn request_dir(req: &EchoRequest) -> Result<PathBuf, Status> {
    if req.text.is_empty() {
        return Err(Status::invalid_argument("the request names the directory of the entered/release files"));
    }
    Ok(PathBuf::from(&req.text))
}

/// `io.crated.test.misbehave.v1.sleeper`: `Block` sleeps on its thread
/// (`std::thread::sleep`, never yielding) until released; `BlockStream`
/// does so while producing its stream's frame.
struct Sleeper;

impl Plugin for Sleeper {
    fn info() -> PluginInfo {
        PluginInfo::new(MISBEHAVE_TYPE, "sleeper")
    }

    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let router = ServiceRouter::new()
            .unary(&format!("/{SLEEPER_SERVICE}/Block"), |_call: Call, req: EchoRequest| async move {
                sleep_until_released(&request_dir(&req)?)
            })
            // The same, in the one frame of a server stream: the handler
            // returns at once, producing the frame blocks.
            .server_streaming(&format!("/{SLEEPER_SERVICE}/BlockStream"), |_call: Call, req: EchoRequest| async move {
                let dir = request_dir(&req)?;
                Ok(futures::stream::once(async move { sleep_until_released(&dir) }))
            });
        Ok(with_pid(router, SLEEPER_SERVICE))
    }
}

/// `io.crated.test.misbehave.v1.spinner`: `Spin` busy-loops on its thread
/// until released, looking at the clock only every million turns and at
/// the release file only every ~10 ms.
struct Spinner;

impl Plugin for Spinner {
    fn info() -> PluginInfo {
        PluginInfo::new(MISBEHAVE_TYPE, "spinner")
    }

    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let router = ServiceRouter::new().unary(
            &format!("/{SPINNER_SERVICE}/Spin"),
            |_call: Call, req: EchoRequest| async move {
                let dir = request_dir(&req)?;
                record(&dir.join(ENTERED_FILE), &format!("spinner {}", std::process::id()));
                let started = Instant::now();
                let mut looked = Instant::now();
                let mut turns: u64 = 0;
                loop {
                    turns = turns.wrapping_add(1);
                    std::hint::spin_loop();
                    if !turns.is_multiple_of(1_000_000) || looked.elapsed() < Duration::from_millis(10) {
                        continue;
                    }
                    looked = Instant::now();
                    if let Some(done) = released(&dir, started) {
                        return done;
                    }
                }
            },
        );
        Ok(with_pid(router, SPINNER_SERVICE))
    }
}

/// Sleeps on this thread forever.
fn block_forever() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `io.crated.test.hanginit.v1.hang`: its init never returns. It first
/// records that it was entered (`<daemon state>/hang-init-entered`), then
/// blocks its thread forever: by default synchronously in the init entry
/// itself, before any future exists (`hang_in = "entry"`); with
/// `hang_in = "future"`, inside the init future when it is first polled.
struct HangInit;

impl Plugin for HangInit {
    fn info() -> PluginInfo {
        PluginInfo::new(HANG_INIT_TYPE, "hang").config_defaults("hang_in = \"entry\"\n")
    }

    // Not an `async fn`: the point is to block before the future exists.
    fn init(ctx: InitCtx) -> impl std::future::Future<Output = Result<ServiceRouter, PluginError>> + Send + 'static {
        let in_future = ctx.config.get("hang_in").and_then(|v| v.as_str()) == Some("future");
        let marker = daemon_state(&ctx).join(HANG_INIT_ENTERED);
        if !in_future {
            record(&marker, "entry");
            block_forever();
        }
        async move {
            record(&marker, "future");
            block_forever();
            Ok(ServiceRouter::new())
        }
    }
}

/// `io.crated.test.misbehave.v1.after-hang`: requires the type of the plugin
/// whose init never returns.
struct AfterHang;

impl Plugin for AfterHang {
    fn info() -> PluginInfo {
        PluginInfo::new(MISBEHAVE_TYPE, "after-hang").requires(&[HANG_INIT_TYPE])
    }

    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(with_pid(ServiceRouter::new(), AFTER_HANG_SERVICE))
    }
}

/// `io.crated.test.misbehave.v1.stuck`: its shutdown hook records that it
/// ran (`<daemon state>/stuck-shutdown-entered`) and then blocks its thread
/// forever.
struct Stuck;

impl Plugin for Stuck {
    fn info() -> PluginInfo {
        PluginInfo::new(MISBEHAVE_TYPE, "stuck")
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let marker = daemon_state(&ctx).join(STUCK_SHUTDOWN_ENTERED);
        let router = ServiceRouter::new().on_shutdown(move || {
            let marker = marker.clone();
            async move {
                record(&marker, "shutdown");
                block_forever();
            }
        });
        Ok(with_pid(router, STUCK_SERVICE))
    }
}

/// `io.crated.test.misbehave.v1.crasher`: `Crash` kills its whole process
/// with SIGSEGV, `Panic` panics (an `Internal` for that call only), `Relay`
/// calls its dependency, the echo plugin of `libecho.so`, through its host.
struct Crasher;

impl Plugin for Crasher {
    fn info() -> PluginInfo {
        PluginInfo::new(MISBEHAVE_TYPE, "crasher").requires(&["io.crated.test.v1"])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let host: Host = ctx.host.clone();
        let router = ServiceRouter::new()
            .unary(&format!("/{CRASHER_SERVICE}/Crash"), |_call: Call, _req: EchoRequest| async move {
                crash();
                Ok(EchoResponse::default())
            })
            .unary(&format!("/{CRASHER_SERVICE}/Panic"), |_call: Call, req: EchoRequest| async move {
                if !req.text.is_empty() {
                    panic!("crasher was asked to panic: {}", req.text);
                }
                Ok(EchoResponse::default())
            })
            .unary(&format!("/{CRASHER_SERVICE}/Relay"), move |call: Call, req: EchoRequest| {
                let host = host.clone();
                async move {
                    let inner = Host::call(&echo_method("Echo"), call.namespace());
                    let resp: EchoResponse = host.unary(&inner, &req).await?;
                    Ok(EchoResponse { text: format!("relayed: {}", resp.text), namespace: resp.namespace })
                }
            });
        Ok(with_pid(router, CRASHER_SERVICE))
    }
}

/// Dies of SIGSEGV: a store to an address in the first page, which is never
/// mapped (the kernel's `mmap_min_addr`). Not to a null pointer: the
/// standard library's debug precondition check would turn that into an
/// abort (SIGABRT) before the store happens.
fn crash() {
    let unmapped = std::ptr::without_provenance_mut::<u64>(8);
    // SAFETY: deliberately unsound. The store faults and the kernel kills
    // the process with SIGSEGV; that is what this test plugin is for, and
    // it is only ever called in a plugin host the test isolated it into.
    unsafe { unmapped.write_volatile(0xdead) };
}

export_plugins!(Sleeper, Spinner, HangInit, AfterHang, Stuck, Crasher);
