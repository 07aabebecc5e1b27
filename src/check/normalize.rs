//! Normal forms of a program. The candidate id hashes `normalized_source` (so a reformatted
//! or re-commented program is the same candidate); `structure_fingerprint` hashes the tree
//! shape with identifiers and literals abstracted (so a program that differs only in a
//! constant or a prompt string is recognisably a near-duplicate).

use sha2::{Digest, Sha256};
use tree_sitter::Node;

/// Leaf tokens without comments, separated by single spaces.
pub fn normalized_source(root: Node, source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if node.kind() == "comment" {
            continue;
        }
        if node.child_count() == 0 {
            let text = &source[node.byte_range()];
            if !text.is_empty() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(text);
            }
            continue;
        }
        let mut cursor = node.walk();
        let children: Vec<_> = node.children(&mut cursor).collect();
        stack.extend(children.into_iter().rev());
    }
    out
}

/// SHA-256 (hex, 16 chars) of the pre-order sequence of named node kinds.
pub fn structure_fingerprint(root: Node, _source: &str) -> String {
    let mut hasher = Sha256::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if node.kind() == "comment" {
            continue;
        }
        if node.is_named() {
            hasher.update(node.kind().as_bytes());
            hasher.update(b"(");
        }
        let mut cursor = node.walk();
        let children: Vec<_> = node.named_children(&mut cursor).collect();
        // String contents are literals: keep the string node, drop its inner pieces.
        if node.kind() != "string" {
            stack.extend(children.into_iter().rev());
        }
    }
    hex::encode(&hasher.finalize()[..8])
}

/// MinHash signature of a program's token 3-grams (from `normalized_source`), for the
/// near-duplicate check before evaluation. Unlike the structure fingerprint it sees literals,
/// so an operator that changes one constant of a long program stays novel while a rename or
/// a re-spaced copy does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature([u64; SIGNATURE_SLOTS]);

const SIGNATURE_SLOTS: usize = 64;

impl Signature {
    pub fn of(normalized: &str) -> Signature {
        let tokens: Vec<&str> = normalized.split_whitespace().collect();
        let mut slots = [u64::MAX; SIGNATURE_SLOTS];
        let width = 3.min(tokens.len()).max(1);
        for gram in tokens.windows(width) {
            let mut h = Sha256::new();
            for t in gram {
                h.update(t.as_bytes());
                h.update([0]);
            }
            let base = u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = (*slot).min(splitmix64(base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            }
        }
        Signature(slots)
    }

    /// Estimated Jaccard similarity of the two programs' 3-gram sets, 0..=1.
    pub fn similarity(&self, other: &Signature) -> f64 {
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f64 / SIGNATURE_SLOTS as f64
    }
}

/// Exact Jaccard similarity of two normalised programs' token 3-gram sets. The MinHash
/// estimate only shortlists: programs that differ in a few 3-grams out of hundreds (one mode
/// string in a long wrapped program) often agree on every slot, and "the same 3-gram set"
/// must mean the same set.
pub fn exact_similarity(a: &str, b: &str) -> f64 {
    fn grams(s: &str) -> std::collections::HashSet<Vec<&str>> {
        let tokens: Vec<&str> = s.split_whitespace().collect();
        let width = 3.min(tokens.len()).max(1);
        tokens.windows(width).map(<[&str]>::to_vec).collect()
    }
    let (a, b) = (grams(a), grams(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// The splitmix64 finaliser: one cheap, well-mixed permutation per MinHash slot.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The near-duplicate signatures of many programs, computed in parallel. Why rayon: at
/// resume the loop signs every archived program before its first novelty check, each a
/// tree-sitter parse and a hash per token window; the programs are independent.
pub fn signatures(sources: &[&str]) -> Vec<Signature> {
    use rayon::prelude::*;
    sources.par_iter().map(|s| signature_of(s)).collect()
}

/// The signature of one program's source (parsed, then normalised).
pub fn signature_of(source: &str) -> Signature {
    Signature::of(&normalized_of(source))
}

/// One program's source, parsed and normalised.
pub fn normalized_of(source: &str) -> String {
    let tree = super::parse_python(source);
    normalized_source(tree.root_node(), source)
}

#[cfg(test)]
mod signature_tests {
    use super::Signature;

    fn program(temperature: &str, extra: &str) -> String {
        format!(
            "from metaforge import llm , majority def forward ( task ) : q = task [ 'question' ] \
             answers = llm ( 'Think step by step then answer: ' + q , n = 5 , temperature = {temperature} ) \
             best = majority ( answers ) {extra} return best"
        )
    }

    #[test]
    fn identical_programs_are_identical_and_edits_lower_similarity() {
        let a = Signature::of(&program("0.7", ""));
        assert_eq!(a.similarity(&Signature::of(&program("0.7", ""))), 1.0);
        let one_constant = a.similarity(&Signature::of(&program("0.9", "")));
        let new_step = a.similarity(&Signature::of(&program(
            "0.7",
            "check = llm ( 'Is this right? ' + best ) if 'no' in check : best = answers [ 0 ]",
        )));
        assert!(one_constant < 1.0, "{one_constant}");
        assert!(new_step < one_constant, "{new_step} vs {one_constant}");
        let unrelated = a.similarity(&Signature::of("def forward ( task ) : return '42'"));
        assert!(unrelated < 0.2, "{unrelated}");
    }
}
