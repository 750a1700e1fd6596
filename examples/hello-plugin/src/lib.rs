//! `io.example.hello.v1.hello`: a plugin built outside the crated
//! repository's workspace, with its own lockfile. It serves one gRPC
//! service of its own, `example.hello.v1.Greeter`.
//!
//! ```proto
//! syntax = "proto3";
//! package example.hello.v1;
//! service Greeter { rpc SayHello(HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; }
//! ```

use crated_plugin_api::{export_plugins, Call, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter, Status};
use serde::Deserialize;

/// The method path of `Greeter.SayHello`.
pub const SAY_HELLO: &str = "/example.hello.v1.Greeter/SayHello";

/// `example.hello.v1.HelloRequest`, written with prost's derive (no protoc).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `example.hello.v1.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The plugin's config: `[plugins."io.example.hello.v1.hello"]` in the
/// daemon's config.toml, merged over the defaults declared in `info()`.
#[derive(Debug, Deserialize)]
struct Config {
    greeting: String,
}

struct Hello;

impl Plugin for Hello {
    fn info() -> PluginInfo {
        PluginInfo::new("io.example.hello.v1", "hello")
            .export("greeting_source", "config")
            .config_defaults("greeting = \"Hello\"\n")
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let config: Config = ctx.config()?;
        if config.greeting.trim().is_empty() {
            return Err(PluginError::failed("greeting must not be empty"));
        }
        let greeting = config.greeting;
        Ok(ServiceRouter::new().unary(SAY_HELLO, move |call: Call, req: HelloRequest| {
            let greeting = greeting.clone();
            async move {
                if req.name.is_empty() {
                    return Err(Status::invalid_argument("name is required"));
                }
                // containerd clients send the namespace as gRPC metadata.
                let ns = call.require_namespace()?;
                // Runs on this library's own runtime: tokio works here.
                tokio::task::yield_now().await;
                Ok(HelloReply { message: format!("{greeting}, {}! (namespace {ns})", req.name) })
            }
        }))
    }
}

export_plugins!(Hello);
