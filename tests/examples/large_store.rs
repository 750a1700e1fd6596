//! Fills a daemon's store with [`crated_tests::large_store::fill`] through
//! its socket, for the garbage collection scenario of `scripts/bench.py`.
//!
//! Usage: large_store <socket> <namespace> <blobs> <snapshots>

use std::path::Path;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, namespace, blobs, snapshots] = args.as_slice() else {
        return Err("usage: large_store <socket> <namespace> <blobs> <snapshots>".into());
    };
    let ch = crated_tests::large_store::connect(Path::new(socket)).await?;
    crated_tests::large_store::fill(&ch, namespace, blobs.parse()?, snapshots.parse()?).await?;
    Ok(())
}
