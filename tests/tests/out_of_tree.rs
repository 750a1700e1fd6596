//! The third-party plugin story: `examples/hello-plugin` is a crate outside
//! the workspace with its own lockfile. It is built here the way its author
//! would build it (`--locked` proves that its own Cargo.lock is used), its
//! `.so` is dropped into a daemon's plugin dir, and the daemon lists it,
//! describes it, and routes calls to its own gRPC service.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use common::{plugin_export, stderr, stdout, unary, Setup};
use tonic::Code;

// The client side of `example.hello.v1`, defined again here as a client in
// another repository would: the messages are all it needs.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

const SAY_HELLO: &str = "/example.hello.v1.Greeter/SayHello";
const LIBRARY: &str = "libhello_plugin.so";

/// The example's `.so`, built once per test process.
fn hello_so() -> &'static Path {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let so = common::build_out_of_tree("hello-plugin").join(LIBRARY);
        assert!(so.exists(), "{} is missing after the build", so.display());
        so
    })
}

/// A daemon with the freshly built example as its only plugin library.
fn setup_with_hello() -> Setup {
    let so = hello_so();
    let setup = Setup::new(&[]);
    std::fs::copy(so, setup.plugin_dir().join(LIBRARY)).expect("copy the plugin into plugin_dir");
    setup
}

/// The `plugins ls` row of `hello`, as its whitespace-separated columns.
fn hello_row(listing: &str) -> Option<Vec<&str>> {
    common::plugin_row(listing, "io.example.hello.v1", "hello")
}

fn say_hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

#[tokio::test]
async fn out_of_tree_plugin_loads_lists_and_serves() {
    loads_lists_and_serves(setup_with_hello(), false).await;
}

/// The same plugin isolated in a plugin host (`isolated_plugins`): the same
/// listing and calls, plus the host's pid among its exports; the host is a
/// process of its own and goes away with the daemon.
#[tokio::test]
async fn out_of_tree_plugin_isolated_loads_lists_and_serves() {
    loads_lists_and_serves(setup_with_hello().extra("isolated_plugins = [\"io.example.hello.v1.hello\"]"), true).await;
}

async fn loads_lists_and_serves(setup: Setup, isolated: bool) {
    let copied = setup.plugin_dir().join(LIBRARY);
    let mut d = setup.start();
    let mut hosts = Vec::new();

    // (a) Both clients list it, and it is ok.
    for (who, out) in [("our ctr", d.ctr(&["plugins", "ls"])), ("stock ctr", d.stock_ctr(&["plugins", "ls"]))] {
        assert!(out.status.success(), "{who} plugins ls failed: {}", stderr(&out));
        let text = stdout(&out);
        let row = hello_row(&text).unwrap_or_else(|| panic!("{who} does not list hello:\n{text}\n{}", d.log()));
        assert_eq!(row.last(), Some(&"ok"), "{who}: hello is not ok:\n{text}\n{}", d.log());
    }

    // (b) The detailed view tells where it came from and which ABI it has.
    for (who, out) in [
        ("our ctr", d.ctr(&["plugins", "ls", "-d", "id==hello"])),
        ("stock ctr", d.stock_ctr(&["plugins", "ls", "-d", "id==hello"])),
    ] {
        assert!(out.status.success(), "{who} plugins ls -d failed: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("io.example.hello.v1"), "{who}:\n{text}");
        let library = plugin_export(&text, "io.crated.plugin.library")
            .unwrap_or_else(|| panic!("{who}: no io.crated.plugin.library export:\n{text}"));
        assert_eq!(
            std::fs::canonicalize(library).unwrap(),
            std::fs::canonicalize(&copied).unwrap(),
            "{who}: the library export must point at the copy in plugin_dir:\n{text}"
        );
        let abi = crated_plugin_api::abi::ABI_VERSION.to_string();
        assert_eq!(plugin_export(&text, "io.crated.plugin.abi"), Some(abi.as_str()), "{who}:\n{text}");
        assert_eq!(plugin_export(&text, "greeting_source"), Some("config"), "{who}: the plugin's own export:\n{text}");
        let host = plugin_export(&text, "io.crated.plugin.host.pid");
        if isolated {
            let pid: u32 = host
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{who}: no io.crated.plugin.host.pid export:\n{text}\n{}", d.log()));
            assert_ne!(pid, d.pid(), "{who}: the plugin host is not the daemon:\n{text}");
            assert!(Path::new(&format!("/proc/{pid}")).exists(), "{who}: host {pid} is not running:\n{text}");
            hosts.push(pid);
        } else {
            assert_eq!(host, None, "{who}: a plugin in the daemon has no host:\n{text}");
        }
    }

    // (c) Its own gRPC service answers through the daemon's socket, with
    // the call's namespace.
    let ch = d.channel().await;
    let r: HelloReply = unary(&ch, SAY_HELLO, Some("third-party"), say_hello("world")).await.unwrap();
    assert_eq!(r.message, "Hello, world! (namespace third-party)");

    // Its errors keep their codes.
    let e = unary::<_, HelloReply>(&ch, SAY_HELLO, None, say_hello("world")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = unary::<_, HelloReply>(&ch, SAY_HELLO, Some("third-party"), say_hello("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    if isolated {
        let status = d.stop();
        assert!(status.success(), "crated exited with {status}:\n{}", d.log());
        for pid in hosts {
            assert!(common::wait_process_gone(pid, Duration::from_secs(10)), "plugin host {pid} outlived the daemon");
        }
    }
}

#[tokio::test]
async fn out_of_tree_plugin_reads_its_config_table() {
    let d = setup_with_hello().extra("[plugins.\"io.example.hello.v1.hello\"]\ngreeting = \"Howdy\"").start();
    let ch = d.channel().await;
    let r: HelloReply = unary(&ch, SAY_HELLO, Some("third-party"), say_hello("partner")).await.unwrap();
    assert_eq!(r.message, "Howdy, partner! (namespace third-party)", "{}", d.log());
}
