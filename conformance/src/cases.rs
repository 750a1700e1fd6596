//! The cases. Modelled on what containerd's snapshotter test suite checks,
//! plus the Snapshots API's own rules (error codes, filters, label limits,
//! removal of parents). Each case is an async function over a [`Case`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::{Info, Kind};
use tonic::Code;

use crate::case::{
    apply, ensure, expect_code, expect_tree, kind_name, read_tree, rpc, tree, Case, CaseError, CaseResult, Change,
    Entry, Tree, GC_ROOT,
};

type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// A named case.
pub(crate) struct CaseDef {
    pub(crate) name: &'static str,
    pub(crate) run: fn(Case) -> CaseFuture,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        pub(crate) const ALL: &[CaseDef] = &[
            $(CaseDef { name: stringify!($name), run: |c| Box::pin($name(c)) },)*
        ];
    };
}

cases!(
    lifecycle,
    stat_kinds_and_times,
    update_labels,
    parent_chain_depth_12,
    long_chain_130_layers,
    transitivity,
    deleted_and_replaced_in_child,
    rename_and_hardlink_from_lower_layer,
    chown_and_permissions_survive_commit,
    view_is_read_only,
    usage_of_committed_and_active,
    list_with_filters,
    list_matches_stat,
    remove_parent_with_children_refused,
    remove_intermediate_refused,
    remove_and_reuse_keys,
    duplicate_key_already_exists,
    unknown_key_not_found,
    parent_not_committed_refused,
    view_of_active_refused,
    commit_of_non_active_refused,
    mounts_of_committed_refused,
    labels_over_size_limit_refused,
    cleanup_succeeds,
    concurrent_prepares_on_one_parent,
);

/// containerd's limit on a label: key and value together at most 4096 bytes.
const MAX_LABEL_SIZE: usize = 4096;

/// Slack allowed between the suite's clock and the snapshotter's timestamps.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

fn time_of(ts: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    ts.as_ref().and_then(|t| SystemTime::try_from(*t).ok())
}

/// Prepare -> write -> commit -> child sees parent -> change in child ->
/// commit -> a view sees the merged result and is read-only.
async fn lifecycle(c: Case) -> CaseResult {
    let (base_key, base, child_key, child, view) =
        (c.key("base-active"), c.key("base"), c.key("child-active"), c.key("child"), c.key("view"));
    let initial = [
        Change::File("/foo", b"foo\n", 0o777),
        Change::File("/gone", b"to be deleted\n", 0o644),
        Change::Dir("/a", 0o755),
        Change::Dir("/a/b", 0o755),
        Change::Dir("/a/b/c", 0o755),
    ];
    let initial_tree = tree([
        ("foo", Entry::file(b"foo\n", 0o777)),
        ("gone", Entry::file(b"to be deleted\n", 0o644)),
        ("a", Entry::dir(0o755)),
        ("a/b", Entry::dir(0o755)),
        ("a/b/c", Entry::dir(0o755)),
    ]);
    {
        let dir = c.prepare_mounted(&base_key, "").await?;
        apply(dir.path(), &initial)?;
        expect_tree(dir.path(), &initial_tree)?;
        let info = c.stat(&base_key).await?;
        ensure!(info.kind == Kind::Active as i32, "{base_key}: kind {}, want active", kind_name(info.kind));
        c.commit(&base, &base_key).await?;
    }
    expect_code(c.snapshots.stat(&base_key).await, &[Code::NotFound], "stat the active key after commit")?;
    let info = c.stat(&base).await?;
    ensure!(info.kind == Kind::Committed as i32, "{base}: kind {}, want committed", kind_name(info.kind));
    ensure!(info.parent.is_empty(), "{base}: parent {:?}, want none", info.parent);

    {
        let dir = c.prepare_mounted(&child_key, &base).await?;
        expect_tree(dir.path(), &initial_tree)?;
        apply(
            dir.path(),
            &[
                Change::File("/bar", b"bar\n", 0o777),
                Change::File("/foo", b"bar\n", 0o777),
                Change::RemoveAll("/a/b"),
                Change::RemoveAll("/gone"),
            ],
        )?;
        let info = c.stat(&child_key).await?;
        ensure!(info.kind == Kind::Active as i32, "{child_key}: kind {}, want active", kind_name(info.kind));
        ensure!(info.parent == base, "{child_key}: parent {:?}, want {base:?}", info.parent);
        c.commit(&child, &child_key).await?;
    }
    let info = c.stat(&child).await?;
    ensure!(info.kind == Kind::Committed as i32, "{child}: kind {}, want committed", kind_name(info.kind));
    ensure!(info.parent == base, "{child}: parent {:?}, want {base:?}", info.parent);

    let merged =
        tree([("foo", Entry::file(b"bar\n", 0o777)), ("bar", Entry::file(b"bar\n", 0o777)), ("a", Entry::dir(0o755))]);
    let mounts = c.view(&view, &child).await?;
    {
        let dir = c.mount(&mounts)?;
        expect_tree(dir.path(), &merged)?;
        let write = std::fs::write(dir.path().join("new"), b"x");
        ensure!(write.is_err(), "writing into the view of {child} succeeded; a view must be read-only");
    }
    let info = c.stat(&view).await?;
    ensure!(info.kind == Kind::View as i32, "{view}: kind {}, want view", kind_name(info.kind));
    ensure!(info.parent == child, "{view}: parent {:?}, want {child:?}", info.parent);
    c.remove(&view).await?;
    expect_code(c.snapshots.remove(&base).await, &[Code::FailedPrecondition], "remove a parent with a child")?;
    c.remove(&child).await?;
    c.remove(&base).await
}

