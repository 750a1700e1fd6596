//! Plugin logging: a plugin library writes `tracing` events as usual
//! (`tracing::warn!(...)`); this module installs, once per library, a
//! subscriber that hands each event to the daemon's logger through the ABI,
//! so plugin lines land in the daemon's log with its level filter, instead
//! of going to a second, unconfigured `tracing` copy in the library.

use std::{fmt::Write as _, sync::OnceLock};

use abi_stable::std_types::RStr;
use tracing::{
    field::{Field, Visit},
    span, Event, Level, Metadata, Subscriber,
};

/// The daemon's log function, as the ABI passes it.
pub type LogFn = extern "C" fn(u8, RStr<'_>, RStr<'_>);

static INSTALLED: OnceLock<()> = OnceLock::new();

/// The ABI number of a level: 1 = error ... 5 = trace.
pub fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The most verbose level a containerd log level lets through.
pub fn max_level(config_level: &str) -> u8 {
    match config_level {
        "trace" => 5,
        "debug" => 4,
        "warn" | "warning" => 2,
        "error" | "fatal" | "panic" => 1,
        _ => 3,
    }
}

/// Routes this library's `tracing` events to `log` (first call wins; the
/// daemon passes the same function to every plugin).
pub fn install(log: LogFn, config_level: &str) {
    let max = max_level(config_level);
    INSTALLED.get_or_init(|| {
        // Fails only when the library set its own global subscriber first,
        // in which case that one is kept.
        let _ = tracing::subscriber::set_global_default(Forward { log, max });
    });
}

struct Forward {
    log: LogFn,
    max: u8,
}

#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(metadata.level()) <= self.max
    }

    fn new_span(&self, _span: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}

    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        (self.log)(level_number(meta.level()), RStr::from_str(meta.target()), RStr::from_str(&line.0));
    }

    fn enter(&self, _span: &span::Id) {}

    fn exit(&self, _span: &span::Id) {}
}
