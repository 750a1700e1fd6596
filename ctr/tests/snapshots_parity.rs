//! `ctr snapshots` parity: the same sequence (prepare, mounts, commit, view,
//! ls, tree, info, usage, label, rm and their errors) with stock containerd
//! 1.6 `ctr` and with ours, once per snapshotter (native, overlayfs), each
//! client against its own fresh daemon, comparing stdout, stderr and exit
//! codes after masking times, the daemons' temporary root paths and the
//! snapshotters' numeric snapshot ids.
//!
//! Garbage collection: containerd collects snapshots that no root label or
//! lease holds as soon as something is removed. `prepare` and `commit`
//! label theirs with `containerd.io/gc.root`; `view` does not, so every view
//! is labelled right after it is made, before the first removal, or the
//! collector would race the steps that follow.

mod common;

use std::collections::HashMap;

use common::*;

/// One step, optionally with an environment variable for `ctr`.
struct EnvStep(Option<(&'static str, &'static str)>, Step);

/// The sequence for one snapshotter, given as `--snapshotter <name>`.
fn snapshotter_steps(sn: &str) -> Vec<EnvStep> {
    let s = |x: &str| EnvStep(None, step(&format!("snapshots --snapshotter {sn} {x}")));
    vec![
        s("ls"),
        s("tree"),
        s("prepare"),
        s("prepare a b c"),
        s("prepare a1"),
        // Duplicate key.
        s("prepare a1"),
        s("prepare -t /mnt/x a2"),
        s("prepare --mounts a3"),
        s("mounts /mnt/y a1"),
        s("m /mnt/y"),
        s("mount /mnt/y nope"),
        s("commit c1 a1"),
        s("commit c1 a2"),
        s("commit c2 nope"),
        s("commit"),
        // Flags after the arguments.
        s("prepare b1 c1 --mounts"),
        s("prepare --target /t b1 c1"),
        // A parent that does not exist, or is not committed.
        s("prepare -t /t b2 nope"),
        s("prepare b3 a3"),
        s("view -t /t --mounts v1 c1"),
        s("label v1 containerd.io/gc.root=keep"),
        s("view v2"),
        s("label v2 containerd.io/gc.root=keep"),
        s("view v3 a3"),
        s("view"),
        // Mounts of a committed snapshot, of a view.
        s("mounts /z c1"),
        s("mount -- /z v1"),
        s("commit c3 b1"),
        s("prepare d1 c3"),
        s("list"),
        s("ls"),
        s("tree"),
        s("info c1"),
        s("info v1"),
        s("info d1"),
        s("info nope"),
        s("info"),
        s("info a b"),
        s("usage"),
        s("usage -b"),
        s("usage -b c1 a2 v2"),
        s("usage c1 nope"),
        // One label per call: stock ctr sends several in Go's random order.
        s("label c1 foo=bar"),
        s("label c1 x"),
        s("label c1"),
        s("label c1 foo="),
        s("label nope x=y"),
        s("label"),
        s("info c1"),
        // A parent with children, an unknown key, nothing.
        s("rm c1"),
        s("rm nope"),
        s("rm"),
        // Removal stops at the first failure.
        s("del v1 nope a2"),
        s("remove d1"),
        s("delete d1"),
        s("ls"),
        s("tree"),
    ]
}

/// What does not depend on one snapshotter: the default (overlayfs, even
/// when the namespace names another), the environment variable, an unknown
/// snapshotter.
fn default_steps() -> Vec<EnvStep> {
    let s = |x: &str| EnvStep(None, step(x));
    vec![
        s("snapshots ls"),
        s("snapshot --snapshotter nope ls"),
        s("snapshots --snapshotter nope prepare x"),
        s("snapshots --snapshotter nope info x"),
        EnvStep(Some(("CONTAINERD_SNAPSHOTTER", "native")), step("snapshots prepare e1")),
        s("snapshots --snapshotter native ls"),
        s("ns create lbl containerd.io/defaults/snapshotter=native"),
        s("-n lbl snapshots prepare l1"),
        s("-n lbl snapshots --snapshotter native ls"),
        s("-n lbl snapshots --snapshotter overlayfs ls"),
        s("snapshots ls"),
    ]
}

