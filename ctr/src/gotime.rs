//! Time formatting as Go's `time` package does it for ctr's output:
//! `Format(time.RFC3339)` in the local zone, `RFC3339Nano` (JSON) and
//! `Time.String()` in UTC, and the local zone itself (`TZ`, `/etc/localtime`,
//! TZif files with their POSIX TZ footer).

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }

    /// From a protobuf timestamp's fields (normalising out-of-range nanos).
    pub fn from_proto(seconds: i64, nanos: i32) -> Self {
        let total = seconds as i128 * 1_000_000_000 + nanos as i128;
        Self::from_nanos(total)
    }

    pub fn from_nanos(n: i128) -> Self {
        Timestamp { secs: n.div_euclid(1_000_000_000) as i64, nanos: n.rem_euclid(1_000_000_000) as u32 }
    }

    pub fn as_nanos(self) -> i128 {
        self.secs as i128 * 1_000_000_000 + self.nanos as i128
    }

    /// `time.Since(self)` in nanoseconds.
    pub fn elapsed_nanos(self) -> i128 {
        Timestamp::now().as_nanos() - self.as_nanos()
    }

    /// `t.Add(d)` with `d` in nanoseconds.
    pub fn add_nanos(self, d: i64) -> Self {
        Self::from_nanos(self.as_nanos() + d as i128)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// "2006-01-02" and "15:04:05" of a local wall-clock second count.
fn date_time(wall: i64) -> (String, String) {
    let days = wall.div_euclid(86_400);
    let sod = wall.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), format!("{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60))
}

/// Go's `.999999999` fraction: nothing for zero, else trailing zeros trimmed.
fn fraction(nanos: u32) -> String {
    if nanos == 0 {
        return String::new();
    }
    let s = format!(".{nanos:09}");
    s.trim_end_matches('0').to_string()
}

/// Go's `Z07:00`.
fn zone_z(offset: i32) -> String {
    if offset == 0 {
        return "Z".into();
    }
    let sign = if offset < 0 { '-' } else { '+' };
    let a = offset.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
}

/// `t.Local().Format(time.RFC3339)`.
pub fn rfc3339_local(t: Timestamp) -> String {
    rfc3339_with_offset(t, local_offset(t.secs))
}

/// `Format(time.RFC3339)` at a fixed UTC offset (seconds east).
pub fn rfc3339_with_offset(t: Timestamp, offset: i32) -> String {
    let (date, time) = date_time(t.secs + offset as i64);
    format!("{date}T{time}{}", zone_z(offset))
}

/// `t.UTC().Format(time.RFC3339Nano)`, what `encoding/json` writes for a
/// `time.Time` in UTC.
pub fn rfc3339_nano_utc(t: Timestamp) -> String {
    let (date, time) = date_time(t.secs);
    format!("{date}T{time}{}Z", fraction(t.nanos))
}

/// `t.UTC().String()`: "2006-01-02 15:04:05.999999999 +0000 UTC".
pub fn go_string_utc(t: Timestamp) -> String {
    let (date, time) = date_time(t.secs);
    format!("{date} {time}{} +0000 UTC", fraction(t.nanos))
}

/// Go's zero `time.Time` (January 1, year 1, UTC) as a Unix second count.
pub const GO_ZERO_TIME_SECS: i64 = -62_135_596_800;

// ---------------------------------------------------------------------------
// The local zone.

/// The local UTC offset (seconds east) at Unix time `t`, as Go's
/// `time.Local` would give it.
pub fn local_offset(t: i64) -> i32 {
    let tz = std::env::var_os("TZ");
    let data = match tz {
        None => std::fs::read("/etc/localtime").ok(),
        Some(tz) => {
            let tz = tz.to_string_lossy().into_owned();
            let tz = tz.strip_prefix(':').unwrap_or(&tz).to_string();
            if tz.is_empty() || tz == "UTC" {
                return 0;
            }
            load_zone(&tz)
        }
    };
    data.and_then(|d| tzif_offset(&d, t)).unwrap_or(0)
}

fn load_zone(name: &str) -> Option<Vec<u8>> {
    if name.starts_with('/') {
        return std::fs::read(name).ok();
    }
    if name.contains("..") {
        return None;
    }
    let mut dirs = Vec::new();
    if let Some(z) = std::env::var_os("ZONEINFO") {
        dirs.push(std::path::PathBuf::from(z));
    }
    for d in ["/usr/share/zoneinfo/", "/usr/share/lib/zoneinfo/", "/usr/lib/locale/TZ/"] {
        dirs.push(d.into());
    }
    dirs.iter().find_map(|d| std::fs::read(d.join(name)).ok())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The UTC offset at `t` from a TZif file.
pub fn tzif_offset(data: &[u8], t: i64) -> Option<i32> {
    let mut r = Reader(data);
    let header = |r: &mut Reader| -> Option<(u8, [usize; 6])> {
        if r.take(4)? != b"TZif" {
            return None;
        }
        let version = r.take(16)?[0];
        let mut n = [0usize; 6];
        for v in n.iter_mut() {
            *v = r.u32()? as usize;
        }
        Some((version, n))
    };
    let (version, mut n) = header(&mut r)?;
    // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    let mut time_size = 4;
    if version >= b'2' {
        let skip = n[3] * 4 + n[3] + n[4] * 6 + n[5] + n[2] * 8 + n[1] + n[0];
        r.take(skip)?;
        n = header(&mut r)?.1;
        time_size = 8;
    }
    let (leapcnt, timecnt, typecnt, charcnt) = (n[2], n[3], n[4], n[5]);
    let times: Vec<i64> = {
        let raw = r.take(timecnt * time_size)?;
        raw.chunks(time_size)
            .map(|c| {
                if time_size == 8 {
                    i64::from_be_bytes(c.try_into().unwrap_or([0; 8]))
                } else {
                    i32::from_be_bytes(c.try_into().unwrap_or([0; 4])) as i64
                }
            })
            .collect()
    };
    let idx = r.take(timecnt)?.to_vec();
    let types: Vec<(i32, bool)> =
        r.take(typecnt * 6)?.chunks(6).map(|c| (i32::from_be_bytes([c[0], c[1], c[2], c[3]]), c[4] != 0)).collect();
    if types.is_empty() {
        return None;
    }
    r.take(charcnt + leapcnt * (time_size + 4) + n[1] + n[0])?;
    let footer = if version >= b'2' {
        let rest = r.0;
        let s = rest.strip_prefix(b"\n").unwrap_or(rest);
        let end = s.iter().position(|&b| b == b'\n').unwrap_or(s.len());
        String::from_utf8_lossy(&s[..end]).into_owned()
    } else {
        String::new()
    };

    if times.is_empty() || t < times[0] {
        if times.is_empty() && !footer.is_empty() {
            if let Some(off) = posix_tz_offset(&footer, t) {
                return Some(off);
            }
        }
        // Go's lookupFirstZone, simplified: the first standard-time zone.
        let first = types.iter().find(|(_, dst)| !dst).unwrap_or(&types[0]);
        return Some(first.0);
    }
    let i = times.partition_point(|&x| x <= t) - 1;
    if i == times.len() - 1 && !footer.is_empty() {
        if let Some(off) = posix_tz_offset(&footer, t) {
            return Some(off);
        }
    }
    let ti = *idx.get(i)? as usize;
    types.get(ti).map(|x| x.0)
}

/// A POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3"): the offset at `t`.
pub fn posix_tz_offset(tz: &str, t: i64) -> Option<i32> {
    let mut s = tz;
    let name = |s: &mut &str| -> Option<()> {
        if let Some(rest) = s.strip_prefix('<') {
            let end = rest.find('>')?;
            *s = &rest[end + 1..];
        } else {
            let n = s.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            if n < 3 {
                return None;
            }
            *s = &s[n..];
        }
        Some(())
    };
    // [+-]hh[:mm[:ss]] in seconds.
    let offset = |s: &mut &str| -> Option<i64> {
        let mut sign = 1;
        if let Some(r) = s.strip_prefix('-') {
            sign = -1;
            *s = r;
        } else if let Some(r) = s.strip_prefix('+') {
            *s = r;
        }
        let mut total = 0i64;
        for (i, mult) in [3600, 60, 1].into_iter().enumerate() {
            if i > 0 {
                match s.strip_prefix(':') {
                    Some(r) => *s = r,
                    None => break,
                }
            }
            let n = s.chars().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            total += s[..n].parse::<i64>().ok()? * mult;
            *s = &s[n..];
        }
        Some(sign * total)
    };
    name(&mut s)?;
    let std_off = -offset(&mut s)? as i32;
    if s.is_empty() {
        return Some(std_off);
    }
    name(&mut s)?;
    let dst_off = if s.is_empty() || s.starts_with(',') { std_off + 3600 } else { -offset(&mut s)? as i32 };
    let rules = if s.is_empty() { ",M3.2.0,M11.1.0" } else { s };
    let mut parts = rules.strip_prefix(',')?.split(',');
    let start = parts.next()?;
    let end = parts.next()?;

    enum Rule {
        Julian(i64),
        Day(i64),
        Month(u32, u32, u32),
    }
    let parse_rule = |r: &str| -> Option<(Rule, i64)> {
        let (date, time) = match r.split_once('/') {
            Some((d, t)) => (d, Some(t)),
            None => (r, None),
        };
        let secs = match time {
            Some(t) => {
                let mut t = t;
                offset(&mut t)?
            }
            None => 7200,
        };
        let rule = if let Some(j) = date.strip_prefix('J') {
            Rule::Julian(j.parse().ok()?)
        } else if let Some(m) = date.strip_prefix('M') {
            let mut it = m.split('.').map(|x| x.parse::<u32>().ok());
            Rule::Month(it.next()??, it.next()??, it.next()??)
        } else {
            Rule::Day(date.parse().ok()?)
        };
        Some((rule, secs))
    };
    // Seconds since the start of `year` (local time) of the transition.
    let rule_time = |year: i64, (rule, secs): &(Rule, i64)| -> i64 {
        let jan1 = days_from_civil(year, 1, 1);
        let day = match *rule {
            Rule::Julian(n) => {
                let mut d = n - 1;
                if is_leap(year) && n >= 60 {
                    d += 1;
                }
                d
            }
            Rule::Day(n) => n,
            Rule::Month(m, w, wd) => {
                let first = days_from_civil(year, m, 1);
                let first_wd = (first + 4).rem_euclid(7) as u32;
                let mut d = (wd + 7 - first_wd) % 7 + 1 + (w.saturating_sub(1)) * 7;
                let dim = days_in_month(year, m);
                while d > dim {
                    d -= 7;
                }
                first - jan1 + d as i64 - 1
            }
        };
        day * 86_400 + secs
    };
    let start = parse_rule(start)?;
    let end = parse_rule(end)?;

    let local_std = t + std_off as i64;
    let (year, _, _) = civil_from_days(local_std.div_euclid(86_400));
    let jan1_utc = days_from_civil(year, 1, 1) * 86_400;
    let start_utc = jan1_utc + rule_time(year, &start) - std_off as i64;
    let end_utc = jan1_utc + rule_time(year, &end) - dst_off as i64;
    let in_dst = if start_utc < end_utc { t >= start_utc && t < end_utc } else { !(t >= end_utc && t < start_utc) };
    Some(if in_dst { dst_off } else { std_off })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for d in [-800_000, -1, 0, 1, 59, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn formats_like_go() {
        let t = Timestamp { secs: 1_795_812_406, nanos: 600_707_229 };
        assert_eq!(go_string_utc(t), "2026-11-27 20:46:46.600707229 +0000 UTC");
        assert_eq!(rfc3339_nano_utc(t), "2026-11-27T20:46:46.600707229Z");
        let t2 = Timestamp { secs: t.secs, nanos: 500_000_000 };
        assert_eq!(go_string_utc(t2), "2026-11-27 20:46:46.5 +0000 UTC");
        let t3 = Timestamp { secs: t.secs, nanos: 0 };
        assert_eq!(go_string_utc(t3), "2026-11-27 20:46:46 +0000 UTC");
        assert_eq!(rfc3339_with_offset(t, 0), "2026-11-27T20:46:46Z");
        assert_eq!(rfc3339_with_offset(t, 3600), "2026-11-27T21:46:46+01:00");
        assert_eq!(rfc3339_with_offset(t, -(5 * 3600 + 1800)), "2026-11-27T15:16:46-05:30");
        let zero = Timestamp { secs: GO_ZERO_TIME_SECS, nanos: 0 };
        assert_eq!(rfc3339_nano_utc(zero), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn posix_rules() {
        let cet = "CET-1CEST,M3.5.0,M10.5.0/3";
        // 2026-01-15 12:00 UTC: winter.
        let jan = days_from_civil(2026, 1, 15) * 86_400 + 43_200;
        assert_eq!(posix_tz_offset(cet, jan), Some(3600));
        // 2026-07-01: summer.
        let jul = days_from_civil(2026, 7, 1) * 86_400;
        assert_eq!(posix_tz_offset(cet, jul), Some(7200));
        // DST starts 2026-03-29 01:00 UTC.
        let start = days_from_civil(2026, 3, 29) * 86_400 + 3600;
        assert_eq!(posix_tz_offset(cet, start - 1), Some(3600));
        assert_eq!(posix_tz_offset(cet, start), Some(7200));
        let ny = "EST5EDT,M3.2.0,M11.1.0";
        assert_eq!(posix_tz_offset(ny, jan), Some(-5 * 3600));
        assert_eq!(posix_tz_offset(ny, jul), Some(-4 * 3600));
        assert_eq!(posix_tz_offset("<+0530>-5:30", jan), Some(5 * 3600 + 1800));
        assert_eq!(posix_tz_offset("UTC0", jan), Some(0));
        // Southern hemisphere: DST spans the new year.
        let syd = "AEST-10AEDT,M10.1.0,M4.1.0/3";
        assert_eq!(posix_tz_offset(syd, jan), Some(11 * 3600));
        assert_eq!(posix_tz_offset(syd, jul), Some(10 * 3600));
    }

    #[test]
    fn tzif_files_when_present() {
        let utc = std::fs::read("/usr/share/zoneinfo/Etc/UTC");
        if let Ok(data) = utc {
            assert_eq!(tzif_offset(&data, 1_795_812_406), Some(0));
        }
        if let Ok(data) = std::fs::read("/usr/share/zoneinfo/Europe/Berlin") {
            let jul = days_from_civil(2026, 7, 1) * 86_400;
            assert_eq!(tzif_offset(&data, jul), Some(7200));
            let jan = days_from_civil(2050, 1, 1) * 86_400;
            assert_eq!(tzif_offset(&data, jan), Some(3600));
            let old = days_from_civil(1990, 7, 1) * 86_400;
            assert_eq!(tzif_offset(&data, old), Some(7200));
        }
    }
}
