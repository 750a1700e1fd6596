//! The exchange: publish, forward and subscribe, as containerd's
//! `events/exchange`, as a plain library with no gRPC in it.
//!
//! # Slow subscribers
//!
//! containerd gives every subscriber an unbounded `go-events` queue: the
//! broadcaster never blocks on a subscriber and never drops an event, so a
//! subscriber that stops reading grows the daemon's memory without bound.
//!
//! Here the exchange is one `tokio::sync::broadcast` ring of `capacity`
//! envelopes shared by every subscriber:
//!
//! - [`Exchange::publish`] and [`Exchange::forward`] are synchronous and
//!   O(1) whatever the number of subscribers: they store one `Arc` in the
//!   ring and return. They never wait for anybody.
//! - Memory is bounded by `capacity` envelopes in total, not per subscriber.
//! - A subscriber that falls more than `capacity` events behind loses the
//!   oldest ones it has not read and then carries on with the oldest still
//!   held (the loss is counted in [`Exchange::dropped`]); its stream is not
//!   broken, since containerd's clients (`ctr events`, the CRI event
//!   monitor) treat a broken stream as fatal, and containerd itself never
//!   breaks one.
//! - Filters are applied by each subscriber as it reads, so publishing does
//!   not pay for them, and a subscriber whose filters reject a flood of
//!   events keeps up with it.

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use containerd_client::types::Envelope;
use crated_plugin_api::filters::{AnyFilter, Fields, FilterError};
use prost_types::{Any, Timestamp};
use tokio::sync::{broadcast, watch};

use crate::fields::event_field;

/// How many envelopes the exchange holds for subscribers that lag behind.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Why an event was not accepted, or a subscription not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("failed publishing event: namespace is required")]
    NamespaceRequired,
    #[error("namespace validation: {0}")]
    InvalidNamespace(String),
    #[error("envelope topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: String },
    #[error("timestamp must be set on forwarded event")]
    MissingTimestamp,
    #[error("forward request carries no envelope")]
    MissingEnvelope,
    /// Worded, and coded `Unknown`, as containerd's exchange answers.
    #[error("subscription error: failed parsing subscription filters: {0}: invalid argument")]
    InvalidFilter(#[from] FilterError),
}

