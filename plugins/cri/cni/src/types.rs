//! The CNI spec's wire types (1.0.0, reading 0.3.x/0.4.0 results too): what
//! a plugin prints on success (`Result`) and on failure (the error object),
//! and the runtime's capability arguments (`runtimeConfig`). Our own serde
//! types: the Rust CNI crates are either unmaintained or do not invoke
//! plugins, and these are few.

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address with its prefix length, as the spec writes it: `10.88.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) =
            s.split_once('/').ok_or_else(|| format!("{s:?} is not an address with a prefix length"))?;
        let addr: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: prefix: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(IpNet { addr, prefix })
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A plugin's ADD result. Unknown fields are ignored; 0.3.x/0.4.0 results
/// parse too (their `ips[].version` is dropped, as types100 converts them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path for an interface inside the sandbox; empty on the host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// The spec's error object, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginError {
    #[serde(rename = "cniVersion", default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    /// 1-99 are the spec's (see [`PluginError::code_name`]), 100+ the plugin's.
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl PluginError {
    /// The spec's name for a well-known code.
    pub fn code_name(&self) -> Option<&'static str> {
        Some(match self.code {
            1 => "incompatible CNI version",
            2 => "unsupported field in network configuration",
            3 => "container unknown or does not exist",
            4 => "invalid necessary environment variables",
            5 => "I/O failure",
            6 => "failed to decode content",
            7 => "invalid network config",
            11 => "try again later",
            _ => return None,
        })
    }
}

impl fmt::Display for PluginError {
    // libcni's types.Error: "msg; details".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if !self.details.is_empty() {
            write!(f, "; {}", self.details)?;
        }
        Ok(())
    }
}

/// What a plugin answers to VERSION.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(rename = "supportedVersions", default)]
    pub supported_versions: Vec<String>,
}

/// The `portMappings` capability (the conventions document's field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: i32,
    #[serde(rename = "containerPort")]
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`, lower case as containerd sends it.
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The `bandwidth` capability: bits per second and bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    #[serde(rename = "ingressRate")]
    pub ingress_rate: u64,
    #[serde(rename = "ingressBurst")]
    pub ingress_burst: u64,
    #[serde(rename = "egressRate")]
    pub egress_rate: u64,
    #[serde(rename = "egressBurst")]
    pub egress_burst: u64,
}

/// The `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCapability {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One range of the `ipRanges` capability (a list of range sets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    pub subnet: String,
    #[serde(rename = "rangeStart", default, skip_serializing_if = "String::is_empty")]
    pub range_start: String,
    #[serde(rename = "rangeEnd", default, skip_serializing_if = "String::is_empty")]
    pub range_end: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bridge_result_of_1_0_0() {
        let out = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},
            {"name":"veth1","mac":"11:22:33:44:55:66"},{"name":"eth0","mac":"66:55:44:33:22:11","sandbox":"/run/netns/x"}],
            "ips":[{"interface":2,"address":"10.88.0.2/24","gateway":"10.88.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.0.0.10"]}}"#;
        let r: CniResult = serde_json::from_str(out).unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox, "/run/netns/x");
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.ips[0].address.to_string(), "10.88.0.2/24");
        assert_eq!(r.ips[0].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.routes[0].dst, "0.0.0.0/0".parse().unwrap());
        assert_eq!(r.routes[0].gw, None);
        assert_eq!(r.dns.nameservers, ["10.0.0.10"]);
        // Round trip: what we cache and pass on as prevResult.
        let again: CniResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn parses_a_0_3_1_result_with_versioned_ips() {
        let out = r#"{"cniVersion":"0.3.1","interfaces":[{"name":"lo","mac":"00:00:00:00:00:00","sandbox":"/n"}],
            "ips":[{"version":"4","interface":0,"address":"127.0.0.1/8"},{"version":"6","interface":0,"address":"::1/128"}],"dns":{}}"#;
        let r: CniResult = serde_json::from_str(out).unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.ips[1].address.addr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(r.ips[1].address.prefix, 128);
        assert!(r.dns.is_empty());
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/8", "::1/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        let e = serde_json::from_str::<CniResult>(r#"{"ips":[{"address":"10.0.0.1"}]}"#).unwrap_err();
        assert!(e.to_string().contains("not an address with a prefix length"), "{e}");
    }

    #[test]
    fn parses_the_error_object() {
        let e: PluginError = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"bridge name too long"}"#,
        )
        .unwrap();
        assert_eq!(e.code, 7);
        assert_eq!(e.code_name(), Some("invalid network config"));
        assert_eq!(e.to_string(), "invalid config; bridge name too long");
        let e: PluginError = serde_json::from_str(r#"{"code":100,"msg":"mine"}"#).unwrap();
        assert_eq!(e.code_name(), None);
        assert_eq!(e.to_string(), "mine");
    }

    #[test]
    fn capabilities_use_the_conventions_names() {
        let pm = PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() };
        assert_eq!(
            serde_json::to_value(&pm).unwrap(),
            serde_json::json!({"hostPort":8080,"containerPort":80,"protocol":"tcp"})
        );
        let bw = Bandwidth { ingress_rate: 1, ingress_burst: 2, egress_rate: 3, egress_burst: 4 };
        assert_eq!(
            serde_json::to_value(&bw).unwrap(),
            serde_json::json!({"ingressRate":1,"ingressBurst":2,"egressRate":3,"egressBurst":4})
        );
    }
}
