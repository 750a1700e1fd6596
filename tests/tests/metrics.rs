//! The metrics endpoint (`[metrics] address`, `GET /v1/metrics`) of a real
//! daemon with the bundled plugins: the gRPC server metrics move with the
//! calls the stock ctr makes, with go-grpc-prometheus' names and Go's code
//! names; every plugin's init duration is listed; the process metrics are
//! there; the handling-time histogram only with `grpc_histogram = true`; a
//! bad address stops the daemon's start with a clear error. (A running
//! container's metrics are checked in `runtime.rs`, whose harness cleans
//! up containers.)

mod common;

use common::{free_port, http_get, sample, stderr, Setup};

fn metrics_setup(extra: &str) -> (Setup, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let setup = Setup::new(&[])
        .with_real_plugins(&["content", "metadata", "events"])
        .extra(&format!("[metrics]\naddress = {address:?}\n{extra}"));
    (setup, address)
}

fn scrape(address: &str) -> String {
    let (status, body) = http_get(address, "/v1/metrics");
    assert!(status.contains(" 200 "), "scrape answered {status}: {body}");
    body
}

#[test]
fn grpc_counters_move_with_calls_and_plugins_and_process_are_listed() {
    let (setup, address) = metrics_setup("");
    let mut d = setup.start();
    let version = [
        "grpc_code=\"OK\"",
        "grpc_method=\"Version\"",
        "grpc_service=\"containerd.services.version.v1.Version\"",
        "grpc_type=\"unary\"",
    ];
    let before = sample(&scrape(&address), "grpc_server_handled_total", &version).unwrap_or(0.0);
    for _ in 0..2 {
        let out = d.stock_ctr(&["version"]);
        assert!(out.status.success(), "ctr version: {}", stderr(&out));
    }
    // The stock ctr only warns about a missing image; the call is NotFound.
    d.stock_ctr(&["images", "rm", "docker.io/library/nope:1"]);

    let text = scrape(&address);
    assert_eq!(sample(&text, "grpc_server_handled_total", &version), Some(before + 2.0), "{text}");
    let started = sample(&text, "grpc_server_started_total", &version[1..]).unwrap();
    assert!(started >= before + 2.0, "{text}");
    assert!(sample(&text, "grpc_server_msg_received_total", &version[1..]).unwrap() >= 2.0);
    assert!(sample(&text, "grpc_server_msg_sent_total", &version[1..]).unwrap() >= 2.0);
    let not_found = sample(
        &text,
        "grpc_server_handled_total",
        &["grpc_code=\"NotFound\"", "grpc_method=\"Delete\"", "grpc_service=\"containerd.services.images.v1.Images\""],
    );
    assert_eq!(not_found, Some(1.0), "{text}");
    assert!(text.contains("# TYPE grpc_server_handled_total counter\n"));
    assert!(!text.contains("grpc_server_handling_seconds"), "the histogram is off by default:\n{text}");

    // The plugin that answered the failed call counted it.
    let metadata = ["id=\"redb\"", "type=\"io.containerd.metadata.v1\""];
    assert!(sample(&text, "crated_plugin_calls_total", &metadata).unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "crated_plugin_errors_total", &metadata).unwrap() >= 1.0, "{text}");
    assert_eq!(sample(&text, "crated_plugin_panics_total", &metadata), Some(0.0));
    for (t, id) in [
        ("io.containerd.content.v1", "content"),
        ("io.containerd.metadata.v1", "redb"),
        ("io.containerd.event.v1", "exchange"),
    ] {
        let took =
            sample(&text, "crated_plugin_init_duration_seconds", &[&format!("id=\"{id}\""), &format!("type=\"{t}\"")]);
        assert!(took.is_some_and(|s| s >= 0.0), "no init duration for {t}.{id}:\n{text}");
    }

    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6, "{text}");
    assert!(sample(&text, "process_virtual_memory_bytes", &[]).unwrap() > 1e6);
    assert!(sample(&text, "process_open_fds", &[]).unwrap() >= 3.0);
    assert!(sample(&text, "process_max_fds", &[]).unwrap() >= 3.0);
    assert!(sample(&text, "process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    let started_at = sample(&text, "process_start_time_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started_at <= now + 1.0 && started_at > now - 3600.0, "start time {started_at}, now {now}");

    let (status, _) = http_get(&address, "/metrics");
    assert!(status.contains(" 404 "), "{status}");
    d.stop();
}

#[test]
fn the_handling_histogram_is_there_with_grpc_histogram() {
    let (setup, address) = metrics_setup("grpc_histogram = true\n");
    let mut d = setup.start();
    assert!(d.stock_ctr(&["version"]).status.success());
    let text = scrape(&address);
    let labels = ["grpc_method=\"Version\"", "grpc_type=\"unary\"", "le=\"+Inf\""];
    assert!(sample(&text, "grpc_server_handling_seconds_bucket", &labels).unwrap() >= 1.0, "{text}");
    assert!(
        sample(&text, "grpc_server_handling_seconds_bucket", &["grpc_method=\"Version\"", "le=\"0.005\""]).is_some()
    );
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram\n"));
    d.stop();
}

#[test]
fn a_bad_metrics_address_stops_the_start_with_a_clear_error() {
    let setup = Setup::new(&[]).extra("[metrics]\naddress = \"127.0.0.1:notaport\"\n");
    let config = setup.write_config();
    let out = setup.run_crated(&["-c", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out) + &common::stdout(&out);
    assert!(err.contains("cannot serve the metrics endpoint") && err.contains("127.0.0.1:notaport"), "{err}");
    assert!(!setup.socket().exists(), "the socket is removed when the start fails");
}