/// Stat of each kind: kind, parent, name, labels, created == updated, and
/// both within the time of the call.
async fn stat_kinds_and_times(c: Case) -> CaseResult {
    let t1 = SystemTime::now();
    let fixtures = base_fixtures(&c).await?;
    let t2 = SystemTime::now();
    for (key, kind, parent) in fixtures {
        let info = c.stat(&key).await?;
        check_info(&info, &key, kind, &parent)?;
        ensure!(info.labels == c.labels(&[]), "{key}: labels {:?}, want {:?}", info.labels, c.labels(&[]));
        let created = time_of(&info.created_at);
        let updated = time_of(&info.updated_at);
        ensure!(created.is_some() && updated.is_some(), "{key}: created {created:?} updated {updated:?}, want times");
        let created = created.unwrap_or(SystemTime::UNIX_EPOCH);
        ensure!(
            created + CLOCK_SLACK >= t1 && created <= t2 + CLOCK_SLACK,
            "{key}: created {created:?} outside the calls' time {t1:?}..{t2:?}"
        );
        ensure!(info.created_at == info.updated_at, "{key}: updated {:?} != created {:?}", updated, created);
    }
    Ok(())
}

/// c1 committed; c2 committed on c1; a1 active on c2; a2 active; v1 view of
/// c2; v2 view of nothing. Returns (key, kind, parent) of each.
async fn base_fixtures(c: &Case) -> CaseResult<Vec<(String, Kind, String)>> {
    let k = |n: &str| c.key(n);
    c.prepare(&k("c1-a"), "").await?;
    c.commit(&k("c1"), &k("c1-a")).await?;
    c.prepare(&k("c2-a"), &k("c1")).await?;
    c.commit(&k("c2"), &k("c2-a")).await?;
    c.prepare(&k("a1"), &k("c2")).await?;
    c.prepare(&k("a2"), "").await?;
    c.view(&k("v1"), &k("c2")).await?;
    c.view(&k("v2"), "").await?;
    Ok(vec![
        (k("c1"), Kind::Committed, String::new()),
        (k("c2"), Kind::Committed, k("c1")),
        (k("a1"), Kind::Active, k("c2")),
        (k("a2"), Kind::Active, String::new()),
        (k("v1"), Kind::View, k("c2")),
        (k("v2"), Kind::View, String::new()),
    ])
}

fn check_info(info: &Info, key: &str, kind: Kind, parent: &str) -> CaseResult {
    ensure!(info.name == key, "stat {key}: name {:?}", info.name);
    ensure!(info.kind == kind as i32, "{key}: kind {}, want {}", kind_name(info.kind), kind_name(kind as i32));
    ensure!(info.parent == parent, "{key}: parent {:?}, want {parent:?}", info.parent);
    Ok(())
}

