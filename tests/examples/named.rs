//! Several plugins of one type serving the same service to dependents only,
//! and a dependent that picks one by name: the addressing snapshotters,
//! differs and runtimes rely on.
//!
//! `io.crated.testmulti.v1.{left,right}` each serve `crated.test.Echo`
//! internally (never on the socket) and answer with their id.
//! `io.crated.testpick.v1.picker` serves `crated.test.Relay` on the socket:
//! `Relay/Echo` sends `text` to the dependency named by the request's
//! `namespace` header ("" means: unnamed, by service).

use crated_plugin_api::{export_plugins, Call, Host, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};
use crated_tests::{echo_method, EchoRequest, EchoResponse, ECHO_SERVICE, RELAY_SERVICE};

const MULTI: &str = "io.crated.testmulti.v1";

fn side(id: &'static str) -> ServiceRouter {
    ServiceRouter::new()
        .unary(&echo_method("Echo"), move |_: Call, req: EchoRequest| async move {
            Ok(EchoResponse { text: format!("{id}: {}", req.text), namespace: String::new() })
        })
        .internal(ECHO_SERVICE)
}

struct Left;
impl Plugin for Left {
    fn info() -> PluginInfo {
        PluginInfo::new(MULTI, "left")
    }
    async fn init(_: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(side("left"))
    }
}

struct Right;
impl Plugin for Right {
    fn info() -> PluginInfo {
        PluginInfo::new(MULTI, "right")
    }
    async fn init(_: InitCtx) -> Result<ServiceRouter, PluginError> {
        Ok(side("right"))
    }
}

struct Picker;
impl Plugin for Picker {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.testpick.v1", "picker").requires(&[MULTI])
    }
    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let host = ctx.host.clone();
        let names: Vec<String> = host.dependencies_of_type(MULTI).iter().map(|d| d.key()).collect();
        if names.len() != 2 {
            return Err(PluginError::failed(format!("expected two dependencies of {MULTI}, got {names:?}")));
        }
        Ok(ServiceRouter::new().unary(&format!("/{RELAY_SERVICE}/Echo"), move |call: Call, req: EchoRequest| {
            let host = host.clone();
            async move {
                let target = call.namespace().unwrap_or_default();
                let host = if target.is_empty() { host } else { host.to(target) };
                host.unary::<_, EchoResponse>(&Host::call(&echo_method("Echo"), None), &req).await
            }
        }))
    }
}

export_plugins!(Left, Right, Picker);
