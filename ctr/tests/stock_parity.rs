//! Runs the same command sequence with stock containerd 1.6 `ctr`
//! (/usr/bin/ctr) and with ours, each against its own fresh stock containerd
//! (/usr/bin/containerd) on temporary directories, and compares stdout,
//! stderr and exit codes after masking times, ages and dates.
//!
//! Each daemon is stopped by its pid (the child we started) in a `Drop`
//! guard, so a failing assertion does not leave it running.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const H: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const H2: &str = "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
const Z: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A background `ctr events` process; killed on drop.
struct Events {
    child: Child,
}

impl Events {
    fn start(ctr: &str, sock: &Path, filters: &[&str]) -> Events {
        let child = Command::new(ctr)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("-a")
            .arg(sock)
            .arg("events")
            .args(filters)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ctr events");
        Events { child }
    }

    /// Stop it and return what it printed (stdout then stderr).
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let mut out = String::new();
        use std::io::Read;
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        out.push_str("--- stderr\n");
        if let Some(mut s) = self.child.stderr.take() {
            s.read_to_string(&mut out).unwrap();
        }
        out
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn splitting_args() {
    assert_eq!(split_args("a  'b c' d=''"), ["a", "b c", "d="]);
}

#[test]
fn masking_helpers() {
    assert_eq!(mask("time=\"2026-11-27T20:55:09Z\" level=error msg=x\n"), "time=T level=error msg=x\n");
    assert_eq!(mask("2026-11-27 20:55:09.16051897 +0000 UTC default /x {}\n"), "DATE default /x {}\n");
    assert_eq!(mask("l1 2026-11-27T20:55:10+01:00 a=b\n"), "l1 DATE a=b\n");
    assert_eq!(mask("r3\t5B\tLess than a second\t\n"), "r3\t5B\tAGE\t\n");
    assert_eq!(mask("d\t5B\t12 seconds\t-\nREF\t\tAGE\t\t\n"), "d\t5B\tAGE\t-\nREF\tAGE\t\n");
}

// ---------------------------------------------------------------------------

fn steps() -> Vec<Step> {
    let s = |x: String| step(&x);
    vec![
        // namespaces
        step("ns ls"),
        step("ns ls -q"),
        step("namespace list"),
        step("ns create foo a=b c"),
        step("ns create foo"),
        step("ns create"),
        step("namespaces c bar x=<&>"),
        step("ns ls"),
        // One label per call: with several, stock ctr updates them in Go's
        // random map order.
        step("ns label foo a="),
        step("ns label foo x=y"),
        step("ns label"),
        step("ns label nope k=v"),
        step("ns ls"),
        step("ns ls --quiet"),
        step("ns rm nope foo"),
        step("ns remove bar"),
        // content
        step_in("hello", "content ingest myref"),
        step("content ingest"),
        s(format!("content ingest --expected-size 11 --expected-digest {H2} ref2")),
        step_in("hello", "content ingest again"),
        step("content ls"),
        step("content list -q"),
        s(format!("content get {H}")),
        s(format!("content get {Z}")),
        step("content get foo"),
        step("content get sha256:abc"),
        step("content get md5:abc"),
        step("content get"),
        step("content ls 'bad filter=='"),
        step("content ls labels.a==b"),
        s(format!("content label {H} foo=bar")),
        s(format!("content label {H}")),
        step("content ls"),
        s(format!("content label {H} foo=")),
        s(format!("content label {Z} x=y")),
        step("content label bad x=y"),
        step("content label"),
        // A namespace that still holds objects.
        step("ns rm default"),
        step("ns ls"),
        s(format!("content ingest --expected-digest {Z} r3")),
        step_in("hello", "content ingest --expected-size 10 r4"),
        step_in("hello", "content ingest --expected-size 3 r5"),
        step_in("hello", "content ingest --expected-digest bad r6"),
        step_in("hello", "content ingest r4"),
        step("content active r5"),
        step("content active r[4-5]"),
        step("content active -t 1s --root /x ref==r3"),
        // Keep the garbage collector (triggered by deletions) off both blobs,
        // so the deletions below are deterministic.
        s(format!("content label {H} containerd.io/gc.root=x")),
        s(format!("content label {H2} containerd.io/gc.root=x")),
        s(format!("content rm {H} {Z} bad {H2}")),
        s(format!("content del {H2}")),
        step("content ls"),
        // leases
        step("leases create --id l1 a=b c"),
        step("leases create --id l2 -x 0"),
        step("leases create --id l3 --expires 90m x=y"),
        step("leases create --id l1"),
        step("leases ls"),
        step("leases list -q"),
        step("leases ls id==l2"),
        step("leases ls 'bad filter'"),
        step("leases rm"),
        step("leases rm l2 nope l1"),
        step("leases remove --sync l1 l3"),
        step("leases ls"),
        // events
        step("events 'bad filter'"),
        // images and containers, made over gRPC by `seed`
        step("#seed"),
        step("images ls"),
        step("image list -q"),
        step("i ls name==example.com/multi:latest"),
        step("images ls 'bad filter=='"),
        step("images label docker.io/library/small:1 foo=bar"),
        step("images label docker.io/library/small:1 foo="),
        step("images label -r example.com/multi:latest z=1"),
        step("images label nope x=y"),
        step("images label"),
        step("images ls"),
        step("containers ls"),
        step("c ls -q"),
        step("container list runtime.name==io.containerd.runc.v2"),
        step("c ls 'bad=='"),
        step("containers info c1"),
        step("c info --spec c2"),
        step("c info c2"),
        step("c info nope"),
        step("c info"),
        step("c label c1 a=b"),
        step("c label c1 a="),
        step("c label nope x=y"),
        step("c label"),
        step("c rm nope c1"),
        step("c rm"),
        step("c ls"),
        step("images rm nope docker.io/library/small:1"),
        step("i del --sync example.com/multi:latest example.com/broken:1"),
        step("images ls"),
    ]
}

// The same input for `--expected-digest {Z} r3` needs stdin too.
fn fix_stdin(mut steps: Vec<Step>) -> Vec<Step> {
    for s in &mut steps {
        if s.0.first().map(String::as_str) == Some("content")
            && s.0.get(1).map(String::as_str) == Some("ingest")
            && s.1.is_none()
            && s.0.len() > 2
        {
            s.1 = Some(if s.0.iter().any(|a| a == "ref2") { "hello world" } else { "hello" });
        }
    }
    steps
}

/// would, to check how both clients render them.
fn publish_raw(sock: &Path) {
    use containerd_client::services::v1::events_client::EventsClient;
    use containerd_client::services::v1::PublishRequest;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = unix_channel(sock).await;
        let mut client = EventsClient::new(channel);
        // containerd.events.TaskOOM{container_id: "c1"}, then an unknown type.
        for (url, value) in [
            ("containerd.events.TaskOOM", b"\x0a\x02c1".to_vec()),
            ("example.com/Unknown", b"\x0a\x01x".to_vec()),
            ("containerd.events.TaskExit", b"\x0a\x02c1\x18\x07\x20\x01".to_vec()),
        ] {
            let mut req = PublishRequest { topic: "/tasks/test".into(), ..Default::default() };
            let mut any = req.event.take().unwrap_or_default();
            any.type_url = url.into();
            any.value = value;
            req.event = Some(any);
            let mut req = tonic::Request::new(req);
            req.metadata_mut().insert("containerd-namespace", "default".parse().unwrap());
            client.publish(req).await.unwrap();
        }
    });
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(data);
    format!("sha256:{}", sum.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Images and containers for the `images`/`containers` steps: a manifest
/// and its config (ingested under a lease that never expires, so the
/// garbage collector keeps them), an index over it, and records pointing
/// at them (one at missing content), plus two containers.
fn seed(sock: &Path) {
    use containerd_client::services::v1::container::Runtime;
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::content_client::ContentClient;
    use containerd_client::services::v1::images_client::ImagesClient;
    use containerd_client::services::v1::leases_client::LeasesClient;
    use containerd_client::services::v1::{
        Container, CreateContainerRequest, CreateImageRequest, CreateRequest, Image, WriteAction, WriteContentRequest,
    };
    use containerd_client::types::Descriptor;

    fn req<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("containerd-namespace", "default".parse().unwrap());
        r.metadata_mut().insert("containerd-lease", "parity-seed".parse().unwrap());
        r
    }
    fn any(url: &str, value: &[u8]) -> prost_types::Any {
        prost_types::Any { type_url: url.into(), value: value.to_vec() }
    }
    fn desc(media_type: &str, digest: &str, size: usize) -> Option<Descriptor> {
        Some(Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size: size as i64,
            ..Default::default()
        })
    }

    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":1234567}}]}}"#,
        sha256(&config),
        config.len(),
        "1".repeat(64)
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":500,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        "2".repeat(64),
        sha256(&manifest),
        manifest.len()
    )
    .into_bytes();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = unix_channel(sock).await;
        let lease = CreateRequest { id: "parity-seed".into(), labels: Default::default() };
        LeasesClient::new(channel.clone()).create(req(lease)).await.unwrap();
        for (i, blob) in [&config, &manifest, &index].into_iter().enumerate() {
            let w = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: format!("seed-{i}"),
                total: blob.len() as i64,
                expected: sha256(blob),
                offset: 0,
                data: blob.clone(),
                labels: Default::default(),
            };
            let mut resp =
                ContentClient::new(channel.clone()).write(req(tokio_stream::iter(vec![w]))).await.unwrap().into_inner();
            while resp.message().await.unwrap().is_some() {}
        }
        let mut images = ImagesClient::new(channel.clone());
        for (name, target, labels) in [
            ("docker.io/library/small:1", desc("application/vnd.oci.image.manifest.v1+json", &sha256(&manifest), manifest.len()), vec![]),
            ("example.com/multi:latest", desc("application/vnd.oci.image.index.v1+json", &sha256(&index), index.len()), vec![("k", "v")]),
            ("example.com/broken:1", desc("application/vnd.oci.image.manifest.v1+json", Z, 10), vec![]),
        ] {
            let image = Image {
                name: name.into(),
                labels: labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                target,
                created_at: None,
                updated_at: None,
            };
            images.create(req(CreateImageRequest { image: Some(image), source_date_epoch: None })).await.unwrap();
        }
        let spec1 = br#"{"ociVersion":"1.0.2-dev","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}"#;
        let spec2 = br#"{"ociVersion":"1.0.2-dev","process":{"terminal":true,"user":{"uid":1,"gid":2},"env":["A=<b>"],"cwd":"/w","noNewPrivileges":true},"hostname":"h","mounts":[{"destination":"/proc","type":"proc","source":"proc"}],"annotations":{"z":"1","a":"2"},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/x"}],"maskedPaths":["/m"]},"unknown":1}"#;
        let spec_url = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
        let mut c2 = Container {
            id: "c2".into(),
            image: String::new(),
            labels: [("x".to_string(), "y".to_string())].into_iter().collect(),
            runtime: Some(Runtime { name: "io.containerd.runtime.v1.linux".into(), options: Some(any("example.com/Opts", b"\x01\x02")) }),
            spec: Some(any(spec_url, spec2)),
            ..Default::default()
        };
        c2.extensions.insert("my.ext".into(), any("example.com/Ext", b"hi"));
        let c1 = Container {
            id: "c1".into(),
            image: "docker.io/library/small:1".into(),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            spec: Some(any(spec_url, spec1)),
            ..Default::default()
        };
        let mut containers = ContainersClient::new(channel);
        for c in [c1, c2] {
            containers.create(req(CreateContainerRequest { container: Some(c) })).await.unwrap();
        }
    });
}

