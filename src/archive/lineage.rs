//! Lineage as a petgraph DAG: which parent produced which child, by which operator.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;
use petgraph::Direction;

pub struct Lineage {
    pub graph: DiGraph<(String, String), String>,
    index: HashMap<String, NodeIndex>,
}

impl Lineage {
    pub fn build(nodes: &[(String, String)], edges: &[(String, String, String)]) -> Self {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for (id, name) in nodes {
            index.insert(id.clone(), graph.add_node((id.clone(), name.clone())));
        }
        for (p, c, op) in edges {
            if let (Some(&a), Some(&b)) = (index.get(p), index.get(c)) {
                graph.add_edge(a, b, op.clone());
            }
        }
        Self { graph, index }
    }

    /// Every ancestor of `id` (not including itself).
    pub fn ancestors(&self, id: &str) -> Vec<String> {
        let Some(&start) = self.index.get(id) else {
            return Vec::new();
        };
        let reversed = petgraph::visit::Reversed(&self.graph);
        let mut dfs = Dfs::new(reversed, start);
        let mut out = Vec::new();
        while let Some(n) = dfs.next(reversed) {
            if n != start {
                out.push(self.graph[n].0.clone());
            }
        }
        out
    }

    pub fn parents(&self, id: &str) -> Vec<String> {
        let Some(&n) = self.index.get(id) else {
            return Vec::new();
        };
        self.graph
            .neighbors_directed(n, Direction::Incoming)
            .map(|p| self.graph[p].0.clone())
            .collect()
    }

    /// Graphviz DOT text, nodes labelled by name, edges by operator.
    pub fn to_dot(&self) -> String {
        let mut s = String::from("digraph lineage {\n  rankdir=LR;\n");
        for n in self.graph.node_indices() {
            let (id, name) = &self.graph[n];
            s.push_str(&format!(
                "  \"{}\" [label=\"{}\"];\n",
                &id[..12.min(id.len())],
                name.replace('"', "'")
            ));
        }
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).unwrap();
            s.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                &self.graph[a].0[..12.min(self.graph[a].0.len())],
                &self.graph[b].0[..12.min(self.graph[b].0.len())],
                self.graph[e]
            ));
        }
        s.push_str("}\n");
        s
    }
}
