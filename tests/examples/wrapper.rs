//! A plugin that wraps echo: it serves the same `crated.test.Echo` service,
//! takes it over on the socket (it depends on echo), and forwards to echo in
//! process.

use crated_plugin_api::{export_plugins, Call, Host, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};
use crated_tests::{echo_method, EchoRequest, EchoResponse};

struct Wrapper;

impl Plugin for Wrapper {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.testwrap.v1", "wrapper").requires(&["io.crated.test.v1"])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let host = ctx.host.clone();
        Ok(ServiceRouter::new().unary(&echo_method("Echo"), move |call: Call, req: EchoRequest| {
            let host = host.clone();
            async move {
                let inner = Host::call(&echo_method("Echo"), call.namespace());
                let r: EchoResponse = host.unary(&inner, &req).await?;
                Ok(EchoResponse { text: format!("wrapped: {}", r.text), namespace: r.namespace })
            }
        }))
    }
}

export_plugins!(Wrapper);
