//! Property tests of the garbage collector's marking: on random graphs the
//! tricolor [`mark`] reaches what a plain breadth-first search reaches, and
//! on random stores (records, reference labels, leases that are expired or
//! flat) the objects the collector keeps are those a direct fixed point of
//! containerd's rules keeps.

use std::collections::{BTreeMap, HashSet, VecDeque};

use crated_plugin_metadata::gc::{
    build_graph, live, mark, Graph, Kind, LeasedResource, Node, StoreView, FLAT_LABEL, ROOT_LABEL,
};
use proptest::prelude::*;

fn bfs(g: &Graph) -> HashSet<Node> {
    let mut seen: HashSet<Node> = g.roots.iter().cloned().collect();
    let mut queue: VecDeque<Node> = g.roots.iter().cloned().collect();
    while let Some(n) = queue.pop_front() {
        for m in g.edges.get(&n).into_iter().flatten() {
            if seen.insert(m.clone()) {
                queue.push_back(m.clone());
            }
        }
    }
    seen
}

fn node(i: usize) -> Node {
    let kind = [Kind::Content, Kind::Snapshot, Kind::Image, Kind::Lease][i % 4];
    Node::new(kind, if i.is_multiple_of(3) { "a" } else { "b" }, &format!("k{i}"))
}

proptest! {
    #[test]
    fn mark_equals_bfs(
        n in 1usize..40,
        edges in proptest::collection::vec((0usize..40, 0usize..40), 0..120),
        roots in proptest::collection::vec(0usize..40, 0..6),
    ) {
        let mut g = Graph::default();
        for (a, b) in edges {
            g.edges.entry(node(a % n)).or_default().push(node(b % n));
        }
        g.roots = roots.into_iter().map(|r| node(r % n)).collect();
        prop_assert_eq!(mark(&g), bfs(&g));
    }
}

const NOW: i64 = 1_700_000_000;
const PAST: &str = "2000-01-01T00:00:00Z";
const FUTURE: &str = "2999-01-01T00:00:00Z";
const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "native"];

/// A label drawn from the vocabulary the collector reads.
#[derive(Debug, Clone)]
enum LabelGen {
    Root,
    ContentRef(String, usize),
    SnapshotRef(usize, String, usize),
    Other,
}

fn label_gen() -> impl Strategy<Value = LabelGen> {
    prop_oneof![
        Just(LabelGen::Root),
        (prop_oneof![Just("".to_string()), Just(".l.0".to_string()), Just(".config".to_string())], 0usize..8)
            .prop_map(|(s, i)| LabelGen::ContentRef(s, i)),
        (0usize..2, prop_oneof![Just("".to_string()), Just("/x".to_string())], 0usize..6)
            .prop_map(|(sn, s, i)| LabelGen::SnapshotRef(sn, s, i)),
        Just(LabelGen::Other),
    ]
}

fn labels_of(gens: &[LabelGen]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for g in gens {
        match g {
            LabelGen::Root => {
                m.insert(ROOT_LABEL.to_string(), "yes".to_string());
            }
            LabelGen::ContentRef(suffix, i) => {
                m.insert(format!("containerd.io/gc.ref.content{suffix}"), format!("c{i}"));
            }
            LabelGen::SnapshotRef(sn, suffix, i) => {
                m.insert(format!("containerd.io/gc.ref.snapshot.{}{suffix}", SNAPSHOTTERS[*sn]), format!("s{i}"));
            }
            LabelGen::Other => {
                m.insert("other".to_string(), "c0".to_string());
            }
        }
    }
    m
}

fn labels_strategy() -> impl Strategy<Value = Vec<LabelGen>> {
    proptest::collection::vec(label_gen(), 0..3)
}

fn ns_strategy() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("b".to_string())]
}

