//! Lineage as a petgraph DAG: which parent produced which child, by which operator, and
//! which of those steps improved on the parent.
//!
//! Why a graph and not a `parent` column: crossovers have two parents and merged archives
//! join lineages from several runs; ancestry and "who produced the improvements" are graph
//! walks either way.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed, Topo, Walker};
use petgraph::Direction;
use serde::Serialize;

/// One archived candidate as the lineage shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LineageNode {
    pub id: String,
    pub name: String,
    /// The operator or proposal kind that produced it (`seed` for seeds).
    pub operator: String,
    pub generation: u32,
    /// Validation score when it was evaluated without a breach.
    pub val: Option<f64>,
}

/// A child that scored higher on validation than its best parent.
#[derive(Debug, Clone, Serialize)]
pub struct Improvement {
    pub child: String,
    pub name: String,
    pub operator: String,
    pub from: f64,
    pub to: f64,
}

pub struct Lineage {
    pub graph: DiGraph<LineageNode, String>,
    index: HashMap<String, NodeIndex>,
}

impl Lineage {
    /// Edges naming an unknown candidate are skipped: a lineage row can only point at
    /// archived candidates (foreign keys), so this only happens on hand-edited files.
    pub fn build(nodes: Vec<LineageNode>, edges: &[(String, String, String)]) -> Self {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for node in nodes {
            let id = node.id.clone();
            index.insert(id, graph.add_node(node));
        }
        for (p, c, op) in edges {
            if let (Some(&a), Some(&b)) = (index.get(p), index.get(c)) {
                graph.add_edge(a, b, op.clone());
            }
        }
        Self { graph, index }
    }

