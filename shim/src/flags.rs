//! The shim's command line, parsed the way Go's `flag` package parses the Go
//! shim's (containerd 1.6 `runtime/v2/shim/shim.go`): single or double dash,
//! `-name value` or `-name=value`, booleans without a value, and parsing
//! stops at the first argument that is not a flag, which is the action
//! (`start`, `delete`, or none to serve).

/// What the daemon passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub debug: bool,
    pub version: bool,
    pub namespace: String,
    pub id: String,
    pub socket: String,
    pub bundle: String,
    pub address: String,
    pub publish_binary: String,
    /// The first positional argument.
    pub action: Option<String>,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            debug: false,
            version: false,
            namespace: String::new(),
            id: String::new(),
            socket: String::new(),
            bundle: String::new(),
            address: String::new(),
            publish_binary: "containerd".to_string(),
            action: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{name}")]
    BadBool { name: String, value: String },
}

impl Flags {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, FlagError> {
        let mut flags = Flags::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--" {
                flags.action = args.next();
                break;
            }
            let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|b| !b.is_empty()) else {
                flags.action = Some(arg);
                break;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let boolean = |inline: Option<String>| -> Result<bool, FlagError> {
                match inline.as_deref() {
                    None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
                    Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
                    Some(v) => Err(FlagError::BadBool { name: name.clone(), value: v.to_string() }),
                }
            };
            match name.as_str() {
                "debug" => flags.debug = boolean(inline)?,
                "v" => flags.version = boolean(inline)?,
                "namespace" | "id" | "socket" | "bundle" | "address" | "publish-binary" => {
                    let value = match inline {
                        Some(v) => v,
                        None => args.next().ok_or_else(|| FlagError::MissingValue(name.clone()))?,
                    };
                    *match name.as_str() {
                        "namespace" => &mut flags.namespace,
                        "id" => &mut flags.id,
                        "socket" => &mut flags.socket,
                        "bundle" => &mut flags.bundle,
                        "address" => &mut flags.address,
                        _ => &mut flags.publish_binary,
                    } = value;
                }
                _ => return Err(FlagError::Unknown(name)),
            }
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, FlagError> {
        Flags::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn the_daemons_start_line() {
        let f = parse(&[
            "-namespace",
            "default",
            "-address",
            "/run/c.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(f.namespace, "default");
        assert_eq!(f.address, "/run/c.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
        assert_eq!(f.action.as_deref(), Some("start"));
    }

    #[test]
    fn equals_double_dash_and_defaults() {
        let f = parse(&["--namespace=k8s.io", "-bundle=/b", "-debug=false", "delete"]).unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.bundle, "/b");
        assert!(!f.debug);
        assert_eq!(f.publish_binary, "containerd");
        assert_eq!(f.action.as_deref(), Some("delete"));
        assert_eq!(parse(&["-namespace", "n"]).unwrap().action, None);
    }

    #[test]
    fn errors_read_like_go_flag() {
        assert_eq!(parse(&["-nope"]).unwrap_err().to_string(), "flag provided but not defined: -nope");
        assert_eq!(parse(&["-id"]).unwrap_err(), FlagError::MissingValue("id".into()));
    }
}
