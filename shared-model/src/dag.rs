//! The global DAG over every cluster's published streams and federated tables.
//!
//! Edges run from what is read to what reads it: a federated table's sources point at it; a published stream's
//! upstream (streams and federated tables of its own cluster) point at it; a federated table points at the stream
//! of the same name when that table is itself published. Cross-cluster cycles are only visible here.
//!
//! Storage is petgraph's `StableDiGraph`, kept up to date event by event. Node indices depend on history (a
//! snapshot restore renumbers them), so every answer that reaches a decision or a user — paths, orders, groups —
//! walks neighbours in key order and never exposes an index: all replicas answer alike.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::Direction;
use serde::{Deserialize, Serialize};

use crate::ids::{FederatedTableId, StreamId};

/// A node of the global DAG.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NodeKey {
    /// A published stream.
    Stream(StreamId),
    /// A federated stream table.
    Federated(FederatedTableId),
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeKey::Stream(s) => write!(f, "stream {s}"),
            NodeKey::Federated(t) => write!(f, "federated {t}"),
        }
    }
}

/// A federated table whose sources share an upstream: readers can see one path ahead of the other unless the
/// table runs in causal mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiamondGroup {
    /// The federated table at the bottom of the diamond.
    pub table: FederatedTableId,
    /// Its sources that share upstream.
    pub sources: Vec<StreamId>,
    /// The upstream nodes reachable from two or more of those sources.
    pub shared_upstream: Vec<NodeKey>,
}

/// The incrementally maintained global DAG.
#[derive(Debug, Clone, Default)]
pub struct GlobalDag {
    graph: StableDiGraph<NodeKey, ()>,
    nodes: BTreeMap<NodeKey, NodeIndex>,
}

impl GlobalDag {
    /// An empty DAG.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Whether the node exists.
    pub fn contains(&self, key: &NodeKey) -> bool {
        self.nodes.contains_key(key)
    }

    /// Adds a node if it is missing.
    pub fn add_node(&mut self, key: NodeKey) {
        if !self.nodes.contains_key(&key) {
            let idx = self.graph.add_node(key.clone());
            self.nodes.insert(key, idx);
        }
    }

    /// Removes a node and its edges.
    pub fn remove_node(&mut self, key: &NodeKey) {
        if let Some(idx) = self.nodes.remove(key) {
            self.graph.remove_node(idx);
        }
    }

    /// Adds the edge `from -> to` (both must exist; a repeat is ignored).
    pub fn add_edge(&mut self, from: &NodeKey, to: &NodeKey) {
        if let (Some(&a), Some(&b)) = (self.nodes.get(from), self.nodes.get(to)) {
            if self.graph.find_edge(a, b).is_none() {
                self.graph.add_edge(a, b, ());
            }
        }
    }

    /// Replaces every edge into `to` with edges from `froms` (missing nodes are skipped).
    pub fn set_edges_into(&mut self, to: &NodeKey, froms: &BTreeSet<NodeKey>) {
        let Some(&b) = self.nodes.get(to) else { return };
        let old: Vec<_> =
            self.graph.edges_directed(b, Direction::Incoming).map(|e| petgraph::visit::EdgeRef::id(&e)).collect();
        for e in old {
            self.graph.remove_edge(e);
        }
        for from in froms {
            self.add_edge(from, to);
        }
    }

    fn neighbours(&self, key: &NodeKey, dir: Direction) -> BTreeSet<NodeKey> {
        match self.nodes.get(key) {
            Some(&idx) => self.graph.neighbors_directed(idx, dir).map(|n| self.graph[n].clone()).collect(),
            None => BTreeSet::new(),
        }
    }

    /// Nodes that read `key` directly.
    pub fn successors(&self, key: &NodeKey) -> BTreeSet<NodeKey> {
        self.neighbours(key, Direction::Outgoing)
    }

    /// Nodes `key` reads directly.
    pub fn predecessors(&self, key: &NodeKey) -> BTreeSet<NodeKey> {
        self.neighbours(key, Direction::Incoming)
    }

    /// A shortest path `from -> … -> to` following edges, found in key order (so every replica finds the same one).
    pub fn path(&self, from: &NodeKey, to: &NodeKey) -> Option<Vec<NodeKey>> {
        if !self.contains(from) || !self.contains(to) {
            return None;
        }
        let mut parent: BTreeMap<NodeKey, NodeKey> = BTreeMap::new();
        let mut queue = VecDeque::from([from.clone()]);
        let mut seen = BTreeSet::from([from.clone()]);
        while let Some(node) = queue.pop_front() {
            if &node == to {
                let mut path = vec![node.clone()];
                let mut cur = node;
                while let Some(p) = parent.get(&cur) {
                    path.push(p.clone());
                    cur = p.clone();
                }
                path.reverse();
                return Some(path);
            }
            for next in self.successors(&node) {
                if seen.insert(next.clone()) {
                    parent.insert(next.clone(), node.clone());
                    queue.push_back(next);
                }
            }
        }
        None
    }

