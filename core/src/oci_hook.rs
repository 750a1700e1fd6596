//! `crated oci-hook -- CMD ARGS...`: containerd's base for OCI runtime
//! hooks. The runtime runs it with the container's state JSON on stdin; it
//! reads `root.path` from the bundle's `config.json`, renders each argument
//! and each environment entry as a template, and execs `CMD` (by path, no
//! `PATH` search, as Go's `syscall.Exec`) with the rendered arguments and
//! environment. The command gets the same state on its stdin, as a hook run
//! directly would (containerd's leaves stdin consumed).
//!
//! The templates are Go `text/template` as containerd uses them, parsed by a
//! small parser of our own: text and actions `{{ ... }}` (with `{{-`/`-}}`
//! trimming and `{{/* comments */}}`) whose command is one of containerd's
//! functions `id`, `bundle`, `rootfs`, `pid`, `status`, `annotation "key"`
//! (an argument is a string literal or another function), or a string
//! literal. Pipelines, variables and fields are refused with an error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;

/// The OCI runtime state a hook reads on stdin (the fields containerd uses).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct State {
    pub id: String,
    pub status: String,
    pub pid: i64,
    pub bundle: String,
    pub annotations: HashMap<String, String>,
}

/// What the template functions answer.
#[derive(Debug, Default, Clone)]
pub struct Context {
    pub state: State,
    /// `root.path` of the bundle's `config.json`, as written there.
    pub root: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("template: oci-hook:{line}: {msg}")]
    Template { line: usize, msg: String },
    #[error("reading the state from stdin: {0}")]
    Stdin(std::io::Error),
    #[error("decoding the state on stdin: {0}")]
    State(serde_json::Error),
    #[error("open {path}: {source}")]
    Spec { path: String, source: std::io::Error },
    #[error("decoding {path}: {source}")]
    SpecJson { path: String, source: serde_json::Error },
    #[error("no hook command given (crated oci-hook -- CMD ARGS...)")]
    NoCommand,
    #[error("passing the state to the hook: {0}")]
    Memfd(std::io::Error),
    #[error("exec {path}: {source}")]
    Exec { path: String, source: std::io::Error },
}

impl Context {
    /// `rootfs`: the root path if absolute, else under the bundle.
    pub fn rootfs(&self) -> String {
        if self.root.starts_with('/') {
            self.root.clone()
        } else {
            shim_protocol::address::go_path_join(&[&self.state.bundle, &self.root])
        }
    }

    fn call(&self, name: &str, args: &[String], line: usize) -> Result<String, HookError> {
        let want = match name {
            "id" | "bundle" | "rootfs" | "pid" | "status" => 0,
            "annotation" => 1,
            _ => return Err(HookError::Template { line, msg: format!("function {name:?} not defined") }),
        };
        if args.len() != want {
            let msg = format!("wrong number of args for {name}: want {want} got {}", args.len());
            return Err(HookError::Template { line, msg });
        }
        Ok(match name {
            "id" => self.state.id.clone(),
            "bundle" => self.state.bundle.clone(),
            "rootfs" => self.rootfs(),
            "pid" => self.state.pid.to_string(),
            "status" => self.state.status.clone(),
            _ => self.state.annotations.get(&args[0]).cloned().unwrap_or_default(),
        })
    }
}

/// One token of an action.
#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
}

