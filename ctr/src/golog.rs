//! Log lines on stderr in the format of logrus' text formatter (what stock
//! ctr's `log.G(ctx)` writes when stderr is not a terminal):
//! `time="2006-01-02T15:04:05Z07:00" level=error msg="..." error="..."`.

use std::io::Write;

use crate::gotime::{rfc3339_local, Timestamp};

/// logrus quotes a value unless every character is in `[A-Za-z0-9-._/@^+]`.
fn needs_quoting(s: &str) -> bool {
    !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | '@' | '^' | '+'))
}

/// Go's `strconv.Quote` (`%q`) for valid UTF-8 text.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => {
                let n = c as u32;
                if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn value(s: &str) -> String {
    if needs_quoting(s) {
        go_quote(s)
    } else {
        s.to_string()
    }
}

/// One logrus line with an `error` field.
pub fn format_line(time: &str, level: &str, msg: &str, error: &str) -> String {
    format!("time={} level={} msg={} error={}\n", value(time), level, value(msg), value(error))
}

fn emit(level: &str, msg: &str, error: &dyn std::fmt::Display) {
    let line = format_line(&rfc3339_local(Timestamp::now()), level, msg, &error.to_string());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `log.G(ctx).WithError(err).Error(msg)`.
pub fn error(msg: &str, err: &dyn std::fmt::Display) {
    emit("error", msg, err)
}

/// `log.G(ctx).Warnf(...)`: a warning without an error field.
pub fn warn_plain(msg: &str) {
    let line = format!("time={} level=warning msg={}\n", value(&rfc3339_local(Timestamp::now())), value(msg));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `logrus.Info(msg)`: an informational line without an error field.
pub fn info_plain(msg: &str) {
    let line = format!("time={} level=info msg={}\n", value(&rfc3339_local(Timestamp::now())), value(msg));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `log.G(ctx).WithError(err).Warn(msg)`.
pub fn warn(msg: &str, err: &dyn std::fmt::Display) {
    emit("warning", msg, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logrus_text_format() {
        assert_eq!(
            format_line(
                "2026-11-27T20:47:39Z",
                "error",
                "unable to delete default",
                "namespace \"default\" must be empty: failed precondition"
            ),
            "time=\"2026-11-27T20:47:39Z\" level=error msg=\"unable to delete default\" error=\"namespace \\\"default\\\" must be empty: failed precondition\"\n"
        );
        assert_eq!(format_line("t", "warning", "plain", "a/b-c.d"), "time=t level=warning msg=plain error=a/b-c.d\n");
        assert_eq!(go_quote("a\tb\u{1}é"), "\"a\\tb\\x01é\"");
    }
}
