//! A metadata plugin that serves nothing, `io.containerd.metadata.v1.bare`:
//! what a metadata store without a garbage collector looks like to the GC
//! scheduler (`crated.gc.v1.Collector` answers Unimplemented), so that the
//! scheduler's "no collector: stay idle" path is tested against a real
//! daemon whatever the real metadata plugin serves.

use crated_plugin_api::{export_plugins, types, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

struct BareMetadata;

impl Plugin for BareMetadata {
    fn info() -> PluginInfo {
        PluginInfo::new(types::METADATA, "bare")
    }
    async fn init(_: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(ServiceRouter::new())
    }
}

export_plugins!(BareMetadata);