/// Renders one template `source` against `ctx`.
pub fn render(source: &str, ctx: &Context) -> Result<String, HookError> {
    let mut out = String::new();
    let mut rest = source;
    let mut consumed = 0usize;
    let line_at = |offset: usize| source[..offset].matches('\n').count() + 1;
    while let Some(open) = rest.find("{{") {
        let mut text = &rest[..open];
        let after_open = &rest[open + 2..];
        let trim_left = after_open.starts_with('-') && after_open[1..].starts_with(is_space);
        if trim_left {
            text = text.trim_end_matches(is_space);
        }
        out.push_str(text);
        let line = line_at(consumed + open);
        let body_start = if trim_left { 1 } else { 0 };
        let Some(close) = after_open.find("}}") else {
            return Err(HookError::Template { line, msg: "unclosed action".into() });
        };
        let mut body = &after_open[body_start..close];
        let trim_right = body.ends_with('-') && body[..body.len() - 1].ends_with(is_space);
        if trim_right {
            body = &body[..body.len() - 1];
        }
        out.push_str(&action(body, ctx, line)?);
        let mut next = &after_open[close + 2..];
        if trim_right {
            next = next.trim_start_matches(is_space);
        }
        consumed = source.len() - next.len();
        rest = next;
    }
    out.push_str(rest);
    Ok(out)
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// The text one action produces.
fn action(body: &str, ctx: &Context, line: usize) -> Result<String, HookError> {
    let err = |msg: String| HookError::Template { line, msg };
    let trimmed = body.trim_matches(is_space);
    if let Some(comment) = trimmed.strip_prefix("/*") {
        if comment.ends_with("*/") {
            return Ok(String::new());
        }
        return Err(err("unclosed comment".into()));
    }
    let tokens = tokenize(trimmed).map_err(err)?;
    let mut tokens = tokens.into_iter();
    match tokens.next() {
        None => Err(err("missing value for command".into())),
        Some(Token::Str(s)) => match tokens.next() {
            None => Ok(s),
            Some(_) => Err(err(format!("can't give argument to non-function {s:?}"))),
        },
        Some(Token::Ident(name)) => {
            // An identifier argument is a call of that function (Go
            // evaluates `{{annotation id}}` as `annotation (id)`).
            let args = tokens
                .map(|t| match t {
                    Token::Str(s) => Ok(s),
                    Token::Ident(f) => ctx.call(&f, &[], line),
                })
                .collect::<Result<Vec<_>, _>>()?;
            ctx.call(&name, &args, line)
        }
    }
}

/// Identifiers and string literals separated by blanks; anything else (a
/// pipe, a field, a variable, parentheses) is not supported.
fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if is_space(c) {
            chars.next();
            continue;
        } else if c.is_alphabetic() || c == '_' {
            let mut end = i;
            while let Some(&(j, c)) = chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    end = j + c.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Ident(s[i..end].to_string()));
        } else if c == '`' {
            chars.next();
            let mut lit = String::new();
            loop {
                match chars.next() {
                    Some((_, '`')) => break,
                    Some((_, c)) => lit.push(c),
                    None => return Err("unterminated raw quoted string".into()),
                }
            }
            out.push(Token::Str(lit));
        } else if c == '"' {
            chars.next();
            out.push(Token::Str(quoted(&mut chars)?));
        } else {
            return Err(format!("unexpected {c:?} in command (oci-hook supports functions and string literals)"));
        }
        if let Some(&(_, c)) = chars.peek() {
            if !is_space(c) {
                return Err(format!("unexpected {c:?} in operand"));
            }
        }
    }
    Ok(out)
}

