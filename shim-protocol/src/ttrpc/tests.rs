//! Round trips between the client and the server on a real unix socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::task::*;
use crate::ttrpc::{Client, Code, RequestContext, Server, Status};

/// A task service whose `Wait` blocks until `Kill` is called, and whose
/// `State` echoes the namespace it was called in.
#[derive(Default)]
struct Fake {
    killed: Notify,
}

impl TaskService for Fake {
    async fn state(&self, ctx: RequestContext, req: StateRequest) -> Result<StateResponse, Status> {
        if req.id == "missing" {
            return Err(Status::not_found("container missing: not found"));
        }
        Ok(StateResponse { id: req.id, bundle: ctx.namespace().unwrap_or("").to_string(), ..Default::default() })
    }

    async fn wait(&self, _ctx: RequestContext, _req: WaitRequest) -> Result<WaitResponse, Status> {
        self.killed.notified().await;
        Ok(WaitResponse { exit_status: 137, exited_at: None })
    }

    async fn kill(&self, _ctx: RequestContext, _req: KillRequest) -> Result<Empty, Status> {
        self.killed.notify_waiters();
        Ok(Empty {})
    }
}

async fn serve() -> (tempfile::TempDir, String, tokio::task::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = Server::new().register(TASK_SERVICE, serve_task(Arc::new(Fake::default())));
    let handle = tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    (dir, format!("unix://{}", path.display()), handle)
}

#[tokio::test]
async fn calls_carry_namespace_status_and_concurrency() {
    let (_dir, address, _server) = serve().await;
    let client = TaskClient::new(Client::connect(&address).await.unwrap(), "ns1", Some(Duration::from_secs(10)));

    let state = client.state(&StateRequest { id: "c1".into(), exec_id: String::new() }).await.unwrap();
    assert_eq!((state.id.as_str(), state.bundle.as_str()), ("c1", "ns1"));

    let err = client.state(&StateRequest { id: "missing".into(), exec_id: String::new() }).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    assert_eq!(err.message, "container missing: not found");

    // Not implemented by the fake: the default answers Unimplemented.
    let err = client.pause(&PauseRequest { id: "c1".into() }).await.unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);

    // A Wait in flight does not hold up other calls on the connection.
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.wait(&WaitRequest { id: "c1".into(), exec_id: String::new() }).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.kill(&KillRequest { id: "c1".into(), signal: 9, ..Default::default() }).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().exit_status, 137);
}

#[tokio::test]
async fn unknown_service_is_unimplemented() {
    let (_dir, address, _server) = serve().await;
    let client = Client::connect(&address).await.unwrap();
    let err = client.call::<_, Empty>("no.such.Service", "X", &Empty {}, &[], None).await.unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
    let err = client.call::<_, Empty>(TASK_SERVICE, "NoSuchMethod", &Empty {}, &[], None).await.unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
}

#[tokio::test]
async fn server_hanging_up_fails_waiting_calls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // A "server" that accepts, reads a little, then hangs up without answering.
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 10];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf).await.unwrap();
        drop(s);
    });
    let client = Client::connect(path.to_str().unwrap()).await.unwrap();
    let err = client.call::<_, Empty>(TASK_SERVICE, "Kill", &KillRequest::default(), &[], None).await.unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
    peer.await.unwrap();
    assert!(client.is_closed());
    let err = client.call::<_, Empty>(TASK_SERVICE, "Kill", &KillRequest::default(), &[], None).await.unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
}

#[tokio::test]
async fn a_call_without_an_answer_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let _peer = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        // Holds the connection open and never answers.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let client = Client::connect(path.to_str().unwrap()).await.unwrap();
    let err = client
        .call::<_, Empty>(TASK_SERVICE, "Kill", &KillRequest::default(), &[], Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
}

#[tokio::test]
async fn closed_resolves_when_the_peer_hangs_up_without_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (hang_up, hung_up) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let _ = hung_up.await;
        drop(s);
    });
    let client = Client::connect(path.to_str().unwrap()).await.unwrap();
    assert!(!client.is_closed());
    let watcher = tokio::spawn({
        let client = client.clone();
        async move { client.closed().await }
    });
    hang_up.send(()).unwrap();
    watcher.await.unwrap();
    peer.await.unwrap();
    assert!(client.is_closed());
    // Once ended, it resolves at once.
    client.closed().await;
}

#[tokio::test]
async fn answered_waits_for_every_answer_to_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = Server::new().register(TASK_SERVICE, serve_task(Arc::new(Fake::default())));
    let serving = {
        let server = server.clone();
        tokio::spawn(async move {
            let _ = server.serve(listener).await;
        })
    };
    // Nothing received: answered at once.
    tokio::time::timeout(Duration::from_secs(5), server.answered()).await.expect("idle server is answered");

    let address = format!("unix://{}", path.display());
    let client = TaskClient::new(Client::connect(&address).await.unwrap(), "ns1", Some(Duration::from_secs(10)));
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.wait(&WaitRequest { id: "c1".into(), exec_id: String::new() }).await })
    };
    // The Wait is received and unanswered: `answered` does not resolve.
    let mut pending = Box::pin(server.answered());
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if futures_poll_once(pending.as_mut()).await {
            panic!("answered while a Wait was still in flight");
        }
        if server.unanswered() > 0 {
            break;
        }
    }
    assert_eq!(server.unanswered(), 1, "the Wait is counted");
    client.kill(&KillRequest { id: "c1".into(), signal: 9, ..Default::default() }).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().exit_status, 137);
    tokio::time::timeout(Duration::from_secs(5), pending).await.expect("answered once both answers were written");
    serving.abort();
}

/// Polls `f` once; true if it completed.
async fn futures_poll_once<F: std::future::Future + ?Sized>(f: std::pin::Pin<&mut F>) -> bool {
    let mut f = Some(f);
    std::future::poll_fn(move |cx| std::task::Poll::Ready(f.take().unwrap().poll(cx).is_ready())).await
}
