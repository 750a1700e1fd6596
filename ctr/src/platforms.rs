//! Platform formatting as containerd's `platforms.Format` does it.

use containerd_client::types::Platform;
use shim_protocol::address::go_path_join;

/// `platforms.Format`: "unknown" without an OS, otherwise
/// `path.Join(os, architecture, variant)`.
pub fn format(p: &Platform) -> String {
    if p.os.is_empty() {
        return "unknown".to_string();
    }
    go_path_join(&[&p.os, &p.architecture, &p.variant])
}

/// The unique formatted platforms, sorted, joined with "," (ctr's
/// `prettyPlatforms`).
pub fn pretty(ps: &[Platform]) -> String {
    let mut v: Vec<String> = ps.iter().map(format).collect();
    v.sort();
    v.dedup();
    v.join(",")
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
    fn format_joins_as_go_path_join() {
        assert_eq!(format(&plat("linux", "arm64", "v8")), "linux/arm64/v8");
        assert_eq!(format(&plat("linux", "amd64", "")), "linux/amd64");
        assert_eq!(format(&plat("", "amd64", "")), "unknown");
    }
}
