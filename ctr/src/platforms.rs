//! Platform formatting as containerd's `platforms.Format` does it.

use containerd_client::types::Platform;

/// `platforms.Format`: "unknown" without an OS, otherwise
/// `path.Join(os, architecture, variant)`.
pub fn format(p: &Platform) -> String {
    if p.os.is_empty() {
        return "unknown".to_string();
    }
    path_join(&[&p.os, &p.architecture, &p.variant])
}

/// The unique formatted platforms, sorted, joined with "," (ctr's
/// `prettyPlatforms`).
pub fn pretty(ps: &[Platform]) -> String {
    let mut v: Vec<String> = ps.iter().map(format).collect();
    v.sort();
    v.dedup();
    v.join(",")
}

/// Go's `path.Join`: join the non-empty elements with "/" and clean the result.
fn path_join(elems: &[&str]) -> String {
    let joined = elems.iter().filter(|e| !e.is_empty()).copied().collect::<Vec<_>>().join("/");
    if joined.is_empty() {
        return String::new();
    }
    path_clean(&joined)
}

/// Go's `path.Clean` (lexical).
fn path_clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|&l| l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plat(os: &str, arch: &str, variant: &str) -> Platform {
        Platform { os: os.into(), architecture: arch.into(), variant: variant.into(), os_version: String::new() }
    }

    #[test]
    fn formats_like_containerd() {
        assert_eq!(format(&plat("linux", "amd64", "")), "linux/amd64");
        assert_eq!(format(&plat("linux", "arm", "v7")), "linux/arm/v7");
        assert_eq!(format(&plat("linux", "", "")), "linux");
        assert_eq!(format(&plat("", "amd64", "")), "unknown");
    }

    #[test]
    fn pretty_dedups_and_sorts() {
        let ps = [plat("linux", "arm64", "v8"), plat("linux", "amd64", ""), plat("linux", "arm64", "v8")];
        assert_eq!(pretty(&ps), "linux/amd64,linux/arm64/v8");
        assert_eq!(pretty(&[]), "");
    }

    #[test]
    fn clean() {
        assert_eq!(path_clean("a/./b/../c"), "a/c");
        assert_eq!(path_clean("../a"), "../a");
        assert_eq!(path_clean("/../a//b/"), "/a/b");
    }
}