impl From<ExchangeError> for crated_plugin_api::Status {
    fn from(e: ExchangeError) -> Self {
        use crated_plugin_api::Status;
        match e {
            ExchangeError::NamespaceRequired => Status::failed_precondition(e.to_string()),
            ExchangeError::InvalidFilter(_) => Status::new(crated_plugin_api::Code::Unknown, e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

pub use crated_plugin_api::validate::identifier as validate_identifier;

/// containerd's topic rule: starts with '/', at least one component, every
/// component an identifier.
pub fn validate_topic(topic: &str) -> Result<(), ExchangeError> {
    let bad = |reason: String| ExchangeError::InvalidTopic { topic: topic.to_string(), reason };
    if topic.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(bad("must start with '/'".into()));
    };
    if rest.is_empty() {
        return Err(bad("must have at least one component".into()));
    }
    for component in rest.split('/') {
        validate_identifier(component)
            .map_err(|e| bad(format!("failed validation on component {component:?}: {e}")))?;
    }
    Ok(())
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// The event bus.
#[derive(Debug)]
pub struct Exchange {
    tx: broadcast::Sender<Arc<Envelope>>,
    closed: watch::Sender<bool>,
    dropped: Arc<AtomicU64>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new(DEFAULT_CAPACITY)
    }
}

impl Exchange {
    /// An exchange holding up to `capacity` (at least 1) unread envelopes.
    pub fn new(capacity: usize) -> Exchange {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Exchange { tx, closed: watch::Sender::new(false), dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Packages `event` on `topic` in `namespace`, stamped now, and sends
    /// it to every subscriber. Never waits. Returns the envelope sent.
    pub fn publish(&self, namespace: Option<&str>, topic: &str, event: Option<Any>) -> Result<Envelope, ExchangeError> {
        let namespace = namespace.filter(|n| !n.is_empty()).ok_or(ExchangeError::NamespaceRequired)?;
        validate_identifier(namespace).map_err(ExchangeError::InvalidNamespace)?;
        validate_topic(topic)?;
        let envelope =
            Envelope { timestamp: Some(now()), namespace: namespace.to_string(), topic: topic.to_string(), event };
        self.send(envelope.clone());
        Ok(envelope)
    }

    /// Distributes an envelope made elsewhere as it is: its namespace and
    /// timestamp are kept (and must be valid and set).
    pub fn forward(&self, envelope: Envelope) -> Result<(), ExchangeError> {
        validate_identifier(&envelope.namespace)
            .map_err(|e| ExchangeError::InvalidNamespace(format!("event envelope has invalid namespace: {e}")))?;
        validate_topic(&envelope.topic)?;
        match &envelope.timestamp {
            Some(t) if t.seconds != 0 || t.nanos != 0 => {}
            _ => return Err(ExchangeError::MissingTimestamp),
        }
        self.send(envelope);
        Ok(())
    }

    fn send(&self, envelope: Envelope) {
        // An error only means that nobody is subscribed.
        let _ = self.tx.send(Arc::new(envelope));
    }

    /// Subscribes to every envelope published from now on that matches any
    /// of `filters` (containerd's filter syntax over `topic`, `namespace`
    /// and `event.<field>`; none means all).
    pub fn subscribe<S: AsRef<str>>(&self, filters: &[S]) -> Result<Subscription, ExchangeError> {
        let filter = AnyFilter::parse(filters)?;
        Ok(Subscription {
            rx: self.tx.subscribe(),
            filter,
            closed: self.closed.subscribe(),
            dropped: self.dropped.clone(),
        })
    }

    /// How many envelopes lagging subscribers have lost so far, in total.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Ends every subscription (at shutdown); publishing still succeeds.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// One subscriber's view of the exchange.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Envelope>>,
    filter: AnyFilter,
    closed: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next matching envelope; `None` once the exchange is closed.
    pub async fn next(&mut self) -> Option<Arc<Envelope>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let received = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.closed.changed() => continue,
            };
            match received {
                Ok(env) => {
                    if self.filter.matches(&EnvelopeFields(&env)) {
                        return Some(env);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.dropped.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The subscription as a stream of envelopes.
    pub fn into_stream(self) -> impl futures::Stream<Item = Arc<Envelope>> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|e| (e, s)) })
    }
}

/// containerd's envelope adaptor: `namespace`, `topic`, and `event.<path>`
/// for the event types containerd gives field paths to.
pub struct EnvelopeFields<'a>(pub &'a Envelope);

impl Fields for EnvelopeFields<'_> {
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        match path.first().map(String::as_str)? {
            "namespace" if !self.0.namespace.is_empty() => Some(Cow::Borrowed(&self.0.namespace)),
            "topic" if !self.0.topic.is_empty() => Some(Cow::Borrowed(&self.0.topic)),
            "event" => event_field(self.0.event.as_ref()?, &path[1..]).map(Cow::Owned),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(name: &str) -> Option<Any> {
        Some(crated_events_api::any_event(&containerd_client::events::NamespaceCreate {
            name: name.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn topics_and_identifiers_follow_containerd() {
        for ok in ["/a", "/namespaces/create", "/tasks/exec-added", "/a.b/c_d"] {
            validate_topic(ok).unwrap();
        }
        for bad in ["", "a/b", "/", "/a//b", "/a/", "/a b", "/-a", "/a-"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_identifier(&"a".repeat(77)).is_err());
        validate_identifier(&"a".repeat(76)).unwrap();
    }

    #[tokio::test]
    async fn publish_reaches_matching_subscribers_only() {
        let x = Exchange::new(16);
        let mut all = x.subscribe::<&str>(&[]).unwrap();
        let mut ns2 = x.subscribe(&["namespace==ns2"]).unwrap();
        let mut by_event = x.subscribe(&["event.name==b", "topic~=^/other"]).unwrap();
        x.publish(Some("ns1"), "/t/a", any("a")).unwrap();
        x.publish(Some("ns2"), "/t/b", any("b")).unwrap();
        x.publish(Some("ns1"), "/other", None).unwrap();
        assert_eq!(all.next().await.unwrap().topic, "/t/a");
        assert_eq!(all.next().await.unwrap().topic, "/t/b");
        assert_eq!(all.next().await.unwrap().topic, "/other");
        assert_eq!(ns2.next().await.unwrap().topic, "/t/b");
        assert_eq!(by_event.next().await.unwrap().topic, "/t/b");
        assert_eq!(by_event.next().await.unwrap().topic, "/other");
        x.close();
        assert!(ns2.next().await.is_none(), "closing ends subscriptions");
    }

    #[test]
    fn errors_are_containerds() {
        let x = Exchange::default();
        assert_eq!(x.publish(None, "/a", None), Err(ExchangeError::NamespaceRequired));
        assert_eq!(x.publish(Some(""), "/a", None), Err(ExchangeError::NamespaceRequired));
        assert!(matches!(x.publish(Some("bad ns"), "/a", None), Err(ExchangeError::InvalidNamespace(_))));
        assert!(matches!(x.publish(Some("ns"), "a", None), Err(ExchangeError::InvalidTopic { .. })));
        let env = Envelope { namespace: "ns".into(), topic: "/a".into(), ..Default::default() };
        assert_eq!(x.forward(env), Err(ExchangeError::MissingTimestamp));
        assert!(matches!(x.subscribe(&["topic=="]), Err(ExchangeError::InvalidFilter(_))));
        let code = |e: ExchangeError| crated_plugin_api::Status::from(e).code;
        assert_eq!(code(ExchangeError::NamespaceRequired), crated_plugin_api::Code::FailedPrecondition);
        assert_eq!(code(ExchangeError::MissingTimestamp), crated_plugin_api::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_loses_the_oldest_and_carries_on() {
        let x = Exchange::new(4);
        let mut slow = x.subscribe::<&str>(&[]).unwrap();
        for i in 0..10 {
            x.publish(Some("ns"), &format!("/e/n{i}"), None).unwrap();
        }
        assert_eq!(slow.next().await.unwrap().topic, "/e/n6", "the newest 4 are kept");
        assert_eq!(x.dropped(), 6);
        for i in 7..10 {
            assert_eq!(slow.next().await.unwrap().topic, format!("/e/n{i}"));
        }
    }

    #[test]
    fn forward_keeps_namespace_and_timestamp() {
        let x = Exchange::default();
        let mut sub = x.subscribe::<&str>(&[]).unwrap();
        let ts = Timestamp { seconds: 1234, nanos: 5 };
        let env = Envelope { timestamp: Some(ts), namespace: "other".into(), topic: "/f".into(), event: any("z") };
        x.forward(env.clone()).unwrap();
        let got = futures::executor::block_on(sub.next()).unwrap();
        assert_eq!(*got, env);
    }
}
