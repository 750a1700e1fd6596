//! JSON as Go's `json.MarshalIndent(x, "", "    ")` writes it, for
//! ctr's `PrintAsJSON`, and the OCI runtime spec re-encoded through the
//! field order of runtime-spec's Go structs (what `typeurl.UnmarshalAny`
//! followed by `json.Marshal` does in stock ctr).

use serde_json::Value;

use crate::eventjson::json_string;

/// A JSON value with object members in a chosen order.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn str(s: &str) -> J {
        J::Str(s.to_string())
    }

    /// Go's `json.Marshal`: no whitespace.
    pub fn compact(&self) -> String {
        let mut out = String::new();
        self.write_compact(&mut out);
        out
    }

    fn write_compact(&self, out: &mut String) {
        match self {
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_compact(out);
                }
                out.push(']');
            }
            J::Obj(items) => {
                out.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(out, k);
                    out.push(':');
                    v.write_compact(out);
                }
                out.push('}');
            }
            scalar => scalar.write(out, 0),
        }
    }

    /// Go's `MarshalIndent` with a four-space indent.
    pub fn indent(&self) -> String {
        self.indent_with("    ")
    }

    /// Go's `MarshalIndent` with the given indent.
    pub fn indent_with(&self, unit: &str) -> String {
        let mut out = String::new();
        self.write_unit(&mut out, 0, unit);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        self.write_unit(out, depth, "    ")
    }

    fn write_unit(&self, out: &mut String, depth: usize, unit: &str) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            for _ in 0..d {
                out.push_str(unit);
            }
        };
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => json_string(out, s),
            J::Arr(items) if items.is_empty() => out.push_str("[]"),
            J::Obj(items) if items.is_empty() => out.push_str("{}"),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    item.write_unit(out, depth + 1, unit);
                }
                pad(out, depth);
                out.push(']');
            }
            J::Obj(items) => {
                out.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    json_string(out, k);
                    out.push_str(": ");
                    v.write_unit(out, depth + 1, unit);
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

/// A generic value: maps sorted by key, as Go writes maps.
pub fn from_value(v: &Value) -> J {
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Number(n) => J::Num(n.to_string()),
        Value::String(s) => J::Str(s.clone()),
        Value::Array(a) => J::Arr(a.iter().map(from_value).collect()),
        // serde_json's map (without `preserve_order`) is sorted.
        Value::Object(m) => J::Obj(m.iter().map(|(k, v)| (k.clone(), from_value(v))).collect()),
    }
}

