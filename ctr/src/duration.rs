//! Go-style durations (`time.ParseDuration`): "10s", "1m30s", "500ms", "1.5h", "0".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A signed duration in nanoseconds, parsed with Go's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoDuration(pub i64);

impl GoDuration {
    /// The duration if it is positive; zero and negative mean "none", as in
    /// ctr's `if timeout > 0`.
    pub fn positive(self) -> Option<Duration> {
        u64::try_from(self.0).ok().filter(|&n| n > 0).map(Duration::from_nanos)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDurationError(String);

impl fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseDurationError {}

const NS: u64 = 1;
const US: u64 = 1_000 * NS;
const MS: u64 = 1_000 * US;
const SEC: u64 = 1_000 * MS;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;

fn unit(name: &str) -> Option<u64> {
    Some(match name {
        "ns" => NS,
        "us" | "µs" | "μs" => US,
        "ms" => MS,
        "s" => SEC,
        "m" => MIN,
        "h" => HOUR,
        _ => return None,
    })
}

impl FromStr for GoDuration {
    type Err = ParseDurationError;

    fn from_str(orig: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseDurationError(format!("time: invalid duration \"{orig}\""));
        let overflow = || ParseDurationError(format!("time: invalid duration \"{orig}\""));

        let mut s = orig;
        let mut neg = false;
        if let Some(rest) = s.strip_prefix('-') {
            neg = true;
            s = rest;
        } else if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        }
        if s == "0" {
            return Ok(GoDuration(0));
        }
        if s.is_empty() {
            return Err(invalid());
        }

        let mut total: u64 = 0;
        while !s.is_empty() {
            // Integer part.
            let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let int_part = &s[..int_len];
            s = &s[int_len..];
            // Fraction.
            let mut frac_part = "";
            if let Some(rest) = s.strip_prefix('.') {
                let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                frac_part = &rest[..n];
                s = &rest[n..];
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
            // Unit.
            let unit_len = s.char_indices().find(|&(_, c)| c == '.' || c.is_ascii_digit()).map_or(s.len(), |(i, _)| i);
            if unit_len == 0 {
                return Err(ParseDurationError(format!("time: missing unit in duration \"{orig}\"")));
            }
            let unit_name = &s[..unit_len];
            s = &s[unit_len..];
            let scale = unit(unit_name).ok_or_else(|| {
                ParseDurationError(format!("time: unknown unit \"{unit_name}\" in duration \"{orig}\""))
            })?;

            let int: u64 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| overflow())? };
            let mut v = int.checked_mul(scale).ok_or_else(overflow)?;
            // Fractional part, truncated like Go (digits beyond precision dropped).
            let mut frac: u64 = 0;
            let mut frac_scale: u64 = 1;
            for d in frac_part.bytes() {
                if frac_scale >= 1 << 60 {
                    break;
                }
                frac = frac * 10 + u64::from(d - b'0');
                frac_scale *= 10;
            }
            if frac > 0 {
                let f = (frac as f64) * (scale as f64 / frac_scale as f64);
                v = v.checked_add(f as u64).ok_or_else(overflow)?;
            }
            total = total.checked_add(v).ok_or_else(overflow)?;
        }

        if neg {
            if total > i64::MAX as u64 + 1 {
                return Err(overflow());
            }
            Ok(GoDuration((total as i128).wrapping_neg() as i64))
        } else {
            i64::try_from(total).map(GoDuration).map_err(|_| overflow())
        }
    }
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String` for the common cases ctr prints ("0s", "10s", "1m30s", "500ms").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0s");
        }
        let sign = if n < 0 { "-" } else { "" };
        let u = n.unsigned_abs();
        if u < SEC {
            let (div, name) = if u < US {
                (NS, "ns")
            } else if u < MS {
                (US, "µs")
            } else {
                (MS, "ms")
            };
            return write!(f, "{sign}{}{name}", frac(u, div));
        }
        let h = u / HOUR;
        let m = (u % HOUR) / MIN;
        let s = u % MIN;
        write!(f, "{sign}")?;
        if h > 0 {
            write!(f, "{h}h{m}m")?;
        } else if m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{}s", frac(s, SEC))
    }
}

/// `v / div` as a decimal without trailing zeros.
fn frac(v: u64, div: u64) -> String {
    let int = v / div;
    let rem = v % div;
    if rem == 0 {
        return int.to_string();
    }
    let digits = div.to_string().len() - 1;
    let s = format!("{int}.{rem:0digits$}");
    s.trim_end_matches('0').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> i64 {
        s.parse::<GoDuration>().unwrap().0
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(p("0"), 0);
        assert_eq!(p("0s"), 0);
        assert_eq!(p("10s"), 10 * SEC as i64);
        assert_eq!(p("1m30s"), 90 * SEC as i64);
        assert_eq!(p("500ms"), 500 * MS as i64);
        assert_eq!(p("1.5h"), 90 * MIN as i64);
        assert_eq!(p(".5s"), 500 * MS as i64);
        assert_eq!(p("-2s"), -2 * SEC as i64);
        assert_eq!(p("1h2m3s4ms5us6ns"), (HOUR + 2 * MIN + 3 * SEC + 4 * MS + 5 * US + 6) as i64);
        assert_eq!(p("3µs"), 3000);
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["", "10", "s", "1x", "1.s.", "-", "1m30", "99999999999999999999s"] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} should fail");
        }
        assert_eq!("10".parse::<GoDuration>().unwrap_err().to_string(), "time: missing unit in duration \"10\"");
    }

    #[test]
    fn positive_only() {
        assert_eq!(GoDuration(0).positive(), None);
        assert_eq!(GoDuration(-5).positive(), None);
        assert_eq!(GoDuration(5).positive(), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn displays_like_go() {
        for s in ["0s", "10s", "1m30s", "500ms", "1h0m0s", "1.5s", "2µs"] {
            assert_eq!(s.parse::<GoDuration>().unwrap().to_string(), s);
        }
    }
}
