//! Hostile and malformed requests against every method of the content,
//! metadata, snapshotter and events plugins and the core: each gets a clear status (never
//! `Internal`, which would mean a panic or an unhandled failure), nothing
//! stored is lost, and the daemon keeps serving.

mod common;

use common::{unary, Setup};
use containerd_client::services::v1::{CreateNamespaceRequest, GetNamespaceRequest, GetNamespaceResponse, Namespace};
use tonic::Code;

/// Fields whose wire types clash with the real messages' fields, and
/// strings that are not UTF-8 where strings are expected.
#[derive(Clone, PartialEq, prost::Message)]
struct Junk {
    #[prost(fixed64, tag = "1")]
    a: u64,
    #[prost(fixed32, tag = "2")]
    b: u32,
    #[prost(bytes = "vec", tag = "3")]
    c: Vec<u8>,
    #[prost(sint64, tag = "4")]
    d: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// Strings of invalid UTF-8 in the string fields 1 and 2 of most requests.
#[derive(Clone, PartialEq, prost::Message)]
struct BadUtf8 {
    #[prost(bytes = "vec", tag = "1")]
    a: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    b: Vec<u8>,
}

const UNARY: &[&str] = &[
    "/containerd.services.content.v1.Content/Info",
    "/containerd.services.content.v1.Content/Update",
    "/containerd.services.content.v1.Content/Delete",
    "/containerd.services.content.v1.Content/Status",
    "/containerd.services.content.v1.Content/ListStatuses",
    "/containerd.services.content.v1.Content/Abort",
    "/containerd.services.namespaces.v1.Namespaces/Get",
    "/containerd.services.namespaces.v1.Namespaces/List",
    "/containerd.services.namespaces.v1.Namespaces/Create",
    "/containerd.services.namespaces.v1.Namespaces/Update",
    "/containerd.services.namespaces.v1.Namespaces/Delete",
    "/containerd.services.leases.v1.Leases/Create",
    "/containerd.services.leases.v1.Leases/Delete",
    "/containerd.services.leases.v1.Leases/List",
    "/containerd.services.leases.v1.Leases/AddResource",
    "/containerd.services.leases.v1.Leases/DeleteResource",
    "/containerd.services.leases.v1.Leases/ListResources",
    "/containerd.services.events.v1.Events/Publish",
    "/containerd.services.events.v1.Events/Forward",
    "/containerd.services.introspection.v1.Introspection/Plugins",
    "/containerd.services.introspection.v1.Introspection/Server",
    "/containerd.services.version.v1.Version/Version",
    "/containerd.services.snapshots.v1.Snapshots/Prepare",
    "/containerd.services.snapshots.v1.Snapshots/View",
    "/containerd.services.snapshots.v1.Snapshots/Mounts",
    "/containerd.services.snapshots.v1.Snapshots/Commit",
    "/containerd.services.snapshots.v1.Snapshots/Remove",
    "/containerd.services.snapshots.v1.Snapshots/Stat",
    "/containerd.services.snapshots.v1.Snapshots/Update",
    "/containerd.services.snapshots.v1.Snapshots/Usage",
    "/containerd.services.snapshots.v1.Snapshots/Cleanup",
];

const SERVER_STREAMING: &[&str] = &[
    "/containerd.services.content.v1.Content/Read",
    "/containerd.services.content.v1.Content/List",
    "/containerd.services.events.v1.Events/Subscribe",
    "/containerd.services.snapshots.v1.Snapshots/List",
];

fn check(method: &str, what: &str, r: Result<(), tonic::Status>) {
    if let Err(e) = r {
        assert_ne!(e.code(), Code::Internal, "{method} with {what}: {e:?}");
        assert_ne!(e.code(), Code::Unknown, "{method} with {what}: {e:?}");
        assert!(!e.message().is_empty(), "{method} with {what}: an error needs a message");
    }
}

#[tokio::test]
async fn malformed_and_empty_requests_get_clear_statuses_and_nothing_is_lost() {
    let d = Setup::new(&[]).with_real_plugins(&["content", "metadata", "events", "snapshots"]).start();
    let ch = d.channel().await;
    let ns = Namespace { name: "keep".into(), labels: [("k".to_string(), "v".to_string())].into() };
    let _: () = unary(
        &ch,
        "/containerd.services.namespaces.v1.Namespaces/Create",
        None,
        CreateNamespaceRequest { namespace: Some(ns) },
    )
    .await
    .map(|_: containerd_client::services::v1::CreateNamespaceResponse| ())
    .unwrap();

    let junk = Junk { a: u64::MAX, b: 7, c: vec![0xff; 64], d: -1 };
    let bad = BadUtf8 { a: vec![0xff, 0xfe, 0xfd], b: vec![0xc3, 0x28] };
    for namespace in [None, Some("default"), Some("bad namespace!")] {
        for m in UNARY {
            check(m, "junk", unary::<_, Empty>(&ch, m, namespace, junk.clone()).await.map(drop));
            check(m, "bad utf-8", unary::<_, Empty>(&ch, m, namespace, bad.clone()).await.map(drop));
            check(m, "an empty request", unary::<_, Empty>(&ch, m, namespace, Empty {}).await.map(drop));
        }
        for m in SERVER_STREAMING {
            for (what, r) in [
                ("junk", common::server_streaming::<_, Empty>(&ch, m, namespace, junk.clone()).await),
                ("bad utf-8", common::server_streaming::<_, Empty>(&ch, m, namespace, bad.clone()).await),
            ] {
                match r {
                    Err(e) => check(m, what, Err(e)),
                    Ok(items) => {
                        for item in items {
                            check(m, what, item.map(drop));
                        }
                    }
                }
            }
        }
        let write = "/containerd.services.content.v1.Content/Write";
        check(
            write,
            "junk frames",
            common::bidi_streaming::<_, Empty>(&ch, write, namespace, vec![junk.clone(); 3]).await.map(drop),
        );
        check(
            write,
            "bad utf-8",
            common::bidi_streaming::<_, Empty>(&ch, write, namespace, vec![bad.clone()]).await.map(drop),
        );
    }

    // What was stored is intact and the daemon still answers.
    let got: GetNamespaceResponse = unary(
        &ch,
        "/containerd.services.namespaces.v1.Namespaces/Get",
        None,
        GetNamespaceRequest { name: "keep".into() },
    )
    .await
    .unwrap();
    assert_eq!(got.namespace.unwrap().labels.get("k").map(String::as_str), Some("v"));
    let out = d.ctr(&["plugins", "ls"]);
    assert!(out.status.success(), "{out:?}");
}