/// Update of labels: without a mask (all labels replaced, parent ignored),
/// with `labels.<key>` paths, with `labels`; `parent` is immutable.
async fn update_labels(c: Case) -> CaseResult {
    let fixtures = base_fixtures(&c).await?;
    let s = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    for (key, kind, parent) in fixtures {
        let before = c.stat(&key).await?;
        let mut info = before.clone();
        info.parent = c.key("does-not-exist");
        info.labels = s(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), (GC_ROOT, "kept")]);
        let u1 = SystemTime::now();
        let updated = c.update(info, &[]).await?;
        let u2 = SystemTime::now();
        check_info(&updated, &key, kind, &parent)?;
        ensure!(updated.created_at == before.created_at, "{key}: update changed created_at");
        let at = time_of(&updated.updated_at).unwrap_or(SystemTime::UNIX_EPOCH);
        ensure!(
            at + CLOCK_SLACK >= u1 && at <= u2 + CLOCK_SLACK,
            "{key}: updated_at {at:?} outside the call's time {u1:?}..{u2:?}"
        );
        let want = s(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), (GC_ROOT, "kept")]);
        ensure!(updated.labels == want, "{key}: labels {:?} after update without mask, want {want:?}", updated.labels);
        ensure!(c.stat(&key).await?.labels == want, "{key}: stat after update disagrees with the update's answer");

        let mut info = updated.clone();
        info.labels = s(&[("l1", "updated"), ("l4", "v4")]);
        let updated = c.update(info, &["labels.l1", "labels.l2"]).await?;
        let want = s(&[("l1", "updated"), ("l3", "v3"), (GC_ROOT, "kept")]);
        ensure!(
            updated.labels == want,
            "{key}: labels {:?} after mask labels.l1,labels.l2, want {want:?}",
            updated.labels
        );

        let mut info = updated.clone();
        info.labels = s(&[("l4", "v4"), (GC_ROOT, "kept")]);
        let updated = c.update(info, &["labels"]).await?;
        let want = s(&[("l4", "v4"), (GC_ROOT, "kept")]);
        ensure!(updated.labels == want, "{key}: labels {:?} after mask labels, want {want:?}", updated.labels);
        ensure!(c.stat(&key).await?.labels == want, "{key}: stat after update disagrees with the update's answer");

        let mut info = updated.clone();
        info.parent = c.key("does-not-exist");
        let result = c.snapshots.update(info, &["parent"]).await;
        expect_code(result, &[Code::InvalidArgument], &format!("update {key} with mask parent"))?;
    }
    Ok(())
}

/// A chain of `depth` layers, each adding a file and overwriting a shared
/// one; the top sees every layer's file and the last write, and every
/// layer's parent is the one below.
async fn chain(c: &Case, depth: usize) -> CaseResult {
    let mut parent = String::new();
    let mut expected = Tree::new();
    for i in 0..depth {
        let name = c.key(&format!("layer-{i}"));
        let file = format!("layer-{i}");
        let changes = [
            Change::Bytes(file.clone(), format!("{i}\n").into_bytes()),
            Change::Bytes("top".into(), format!("{i}\n").into_bytes()),
        ];
        c.layer(&name, &parent, &changes).await?;
        expected.insert(file, Entry::file(format!("{i}\n").as_bytes(), 0o644));
        expected.insert("top".into(), Entry::file(format!("{i}\n").as_bytes(), 0o644));
        parent = name;
    }
    c.expect_view(&c.key("view"), &parent, &expected).await?;
    for i in (1..depth).rev() {
        let info = c.stat(&c.key(&format!("layer-{i}"))).await?;
        let want = c.key(&format!("layer-{}", i - 1));
        ensure!(info.parent == want, "layer-{i}: parent {:?}, want {want:?}", info.parent);
    }
    Ok(())
}

async fn parent_chain_depth_12(c: Case) -> CaseResult {
    chain(&c, 12).await
}

/// Deep enough that overlay's lowerdir list no longer fits in one page of
/// mount options.
async fn long_chain_130_layers(c: Case) -> CaseResult {
    chain(&c, 130).await
}

/// A <- B <- C: C sees A's file through B, and B's change over it.
async fn transitivity(c: Case) -> CaseResult {
    let (a, b) = (c.key("a"), c.key("b"));
    c.layer(&a, "", &[Change::File("/foo", b"foo\n", 0o644), Change::File("/kept", b"kept\n", 0o600)]).await?;
    c.layer(&b, &a, &[Change::File("/foo", b"foo bar\n", 0o644)]).await?;
    let info_b = c.stat(&b).await?;
    ensure!(info_b.parent == a, "{b}: parent {:?}, want {a:?}", info_b.parent);
    let info_parent = c.stat(&info_b.parent).await?;
    ensure!(info_parent.parent.is_empty(), "{a}: parent {:?}, want none", info_parent.parent);
    let dir = c.prepare_mounted(&c.key("c"), &b).await?;
    expect_tree(dir.path(), &tree([("foo", Entry::file(b"foo bar\n", 0o644)), ("kept", Entry::file(b"kept\n", 0o600))]))
}

