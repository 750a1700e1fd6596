//! What stock ctr 1.6 prints for an event payload: `typeurl.UnmarshalAny`
//! into the registered Go type, then `encoding/json.Marshal` of it.
//!
//! The payload is decoded here straight from the protobuf wire format against
//! the field lists of containerd 1.6's `api/events` (and `types.Mount`), so
//! the JSON has exactly the fields, names, order and `omitempty` rules of the
//! gogo-generated Go structs, whatever version of the protos the daemon or
//! the Rust client bindings were built from.

use std::collections::BTreeMap;

use crate::gotime::{rfc3339_nano_utc, Timestamp, GO_ZERO_TIME_SECS};

/// How a field is typed in the Go struct, which decides its JSON form.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `string` with `omitempty`.
    Str,
    /// `digest.Digest` without `omitempty`.
    StrAlways,
    /// `uint32` with `omitempty`.
    U32,
    /// `bool` with `omitempty`.
    Bool,
    /// `map[string]string` with `omitempty`.
    Map,
    /// `time.Time` (gogo stdtime, not nullable): always present.
    Time,
    /// `*Message` with `omitempty`.
    Msg(&'static [Field]),
    /// `[]*Message` with `omitempty`.
    RepMsg(&'static [Field]),
    /// `[]string` with `omitempty`.
    RepStr,
    /// `*types.Any` with `omitempty` (`type_url`, `value` as base64).
    Any,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    num: u32,
    name: &'static str,
    kind: Kind,
}

const fn f(num: u32, name: &'static str, kind: Kind) -> Field {
    Field { num, name, kind }
}

use Kind::*;

const MOUNT: &[Field] = &[f(1, "type", Str), f(2, "source", Str), f(3, "target", Str), f(4, "options", RepStr)];
const TASK_IO: &[Field] = &[f(1, "stdin", Str), f(2, "stdout", Str), f(3, "stderr", Str), f(4, "terminal", Bool)];
const CONTAINER_RUNTIME: &[Field] = &[f(1, "name", Str), f(2, "options", Any)];

/// containerd 1.6's event types, by type URL (its image events keep the
/// historical package `containerd.services.images.v1`).
const EVENTS: &[(&str, &[Field])] = &[
    (
        "containerd.events.ContainerCreate",
        &[f(1, "id", Str), f(2, "image", Str), f(3, "runtime", Msg(CONTAINER_RUNTIME))],
    ),
    (
        "containerd.events.ContainerUpdate",
        &[f(1, "id", Str), f(2, "image", Str), f(3, "labels", Map), f(4, "snapshot_key", Str)],
    ),
    ("containerd.events.ContainerDelete", &[f(1, "id", Str)]),
    ("containerd.events.ContentDelete", &[f(1, "digest", StrAlways)]),
    ("containerd.services.images.v1.ImageCreate", &[f(1, "name", Str), f(2, "labels", Map)]),
    ("containerd.services.images.v1.ImageUpdate", &[f(1, "name", Str), f(2, "labels", Map)]),
    ("containerd.services.images.v1.ImageDelete", &[f(1, "name", Str)]),
    ("containerd.events.NamespaceCreate", &[f(1, "name", Str), f(2, "labels", Map)]),
    ("containerd.events.NamespaceUpdate", &[f(1, "name", Str), f(2, "labels", Map)]),
    ("containerd.events.NamespaceDelete", &[f(1, "name", Str)]),
    ("containerd.events.SnapshotPrepare", &[f(1, "key", Str), f(2, "parent", Str)]),
    ("containerd.events.SnapshotCommit", &[f(1, "key", Str), f(2, "name", Str)]),
    ("containerd.events.SnapshotRemove", &[f(1, "key", Str)]),
    (
        "containerd.events.TaskCreate",
        &[
            f(1, "container_id", Str),
            f(2, "bundle", Str),
            f(3, "rootfs", RepMsg(MOUNT)),
            f(4, "io", Msg(TASK_IO)),
            f(5, "checkpoint", Str),
            f(6, "pid", U32),
        ],
    ),
    ("containerd.events.TaskStart", &[f(1, "container_id", Str), f(2, "pid", U32)]),
    (
        "containerd.events.TaskDelete",
        &[
            f(1, "container_id", Str),
            f(2, "pid", U32),
            f(3, "exit_status", U32),
            f(4, "exited_at", Time),
            f(5, "id", Str),
        ],
    ),
    ("containerd.events.TaskIO", TASK_IO),
    (
        "containerd.events.TaskExit",
        &[
            f(1, "container_id", Str),
            f(2, "id", Str),
            f(3, "pid", U32),
            f(4, "exit_status", U32),
            f(5, "exited_at", Time),
        ],
    ),
    ("containerd.events.TaskOOM", &[f(1, "container_id", Str)]),
    ("containerd.events.TaskExecAdded", &[f(1, "container_id", Str), f(2, "exec_id", Str)]),
    ("containerd.events.TaskExecStarted", &[f(1, "container_id", Str), f(2, "exec_id", Str), f(3, "pid", U32)]),
    ("containerd.events.TaskPaused", &[f(1, "container_id", Str)]),
    ("containerd.events.TaskResumed", &[f(1, "container_id", Str)]),
    ("containerd.events.TaskCheckpointed", &[f(1, "container_id", Str), f(2, "checkpoint", Str)]),
];

/// Why an event could not be rendered (the texts stock ctr logs).
#[derive(Debug, PartialEq, Eq)]
pub enum EventError {
    /// typeurl: no Go type registered under this URL.
    UnknownType(String),
    /// The payload is not valid protobuf for the type.
    Decode(&'static str),
}

impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventError::UnknownType(url) => write!(f, "type with url {url}: not found"),
            EventError::Decode(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for EventError {}

/// The JSON stock ctr prints for an event `Any`.
pub fn event_json(type_url: &str, value: &[u8]) -> Result<String, EventError> {
    let fields = EVENTS
        .iter()
        .find(|(url, _)| *url == type_url)
        .map(|(_, f)| *f)
        .ok_or_else(|| EventError::UnknownType(type_url.to_string()))?;
    let mut out = String::new();
    message_json(&mut out, fields, value)?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Protobuf wire format.

#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

const ERR_EOF: &str = "unexpected EOF";
const ERR_OVERFLOW: &str = "proto: integer overflow";
const ERR_WIRE: &str = "proto: illegal wireType";

fn varint(buf: &mut &[u8]) -> Result<u64, EventError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(EventError::Decode(ERR_EOF))?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(EventError::Decode(ERR_OVERFLOW))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], EventError> {
    if buf.len() < n {
        return Err(EventError::Decode(ERR_EOF));
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Ok(a)
}

/// Split a message into (field number, value) pairs.
fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, EventError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let num = (key >> 3) as u32;
        let v = match key & 7 {
            0 => Wire::Varint(varint(&mut buf)?),
            1 => {
                take(&mut buf, 8)?;
                Wire::Fixed
            }
            2 => {
                let n = varint(&mut buf)?;
                let n = usize::try_from(n).map_err(|_| EventError::Decode(ERR_EOF))?;
                Wire::Bytes(take(&mut buf, n)?)
            }
            5 => {
                take(&mut buf, 4)?;
                Wire::Fixed
            }
            _ => return Err(EventError::Decode(ERR_WIRE)),
        };
        out.push((num, v));
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A decoded `google.protobuf.Timestamp`.
fn timestamp(b: &[u8]) -> Result<Timestamp, EventError> {
    let (mut secs, mut nanos) = (0i64, 0i32);
    for (num, v) in fields(b)? {
        match (num, v) {
            (1, Wire::Varint(x)) => secs = x as i64,
            (2, Wire::Varint(x)) => nanos = x as i32,
            _ => {}
        }
    }
    Ok(Timestamp::from_proto(secs, nanos))
}

fn message_json(out: &mut String, schema: &[Field], value: &[u8]) -> Result<(), EventError> {
    let wire = fields(value)?;
    out.push('{');
    let mut first = true;
    for field in schema {
        let vals: Vec<Wire> = wire.iter().filter(|(n, _)| *n == field.num).map(|(_, v)| *v).collect();
        let last_bytes = vals.iter().rev().find_map(|v| match v {
            Wire::Bytes(b) => Some(*b),
            _ => None,
        });
        let last_varint = vals.iter().rev().find_map(|v| match v {
            Wire::Varint(x) => Some(*x),
            _ => None,
        });
        let mut rendered = String::new();
        let present = match field.kind {
            Str | StrAlways => {
                let s = last_bytes.map(utf8).unwrap_or_default();
                json_string(&mut rendered, &s);
                !s.is_empty() || matches!(field.kind, StrAlways)
            }
            U32 => {
                let n = last_varint.unwrap_or(0) as u32;
                rendered.push_str(&n.to_string());
                n != 0
            }
            Bool => {
                let b = last_varint.unwrap_or(0) != 0;
                rendered.push_str(if b { "true" } else { "false" });
                b
            }
            Map => {
                let mut map = BTreeMap::new();
                for v in &vals {
                    if let Wire::Bytes(entry) = v {
                        let (mut k, mut val) = (String::new(), String::new());
                        for (n, w) in fields(entry)? {
                            match (n, w) {
                                (1, Wire::Bytes(b)) => k = utf8(b),
                                (2, Wire::Bytes(b)) => val = utf8(b),
                                _ => {}
                            }
                        }
                        map.insert(k, val);
                    }
                }
                rendered.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        rendered.push(',');
                    }
                    json_string(&mut rendered, k);
                    rendered.push(':');
                    json_string(&mut rendered, v);
                }
                rendered.push('}');
                !map.is_empty()
            }
            Time => {
                let t = match last_bytes {
                    Some(b) => timestamp(b)?,
                    None => Timestamp { secs: GO_ZERO_TIME_SECS, nanos: 0 },
                };
                rendered.push('"');
                rendered.push_str(&rfc3339_nano_utc(t));
                rendered.push('"');
                true
            }
            Msg(inner) => match last_bytes {
                Some(b) => {
                    message_json(&mut rendered, inner, b)?;
                    true
                }
                None => false,
            },
            RepMsg(inner) => {
                rendered.push('[');
                let mut n = 0;
                for v in &vals {
                    if let Wire::Bytes(b) = v {
                        if n > 0 {
                            rendered.push(',');
                        }
                        message_json(&mut rendered, inner, b)?;
                        n += 1;
                    }
                }
                rendered.push(']');
                n > 0
            }
            RepStr => {
                rendered.push('[');
                let mut n = 0;
                for v in &vals {
                    if let Wire::Bytes(b) = v {
                        if n > 0 {
                            rendered.push(',');
                        }
                        json_string(&mut rendered, &utf8(b));
                        n += 1;
                    }
                }
                rendered.push(']');
                n > 0
            }
            Any => match last_bytes {
                Some(b) => {
                    let (mut url, mut value) = (String::new(), Vec::new());
                    for (n, w) in fields(b)? {
                        match (n, w) {
                            (1, Wire::Bytes(x)) => url = utf8(x),
                            (2, Wire::Bytes(x)) => value = x.to_vec(),
                            _ => {}
                        }
                    }
                    rendered.push('{');
                    let mut sep = "";
                    if !url.is_empty() {
                        rendered.push_str("\"type_url\":");
                        json_string(&mut rendered, &url);
                        sep = ",";
                    }
                    if !value.is_empty() {
                        rendered.push_str(sep);
                        rendered.push_str("\"value\":\"");
                        rendered.push_str(&base64(&value));
                        rendered.push('"');
                    }
                    rendered.push('}');
                    true
                }
                None => false,
            },
        };
        if !present {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        json_string(out, field.name);
        out.push(':');
        out.push_str(&rendered);
    }
    out.push('}');
    Ok(())
}

// ---------------------------------------------------------------------------
// encoding/json details.

/// A JSON string as Go's `encoding/json` writes it (HTML-safe escaping of
/// `<`, `>` and `&`, and of U+2028/U+2029).
pub fn json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{0}'..='\u{1f}' => {
                let b = c as u32;
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Standard base64 with padding (Go's `[]byte` in JSON).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(num: u32, wt: u8) -> u8 {
        ((num << 3) as u8) | wt
    }

    fn bytes_field(num: u32, b: &[u8]) -> Vec<u8> {
        let mut v = vec![key(num, 2), b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    fn map_entry(num: u32, k: &str, val: &str) -> Vec<u8> {
        let mut e = bytes_field(1, k.as_bytes());
        e.extend(bytes_field(2, val.as_bytes()));
        bytes_field(num, &e)
    }

    #[test]
    fn namespace_create_like_stock() {
        let mut v = bytes_field(1, b"evns");
        v.extend(map_entry(2, "x", "<&>"));
        v.extend(map_entry(2, "q", "1"));
        assert_eq!(
            event_json("containerd.events.NamespaceCreate", &v).unwrap(),
            r#"{"name":"evns","labels":{"q":"1","x":"\u003c\u0026\u003e"}}"#
        );
        assert_eq!(
            event_json("containerd.events.NamespaceDelete", &bytes_field(1, b"evns")).unwrap(),
            r#"{"name":"evns"}"#
        );
        // Empty name and labels are omitted.
        assert_eq!(event_json("containerd.events.NamespaceUpdate", &[]).unwrap(), "{}");
    }

    #[test]
    fn digest_is_never_omitted() {
        assert_eq!(event_json("containerd.events.ContentDelete", &[]).unwrap(), r#"{"digest":""}"#);
    }

    #[test]
    fn task_exit_times_and_numbers() {
        let mut ts = vec![key(1, 0)];
        // 1795812406 as a varint.
        let mut n: u64 = 1_795_812_406;
        while n >= 0x80 {
            ts.push((n as u8) | 0x80);
            n >>= 7;
        }
        ts.push(n as u8);
        ts.extend([key(2, 0), 5]);
        let mut v = bytes_field(1, b"c1");
        v.extend([key(3, 0), 42, key(4, 0), 0]);
        v.extend(bytes_field(5, &ts));
        assert_eq!(
            event_json("containerd.events.TaskExit", &v).unwrap(),
            r#"{"container_id":"c1","pid":42,"exited_at":"2026-11-27T20:46:46.000000005Z"}"#
        );
        // A missing time is Go's zero time.
        assert_eq!(
            event_json("containerd.events.TaskDelete", &bytes_field(1, b"c1")).unwrap(),
            r#"{"container_id":"c1","exited_at":"0001-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn nested_messages() {
        let mut mount = bytes_field(1, b"overlay");
        mount.extend(bytes_field(4, b"ro"));
        mount.extend(bytes_field(4, b"x"));
        let mut io = bytes_field(2, b"/out");
        io.extend([key(4, 0), 1]);
        let mut v = bytes_field(1, b"c1");
        v.extend(bytes_field(3, &mount));
        v.extend(bytes_field(4, &io));
        assert_eq!(
            event_json("containerd.events.TaskCreate", &v).unwrap(),
            r#"{"container_id":"c1","rootfs":[{"type":"overlay","options":["ro","x"]}],"io":{"stdout":"/out","terminal":true}}"#
        );
        let mut any = bytes_field(1, b"t");
        any.extend(bytes_field(2, b"\x01\x02\x03\x04"));
        let mut rt = bytes_field(1, b"io.containerd.runc.v2");
        rt.extend(bytes_field(2, &any));
        let mut v = bytes_field(1, b"c1");
        v.extend(bytes_field(3, &rt));
        assert_eq!(
            event_json("containerd.events.ContainerCreate", &v).unwrap(),
            r#"{"id":"c1","runtime":{"name":"io.containerd.runc.v2","options":{"type_url":"t","value":"AQIDBA=="}}}"#
        );
        // A present but empty sub-message is kept (non-nil pointer).
        let v = bytes_field(4, b"");
        assert_eq!(event_json("containerd.events.TaskCreate", &v).unwrap(), r#"{"io":{}}"#);
    }

    #[test]
    fn unknown_and_broken() {
        assert_eq!(event_json("foo.Bar", &[]).unwrap_err().to_string(), "type with url foo.Bar: not found");
        assert_eq!(
            event_json("containerd.events.TaskOOM", &[key(1, 2), 5, b'a']).unwrap_err().to_string(),
            "unexpected EOF"
        );
    }

    #[test]
    fn base64_and_escapes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n\u{1}\u{2028}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001\u2028é""#);
    }
}
