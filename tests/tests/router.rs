//! The one socket and its router: every call kind reaches the plugin that
//! registered the service, metadata travels with it, unknown services and
//! methods are `Unimplemented`, a panicking plugin fails only its own call,
//! and plugins call their dependencies in process.

mod common;

use common::{unary, Setup};
use crated_tests::{echo_method, EchoRequest, EchoResponse, RELAY_SERVICE};
use tonic::Code;

fn req(text: &str, count: u32) -> EchoRequest {
    EchoRequest { text: text.into(), count }
}

#[tokio::test]
async fn unary_call_reaches_the_plugin_with_its_namespace() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), Some("team-a"), req("ping", 0)).await.unwrap();
    assert_eq!(r.text, "ping");
    assert_eq!(r.namespace, "team-a", "containerd-namespace must reach the plugin");
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, req("x", 0)).await.unwrap();
    assert_eq!(r.namespace, "");
    // A handler that uses a tokio timer: it runs on the plugin's own runtime.
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, req("slept", 2)).await.unwrap();
    assert_eq!(r.text, "slept");
}

#[tokio::test]
async fn plugin_errors_keep_their_code() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    let e = unary::<_, EchoResponse>(&ch, &echo_method("Fail"), None, req("thing", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("no such thing: thing"), "{}", e.message());
}

#[tokio::test]
async fn server_client_and_bidi_streams_work() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;

    let items = common::server_streaming::<_, EchoResponse>(&ch, &echo_method("Repeat"), Some("ns1"), req("r", 5))
        .await
        .unwrap();
    let texts: Vec<String> = items.into_iter().map(|r| r.unwrap().text).collect();
    assert_eq!(texts, ["r#0", "r#1", "r#2", "r#3", "r#4"]);

    let all: EchoResponse =
        common::client_streaming(&ch, &echo_method("Concat"), Some("ns2"), vec![req("a", 0), req("b", 0), req("c", 0)])
            .await
            .unwrap();
    assert_eq!(all.text, "abc");
    assert_eq!(all.namespace, "ns2");

    let chat: Vec<EchoResponse> =
        common::bidi_streaming(&ch, &echo_method("Chat"), None, vec![req("hi", 0), req("there", 0)]).await.unwrap();
    assert_eq!(chat.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["HI", "THERE"]);

    let none: Vec<EchoResponse> =
        common::bidi_streaming(&ch, &echo_method("Chat"), None, Vec::<EchoRequest>::new()).await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn unknown_service_and_method_are_unimplemented() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    let e = unary::<_, EchoResponse>(&ch, "/no.such.Service/Call", None, req("", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("no.such.Service"));
    let e = unary::<_, EchoResponse>(&ch, &echo_method("NoSuchMethod"), None, req("", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}

#[tokio::test]
async fn malformed_request_is_invalid_argument() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    // Field 1 declared as a string but sent as a fixed64: not decodable.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Bad {
        #[prost(fixed64, tag = "1")]
        n: u64,
    }
    let e = unary::<_, EchoResponse>(&ch, &echo_method("Echo"), None, Bad { n: 7 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // The daemon still serves.
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, req("still here", 0)).await.unwrap();
    assert_eq!(r.text, "still here");
}

#[tokio::test]
async fn a_panicking_plugin_call_is_internal_and_the_daemon_survives() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    let e = unary::<_, EchoResponse>(&ch, &echo_method("Panic"), None, req("boom", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");

    // A panic in the middle of a stream ends that stream with Internal.
    let items = common::server_streaming::<_, EchoResponse>(&ch, &echo_method("RepeatThenPanic"), None, req("p", 0))
        .await
        .unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().text, "p#0");
    assert_eq!(items[2].as_ref().unwrap_err().code(), Code::Internal);

    // Same connection, and a fresh one, still work.
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, req("alive", 0)).await.unwrap();
    assert_eq!(r.text, "alive");
    let ch2 = d.channel().await;
    let r: EchoResponse = unary(&ch2, &echo_method("Echo"), None, req("alive2", 0)).await.unwrap();
    assert_eq!(r.text, "alive2");
}