    /// If adding edges from each of `new_preds` into `node` would close a cycle, the cycle as a path that starts
    /// and ends at `node`.
    pub fn cycle_if_added(&self, node: &NodeKey, new_preds: &BTreeSet<NodeKey>) -> Option<Vec<NodeKey>> {
        for pred in new_preds {
            if pred == node {
                return Some(vec![node.clone(), node.clone()]);
            }
            if let Some(mut path) = self.path(node, pred) {
                path.push(node.clone());
                return Some(path);
            }
        }
        None
    }

    fn reach(&self, key: &NodeKey, dir: Direction) -> BTreeSet<NodeKey> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![key.clone()];
        while let Some(n) = stack.pop() {
            for m in self.neighbours(&n, dir) {
                if seen.insert(m.clone()) {
                    stack.push(m);
                }
            }
        }
        seen
    }

    /// Everything reachable from `key` (not `key` itself).
    pub fn descendants(&self, key: &NodeKey) -> BTreeSet<NodeKey> {
        self.reach(key, Direction::Outgoing)
    }

    /// Everything `key` reads, transitively (not `key` itself).
    pub fn ancestors(&self, key: &NodeKey) -> BTreeSet<NodeKey> {
        self.reach(key, Direction::Incoming)
    }

    /// All nodes so that every edge goes from an earlier to a later one; ties broken by key. Nodes on a cycle
    /// (which validation never lets in) are left out.
    pub fn topological_order(&self) -> Vec<NodeKey> {
        let mut indegree: BTreeMap<&NodeKey, usize> = BTreeMap::new();
        for (key, &idx) in &self.nodes {
            indegree.insert(key, self.graph.neighbors_directed(idx, Direction::Incoming).count());
        }
        let mut ready: BTreeSet<&NodeKey> = indegree.iter().filter(|(_, d)| **d == 0).map(|(k, _)| *k).collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(next) = ready.pop_first() {
            order.push(next.clone());
            for succ in self.graph.neighbors_directed(self.nodes[next], Direction::Outgoing) {
                let key = &self.graph[succ];
                let d = indegree.get_mut(key).expect("every graph node is indexed");
                *d -= 1;
                if *d == 0 {
                    ready.insert(key);
                }
            }
        }
        order
    }

    /// Strongly connected components with more than one node (or a self-loop). Always empty for a valid state:
    /// it is the check that validation kept the DAG acyclic.
    pub fn scc_groups(&self) -> Vec<Vec<NodeKey>> {
        let mut groups: Vec<Vec<NodeKey>> = petgraph::algo::tarjan_scc(&self.graph)
            .into_iter()
            .filter(|c| c.len() > 1 || self.graph.find_edge(c[0], c[0]).is_some())
            .map(|c| {
                let mut keys: Vec<NodeKey> = c.into_iter().map(|i| self.graph[i].clone()).collect();
                keys.sort();
                keys
            })
            .collect();
        groups.sort();
        groups
    }

    /// Whether the graph has no cycle.
    pub fn is_acyclic(&self) -> bool {
        self.topological_order().len() == self.nodes.len()
    }

    /// Federated tables whose sources share an upstream node.
    pub fn diamond_groups(&self) -> Vec<DiamondGroup> {
        let mut groups = Vec::new();
        for key in self.nodes.keys() {
            let NodeKey::Federated(table) = key else { continue };
            let sources: Vec<StreamId> = self
                .predecessors(key)
                .into_iter()
                .filter_map(|p| match p {
                    NodeKey::Stream(s) => Some(s),
                    NodeKey::Federated(_) => None,
                })
                .collect();
            if sources.len() < 2 {
                continue;
            }
            // Each source's upstream closure, itself included: a source may be upstream of another source.
            let closures: Vec<BTreeSet<NodeKey>> = sources
                .iter()
                .map(|s| {
                    let k = NodeKey::Stream(s.clone());
                    let mut c = self.ancestors(&k);
                    c.insert(k);
                    c
                })
                .collect();
            let mut count: BTreeMap<&NodeKey, Vec<usize>> = BTreeMap::new();
            for (i, c) in closures.iter().enumerate() {
                for n in c {
                    count.entry(n).or_default().push(i);
                }
            }
            let mut involved = BTreeSet::new();
            let mut shared = Vec::new();
            for (node, owners) in count {
                if owners.len() >= 2 {
                    shared.push(node.clone());
                    involved.extend(owners);
                }
            }
            if !shared.is_empty() {
                groups.push(DiamondGroup {
                    table: table.clone(),
                    sources: involved.into_iter().map(|i| sources[i].clone()).collect(),
                    shared_upstream: shared,
                });
            }
        }
        groups
    }

    /// Graphviz DOT, one subgraph per cluster; streams are boxes, federated tables double octagons.
    pub fn to_dot(&self) -> String {
        let mut by_cluster: BTreeMap<String, Vec<&NodeKey>> = BTreeMap::new();
        for key in self.nodes.keys() {
            let cluster = match key {
                NodeKey::Stream(s) => s.cluster().to_string(),
                NodeKey::Federated(t) => t.cluster().to_string(),
            };
            by_cluster.entry(cluster).or_default().push(key);
        }
        let mut out = String::from("digraph pgtrickle_federation {\n  rankdir=LR;\n");
        for (cluster, keys) in &by_cluster {
            out.push_str(&format!("  subgraph \"cluster_{cluster}\" {{\n    label=\"{cluster}\";\n"));
            for key in keys {
                let (name, shape) = match key {
                    NodeKey::Stream(s) => (s.0.qualified_name(), "box"),
                    NodeKey::Federated(t) => (t.0.qualified_name(), "doubleoctagon"),
                };
                out.push_str(&format!("    {} [label=\"{name}\", shape={shape}];\n", dot_id(key)));
            }
            out.push_str("  }\n");
        }
        for key in self.nodes.keys() {
            for succ in self.successors(key) {
                out.push_str(&format!("  {} -> {};\n", dot_id(key), dot_id(&succ)));
            }
        }
        out.push_str("}\n");
        out
    }
}

