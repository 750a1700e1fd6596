//! Benchmark: the cost of one unary gRPC round trip on the unix socket,
//! crated against containerd 1.6 on the same machine in the same run.
//!
//! `cargo build --release --workspace --bins --examples && cargo bench -p crated-tests
//! --bench roundtrip` (needs root and Debian's containerd package). Measures `Version.Version` (served by each daemon's
//! core) and, for crated, `crated.test.Echo/Echo` (a plugin call through the
//! ABI, the library's lane and the plugin's own runtime), in process and
//! with the plugin isolated in a plugin host (`isolated_plugins`), and with
//! the metrics endpoint on (the router then counts every call). Prints
//! mean µs per call and the ratios.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use containerd_client::services::v1::VersionResponse;
use crated_tests::{echo_method, EchoRequest, EchoResponse};

const CALLS: u32 = 5000;
const VERSION: &str = "/containerd.services.version.v1.Version/Version";

async fn mean_call<F, Fut>(mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..200 {
        call().await;
    }
    let start = Instant::now();
    for _ in 0..CALLS {
        call().await;
    }
    start.elapsed() / CALLS
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let crated = common::Setup::new(&["echo"]).start();
    let isolated = common::Setup::new(&["echo"]).extra("isolated_plugins = [\"io.crated.test.v1.echo\"]").start();
    let metrics_address = format!("127.0.0.1:{}", common::free_port());
    let counted = common::Setup::new(&["echo"])
        .extra(&format!("[metrics]\naddress = {metrics_address:?}\ngrpc_histogram = true\n"))
        .start();

    let containerd = common::StockContainerd::start();
    let sock = containerd.socket();

    rt.block_on(async {
        let ours = crated.channel().await;
        let theirs = common::channel(&sock).await;
        let crated_version = mean_call(|| async {
            let _: VersionResponse = common::unary(&ours, VERSION, None, ()).await.unwrap();
        })
        .await;
        let containerd_version = mean_call(|| async {
            let _: VersionResponse = common::unary(&theirs, VERSION, None, ()).await.unwrap();
        })
        .await;
        let crated_plugin = mean_call(|| async {
            let req = EchoRequest { text: "x".into(), count: 0 };
            let _: EchoResponse = common::unary(&ours, &echo_method("Echo"), Some("default"), req).await.unwrap();
        })
        .await;
        let apart = isolated.channel().await;
        let isolated_plugin = mean_call(|| async {
            let req = EchoRequest { text: "x".into(), count: 0 };
            let _: EchoResponse = common::unary(&apart, &echo_method("Echo"), Some("default"), req).await.unwrap();
        })
        .await;
        let with_metrics = counted.channel().await;
        let counted_plugin = mean_call(|| async {
            let req = EchoRequest { text: "x".into(), count: 0 };
            let _: EchoResponse =
                common::unary(&with_metrics, &echo_method("Echo"), Some("default"), req).await.unwrap();
        })
        .await;
        println!("unary round trip, mean of {CALLS} sequential calls on one connection:");
        println!("  containerd Version.Version      {:>8.1} µs", containerd_version.as_secs_f64() * 1e6);
        println!("  crated     Version.Version      {:>8.1} µs", crated_version.as_secs_f64() * 1e6);
        println!("  crated     plugin Echo.Echo         {:>8.1} µs", crated_plugin.as_secs_f64() * 1e6);
        println!("  crated     isolated Echo.Echo       {:>8.1} µs", isolated_plugin.as_secs_f64() * 1e6);
        println!("  crated     plugin Echo.Echo, metrics on {:>8.1} µs", counted_plugin.as_secs_f64() * 1e6);
        println!(
            "  ratio crated/containerd (Version): {:.2}",
            crated_version.as_secs_f64() / containerd_version.as_secs_f64()
        );
        println!(
            "  ratio crated plugin call / containerd Version: {:.2}",
            crated_plugin.as_secs_f64() / containerd_version.as_secs_f64()
        );
        println!(
            "  cost of isolation per call: {:+.1} µs",
            (isolated_plugin.as_secs_f64() - crated_plugin.as_secs_f64()) * 1e6
        );
        println!(
            "  cost of metrics (with the histogram) per call: {:+.1} µs",
            (counted_plugin.as_secs_f64() - crated_plugin.as_secs_f64()) * 1e6
        );
    });

    drop(containerd);
}