prop_compose! {
    fn store()(
        content in proptest::collection::vec((ns_strategy(), 0usize..8, labels_strategy()), 0..12),
        snapshots in proptest::collection::vec((ns_strategy(), 0usize..2, 0usize..6, 0usize..7, labels_strategy()), 0..10),
        images in proptest::collection::vec((ns_strategy(), 0usize..8, labels_strategy()), 0..3),
        containers in proptest::collection::vec((ns_strategy(), 0usize..2, 0usize..6, labels_strategy()), 0..2),
        leases in proptest::collection::vec(
            (ns_strategy(), any::<bool>(), any::<bool>(),
             proptest::collection::vec((0usize..3, 0usize..2, 0usize..8), 0..4)), 0..3),
    ) -> StoreView {
        let mut v = StoreView::default();
        for (ns, i, l) in content {
            v.content.push((ns, format!("c{i}"), labels_of(&l)));
        }
        for (ns, sn, i, p, l) in snapshots {
            // A parent of a lower number, so chains are acyclic as real ones are.
            let parent = if p < i { format!("s{p}") } else { String::new() };
            v.snapshots.push((ns, SNAPSHOTTERS[sn].to_string(), format!("s{i}"), parent, labels_of(&l)));
        }
        for (n, (ns, i, l)) in images.into_iter().enumerate() {
            v.images.push((ns, format!("img{n}"), format!("c{i}"), labels_of(&l)));
        }
        for (n, (ns, sn, i, l)) in containers.into_iter().enumerate() {
            v.containers.push((ns, format!("ctr{n}"), SNAPSHOTTERS[sn].to_string(), format!("s{i}"), labels_of(&l)));
        }
        for (n, (ns, expired, flat, res)) in leases.into_iter().enumerate() {
            let mut labels = BTreeMap::new();
            labels.insert("containerd.io/gc.expire".to_string(), (if expired { PAST } else { FUTURE }).to_string());
            if flat {
                labels.insert(FLAT_LABEL.to_string(), String::new());
            }
            let resources = res
                .into_iter()
                .map(|(kind, sn, i)| match kind {
                    0 => LeasedResource { kind: "content".into(), id: format!("c{i}") },
                    1 => LeasedResource { kind: format!("snapshots/{}", SNAPSHOTTERS[sn]), id: format!("s{}", i % 6) },
                    _ => LeasedResource { kind: "ingests".into(), id: format!("ref{i}") },
                })
                .collect();
            v.leases.push((ns, format!("lease{n}"), labels, resources));
        }
        // Records are unique per key, as in the store.
        v.content.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v.content.dedup_by(|a, b| (&a.0, &a.1) == (&b.0, &b.1));
        v.snapshots.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        v.snapshots.dedup_by(|a, b| (&a.0, &a.1, &a.2) == (&b.0, &b.1, &b.2));
        v
    }
}