/// Run the whole sequence with one client on a fresh daemon.
fn transcript(ctr: &'static str, tag: &'static str, server: Server) -> (Vec<String>, String, String) {
    let daemon = Daemon::start(tag, server);
    let sock = daemon.socket();
    let all = Events::start(ctr, &sock, &[]);
    let filtered = Events::start(ctr, &sock, &["topic~=\"/namespaces/\""]);
    // Let the subscriptions register before anything happens.
    std::thread::sleep(Duration::from_millis(300));
    let outputs: Vec<String> = fix_stdin(steps())
        .iter()
        .map(|s| {
            if s.0 == ["#seed"] {
                seed(&sock);
                String::new()
            } else {
                run(ctr, &sock, s)
            }
        })
        .collect();
    publish_raw(&sock);
    std::thread::sleep(Duration::from_millis(300));
    let all = all.finish();
    let filtered = filtered.finish();
    drop(daemon);
    (outputs, all, filtered)
}

#[test]
fn same_output_as_stock_ctr() {
    compare_clients(Server::Containerd);
}

/// Both clients against crated: the stock ctr must work against crated
/// unchanged, and our ctr must answer exactly as it does.
#[test]
fn same_output_as_stock_ctr_against_crated() {
    compare_clients(Server::Crated);
}

fn compare_clients(server: Server) {
    let stock = std::thread::spawn(move || transcript(STOCK_CTR, "stock", server));
    let ours = transcript(OURS, "ours", server);
    let stock = stock.join().expect("stock run panicked");

    for (s, o) in stock.0.iter().zip(&ours.0) {
        assert_eq!(mask(o), mask(s), "\n--- stock:\n{s}\n--- ours:\n{o}");
    }
    assert_eq!(stock.0.len(), ours.0.len());
    assert_eq!(mask(&ours.1), mask(&stock.1), "events differ");
    assert_eq!(mask(&ours.2), mask(&stock.2), "filtered events differ");
    // The events saw what the sequence did.
    assert!(stock.1.contains("/namespaces/create {\"name\":\"foo\",\"labels\":{\"a\":\"b\",\"c\":\"true\"}}"));
    assert!(stock.1.contains("/content/delete"));
}

/// The stock ctr sees the same answers from crated as from containerd.
#[test]
fn crated_answers_like_containerd() {
    let containerd = std::thread::spawn(|| transcript(STOCK_CTR, "containerd", Server::Containerd));
    let crated = transcript(STOCK_CTR, "crated", Server::Crated);
    let containerd = containerd.join().expect("containerd run panicked");
    let steps = fix_stdin(steps());
    let mut diffs = Vec::new();
    for ((c, o), step) in containerd.0.iter().zip(&crated.0).zip(&steps) {
        if mask(c) != mask(o) {
            diffs.push(format!("$ ctr {}\n--- containerd:\n{c}\n--- crated:\n{o}", step.0.join(" ")));
        }
    }
    assert!(diffs.is_empty(), "{} steps differ:\n{}", diffs.len(), diffs.join("\n"));
    assert_eq!(mask(&crated.1), mask(&containerd.1), "events differ");
    assert_eq!(mask(&crated.2), mask(&containerd.2), "filtered events differ");
}