/// The rest of a Go interpreted string literal after its opening quote.
fn quoted(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Result<String, String> {
    let mut lit = String::new();
    let unterminated = || "unterminated quoted string".to_string();
    loop {
        let (_, c) = chars.next().ok_or_else(unterminated)?;
        match c {
            '"' => return Ok(lit),
            '\n' => return Err(unterminated()),
            '\\' => {
                let (_, e) = chars.next().ok_or_else(unterminated)?;
                let simple = match e {
                    'a' => Some('\x07'),
                    'b' => Some('\x08'),
                    'f' => Some('\x0c'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\x0b'),
                    '\\' => Some('\\'),
                    '"' => Some('"'),
                    _ => None,
                };
                if let Some(s) = simple {
                    lit.push(s);
                    continue;
                }
                let (digits, radix) = match e {
                    'x' => (2, 16),
                    'u' => (4, 16),
                    'U' => (8, 16),
                    '0'..='7' => (2, 8),
                    _ => return Err(format!("invalid syntax: unknown escape \\{e}")),
                };
                let mut v = if radix == 8 { e.to_digit(8).unwrap_or(0) } else { 0 };
                for _ in 0..digits {
                    let (_, d) = chars.next().ok_or_else(unterminated)?;
                    v = v * radix
                        + d.to_digit(radix).ok_or_else(|| format!("invalid syntax: bad escape digit {d:?}"))?;
                }
                lit.push(char::from_u32(v).ok_or_else(|| format!("invalid syntax: bad code point {v:#x}"))?);
            }
            c => lit.push(c),
        }
    }
}

/// `root.path` from the bundle's `config.json` (empty if it has no root).
pub fn load_root(bundle: &str) -> Result<String, HookError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Spec {
        root: Option<Root>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Root {
        path: String,
    }
    let path = format!("{}/config.json", bundle.trim_end_matches('/'));
    let bytes = std::fs::read(&path).map_err(|source| HookError::Spec { path: path.clone(), source })?;
    let spec: Spec = serde_json::from_slice(&bytes).map_err(|source| HookError::SpecJson { path, source })?;
    Ok(spec.root.map(|r| r.path).unwrap_or_default())
}

/// Decodes the first JSON value on stdin (trailing bytes are ignored, as
/// Go's `json.Decoder` does).
pub fn decode_state(bytes: &[u8]) -> Result<State, HookError> {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<State>();
    match values.next() {
        Some(v) => v.map_err(HookError::State),
        None => Err(HookError::State(serde_json::from_slice::<State>(b"").unwrap_err())),
    }
}

/// The whole command: never returns on success (the process becomes the
/// hook).
pub fn run(args: &[String], mut input: impl Read) -> Result<std::convert::Infallible, HookError> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(HookError::Stdin)?;
    let state = decode_state(&bytes)?;
    let root = load_root(&state.bundle)?;
    let ctx = Context { state, root };
    let args = args.iter().map(|a| render(a, &ctx)).collect::<Result<Vec<_>, _>>()?;
    let env = std::env::vars_os()
        .map(|(k, v)| render(&format!("{}={}", k.to_string_lossy(), v.to_string_lossy()), &ctx))
        .collect::<Result<Vec<_>, _>>()?;
    let (path, rest) = args.split_first().ok_or(HookError::NoCommand)?;

    // The state goes to the hook on its stdin, from a sealed memory file
    // (any size, nothing left on disk).
    let memfd = rustix::fs::memfd_create("oci-hook-state", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| HookError::Memfd(e.into()))?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(&bytes).map_err(HookError::Memfd)?;
    std::io::Seek::rewind(&mut file).map_err(HookError::Memfd)?;

    // By path, as execve: a bare name is relative to the working directory.
    let program = if path.contains('/') { path.clone() } else { format!("./{path}") };
    let mut cmd = std::process::Command::new(&program);
    cmd.arg0(path).args(rest).env_clear().stdin(file);
    for kv in &env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let source = cmd.exec();
    Err(HookError::Exec { path: path.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            state: State {
                id: "c1".into(),
                status: "creating".into(),
                pid: 4242,
                bundle: "/run/crated/b/c1".into(),
                annotations: [("io.x/net".to_string(), "ns-7".to_string())].into_iter().collect(),
            },
            root: "rootfs".into(),
        }
    }

    fn r(s: &str) -> String {
        render(s, &ctx()).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn e(s: &str) -> String {
        render(s, &ctx()).unwrap_err().to_string()
    }

    #[test]
    fn functions() {
        assert_eq!(r("{{id}}"), "c1");
        assert_eq!(r("--pid={{pid}} --bundle={{ bundle }}"), "--pid=4242 --bundle=/run/crated/b/c1");
        assert_eq!(r("{{rootfs}}"), "/run/crated/b/c1/rootfs");
        assert_eq!(r("{{status}}"), "creating");
        assert_eq!(r(r#"{{annotation "io.x/net"}}"#), "ns-7");
        assert_eq!(r("{{annotation `io.x/net`}}"), "ns-7");
        assert_eq!(r(r#"[{{annotation "missing"}}]"#), "[]");
        assert_eq!(r("{{annotation id}}"), "");
        assert_eq!(r("no actions"), "no actions");
        assert_eq!(r(""), "");
    }

    #[test]
    fn rootfs_absolute_or_under_the_bundle() {
        let mut c = ctx();
        c.root = "/var/lib/roots/c1".into();
        assert_eq!(render("{{rootfs}}", &c).unwrap(), "/var/lib/roots/c1");
        c.root = "./a/../rootfs/".into();
        assert_eq!(render("{{rootfs}}", &c).unwrap(), "/run/crated/b/c1/rootfs");
        c.root = String::new();
        assert_eq!(render("{{rootfs}}", &c).unwrap(), "/run/crated/b/c1");
    }

    #[test]
    fn literals_comments_and_trimming() {
        assert_eq!(r(r#"{{"a\tb\x41\u00e9\101\"q\""}}"#), "a\tbAéA\"q\"");
        assert_eq!(r("a {{/* note */}}b"), "a b");
        assert_eq!(r("a  {{- id -}}  b"), "ac1b");
        assert_eq!(r("a {{- /* c */ -}} b"), "ab");
        // `{{-3}}` is not a trim marker: no space after the dash.
        assert!(e("{{-3}}").contains("unexpected '-'"));
    }

    #[test]
    fn errors_say_what_and_where() {
        assert_eq!(e("x\n{{nope}}"), "template: oci-hook:2: function \"nope\" not defined");
        assert_eq!(e("{{id \"x\"}}"), "template: oci-hook:1: wrong number of args for id: want 0 got 1");
        assert_eq!(e("{{annotation}}"), "template: oci-hook:1: wrong number of args for annotation: want 1 got 0");
        assert_eq!(e("{{id"), "template: oci-hook:1: unclosed action");
        assert_eq!(e("{{ }}"), "template: oci-hook:1: missing value for command");
        assert!(e("{{.ID}}").contains("unexpected '.'"));
        assert!(e("{{id | printf}}").contains("unexpected '|'"));
        assert!(e(r#"{{annotation "k}}"#).contains("unterminated quoted string"));
        assert!(e(r#"{{"\q"}}"#).contains("unknown escape"));
        assert!(e("{{/* open }}").contains("unclosed comment"));
    }

    #[test]
    fn state_decodes_like_go() {
        let s = decode_state(br#"{"ociVersion":"1.0.2","id":"c","status":"created","pid":7,"bundle":"/b"} trailing"#)
            .unwrap();
        assert_eq!((s.id.as_str(), s.pid, s.bundle.as_str()), ("c", 7, "/b"));
        assert!(decode_state(b"").is_err());
        assert!(decode_state(b"{\"pid\":\"x\"}").is_err());
    }
}
