//! gRPC clients other than Go's and tonic's on crated's unix socket.
//!
//! gRPC's C core (Python, Ruby, C++, PHP) and grpc-java send the socket path
//! as the HTTP/2 `:authority` (`/run/x.sock`, percent-encoded `run%2Fx.sock`,
//! or `unix:/run/x.sock`), which is not a valid URI authority; stock h2
//! resets such a stream with PROTOCOL_ERROR. crated's patched h2
//! (third_party/h2) treats it as absent. These tests prove it twice: with a
//! hand-framed HTTP/2 client sending exactly those authorities, and with a
//! current Python `grpcio` from PyPI, in a virtualenv cached under `target/`.

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{unary, Daemon, Setup};
use containerd_client::services::v1::{PluginsResponse, VersionResponse};
use crated_tests::{echo_method, EchoRequest, EchoResponse};
use prost::Message;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse};

const VERSION_METHOD: &str = "/containerd.services.version.v1.Version/Version";

/// The version the daemon reports to tonic, the client that always worked.
async fn version_via_tonic(d: &Daemon) -> VersionResponse {
    unary(&d.channel().await, VERSION_METHOD, None, ()).await.expect("Version over tonic")
}

// ---- a hand-framed HTTP/2 client -------------------------------------------

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of "literal without indexing, new name" fields, no
/// Huffman: the one encoding that carries any bytes verbatim, so the
/// authority reaches the server exactly as written here.
fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// What the server sent on one stream.
#[derive(Debug, Default)]
struct StreamResult {
    data: Vec<u8>,
    header_blocks: usize,
    ended: bool,
    reset: Option<u32>,
}

/// Sends one unary gRPC call per authority, each on its own stream of one
/// connection, with an empty (zero-length) request message, and returns
/// what came back on each stream.
fn raw_h2_calls(socket: &Path, method: &str, authorities: &[String]) -> Vec<StreamResult> {
    let mut conn = UnixStream::connect(socket).expect("connect");
    // Guards against a hang only; no assertion depends on it.
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    write_frame(&mut out, FRAME_SETTINGS, 0, 0, &[]);
    for (i, authority) in authorities.iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        let block = hpack_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]);
        write_frame(&mut out, FRAME_HEADERS, FLAG_END_HEADERS, stream, &block);
        // A gRPC message: uncompressed, length 0.
        write_frame(&mut out, FRAME_DATA, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 0]);
    }
    conn.write_all(&out).unwrap();

    let mut results: Vec<StreamResult> = authorities.iter().map(|_| StreamResult::default()).collect();
    while results.iter().any(|r| !r.ended && r.reset.is_none()) {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).unwrap_or_else(|e| panic!("reading a frame: {e}; so far {results:?}"));
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).unwrap();
        let mut reply = Vec::new();
        match kind {
            FRAME_SETTINGS if flags & FLAG_ACK == 0 => write_frame(&mut reply, FRAME_SETTINGS, FLAG_ACK, 0, &[]),
            FRAME_PING if flags & FLAG_ACK == 0 => write_frame(&mut reply, FRAME_PING, FLAG_ACK, 0, &payload),
            FRAME_GOAWAY => panic!("server sent GOAWAY {payload:?}; so far {results:?}"),
            FRAME_DATA | FRAME_HEADERS | FRAME_RST_STREAM if stream % 2 == 1 => {
                let r = &mut results[(stream as usize - 1) / 2];
                match kind {
                    FRAME_DATA => r.data.extend_from_slice(&payload),
                    FRAME_HEADERS => r.header_blocks += 1,
                    _ => r.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap())),
                }
                r.ended |= kind != FRAME_RST_STREAM && flags & FLAG_END_STREAM != 0;
            }
            _ => {}
        }
        conn.write_all(&reply).unwrap();
    }
    results
}

/// The messages of a gRPC response body (length-prefixed, uncompressed).
fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5 && body[0] == 0, "not an uncompressed gRPC message: {body:?}");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push(body[5..5 + len].to_vec());
        body = &body[5 + len..];
    }
    out
}

