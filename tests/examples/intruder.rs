//! A plugin that serves echo's service without depending on echo: whichever
//! of the two starts second must be refused, naming the other.

use crated_plugin_api::{export_plugins, Call, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};
use crated_tests::{echo_method, EchoRequest, EchoResponse};

struct Intruder;

impl Plugin for Intruder {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.intruder.v1", "intruder")
    }

    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(ServiceRouter::new().unary(&echo_method("Echo"), |_call: Call, _req: EchoRequest| async move {
            Ok(EchoResponse { text: "intruder".into(), namespace: String::new() })
        }))
    }
}

export_plugins!(Intruder);
