//! A candidate: Python source plus metadata. Its id is the SHA-256 of (kind, normalised
//! source), so the same program proposed twice — even reformatted — is one archive row.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateKind {
    Agent,
    Memory,
}

impl CandidateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Agent => "agent",
            CandidateKind::Memory => "memory",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(CandidateKind::Agent),
            "memory" => Some(CandidateKind::Memory),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    pub kind: CandidateKind,
    pub name: String,
    /// The proposer's rationale (ADAS "thought"), or the operator's description.
    pub thought: String,
    pub code: String,
    /// Operator or proposal kind that produced it (`seed`, `rewrite`, `op:wrap_vote`, ...).
    pub operator: String,
    pub generation: u32,
    pub parents: Vec<String>,
    pub fingerprint: String,
}

/// The content id of a program from its normalised source.
pub fn candidate_id(kind: CandidateKind, normalized: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0u8]);
    h.update(normalized.as_bytes());
    hex::encode(h.finalize())
}

/// Reads `name:` and `idea:` from a seed's module docstring header.
pub fn docstring_header(code: &str) -> (Option<String>, Option<String>) {
    let body = code.trim_start();
    let Some(rest) = body.strip_prefix("\"\"\"") else {
        return (None, None);
    };
    let Some(end) = rest.find("\"\"\"") else {
        return (None, None);
    };
    let doc = &rest[..end];
    let mut name = None;
    let mut idea = String::new();
    let mut in_idea = false;
    for line in doc.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("name:") {
            name = Some(v.trim().to_string());
            in_idea = false;
        } else if let Some(v) = t.strip_prefix("idea:") {
            idea.push_str(v.trim());
            in_idea = true;
        } else if t.starts_with("answers:") {
            in_idea = false;
        } else if in_idea && !t.is_empty() {
            idea.push(' ');
            idea.push_str(t);
        }
    }
    (name, if idea.is_empty() { None } else { Some(idea) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_read() {
        let (n, i) = docstring_header("\"\"\"name: CoT\nidea: think\n  step by step.\n\"\"\"\nx=1\n");
        assert_eq!(n.as_deref(), Some("CoT"));
        assert_eq!(i.as_deref(), Some("think step by step."));
    }

    #[test]
    fn kind_is_part_of_the_id() {
        assert_ne!(
            candidate_id(CandidateKind::Agent, "x"),
            candidate_id(CandidateKind::Memory, "x")
        );
    }
}