#[tokio::test]
async fn http2_authority_that_is_a_socket_path_gets_a_grpc_answer() {
    let d = Setup::new(&[]).start();
    let expected = version_via_tonic(&d).await;
    let path = d.socket().display().to_string();
    let encoded = path.trim_start_matches('/').replace('/', "%2F");
    let unix = format!("unix:{path}");
    // A valid authority first, so a broken raw client shows up as such.
    let authorities: Vec<String> =
        ["localhost", "/tmp/some.sock", &path, &encoded, &unix, ""].map(String::from).to_vec();
    let (socket, sent) = (d.socket(), authorities.clone());
    let results = tokio::task::spawn_blocking(move || raw_h2_calls(&socket, VERSION_METHOD, &sent)).await.unwrap();
    for (authority, r) in authorities.iter().zip(&results) {
        assert_eq!(r.reset, None, ":authority {authority:?}: stream reset (1 is PROTOCOL_ERROR): {r:?}");
        assert!(r.ended, ":authority {authority:?}: {r:?}");
        // Response headers, then trailers (grpc-status).
        assert_eq!(r.header_blocks, 2, ":authority {authority:?}: {r:?}");
        let messages = grpc_messages(&r.data);
        assert_eq!(messages.len(), 1, ":authority {authority:?}: {r:?}");
        let got = VersionResponse::decode(messages[0].as_slice()).expect("a VersionResponse");
        assert_eq!(got, expected, ":authority {authority:?}");
    }
}

// ---- Python grpcio ---------------------------------------------------------

/// The grpcio the tests use: a current release (C core >= 1.57 sends the
/// percent-encoded socket path as the authority).
const GRPCIO_PIN: &str = "grpcio==1.85.3";

/// A virtualenv with [`GRPCIO_PIN`] in `target/py-grpcio-venv`, made once
/// and shared by test processes under a file lock. Panics (the test fails,
/// it is not skipped) when it cannot be made.
fn grpcio_python() -> PathBuf {
    let target = common::target_dir().parent().expect("target/").to_path_buf();
    let venv = target.join("py-grpcio-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("crated-grpcio-pin");
    let lock = std::fs::File::create(target.join("py-grpcio-venv.lock")).expect("create the venv lock file");
    lock.lock().expect("lock the venv lock file");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(GRPCIO_PIN) {
        return python;
    }
    // Absent, half made by a failed run, or another pin: make it afresh.
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("remove the old venv");
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}); python3 with venv and pip, and access to PyPI, are needed:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", GRPCIO_PIN]));
    std::fs::write(&marker, GRPCIO_PIN).expect("write the venv marker");
    python
}

/// Makes the calls described by `calls` (JSON) from Python grpcio to `socket`,
/// with raw bytes in and out (no generated stubs): each call is
/// `{kind: "unary"|"stream", method, request: hex, metadata: [[k, v]]}`, each
/// result `{ok: true, responses: [hex]}` or `{ok: false, code, details}`.
const GRPCIO_CLIENT: &str = r#"
import json, sys
import grpc

spec = json.load(sys.stdin)
options = []
if spec.get("authority") is not None:
    options.append(("grpc.default_authority", spec["authority"]))
results = []
with grpc.insecure_channel("unix:" + spec["socket"], options=options) as channel:
    for call in spec["calls"]:
        metadata = [tuple(kv) for kv in call.get("metadata", [])]
        request = bytes.fromhex(call["request"])
        try:
            if call["kind"] == "unary":
                method = channel.unary_unary(call["method"], request_serializer=None, response_deserializer=None)
                responses = [method(request, metadata=metadata, timeout=60)]
            else:
                method = channel.unary_stream(call["method"], request_serializer=None, response_deserializer=None)
                responses = list(method(request, metadata=metadata, timeout=60))
            results.append({"ok": True, "responses": [r.hex() for r in responses]})
        except grpc.RpcError as e:
            results.append({"ok": False, "code": e.code().name, "details": e.details()})
json.dump({"grpc_version": grpc.__version__, "results": results}, sys.stdout)
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

struct PyCall {
    kind: &'static str,
    method: String,
    request: Vec<u8>,
    namespace: Option<&'static str>,
}

impl PyCall {
    fn unary(method: &str, request: impl Message) -> PyCall {
        PyCall { kind: "unary", method: method.into(), request: request.encode_to_vec(), namespace: None }
    }
    fn stream(method: &str, request: impl Message) -> PyCall {
        PyCall { kind: "stream", method: method.into(), request: request.encode_to_vec(), namespace: None }
    }
    fn namespace(mut self, ns: &'static str) -> PyCall {
        self.namespace = Some(ns);
        self
    }
}

/// One call's outcome: the response messages, or the status code's name
/// (`NOT_FOUND`) and details.
type PyResult = Result<Vec<Vec<u8>>, (String, String)>;

