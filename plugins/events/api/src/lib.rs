//! Publishing containerd events from a crated plugin.
//!
//! The events plugin (`io.containerd.event.v1.exchange`, crate
//! `crated-plugin-events`) serves containerd's
//! `containerd.services.events.v1.Events`. Another plugin publishes by
//! calling its `Publish` in process through [`InitCtx::host`], exactly as a
//! gRPC client would:
//!
//! ```ignore
//! // PluginInfo: .requires(&["io.containerd.event.v1"])  (PLUGIN_TYPE)
//! use containerd_client::events::NamespaceCreate;
//! use crated_events_api::{publish, topics};
//!
//! publish(&ctx.host, "default", topics::NAMESPACE_CREATE, &NamespaceCreate { name: "x".into(), ..Default::default() }).await?;
//! // which is:
//! let req = crated_events_api::publish_request(topics::NAMESPACE_CREATE, &ev);
//! let _: () = host.unary(&Host::call(crated_events_api::PUBLISH, Some("default")), &req).await?;
//! ```
//!
//! `Publish` is cheap and never waits for subscribers (slow ones lose the
//! oldest events instead), so it may be awaited inline on any hot path.
//!
//! # The `type_url` of an event
//!
//! Measured against the stock containerd 1.6.20 (Debian): subscribing to
//! its Events service and running `ctr namespaces create foo` delivers
//!
//! ```text
//! namespace "default", topic "/namespaces/create",
//! event.type_url "containerd.events.NamespaceCreate"
//! ```
//!
//! i.e. the bare protobuf full name: no `types.containerd.io/` prefix, no
//! leading `/` (prost's `Name::type_url()` would give
//! `/containerd.events.NamespaceCreate`, which is wrong here). containerd
//! 1.6 resolves an `Any` through its type registry by exactly that string, so
//! an event published with any other form is dropped by `ctr events` with
//! "cannot unmarshal an event from Any". [`any_event`] produces the right
//! form. Image events are `containerd.services.images.v1.ImageCreate` etc.
//! (their proto package is the images service's).
//!
//! # What the stock `ctr events` prints
//!
//! One line per event: Go's `time.Time` string, namespace, topic and the
//! event as JSON (proto field names, empty fields omitted):
//!
//! ```text
//! 2026-11-27 20:46:08.675918993 +0000 UTC default /namespaces/create {"name":"foo"}
//! 2026-11-27 20:46:08.696921344 +0000 UTC foo /namespaces/update {"name":"foo","labels":{"a":"b"}}
//! ```
//!
//! # Why this is a separate crate
//!
//! `crated-plugin-events` is the plugin's own `cdylib`; its
//! `export_plugins!` defines the library's root symbol, so linking it into
//! another plugin fails with "duplicate symbol". This rlib carries only what
//! a publisher needs.
//!
//! [`InitCtx::host`]: crated_plugin_api::InitCtx::host

use containerd_client::services::v1::PublishRequest;
use crated_plugin_api::{Host, Status};

/// The plugin type a publisher lists in `requires`.
pub const PLUGIN_TYPE: &str = crated_plugin_api::types::EVENT;
/// The plugin id.
pub const PLUGIN_ID: &str = "exchange";
/// The gRPC service.
pub const SERVICE: &str = "containerd.services.events.v1.Events";
/// `Publish(PublishRequest) -> google.protobuf.Empty`, namespace from the
/// `containerd-namespace` header.
pub const PUBLISH: &str = "/containerd.services.events.v1.Events/Publish";
/// `Forward(ForwardRequest) -> google.protobuf.Empty`.
pub const FORWARD: &str = "/containerd.services.events.v1.Events/Forward";
/// `Subscribe(SubscribeRequest) -> stream containerd.types.Envelope`.
pub const SUBSCRIBE: &str = "/containerd.services.events.v1.Events/Subscribe";

