//! The raw content store plugin (`io.containerd.content.v1.content`) alone
//! in the real daemon, driven through containerd's Content gRPC API:
//! chunked writes and reads, digest and size checks, resume after a daemon
//! restart, the per-ref write lock, and a 64 MiB blob streamed both ways.

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{server_streaming, unary, Daemon, Setup};
use containerd_client::services::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse, ListContentRequest, ListContentResponse,
    ListStatusesRequest, ListStatusesResponse, ReadContentRequest, ReadContentResponse, StatusRequest, StatusResponse,
    UpdateResponse, WriteAction, WriteContentRequest, WriteContentResponse,
};
use futures::channel::mpsc;
use tonic::{transport::Channel, Code};

const SVC: &str = "/containerd.services.content.v1.Content";

fn m(name: &str) -> String {
    format!("{SVC}/{name}")
}

/// containerd's `UpdateRequest` spelt out: the tests crate has no
/// `prost_types` for its `google.protobuf.FieldMask`.
#[derive(Clone, PartialEq, prost::Message)]
struct UpdateWithMask {
    #[prost(message, optional, tag = "1")]
    info: Option<Info>,
    #[prost(message, optional, tag = "2")]
    update_mask: Option<FieldMask>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FieldMask {
    #[prost(string, repeated, tag = "1")]
    paths: Vec<String>,
}

fn start() -> Daemon {
    Setup::new(&[]).with_real_plugins(&["content"]).start()
}

/// sha256 by an independent implementation (coreutils).
fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// Fast pseudo-random bytes (xorshift64), deterministic per seed.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// One open Write stream, driven message by message.
struct WriteSession {
    tx: mpsc::UnboundedSender<WriteContentRequest>,
    rx: tonic::Streaming<WriteContentResponse>,
}

impl WriteSession {
    /// Opens the stream with its first message and returns its response.
    async fn open(
        ch: &Channel,
        first: WriteContentRequest,
    ) -> (WriteSession, Result<WriteContentResponse, tonic::Status>) {
        let (tx, rx) = mpsc::unbounded();
        tx.unbounded_send(first).unwrap();
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let rx = grpc
            .streaming(
                tonic::Request::new(rx),
                m("Write").parse().unwrap(),
                tonic_prost::ProstCodec::<WriteContentRequest, WriteContentResponse>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let mut s = WriteSession { tx, rx };
        let r = s.recv().await;
        (s, r)
    }

    async fn recv(&mut self) -> Result<WriteContentResponse, tonic::Status> {
        self.rx.message().await?.ok_or_else(|| tonic::Status::internal("stream ended without a response"))
    }

    async fn send(&mut self, req: WriteContentRequest) -> Result<WriteContentResponse, tonic::Status> {
        self.tx.unbounded_send(req).unwrap();
        self.recv().await
    }

    /// Half-closes and waits for the server to end the stream.
    async fn close(mut self) {
        self.tx.close_channel();
        while let Ok(Some(_)) = self.rx.message().await {}
    }
}

fn stat(r: &str) -> WriteContentRequest {
    WriteContentRequest { action: WriteAction::Stat as i32, r#ref: r.into(), ..Default::default() }
}

fn write_at(offset: usize, data: &[u8]) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Write as i32,
        offset: offset as i64,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn commit(offset: usize, total: usize, expected: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Commit as i32,
        offset: offset as i64,
        total: total as i64,
        expected: expected.into(),
        ..Default::default()
    }
}

async fn info(ch: &Channel, digest: &str) -> Result<Info, tonic::Status> {
    let r: InfoResponse = unary(ch, &m("Info"), None, InfoRequest { digest: digest.into() }).await?;
    Ok(r.info.unwrap())
}

async fn read(ch: &Channel, digest: &str, offset: i64, size: i64) -> Result<Vec<ReadContentResponse>, tonic::Status> {
    server_streaming::<_, ReadContentResponse>(
        ch,
        &m("Read"),
        None,
        ReadContentRequest { digest: digest.into(), offset, size },
    )
    .await?
    .into_iter()
    .collect()
}

fn concat(chunks: &[ReadContentResponse]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
}

#[tokio::test]
async fn chunked_write_then_read_back() {
    let d = start();
    let ch = d.channel().await;
    let data = random_bytes(300_000, 1);
    let digest = sha256(&data);

    let (mut w, first) = WriteSession::open(
        &ch,
        WriteContentRequest { total: data.len() as i64, expected: digest.clone(), ..stat("chunky") },
    )
    .await;
    let first = first.unwrap();
    assert_eq!(first.action, WriteAction::Stat as i32);
    assert_eq!(first.offset, 0);
    assert_eq!(first.total, 300_000);
    assert!(first.started_at.is_some() && first.updated_at.is_some());

    let mut off = 0;
    for chunk in data.chunks(70_000) {
        let r = w.send(write_at(off, chunk)).await.unwrap();
        off += chunk.len();
        assert_eq!(r.action, WriteAction::Write as i32);
        assert_eq!(r.offset as usize, off, "each response reports the bytes written so far");
        assert_eq!(r.digest, sha256(&data[..off]), "digest of the data so far");
    }
    // Mid-write the ingest is visible by ref.
    let st: StatusResponse = unary(&ch, &m("Status"), None, StatusRequest { r#ref: "chunky".into() }).await.unwrap();
    assert_eq!(st.status.unwrap().offset as usize, data.len());
    let c = w.send(commit(off, data.len(), &digest)).await.unwrap();
    assert_eq!(c.action, WriteAction::Commit as i32);
    assert_eq!(c.digest, digest);
    assert_eq!(c.offset as usize, data.len());
    assert!(c.started_at.is_some() && c.updated_at.is_some());
    w.close().await;

    let i = info(&ch, &digest).await.unwrap();
    assert_eq!((i.digest.as_str(), i.size), (digest.as_str(), 300_000));
    assert_eq!(concat(&read(&ch, &digest, 0, 0).await.unwrap()), data);
    assert_eq!(concat(&read(&ch, &digest, 1000, 5000).await.unwrap()), &data[1000..6000]);
    assert_eq!(concat(&read(&ch, &digest, 299_000, 99_999).await.unwrap()), &data[299_000..]);
    let e = read(&ch, &digest, 300_001, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // The ingest is gone; the blob is listed; malformed digests are InvalidArgument.
    let e = unary::<_, StatusResponse>(&ch, &m("Status"), None, StatusRequest { r#ref: "chunky".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let listed =
        server_streaming::<_, ListContentResponse>(&ch, &m("List"), None, ListContentRequest::default()).await.unwrap();
    let digests: Vec<String> = listed.into_iter().flat_map(|r| r.unwrap().info).map(|i| i.digest).collect();
    assert_eq!(digests, vec![digest.clone()]);
    for bad in ["", "sha256:xyz", "md5:abc", "sha256:../../etc/passwd"] {
        assert_eq!(info(&ch, bad).await.unwrap_err().code(), Code::InvalidArgument, "{bad:?}");
    }
    assert_eq!(read(&ch, "nonsense", 0, 0).await.unwrap_err().code(), Code::InvalidArgument);

    // Labels via Update, then Delete.
    let mut upd = i.clone();
    upd.labels.insert("kind".into(), "test".into());
    let u: UpdateResponse = unary(
        &ch,
        &m("Update"),
        None,
        UpdateWithMask { info: Some(upd), update_mask: Some(FieldMask { paths: vec!["labels.kind".into()] }) },
    )
    .await
    .unwrap();
    assert_eq!(u.info.unwrap().labels.get("kind").map(String::as_str), Some("test"));
    let listed = server_streaming::<_, ListContentResponse>(
        &ch,
        &m("List"),
        None,
        ListContentRequest { filters: vec!["labels.kind==other".into()] },
    )
    .await
    .unwrap();
    assert!(listed.into_iter().all(|r| r.unwrap().info.is_empty()));
    unary::<_, ()>(&ch, &m("Delete"), None, DeleteContentRequest { digest: digest.clone() }).await.unwrap();
    assert_eq!(info(&ch, &digest).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn commit_with_a_wrong_digest_fails_and_stores_nothing() {
    let d = start();
    let ch = d.channel().await;
    let data = b"the real content".to_vec();
    let real = sha256(&data);
    let wrong = sha256(b"something else");

    let (mut w, r) = WriteSession::open(&ch, stat("wrong")).await;
    r.unwrap();
    w.send(write_at(0, &data)).await.unwrap();
    let e = w.send(commit(data.len(), 0, &wrong)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&format!("unexpected commit digest {real}, expected {wrong}")), "{}", e.message());
    assert_eq!(info(&ch, &real).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(info(&ch, &wrong).await.unwrap_err().code(), Code::NotFound);

    // A wrong size likewise.
    let (mut w, r) = WriteSession::open(&ch, stat("short")).await;
    r.unwrap();
    let e = w.send(commit(0, 0, "").with_data(&data, data.len() + 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("failed size validation: 16 != 17"), "{}", e.message());
    assert_eq!(info(&ch, &real).await.unwrap_err().code(), Code::NotFound);

    // A write at an offset other than the current one is OutOfRange.
    let (mut w, r) = WriteSession::open(&ch, stat("gap")).await;
    r.unwrap();
    w.send(write_at(0, b"abc")).await.unwrap();
    let e = w.send(write_at(10, b"def")).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // Abort: the ingest goes; unknown refs are NotFound.
    unary::<_, ()>(&ch, &m("Abort"), None, AbortRequest { r#ref: "wrong".into() }).await.unwrap();
    let e = unary::<_, ()>(&ch, &m("Abort"), None, AbortRequest { r#ref: "wrong".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e =
        unary::<_, StatusResponse>(&ch, &m("Status"), None, StatusRequest { r#ref: "never".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The first message must name a ref.
    let (_w, r) = WriteSession::open(&ch, WriteContentRequest::default()).await;
    assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
}

trait WithData {
    fn with_data(self, data: &[u8], total: usize) -> WriteContentRequest;
}

impl WithData for WriteContentRequest {
    fn with_data(mut self, data: &[u8], total: usize) -> WriteContentRequest {
        self.data = data.to_vec();
        self.total = total as i64;
        self
    }
}

#[tokio::test]
async fn an_ingest_survives_a_daemon_restart_and_resumes() {
    let mut d = start();
    let data = random_bytes(2_000_000, 7);
    let digest = sha256(&data);
    let half = 1_234_567;
    {
        let ch = d.channel().await;
        let (mut w, r) =
            WriteSession::open(&ch, WriteContentRequest { total: data.len() as i64, ..stat("resumable") }).await;
        r.unwrap();
        for (i, chunk) in data[..half].chunks(300_000).enumerate() {
            w.send(write_at(i * 300_000, chunk)).await.unwrap();
        }
    }
    d.stop();
    d.restart();
    let ch = d.channel().await;

    let st: StatusResponse = unary(&ch, &m("Status"), None, StatusRequest { r#ref: "resumable".into() }).await.unwrap();
    let st = st.status.unwrap();
    assert_eq!((st.r#ref.as_str(), st.offset as usize, st.total as usize), ("resumable", half, data.len()));
    let all: ListStatusesResponse =
        unary(&ch, &m("ListStatuses"), None, ListStatusesRequest { filters: vec!["ref==resumable".into()] })
            .await
            .unwrap();
    assert_eq!(all.statuses.len(), 1);

    let (mut w, r) = WriteSession::open(&ch, stat("resumable")).await;
    let r = r.unwrap();
    assert_eq!(r.offset as usize, half, "Stat reports where to resume");
    assert_eq!(r.total as usize, data.len());
    assert_eq!(r.digest, sha256(&data[..half]), "the data on disk was re-hashed");
    let w2 = w.send(write_at(half, &data[half..])).await.unwrap();
    assert_eq!(w2.offset as usize, data.len());
    let c = w.send(commit(data.len(), data.len(), &digest)).await.unwrap();
    assert_eq!(c.digest, digest);
    w.close().await;
    assert_eq!(concat(&read(&ch, &digest, 0, 0).await.unwrap()), data);
}

#[tokio::test]
async fn a_second_writer_on_the_same_ref_is_unavailable() {
    let d = start();
    let ch = d.channel().await;
    let (mut w1, r) = WriteSession::open(&ch, stat("contended")).await;
    r.unwrap();
    w1.send(write_at(0, b"first writer")).await.unwrap();

    let (_w2, r) = WriteSession::open(&ch, stat("contended")).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("ref contended locked"), "{}", e.message());
    // The first writer is unaffected, and another ref is free.
    assert_eq!(w1.send(write_at(12, b"!")).await.unwrap().offset, 13);
    let (w3, r) = WriteSession::open(&ch, stat("other")).await;
    r.unwrap();
    w3.close().await;

    // Ending the stream releases the lock; the data stays for a resume.
    w1.close().await;
    let (mut w4, r) = WriteSession::open(&ch, stat("contended")).await;
    assert_eq!(r.unwrap().offset, 13);

    // So does a client that just goes away (connection dropped).
    let ch2 = d.channel().await;
    let (w5, r) = WriteSession::open(&ch2, stat("dropped")).await;
    r.unwrap();
    w4.send(write_at(13, b"?")).await.unwrap();
    drop(w5);
    drop(ch2);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_w, r) = WriteSession::open(&ch, stat("dropped")).await;
        match r {
            Ok(_) => break,
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the lock of a dropped client was not released: {e:?}"),
        }
    }
    let c = w4.send(commit(14, 14, &sha256(b"first writer!?"))).await.unwrap();
    assert_eq!(c.digest, sha256(b"first writer!?"));
}

#[tokio::test]
async fn committing_existing_content_is_already_exists() {
    let d = start();
    let ch = d.channel().await;
    let digest = sha256(b"dup");
    let (mut w, r) = WriteSession::open(&ch, stat("one")).await;
    r.unwrap();
    w.send(commit(0, 3, &digest).with_data(b"dup", 3)).await.unwrap();
    // Expected digest already present: refused at once, ingest removed.
    let (_w, r) = WriteSession::open(&ch, WriteContentRequest { expected: digest.clone(), ..stat("two") }).await;
    assert_eq!(r.unwrap_err().code(), Code::AlreadyExists);
    // Same content without an expected digest: refused at commit, ingest removed.
    let (mut w, r) = WriteSession::open(&ch, stat("three")).await;
    r.unwrap();
    let e = w.send(commit(0, 0, "").with_data(b"dup", 3)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let all: ListStatusesResponse = unary(&ch, &m("ListStatuses"), None, ListStatusesRequest::default()).await.unwrap();
    assert!(all.statuses.is_empty(), "{:?}", all.statuses);
}

#[tokio::test]
async fn a_64_mib_blob_round_trips() {
    let d = start();
    let ch = d.channel().await;
    const SIZE: usize = 64 << 20;
    let t = Instant::now();
    let mut data = vec![0u8; SIZE];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut data).unwrap();
    let digest = sha256(&data);
    eprintln!("64 MiB generated and hashed in {:?}", t.elapsed());
    let t = Instant::now();

    let (mut w, r) =
        WriteSession::open(&ch, WriteContentRequest { total: SIZE as i64, expected: digest.clone(), ..stat("big") })
            .await;
    r.unwrap();
    const CHUNK: usize = 1 << 20;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let req = if (i + 1) * CHUNK >= SIZE {
            commit(i * CHUNK, SIZE, &digest).with_data(chunk, SIZE)
        } else {
            write_at(i * CHUNK, chunk)
        };
        let r = w.send(req).await.unwrap();
        assert_eq!(r.offset as usize, (i * CHUNK + chunk.len()));
    }
    w.close().await;
    eprintln!("64 MiB written in {:?}", t.elapsed());
    assert_eq!(info(&ch, &digest).await.unwrap().size as usize, SIZE);

    // Read it back as a stream of ~1 MiB chunks with absolute offsets.
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(ReadContentRequest { digest: digest.clone(), offset: 0, size: 0 }),
            m("Read").parse().unwrap(),
            tonic_prost::ProstCodec::<ReadContentRequest, ReadContentResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::with_capacity(SIZE);
    let mut chunks = 0;
    while let Some(c) = stream.message().await.unwrap() {
        assert_eq!(c.offset as usize, back.len());
        assert!(c.data.len() <= 1 << 20, "chunk of {} bytes", c.data.len());
        back.extend_from_slice(&c.data);
        chunks += 1;
    }
    assert_eq!(chunks, 64);
    assert!(back == data, "the blob read back differs");
    eprintln!("64 MiB written and read in {:?}", t.elapsed());
}

/// The stock containerd 1.6 `ctr` against the raw store alone: it sends a
/// namespace (`default`), which the raw store ignores.
#[tokio::test]
async fn stock_ctr_ingests_lists_gets_labels_and_removes() {
    let d = start();
    let data = random_bytes(100_000, 9);
    let digest = sha256(&data);
    let tmp = d.setup.path().join("blob");
    std::fs::write(&tmp, &data).unwrap();
    let ctr_stdin = |args: &[&str]| {
        Command::new(common::stock_ctr_bin())
            .arg("--address")
            .arg(d.socket())
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(std::fs::File::open(&tmp).unwrap())
            .output()
            .unwrap()
    };
    let o = ctr_stdin(&["content", "ingest", "--expected-digest", &digest, "ref1"]);
    assert!(o.status.success(), "ingest: {}", common::stderr(&o));
    let o = d.stock_ctr(&["content", "ls"]);
    assert!(common::stdout(&o).contains(&digest), "ls: {}{}", common::stdout(&o), common::stderr(&o));
    let o = d.stock_ctr(&["content", "get", &digest]);
    assert!(o.status.success() && o.stdout == data, "get: {}", common::stderr(&o));
    let o = d.stock_ctr(&["content", "label", &digest, "team=blue"]);
    assert!(o.status.success(), "label: {}", common::stderr(&o));
    let o = d.stock_ctr(&["content", "ls", "labels.team==blue"]);
    assert!(common::stdout(&o).contains(&digest), "ls filter: {}{}", common::stdout(&o), common::stderr(&o));
    let o = d.stock_ctr(&["content", "rm", &digest]);
    assert!(o.status.success(), "rm: {}", common::stderr(&o));
    let o = d.stock_ctr(&["content", "ls", "-q"]);
    assert!(!common::stdout(&o).contains(&digest), "after rm: {}", common::stdout(&o));
}
