//! Introspection as users see it: `ctr plugins ls` (ours and the stock
//! containerd 1.6 one) over a daemon whose plugin directory holds good
//! plugins, plugins with broken dependencies, and files that are not usable
//! plugins. The daemon must start anyway and report each one precisely.

mod common;

use common::{stdout, Daemon, Setup};

/// Every kind of plugin library at once.
fn mixed_daemon() -> Daemon {
    let setup = Setup::new(&["echo", "graph_faults", "broken", "abi_mismatch", "abi_future", "not_a_plugin"]);
    std::fs::write(setup.plugin_dir().join("garbage.so"), b"this is not an ELF file").unwrap();
    setup.start()
}

/// The STATUS column of `plugins ls` for `type` + `id`.
fn status_of(table: &str, plugin_type: &str, id: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 4 && cols[0] == plugin_type && cols[1] == id).then(|| cols[3].to_string())
        })
        .collect()
}

/// The `-d` block of one plugin (from its `Type:` line to the next).
fn detail_block(detail: &str, plugin_type: &str, id: &str) -> String {
    let blocks: Vec<String> = detail
        .split("Type:")
        .filter(|b| {
            let mut lines = b.lines();
            let t = lines.next().unwrap_or_default().trim();
            let i = lines.next().unwrap_or_default().trim_start_matches("ID:").trim();
            t == plugin_type && i == id
        })
        .map(str::to_string)
        .collect();
    assert!(!blocks.is_empty(), "no -d block for {plugin_type} {id} in:\n{detail}");
    blocks.join("\n----\n")
}

#[test]
fn statuses_of_good_broken_and_foreign_plugins() {
    let d = mixed_daemon();
    let out = d.ctr(&["plugins", "ls"]);
    assert!(out.status.success(), "{out:?}");
    let table = stdout(&out);
    assert!(table.starts_with("TYPE "), "{table}");
    let expect = [
        ("io.crated.test.v1", "echo", "ok"),
        ("io.crated.testrelay.v1", "relay", "ok"),
        ("io.crated.test.v1", "skipper", "skip"),
        ("io.crated.fine.v1", "fine", "ok"),
        ("io.crated.orphan.v1", "orphan", "error"),
        ("io.crated.cyclea.v1", "a", "error"),
        ("io.crated.cycleb.v1", "b", "error"),
        ("io.crated.aftercycle.v1", "c", "error"),
        ("io.crated.broken.v1", "broken", "error"),
        ("io.crated.broken.v1", "panics", "error"),
        ("io.crated.library.v1", "libnot_a_plugin.so", "error"),
        ("io.crated.library.v1", "libabi_mismatch.so", "error"),
        ("io.crated.library.v1", "libabi_future.so", "error"),
        ("io.crated.library.v1", "garbage.so", "error"),
        ("io.containerd.grpc.v1", "introspection", "ok"),
        ("io.containerd.grpc.v1", "version", "ok"),
    ];
    for (t, id, status) in expect {
        let s = status_of(&table, t, id);
        assert!(s.contains(&status.to_string()), "{t} {id}: expected {status}, got {s:?} in\n{table}");
    }
    // The duplicate of echo is listed once as ok (the first) and once refused.
    let mut echo = status_of(&table, "io.crated.test.v1", "echo");
    echo.sort();
    assert_eq!(echo, ["error", "ok"], "{table}");
}

