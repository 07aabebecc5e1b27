//! `metaforge lineage`: the family tree of a run as text, JSON or Graphviz DOT, with the
//! improvements each operator or proposal kind produced.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::archive::{Improvement, Lineage, LineageNode};

#[derive(Debug, Serialize)]
pub struct LineageReport {
    /// Every candidate, or the ancestry of the one asked for, oldest first.
    pub nodes: Vec<NodeRow>,
    pub improvements: Vec<Improvement>,
    /// Improvements per operator or proposal kind.
    pub improvements_by_operator: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct NodeRow {
    #[serde(flatten)]
    pub node: LineageNode,
    pub parents: Vec<String>,
}

/// The report for the whole lineage, or for the ancestry of the candidate whose id starts
/// with `of`.
pub fn report(lineage: &Lineage, of: Option<&str>) -> Result<LineageReport> {
    let nodes: Vec<&LineageNode> = match of {
        Some(prefix) => {
            let target = lineage
                .find(prefix)
                .map_err(|e| crate::types::BadInput::wrap(anyhow!(e)))?;
            lineage.ancestry(&target.id)
        }
        None => lineage.graph.node_weights().collect(),
    };
    let members: std::collections::HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let improvements: Vec<Improvement> = lineage
        .improvements()
        .into_iter()
        .filter(|i| members.contains(i.child.as_str()))
        .collect();
    let mut improvements_by_operator = BTreeMap::new();
    for i in &improvements {
        *improvements_by_operator.entry(i.operator.clone()).or_insert(0) += 1;
    }
    Ok(LineageReport {
        nodes: nodes
            .into_iter()
            .map(|n| NodeRow {
                parents: lineage.parents(&n.id),
                node: n.clone(),
            })
            .collect(),
        improvements,
        improvements_by_operator,
    })
}

pub fn render(r: &LineageReport) -> String {
    let short = |id: &str| id[..12.min(id.len())].to_string();
    let improved: BTreeMap<&str, &Improvement> = r.improvements.iter().map(|i| (i.child.as_str(), i)).collect();
    let mut out = format!(
        "{:>3}  {:<12}  {:>6}  {:<20} {:<40} {}\n",
        "gen", "id", "val", "made by", "name", "parents"
    );
    for row in &r.nodes {
        let n = &row.node;
        let val = n.val.map_or("failed".to_string(), |v| format!("{v:.2}"));
        let name: String = n.name.chars().take(40).collect();
        let op: String = n.operator.chars().take(20).collect();
        let parents: Vec<String> = row.parents.iter().map(|p| short(p)).collect();
        let gain = improved
            .get(n.id.as_str())
            .map_or(String::new(), |i| format!("  ↑ +{:.2}", i.to - i.from));
        out.push_str(&format!(
            "{:>3}  {:<12}  {val:>6}  {op:<20} {name:<40} {}{gain}\n",
            n.generation,
            short(&n.id),
            parents.join(", ")
        ));
    }
    out.push_str("\nimprovements over the best parent (validation), by operator or kind:\n");
    if r.improvements_by_operator.is_empty() {
        out.push_str("  none yet\n");
    }
    for (op, n) in &r.improvements_by_operator {
        out.push_str(&format!("  {op:<24} {n}\n"));
    }
    out
}
