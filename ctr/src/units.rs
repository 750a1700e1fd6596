//! Human-readable sizes and durations, as docker/go-units (the version
//! vendored by containerd 1.6) renders them for ctr's tables.

use std::time::Duration;

const DECIMAL_ABBRS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];

/// `units.HumanSize`: decimal units, at most 4 significant digits
/// (`fmt.Sprintf("%.4g%s", size, unit)`), e.g. `5B`, `1.536kB`, `1000kB`.
pub fn human_size(size: f64) -> String {
    let mut size = size;
    let mut i = 0;
    while size >= 1000.0 && i < DECIMAL_ABBRS.len() - 1 {
        size /= 1000.0;
        i += 1;
    }
    format!("{}{}", format_g(size, 4), DECIMAL_ABBRS[i])
}

/// Go's `%.<prec>g`: `prec` significant digits, trailing zeros removed,
/// exponent form when the exponent is < -4 or >= prec.
pub fn format_g(v: f64, prec: usize) -> String {
    let prec = prec.max(1);
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    // Round to `prec` significant digits first: the exponent is the one of
    // the rounded value (999.95 -> 1.000e3).
    let sci = format!("{:.*e}", prec - 1, v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= prec as i32 {
        let mantissa = trim_fraction(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.unsigned_abs());
    }
    let decimals = (prec as i32 - 1 - exp).max(0) as usize;
    trim_fraction(&format!("{v:.decimals$}")).to_string()
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// `units.HumanDuration`: "Less than a second", "1 second", "5 seconds",
/// "About a minute", "3 minutes", "About an hour", "5 hours", "3 days",
/// "2 weeks", "3 months", "2 years". `d` is in nanoseconds and may be
/// negative (a clock skew), which reads as "Less than a second".
pub fn human_duration(d: i128) -> String {
    let secs_f = d as f64 / 1e9;
    let seconds = secs_f.trunc() as i64;
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = (secs_f / 60.0).trunc() as i64;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours_f = secs_f / 3600.0;
    let hours = (hours_f + 0.5).trunc() as i64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", (hours_f.trunc() as i64) / 24 / 365)
}

/// [`human_duration`] of a `std::time::Duration`.
#[cfg_attr(not(test), allow(dead_code))]
pub fn human_std_duration(d: Duration) -> String {
    human_duration(d.as_nanos() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_go_units() {
        for (n, want) in [
            (0.0, "0B"),
            (5.0, "5B"),
            (999.0, "999B"),
            (1000.0, "1kB"),
            (1536.0, "1.536kB"),
            (12345.0, "12.35kB"),
            (123456.0, "123.5kB"),
            (999_999.0, "1000kB"),
            (1_048_576.0, "1.049MB"),
            (10_000_000.0, "10MB"),
            (3.5e9, "3.5GB"),
            (1e24, "1YB"),
            (1.5e27, "1500YB"),
            (1e28, "1e+04YB"),
        ] {
            assert_eq!(human_size(n), want, "{n}");
        }
    }

    #[test]
    fn g_format_like_go() {
        assert_eq!(format_g(0.0001234, 4), "0.0001234");
        assert_eq!(format_g(0.00001234, 4), "1.234e-05");
        assert_eq!(format_g(1.0, 4), "1");
        assert_eq!(format_g(-12.5, 4), "-12.5");
        assert_eq!(format_g(123456.0, 4), "1.235e+05");
    }

    #[test]
    fn durations_like_go_units() {
        let s = |n: u64| human_std_duration(Duration::from_secs(n));
        assert_eq!(human_duration(-5_000_000_000), "Less than a second");
        assert_eq!(human_std_duration(Duration::from_millis(999)), "Less than a second");
        assert_eq!(s(1), "1 second");
        assert_eq!(s(59), "59 seconds");
        assert_eq!(s(60), "About a minute");
        assert_eq!(s(119), "About a minute");
        assert_eq!(s(120), "2 minutes");
        assert_eq!(s(59 * 60 + 59), "59 minutes");
        assert_eq!(s(3600), "About an hour");
        assert_eq!(s(5399), "About an hour");
        assert_eq!(s(5400), "2 hours");
        assert_eq!(s(47 * 3600), "47 hours");
        assert_eq!(s(48 * 3600 - 1800), "2 days");
        assert_eq!(s(13 * 86400), "13 days");
        assert_eq!(s(14 * 86400), "2 weeks");
        assert_eq!(s(59 * 86400), "8 weeks");
        assert_eq!(s(60 * 86400), "2 months");
        assert_eq!(s(729 * 86400), "24 months");
        assert_eq!(s(730 * 86400), "2 years");
    }
}