/// Whiteouts and opaque directories: a file and a directory removed in a
/// child stay removed in the grandchild; a directory removed and recreated
/// shows only its new content.
async fn deleted_and_replaced_in_child(c: Case) -> CaseResult {
    let (l1, l2) = (c.key("l1"), c.key("l2"));
    c.layer(
        &l1,
        "",
        &[
            Change::File("/foo", b"foo\n", 0o644),
            Change::File("/foobar", b"foobar\n", 0o644),
            Change::Dir("/d", 0o755),
            Change::File("/d/old", b"old\n", 0o644),
            Change::Dir("/gone", 0o755),
            Change::File("/gone/f", b"f\n", 0o644),
        ],
    )
    .await?;
    c.layer(
        &l2,
        &l1,
        &[
            Change::RemoveAll("/foobar"),
            Change::RemoveAll("/gone"),
            Change::RemoveAll("/d"),
            Change::Dir("/d", 0o700),
            Change::File("/d/new", b"new\n", 0o644),
        ],
    )
    .await?;
    let expected = tree([
        ("foo", Entry::file(b"foo\n", 0o644)),
        ("d", Entry::dir(0o700)),
        ("d/new", Entry::file(b"new\n", 0o644)),
    ]);
    c.expect_view(&c.key("view"), &l2, &expected).await?;
    // And once more on top of an empty layer.
    let l3 = c.key("l3");
    c.layer(&l3, &l2, &[]).await?;
    c.expect_view(&c.key("view3"), &l3, &expected).await
}

/// Files moved or hard-linked away from a lower layer.
async fn rename_and_hardlink_from_lower_layer(c: Case) -> CaseResult {
    let (l1, l2) = (c.key("l1"), c.key("l2"));
    c.layer(
        &l1,
        "",
        &[
            Change::Dir("/dir1", 0o700),
            Change::File("/dir1/f1", b"Hello", 0o644),
            Change::Dir("/dir2", 0o700),
            Change::File("/dir2/f2", b"...", 0o644),
            Change::File("/moved", b"moved\n", 0o600),
            Change::Symlink("/link", "moved"),
        ],
    )
    .await?;
    c.layer(
        &l2,
        &l1,
        &[
            Change::Dir("/dir3", 0o700),
            Change::File("/dir3/f1", b"Hello", 0o644),
            Change::RemoveAll("/dir1"),
            Change::Hardlink { existing: "/dir2/f2", new: "/dir3/f2" },
            Change::RemoveAll("/dir2/f2"),
            Change::Rename("/moved", "/dir3/moved"),
            Change::RemoveAll("/link"),
            Change::Symlink("/link", "dir3/moved"),
        ],
    )
    .await?;
    let expected = tree([
        ("dir2", Entry::dir(0o700)),
        ("dir3", Entry::dir(0o700)),
        ("dir3/f1", Entry::file(b"Hello", 0o644)),
        ("dir3/f2", Entry::file(b"...", 0o644)),
        ("dir3/moved", Entry::file(b"moved\n", 0o600)),
        ("link", Entry::Symlink("dir3/moved".into())),
    ]);
    c.expect_view(&c.key("view"), &l2, &expected).await
}

/// Ownership changed in a child, and directory modes, survive commit.
async fn chown_and_permissions_survive_commit(c: Case) -> CaseResult {
    let (l1, l2) = (c.key("l1"), c.key("l2"));
    c.layer(
        &l1,
        "",
        &[
            Change::Dir("/private", 0o700),
            Change::Dir("/sticky", 0o1777),
            Change::File("/owned", b"x\n", 0o640),
            Change::File("/private/f", b"f\n", 0o600),
        ],
    )
    .await?;
    c.layer(&l2, &l1, &[Change::Chown("/owned", 1000, 1001), Change::Chown("/private", 1002, 1003)]).await?;
    let expected = tree([
        ("private", Entry::Dir { mode: 0o700, owner: (1002, 1003) }),
        ("private/f", Entry::file(b"f\n", 0o600)),
        ("sticky", Entry::dir(0o1777)),
        ("owned", Entry::File { content: b"x\n".to_vec(), mode: 0o640, owner: (1000, 1001) }),
    ]);
    c.expect_view(&c.key("view"), &l2, &expected).await
}