    /// The candidate whose id starts with `prefix`; an error names the ambiguity.
    pub fn find(&self, prefix: &str) -> Result<&LineageNode, String> {
        let hits: Vec<&LineageNode> = self.graph.node_weights().filter(|n| n.id.starts_with(prefix)).collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no candidate id starts with {prefix:?}; fix: copy an id from `metaforge lineage`"
            )),
            many => Err(format!(
                "{} candidates start with {prefix:?} ({}); fix: give more characters",
                many.len(),
                many.iter()
                    .map(|n| &n.id[..12.min(n.id.len())])
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Every ancestor of `id` and `id` itself, oldest first (a topological order).
    pub fn ancestry(&self, id: &str) -> Vec<&LineageNode> {
        let Some(&start) = self.index.get(id) else {
            return Vec::new();
        };
        let reversed = Reversed(&self.graph);
        let mut dfs = Dfs::new(reversed, start);
        let mut members = std::collections::HashSet::new();
        while let Some(n) = dfs.next(reversed) {
            members.insert(n);
        }
        Topo::new(&self.graph)
            .iter(&self.graph)
            .filter(|n| members.contains(n))
            .map(|n| &self.graph[n])
            .collect()
    }

    /// Ids of the direct parents of `id`.
    pub fn parents(&self, id: &str) -> Vec<String> {
        let Some(&n) = self.index.get(id) else {
            return Vec::new();
        };
        self.graph
            .neighbors_directed(n, Direction::Incoming)
            .map(|p| self.graph[p].id.clone())
            .collect()
    }

    /// Every child that beat its best evaluated parent, oldest first.
    pub fn improvements(&self) -> Vec<Improvement> {
        Topo::new(&self.graph)
            .iter(&self.graph)
            .filter_map(|n| {
                let child = &self.graph[n];
                let to = child.val?;
                let from = self
                    .graph
                    .neighbors_directed(n, Direction::Incoming)
                    .filter_map(|p| self.graph[p].val)
                    .reduce(f64::max)?;
                (to > from).then(|| Improvement {
                    child: child.id.clone(),
                    name: child.name.clone(),
                    operator: child.operator.clone(),
                    from,
                    to,
                })
            })
            .collect()
    }

    /// The lineage restricted to the candidates in `ids` (e.g. one ancestry).
    pub fn subgraph(&self, ids: &std::collections::HashSet<&str>) -> Lineage {
        let graph = self.graph.filter_map(
            |_, n| ids.contains(n.id.as_str()).then(|| n.clone()),
            |_, e| Some(e.clone()),
        );
        let index = graph.node_indices().map(|i| (graph[i].id.clone(), i)).collect();
        Lineage { graph, index }
    }

    /// Graphviz DOT text: nodes labelled by name and validation score (seeds boxed,
    /// improvements filled), edges by operator.
    pub fn to_dot(&self) -> String {
        let improved: std::collections::HashSet<String> = self.improvements().into_iter().map(|i| i.child).collect();
        let short = |id: &str| id[..12.min(id.len())].to_string();
        let mut s = String::from("digraph lineage {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
        for n in self.graph.node_weights() {
            let score = n.val.map_or("failed".to_string(), |v| format!("{v:.2}"));
            let mut style = Vec::new();
            if n.operator == "seed" {
                style.push("shape=box");
            }
            if improved.contains(&n.id) {
                style.push("style=filled, fillcolor=\"#c8e6c9\"");
            }
            let extra = if style.is_empty() {
                String::new()
            } else {
                format!(", {}", style.join(", "))
            };
            s.push_str(&format!(
                "  \"{}\" [label=\"{}\\n{score}\"{extra}];\n",
                short(&n.id),
                n.name.replace('\\', "/").replace('"', "'")
            ));
        }
        for e in self.graph.edge_indices() {
            let (a, b) = self.graph.edge_endpoints(e).expect("edge of this graph");
            s.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                short(&self.graph[a].id),
                short(&self.graph[b].id),
                self.graph[e].replace('"', "'")
            ));
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, operator: &str, val: Option<f64>) -> LineageNode {
        LineageNode {
            id: id.into(),
            name: id.to_uppercase(),
            operator: operator.into(),
            generation: 0,
            val,
        }
    }

    fn sample() -> Lineage {
        let nodes = vec![
            node("aaa1", "seed", Some(0.5)),
            node("bbb2", "seed", Some(0.2)),
            node("ccc3", "op:crossover", Some(0.6)),
            node("ddd4", "rewrite", Some(0.4)),
            node("eee5", "diff", None),
        ];
        let e = |p: &str, c: &str, op: &str| (p.to_string(), c.to_string(), op.to_string());
        let edges = vec![
            e("aaa1", "ccc3", "op:crossover"),
            e("bbb2", "ccc3", "op:crossover"),
            e("ccc3", "ddd4", "rewrite"),
            e("ddd4", "eee5", "diff"),
        ];
        Lineage::build(nodes, &edges)
    }

    #[test]
    fn ancestry_is_oldest_first_and_includes_both_crossover_parents() {
        let l = sample();
        let ids: Vec<&str> = l.ancestry("eee5").iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids.last(), Some(&"eee5"));
        assert!(ids.iter().position(|&i| i == "ccc3") < ids.iter().position(|&i| i == "ddd4"));
        assert_eq!(l.ancestry("aaa1").len(), 1);
    }

    #[test]
    fn improvements_compare_with_the_best_parent() {
        let imps = sample().improvements();
        assert_eq!(imps.len(), 1, "{imps:?}");
        assert_eq!((imps[0].child.as_str(), imps[0].from, imps[0].to), ("ccc3", 0.5, 0.6));
    }

    #[test]
    fn prefixes_must_be_unique() {
        let l = sample();
        assert_eq!(l.find("ccc").unwrap().id, "ccc3");
        assert!(l.find("zz").unwrap_err().contains("no candidate"));
        let l = Lineage::build(vec![node("ab1", "seed", None), node("ab2", "seed", None)], &[]);
        assert!(l.find("ab").unwrap_err().contains("2 candidates"));
    }

    #[test]
    fn dot_marks_seeds_and_improvements() {
        insta::assert_snapshot!(sample().to_dot());
    }
}
