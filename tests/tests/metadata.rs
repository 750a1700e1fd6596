//! The metadata plugin (`io.containerd.metadata.v1.redb`) with the real
//! content and events plugins: namespaces, leases, namespaced content,
//! events, the stock ctr, and a SIGKILL in the middle of writes.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{bidi_streaming, server_streaming, stderr, stdout, unary, Daemon, Setup};
use containerd_client::events::{NamespaceCreate, NamespaceDelete};
use containerd_client::services::v1::{
    events_client::EventsClient, AddResourceRequest, CreateNamespaceRequest, CreateNamespaceResponse, CreateRequest,
    CreateResponse, DeleteContentRequest, DeleteNamespaceRequest, DeleteRequest, DeleteResourceRequest,
    GetNamespaceRequest, GetNamespaceResponse, InfoRequest, InfoResponse, ListContentRequest, ListContentResponse,
    ListNamespacesRequest, ListNamespacesResponse, ListRequest, ListResourcesRequest, ListResourcesResponse,
    ListResponse, ListStatusesRequest, ListStatusesResponse, Namespace, ReadContentRequest, ReadContentResponse,
    Resource, SubscribeRequest, UpdateNamespaceResponse, WriteAction, WriteContentRequest, WriteContentResponse,
};
use tonic::Code;