/// A view, mounted, refuses writes; so does a view of nothing.
async fn view_is_read_only(c: Case) -> CaseResult {
    let base = c.key("base");
    c.layer(&base, "", &[Change::File("/f", b"f\n", 0o644)]).await?;
    for (view, parent) in [(c.key("view"), base.clone()), (c.key("empty-view"), String::new())] {
        let mounts = c.view(&view, &parent).await?;
        let dir = c.mount(&mounts)?;
        ensure!(std::fs::write(dir.path().join("new"), b"x").is_err(), "creating a file in view {view} succeeded");
        if !parent.is_empty() {
            ensure!(
                std::fs::OpenOptions::new().append(true).open(dir.path().join("f")).is_err(),
                "opening a file of view {view} for writing succeeded"
            );
        }
    }
    Ok(())
}

/// Usage of a committed layer without a parent counts exactly what was
/// written; usage of an active child and of its commit count at least what
/// the child wrote.
async fn usage_of_committed_and_active(c: Case) -> CaseResult {
    let (base, child) = (c.key("base"), c.key("child"));
    let big = vec![b'a'; 64 * 1024];
    let small = vec![b'b'; 4 * 1024];
    // root + 2 files + dir + file in it
    let written = (big.len() + small.len() + 100) as i64;
    let base_changes = [
        Change::Bytes("big".into(), big.clone()),
        Change::Bytes("small".into(), small.clone()),
        Change::Dir("/d", 0o755),
        Change::Bytes("d/hundred".into(), vec![b'c'; 100]),
    ];
    c.layer(&base, "", &base_changes).await?;
    let (size, inodes) = c.usage(&base).await?;
    ensure!(inodes == 5, "usage of {base}: {inodes} inodes, want 5 (root, big, small, d, d/hundred)");
    ensure!(
        size >= written && size <= written + 5 * 64 * 1024,
        "usage of {base}: {size} bytes, want about {written} (the written files)"
    );

    let active = c.key("child-active");
    let dir = c.prepare_mounted(&active, &base).await?;
    apply(dir.path(), &[Change::Bytes("child-file".into(), vec![b'd'; 32 * 1024])])?;
    let (size, inodes) = c.usage(&active).await?;
    // Whether a child's usage counts a copy of its parent depends on how the
    // snapshotter stores layers (native copies them): only a lower bound.
    ensure!(inodes >= 2, "usage of active {active}: {inodes} inodes, want at least 2 (root, child-file)");
    ensure!(size >= 32 * 1024, "usage of active {active}: {size} bytes, want at least 32768");
    drop(dir);
    c.commit(&child, &active).await?;
    let (size, inodes) = c.usage(&child).await?;
    ensure!(inodes >= 2, "usage of {child}: {inodes} inodes, want at least 2 (root, child-file)");
    ensure!(size >= 32 * 1024, "usage of {child}: {size} bytes, want at least 32768");
    Ok(())
}

/// List with filters: by label, parent, kind and name; comma is AND,
/// several filters are OR.
async fn list_with_filters(c: Case) -> CaseResult {
    let case_label = "conformance.case";
    let mark = c.prefix().to_string();
    let labelled = |extra: &[(&str, &str)]| {
        let mut l = c.labels(extra);
        l.insert(case_label.to_string(), mark.clone());
        l
    };
    let k = |n: &str| c.key(n);
    c.try_prepare_labelled(&k("c1-a"), "", labelled(&[])).await.map_err(rpc("prepare c1-a"))?;
    c.try_commit_labelled(&k("c1"), &k("c1-a"), labelled(&[("foo", "bar")])).await.map_err(rpc("commit c1"))?;
    c.try_prepare_labelled(&k("a1"), &k("c1"), labelled(&[("foo", "bar")])).await.map_err(rpc("prepare a1"))?;
    c.try_prepare_labelled(&k("a2"), &k("c1"), labelled(&[("foo", "baz")])).await.map_err(rpc("prepare a2"))?;
    c.try_view_labelled(&k("v1"), &k("c1"), labelled(&[])).await.map_err(rpc("view v1"))?;
    c.try_prepare_labelled(&k("a3"), "", labelled(&[])).await.map_err(rpc("prepare a3"))?;

    let ours = format!("labels.\"{case_label}\"==\"{mark}\"");
    let set = |names: &[&str]| names.iter().map(|n| k(n)).collect::<BTreeSet<_>>();
    let checks: Vec<(Vec<String>, BTreeSet<String>)> = vec![
        (vec![ours.clone()], set(&["c1", "a1", "a2", "v1", "a3"])),
        (vec![format!("{ours},labels.\"foo\"==bar")], set(&["c1", "a1"])),
        (vec![format!("{ours},labels.foo")], set(&["c1", "a1", "a2"])),
        (vec![format!("{ours},parent==\"{}\"", k("c1"))], set(&["a1", "a2", "v1"])),
        (vec![format!("{ours},kind==committed")], set(&["c1"])),
        (vec![format!("{ours},kind==active")], set(&["a1", "a2", "a3"])),
        (vec![format!("{ours},kind==view")], set(&["v1"])),
        (vec![format!("{ours},name==\"{}\"", k("a2"))], set(&["a2"])),
        (vec![format!("{ours},kind==view"), format!("{ours},labels.\"foo\"==baz")], set(&["v1", "a2"])),
        (vec![format!("{ours},labels.\"foo\"!=bar")], set(&["a2", "v1", "a3"])),
    ];
    for (filters, want) in checks {
        let got = c.list_names(&filters).await?;
        ensure!(got == want, "list {filters:?}: got {got:?}, want {want:?}");
    }
    Ok(())
}

