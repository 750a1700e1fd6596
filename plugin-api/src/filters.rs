//! containerd's filter syntax, parsed once here and used by every `List`.
//!
//! ```text
//! filters   := selector ( "," selector )*      all selectors must match
//! selector  := fieldpath [ operator value ]    no operator: field is present
//! fieldpath := field ( "." field )*
//! field     := quoted | [A-Za-z_][A-Za-z0-9_]*
//! operator  := "==" | "!=" | "~="              ~= is a regular expression
//! value     := quoted | [^",=]+ (no leading/trailing spaces)
//! ```
//!
//! A request carries a list of filter strings; an object matches when any
//! one of them matches (the "or"). An empty list matches everything.

use std::borrow::Cow;

use regex::Regex;

/// Anything a filter can look at: returns the value of a field path, or
/// `None` when the field is absent.
pub trait Fields {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>>;
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, obj: &dyn Fields) -> bool {
        let value = obj.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.is_some_and(|x| x == v.as_str()),
            Op::NotEqual(v) => value.is_none_or(|x| x != v.as_str()),
            Op::Matches(re) => value.is_some_and(|x| re.is_match(&x)),
        }
    }
}

/// A malformed filter, with the position of the problem. It reads like
/// containerd's (`filters: parse error: [bad  >|f|< ilter]: expected an
/// operator ...`), because clients show it verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub input: String,
    /// Byte offset of the offending character in `input`.
    pub position: usize,
    pub message: String,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (before, rest) = self.input.split_at(self.position.min(self.input.len()));
        let mut chars = rest.chars();
        match chars.next() {
            Some(at) => write!(f, "filters: parse error: [{before} >|{at}|< {}]: {}", chars.as_str(), self.message),
            // At the end of the input containerd shows the input alone.
            None => write!(f, "filters: parse error: [{before}]: {}", self.message),
        }
    }
}

impl std::error::Error for FilterError {}

impl From<FilterError> for crate::Status {
    fn from(e: FilterError) -> crate::Status {
        crate::Status::invalid_argument(e.to_string())
    }
}

/// One parsed filter string: a conjunction of selectors.
#[derive(Debug, Clone)]
pub struct Filter {
    selectors: Vec<Selector>,
}

impl Filter {
    pub fn matches(&self, obj: &dyn Fields) -> bool {
        self.selectors.iter().all(|s| s.matches(obj))
    }

    /// The field paths this filter looks at, for checking them against
    /// the fields a List supports.
    pub fn field_paths(&self) -> impl Iterator<Item = &[String]> {
        self.selectors.iter().map(|s| s.path.as_slice())
    }
}

/// A set of filter strings, any of which may match.
#[derive(Debug, Clone, Default)]
pub struct AnyFilter {
    filters: Vec<Filter>,
}

impl AnyFilter {
    /// Parses every filter string of a request. Empty strings are ignored,
    /// as containerd does.
    pub fn parse<S: AsRef<str>>(inputs: &[S]) -> Result<AnyFilter, FilterError> {
        let filters = inputs
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| !s.trim().is_empty())
            .map(parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AnyFilter { filters })
    }

    pub fn matches(&self, obj: &dyn Fields) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| f.matches(obj))
    }

    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }
}

/// Parses one filter string.
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    let mut p = Parser { input, chars: input.char_indices().collect(), pos: 0 };
    let mut selectors = vec![p.selector()?];
    loop {
        p.skip_spaces();
        match p.peek() {
            None => break,
            Some(',') => {
                p.pos += 1;
                selectors.push(p.selector()?);
            }
            Some(c) => return Err(p.error(format!("unexpected {c:?}, expected ','"))),
        }
    }
    Ok(Filter { selectors })
}

