//! `ctr images push|pull --plain-http [--user u:p]` of our ctr through
//! crated's Transfer service against a real registry (Debian's
//! `docker-registry`, `crated_tests::registry`): an imported image is
//! pushed, then pulled into a second daemon, where `images ls` and
//! `images check` show it complete and unpacked; with the htpasswd
//! registry, good credentials work and bad ones fail; `--hosts-dir` maps
//! a name to the registry through containerd's `hosts.toml`.

mod common;

use std::fmt::Write as _;

use common::*;
use crated_tests::images::{oci_archive, ImageOptions};
use crated_tests::registry::Registry;

fn ours(sock: &std::path::Path, args: &str) -> String {
    run(OURS, sock, &step(args))
}

fn assert_ok(out: &str) {
    assert!(out.ends_with("[rc=0]\n"), "{out}");
}

/// Pushes an imported image with `push_flags` from one daemon, pulls it into
/// another with `pull_flags` (as `pull_as` if given: a name the hosts
/// configuration maps to the registry), and checks it there.
fn push_then_pull(tag: &str, registry: &Registry, push_flags: &str, pull_flags: &str, pull_as: Option<&str>) {
    let archive = oci_archive(&ImageOptions::default()).unwrap();
    let dir = tempfile::Builder::new().prefix("ctr-pull-push-").tempdir().unwrap();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, &archive.tar).unwrap();
    let remote = format!("{}/test/{tag}:1", registry.host());

    let source = Daemon::start_with_plugins(&format!("{tag}-src"), Server::Crated, &built_crated_plugins());
    // Seeded with the stock ctr's (client-side) import: what is tested here
    // is push and pull, not our ctr's import.
    let import = format!("images import --base-name example.com/pp {}", input.display());
    assert_ok(&run(STOCK_CTR, &source.socket(), &step(&import)));
    let out = ours(&source.socket(), &format!("images push {push_flags} {remote} example.com/pp:latest"));
    assert_ok(&out);
    assert!(out.contains("Completed push"), "{out}");

    let remote = pull_as.map_or(remote, str::to_string);
    let target = Daemon::start_with_plugins(&format!("{tag}-dst"), Server::Crated, &built_crated_plugins());
    let sock = target.socket();
    let out = ours(&sock, &format!("images pull {pull_flags} {remote}"));
    assert_ok(&out);
    assert!(!out.contains('\x1b') && out.contains("Completed pull"), "{out}");
    let ls = ours(&sock, "images ls");
    let row = ls.lines().find(|l| l.starts_with(&remote)).unwrap_or_else(|| panic!("{remote} not listed: {ls}"));
    assert!(row.contains(&archive.target), "{row}");
    let check = ours(&sock, "images check");
    let row = check.lines().find(|l| l.starts_with(&remote)).unwrap_or_else(|| panic!("{check}"));
    assert!(row.contains("complete") && row.contains("true"), "not complete and unpacked: {row}");
}

#[test]
fn push_and_pull_plain_http() {
    let registry = Registry::start().expect("registry fixture");
    push_then_pull("plain", &registry, "--plain-http", "--plain-http", None);
}

#[test]
fn push_and_pull_with_user() {
    let registry = Registry::start_with_user("tester", "s3cret").expect("registry fixture");
    push_then_pull("user", &registry, "--plain-http --user tester:s3cret", "--plain-http --user tester:s3cret", None);

    let daemon = Daemon::start_with_plugins("user-bad", Server::Crated, &built_crated_plugins());
    let remote = format!("{}/test/user:1", registry.host());
    let out = ours(&daemon.socket(), &format!("images pull --plain-http --user tester:wrong {remote}"));
    assert!(!out.ends_with("[rc=0]\n"), "{out}");
    assert!(out.contains("authentication") || out.contains("unauthorized"), "{out}");
    assert!(!ours(&daemon.socket(), "images ls -q").contains(&remote));
}

/// containerd's hosts directory, passed by `--hosts-dir` to the daemon:
/// a name whose host does not exist is pulled from the registry that its
/// `hosts.toml` names, over plain HTTP from the URL's scheme.
#[test]
fn pull_through_hosts_dir() {
    let registry = Registry::start().expect("registry fixture");
    let hosts = tempfile::Builder::new().prefix("ctr-hosts-").tempdir().unwrap();
    let dir = hosts.path().join("registry.invalid");
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!("server = \"http://{}\"\n", registry.host());
    writeln!(toml, "[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]", registry.host()).unwrap();
    std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    let flags = format!("--hosts-dir {}", hosts.path().display());
    push_then_pull("hosts", &registry, "--plain-http", &flags, Some("registry.invalid/test/hosts:1"));
}