/// Every snapshot List returns agrees with Stat of it.
async fn list_matches_stat(c: Case) -> CaseResult {
    let fixtures = base_fixtures(&c).await?;
    let listed = c.snapshots.list(&[]).await.map_err(rpc("list"))?;
    for (key, _, _) in fixtures {
        let from_list = listed.iter().find(|i| i.name == key);
        ensure!(from_list.is_some(), "list: {key} is missing");
        let stat = c.stat(&key).await?;
        ensure!(from_list == Some(&stat), "list and stat of {key} differ: {from_list:?} vs {stat:?}");
    }
    Ok(())
}

/// Removing a committed parent that has an active child and a view child is
/// refused with FailedPrecondition and changes nothing.
async fn remove_parent_with_children_refused(c: Case) -> CaseResult {
    let (parent, active, view) = (c.key("parent"), c.key("active"), c.key("view"));
    c.layer(&parent, "", &[Change::File("/f", b"f\n", 0o644)]).await?;
    c.prepare(&active, &parent).await?;
    c.view(&view, &parent).await?;
    let before: Vec<Info> = vec![c.stat(&parent).await?, c.stat(&active).await?, c.stat(&view).await?];
    expect_code(c.snapshots.remove(&parent).await, &[Code::FailedPrecondition], "remove a parent with children")?;
    for info in &before {
        let now = c.stat(&info.name).await?;
        ensure!(&now == info, "{} changed after a refused remove: {now:?}, was {info:?}", info.name);
    }
    for key in [&active, &view] {
        let mounts = c.mounts(key).await?;
        let dir = c.mount(&mounts)?;
        expect_tree(dir.path(), &tree([("f", Entry::file(b"f\n", 0o644))]))?;
    }
    c.remove(&view).await?;
    c.remove(&active).await?;
    c.remove(&parent).await?;
    for key in [&parent, &active, &view] {
        expect_code(c.snapshots.stat(key).await, &[Code::NotFound], &format!("stat {key} after remove"))?;
    }
    Ok(())
}

/// base <- inter <- top: removing inter is refused until top is gone.
async fn remove_intermediate_refused(c: Case) -> CaseResult {
    let (base, inter, top) = (c.key("base"), c.key("inter"), c.key("top"));
    c.layer(&base, "", &[]).await?;
    c.layer(&inter, &base, &[]).await?;
    c.prepare(&top, &inter).await?;
    expect_code(c.snapshots.remove(&inter).await, &[Code::FailedPrecondition], "remove an intermediate layer")?;
    c.remove(&top).await?;
    c.remove(&inter).await?;
    c.remove(&base).await
}

/// A removed key can be used again, for any kind.
async fn remove_and_reuse_keys(c: Case) -> CaseResult {
    let (committed, reuse) = (c.key("committed-1"), c.key("reuse-1"));
    c.prepare(&c.key("committed-a"), "").await?;
    c.commit(&committed, &c.key("committed-a")).await?;
    c.prepare(&reuse, &committed).await?;
    c.remove(&reuse).await?;
    c.view(&reuse, &committed).await?;
    c.remove(&reuse).await?;
    c.prepare(&reuse, "").await?;
    c.remove(&committed).await?;
    c.commit(&committed, &reuse).await?;
    check_info(&c.stat(&committed).await?, &committed, Kind::Committed, "")
}

