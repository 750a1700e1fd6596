//! Orders plugins by their declared dependencies.
//!
//! The graph has one node per registration and an edge from each
//! dependency to its dependent. A requirement names a plugin *type*; it
//! points at every plugin of that type. `*` means "every plugin that does
//! not itself require `*`", so the catch-all plugins come last.
//!
//! Faults stay local: a duplicate `type.id` is refused by name, the members
//! of a cycle are failed with the cycle spelt out, a plugin whose required
//! type does not exist is failed naming that type; everything else is
//! ordered and initialised. Plugins that depend on a failed plugin fail at
//! init time (see `PluginSet`), because only then is it known whether the
//! dependency came up.

use std::collections::HashMap;

use petgraph::{algo::tarjan_scc, graph::DiGraph, graph::NodeIndex};

/// What the graph needs to know about one plugin.
#[derive(Debug, Clone)]
pub struct Node {
    pub plugin_type: String,
    pub id: String,
    pub requires: Vec<String>,
    /// Types among `requires` that may be absent: they order, never refuse.
    pub optional: Vec<String>,
}

impl Node {
    pub fn key(&self) -> String {
        format!("{}.{}", self.plugin_type, self.id)
    }
    fn wants_all(&self) -> bool {
        self.requires.iter().any(|r| r == "*")
    }
}

/// The result of ordering: indices into the input, in init order, and the
/// nodes refused before init with the reason.
#[derive(Debug, Default)]
pub struct Plan {
    pub order: Vec<usize>,
    pub refused: Vec<(usize, String)>,
}

/// Orders `nodes` for init.
pub fn plan(nodes: &[Node]) -> Plan {
    let mut plan = Plan::default();
    let mut graph = DiGraph::<usize, ()>::new();
    let mut index_of: HashMap<String, NodeIndex> = HashMap::new();
    let mut by_type: HashMap<&str, Vec<NodeIndex>> = HashMap::new();
    let mut live = Vec::new();

    for (i, n) in nodes.iter().enumerate() {
        let key = n.key();
        if index_of.contains_key(&key) {
            plan.refused
                .push((i, format!("duplicate plugin {key}: a plugin with this type and id is already registered")));
            continue;
        }
        let ix = graph.add_node(i);
        index_of.insert(key, ix);
        by_type.entry(n.plugin_type.as_str()).or_default().push(ix);
        live.push(ix);
    }

    let all_plain: Vec<NodeIndex> = live.iter().copied().filter(|ix| !nodes[graph[*ix]].wants_all()).collect();
    let mut missing: HashMap<NodeIndex, Vec<String>> = HashMap::new();
    for &ix in &live {
        let n = &nodes[graph[ix]];
        for req in &n.requires {
            if req == "*" {
                for &dep in &all_plain {
                    if dep != ix {
                        graph.add_edge(dep, ix, ());
                    }
                }
                continue;
            }
            match by_type.get(req.as_str()) {
                Some(deps) => {
                    for &dep in deps {
                        graph.add_edge(dep, ix, ());
                    }
                }
                None if n.optional.contains(req) => {}
                None => missing.entry(ix).or_default().push(req.clone()),
            }
        }
    }

    // tarjan_scc yields components in reverse topological order.
    let mut sccs = tarjan_scc(&graph);
    sccs.reverse();
    for scc in sccs {
        let is_cycle = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if is_cycle {
            let mut names: Vec<String> = scc.iter().map(|ix| nodes[graph[*ix]].key()).collect();
            names.sort();
            let mut cycle = names.join(" -> ");
            cycle.push_str(" -> ");
            cycle.push_str(&names[0]);
            for ix in scc {
                plan.refused.push((graph[ix], format!("dependency cycle: {cycle}")));
            }
            continue;
        }
        let ix = scc[0];
        if let Some(types) = missing.get(&ix) {
            plan.refused
                .push((graph[ix], format!("missing dependency: no plugin of type {} is registered", types.join(", "))));
            continue;
        }
        plan.order.push(graph[ix]);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(t: &str, id: &str, req: &[&str]) -> Node {
        Node {
            plugin_type: t.into(),
            id: id.into(),
            requires: req.iter().map(|s| s.to_string()).collect(),
            optional: vec![],
        }
    }

    fn pos(p: &Plan, i: usize) -> usize {
        p.order.iter().position(|x| *x == i).unwrap()
    }

    #[test]
    fn an_absent_optional_type_orders_nothing_and_refuses_nothing() {
        let mut meta = n("t.meta", "m", &["t.content", "t.snap"]);
        meta.optional = vec!["t.snap".into()];
        let p = plan(&[meta.clone(), n("t.content", "c", &[])]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        assert!(pos(&p, 1) < pos(&p, 0));
        // Present, it still comes first.
        let p = plan(&[meta, n("t.content", "c", &[]), n("t.snap", "s", &[])]);
        assert!(pos(&p, 2) < pos(&p, 0));
        // Not optional, its absence refuses the dependent.
        let p = plan(&[n("t.meta", "m", &["t.snap"])]);
        assert_eq!(p.refused.len(), 1);
    }

    #[test]
    fn dependencies_come_first() {
        let nodes = [n("t.c", "c", &["t.b"]), n("t.b", "b", &["t.a"]), n("t.a", "a", &[]), n("t.all", "x", &["*"])];
        let p = plan(&nodes);
        assert!(p.refused.is_empty());
        assert!(pos(&p, 2) < pos(&p, 1) && pos(&p, 1) < pos(&p, 0));
        assert_eq!(pos(&p, 3), 3, "the * plugin comes last");
    }

    #[test]
    fn cycle_fails_only_its_members() {
        let nodes = [n("t.a", "a", &["t.b"]), n("t.b", "b", &["t.a"]), n("t.c", "c", &[])];
        let p = plan(&nodes);
        assert_eq!(p.order, vec![2]);
        assert_eq!(p.refused.len(), 2);
        assert!(p.refused.iter().all(|(_, m)| m.contains("dependency cycle: t.a.a -> t.b.b -> t.a.a")));
    }

    #[test]
    fn missing_and_duplicate_are_refused_by_name() {
        let nodes = [n("t.a", "a", &["t.none"]), n("t.b", "b", &[]), n("t.b", "b", &[])];
        let p = plan(&nodes);
        assert_eq!(p.order, vec![1]);
        let msg = |i| p.refused.iter().find(|(x, _)| *x == i).map(|(_, m)| m.clone()).unwrap();
        assert!(msg(0).contains("t.none"));
        assert!(msg(2).contains("duplicate plugin t.b.b"));
    }
}
