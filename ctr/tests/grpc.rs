//! Runs the built `ctr` against a minimal in-process gRPC server on a unix
//! socket: checks the namespace header and the stock-ctr error rendering.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::transport::Server;

/// Answers every call with `Unimplemented: unknown service <name>` (as a Go
/// gRPC server does for an unregistered service) and records the namespace
/// header of each request.
#[derive(Clone, Default)]
struct Unimplemented {
    namespaces: Arc<Mutex<Vec<String>>>,
}

impl tower::Service<Request<Body>> for Unimplemented {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ns =
            req.headers().get("containerd-namespace").and_then(|v| v.to_str().ok()).unwrap_or("<none>").to_string();
        self.namespaces.lock().unwrap().push(ns);
        let service = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or("");
        let status = tonic::Status::unimplemented(format!("unknown service {service}"));
        ready(Ok(status.into_http()))
    }
}

#[test]
fn namespace_header_and_error_rendering() {
    let dir = std::env::temp_dir().join(format!("ctr-grpc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("c.sock");
    let _ = std::fs::remove_file(&sock);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let svc = Unimplemented::default();
    let seen = svc.namespaces.clone();
    let listener = rt.block_on(async { UnixListener::bind(&sock) }).unwrap();
    rt.spawn(async move {
        Server::builder().serve_with_incoming(svc, UnixListenerStream::new(listener)).await.unwrap();
    });

    let ctr = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ctr"))
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("-a")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };

    // Introspection errors go through errdefs.FromGRPC.
    let (code, stdout, stderr) = ctr(&["-n", "team-a", "plugins", "ls"]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(stderr, "ctr: unknown service containerd.services.introspection.v1.Introspection: not implemented\n");

    // Version errors are the raw gRPC status text; the client block comes first.
    let (code, stdout, stderr) = ctr(&["version"]);
    assert_eq!(code, Some(1));
    assert!(stdout.starts_with("Client:\n  Version:  "), "{stdout}");
    assert_eq!(
        stderr,
        "ctr: rpc error: code = Unimplemented desc = unknown service containerd.services.version.v1.Version\n"
    );

    assert_eq!(*seen.lock().unwrap(), ["team-a", "default"]);
    let _ = std::fs::remove_dir_all(&dir);
}
