//! Publishing task events to the daemon: `Forward` on its ttrpc socket
//! (`TTRPC_ADDRESS`), one event at a time in the order they were queued,
//! each retried a few times over a fresh connection (the Go shim's
//! publisher requeues up to five times), with the namespace in the envelope
//! and in the call's `containerd-namespace-ttrpc` metadata.

use std::time::{Duration, SystemTime};

use shim_protocol::ttrpc::NAMESPACE_KEY;
use shim_protocol::types::{Envelope, Event, ForwardRequest, EVENTS_FORWARD, EVENTS_SERVICE};
use shim_protocol::Client;
use tokio::sync::{mpsc, oneshot};

const ATTEMPTS: u32 = 5;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Timestamps as protobuf has them.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

enum Queued {
    Event { topic: &'static str, event: prost_types::Any, at: SystemTime },
    Flush(oneshot::Sender<()>),
}

/// The queue of events to publish. Clones share it.
#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Publisher {
    /// Starts the forwarding task on the current runtime.
    pub fn start(ttrpc_address: String, namespace: String) -> Publisher {
        let (queue, mut rx) = mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            let mut client: Option<Client> = None;
            while let Some(q) = rx.recv().await {
                let (topic, event, at) = match q {
                    Queued::Event { topic, event, at } => (topic, event, at),
                    Queued::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let req = ForwardRequest {
                    envelope: Some(Envelope {
                        timestamp: Some(timestamp(at)),
                        namespace: namespace.clone(),
                        topic: topic.to_string(),
                        event: Some(event),
                    }),
                };
                for attempt in 0..ATTEMPTS {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = Client::connect(&ttrpc_address).await.ok();
                    }
                    if let Some(c) = &client {
                        let res: Result<shim_protocol::task::Empty, _> = c
                            .call(
                                EVENTS_SERVICE,
                                EVENTS_FORWARD,
                                &req,
                                &[(NAMESPACE_KEY, namespace.as_str())],
                                Some(CALL_TIMEOUT),
                            )
                            .await;
                        match res {
                            Ok(_) => break,
                            Err(e) => crate::log!("publishing {topic} (attempt {}): {e}", attempt + 1),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        });
        Publisher { queue }
    }

    /// Queues an event; its timestamp is now.
    pub fn publish<E: Event>(&self, topic: &'static str, event: &E) {
        let _ = self.queue.send(Queued::Event { topic, event: event.to_any(), at: SystemTime::now() });
    }

    /// Waits until everything queued so far has been published (or given
    /// up on).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Queued::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
