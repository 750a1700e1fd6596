//! containerd's `containerd.services.events.v1.Events` over the
//! [`Exchange`]: Publish, Forward and Subscribe.

use std::sync::Arc;

use containerd_client::services::v1::{ForwardRequest, PublishRequest, SubscribeRequest};
use crated_events_api::{FORWARD, PUBLISH, SUBSCRIBE};
use crated_plugin_api::{Call, ServiceRouter, Status};
use futures::StreamExt;

use crate::exchange::{Exchange, ExchangeError};

/// The routes of the Events service. `google.protobuf.Empty` is `()`.
pub fn routes(router: ServiceRouter, exchange: Arc<Exchange>) -> ServiceRouter {
    let (e1, e2, e3) = (exchange.clone(), exchange.clone(), exchange);
    router
        .unary(PUBLISH, move |call: Call, req: PublishRequest| {
            // Synchronous and O(1): the work is done before the future.
            let r = e1.publish(call.namespace(), &req.topic, req.event).map(|_| ()).map_err(Status::from);
            async move { r }
        })
        .unary(FORWARD, move |_call: Call, req: ForwardRequest| {
            let r = req
                .envelope
                .ok_or(ExchangeError::MissingEnvelope)
                .and_then(|env| e2.forward(env))
                .map_err(Status::from);
            async move { r }
        })
        .server_streaming(SUBSCRIBE, move |_call: Call, req: SubscribeRequest| {
            // Subscribed before the call answers, so nothing published after
            // the client sees the response headers is missed.
            let sub = e3.subscribe(&req.filters).map_err(Status::from);
            async move { Ok(sub?.into_stream().map(|env| Ok(Arc::unwrap_or_clone(env)))) }
        })
}
