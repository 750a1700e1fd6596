//! The events plugin (`io.containerd.event.v1.exchange`) on the real
//! daemon: containerd's `Events` service (Publish, Forward, Subscribe with
//! filters), its errors, a stalled subscriber that must not block
//! publishers, and the stock containerd 1.6 `ctr events` reading what we
//! publish. One test also asks a stock containerd which `type_url` its own
//! events carry, which is the form our publishers use.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{unary, Daemon, Setup};
use containerd_client::{
    events::NamespaceCreate,
    services::v1::{events_client::EventsClient, ForwardRequest, PublishRequest, SubscribeRequest},
    types::Envelope,
};
use prost::Message;
use tonic::{transport::Channel, Code, Streaming};

const PUBLISH: &str = "/containerd.services.events.v1.Events/Publish";
const FORWARD: &str = "/containerd.services.events.v1.Events/Forward";
/// The `type_url` containerd 1.6 gives its events: the bare proto name.
const NAMESPACE_CREATE_URL: &str = "containerd.events.NamespaceCreate";

fn start() -> Daemon {
    Setup::new(&[]).with_real_plugins(&["events"]).start()
}

/// A `PublishRequest` (built without naming `prost_types::Any`, which this
/// crate does not depend on).
fn publish_req(topic: &str, type_url: &str, value: Vec<u8>) -> PublishRequest {
    let mut r = PublishRequest { topic: topic.into(), event: Some(Default::default()) };
    let any = r.event.as_mut().unwrap();
    any.type_url = type_url.into();
    any.value = value;
    r
}

fn ns_create(name: &str) -> PublishRequest {
    let ev = NamespaceCreate { name: name.into(), ..Default::default() };
    publish_req("/namespaces/create", NAMESPACE_CREATE_URL, ev.encode_to_vec())
}

async fn publish(ch: &Channel, ns: Option<&str>, req: PublishRequest) -> Result<(), tonic::Status> {
    unary::<PublishRequest, ()>(ch, PUBLISH, ns, req).await
}

async fn subscribe(ch: &Channel, filters: &[&str]) -> Result<Streaming<Envelope>, tonic::Status> {
    let req = SubscribeRequest { filters: filters.iter().map(|s| s.to_string()).collect() };
    EventsClient::new(ch.clone()).subscribe(req).await.map(|r| r.into_inner())
}

async fn next(s: &mut Streaming<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(3), s.message())
        .await
        .expect("no event within 3s")
        .expect("stream failed")
        .expect("stream ended")
}

/// Topics received until (and without) the `/fence` event.
async fn topics_until_fence(s: &mut Streaming<Envelope>) -> Vec<String> {
    let mut v = Vec::new();
    loop {
        let e = next(s).await;
        if e.topic == "/fence" {
            return v;
        }
        v.push(format!("{} {}", e.namespace, e.topic));
    }
}

#[tokio::test]
async fn a_subscriber_receives_what_another_client_publishes() {
    let d = start();
    let mut sub = subscribe(&d.channel().await, &[]).await.unwrap();
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    publish(&d.channel().await, Some("team-a"), ns_create("x")).await.unwrap();
    let e = next(&mut sub).await;
    assert_eq!(e.namespace, "team-a");
    assert_eq!(e.topic, "/namespaces/create");
    let any = e.event.expect("event payload");
    assert_eq!(any.type_url, NAMESPACE_CREATE_URL);
    assert_eq!(NamespaceCreate::decode(any.value.as_slice()).unwrap().name, "x");
    let ts = e.timestamp.expect("timestamp set at publish");
    assert!((before - 1..=before + 5).contains(&ts.seconds), "timestamp {ts:?} is not now ({before})");
}

