//! The hosts a reference's registry is reached through: containerd's
//! `hosts.toml` (`<host_dir>/<host[:port]>/hosts.toml`, see containerd's
//! docs/hosts.md), or the registry itself when there is none.
//!
//! A hosts.toml lists `[host."<url>"]` entries, tried in the file's order,
//! then the `server` (or, without one, the registry itself) last. Each entry
//! may restrict its `capabilities` (pull, resolve, push), trust extra roots
//! (`ca`, one path or several, relative to the file's directory) or none
//! (`skip_verify`), and its URL's scheme says https or plain http.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RegistryError;

/// One host to contact, with how to contact it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// `host[:port]` as contacted.
    pub host: String,
    /// "http" or "https".
    pub scheme: String,
    pub capabilities: Capabilities,
    /// Accept any certificate (skip_verify).
    pub skip_verify: bool,
    /// PEM files of extra trusted roots.
    pub ca_files: Vec<PathBuf>,
}

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities { pull: true, resolve: true, push: true };
}

/// The keys of a host entry (and of the file's top level, for the server).
/// Unknown keys are ignored, as containerd's decoder does.
#[derive(Debug, Default, Deserialize)]
struct HostFileEntry {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    skip_verify: Option<bool>,
    client: Option<toml::Value>,
    header: Option<toml::Table>,
    #[serde(default)]
    override_path: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The hosts for `registry` (the host part of a reference, `docker.io` for
/// Docker Hub): from `<host_dir>/<registry>/hosts.toml` (or `_default`) if
/// there is one, else the registry itself.
pub fn hosts_for(
    registry: &str,
    host_dir: Option<&Path>,
    default_scheme: Option<&str>,
) -> Result<Vec<HostConfig>, RegistryError> {
    let mut hosts = Vec::new();
    let mut server = None;
    if let Some(file) = host_dir.and_then(|d| find_hosts_file(d, registry)) {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| RegistryError::HostsFile { file: file.clone(), reason: e.to_string() })?;
        let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        (hosts, server) = parse_hosts_file(&file, &base, &text)?;
    }
    // The last host is the server; without one, the registry itself.
    let last = match server {
        Some(s) => s,
        None => {
            let (host, scheme, skip_verify) = default_host(registry, default_scheme);
            HostConfig { host, scheme, capabilities: Capabilities::ALL, skip_verify, ca_files: Vec::new() }
        }
    };
    hosts.push(last);
    Ok(hosts)
}

/// The registry's own host: Docker Hub's is registry-1.docker.io; a loopback
/// registry on a port other than 443 is plain http unless a scheme is given,
/// as containerd decides (containerd also tries https there first; we don't).
fn default_host(registry: &str, default_scheme: Option<&str>) -> (String, String, bool) {
    if registry == "docker.io" {
        return ("registry-1.docker.io".into(), "https".into(), false);
    }
    if let Some(scheme) = default_scheme {
        return (registry.into(), scheme.into(), false);
    }
    let (name, port) = match registry.rsplit_once(':') {
        // An IPv6 address without a port has colons but ends with ']'.
        Some((n, p)) if !p.ends_with(']') => (n, Some(p)),
        _ => (registry, None),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let loopback = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return (registry.into(), "https".into(), false);
    }
    // Loopback: plain http on a port other than 443 (containerd would try
    // https first and fall back; this client does not), and certificates
    // are not verified unless the port says http.
    let scheme = match port {
        Some(p) if p != "443" => "http",
        _ => "https",
    };
    (registry.into(), scheme.into(), port != Some("80"))
}

/// containerd looks in `<host>`, then `<host>_<port>_` (the Windows-safe
/// spelling), then `_default`.
fn find_hosts_file(host_dir: &Path, registry: &str) -> Option<PathBuf> {
    let mut dirs = vec![registry.to_string()];
    if let Some((h, p)) = registry.rsplit_once(':') {
        dirs.push(format!("{h}_{p}_"));
    }
    dirs.push("_default".into());
    dirs.into_iter().map(|d| host_dir.join(d).join("hosts.toml")).find(|f| f.exists())
}

/// Parses a hosts.toml: the `[host."..."]` entries in the file's order, and
/// the `server` if the file names one.
pub fn parse_hosts_file(
    file: &Path,
    base: &Path,
    text: &str,
) -> Result<(Vec<HostConfig>, Option<HostConfig>), RegistryError> {
    let bad = |reason: String| RegistryError::HostsFile { file: file.to_path_buf(), reason };
    // toml's Table keeps the document's order (feature preserve_order),
    // which is the order mirrors are tried in.
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
    let host_table = match table.remove("host") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(bad("\"host\" must be a table of host entries".into())),
    };
    let server = match table.remove("server") {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(_) => return Err(bad("\"server\" must be a string".into())),
    };
    let mut hosts = Vec::new();
    for (url, entry) in host_table {
        let entry: HostFileEntry =
            entry.try_into().map_err(|e: toml::de::Error| bad(format!("host {url:?}: {}", e.message())))?;
        hosts.push(host_config(file, base, &url, entry)?);
    }
    let root: HostFileEntry = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| bad(format!("top level: {}", e.message())))?;
    let server = server.map(|s| host_config(file, base, &s, root)).transpose()?;
    Ok((hosts, server))
}