// ---------------------------------------------------------------------------
// The runtime spec (runtime-spec v1.0.3-0.20210326190908, as vendored by
// containerd 1.6).

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Num,
    /// A non-pointer struct: never omitted.
    Struct(&'static [F]),
    /// A pointer to a struct.
    Ptr(&'static [F]),
    /// A pointer to a number or a bool (`*int64`, `*bool`): omitted only
    /// when nil.
    NumPtr,
    List(&'static Kind),
    /// A map, or a struct not described here: written with sorted keys.
    Raw,
}

#[derive(Clone, Copy)]
struct F(&'static str, Kind, bool);

const STR_LIST: Kind = Kind::List(&Kind::Str);

const USER: &[F] = &[
    F("uid", Kind::Num, false),
    F("gid", Kind::Num, false),
    F("umask", Kind::NumPtr, true),
    F("additionalGids", Kind::List(&Kind::Num), true),
    F("username", Kind::Str, true),
];
const BOX: &[F] = &[F("height", Kind::Num, false), F("width", Kind::Num, false)];
const CAPS: &[F] = &[
    F("bounding", STR_LIST, true),
    F("effective", STR_LIST, true),
    F("inheritable", STR_LIST, true),
    F("permitted", STR_LIST, true),
    F("ambient", STR_LIST, true),
];
const RLIMIT: &[F] = &[F("type", Kind::Str, false), F("hard", Kind::Num, false), F("soft", Kind::Num, false)];
const PROCESS: &[F] = &[
    F("terminal", Kind::Bool, true),
    F("consoleSize", Kind::Ptr(BOX), true),
    F("user", Kind::Struct(USER), false),
    F("args", STR_LIST, true),
    F("commandLine", Kind::Str, true),
    F("env", STR_LIST, true),
    F("cwd", Kind::Str, false),
    F("capabilities", Kind::Ptr(CAPS), true),
    F("rlimits", Kind::List(&Kind::Struct(RLIMIT)), true),
    F("noNewPrivileges", Kind::Bool, true),
    F("apparmorProfile", Kind::Str, true),
    F("oomScoreAdj", Kind::NumPtr, true),
    F("selinuxLabel", Kind::Str, true),
];
const ROOT: &[F] = &[F("path", Kind::Str, false), F("readonly", Kind::Bool, true)];
const MOUNT: &[F] = &[
    F("destination", Kind::Str, false),
    F("type", Kind::Str, true),
    F("source", Kind::Str, true),
    F("options", STR_LIST, true),
];
const HOOK: &[F] = &[
    F("path", Kind::Str, false),
    F("args", STR_LIST, true),
    F("env", STR_LIST, true),
    F("timeout", Kind::NumPtr, true),
];
const HOOK_LIST: Kind = Kind::List(&Kind::Struct(HOOK));
const HOOKS: &[F] = &[
    F("prestart", HOOK_LIST, true),
    F("createRuntime", HOOK_LIST, true),
    F("createContainer", HOOK_LIST, true),
    F("startContainer", HOOK_LIST, true),
    F("poststart", HOOK_LIST, true),
    F("poststop", HOOK_LIST, true),
];
const NAMESPACE: &[F] = &[F("type", Kind::Str, false), F("path", Kind::Str, true)];
const ID_MAPPING: &[F] =
    &[F("containerID", Kind::Num, false), F("hostID", Kind::Num, false), F("size", Kind::Num, false)];
const DEVICE_CGROUP: &[F] = &[
    F("allow", Kind::Bool, false),
    F("type", Kind::Str, true),
    F("major", Kind::NumPtr, true),
    F("minor", Kind::NumPtr, true),
    F("access", Kind::Str, true),
];
const MEMORY: &[F] = &[
    F("limit", Kind::NumPtr, true),
    F("reservation", Kind::NumPtr, true),
    F("swap", Kind::NumPtr, true),
    F("kernel", Kind::NumPtr, true),
    F("kernelTCP", Kind::NumPtr, true),
    F("swappiness", Kind::NumPtr, true),
    F("disableOOMKiller", Kind::NumPtr, true),
    F("useHierarchy", Kind::NumPtr, true),
];
const CPU: &[F] = &[
    F("shares", Kind::NumPtr, true),
    F("quota", Kind::NumPtr, true),
    F("period", Kind::NumPtr, true),
    F("realtimeRuntime", Kind::NumPtr, true),
    F("realtimePeriod", Kind::NumPtr, true),
    F("cpus", Kind::Str, true),
    F("mems", Kind::Str, true),
];
const PIDS: &[F] = &[F("limit", Kind::Num, false)];
const RESOURCES: &[F] = &[
    F("devices", Kind::List(&Kind::Struct(DEVICE_CGROUP)), true),
    F("memory", Kind::Ptr(MEMORY), true),
    F("cpu", Kind::Ptr(CPU), true),
    F("pids", Kind::Ptr(PIDS), true),
    F("blockIO", Kind::Raw, true),
    F("hugepageLimits", Kind::Raw, true),
    F("network", Kind::Raw, true),
    F("rdma", Kind::Raw, true),
    F("unified", Kind::Raw, true),
];
const DEVICE: &[F] = &[
    F("path", Kind::Str, false),
    F("type", Kind::Str, false),
    F("major", Kind::Num, false),
    F("minor", Kind::Num, false),
    F("fileMode", Kind::NumPtr, true),
    F("uid", Kind::NumPtr, true),
    F("gid", Kind::NumPtr, true),
];
const INTEL_RDT: &[F] =
    &[F("closID", Kind::Str, true), F("l3CacheSchema", Kind::Str, true), F("memBwSchema", Kind::Str, true)];
const LINUX: &[F] = &[
    F("uidMappings", Kind::List(&Kind::Struct(ID_MAPPING)), true),
    F("gidMappings", Kind::List(&Kind::Struct(ID_MAPPING)), true),
    F("sysctl", Kind::Raw, true),
    F("resources", Kind::Ptr(RESOURCES), true),
    F("cgroupsPath", Kind::Str, true),
    F("namespaces", Kind::List(&Kind::Struct(NAMESPACE)), true),
    F("devices", Kind::List(&Kind::Struct(DEVICE)), true),
    F("seccomp", Kind::Raw, true),
    F("rootfsPropagation", Kind::Str, true),
    F("maskedPaths", STR_LIST, true),
    F("readonlyPaths", STR_LIST, true),
    F("mountLabel", Kind::Str, true),
    F("intelRdt", Kind::Ptr(INTEL_RDT), true),
    F("personality", Kind::Raw, true),
];
const SPEC: &[F] = &[
    F("ociVersion", Kind::Str, false),
    F("process", Kind::Ptr(PROCESS), true),
    F("root", Kind::Ptr(ROOT), true),
    F("hostname", Kind::Str, true),
    F("mounts", Kind::List(&Kind::Struct(MOUNT)), true),
    F("hooks", Kind::Ptr(HOOKS), true),
    F("annotations", Kind::Raw, true),
    F("linux", Kind::Ptr(LINUX), true),
    F("solaris", Kind::Raw, true),
    F("windows", Kind::Raw, true),
    F("vm", Kind::Raw, true),
];

/// Whether `encoding/json`'s `omitempty` drops this value.
fn is_empty(v: Option<&Value>, kind: Kind) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(v) => match kind {
            Kind::Str => v.as_str().is_some_and(str::is_empty),
            Kind::Bool => v.as_bool() == Some(false),
            Kind::Num => v.as_f64() == Some(0.0),
            Kind::Struct(_) | Kind::Ptr(_) | Kind::NumPtr => false,
            Kind::List(_) => v.as_array().is_some_and(Vec::is_empty),
            Kind::Raw => {
                v.as_object().is_some_and(|m| m.is_empty())
                    || v.as_array().is_some_and(Vec::is_empty)
                    || v.as_str().is_some_and(str::is_empty)
                    || v.as_bool() == Some(false)
                    || v.as_f64() == Some(0.0)
            }
        },
    }
}

fn encode(v: Option<&Value>, kind: Kind) -> J {
    let v = v.filter(|v| !v.is_null());
    match kind {
        Kind::Str => J::Str(v.and_then(Value::as_str).unwrap_or_default().to_string()),
        Kind::Bool => J::Bool(v.and_then(Value::as_bool).unwrap_or(false)),
        Kind::Num => v.map_or(J::Num("0".into()), from_value),
        Kind::NumPtr | Kind::Raw => v.map_or(J::Null, from_value),
        Kind::Struct(fields) => encode_struct(v, fields),
        Kind::Ptr(fields) => match v {
            None => J::Null,
            Some(v) => encode_struct(Some(v), fields),
        },
        Kind::List(item) => match v.and_then(Value::as_array) {
            None => J::Null,
            Some(a) => J::Arr(a.iter().map(|x| encode(Some(x), *item)).collect()),
        },
    }
}

fn encode_struct(v: Option<&Value>, fields: &[F]) -> J {
    let mut out = Vec::new();
    for F(key, kind, omit) in fields {
        let fv = v.and_then(|v| v.get(*key));
        if *omit && is_empty(fv, *kind) {
            continue;
        }
        out.push((key.to_string(), encode(fv, *kind)));
    }
    J::Obj(out)
}

/// A runtime spec (JSON) as stock ctr prints it after decoding it into
/// `specs.Spec`: Go's field order, `omitempty` applied, unknown fields
/// dropped.
pub fn spec(raw: &[u8]) -> Result<J, serde_json::Error> {
    let v: Value = serde_json::from_slice(raw)?;
    Ok(spec_value(&v))
}

/// [`spec`] for an already parsed value.
pub fn spec_value(v: &Value) -> J {
    encode_struct(Some(v), SPEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_like_go() {
        let j = J::Obj(vec![
            ("a".into(), J::Null),
            ("b".into(), J::Arr(vec![J::str("x<"), J::Num("1".into())])),
            ("c".into(), J::Obj(vec![])),
            ("d".into(), J::Arr(vec![])),
        ]);
        assert_eq!(j.indent(), "{\n    \"a\": null,\n    \"b\": [\n        \"x\\u003c\",\n        1\n    ],\n    \"c\": {},\n    \"d\": []\n}");
    }

    #[test]
    fn spec_in_go_field_order() {
        let j = spec(br#"{"root":{"path":"rootfs"},"process":{"cwd":"/","args":["true"],"terminal":false},"ociVersion":"1.0.2-dev","x":1}"#)
            .unwrap();
        assert_eq!(
            j,
            J::Obj(vec![
                ("ociVersion".into(), J::str("1.0.2-dev")),
                (
                    "process".into(),
                    J::Obj(vec![
                        (
                            "user".into(),
                            J::Obj(vec![("uid".into(), J::Num("0".into())), ("gid".into(), J::Num("0".into()))])
                        ),
                        ("args".into(), J::Arr(vec![J::str("true")])),
                        ("cwd".into(), J::str("/")),
                    ])
                ),
                ("root".into(), J::Obj(vec![("path".into(), J::str("rootfs"))])),
            ])
        );
    }
}
