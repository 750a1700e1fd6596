//! A plugin whose init fails, and one whose init panics: used with
//! `required_plugins` and to prove a panic at init does not kill the daemon.

use crated_plugin_api::{export_plugins, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

struct Broken;

impl Plugin for Broken {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.broken.v1", "broken")
    }
    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Err(PluginError::failed("the broken plugin always fails"))
    }
}

struct PanicsAtInit;

impl Plugin for PanicsAtInit {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.broken.v1", "panics")
    }
    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        panic!("init panicked on purpose")
    }
}

export_plugins!(Broken, PanicsAtInit);