fn host_config(file: &Path, base: &Path, url: &str, entry: HostFileEntry) -> Result<HostConfig, RegistryError> {
    let bad = |reason: String| RegistryError::HostsFile { file: file.to_path_buf(), reason };
    let unsupported =
        |what: &str| RegistryError::Unsupported { what: format!("{what} (host {url:?} in {})", file.display()) };
    let with_scheme = if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let parsed = reqwest::Url::parse(&with_scheme).map_err(|e| bad(format!("host {url:?}: {e}")))?;
    let host = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(bad(format!("host {url:?} has no host name"))),
    };
    // oci-client builds every URL as <scheme>://<host>/v2/...: a path
    // prefix cannot be honoured.
    let path = parsed.path().trim_end_matches('/');
    if !(path.is_empty() || path == "/v2") || entry.override_path {
        return Err(unsupported("a registry path other than /v2"));
    }
    if entry.client.is_some() {
        return Err(unsupported("client certificates"));
    }
    if entry.header.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(unsupported("extra request headers"));
    }
    let capabilities = match entry.capabilities {
        None => Capabilities::ALL,
        Some(list) => {
            let mut c = Capabilities { pull: false, resolve: false, push: false };
            for cap in list {
                match cap.to_ascii_lowercase().as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => c.push = true,
                    // Referrers are not fetched by this client.
                    "referrers" => {}
                    other => return Err(bad(format!("host {url:?}: unknown capability {other:?}"))),
                }
            }
            c
        }
    };
    let ca_files = match entry.ca {
        None => Vec::new(),
        Some(OneOrMany::One(p)) => vec![base.join(p)],
        Some(OneOrMany::Many(ps)) => ps.into_iter().map(|p| base.join(p)).collect(),
    };
    Ok(HostConfig {
        host,
        scheme: parsed.scheme().to_string(),
        capabilities,
        skip_verify: entry.skip_verify.unwrap_or(false),
        ca_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_in_file_order_then_server() {
        let text = r#"
server = "https://registry.example"
[host."http://zz-mirror:5000"]
  capabilities = ["pull", "resolve"]
[host."https://aa-mirror"]
  skip_verify = true
  ca = "ca.pem"
"#;
        let (hosts, server) = parse_hosts_file(Path::new("/h/x/hosts.toml"), Path::new("/h/x"), text).unwrap();
        assert_eq!(hosts[0].host, "zz-mirror:5000");
        assert_eq!(hosts[0].scheme, "http");
        assert!(!hosts[0].capabilities.push);
        assert_eq!(hosts[1].host, "aa-mirror");
        assert!(hosts[1].skip_verify);
        assert_eq!(hosts[1].ca_files, vec![PathBuf::from("/h/x/ca.pem")]);
        assert_eq!(server.unwrap().host, "registry.example");
    }

    #[test]
    fn malformed_file_names_the_file() {
        let e = parse_hosts_file(Path::new("/h/x/hosts.toml"), Path::new("/h/x"), "[host.\"a\"\nfoo").unwrap_err();
        assert!(matches!(e, RegistryError::HostsFile { .. }));
        assert!(e.to_string().starts_with("/h/x/hosts.toml: "), "{e}");
    }

    #[test]
    fn loopback_defaults_to_plain_http() {
        assert_eq!(default_host("127.0.0.1:5000", None).1, "http");
        assert_eq!(default_host("example.com:5000", None).1, "https");
        assert_eq!(default_host("example.com", Some("http")).1, "http");
        assert_eq!(default_host("docker.io", None).0, "registry-1.docker.io");
    }
}