struct Parser<'a> {
    input: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|(_, c)| *c)
    }

    fn offset(&self) -> usize {
        self.chars.get(self.pos).map_or(self.input.len(), |(i, _)| *i)
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError { input: self.input.to_string(), position: self.offset(), message: message.into() }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_spaces();
            if self.peek() == Some('.') {
                self.pos += 1;
                path.push(self.field()?);
            } else {
                break;
            }
        }
        self.skip_spaces();
        let op = match (self.peek(), self.chars.get(self.pos + 1).map(|(_, c)| *c)) {
            (None | Some(','), _) => return Ok(Selector { path, op: Op::Present }),
            (Some('='), Some('=')) => "==",
            (Some('!'), Some('=')) => "!=",
            (Some('~'), Some('=')) => "~=",
            (Some(_), _) => return Err(self.error(r#"expected an operator ("=="|"!="|"~=")"#)),
        };
        self.pos += 2;
        self.skip_spaces();
        let start = self.offset();
        let value = self.value()?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(Regex::new(&value).map_err(|e| FilterError {
                input: self.input.to_string(),
                position: start,
                message: format!("invalid regular expression: {e}"),
            })?),
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_spaces();
        match self.peek() {
            Some('"') | Some('`') => self.quoted(),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    s.push(c);
                    self.pos += 1;
                }
                Ok(s)
            }
            Some(c) => Err(self.error(format!("unexpected {c:?}, expected a field name"))),
            None => Err(self.error("unexpected end, expected a field name")),
        }
    }

    fn value(&mut self) -> Result<String, FilterError> {
        match self.peek() {
            Some('"') | Some('`') => self.quoted(),
            None | Some(',') => Err(self.error("expected value or quoted")),
            Some(_) => {
                let mut s = String::new();
                while let Some(c) = self.peek().filter(|c| !matches!(c, ',' | '"' | '=')) {
                    s.push(c);
                    self.pos += 1;
                }
                if self.peek() == Some('"') || self.peek() == Some('=') {
                    return Err(self.error("unexpected character in value; quote the value"));
                }
                Ok(s.trim_end().to_string())
            }
        }
    }

    /// A double-quoted string with Go escapes, or a backquoted raw string.
    fn quoted(&mut self) -> Result<String, FilterError> {
        let quote = self.peek().unwrap_or('"');
        self.pos += 1;
        let mut s = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error("unterminated quoted string"));
            };
            self.pos += 1;
            if c == quote {
                return Ok(s);
            }
            if c == '\\' && quote == '"' {
                let Some(e) = self.peek() else {
                    return Err(self.error("unterminated escape"));
                };
                self.pos += 1;
                s.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '\\' => '\\',
                    '"' => '"',
                    '\'' => '\'',
                    other => return Err(self.error(format!("unknown escape \\{other}"))),
                });
            } else {
                s.push(c);
            }
        }
    }
}

/// Adapts a set of labels plus fixed top-level fields to [`Fields`]:
/// `labels.<key>` (the rest of the path joined by '.') reads a label.
pub fn labels_field<'a>(path: &[String], labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Cow<'a, str>> {
    if path.first().map(String::as_str) != Some("labels") || path.len() < 2 {
        return None;
    }
    let key = path[1..].join(".");
    labels.into_iter().find(|(k, _)| *k == key).map(|(_, v)| Cow::Borrowed(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Obj {
        name: &'static str,
        labels: HashMap<&'static str, &'static str>,
    }

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
            match path.first().map(String::as_str) {
                Some("name") if path.len() == 1 => Some(Cow::Borrowed(self.name)),
                Some("labels") => labels_field(path, self.labels.iter().map(|(k, v)| (*k, *v))),
                _ => None,
            }
        }
    }

    fn obj() -> Obj {
        Obj { name: "docker.io/library/busybox:latest", labels: HashMap::from([("a.b", "x y"), ("c", "1")]) }
    }

    fn m(f: &str) -> bool {
        AnyFilter::parse(&[f]).unwrap().matches(&obj())
    }

    #[test]
    fn equality_inequality_presence() {
        assert!(m("name==docker.io/library/busybox:latest"));
        assert!(!m("name==other"));
        assert!(m("name!=other"));
        assert!(m("labels.c"));
        assert!(!m("labels.d"));
        assert!(m("labels.d!=1"), "an absent field is not equal to anything");
    }

    #[test]
    fn quoted_fields_and_values() {
        assert!(m(r#"labels."a.b"=="x y""#));
        assert!(m("labels.a.b==`x y`"));
        assert!(!m(r#"labels."a.b"=="x""#));
    }

    #[test]
    fn regex_and_conjunction_and_or() {
        assert!(m("name~=busybox"));
        assert!(!m("name~=^busybox"));
        assert!(m("name~=busybox,labels.c==1"));
        assert!(!m("name~=busybox,labels.c==2"));
        let any = AnyFilter::parse(&["name==x", "labels.c==1"]).unwrap();
        assert!(any.matches(&obj()));
        assert!(AnyFilter::parse::<&str>(&[]).unwrap().matches(&obj()));
    }

    #[test]
    fn malformed_filters_are_errors() {
        for bad in ["==x", "name==", "name=x", "name==\"x", "name~=(", "name==a\"b", "labels.", "name==x,"] {
            let e = parse(bad).expect_err(bad);
            assert!(!e.message.is_empty(), "{bad}");
        }
        // containerd's rendering, which clients print verbatim.
        assert_eq!(
            parse("bad filter==").unwrap_err().to_string(),
            r#"filters: parse error: [bad  >|f|< ilter==]: expected an operator ("=="|"!="|"~=")"#
        );
        assert_eq!(parse("bad==").unwrap_err().to_string(), "filters: parse error: [bad==]: expected value or quoted");
    }
}
