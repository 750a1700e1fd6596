//! The scheduler's config, `[plugins."io.containerd.gc.v1.scheduler"]`,
//! with containerd's key names, defaults, clamping and Go duration strings.
//!
//! The Go duration parser here overlaps with `ctr/src/duration.rs`: the
//! two binaries share no crate (ctr does not link plugin-api, and a plugin
//! must not depend on ctr), and this one only needs what a config file
//! holds, so each keeps its own small parser.

use std::time::Duration;

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

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("time: invalid duration \"{0}\"")]
pub struct DurationError(pub String);

/// Go's `time.ParseDuration`: an optional sign, then one or more decimal
/// numbers each with a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g.
/// `"1m30s"`, `"1.5s"`, `"-2ms"`; a bare `"0"` is zero. In nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i64, DurationError> {
    let invalid = || DurationError(text.to_string());
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    // Whole nanoseconds accumulate in u128 so that only the final value
    // can overflow (Go's limit is i64 nanoseconds, about 290 years).
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let whole: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| invalid())? };
        let mut value = whole.checked_mul(scale).ok_or_else(invalid)?;
        // The fraction, truncated to whole nanoseconds as Go does.
        let mut place = scale;
        for digit in frac_part.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            value += u128::from(digit - b'0') * place;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + u128::from(negative) {
            return Err(invalid());
        }
        rest = after;
    }
    let total = total as i128;
    Ok((if negative { -total } else { total }) as i64)
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

    #[test]
    fn go_durations() {
        let ok = [
            ("0", 0),
            ("0ms", 0),
            ("100ms", 100_000_000),
            ("1.5s", 1_500_000_000),
            ("1m30s", 90_000_000_000),
            ("2h", 7_200_000_000_000),
            ("-2ms", -2_000_000),
            ("+3us", 3_000),
            ("4µs", 4_000),
            (".5s", 500_000_000),
            ("1.000000001s", 1_000_000_001),
            ("1.0000000019s", 1_000_000_001),
            ("10ns", 10),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ];
        for (text, nanos) in ok {
            assert_eq!(parse_go_duration(text), Ok(nanos), "{text}");
        }
        for bad in ["", "-", "10", "1x", "s", ".s", "1.2.3s", "ms1", "2562047h47m16.854775808s", "1 s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
    }
}