/// `UpdateNamespaceRequest` spelt out, with its `google.protobuf.FieldMask`
/// (the tests do not depend on prost-types).
#[derive(Clone, PartialEq, prost::Message)]
struct FieldMask {
    #[prost(string, repeated, tag = "1")]
    paths: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UpdateNamespaceRequest {
    #[prost(message, optional, tag = "1")]
    namespace: Option<Namespace>,
    #[prost(message, optional, tag = "2")]
    update_mask: Option<FieldMask>,
}

const NS: &str = "/containerd.services.namespaces.v1.Namespaces";
const LEASES: &str = "/containerd.services.leases.v1.Leases";
const CONTENT: &str = "/containerd.services.content.v1.Content";

fn daemon() -> Daemon {
    Setup::new(&[])
        .with_real_plugins(&["content", "metadata", "events"])
        .extra("[plugins.\"io.containerd.metadata.v1.redb\"]\nlease_expiry_interval_ms = 100\n")
        .start()
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn blob_dir(d: &Daemon) -> PathBuf {
    d.setup.root().join("io.containerd.content.v1.content/blobs/sha256")
}

fn blob_count(d: &Daemon) -> usize {
    std::fs::read_dir(blob_dir(d)).map(|r| r.count()).unwrap_or(0)
}

/// Writes `data` under `reference` in `ns`, labelled with its origin.
async fn write_blob(
    ch: &tonic::transport::Channel,
    ns: &str,
    reference: &str,
    data: &[u8],
    lease: Option<&str>,
) -> Result<String, tonic::Status> {
    common::write_blob(ch, ns, reference, data, lease, &[("origin", reference)]).await
}

async fn info(ch: &tonic::transport::Channel, ns: &str, digest: &str) -> Result<InfoResponse, tonic::Status> {
    unary(ch, &format!("{CONTENT}/Info"), Some(ns), InfoRequest { digest: digest.into() }).await
}

async fn list_content(ch: &tonic::transport::Channel, ns: &str, filters: &[&str]) -> Vec<String> {
    let out: Vec<Result<ListContentResponse, tonic::Status>> = server_streaming(
        ch,
        &format!("{CONTENT}/List"),
        Some(ns),
        ListContentRequest { filters: filters.iter().map(|s| s.to_string()).collect() },
    )
    .await
    .unwrap();
    out.into_iter().flat_map(|r| r.unwrap().info).map(|i| i.digest).collect()
}

async fn create_ns(
    ch: &tonic::transport::Channel,
    name: &str,
    l: &[(&str, &str)],
) -> Result<CreateNamespaceResponse, tonic::Status> {
    let req = CreateNamespaceRequest { namespace: Some(Namespace { name: name.into(), labels: labels(l) }) };
    unary(ch, &format!("{NS}/Create"), None, req).await
}

#[tokio::test]
async fn namespaces_crud_validation_and_events() {
    let d = daemon();
    let ch = d.channel().await;

    // Subscribe first so that every event below reaches us.
    let mut events = EventsClient::new(ch.clone())
        .subscribe(SubscribeRequest { filters: vec!["topic~=/namespaces/".into()] })
        .await
        .unwrap()
        .into_inner();

    let created = create_ns(&ch, "team-a", &[("owner", "me")]).await.unwrap();
    assert_eq!(created.namespace.unwrap().labels, labels(&[("owner", "me")]));
    assert_eq!(create_ns(&ch, "team-a", &[]).await.unwrap_err().code(), Code::AlreadyExists);
    for bad in ["", "bad/name", "-lead", "trail.", "a..b", &"x".repeat(77)] {
        let e = create_ns(&ch, bad, &[]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    create_ns(&ch, "team-b", &[]).await.unwrap();

    let got: GetNamespaceResponse =
        unary(&ch, &format!("{NS}/Get"), None, GetNamespaceRequest { name: "team-a".into() }).await.unwrap();
    assert_eq!(got.namespace.unwrap().labels["owner"], "me");
    let list: ListNamespacesResponse =
        unary(&ch, &format!("{NS}/List"), None, ListNamespacesRequest::default()).await.unwrap();
    let names: Vec<_> = list.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert!(names.contains(&"team-a") && names.contains(&"team-b"), "{names:?}");

    // Update one label by field mask, then remove another.
    let upd = UpdateNamespaceRequest {
        namespace: Some(Namespace { name: "team-a".into(), labels: labels(&[("tier", "gold")]) }),
        update_mask: Some(FieldMask { paths: vec!["labels.tier".into(), "labels.owner".into()] }),
    };
    let r: UpdateNamespaceResponse = unary(&ch, &format!("{NS}/Update"), None, upd).await.unwrap();
    assert_eq!(r.namespace.unwrap().labels, labels(&[("tier", "gold")]));
    let got: GetNamespaceResponse =
        unary(&ch, &format!("{NS}/Get"), None, GetNamespaceRequest { name: "team-a".into() }).await.unwrap();
    assert_eq!(got.namespace.unwrap().labels, labels(&[("tier", "gold")]));
    let bad_mask = UpdateNamespaceRequest {
        namespace: Some(Namespace { name: "team-a".into(), labels: HashMap::new() }),
        update_mask: Some(FieldMask { paths: vec!["name".into()] }),
    };
    let e = unary::<_, UpdateNamespaceResponse>(&ch, &format!("{NS}/Update"), None, bad_mask).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    unary::<_, ()>(&ch, &format!("{NS}/Delete"), None, DeleteNamespaceRequest { name: "team-b".into() }).await.unwrap();
    let e = unary::<_, GetNamespaceResponse>(
        &ch,
        &format!("{NS}/Get"),
        None,
        GetNamespaceRequest { name: "team-b".into() },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The subscriber saw create (twice) then delete, with the names.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 4 && Instant::now() < deadline {
        let Ok(Ok(Some(env))) = tokio::time::timeout(Duration::from_secs(5), events.message()).await else { break };
        let any = env.event.unwrap();
        let name = match env.topic.as_str() {
            "/namespaces/create" => <NamespaceCreate as prost::Message>::decode(any.value.as_slice()).unwrap().name,
            "/namespaces/delete" => <NamespaceDelete as prost::Message>::decode(any.value.as_slice()).unwrap().name,
            _ => String::new(),
        };
        seen.push((env.topic, name));
    }
    let want = |t: &str, n: &str| seen.iter().any(|(a, b)| a == t && b == n);
    assert!(want("/namespaces/create", "team-a"), "{seen:?}");
    assert!(want("/namespaces/create", "team-b"), "{seen:?}");
    assert!(want("/namespaces/delete", "team-b"), "{seen:?}");
    assert!(seen.iter().any(|(t, _)| t == "/namespaces/update"), "{seen:?}");
}

#[tokio::test]
async fn a_namespace_with_objects_cannot_be_deleted() {
    let d = daemon();
    let ch = d.channel().await;
    create_ns(&ch, "busy", &[]).await.unwrap();
    let _: CreateResponse = unary(
        &ch,
        &format!("{LEASES}/Create"),
        Some("busy"),
        CreateRequest { id: "hold".into(), labels: HashMap::new() },
    )
    .await
    .unwrap();
    let dgst = write_blob(&ch, "busy", "r1", b"some bytes", None).await.unwrap();
    let e = unary::<_, ()>(&ch, &format!("{NS}/Delete"), None, DeleteNamespaceRequest { name: "busy".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("must be empty, but it still has blobs, leases"), "{}", e.message());

    unary::<_, ()>(&ch, &format!("{LEASES}/Delete"), Some("busy"), DeleteRequest { id: "hold".into(), sync: true })
        .await
        .unwrap();
    // The synchronous collection that deleting the lease ran took the blob
    // (nothing referred to it), as containerd's would.
    let e = unary::<_, ()>(&ch, &format!("{CONTENT}/Delete"), Some("busy"), DeleteContentRequest { digest: dgst })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    unary::<_, ()>(&ch, &format!("{NS}/Delete"), None, DeleteNamespaceRequest { name: "busy".into() }).await.unwrap();
}

#[tokio::test]
async fn content_is_isolated_per_namespace_and_stored_once() {
    let d = daemon();
    let ch = d.channel().await;
    let data = b"hello from namespace a".to_vec();

    let dgst = write_blob(&ch, "ns-a", "ingest-1", &data, None).await.unwrap();
    assert!(dgst.starts_with("sha256:"), "{dgst}");
    assert_eq!(info(&ch, "ns-a", &dgst).await.unwrap().info.unwrap().size, data.len() as i64);
    assert_eq!(list_content(&ch, "ns-a", &[]).await, vec![dgst.clone()]);
    // Invisible in ns-b: Info, List and Read.
    assert_eq!(info(&ch, "ns-b", &dgst).await.unwrap_err().code(), Code::NotFound);
    assert!(list_content(&ch, "ns-b", &[]).await.is_empty());
    let e = server_streaming::<_, ReadContentResponse>(
        &ch,
        &format!("{CONTENT}/Read"),
        Some("ns-b"),
        ReadContentRequest { digest: dgst.clone(), ..Default::default() },
    )
    .await
    .map(|v| v.into_iter().find_map(Result::err))
    .unwrap_or_else(Some);
    assert_eq!(e.map(|e| e.code()), Some(Code::NotFound));
    // Content calls need a namespace.
    assert_eq!(
        unary::<_, InfoResponse>(&ch, &format!("{CONTENT}/Info"), None, InfoRequest { digest: dgst.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );

    // Written in ns-b too: visible there, bytes stored once.
    let again = write_blob(&ch, "ns-b", "ingest-1", &data, None).await.unwrap();
    assert_eq!(again, dgst);
    let b = info(&ch, "ns-b", &dgst).await.unwrap().info.unwrap();
    assert_eq!(b.size, data.len() as i64);
    assert_eq!(b.labels["origin"], "ingest-1");
    assert_eq!(blob_count(&d), 1);
    // A writer that names a digest the raw store already holds writes
    // nothing: the commit just records it (containerd's shared content).
    let shared = vec![
        WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: "pull".into(),
            total: data.len() as i64,
            expected: dgst.clone(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: "pull".into(),
            total: data.len() as i64,
            expected: dgst.clone(),
            ..Default::default()
        },
    ];
    let out: Vec<WriteContentResponse> =
        bidi_streaming(&ch, &format!("{CONTENT}/Write"), Some("ns-c"), shared).await.unwrap();
    assert_eq!(out[0].offset, data.len() as i64, "the stat reports the blob as complete");
    assert_eq!(out[1].digest, dgst);
    assert!(info(&ch, "ns-c", &dgst).await.is_ok());
    unary::<_, ()>(&ch, &format!("{CONTENT}/Delete"), Some("ns-c"), DeleteContentRequest { digest: dgst.clone() })
        .await
        .unwrap();
    // Filters.
    assert_eq!(list_content(&ch, "ns-b", &[&format!("size=={}", data.len())]).await.len(), 1);
    assert!(list_content(&ch, "ns-b", &["labels.origin==other"]).await.is_empty());

    // Reads come from the raw store.
    let chunks: Vec<Result<ReadContentResponse, tonic::Status>> = server_streaming(
        &ch,
        &format!("{CONTENT}/Read"),
        Some("ns-b"),
        ReadContentRequest { digest: dgst.clone(), ..Default::default() },
    )
    .await
    .unwrap();
    let read: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap().data).collect();
    assert_eq!(read, data);

    // Deleting in one namespace keeps the blob for the other; the last
    // delete removes the bytes.
    unary::<_, ()>(&ch, &format!("{CONTENT}/Delete"), Some("ns-a"), DeleteContentRequest { digest: dgst.clone() })
        .await
        .unwrap();
    assert_eq!(info(&ch, "ns-a", &dgst).await.unwrap_err().code(), Code::NotFound);
    assert!(info(&ch, "ns-b", &dgst).await.is_ok());
    assert_eq!(blob_count(&d), 1);
    unary::<_, ()>(&ch, &format!("{CONTENT}/Delete"), Some("ns-b"), DeleteContentRequest { digest: dgst.clone() })
        .await
        .unwrap();
    assert_eq!(blob_count(&d), 0);

    // Ingest refs are per namespace: an unfinished write in ns-a is not a
    // status of ns-b.
    let reqs = vec![WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: "half".into(),
        total: 100,
        data: b"partial".to_vec(),
        ..Default::default()
    }];
    let _: Vec<WriteContentResponse> =
        bidi_streaming(&ch, &format!("{CONTENT}/Write"), Some("ns-a"), reqs).await.unwrap();
    let sa: ListStatusesResponse =
        unary(&ch, &format!("{CONTENT}/ListStatuses"), Some("ns-a"), ListStatusesRequest::default()).await.unwrap();
    assert_eq!(sa.statuses.iter().map(|s| s.r#ref.as_str()).collect::<Vec<_>>(), ["half"]);
    let sb: ListStatusesResponse =
        unary(&ch, &format!("{CONTENT}/ListStatuses"), Some("ns-b"), ListStatusesRequest::default()).await.unwrap();
    assert!(sb.statuses.is_empty(), "{sb:?}");
}

#[tokio::test]
async fn leases_and_their_resources() {
    let d = daemon();
    let ch = d.channel().await;
    let created: CreateResponse = unary(
        &ch,
        &format!("{LEASES}/Create"),
        Some("ls"),
        CreateRequest {
            id: "build-1".into(),
            labels: labels(&[("purpose", "build"), ("containerd.io/gc.expire", "2999-01-01T00:00:00Z")]),
        },
    )
    .await
    .unwrap();
    let lease = created.lease.unwrap();
    assert_eq!(lease.id, "build-1");
    assert!(lease.created_at.is_some());
    let random: CreateResponse =
        unary(&ch, &format!("{LEASES}/Create"), Some("ls"), CreateRequest::default()).await.unwrap();
    assert!(!random.lease.unwrap().id.is_empty());
    let dup = unary::<_, CreateResponse>(
        &ch,
        &format!("{LEASES}/Create"),
        Some("ls"),
        CreateRequest { id: "build-1".into(), labels: HashMap::new() },
    )
    .await
    .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    // An expired lease is removed by the expiry sweep.
    let _: CreateResponse = unary(
        &ch,
        &format!("{LEASES}/Create"),
        Some("ls"),
        CreateRequest { id: "old".into(), labels: labels(&[("containerd.io/gc.expire", "2001-01-01T00:00:00Z")]) },
    )
    .await
    .unwrap();

    let list = |filters: Vec<String>| {
        let ch = ch.clone();
        async move {
            let r: ListResponse =
                unary(&ch, &format!("{LEASES}/List"), Some("ls"), ListRequest { filters }).await.unwrap();
            r.leases.into_iter().map(|l| l.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(vec!["labels.purpose==build".into()]).await, ["build-1"]);
    assert_eq!(list(vec!["id==build-1".into()]).await, ["build-1"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while list(vec!["id==old".into()]).await.len() == 1 {
        assert!(Instant::now() < deadline, "the expired lease was never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list(vec![]).await.len(), 2);
    // Other namespaces do not see it; a namespace is required.
    let other: ListResponse =
        unary(&ch, &format!("{LEASES}/List"), Some("elsewhere"), ListRequest::default()).await.unwrap();
    assert!(other.leases.is_empty());
    let e = unary::<_, ListResponse>(&ch, &format!("{LEASES}/List"), None, ListRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Resources: a written blob joins the lease of the writer's header.
    let dgst = write_blob(&ch, "ls", "leased", b"leased bytes", Some("build-1")).await.unwrap();
    let snap = Resource { id: "snap-1".into(), r#type: "snapshots/overlayfs".into() };
    unary::<_, ()>(
        &ch,
        &format!("{LEASES}/AddResource"),
        Some("ls"),
        AddResourceRequest { id: "build-1".into(), resource: Some(snap.clone()) },
    )
    .await
    .unwrap();
    let bad = Resource { id: "x".into(), r#type: "content".into() };
    let e = unary::<_, ()>(
        &ch,
        &format!("{LEASES}/AddResource"),
        Some("ls"),
        AddResourceRequest { id: "build-1".into(), resource: Some(bad) },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let resources = |id: &'static str| {
        let ch = ch.clone();
        async move {
            unary::<_, ListResourcesResponse>(
                &ch,
                &format!("{LEASES}/ListResources"),
                Some("ls"),
                ListResourcesRequest { id: id.into() },
            )
            .await
            .map(|r| r.resources.into_iter().map(|r| (r.r#type, r.id)).collect::<Vec<_>>())
        }
    };
    let mut got = resources("build-1").await.unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![("content".to_string(), dgst.clone()), ("snapshots/overlayfs".to_string(), "snap-1".to_string())]
    );
    unary::<_, ()>(
        &ch,
        &format!("{LEASES}/DeleteResource"),
        Some("ls"),
        DeleteResourceRequest { id: "build-1".into(), resource: Some(snap) },
    )
    .await
    .unwrap();
    assert_eq!(resources("build-1").await.unwrap(), vec![("content".to_string(), dgst.clone())]);
    // A write under a lease that does not exist fails and records nothing.
    let e = write_blob(&ch, "ls", "nolease", b"other bytes", Some("missing")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(list_content(&ch, "ls", &[]).await, vec![dgst]);

    unary::<_, ()>(&ch, &format!("{LEASES}/Delete"), Some("ls"), DeleteRequest { id: "build-1".into(), sync: false })
        .await
        .unwrap();
    assert_eq!(resources("build-1").await.unwrap_err().code(), Code::NotFound);
    let e = unary::<_, ()>(
        &ch,
        &format!("{LEASES}/Delete"),
        Some("ls"),
        DeleteRequest { id: "build-1".into(), sync: false },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

fn stock(d: &Daemon, args: &[&str]) -> String {
    let o = d.stock_ctr(args);
    assert!(o.status.success(), "ctr {args:?}: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn stock_ctr_namespaces_content_and_leases() {
    let d = daemon();
    stock(&d, &["namespaces", "create", "x", "team=blue"]);
    let ls = stock(&d, &["ns", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with("x ") && l.contains("team=blue")), "{ls}");

    let data = b"content ingested by the stock ctr\n";
    let mut child = Command::new(common::stock_ctr_bin())
        .arg("--address")
        .arg(d.socket())
        .args(["-n", "x", "content", "ingest", "my-ref"])
        .env_remove("CONTAINERD_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "ingest: {}", stderr(&o));
    let sha = {
        let out = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = out;
        {
            use std::io::Write;
            out.stdin.take().unwrap().write_all(data).unwrap();
        }
        let o = out.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
    };
    let x = stock(&d, &["-n", "x", "content", "ls"]);
    assert!(x.contains(&format!("sha256:{sha}")), "{x}");
    let y = stock(&d, &["-n", "y", "content", "ls"]);
    assert!(!y.contains(&sha), "{y}");

    stock(&d, &["-n", "x", "leases", "create", "--id", "my-lease", "k=v"]);
    let ls = stock(&d, &["-n", "x", "leases", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with("my-lease") && l.contains("k=v")), "{ls}");
    stock(&d, &["-n", "x", "leases", "rm", "my-lease"]);
    let ls = stock(&d, &["-n", "x", "leases", "ls"]);
    assert!(!ls.contains("my-lease"), "{ls}");

    // Not empty: the stock ctr reports containerd's precondition error.
    let o = d.stock_ctr(&["namespaces", "rm", "x"]);
    assert!(stderr(&o).contains("must be empty"), "{}{}", stdout(&o), stderr(&o));
    stock(&d, &["-n", "x", "content", "rm", &format!("sha256:{sha}")]);
    stock(&d, &["namespaces", "rm", "x"]);
    assert!(!stock(&d, &["ns", "ls"]).lines().any(|l| l.starts_with("x ")));
}

/// The child half of [`a_killed_daemon_restarts_consistent`]: writes
/// namespaces and content until it is killed. Ignored in a normal run; the
/// parent runs it with `--ignored` in a child process.
#[tokio::test]
#[ignore = "run by a_killed_daemon_restarts_consistent in a child process"]
async fn crash_writer_child() {
    let socket = std::env::var("CRATED_METADATA_CRASH_SOCKET").expect("run by the crash test, which sets the socket");
    let ch = common::channel(Path::new(&socket)).await;
    for i in 0..10_000u32 {
        let ns = format!("crash-{i}");
        let _ = create_ns(&ch, &ns, &[("i", &i.to_string())]).await;
        // Bigger blobs make a kill mid-write likely.
        let data: Vec<u8> = (0..64 * 1024u32).map(|j| (j.wrapping_mul(31) ^ i) as u8).collect();
        let _ = write_blob(&ch, &ns, &format!("blob-{i}"), &data, None).await;
        let _ = write_blob(&ch, "shared", &format!("blob-{i}"), &data, None).await;
    }
}

#[tokio::test]
async fn a_killed_daemon_restarts_consistent() {
    let mut d = daemon();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_writer_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CRATED_METADATA_CRASH_SOCKET", d.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let the batch get going, then kill the daemon in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while blob_count(&d) < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal_and_wait("KILL");
    let _ = child.kill();
    let _ = child.wait();
    d.restart();

    let ch = d.channel().await;
    let list: ListNamespacesResponse =
        unary(&ch, &format!("{NS}/List"), None, ListNamespacesRequest::default()).await.unwrap();
    assert!(list.namespaces.len() >= 2, "the batch did not get going: {list:?}");
    let mut records = 0;
    for n in &list.namespaces {
        let _: GetNamespaceResponse =
            unary(&ch, &format!("{NS}/Get"), None, GetNamespaceRequest { name: n.name.clone() }).await.unwrap();
        for dgst in list_content(&ch, &n.name, &[]).await {
            let i = info(&ch, &n.name, &dgst).await.unwrap().info.unwrap();
            let hex = dgst.strip_prefix("sha256:").unwrap();
            let meta = std::fs::metadata(blob_dir(&d).join(hex))
                .unwrap_or_else(|e| panic!("{dgst} recorded in {} but no blob: {e}", n.name));
            assert_eq!(meta.len() as i64, i.size, "{dgst} in {}", n.name);
            records += 1;
        }
    }
    assert!(records >= 2, "{records} records");
    // Still writable after the crash.
    let dgst = write_blob(&ch, "after-crash", "r", b"after", None).await.unwrap();
    assert!(info(&ch, "after-crash", &dgst).await.is_ok());
}
