//! `io.containerd.event.v1.exchange`: containerd's events service.
//!
//! Like containerd, the event bus is a plain library module
//! ([`exchange`]: [`Exchange`] with publish, forward and subscribe, its
//! slow-subscriber policy documented there), [`service`] maps the gRPC
//! service `containerd.services.events.v1.Events` onto it, [`fields`] gives
//! filters containerd's `event.<field>` paths, and this file only registers
//! the plugin.
//!
//! # Publishing from another plugin
//!
//! Use the small rlib `crated-events-api` (`plugins/events/api`), not this
//! crate (whose store and service a publisher does not need, and which a
//! third-party plugin cannot link). It is re-exported here as [`api`]; in
//! short:
//!
//! - list `"io.containerd.event.v1"` ([`api::PLUGIN_TYPE`]) in `requires`;
//! - build the event's `Any` with [`api::any_event`]: the `type_url` is the
//!   bare proto full name, e.g. `containerd.events.NamespaceCreate`, which
//!   is what the stock containerd 1.6 emits and the only form its
//!   `ctr events` decodes (measured; see the api crate's docs);
//! - topics are in [`api::topics`] (`/namespaces/create`, `/content/delete`,
//!   `/images/update`, `/snapshot/commit`, `/tasks/exit`...; containerd has
//!   no lease events);
//! - call `Publish` in process:
//!   `api::publish(&ctx.host, namespace, api::topics::NAMESPACE_CREATE, &event).await`,
//!   which is `host.unary::<PublishRequest, ()>(&Host::call(api::PUBLISH, Some(namespace)), &req)`.
//!
//! `Publish` returns as soon as the envelope is in the exchange's ring; it
//! never waits for subscribers.
//!
//! The stock `ctr events` prints one line per event:
//! `2026-11-27 20:46:08.675918993 +0000 UTC default /namespaces/create {"name":"foo"}`.
//!
//! # Config
//!
//! ```toml
//! [plugins."io.containerd.event.v1.exchange"]
//! capacity = 4096   # envelopes kept for subscribers that lag behind
//! ```

pub mod exchange;
pub mod fields;
pub mod service;

use std::sync::Arc;

pub use crated_events_api as api;
pub use exchange::{Exchange, ExchangeError, Subscription};

use crated_plugin_api::{InitCtx, Plugin, PluginError, PluginInfo, ServiceRouter};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_capacity")]
    capacity: usize,
}

fn default_capacity() -> usize {
    exchange::DEFAULT_CAPACITY
}

pub struct Events;

impl Plugin for Events {
    fn info() -> PluginInfo {
        PluginInfo::new(api::PLUGIN_TYPE, api::PLUGIN_ID)
            .config_defaults(&format!("capacity = {}\n", exchange::DEFAULT_CAPACITY))
    }

    async fn init(ctx: InitCtx) -> Result<ServiceRouter, PluginError> {
        let cfg: Config = ctx.config()?;
        if cfg.capacity == 0 {
            return Err(PluginError::failed("capacity must be at least 1"));
        }
        let exchange = Arc::new(Exchange::new(cfg.capacity));
        let on_stop = exchange.clone();
        Ok(service::routes(ServiceRouter::new(), exchange).on_shutdown(move || {
            on_stop.close();
            async {}
        }))
    }
}
