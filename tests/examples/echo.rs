//! Test plugins in one library: an echo service with every call kind, a
//! plugin that calls it in process, one that declines to load, and one
//! whose config is echoed back.

use crated_plugin_api::{
    export_plugins, Call, InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter, Status, Streaming,
};
use crated_tests::{echo_method, EchoRequest, EchoResponse, RELAY_SERVICE};
use futures::StreamExt;

fn reply(call: &Call, text: impl Into<String>) -> EchoResponse {
    EchoResponse { text: text.into(), namespace: call.namespace().unwrap_or_default().to_string() }
}

/// Where plugins record that they were stopped: `<daemon state>/shutdown-order`.
fn shutdown_log(ctx: &InitCtx) -> std::path::PathBuf {
    ctx.state.parent().map(|p| p.join("shutdown-order")).unwrap_or_default()
}

async fn record_shutdown(file: std::path::PathBuf, who: &'static str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{who}");
    }
}

/// `io.crated.test.v1.echo`: the router's test bed.
struct Echo;

impl Plugin for Echo {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.test.v1", "echo")
            .export("flavour", "plain")
            .capability("echo")
            .config_defaults("greeting = \"hello\"\nsuffix = \"!\"\n")
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let greeting = ctx.config.get("greeting").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let suffix = ctx.config.get("suffix").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        // Proves the plugin got its own root directory.
        std::fs::write(ctx.root.join("started"), b"yes").map_err(PluginError::failed)?;
        let order_file = shutdown_log(&ctx);
        // Plugin logs reach the daemon's log, filtered by its level.
        crated_plugin_api::tracing::warn!(greeting = %greeting, "echo plugin initialised");
        crated_plugin_api::tracing::debug!("echo plugin debug detail");
        Ok(ServiceRouter::new()
            .on_shutdown(move || record_shutdown(order_file.clone(), "echo"))
            .unary(&echo_method("Echo"), |call: Call, req: EchoRequest| async move {
                // `count` > 0 sleeps that many ms: a timer needs this
                // library's reactor, so this proves calls run on it.
                if req.count > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(req.count))).await;
                }
                Ok(reply(&call, req.text))
            })
            .unary(&echo_method("Greeting"), move |call: Call, _req: EchoRequest| {
                let text = format!("{greeting}{suffix}");
                async move { Ok(reply(&call, text)) }
            })
            .unary(&echo_method("Panic"), |_call: Call, req: EchoRequest| async move {
                if !req.text.is_empty() {
                    panic!("echo was asked to panic: {}", req.text);
                }
                Ok(EchoResponse::default())
            })
            .unary(&echo_method("Fail"), |_call: Call, req: EchoRequest| async move {
                Err::<EchoResponse, _>(Status::not_found(format!("no such thing: {}", req.text)))
            })
            .server_streaming(&echo_method("Repeat"), |call: Call, req: EchoRequest| async move {
                let n = req.count;
                Ok(futures::stream::iter(0..n).then(move |i| {
                    let r = reply(&call, format!("{}#{i}", req.text));
                    async move {
                        tokio::task::yield_now().await;
                        Ok(r)
                    }
                }))
            })
            .server_streaming(&echo_method("RepeatThenPanic"), |_call: Call, req: EchoRequest| async move {
                Ok(futures::stream::iter(0..3u32).map(move |i| {
                    if i == 2 {
                        panic!("stream panicked at item {i}");
                    }
                    Ok(EchoResponse { text: format!("{}#{i}", req.text), namespace: String::new() })
                }))
            })
            .client_streaming(&echo_method("Concat"), |call: Call, mut input: Streaming<EchoRequest>| async move {
                let mut all = String::new();
                while let Some(m) = input.message().await? {
                    all.push_str(&m.text);
                }
                Ok(reply(&call, all))
            })
            .bidi_streaming(&echo_method("Chat"), |call: Call, input: Streaming<EchoRequest>| async move {
                Ok(input.map(move |m| m.map(|m| reply(&call, m.text.to_uppercase()))))
            }))
    }
}

/// `io.crated.testrelay.v1.relay`: calls Echo through the core, in process.
struct Relay;

impl Plugin for Relay {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.testrelay.v1", "relay").requires(&["io.crated.test.v1"])
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let host = ctx.host.clone();
        let deps: Vec<String> = host.dependencies().iter().map(|d| format!("{}.{}", d.plugin_type, d.id)).collect();
        if !deps.iter().any(|d| d == "io.crated.test.v1.echo") {
            return Err(PluginError::failed(format!("echo is not among my dependencies: {deps:?}")));
        }
        let streaming_host = host.clone();
        let order_file = shutdown_log(&ctx);
        Ok(ServiceRouter::new()
            .on_shutdown(move || record_shutdown(order_file.clone(), "relay"))
            .unary(&format!("/{RELAY_SERVICE}/Relay"), move |call: Call, req: EchoRequest| {
                let host = host.clone();
                async move {
                    let inner = crated_plugin_api::Host::call(&echo_method("Echo"), call.namespace());
                    let resp: EchoResponse = host.unary(&inner, &req).await?;
                    Ok(EchoResponse { text: format!("relayed: {}", resp.text), namespace: resp.namespace })
                }
            })
            .unary(&format!("/{RELAY_SERVICE}/RelayRepeat"), move |call: Call, req: EchoRequest| {
                let host = streaming_host.clone();
                async move {
                    let inner = crated_plugin_api::Host::call(&echo_method("Repeat"), call.namespace());
                    let mut out = host
                        .streaming::<EchoRequest, EchoResponse, _>(&inner, futures::stream::iter([Ok(req)]))
                        .await?;
                    let mut texts = Vec::new();
                    while let Some(m) = out.next().await {
                        texts.push(m?.text);
                    }
                    Ok(EchoResponse { text: texts.join(","), namespace: String::new() })
                }
            })
            .unary(&format!("/{RELAY_SERVICE}/Forbidden"), move |_call: Call, req: EchoRequest| {
                let host = ctx.host.clone();
                async move {
                    // Introspection is not a dependency of this plugin.
                    let inner = crated_plugin_api::Host::call("/containerd.services.version.v1.Version/Version", None);
                    let _: EchoResponse = host.unary(&inner, &req).await?;
                    Ok(EchoResponse::default())
                }
            }))
    }
}

/// `io.crated.test.v1.skipper`: declines to load, like a snapshotter on an
/// unsupported filesystem.
struct Skipper;

impl Plugin for Skipper {
    fn info() -> PluginInfo {
        PluginInfo::new("io.crated.test.v1", "skipper")
    }
    async fn init(_ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        Err(PluginError::skip("unsupported filesystem for this test"))
    }
}

export_plugins!(Echo, Relay, Skipper);
