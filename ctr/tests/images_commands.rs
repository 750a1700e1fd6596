//! Our `ctr images tag|check|mount|unmount|unpack|usage` against stock
//! containerd 1.6 ctr, both talking to crated: the same sequence runs on
//! two fresh crated daemons, one driven by stock ctr throughout, the other
//! by our ctr for the commands under test (images are imported, and the
//! state is inspected, with stock ctr on both), and every step's stdout,
//! stderr and exit code must match once what legitimately differs (mount
//! directories, dates) is masked. Stock 1.6 has no `images unpack` or
//! `images usage`: ours are checked against the state stock ctr's own
//! unpack (through `images mount`) leaves, and against `snapshots usage`.
//!
//! Every mount is undone by a guard even when a step or assertion fails.

mod common;

use std::path::Path;

use common::*;
use crated_tests::images::{docker_archive, oci_archive, ImageOptions, Layers, Platforms};

fn write_archives(dir: &Path) {
    let whiteouts = oci_archive(&ImageOptions { layers: Layers::WithWhiteouts, ..Default::default() }).unwrap();
    let multi = oci_archive(&ImageOptions { platforms: Platforms::Amd64AndArm64, ..Default::default() }).unwrap();
    let docker = docker_archive(&ImageOptions {
        ref_name: Some("example.com/docker:1.0".into()),
        layers: Layers::WithWhiteouts,
        ..Default::default()
    })
    .unwrap();
    std::fs::write(dir.join("whiteouts.tar"), &whiteouts.tar).unwrap();
    std::fs::write(dir.join("multi.tar"), &multi.tar).unwrap();
    std::fs::write(dir.join("docker.tar"), &docker.tar).unwrap();
}