/// A key in use, by any kind, cannot be prepared, viewed or committed to.
async fn duplicate_key_already_exists(c: Case) -> CaseResult {
    let (base, active, view, other) = (c.key("base"), c.key("active"), c.key("view"), c.key("other"));
    c.layer(&base, "", &[]).await?;
    c.prepare(&active, &base).await?;
    c.view(&view, &base).await?;
    c.prepare(&other, "").await?;
    for key in [&base, &active, &view] {
        expect_code(c.try_prepare(key, &base).await, &[Code::AlreadyExists], &format!("prepare existing {key}"))?;
        expect_code(c.try_view(key, &base).await, &[Code::AlreadyExists], &format!("view existing {key}"))?;
        expect_code(c.try_commit(key, &other).await, &[Code::AlreadyExists], &format!("commit onto existing {key}"))?;
    }
    // The refused commit left the active snapshot in place.
    check_info(&c.stat(&other).await?, &other, Kind::Active, "")
}

/// An unknown key is NotFound for every call that takes one.
async fn unknown_key_not_found(c: Case) -> CaseResult {
    let missing = c.key("missing");
    let s = &c.snapshots;
    expect_code(s.stat(&missing).await, &[Code::NotFound], "stat")?;
    expect_code(s.mounts(&missing).await, &[Code::NotFound], "mounts")?;
    expect_code(s.remove(&missing).await, &[Code::NotFound], "remove")?;
    expect_code(s.usage(&missing).await, &[Code::NotFound], "usage")?;
    let info = Info { name: missing.clone(), labels: c.labels(&[("a", "b")]), ..Default::default() };
    expect_code(s.update(info, &[]).await, &[Code::NotFound], "update")?;
    expect_code(c.try_commit(&c.key("name"), &missing).await, &[Code::NotFound], "commit")?;
    expect_code(c.try_prepare(&c.key("child"), &missing).await, &[Code::NotFound], "prepare on a missing parent")?;
    expect_code(c.try_view(&c.key("view"), &missing).await, &[Code::NotFound], "view of a missing parent")?;
    // Nothing was left behind by the refused calls.
    let left = c.list_names(&[]).await?;
    ensure!(left.is_empty(), "refused calls left snapshots behind: {left:?}");
    Ok(())
}

/// Preparing on an active snapshot (not committed) is refused.
async fn parent_not_committed_refused(c: Case) -> CaseResult {
    let active = c.key("active");
    c.prepare(&active, "").await?;
    let child = c.key("child");
    let result = c.try_prepare(&child, &active).await;
    expect_code(result, &[Code::FailedPrecondition, Code::InvalidArgument], "prepare on an active parent")?;
    expect_code(c.snapshots.stat(&child).await, &[Code::NotFound], "stat the refused child")?;
    check_info(&c.stat(&active).await?, &active, Kind::Active, "")
}

/// A view of an active snapshot (not committed) is refused.
async fn view_of_active_refused(c: Case) -> CaseResult {
    let active = c.key("active");
    c.prepare(&active, "").await?;
    let view = c.key("view");
    let result = c.try_view(&view, &active).await;
    expect_code(result, &[Code::FailedPrecondition, Code::InvalidArgument], "view of an active snapshot")?;
    expect_code(c.snapshots.stat(&view).await, &[Code::NotFound], "stat the refused view")?;
    Ok(())
}

/// Only an active snapshot can be committed: not a committed one, not a view.
async fn commit_of_non_active_refused(c: Case) -> CaseResult {
    let (base, view) = (c.key("base"), c.key("view"));
    c.layer(&base, "", &[]).await?;
    c.view(&view, &base).await?;
    for key in [&base, &view] {
        let name = c.key(&format!("from-{}", key.rsplit('/').next().unwrap_or_default()));
        let result = c.try_commit(&name, key).await;
        expect_code(result, &[Code::FailedPrecondition], &format!("commit {key}"))?;
        expect_code(c.snapshots.stat(&name).await, &[Code::NotFound], &format!("stat the refused commit {name}"))?;
    }
    check_info(&c.stat(&view).await?, &view, Kind::View, &base)
}

/// Mounts of a committed snapshot are refused: only active snapshots and
/// views are mounted.
async fn mounts_of_committed_refused(c: Case) -> CaseResult {
    let base = c.key("base");
    c.layer(&base, "", &[]).await?;
    expect_code(c.snapshots.mounts(&base).await, &[Code::FailedPrecondition], "mounts of a committed snapshot")
}

