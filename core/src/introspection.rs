//! The services of the core itself: introspection (which plugins exist and
//! in what state; the server's uuid and pid), version, and gRPC health.
//! They are served through the same route table as plugin services.

use std::{
    borrow::Cow,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, RwLock},
};

use containerd_client::{
    google::rpc::Status as RpcStatus,
    services::v1::{Plugin, PluginsRequest, PluginsResponse, ServerResponse, VersionResponse},
    types::Platform,
};
use crated_plugin_api::{filters::AnyFilter, Call, ServiceRouter, Status};
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};

use crate::plugins::{CoreService, PluginRecord, PluginState};

pub const INTROSPECTION_SERVICE: &str = "containerd.services.introspection.v1.Introspection";
pub const VERSION_SERVICE: &str = "containerd.services.version.v1.Version";
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// The daemon's version as `ctr version` shows it.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
/// The source revision, when the build recorded one.
pub const REVISION: &str = match option_env!("CRATED_REVISION") {
    Some(r) => r,
    None => "",
};

/// The plugin list: filled as plugins start, and grown when a library is
/// loaded into the running daemon.
pub type Records = Arc<RwLock<Vec<PluginRecord>>>;

/// The server uuid, kept under root so it survives restarts, as containerd does.
pub fn server_uuid(root: &Path) -> std::io::Result<String> {
    let dir = root.join("io.containerd.grpc.v1.introspection");
    let file = dir.join("uuid");
    match std::fs::read_to_string(&file) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => return Ok(s.trim().to_string()),
        Ok(_) => tracing::warn!(file = %file.display(), "replacing malformed server uuid"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&dir)?;
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = dir.join("uuid.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::rename(&tmp, &file)?;
    Ok(id)
}

fn platform(p: &str) -> Platform {
    let mut parts = p.splitn(3, '/');
    Platform {
        os: parts.next().unwrap_or_default().to_string(),
        architecture: parts.next().unwrap_or_default().to_string(),
        variant: parts.next().unwrap_or_default().to_string(),
        os_version: String::new(),
    }
}

struct RecordFields<'a>(&'a PluginRecord);

impl crated_plugin_api::filters::Fields for RecordFields<'_> {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        let r = self.0;
        match (path.first().map(String::as_str), path.len()) {
            (Some("type"), 1) => Some(Cow::Borrowed(&r.plugin_type)),
            (Some("id"), 1) => Some(Cow::Borrowed(&r.id)),
            (Some("platforms"), 1) => Some(Cow::Owned(r.platforms.join(","))),
            (Some("capabilities"), 1) => Some(Cow::Owned(r.capabilities.join(","))),
            (Some("exports"), n) if n > 1 => r.exports.get(&path[1..].join(".")).map(|v| Cow::Borrowed(v.as_str())),
            _ => None,
        }
    }
}

fn to_proto(r: &PluginRecord) -> Plugin {
    let (state, exports) = r.current();
    let init_err = match &state {
        PluginState::Running => None,
        PluginState::Skipped(m) | PluginState::Failed(m) => {
            Some(RpcStatus { code: tonic::Code::Unknown as i32, message: m.clone(), details: vec![] })
        }
    };
    Plugin {
        r#type: r.plugin_type.clone(),
        id: r.id.clone(),
        requires: r.requires.clone(),
        platforms: r.platforms.iter().map(|p| platform(p)).collect(),
        exports: exports.into_iter().collect(),
        capabilities: r.capabilities.clone(),
        init_err,
    }
}

/// The Introspection service: the plugin list and the server's identity.
#[derive(Clone)]
struct IntrospectionService {
    records: Records,
    uuid: String,
}

impl IntrospectionService {
    async fn plugins(self, _: Call, req: PluginsRequest) -> Result<PluginsResponse, Status> {
        let filter = AnyFilter::parse(&req.filters)?;
        let all = self.records.read().unwrap_or_else(|e| e.into_inner());
        let plugins = all.iter().filter(|r| filter.matches(&RecordFields(r))).map(to_proto).collect();
        Ok(PluginsResponse { plugins })
    }

    async fn server(self, _: Call, _: ()) -> Result<ServerResponse, Status> {
        let pidns = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).unwrap_or(0);
        Ok(ServerResponse { uuid: self.uuid, pid: u64::from(std::process::id()), pidns, deprecations: vec![] })
    }
}

/// The core's services, ready to be put in the route table.
pub fn core_services(records: Records, uuid: String) -> Vec<CoreService> {
    let svc = IntrospectionService { records, uuid };
    let introspection = ServiceRouter::new()
        .unary_with(&format!("/{INTROSPECTION_SERVICE}/Plugins"), &svc, IntrospectionService::plugins)
        .unary_with(&format!("/{INTROSPECTION_SERVICE}/Server"), &svc, IntrospectionService::server);
    let version = ServiceRouter::new().unary(&format!("/{VERSION_SERVICE}/Version"), |_c: Call, _req: ()| async {
        Ok(VersionResponse { version: VERSION.to_string(), revision: REVISION.to_string() })
    });
    let health = ServiceRouter::new().unary(
        &format!("/{HEALTH_SERVICE}/Check"),
        |_c: Call, req: HealthCheckRequest| async move {
            if !req.service.is_empty() && req.service != "containerd" {
                return Err(Status::not_found(format!("unknown service {}", req.service)));
            }
            Ok(HealthCheckResponse { status: ServingStatus::Serving as i32 })
        },
    );
    vec![
        CoreService {
            plugin_type: crated_plugin_api::types::GRPC,
            id: "introspection",
            services: vec![INTROSPECTION_SERVICE.into()],
            router: introspection,
        },
        CoreService {
            plugin_type: crated_plugin_api::types::GRPC,
            id: "version",
            services: vec![VERSION_SERVICE.into()],
            router: version,
        },
        CoreService {
            plugin_type: crated_plugin_api::types::GRPC,
            id: "healthcheck",
            services: vec![HEALTH_SERVICE.into()],
            router: health,
        },
    ]
}
