//! containerd's `containerd.services.events.v1.Events` over the
//! [`Exchange`]: Publish, Forward and Subscribe.

use std::sync::Arc;

use containerd_client::services::v1::{ForwardRequest, PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use crated_events_api::{FORWARD, PUBLISH, SUBSCRIBE};
use crated_plugin_api::{Call, ServiceRouter, Status};
use futures::{Stream, StreamExt};

use crate::exchange::{Exchange, ExchangeError};

/// The routes of the Events service. `google.protobuf.Empty` is `()`.
pub fn routes(router: ServiceRouter, exchange: Arc<Exchange>) -> ServiceRouter {
    let svc = EventService { exchange };
    router
        .unary_with(PUBLISH, &svc, EventService::publish)
        .unary_with(FORWARD, &svc, EventService::forward)
        .server_streaming_with(SUBSCRIBE, &svc, EventService::subscribe)
}

/// The Events service over the exchange.
#[derive(Clone)]
struct EventService {
    exchange: Arc<Exchange>,
}

impl EventService {
    async fn publish(self, call: Call, req: PublishRequest) -> Result<(), Status> {
        // Synchronous and O(1): nothing here waits.
        self.exchange.publish(call.namespace(), &req.topic, req.event).map(|_| ()).map_err(Status::from)
    }

    async fn forward(self, _: Call, req: ForwardRequest) -> Result<(), Status> {
        req.envelope
            .ok_or(ExchangeError::MissingEnvelope)
            .and_then(|env| self.exchange.forward(env))
            .map_err(Status::from)
    }

    async fn subscribe(
        self,
        _: Call,
        req: SubscribeRequest,
    ) -> Result<impl Stream<Item = Result<Envelope, Status>>, Status> {
        // Subscribed before the call answers, so nothing published after
        // the client sees the response headers is missed.
        let sub = self.exchange.subscribe(&req.filters).map_err(Status::from)?;
        Ok(sub.into_stream().map(|env| Ok(Arc::unwrap_or_clone(env))))
    }
}