/// containerd's rules applied directly: iterate to a fixed point over the
/// records. `full` objects have their references followed; `flat` ones
/// (reached through a flat lease) only their snapshot parents.
fn expected(v: &StoreView) -> HashSet<(String, String, String)> {
    type Obj = (String, String, String); // (kind, ns, key)
    let content_labels: BTreeMap<(String, String), &BTreeMap<String, String>> =
        v.content.iter().map(|(ns, d, l)| ((ns.clone(), d.clone()), l)).collect();
    type SnapshotRec<'a> = (&'a String, &'a BTreeMap<String, String>);
    let snapshot_recs: BTreeMap<(String, String), SnapshotRec> =
        v.snapshots.iter().map(|(ns, sn, k, p, l)| ((ns.clone(), format!("{sn}/{k}")), (p, l))).collect();
    let refs = |ns: &str, labels: &BTreeMap<String, String>| -> Vec<Obj> {
        let mut out = Vec::new();
        for (k, val) in labels {
            if k.starts_with("containerd.io/gc.ref.content") {
                out.push(("content".into(), ns.into(), val.clone()));
            }
            if let Some(rest) = k.strip_prefix("containerd.io/gc.ref.snapshot.") {
                let sn = rest.split('/').next().unwrap();
                out.push(("snapshot".into(), ns.into(), format!("{sn}/{val}")));
            }
        }
        out
    };
    let mut full: HashSet<Obj> = HashSet::new();
    let mut flat: HashSet<Obj> = HashSet::new();
    for (ns, d, l) in &v.content {
        if l.contains_key(ROOT_LABEL) {
            full.insert(("content".into(), ns.clone(), d.clone()));
        }
    }
    for (ns, sn, k, _, l) in &v.snapshots {
        if l.contains_key(ROOT_LABEL) {
            full.insert(("snapshot".into(), ns.clone(), format!("{sn}/{k}")));
        }
    }
    for (ns, name, target, l) in &v.images {
        full.insert(("image".into(), ns.clone(), name.clone()));
        full.insert(("content".into(), ns.clone(), target.clone()));
        full.extend(refs(ns, l));
    }
    for (ns, id, sn, key, l) in &v.containers {
        full.insert(("container".into(), ns.clone(), id.clone()));
        full.insert(("snapshot".into(), ns.clone(), format!("{sn}/{key}")));
        full.extend(refs(ns, l));
    }
    for (ns, id, l, res) in &v.leases {
        if l.get("containerd.io/gc.expire").map(String::as_str) == Some(PAST) {
            continue;
        }
        full.insert(("lease".into(), ns.clone(), id.clone()));
        let into = if l.contains_key(FLAT_LABEL) { &mut flat } else { &mut full };
        for r in res {
            if r.kind == "content" {
                into.insert(("content".into(), ns.clone(), r.id.clone()));
            } else if let Some(sn) = r.kind.strip_prefix("snapshots/") {
                into.insert(("snapshot".into(), ns.clone(), format!("{sn}/{}", r.id)));
            }
        }
    }
    loop {
        let before = (full.len(), flat.len());
        for (kind, ns, key) in full.clone() {
            if kind == "content" {
                if let Some(l) = content_labels.get(&(ns.clone(), key.clone())) {
                    full.extend(refs(&ns, l));
                }
            } else if kind == "snapshot" {
                if let Some((p, l)) = snapshot_recs.get(&(ns.clone(), key.clone())) {
                    if !p.is_empty() {
                        let sn = key.split('/').next().unwrap();
                        full.insert(("snapshot".into(), ns.clone(), format!("{sn}/{p}")));
                    }
                    full.extend(refs(&ns, l));
                }
            }
        }
        for (kind, ns, key) in flat.clone() {
            if kind == "snapshot" {
                if let Some((p, _)) = snapshot_recs.get(&(ns.clone(), key.clone())) {
                    if !p.is_empty() {
                        let sn = key.split('/').next().unwrap();
                        flat.insert(("snapshot".into(), ns.clone(), format!("{sn}/{p}")));
                    }
                }
            }
        }
        if (full.len(), flat.len()) == before {
            break;
        }
    }
    full.union(&flat).cloned().collect()
}

/// The existing content and snapshot records a set of objects keeps.
type Keys = Vec<(String, String)>;

fn records(v: &StoreView, keep: impl Fn(&str, &str, &str) -> bool) -> (Keys, Keys) {
    let c = v.content.iter().filter(|(ns, d, _)| keep("content", ns, d)).map(|(ns, d, _)| (ns.clone(), d.clone()));
    let s = v
        .snapshots
        .iter()
        .map(|(ns, sn, k, _, _)| (ns.clone(), format!("{sn}/{k}")))
        .filter(|(ns, k)| keep("snapshot", ns, k));
    (c.collect(), s.collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn collector_keeps_what_the_rules_keep(v in store()) {
        let got = live(&v, NOW);
        let want = expected(&v);
        let kind_of = |k: &str| match k { "content" => Kind::Content, _ => Kind::Snapshot };
        let by_collector = records(&v, |k, ns, key| got.contains(&Node::new(kind_of(k), ns, key)));
        let by_rules = records(&v, |k, ns, key| want.contains(&(k.to_string(), ns.to_string(), key.to_string())));
        prop_assert_eq!(by_collector, by_rules);
        for (ns, id, _, _) in &v.leases {
            prop_assert_eq!(
                got.contains(&Node::new(Kind::Lease, ns, id)),
                want.contains(&("lease".to_string(), ns.clone(), id.clone()))
            );
        }
        // Marking the built graph is the same as searching it.
        let g = build_graph(&v, NOW);
        prop_assert_eq!(mark(&g), bfs(&g));
    }
}
