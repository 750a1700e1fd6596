//! The scheduler's config, `[plugins."io.containerd.gc.v1.scheduler"]`,
//! with containerd's key names, defaults, clamping and Go duration strings.
//!
//! The Go duration parser here overlaps with `ctr/src/duration.rs`: the
//! two binaries share no crate (ctr does not link plugin-api, and a plugin
//! must not depend on ctr), and this one only needs what a config file
//! holds, so each keeps its own small parser.

use std::time::Duration;

use crated_plugin_api::duration::{parse_go_duration, DurationError};
use serde::Deserialize;

/// The defaults containerd registers, as the TOML the daemon merges the
/// user's table onto (and `crated config default` prints).
pub const DEFAULTS: &str = "pause_threshold = 0.02\n\
                            deletion_threshold = 0\n\
                            mutation_threshold = 100\n\
                            schedule_delay = \"0ms\"\n\
                            startup_delay = \"100ms\"\n";

/// containerd's upper bound on `pause_threshold`: above it collections
/// would be scheduled back to back.
pub const MAX_PAUSE_THRESHOLD: f64 = 0.5;

/// The scheduling policy's settings, clamped as containerd clamps them.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The largest fraction of time the store may spend paused by
    /// scheduled collections (0 to 0.5); 0 keeps a fixed one-second
    /// spacing.
    pub pause_threshold: f64,
    /// Deletions since the previous collection that bring the next one
    /// forward to `schedule_delay` from now; 0: any deletion schedules one
    /// (when none is scheduled yet) or is collected at the next scheduled
    /// time; negative: deletions never bring one forward.
    pub deletion_threshold: i64,
    /// Mutations since the previous collection that make the next
    /// scheduled time collect; 0: mutations alone never do.
    pub mutation_threshold: u64,
    /// How far in the future a collection a threshold asked for runs.
    pub schedule_delay: Duration,
    /// When the first collection runs after start; zero: no first
    /// collection.
    pub startup_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: Duration::ZERO,
            startup_delay: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{key}: {source}")]
    Duration { key: &'static str, source: DurationError },
    #[error("{0}")]
    Invalid(String),
}

/// The table as written: containerd's types (`int` thresholds, duration
/// strings).
#[derive(Deserialize)]
struct Raw {
    #[serde(default = "default_pause_threshold")]
    pause_threshold: f64,
    #[serde(default)]
    deletion_threshold: i64,
    #[serde(default = "default_mutation_threshold")]
    mutation_threshold: i64,
    #[serde(default = "default_schedule_delay")]
    schedule_delay: String,
    #[serde(default = "default_startup_delay")]
    startup_delay: String,
}

fn default_pause_threshold() -> f64 {
    0.02
}
fn default_mutation_threshold() -> i64 {
    100
}
fn default_schedule_delay() -> String {
    "0ms".into()
}
fn default_startup_delay() -> String {
    "100ms".into()
}

/// The keys containerd's scheduler reads; others are reported, not fatal,
/// as containerd ignores them.
pub const KEYS: [&str; 5] =
    ["pause_threshold", "deletion_threshold", "mutation_threshold", "schedule_delay", "startup_delay"];

impl Config {
    /// Parses the plugin's table (defaults merged); returns the config and
    /// the keys it does not know.
    pub fn from_table(table: &toml::Table) -> Result<(Config, Vec<String>), ConfigError> {
        let unknown = table.keys().filter(|k| !KEYS.contains(&k.as_str())).cloned().collect();
        let raw: Raw = table.clone().try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        let duration = |key: &'static str, text: &str| {
            parse_go_duration(text).map_err(|source| ConfigError::Duration { key, source })
        };
        let schedule_delay = duration("schedule_delay", &raw.schedule_delay)?;
        let startup_delay = duration("startup_delay", &raw.startup_delay)?;
        if raw.pause_threshold.is_nan() {
            return Err(ConfigError::Invalid("pause_threshold: not a number".into()));
        }
        Ok((
            Config {
                pause_threshold: raw.pause_threshold.clamp(0.0, MAX_PAUSE_THRESHOLD),
                deletion_threshold: raw.deletion_threshold,
                mutation_threshold: raw.mutation_threshold.max(0) as u64,
                // Negative delays mean "now", as containerd clamps them.
                schedule_delay: nonnegative(schedule_delay),
                startup_delay: nonnegative(startup_delay),
            },
            unknown,
        ))
    }
}

fn nonnegative(nanos: i64) -> Duration {
    Duration::from_nanos(nanos.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        let mut t: toml::Table = DEFAULTS.parse().unwrap();
        t.extend(text.parse::<toml::Table>().unwrap());
        t
    }

    #[test]
    fn defaults_are_containerds() {
        let (c, unknown) = Config::from_table(&table("")).unwrap();
        assert_eq!(c, Config::default());
        assert!(unknown.is_empty());
        // An empty table (no defaults merged) means the same.
        assert_eq!(Config::from_table(&toml::Table::new()).unwrap().0, Config::default());
    }

    #[test]
    fn values_are_read_and_clamped_like_containerd() {
        let (c, unknown) = Config::from_table(&table(
            "pause_threshold = 0.9\ndeletion_threshold = 3\nmutation_threshold = -5\n\
             schedule_delay = \"1.5s\"\nstartup_delay = \"-1s\"\nfrobnicate = true\n",
        ))
        .unwrap();
        assert_eq!(c.pause_threshold, MAX_PAUSE_THRESHOLD);
        assert_eq!(c.deletion_threshold, 3);
        assert_eq!(c.mutation_threshold, 0);
        assert_eq!(c.schedule_delay, Duration::from_millis(1500));
        assert_eq!(c.startup_delay, Duration::ZERO);
        assert_eq!(unknown, ["frobnicate"]);
        let (c, _) = Config::from_table(&table("pause_threshold = -1.0")).unwrap();
        assert_eq!(c.pause_threshold, 0.0);
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let e = Config::from_table(&table("schedule_delay = \"10\"")).unwrap_err();
        assert_eq!(e.to_string(), "schedule_delay: time: invalid duration \"10\"");
        assert!(Config::from_table(&table("startup_delay = 100")).is_err());
        assert!(Config::from_table(&table("mutation_threshold = \"a lot\"")).is_err());
    }
}
