//! The calls the CRI's sandboxes ([`crate::sandbox`]) and containers
//! ([`crate::container`]) make to the plugin's dependencies in process,
//! all in the `k8s.io` namespace: records and snapshots through the
//! metadata plugin, tasks through the internal Tasks service.

use std::collections::HashMap;

use crated_plugin_api::{ErrorKind, Host, Status};

use crate::service::NAMESPACE;

pub const CONTAINERS: &str = "/containerd.services.containers.v1.Containers";
pub const TASKS: &str = "/containerd.services.tasks.v1.Tasks";
pub const SNAPSHOTS: &str = "/containerd.services.snapshots.v1.Snapshots";
/// The type URL of an OCI runtime spec in a container record.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The plugin serving the Tasks service to dependents (see lib.rs).
pub const TASKS_PLUGIN: &str = "io.containerd.service.v1.tasks-service";

/// A unary call of `method` (a full path) in `k8s.io`.
pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
    host: &Host,
    method: String,
    req: &Req,
) -> Result<Resp, Status> {
    host.unary(&Host::call(&method, Some(NAMESPACE)), req).await
}

/// A call of the Tasks service's `method` in `k8s.io`.
pub async fn tasks<Req: prost::Message, Resp: prost::Message + Default>(
    host: &Host,
    method: &str,
    req: &Req,
) -> Result<Resp, Status> {
    host.to(TASKS_PLUGIN).unary(&Host::call(&format!("{TASKS}/{method}"), Some(NAMESPACE)), req).await
}

/// A lease in `k8s.io` for what creating `id` makes, until its record
/// exists (containerd's client names its leases by time; the id is as
/// unique and says whose it is).
pub async fn lease(host: &Host, id: &str) -> Result<crated_plugin_api::lease::LeaseGuard, Status> {
    crated_plugin_api::lease::LeaseGuard::create(host, NAMESPACE, format!("cri-{id}")).await
}

/// Removes a snapshot; a missing one is fine, other failures are logged
/// (`what` names the owner in the message).
pub async fn remove_snapshot(host: &Host, snapshotter: &str, key: &str, what: &str) {
    let req = containerd_client::services::v1::snapshots::RemoveSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: key.into(),
    };
    if let Err(s) = unary::<_, ()>(host, format!("{SNAPSHOTS}/Remove"), &req).await {
        if !not_found(s.kind()) {
            crated_plugin_api::tracing::warn!("failed to remove the snapshot of {what} {key:?}: {}", s.message);
        }
    }
}

pub fn not_found(kind: ErrorKind) -> bool {
    kind == ErrorKind::NotFound
}

/// A 64-hex id (containerd's `util.GenerateID`).
pub fn generate_id() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Nanoseconds since the epoch of a protobuf timestamp (0 for none).
pub fn nanos(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos)).unwrap_or(0)
}

/// containerd's `versionedMetadata`: the JSON of a record's CRI extension.
#[derive(serde::Serialize, serde::Deserialize)]
struct Versioned<T> {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "Metadata")]
    metadata: T,
}

/// The version containerd writes in its CRI extensions.
pub const METADATA_VERSION: &str = "v1";

/// A CRI extension of a record: `metadata` versioned, as JSON.
pub fn extension<T: serde::Serialize>(type_url: &str, metadata: T) -> prost_types::Any {
    let v = Versioned { version: METADATA_VERSION.into(), metadata };
    prost_types::Any { type_url: type_url.into(), value: serde_json::to_vec(&v).expect("CRI metadata serialises") }
}

/// The metadata of a record's CRI extension `name`, if it has one.
pub fn from_extension<T: serde::de::DeserializeOwned>(
    c: &containerd_client::services::v1::Container,
    name: &str,
) -> Option<T> {
    let any = c.extensions.get(name)?;
    serde_json::from_slice::<Versioned<T>>(&any.value).ok().map(|v| v.metadata)
}

/// containerd's `getPassthroughAnnotations`: the annotations whose key
/// matches one of the runtime's patterns (`pod_annotations`,
/// `container_annotations`), which go into the OCI spec for the runtime.
pub fn passthrough_annotations(
    annotations: &HashMap<String, String>,
    patterns: &[String],
) -> std::collections::BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|(k, _)| patterns.iter().any(|p| glob_match(p.as_bytes(), k.as_bytes())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Go's `filepath.Match` without character classes: `*` is any run of
/// characters but `/`, `?` one character but `/`, `\\` escapes.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            (0..=name.len()).take_while(|&i| i == 0 || name[i - 1] != b'/').any(|i| glob_match(rest, &name[i..]))
        }
        Some((b'?', rest)) => name.first().is_some_and(|c| *c != b'/') && glob_match(rest, &name[1..]),
        Some((b'\\', rest)) if !rest.is_empty() => name.first() == Some(&rest[0]) && glob_match(&rest[1..], &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && glob_match(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_annotations_match_like_go_globs() {
        let a: HashMap<String, String> = [
            ("io.katacontainers.config.hypervisor", "x"),
            ("io.katacontainers.other", "y"),
            ("example.com/key", "z"),
            ("unrelated", "w"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let got = passthrough_annotations(&a, &["io.katacontainers.*".into()]);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["io.katacontainers.config.hypervisor", "io.katacontainers.other"]);
        // `*` stops at `/`, as filepath.Match's does.
        assert!(!passthrough_annotations(&a, &["*".into()]).contains_key("example.com/key"));
        assert!(passthrough_annotations(&a, &["example.com/*".into()]).contains_key("example.com/key"));
        assert_eq!(passthrough_annotations(&a, &["unrelate?".into()]).len(), 1);
        assert!(passthrough_annotations(&a, &[]).is_empty());
    }
}
