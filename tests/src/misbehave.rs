//! Names shared by the misbehaving test plugins (`examples/misbehave.rs`)
//! and their tests (`tests/misbehaving_plugins.rs`).

use std::time::Duration;

/// The type of every misbehaving plugin but the one whose init hangs.
pub const MISBEHAVE_TYPE: &str = "io.crated.test.misbehave.v1";
/// The type of the plugin whose init never returns (its own, so that its
/// dependent's requirement names it alone).
pub const HANG_INIT_TYPE: &str = "io.crated.test.hanginit.v1";

/// `Block`, `BlockStream` (and `Pid`): the plugin whose handler sleeps on
/// its thread.
pub const SLEEPER_SERVICE: &str = "crated.test.misbehave.Sleeper";
/// `Spin` (and `Pid`): the plugin whose handler busy-loops.
pub const SPINNER_SERVICE: &str = "crated.test.misbehave.Spinner";
/// `Crash`, `Panic`, `Relay` (and `Pid`).
pub const CRASHER_SERVICE: &str = "crated.test.misbehave.Crasher";
/// `Pid` of the plugin whose shutdown hook hangs.
pub const STUCK_SERVICE: &str = "crated.test.misbehave.Stuck";
/// `Pid` of the dependent of the plugin whose init hangs.
pub const AFTER_HANG_SERVICE: &str = "crated.test.misbehave.AfterHang";

/// In the directory a `Block`/`Spin` request names: a line per call that
/// has entered the handler.
pub const ENTERED_FILE: &str = "entered";
/// In the same directory: its existence releases the calls.
pub const RELEASE_FILE: &str = "release";
/// How long a call waits for its release at most.
pub const RELEASE_CAP: Duration = Duration::from_secs(120);

/// In the daemon's state directory: written when the hung init was entered.
pub const HANG_INIT_ENTERED: &str = "hang-init-entered";
/// In the daemon's state directory: written when the hung shutdown hook ran.
pub const STUCK_SHUTDOWN_ENTERED: &str = "stuck-shutdown-entered";