/// Labels whose key and value exceed 4096 bytes are InvalidArgument on
/// Prepare, View, Commit and Update; at the limit they are accepted.
async fn labels_over_size_limit_refused(c: Case) -> CaseResult {
    let key = "k".to_string();
    let at_limit = c.labels(&[(&key, &"v".repeat(MAX_LABEL_SIZE - key.len()))]);
    let over = c.labels(&[(&key, &"v".repeat(MAX_LABEL_SIZE - key.len() + 1))]);
    let long_key = "k".repeat(MAX_LABEL_SIZE + 1);
    let over_key = c.labels(&[(&long_key, "")]);

    let (base, active) = (c.key("base"), c.key("active"));
    c.try_prepare_labelled(&active, "", at_limit.clone()).await.map_err(rpc("prepare with a label at the limit"))?;
    for (what, labels) in [("value", &over), ("key", &over_key)] {
        let refused = c.key(&format!("refused-{what}"));
        let result = c.try_prepare_labelled(&refused, "", labels.clone()).await;
        expect_code(result, &[Code::InvalidArgument], &format!("prepare with an oversized label {what}"))?;
        let result = c.try_view_labelled(&refused, "", labels.clone()).await;
        expect_code(result, &[Code::InvalidArgument], &format!("view with an oversized label {what}"))?;
        expect_code(c.snapshots.stat(&refused).await, &[Code::NotFound], "stat a refused snapshot")?;
        let result = c.try_commit_labelled(&base, &active, labels.clone()).await;
        expect_code(result, &[Code::InvalidArgument], &format!("commit with an oversized label {what}"))?;
        check_info(&c.stat(&active).await?, &active, Kind::Active, "")?;
        let info = Info { name: active.clone(), labels: labels.clone(), ..Default::default() };
        let result = c.snapshots.update(info, &[]).await;
        expect_code(result, &[Code::InvalidArgument], &format!("update with an oversized label {what}"))?;
        let labels_now = c.stat(&active).await?.labels;
        ensure!(labels_now == at_limit, "a refused update changed the labels of {active}");
    }
    c.try_commit_labelled(&base, &active, at_limit).await.map_err(rpc("commit with a label at the limit"))
}

/// Cleanup succeeds and keeps every snapshot that is still in use.
async fn cleanup_succeeds(c: Case) -> CaseResult {
    let (base, active) = (c.key("base"), c.key("active"));
    c.layer(&base, "", &[Change::File("/f", b"f\n", 0o644)]).await?;
    c.prepare(&active, &base).await?;
    c.prepare(&c.key("dropped"), &base).await?;
    c.remove(&c.key("dropped")).await?;
    c.snapshots.cleanup().await.map_err(rpc("cleanup"))?;
    let mounts = c.mounts(&active).await?;
    let dir = c.mount(&mounts)?;
    expect_tree(dir.path(), &tree([("f", Entry::file(b"f\n", 0o644))]))
}

/// 16 prepares on one parent at once: all succeed, with distinct mounts, and
/// each child writes without the others seeing it.
async fn concurrent_prepares_on_one_parent(c: Case) -> CaseResult {
    const CHILDREN: usize = 16;
    let base = c.key("base");
    c.layer(&base, "", &[Change::File("/shared", b"shared\n", 0o644)]).await?;
    let prepares = (0..CHILDREN).map(|i| {
        let (c, base) = (c.clone(), base.clone());
        async move { c.prepare(&c.key(&format!("child-{i}")), &base).await }
    });
    let all = futures::future::join_all(prepares).await;
    let mut mounts = Vec::new();
    for (i, result) in all.into_iter().enumerate() {
        mounts.push(result.map_err(|e| CaseError::Check(format!("child-{i}: {e}")))?);
    }
    let distinct: BTreeSet<String> = mounts.iter().map(|m| format!("{m:?}")).collect();
    ensure!(distinct.len() == CHILDREN, "{CHILDREN} prepares returned {} distinct mount lists", distinct.len());
    let mut dirs = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let dir = c.mount(m)?;
        apply(dir.path(), &[Change::Bytes(format!("child-{i}"), format!("{i}\n").into_bytes())])?;
        dirs.push(dir);
    }
    for (i, dir) in dirs.iter().enumerate() {
        let actual =
            read_tree(dir.path()).map_err(|source| CaseError::Io { what: format!("read child-{i}"), source })?;
        let names: BTreeSet<String> = actual.into_keys().collect();
        let want: BTreeSet<String> = ["shared".to_string(), format!("child-{i}")].into_iter().collect();
        ensure!(names == want, "child-{i} sees {names:?}, want {want:?}");
    }
    Ok(())
}