/// The topics containerd publishes its own events on, with the event type
/// that goes with each (all in `containerd_client::events` unless noted).
/// containerd publishes no lease events at all.
pub mod topics {
    /// `ContainerCreate`
    pub const CONTAINER_CREATE: &str = "/containers/create";
    /// `ContainerUpdate`
    pub const CONTAINER_UPDATE: &str = "/containers/update";
    /// `ContainerDelete`
    pub const CONTAINER_DELETE: &str = "/containers/delete";
    /// `ContentCreate` (containerd 2.x; 1.6 publishes no content creation)
    pub const CONTENT_CREATE: &str = "/content/create";
    /// `ContentDelete`
    pub const CONTENT_DELETE: &str = "/content/delete";
    /// `containerd_client::services::v1::ImageCreate`
    pub const IMAGE_CREATE: &str = "/images/create";
    /// `containerd_client::services::v1::ImageUpdate`
    pub const IMAGE_UPDATE: &str = "/images/update";
    /// `containerd_client::services::v1::ImageDelete`
    pub const IMAGE_DELETE: &str = "/images/delete";
    /// `NamespaceCreate`
    pub const NAMESPACE_CREATE: &str = "/namespaces/create";
    /// `NamespaceUpdate`
    pub const NAMESPACE_UPDATE: &str = "/namespaces/update";
    /// `NamespaceDelete`
    pub const NAMESPACE_DELETE: &str = "/namespaces/delete";
    /// `SnapshotPrepare` (singular "snapshot", as containerd spells it)
    pub const SNAPSHOT_PREPARE: &str = "/snapshot/prepare";
    /// `SnapshotCommit`
    pub const SNAPSHOT_COMMIT: &str = "/snapshot/commit";
    /// `SnapshotRemove`
    pub const SNAPSHOT_REMOVE: &str = "/snapshot/remove";
    /// `TaskCreate`
    pub const TASK_CREATE: &str = "/tasks/create";
    /// `TaskStart`
    pub const TASK_START: &str = "/tasks/start";
    /// `TaskDelete`
    pub const TASK_DELETE: &str = "/tasks/delete";
    /// `TaskExit`
    pub const TASK_EXIT: &str = "/tasks/exit";
    /// `TaskOom`
    pub const TASK_OOM: &str = "/tasks/oom";
    /// `TaskExecAdded`
    pub const TASK_EXEC_ADDED: &str = "/tasks/exec-added";
    /// `TaskExecStarted`
    pub const TASK_EXEC_STARTED: &str = "/tasks/exec-started";
    /// `TaskPaused`
    pub const TASK_PAUSED: &str = "/tasks/paused";
    /// `TaskResumed`
    pub const TASK_RESUMED: &str = "/tasks/resumed";
    /// `TaskCheckpointed`
    pub const TASK_CHECKPOINTED: &str = "/tasks/checkpointed";
}

/// The `type_url` containerd 1.6 gives an event of type `M`: its bare
/// protobuf full name, e.g. `containerd.events.NamespaceCreate`.
pub fn type_url<M: prost::Name>() -> String {
    M::full_name()
}

/// An event as the `Any` containerd puts in an envelope (see the module
/// docs for why the `type_url` has this form).
pub fn any_event<M: prost::Name>(event: &M) -> prost_types::Any {
    prost_types::Any { type_url: type_url::<M>(), value: event.encode_to_vec() }
}

/// The `PublishRequest` for `event` on `topic`.
pub fn publish_request<M: prost::Name>(topic: &str, event: &M) -> PublishRequest {
    PublishRequest { topic: topic.to_string(), event: Some(any_event(event)) }
}

/// Publishes `event` on `topic` in `namespace` through the events plugin,
/// in process. The caller must list [`PLUGIN_TYPE`] in its `requires`.
pub async fn publish<M: prost::Name>(host: &Host, namespace: &str, topic: &str, event: &M) -> Result<(), Status> {
    host.unary::<PublishRequest, ()>(&Host::call(PUBLISH, Some(namespace)), &publish_request(topic, event)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::events::NamespaceCreate;
    use prost::Message as _;

    #[test]
    fn any_event_uses_the_bare_full_name() {
        let any = any_event(&NamespaceCreate { name: "x".into(), ..Default::default() });
        assert_eq!(any.type_url, "containerd.events.NamespaceCreate");
        assert_eq!(NamespaceCreate::decode(any.value.as_slice()).unwrap().name, "x");
        assert_eq!(
            type_url::<containerd_client::services::v1::ImageCreate>(),
            "containerd.services.images.v1.ImageCreate"
        );
    }
}
