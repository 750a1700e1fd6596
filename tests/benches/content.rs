//! Benchmark: content ingest and read throughput, crated against
//! containerd 1.6 on the same machine in the same run.
//!
//! `cargo build --release --workspace --bins --examples && cargo bench -p
//! crated-tests --bench content` (needs root and Debian's containerd).
//! Writes a 256 MiB blob through `Content.Write` in 1 MiB frames (namespace
//! `default`), then reads it back through `Content.Read`, on each daemon.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use containerd_client::services::v1::{
    ReadContentRequest, ReadContentResponse, WriteAction, WriteContentRequest, WriteContentResponse,
};
use tonic::transport::Channel;

const SIZE: usize = 256 << 20;
const CHUNK: usize = 1 << 20;
const WRITE: &str = "/containerd.services.content.v1.Content/Write";
const READ: &str = "/containerd.services.content.v1.Content/Read";

fn blob(seed: u64) -> Vec<u8> {
    // xorshift: incompressible and cheap.
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(SIZE);
    while v.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn sha256_of(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

async fn ingest(ch: &Channel, data: &[u8], digest: &str, r: &str) -> Duration {
    let mut reqs: Vec<WriteContentRequest> = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r.into(),
            total: SIZE as i64,
            offset: (i * CHUNK) as i64,
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    reqs.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: r.into(),
        total: SIZE as i64,
        offset: SIZE as i64,
        expected: digest.into(),
        ..Default::default()
    });
    let start = Instant::now();
    let out: Vec<WriteContentResponse> = common::bidi_streaming(ch, WRITE, Some("default"), reqs).await.unwrap();
    let took = start.elapsed();
    assert_eq!(out.last().unwrap().digest, digest);
    took
}

async fn read(ch: &Channel, digest: &str) -> Duration {
    let start = Instant::now();
    let parts = common::server_streaming::<_, ReadContentResponse>(
        ch,
        READ,
        Some("default"),
        ReadContentRequest { digest: digest.into(), offset: 0, size: 0 },
    )
    .await
    .unwrap();
    let took = start.elapsed();
    let n: usize = parts.into_iter().map(|p| p.unwrap().data.len()).sum();
    assert_eq!(n, SIZE);
    took
}

fn mbps(d: Duration) -> f64 {
    SIZE as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let crated = common::Setup::new(&[]).with_real_plugins(&["content", "metadata", "events"]).start();

    let containerd = common::StockContainerd::start();
    let sock = containerd.socket();

    let (a, b) = (blob(1), blob(2));
    let (da, db) = (sha256_of(&a), sha256_of(&b));
    rt.block_on(async {
        let ours = crated.channel().await;
        let theirs = common::channel(&sock).await;
        let cw = ingest(&theirs, &a, &da, "bench-a").await;
        let ow = ingest(&ours, &a, &da, "bench-a").await;
        let cr = read(&theirs, &da).await;
        let or = read(&ours, &da).await;
        // Second round with other bytes, the other order.
        let ow2 = ingest(&ours, &b, &db, "bench-b").await;
        let cw2 = ingest(&theirs, &b, &db, "bench-b").await;
        println!("content throughput, {} MiB blob in {} KiB frames:", SIZE >> 20, CHUNK >> 10);
        println!("  ingest  containerd {:>7.0} MiB/s  {:>7.0} MiB/s", mbps(cw), mbps(cw2));
        println!("  ingest  crated     {:>7.0} MiB/s  {:>7.0} MiB/s", mbps(ow), mbps(ow2));
        println!("  read    containerd {:>7.0} MiB/s", mbps(cr));
        println!("  read    crated     {:>7.0} MiB/s", mbps(or));
        println!(
            "  ratio crated/containerd: ingest {:.2}, read {:.2}",
            mbps(ow + ow2) / mbps(cw + cw2),
            mbps(or) / mbps(cr)
        );
    });
    drop(containerd);
}