#[test]
fn detailed_listing_explains_every_failure() {
    let d = mixed_daemon();
    let out = d.ctr(&["plugins", "ls", "-d"]);
    assert!(out.status.success(), "{out:?}");
    let detail = stdout(&out);
    let future = format!(
        "expects ABI version {}, the library was built against ABI version {}",
        crated_plugin_api::abi::ABI_VERSION,
        crated_plugin_api::abi::ABI_VERSION + 1
    );
    let cases = [
        ("io.crated.orphan.v1", "orphan", "missing dependency: no plugin of type io.crated.nothing.v1"),
        ("io.crated.cyclea.v1", "a", "dependency cycle: io.crated.cyclea.v1.a -> io.crated.cycleb.v1.b -> io.crated.cyclea.v1.a"),
        ("io.crated.aftercycle.v1", "c", "no plugin of type io.crated.cyclea.v1 started"),
        ("io.crated.broken.v1", "broken", "the broken plugin always fails"),
        ("io.crated.broken.v1", "panics", "panic"),
        ("io.crated.test.v1", "skipper", "skip plugin"),
        ("io.crated.test.v1", "echo", "duplicate plugin io.crated.test.v1.echo"),
        ("io.crated.library.v1", "libnot_a_plugin.so", "not a crated plugin"),
        ("io.crated.library.v1", "libabi_future.so", future.as_str()),
        ("io.crated.library.v1", "libabi_mismatch.so", "incompatible plugin-api ABI: the library's types do not match this daemon's crated-plugin-api 0.1.0: Error:mismatched type Expected: PluginLibrary Found: OldLibrary"),
        ("io.crated.library.v1", "garbage.so", "cannot open library"),
    ];
    for (t, id, needle) in cases {
        let block = detail_block(&detail, t, id);
        assert!(block.contains(needle), "{t} {id}: {needle:?} not in\n{block}");
    }
    // An abi_stable layout report runs to thousands of lines; ours is short.
    let mismatch = detail_block(&detail, "io.crated.library.v1", "libabi_mismatch.so");
    assert!(mismatch.lines().count() < 15, "{mismatch}");

    // Each plugin says which library and ABI it came from.
    let echo = detail_block(&detail, "io.crated.test.v1", "echo");
    let lib = d.setup.plugin_dir().join("libecho.so");
    assert!(echo.contains(&format!("io.crated.plugin.library      {}", lib.display())), "{echo}");
    assert!(echo.contains("io.crated.plugin.abi"), "{echo}");
    assert!(echo.contains("flavour"), "static exports are kept: {echo}");
    assert!(echo.contains("Capabilities:") && echo.contains("echo"), "{echo}");
}

#[test]
fn filters_select_plugins() {
    let d = mixed_daemon();
    let out = stdout(&d.ctr(&["plugins", "ls", "type==io.crated.test.v1"]));
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r.starts_with("io.crated.test.v1 ")), "{out}");

    let out = stdout(&d.ctr(&["plugins", "ls", "-q", "id~=^cycle|^a$", "type==io.crated.fine.v1"]));
    let mut ids: Vec<&str> = out.lines().collect();
    ids.sort();
    assert_eq!(ids, ["a", "fine"], "filters are or-ed across arguments: {out}");

    let bad = d.ctr(&["plugins", "ls", "type=="]);
    assert!(!bad.status.success());
    assert!(common::stderr(&bad).contains("ctr: "), "{bad:?}");
}

#[test]
fn stock_ctr_gives_the_same_answers() {
    let d = mixed_daemon();
    for args in [
        &["plugins", "ls"][..],
        &["plugins", "ls", "-q"][..],
        &["plugins", "ls", "type==io.crated.test.v1"][..],
        &["plugins", "ls", "id~=^(echo|a)$", "type==io.crated.fine.v1"][..],
    ] {
        let ours = d.ctr(args);
        let stock = d.stock_ctr(args);
        assert!(stock.status.success(), "stock ctr {args:?}: {stock:?}");
        assert_eq!(stdout(&ours), stdout(&stock), "ctr {args:?}");
    }
    // Stock ctr prints the exports of -d in Go map order (random); compare
    // the lines as multisets.
    let sorted = |s: String| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let ours = sorted(stdout(&d.ctr(&["plugins", "ls", "-d"])));
    let stock_out = d.stock_ctr(&["plugins", "ls", "-d"]);
    assert!(stock_out.status.success(), "{stock_out:?}");
    assert_eq!(ours, sorted(stdout(&stock_out)));
}

#[test]
fn version_matches_stock_ctr() {
    let d = Setup::new(&["echo"]).start();
    let server_block = |s: String| s.split("Server:").nth(1).map(str::to_string).unwrap_or_default();
    let ours = d.ctr(&["version"]);
    let stock = d.stock_ctr(&["version"]);
    assert!(ours.status.success() && stock.status.success(), "{ours:?} {stock:?}");
    let block = server_block(stdout(&ours));
    assert!(block.contains(&format!("Version:  v{}", env!("CARGO_PKG_VERSION"))), "{block}");
    assert!(block.contains("UUID: "), "{block}");
    assert_eq!(block, server_block(stdout(&stock)));
}