/// Runs the calls from Python grpcio on one channel; `authority` overrides
/// grpcio's default (the percent-encoded socket path).
fn grpcio_calls(python: &Path, d: &Daemon, authority: Option<&str>, calls: &[PyCall]) -> Vec<PyResult> {
    let spec = serde_json::json!({
        "socket": d.socket(),
        "authority": authority,
        "calls": calls.iter().map(|c| serde_json::json!({
            "kind": c.kind,
            "method": c.method,
            "request": hex(&c.request),
            "metadata": c.namespace.map(|ns| vec![["containerd-namespace", ns]]).unwrap_or_default(),
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python)
        .arg("-c")
        .arg(GRPCIO_CLIENT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "grpcio client failed ({}):\n{}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("grpcio client's JSON");
    let version = v["grpc_version"].as_str().unwrap();
    assert_eq!(format!("grpcio=={version}"), GRPCIO_PIN);
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            if r["ok"].as_bool().unwrap() {
                Ok(r["responses"].as_array().unwrap().iter().map(|h| unhex(h.as_str().unwrap())).collect())
            } else {
                Err((r["code"].as_str().unwrap().to_string(), r["details"].as_str().unwrap_or_default().to_string()))
            }
        })
        .collect()
}

fn only<M: Message + Default>(r: &PyResult) -> M {
    let msgs = r.as_ref().unwrap_or_else(|e| panic!("grpcio call failed: {e:?}"));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    M::decode(msgs[0].as_slice()).expect("decode the response")
}

/// grpcio with its default authority (the percent-encoded socket path).
#[tokio::test]
async fn python_grpcio_calls_unary_streaming_and_failing_methods() {
    let python = tokio::task::spawn_blocking(grpcio_python).await.unwrap();
    let d = Setup::new(&["echo"]).start();
    let expected = version_via_tonic(&d).await;
    let calls = [
        PyCall::unary(VERSION_METHOD, ()),
        PyCall::unary("/grpc.health.v1.Health/Check", HealthCheckRequest { service: String::new() }),
        PyCall::unary("/containerd.services.introspection.v1.Introspection/Plugins", ()),
        PyCall::stream(&echo_method("Repeat"), EchoRequest { text: "py".into(), count: 3 }).namespace("team-py"),
        PyCall::unary(&echo_method("Fail"), EchoRequest { text: "thing".into(), count: 0 }),
    ];
    let results = tokio::task::spawn_blocking(move || grpcio_calls(&python, &d, None, &calls)).await.unwrap();

    let version: VersionResponse = only(&results[0]);
    assert_eq!(version, expected);
    let health: HealthCheckResponse = only(&results[1]);
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let plugins: PluginsResponse = only(&results[2]);
    assert!(plugins.plugins.iter().any(|p| p.r#type == "io.containerd.grpc.v1" && p.id == "version"), "{plugins:?}");
    let repeated: Vec<EchoResponse> = results[3]
        .as_ref()
        .unwrap_or_else(|e| panic!("Repeat: {e:?}"))
        .iter()
        .map(|m| EchoResponse::decode(m.as_slice()).unwrap())
        .collect();
    let texts: Vec<&str> = repeated.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["py#0", "py#1", "py#2"]);
    assert!(repeated.iter().all(|r| r.namespace == "team-py"), "{repeated:?}");
    let (code, details) = results[4].as_ref().expect_err("Fail must fail");
    assert_eq!(code, "NOT_FOUND", "{details}");
    assert!(details.contains("no such thing: thing"), "{details}");
}

/// The other authority shapes gRPC clients send over a unix socket:
/// grpc-java's bare path, and a `unix:` target.
#[tokio::test]
async fn python_grpcio_with_path_and_unix_authorities() {
    let python = tokio::task::spawn_blocking(grpcio_python).await.unwrap();
    let d = Setup::new(&[]).start();
    let expected = version_via_tonic(&d).await;
    let path = d.socket().display().to_string();
    let unix = format!("unix:{path}");
    let results = tokio::task::spawn_blocking(move || {
        [path.as_str(), unix.as_str()].map(|authority| {
            (authority.to_string(), grpcio_calls(&python, &d, Some(authority), &[PyCall::unary(VERSION_METHOD, ())]))
        })
    })
    .await
    .unwrap();
    for (authority, r) in &results {
        let version: VersionResponse = only(&r[0]);
        assert_eq!(&version, &expected, "authority {authority:?}");
    }
}