#[tokio::test]
async fn plugins_call_their_dependencies_in_process() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    let r: EchoResponse =
        unary(&ch, &format!("/{RELAY_SERVICE}/Relay"), Some("ns-r"), req("via relay", 0)).await.unwrap();
    assert_eq!(r.text, "relayed: via relay");
    assert_eq!(r.namespace, "ns-r", "the namespace travels with in-process calls");

    let r: EchoResponse = unary(&ch, &format!("/{RELAY_SERVICE}/RelayRepeat"), None, req("s", 3)).await.unwrap();
    assert_eq!(r.text, "s#0,s#1,s#2", "streaming calls between plugins");

    // A plugin reaches only what it declared in `requires`.
    let e = unary::<_, EchoResponse>(&ch, &format!("/{RELAY_SERVICE}/Forbidden"), None, req("", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("not served by a dependency"), "{}", e.message());
}

#[tokio::test]
async fn many_concurrent_calls_on_one_connection() {
    let d = Setup::new(&["echo"]).start();
    let ch = d.channel().await;
    let calls = (0..200).map(|i| {
        let ch = ch.clone();
        async move {
            let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, req(&i.to_string(), 0)).await.unwrap();
            assert_eq!(r.text, i.to_string());
        }
    });
    futures::future::join_all(calls).await;
}

#[tokio::test]
async fn messages_over_the_size_limit_are_refused() {
    let d = Setup::new(&["echo"]).grpc("max_recv_message_size = 1024").start();
    let ch = d.channel().await;
    let e = unary::<_, EchoResponse>(&ch, &echo_method("Echo"), None, req(&"x".repeat(4096), 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, req("small", 0)).await.unwrap();
    assert_eq!(r.text, "small");
}

#[tokio::test]
async fn a_wrapper_takes_over_the_service_it_depends_on() {
    let d = Setup::new(&["echo", "wrapper"]).start();
    let ch = d.channel().await;
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), Some("w"), req("hi", 0)).await.unwrap();
    assert_eq!(r.text, "wrapped: hi", "the socket reaches the wrapper, which reaches echo in process");
    assert_eq!(r.namespace, "w");
    // The wrapper owns the whole service on the socket now.
    let e = unary::<_, EchoResponse>(&ch, &echo_method("Fail"), None, req("", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_second_plugin_serving_the_same_service_without_depending_on_it_is_refused() {
    let d = Setup::new(&["echo", "intruder"]).start();
    let detail = common::stdout(&d.ctr(&["plugins", "ls", "-d", "id~=^(intruder|echo)$"]));
    let refused: Vec<&str> = ["io.crated.test.v1.echo", "io.crated.intruder.v1.intruder"]
        .into_iter()
        .filter(|owner| detail.contains(&format!("service crated.test.Echo is already served by {owner}")))
        .collect();
    assert_eq!(refused.len(), 1, "exactly one of echo and intruder is refused, naming the other:\n{detail}");
    let ch = d.channel().await;
    let r: EchoResponse = unary(&ch, &echo_method("Echo"), None, req("hi", 0)).await.unwrap();
    let expected = if refused[0] == "io.crated.test.v1.echo" { "hi" } else { "intruder" };
    assert_eq!(r.text, expected, "the socket keeps the first owner");
}

/// Two plugins of one type serve the same service to dependents only; the
/// socket never sees it, and a dependent reaches each one by its name.
#[tokio::test]
async fn a_dependency_is_called_by_name_among_several_of_one_type() {
    let d = Setup::new(&["named"]).start();
    let ch = d.channel().await;
    let relay = format!("/{RELAY_SERVICE}/Echo");
    for side in ["left", "right"] {
        let r: EchoResponse =
            unary(&ch, &relay, Some(&format!("io.crated.testmulti.v1.{side}")), req("hi", 0)).await.unwrap();
        assert_eq!(r.text, format!("{side}: hi"));
    }
    // Unnamed, the call is ambiguous and says which plugins could answer.
    let e = unary::<_, EchoResponse>(&ch, &relay, None, req("hi", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("io.crated.testmulti.v1.left, io.crated.testmulti.v1.right"), "{}", e.message());
    // A name that is not a dependency is NotFound, naming the dependencies.
    let e = unary::<_, EchoResponse>(&ch, &relay, Some("io.crated.testmulti.v1.nope"), req("x", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert!(e.message().contains("io.crated.testmulti.v1.left"), "{}", e.message());
    // Internal services are not on the socket, even with two owners.
    let e = unary::<_, EchoResponse>(&ch, &echo_method("Echo"), None, req("x", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{}", e.message());
    // All three plugins run.
    let out = d.ctr(&["plugins", "ls"]);
    let text = common::stdout(&out);
    for id in ["left", "right", "picker"] {
        assert!(text.lines().any(|l| l.contains(id) && l.trim_end().ends_with("ok")), "{text}");
    }
}