#[tokio::test]
async fn filters_select_by_topic_namespace_and_event_fields() {
    let d = start();
    let ch = d.channel().await;
    // Each subscriber also takes `/fence` (filters are or'ed), which marks
    // the end of what it should have received.
    let fence = r#"topic=="/fence""#;
    let mut by_topic = subscribe(&ch, &[r#"topic=="/a/b""#, fence]).await.unwrap();
    let mut by_ns = subscribe(&ch, &["namespace==ns2", fence]).await.unwrap();
    let mut by_regex = subscribe(&ch, &[r#"topic~="/namespaces/*""#, fence]).await.unwrap();
    let mut by_field = subscribe(&ch, &["event.name==y,namespace==ns1", fence]).await.unwrap();

    publish(&ch, Some("ns1"), publish_req("/a/b", "example.Thing", vec![])).await.unwrap();
    publish(&ch, Some("ns2"), publish_req("/c/d", "example.Thing", vec![])).await.unwrap();
    publish(&ch, Some("ns1"), ns_create("y")).await.unwrap();
    publish(&ch, Some("ns2"), ns_create("y")).await.unwrap();
    publish(&ch, Some("ns1"), publish_req("/fence", "example.Fence", vec![])).await.unwrap();

    assert_eq!(topics_until_fence(&mut by_topic).await, ["ns1 /a/b"]);
    assert_eq!(topics_until_fence(&mut by_ns).await, ["ns2 /c/d", "ns2 /namespaces/create"]);
    assert_eq!(topics_until_fence(&mut by_regex).await, ["ns1 /namespaces/create", "ns2 /namespaces/create"]);
    assert_eq!(topics_until_fence(&mut by_field).await, ["ns1 /namespaces/create"]);

    for bad in ["topic==", "topic=/a", r#"topic~="(""#] {
        let e = match subscribe(&ch, &[bad]).await {
            Err(e) => e,
            Ok(mut s) => s.message().await.expect_err(bad),
        };
        // containerd answers a bad subscription filter with Unknown.
        assert_eq!(e.code(), Code::Unknown, "{bad}: {e:?}");
        assert!(e.message().contains("failed parsing subscription filters: filters: parse error"), "{e:?}");
    }
}

#[tokio::test]
async fn publish_and_forward_are_validated_like_containerd() {
    let d = start();
    let ch = d.channel().await;
    let e = publish(&ch, None, ns_create("x")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("namespace is required"), "{e:?}");
    for bad in ["", "a/b", "/", "/a//b", "/a b", "/a/-b"] {
        let e = publish(&ch, Some("ns"), publish_req(bad, "example.T", vec![])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "topic {bad:?}: {e:?}");
    }
    let e = publish(&ch, Some("bad ns"), ns_create("x")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let mut env = Envelope { namespace: "ns".into(), topic: "/a".into(), ..Default::default() };
    let e = unary::<_, ()>(&ch, FORWARD, None, ForwardRequest { envelope: Some(env.clone()) }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "no timestamp: {e:?}");
    env.timestamp = Some(Default::default());
    env.timestamp.as_mut().unwrap().seconds = 1;
    env.namespace = String::new();
    let e = unary::<_, ()>(&ch, FORWARD, None, ForwardRequest { envelope: Some(env) }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "no namespace: {e:?}");
    let e = unary::<_, ()>(&ch, FORWARD, None, ForwardRequest { envelope: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "no envelope: {e:?}");
}

#[tokio::test]
async fn forward_keeps_the_envelopes_namespace_and_timestamp() {
    let d = start();
    let ch = d.channel().await;
    let mut sub = subscribe(&ch, &[]).await.unwrap();
    let ev = ns_create("fwd").event;
    let mut env = Envelope {
        namespace: "elsewhere".into(),
        topic: "/namespaces/create".into(),
        event: ev,
        timestamp: Some(Default::default()),
    };
    let ts = env.timestamp.as_mut().unwrap();
    ts.seconds = 1_000_000_000;
    ts.nanos = 42;
    // The caller's own namespace does not replace the envelope's.
    unary::<_, ()>(&ch, FORWARD, Some("mine"), ForwardRequest { envelope: Some(env.clone()) }).await.unwrap();
    assert_eq!(next(&mut sub).await, env);
}

#[tokio::test]
async fn a_stalled_subscriber_does_not_block_publishers() {
    // A small ring (the plugin's config), so that what a stalled subscriber
    // may hold is far below what is published.
    let d = Setup::new(&[])
        .with_real_plugins(&["events"])
        .extra("[plugins.\"io.containerd.event.v1.exchange\"]\ncapacity = 256")
        .start();
    // Subscribed on its own connection and never read: the HTTP/2 windows
    // and the gRPC stack's buffers fill up (a few thousand of these
    // events), then the subscriber lags behind the exchange's ring.
    let mut stalled = subscribe(&d.channel().await, &[]).await.unwrap();
    let ch = d.channel().await;
    let payload = vec![7u8; 512];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (ch, payload) = (ch.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..625 {
                publish(&ch, Some("flood"), publish_req(&format!("/flood/t{t}/e{i}"), "example.Blob", payload.clone()))
                    .await
                    .unwrap();
            }
        }));
    }
    let all = futures::future::join_all(tasks);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("publishers were blocked")
        .into_iter()
        .for_each(|r| r.unwrap());
    eprintln!("10000 publishes with a stalled subscriber took {:?}", started.elapsed());

    // The exchange still works for others...
    let mut fresh = subscribe(&ch, &[]).await.unwrap();
    publish(&ch, Some("flood"), publish_req("/after/flood", "example.Blob", vec![])).await.unwrap();
    assert_eq!(next(&mut fresh).await.topic, "/after/flood");
    // ...and the stalled subscriber, once it reads, gets events again up to
    // the newest: it lost some in between (memory stays bounded) but its
    // stream is not broken.
    let mut received = 0;
    loop {
        let topic = next(&mut stalled).await.topic;
        received += 1;
        if topic == "/after/flood" {
            break;
        }
        assert!(topic.starts_with("/flood/"), "{topic}");
    }
    eprintln!("the stalled subscriber got {received} of 10001 events");
    assert!(received < 10001, "nothing was dropped: the exchange buffered a stalled subscriber without bound");
}

/// Kills a child process by its pid when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn stock_ctr_events_prints_what_we_publish() {
    let d = start();
    let ch = d.channel().await;
    let mut child = KillOnDrop(
        Command::new(common::stock_ctr_bin())
            .arg("--address")
            .arg(d.socket())
            .arg("events")
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stock ctr events"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // `ctr events` subscribes some time after it starts: publish until a
    // line shows up.
    let deadline = Instant::now() + Duration::from_secs(4);
    let line = loop {
        publish(&ch, Some("stockns"), ns_create("x")).await.unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            break line;
        }
        assert!(Instant::now() < deadline, "stock `ctr events` printed nothing");
    };
    // e.g. `2026-11-27 20:46:08.675918993 +0000 UTC stockns /namespaces/create {"name":"x"}`
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.contains(&"stockns"), "{line}");
    assert!(words.contains(&"/namespaces/create"), "{line}");
    assert!(line.ends_with(r#"{"name":"x"}"#), "{line}");
    drop(child);
}

/// The form our publishers use is the one containerd 1.6 itself emits.
#[tokio::test]
async fn stock_containerd_events_carry_bare_type_urls() {
    let c = common::StockContainerd::start();
    // containerd sends the response headers of Subscribe only with the
    // first event, so subscribe in a task and create namespaces until one
    // arrives.
    let ch = common::channel(&c.socket()).await;
    let mut sub = tokio::spawn(async move {
        let mut s = subscribe(&ch, &[]).await.unwrap();
        next(&mut s).await
    });
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut n = 0;
    let e = loop {
        n += 1;
        let name = format!("probe{n}");
        let out = common::run_client(&common::stock_ctr_bin(), &c.socket(), &["namespaces", "create", &name]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        if let Ok(e) = tokio::time::timeout(Duration::from_millis(200), &mut sub).await {
            break e.unwrap();
        }
        assert!(Instant::now() < deadline, "no event from the stock containerd");
    };
    assert_eq!((e.namespace.as_str(), e.topic.as_str()), ("default", "/namespaces/create"));
    let any = e.event.unwrap();
    eprintln!("stock containerd: type_url {:?}", any.type_url);
    assert_eq!(any.type_url, NAMESPACE_CREATE_URL);
    assert!(NamespaceCreate::decode(any.value.as_slice()).unwrap().name.starts_with("probe"));
    drop(c);
}