fn dot_id(key: &NodeKey) -> String {
    match key {
        NodeKey::Stream(s) => format!("\"s:{s}\""),
        NodeKey::Federated(t) => format!("\"f:{t}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> NodeKey {
        NodeKey::Stream(StreamId::parse(x).unwrap())
    }
    fn f(x: &str) -> NodeKey {
        NodeKey::Federated(FederatedTableId::parse(x).unwrap())
    }

    fn diamond() -> GlobalDag {
        let mut g = GlobalDag::new();
        for k in [s("a/x"), s("b/y"), s("c/z"), f("b/m"), f("c/m"), f("d/dash")] {
            g.add_node(k);
        }
        // a/x feeds b (via b/m) and c (via c/m); d/dash joins b/y and c/z.
        g.add_edge(&s("a/x"), &f("b/m"));
        g.add_edge(&f("b/m"), &s("b/y"));
        g.add_edge(&s("a/x"), &f("c/m"));
        g.add_edge(&f("c/m"), &s("c/z"));
        g.add_edge(&s("b/y"), &f("d/dash"));
        g.add_edge(&s("c/z"), &f("d/dash"));
        g
    }

    #[test]
    fn topo_order_respects_edges_and_is_deterministic() {
        let g = diamond();
        let order = g.topological_order();
        assert_eq!(order.len(), 6);
        let pos = |k: &NodeKey| order.iter().position(|o| o == k).unwrap();
        assert!(pos(&s("a/x")) < pos(&f("b/m")));
        assert!(pos(&s("c/z")) < pos(&f("d/dash")));
        assert_eq!(order, diamond().topological_order());
        assert!(g.scc_groups().is_empty());
    }

    #[test]
    fn cycle_is_reported_with_its_path() {
        let g = diamond();
        let cycle = g.cycle_if_added(&s("a/x"), &BTreeSet::from([f("d/dash")])).unwrap();
        assert_eq!(cycle.first(), Some(&s("a/x")));
        assert_eq!(cycle.last(), Some(&s("a/x")));
        assert!(cycle.contains(&f("d/dash")));
        assert!(g.cycle_if_added(&f("d/dash"), &BTreeSet::from([s("a/x")])).is_none());
    }

    #[test]
    fn diamond_is_found() {
        let groups = diamond().diamond_groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].table, FederatedTableId::parse("d/dash").unwrap());
        assert!(groups[0].shared_upstream.contains(&s("a/x")));
        assert_eq!(groups[0].sources.len(), 2);
    }

    #[test]
    fn dot_names_every_node_and_edge() {
        let dot = diamond().to_dot();
        assert!(dot.contains("\"s:a/public.x\" -> \"f:b/public.m\""));
        assert!(dot.contains("subgraph \"cluster_d\""));
        assert_eq!(dot.matches(" -> ").count(), 6);
    }

    #[test]
    fn removing_a_node_removes_its_edges() {
        let mut g = diamond();
        g.remove_node(&f("b/m"));
        assert_eq!(g.edge_count(), 4);
        assert!(g.predecessors(&s("b/y")).is_empty());
    }
}