enum Op {
    /// Stock ctr on both sides (setup and inspection).
    Stock(&'static str),
    /// The command under test: stock ctr on one side, ours on the other.
    Both(&'static str),
    /// The entries of a directory under the mount target.
    Ls(&'static str),
}

fn steps() -> Vec<Op> {
    use Op::*;
    vec![
        Stock("images import --base-name example.com/bb {A}/whiteouts.tar"),
        Stock("images import --no-unpack --base-name example.com/docker {A}/docker.tar"),
        Stock("images import --base-name multi/all --all-platforms {A}/multi.tar"),
        Both("images check"),
        Both("images check -q"),
        Both("images check --snapshotter native"),
        Both("images check example.com/bb:latest"),
        Both("images check name==nope"),
        // Tags.
        Both("images tag example.com/bb:latest example.com/bb:v2"),
        Both("images tag example.com/bb:latest example.com/bb:v2"),
        Both("images tag --force example.com/bb:latest example.com/bb:v2 example.com/bb:v3"),
        Both("images tag nope example.com/bb:v4"),
        Both("images tag example.com/bb:latest"),
        Both("images tag"),
        Stock("images ls"),
        Stock("leases ls"),
        // Mounts: read-only, then read-write, of an unpacked image.
        Both("images mount example.com/bb:latest {M}"),
        Ls(""),
        Ls("etc"),
        Ls("opt/data"),
        Stock("snapshots ls"),
        Stock("leases ls"),
        Both("images unmount {M}"),
        Ls(""),
        Both("images unmount --rm {M}"),
        Stock("leases ls"),
        Both("images mount --rw example.com/bb:latest {M}"),
        Ls("etc"),
        Stock("snapshots ls"),
        Both("images unmount --rm {M}"),
        // A mount that has to unpack first (imported with --no-unpack).
        Both("images mount example.com/docker:1.0 {M}"),
        Ls("etc"),
        Stock("content ls"),
        Stock("snapshots ls"),
        Both("images unmount --rm {M}"),
        // Another platform of a multi-platform image; 1.6 ignores the
        // --snapshotter flag of `images mount` (the listing shows it).
        Both("images mount --snapshotter native --platform linux/arm64 multi/all:latest {M}"),
        Ls("bin"),
        Stock("snapshots --snapshotter native ls"),
        Both("images unmount --snapshotter native --rm {M}"),
        Both("images check"),
        Both("images check --snapshotter native"),
        // Errors.
        Both("images mount nope {M}"),
        Both("images mount example.com/bb:latest"),
        Both("images mount"),
        Both("images mount --platform linux//x example.com/bb:latest {M}"),
        Both("images unmount"),
        Stock("leases ls"),
    ]
}

/// Run the sequence on a fresh crated; `ours` runs the `Both` steps with
/// our ctr. The masked outputs.
fn transcript(tag: &str, ours: bool) -> Vec<String> {
    let archives = tempfile::Builder::new().prefix("ctr-imgcmd-a-").tempdir().unwrap();
    write_archives(archives.path());
    let daemon = Daemon::start_with_plugins(tag, Server::Crated, &built_crated_plugins());
    let sock = daemon.socket();
    let mount = tempfile::Builder::new().prefix("ctr-imgcmd-mnt-").tempdir().unwrap();
    let guard = MountGuard { sock: sock.clone(), target: mount.path().to_path_buf() };
    let a = archives.path().display().to_string();
    let m = mount.path().display().to_string();
    let expand = |s: &str| s.replace("{A}", &a).replace("{M}", &m);
    let mut out = Vec::new();
    for op in steps() {
        out.push(match op {
            Op::Stock(args) => run_settled(STOCK_CTR, &sock, &step(&expand(args))),
            Op::Both(args) => run(if ours { OURS } else { STOCK_CTR }, &sock, &step(&expand(args))),
            Op::Ls(rel) => format!("# ls {{M}}/{rel}\n{}", list_dir(&mount.path().join(rel))),
        });
    }
    drop(guard);
    let dir = daemon.dir().display().to_string();
    drop(daemon);
    out.iter().map(|o| mask(&o.replace(&a, "{A}").replace(&m, "{M}").replace(&dir, "DIR"))).collect()
}

#[test]
fn images_commands_match_stock_ctr() {
    let stock = std::thread::spawn(|| transcript("imgcmd-stock", false));
    let ours = transcript("imgcmd-ours", true);
    let stock = stock.join().expect("stock run panicked");
    let stock: Vec<String> = stock.iter().map(|s| sort_label_lists(s)).collect();
    let ours: Vec<String> = ours.iter().map(|s| sort_label_lists(s)).collect();
    // The sequence did what it says (on the stock side).
    let all = stock.concat();
    for needle in [
        "example.com/bb:v2\n",
        "ctr: image \"example.com/bb:v2\": already exists\n",
        "# ls {M}/etc\nhostname (7 bytes)\n",
        "containerd.io/uncompressed=",
        "ctr: image \"nope\": not found\n",
    ] {
        assert!(all.contains(needle), "no {needle:?} in:\n{all}");
    }
    assert_same("stock ctr", &stock, "our ctr", &ours);
}

/// `images unpack` leaves what stock ctr's unpack leaves, and `images
/// usage` lists the chain with what `snapshots usage` says of each.
#[test]
fn unpack_and_usage() {
    let archives = tempfile::Builder::new().prefix("ctr-imgcmd-u-").tempdir().unwrap();
    write_archives(archives.path());
    let a = archives.path().display().to_string();
    let mount = tempfile::Builder::new().prefix("ctr-imgcmd-mnt-").tempdir().unwrap();
    let m = mount.path().display().to_string();
    let inspect = [
        "snapshots ls",
        "snapshots --snapshotter native ls",
        "content ls",
        "images check",
        "images check --snapshotter native",
    ];
    let mut sides = Vec::new();
    for ours in [false, true] {
        let daemon = Daemon::start_with_plugins(&format!("unpack-{ours}"), Server::Crated, &built_crated_plugins());
        let sock = daemon.socket();
        let _guard = MountGuard { sock: sock.clone(), target: mount.path().to_path_buf() };
        for import in [
            format!("images import --no-unpack --base-name example.com/bb {a}/whiteouts.tar"),
            format!("images import --no-unpack --base-name multi/all --all-platforms {a}/multi.tar"),
        ] {
            let out = run(STOCK_CTR, &sock, &step(&import));
            assert!(out.ends_with("[rc=0]\n"), "{out}");
        }
        let unpacks =
            [("example.com/bb:latest", "overlayfs", "linux/amd64"), ("multi/all:latest", "overlayfs", "linux/arm64")];
        for (image, sn, platform) in unpacks {
            let out = if ours {
                run(OURS, &sock, &step(&format!("images unpack --snapshotter {sn} --platform {platform} {image}")))
            } else {
                // Stock 1.6 unpacks through `images mount`.
                let out = run(
                    STOCK_CTR,
                    &sock,
                    &step(&format!("images mount --snapshotter {sn} --platform {platform} {image} {m}")),
                );
                run(STOCK_CTR, &sock, &step(&format!("images unmount --snapshotter {sn} --rm {m}")));
                out
            };
            assert!(out.ends_with("[rc=0]\n"), "{out}");
            if ours {
                assert!(out.contains(&format!("unpacking {image} (sha256:")) && out.contains(")...done\n"), "{out}");
            }
        }
        let outputs: Vec<String> =
            inspect.iter().map(|s| sort_label_lists(&mask(&run_settled(STOCK_CTR, &sock, &step(s))))).collect();
        if ours {
            // Usage: each key's line is what `snapshots usage` reports, and
            // each next key is the previous one's parent.
            let usage = run(OURS, &sock, &step("images usage example.com/bb:latest"));
            assert!(usage.ends_with("[rc=0]\n"), "{usage}");
            let lines: Vec<&str> = usage.lines().skip(2).take_while(|l| *l != "--- stderr").collect();
            assert_eq!(lines.len(), 2, "two layers: {usage}");
            for (i, line) in lines.iter().enumerate() {
                let key = line.split_whitespace().next().unwrap();
                let stock = run(STOCK_CTR, &sock, &step(&format!("snapshots usage {key}")));
                let want = stock.lines().nth(2).unwrap();
                assert_eq!(
                    line.split_whitespace().collect::<Vec<_>>(),
                    want.split_whitespace().collect::<Vec<_>>(),
                    "{usage}\n{stock}"
                );
                let info = run(STOCK_CTR, &sock, &step(&format!("snapshots info {key}")));
                match lines.get(i + 1) {
                    Some(next) => assert!(info.contains(next.split_whitespace().next().unwrap()), "{info}"),
                    None => assert!(!info.contains("\"Parent\""), "{info}"),
                }
            }
            let missing = run(OURS, &sock, &step("images usage nope"));
            assert!(
                missing.ends_with(
                    "--- stderr\nctr: failed to ensure if image nope exists: image \"nope\": not found\n[rc=1]\n"
                ),
                "{missing}"
            );
            let not_unpacked = run(OURS, &sock, &step("images usage --snapshotter native example.com/bb:latest"));
            assert!(
                not_unpacked.contains("ctr: image example.com/bb:latest isn't unpacked in snapshotter native\n[rc=1]"),
                "{not_unpacked}"
            );
            let nope = run(OURS, &sock, &step("images unpack nope"));
            assert!(nope.ends_with("ctr: image \"nope\": not found\n[rc=1]\n"), "{nope}");
        }
        sides.push(outputs);
    }
    assert!(sides[0][2].contains("containerd.io/gc.ref.snapshot.overlayfs="), "{}", sides[0][2]);
    assert_same("after stock ctr's unpack", &sides[0], "after our unpack", &sides[1]);
}