/// The daemon's temporary directory -> `DIR`, and each snapshotter
/// snapshot id (`.../snapshots/<n>`) -> its order of first appearance in
/// the transcript, so that two daemons numbering differently compare equal
/// while a mount still has to name the right snapshot.
fn mask_paths(outputs: Vec<String>, dir: &str) -> Vec<String> {
    const MARK: &str = "/snapshots/";
    let mut ids: HashMap<String, usize> = HashMap::new();
    outputs
        .into_iter()
        .map(|o| {
            let o = o.replace(dir, "DIR");
            let mut out = String::with_capacity(o.len());
            let mut rest = o.as_str();
            while let Some(i) = rest.find(MARK) {
                let after = &rest[i + MARK.len()..];
                let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                out.push_str(&rest[..i + MARK.len()]);
                if digits > 0 {
                    let next = ids.len() + 1;
                    let n = *ids.entry(after[..digits].to_string()).or_insert(next);
                    out.push_str(&format!("ID{n}"));
                }
                rest = &after[digits..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// `snapshots label` prints the labels in Go's random map order: sort them.
fn sort_label_output(output: String, step: &Step) -> String {
    if !step.0.iter().any(|a| a == "label") {
        return output;
    }
    let mut lines: Vec<String> = output.lines().map(str::to_string).collect();
    if lines.len() > 2 && lines[2] == "--- stderr" {
        let mut labels: Vec<&str> = lines[1].split(',').collect();
        labels.sort();
        lines[1] = labels.join(",");
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

/// Run the sequence for one snapshotter with one client on a fresh daemon;
/// the outputs with paths and ids masked and label order sorted.
fn transcript(ctr: &'static str, tag: &str, server: Server, sn: &str) -> Vec<String> {
    let daemon = match server {
        Server::Containerd => Daemon::start(tag, server),
        // Whatever plugins the workspace built, snapshotters included.
        Server::Crated => Daemon::start_with_plugins(tag, server, &built_crated_plugins()),
    };
    let sock = daemon.socket();
    let mut steps = snapshotter_steps(sn);
    if sn == "overlayfs" {
        steps.extend(default_steps());
    }
    let outputs =
        steps.iter().map(|EnvStep(env, s)| sort_label_output(run_env(ctr, &sock, s, env.as_slice()), s)).collect();
    let outputs = mask_paths(outputs, &daemon.dir().display().to_string());
    drop(daemon);
    outputs.iter().map(|o| mask(o)).collect()
}

/// Our ctr and stock ctr, each against its own stock containerd.
#[test]
fn snapshots_parity() {
    for sn in ["native", "overlayfs"] {
        let stock =
            std::thread::spawn(move || transcript(STOCK_CTR, &format!("snap-stock-{sn}"), Server::Containerd, sn));
        let ours = transcript(OURS, &format!("snap-ours-{sn}"), Server::Containerd, sn);
        let stock = stock.join().expect("stock run panicked");
        assert_same("stock", &stock, "ours", &ours);
        // The sequence did what it says (guards against two clients failing
        // the same way, e.g. a daemon without the snapshotter).
        let all = stock.concat();
        assert!(all.contains(&format!("$ ctr snapshots --snapshotter {sn} prepare a1\n--- stderr\n[rc=0]")), "{all}");
        assert!(all.contains("snapshot \"a1\": already exists"), "{all}");
        assert!(all.contains("cannot remove snapshot with child: failed precondition"), "{all}");
        assert!(all.contains("\"Kind\": \"View\""), "{all}");
        assert!(all.contains(" c3\n    \\_ d1\n"), "{all}");
    }
}

/// Against crated: stock ctr must see the same answers from crated as from
/// containerd, and our ctr must answer exactly as stock ctr does against
/// crated. Needs crated's snapshotter plugins (native and overlayfs).
#[test]
fn snapshots_parity_against_crated() {
    for sn in ["native", "overlayfs"] {
        let containerd =
            std::thread::spawn(move || transcript(STOCK_CTR, &format!("snap-containerd-{sn}"), Server::Containerd, sn));
        let crated_stock = transcript(STOCK_CTR, &format!("snap-crated-{sn}"), Server::Crated, sn);
        let containerd = containerd.join().expect("containerd run panicked");
        // The one deliberate difference: crated names the loaded
        // snapshotters when a request names another one.
        let listed = " (loaded snapshotters: native, overlayfs)";
        if sn == "overlayfs" {
            // (the run that asks for an unknown snapshotter)
            assert!(crated_stock.iter().any(|s| s.contains(&format!("snapshotter not loaded: nope{listed}"))));
        }
        let crated_as_containerd: Vec<String> = crated_stock.iter().map(|s| s.replace(listed, "")).collect();
        assert_same("stock ctr against containerd", &containerd, "stock ctr against crated", &crated_as_containerd);

        let crated_ours = transcript(OURS, &format!("snap-crated-ours-{sn}"), Server::Crated, sn);
        assert_same("stock ctr against crated", &crated_stock, "our ctr against crated", &crated_ours);
    }
}

#[test]
fn masking_paths_and_ids() {
    let outs = vec![
        "mount -t bind /tmp/d/root/x/snapshots/7/fs /m -o rw\n".to_string(),
        "lowerdir=/tmp/d/root/x/snapshots/7/fs,upperdir=/tmp/d/root/x/snapshots/12/fs /snapshots/\n".to_string(),
    ];
    assert_eq!(
        mask_paths(outs, "/tmp/d"),
        [
            "mount -t bind DIR/root/x/snapshots/ID1/fs /m -o rw\n",
            "lowerdir=DIR/root/x/snapshots/ID1/fs,upperdir=DIR/root/x/snapshots/ID2/fs /snapshots/\n"
        ]
    );
    let label = step("snapshots label c1 x");
    assert_eq!(
        sort_label_output("$ ctr snapshots label c1 x\nx=true,a=b\n--- stderr\n[rc=0]\n".into(), &label),
        "$ ctr snapshots label c1 x\na=b,x=true\n--- stderr\n[rc=0]\n"
    );
}
