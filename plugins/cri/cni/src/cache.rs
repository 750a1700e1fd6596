//! The results cache, in libcni's format (`<cache_dir>/results/<network>-
//! <container id>-<ifname>`, kind `cniCacheV1`), so DEL and CHECK can hand
//! plugins the ADD result as `prevResult` even after a restart.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{exec::RuntimeConf, CniError};

const KIND: &str = "cniCacheV1";

#[derive(Debug, Serialize, Deserialize)]
struct CachedInfo {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    /// Go's []byte: base64.
    config: String,
    #[serde(rename = "ifName")]
    ifname: String,
    #[serde(rename = "networkName")]
    network_name: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    cni_args: Vec<[String; 2]>,
    #[serde(rename = "capabilityArgs", default, skip_serializing_if = "Map::is_empty")]
    capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

pub fn path(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> PathBuf {
    cache_dir.join("results").join(format!("{network}-{}-{}", rt.container_id, rt.ifname))
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |source| CniError::Cache { path: path.to_path_buf(), source }
}

pub async fn add(
    cache_dir: &Path,
    network: &str,
    config: &[u8],
    rt: &RuntimeConf,
    result: &Value,
) -> Result<(), CniError> {
    let info = CachedInfo {
        kind: KIND.into(),
        container_id: rt.container_id.clone(),
        config: base64::engine::general_purpose::STANDARD.encode(config),
        ifname: rt.ifname.clone(),
        network_name: network.into(),
        cni_args: rt.args.iter().map(|(k, v)| [k.clone(), v.clone()]).collect(),
        capability_args: rt.capability_args.clone(),
        result: Some(result.clone()),
    };
    let file = path(cache_dir, network, rt);
    let dir = file.parent().expect("a cache file has a directory");
    tokio::fs::create_dir_all(dir).await.map_err(cache_err(&file))?;
    // Written whole then renamed: a crash never leaves half a result.
    let tmp = file.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    let bytes = serde_json::to_vec(&info).expect("a cache entry serialises");
    let written = async {
        let mut f = tokio::fs::OpenOptions::new();
        f.write(true).create_new(true).mode(0o600);
        let mut f = f.open(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, &bytes).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, &file).await
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    written.map_err(cache_err(&file))
}

/// The cached ADD result; `None` when there is none or it is not libcni's
/// v1 format (libcni then falls back to no prevResult as well).
pub async fn get(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> Result<Option<Value>, CniError> {
    let file = path(cache_dir, network, rt);
    let bytes = match tokio::fs::read(&file).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache_err(&file)(e)),
    };
    match serde_json::from_slice::<CachedInfo>(&bytes) {
        Ok(info) if info.kind == KIND => Ok(info.result),
        _ => {
            tracing::warn!(path = %file.display(), "ignoring an unreadable CNI result cache entry");
            Ok(None)
        }
    }
}

pub async fn del(cache_dir: &Path, network: &str, rt: &RuntimeConf) {
    let _ = tokio::fs::remove_file(path(cache_dir, network, rt)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_in_libcnis_format() {
        let dir = tempfile::tempdir().unwrap();
        let rt = RuntimeConf {
            container_id: "c1".into(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: Map::new(),
        };
        assert_eq!(get(dir.path(), "net", &rt).await.unwrap(), None);
        let result = serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        add(dir.path(), "net", b"{\"name\":\"net\"}", &rt, &result).await.unwrap();
        let file = dir.path().join("results/net-c1-eth0");
        let raw: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["containerId"], "c1");
        assert_eq!(raw["config"], "eyJuYW1lIjoibmV0In0=");
        assert_eq!(raw["cniArgs"], serde_json::json!([["IgnoreUnknown", "1"]]));
        assert_eq!(get(dir.path(), "net", &rt).await.unwrap(), Some(result));
        std::fs::write(&file, "garbage").unwrap();
        assert_eq!(get(dir.path(), "net", &rt).await.unwrap(), None);
        del(dir.path(), "net", &rt).await;
        assert!(!file.exists());
    }
}
